"""GRAPE: hand-computed updates, two-step trajectories, reference behaviours and skips."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

from megagrape.mixture import Observation, build_method

DOMAINS = ["web", "code", "books"]
TASKS = ["piqa", "arc"]


def grape(**options):
    """GRAPE with raw products unless told otherwise: these tests check the update rule on
    explicit Gram matrices (test_mixture_gradient_scaling.py checks the scalings)."""
    options.setdefault("gradient_scaling", "raw")
    return build_method("grape", options, DOMAINS, TASKS, None, None)


def obs(gram, losses=(1.0, 1.0), step=10, previous=None):
    return Observation(
        step=step,
        lr=1e-3,
        domain_target_gram=torch.tensor(gram, dtype=torch.float64),
        target_losses=torch.tensor(losses, dtype=torch.float64),
        previous_target_losses=None
        if previous is None
        else torch.tensor(previous, dtype=torch.float64),
    )


def softmax(v):
    e = np.exp(v - np.max(v))
    return e / e.sum()


def reference_step(alpha, z, gram, losses, mu_a, mu_z, eps_a, eps_z):
    """GRAPE's event written out in NumPy from DESIGN.md (log target gradient, first-order RoI)."""
    h = np.asarray(gram) / np.asarray(losses)[None, :]
    r = h.T @ alpha
    z = softmax(np.log(z) - mu_z * r)
    z = (1 - eps_z) * z + eps_z / len(z)
    s = h @ z
    alpha = softmax(np.log(alpha) + mu_a * s)
    alpha = (1 - eps_a) * alpha + eps_a / len(alpha)
    return alpha, z, r, s


def test_single_task_update_matches_closed_form():
    method = build_method(
        "grape",
        {"mu_a": 2.0, "eps_a": 0.0, "gradient_scaling": "raw"},
        ["a", "b"],
        ["t"],
        None,
        None,
    )
    update = method.update(
        Observation(
            step=1,
            lr=1e-3,
            domain_target_gram=torch.tensor([[0.3], [-0.1]], dtype=torch.float64),
            target_losses=torch.tensor([2.0]),
        )
    )
    # One task: z stays [1]; α_a / α_b = exp(mu_a * (0.3 - (-0.1)) / l) with l = 2.
    ratio = math.exp(2.0 * 0.4 / 2.0)
    assert update.task_weights.tolist() == [1.0]
    assert update.domain_weights[0].item() == pytest.approx(ratio / (1 + ratio), rel=1e-12)
    assert update.domain_weights.sum().item() == pytest.approx(1.0, abs=1e-15)
    assert update.diagnostics["roi"] == pytest.approx([0.5 * 0.3 / 2 + 0.5 * -0.1 / 2])


def test_two_step_trajectory_matches_numpy_reference():
    options = {"mu_a": 1.5, "mu_z": 5.0, "eps_a": 1e-3, "eps_z": 1e-3}
    method = grape(**options)
    events = [
        ([[0.4, 0.1], [0.0, 0.6], [0.2, -0.3]], [2.0, 3.0]),
        ([[0.1, 0.5], [0.3, 0.2], [-0.2, 0.4]], [1.8, 2.9]),
    ]
    alpha, z = np.full(3, 1 / 3), np.full(2, 1 / 2)
    for gram, losses in events:
        update = method.update(obs(gram, losses))
        alpha, z, r, s = reference_step(alpha, z, gram, losses, 1.5, 5.0, 1e-3, 1e-3)
        np.testing.assert_allclose(update.domain_weights.numpy(), alpha, rtol=1e-12)
        np.testing.assert_allclose(update.task_weights.numpy(), z, rtol=1e-12)
        np.testing.assert_allclose(update.diagnostics["roi"], r, rtol=1e-12)
        np.testing.assert_allclose(update.diagnostics["domain_scores"], s, rtol=1e-12)
        assert update.skipped is None


def test_slowest_improving_task_gains_weight():
    # Along d, task "piqa" improves (positive RoI), task "arc" gets worse.
    update = grape().update(obs([[0.5, -0.2], [0.5, -0.2], [0.5, -0.2]]))
    assert update.task_weights[1] > 0.5 > update.task_weights[0]


def test_domain_aligned_with_prioritised_task_gains_weight():
    # "arc" improves least, so it is prioritised; "code" is the domain aligned with it.
    gram = [[0.6, -0.1], [-0.1, 0.4], [0.2, 0.0]]
    update = grape(mu_z=20.0).update(obs(gram))
    assert update.task_weights[1] > update.task_weights[0]
    assert int(torch.argmax(update.domain_weights)) == DOMAINS.index("code")


@pytest.mark.parametrize("eps_a, recovers", [(1e-2, True), (0.0, False)])
def test_zero_weight_domain_recovers_only_with_smoothing(eps_a, recovers):
    method = build_method(
        "grape",
        {"eps_a": eps_a, "gradient_scaling": "raw"},
        DOMAINS,
        TASKS,
        torch.tensor([0.5, 0.5, 0.0]),
        None,
    )
    # "books" is the most useful domain for both tasks.
    gram = [[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]
    weights = [method.update(obs(gram)).domain_weights[2].item() for _ in range(20)]
    if recovers:
        assert weights[0] == pytest.approx(eps_a / 3)
        assert weights[-1] > 0.5 and all(b > a for a, b in itertools.pairwise(weights))
    else:
        assert weights == [0.0] * 20


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gram_entry_skips_and_names_the_entry(bad):
    method = grape()
    method.update(obs([[0.1, 0.2], [0.0, 0.1], [0.3, 0.0]]))
    before = method.state_dict()
    gram = [[0.1, 0.2], [0.0, 0.1], [0.3, 0.0]]
    gram[2][1] = bad
    update = method.update(obs(gram))
    assert (
        "(k=2, n=1)" in update.skipped and "'books'" in update.skipped and "'arc'" in update.skipped
    )
    assert update.domain_weights.tolist() == before["domain_weights"]
    assert update.task_weights.tolist() == before["task_weights"]
    assert method.state_dict() == before


def test_non_positive_target_loss_skips_log_variant():
    update = grape().update(obs([[0.1, 0.2]] * 3, losses=[0.0, 1.0]))
    assert "task 0 ('piqa')" in update.skipped
    assert update.domain_weights.tolist() == [1 / 3] * 3


def test_ema_and_plain_target_gradients_scale_columns():
    gram = [[0.4, 0.1], [0.0, 0.6], [0.2, -0.3]]
    plain = grape(target_gradient="plain").update(obs(gram, losses=[2.0, 4.0]))
    np.testing.assert_allclose(plain.diagnostics["gram_row_sums"], np.sum(gram, axis=1), rtol=1e-15)
    ema = grape(target_gradient="ema", loss_ema_decay=0.5)
    first = ema.update(obs(gram, losses=[2.0, 4.0]))  # EMA starts at the first losses
    np.testing.assert_allclose(
        first.diagnostics["gram_row_sums"], np.array(gram) @ [1 / 2, 1 / 4], rtol=1e-15
    )
    second = ema.update(obs(gram, losses=[1.0, 2.0]))  # EMA = 0.5 * old + 0.5 * new = [1.5, 3]
    np.testing.assert_allclose(
        second.diagnostics["gram_row_sums"], np.array(gram) @ [1 / 1.5, 1 / 3], rtol=1e-15
    )


def test_measured_roi_uses_relative_loss_drop_between_events():
    method = grape(roi="measured", mu_z=2.0, eps_z=0.0)
    gram = [[0.1, 0.2], [0.0, 0.1], [0.3, 0.0]]
    first = method.update(obs(gram, losses=[2.0, 4.0]))
    assert first.diagnostics["task_step_applied"] == 0.0 and first.task_weights.tolist() == [
        0.5,
        0.5,
    ]
    second = method.update(obs(gram, losses=[1.0, 3.0]))
    roi = np.array([(2 - 1) / 2, (4 - 3) / 4])
    np.testing.assert_allclose(second.diagnostics["roi"], roi, rtol=1e-15)
    np.testing.assert_allclose(
        second.task_weights.numpy(), softmax(np.log([0.5, 0.5]) - 2.0 * roi), rtol=1e-12
    )
    # An explicit previous_target_losses overrides the remembered one.
    third = method.update(obs(gram, losses=[1.0, 3.0], previous=[2.0, 3.0]))
    np.testing.assert_allclose(third.diagnostics["roi"], [0.5, 0.0], rtol=1e-15)


def test_weights_ema_smooths_what_the_sampler_receives():
    gram = [[0.4, 0.1], [0.0, 0.6], [0.2, -0.3]]
    plain = grape().update(obs(gram))
    method = grape(weights_ema=0.75)
    smoothed = method.update(obs(gram))
    expected = 0.75 * np.full(3, 1 / 3) + 0.25 * plain.domain_weights.numpy()
    np.testing.assert_allclose(smoothed.domain_weights.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(method.alpha.numpy(), plain.domain_weights.numpy(), rtol=1e-15)


def test_needs_follow_options():
    assert grape().needs == {"domain_target_gram", "target_losses"}
    assert grape(target_gradient="plain").needs == {"domain_target_gram"}
    assert grape(target_gradient="plain", roi="measured").needs == {
        "domain_target_gram",
        "target_losses",
    }


def test_initial_task_weights_by_name_are_normalised():
    method = grape(initial_task_weights={"arc": 3.0, "piqa": 1.0})
    assert method.task_weights.tolist() == [0.25, 0.75]


def test_state_round_trip_through_json_gives_identical_next_update():
    options = {"target_gradient": "ema", "roi": "measured", "weights_ema": 0.5}
    method = grape(**options)
    method.update(obs([[0.4, 0.1], [0.0, 0.6], [0.2, -0.3]], losses=[2.0, 3.0]))
    method.update(obs([[0.1, 0.5], [0.3, 0.2], [-0.2, 0.4]], losses=[1.9, 2.5]))
    resumed = grape(**options)
    resumed.load_state_dict(json.loads(json.dumps(method.state_dict())))
    nxt = obs([[0.2, 0.2], [0.1, -0.1], [0.0, 0.3]], losses=[1.7, 2.4])
    a, b = method.update(nxt), resumed.update(nxt)
    assert torch.equal(a.domain_weights, b.domain_weights)
    assert torch.equal(a.task_weights, b.task_weights)
    assert a.diagnostics == b.diagnostics


def test_weights_ema_keeps_served_and_iterate_weights_apart_over_three_events():
    """The mirror-descent step continues from the iterate α; the RoI uses the SERVED weights a
    (what the sampler drew since the last event). Swapping the two anywhere changes the result
    from the second event on."""
    beta, mu_a, mu_z, eps = 0.6, 3.0, 4.0, 1e-3
    grams = [
        [[0.4, 0.1], [0.0, 0.6], [0.2, -0.3]],
        [[0.1, 0.5], [0.3, 0.2], [-0.2, 0.4]],
        [[0.5, -0.2], [0.1, 0.1], [0.3, 0.6]],
    ]
    losses = [2.0, 3.0]
    method = grape(weights_ema=beta, mu_a=mu_a, mu_z=mu_z)
    alpha, served, z = np.full(3, 1 / 3), np.full(3, 1 / 3), np.full(2, 1 / 2)
    for gram in grams:
        update = method.update(obs(gram, losses=losses))
        h = np.asarray(gram) / np.asarray(losses)[None, :]
        roi = h.T @ served
        z = softmax(np.log(z) - mu_z * roi)
        z = (1 - eps) * z + eps / 2
        alpha = softmax(np.log(alpha) + mu_a * (h @ z))
        alpha = (1 - eps) * alpha + eps / 3
        served = beta * served + (1 - beta) * alpha
        np.testing.assert_allclose(update.diagnostics["roi"], roi, rtol=1e-12)
        np.testing.assert_allclose(update.task_weights.numpy(), z, rtol=1e-12)
        np.testing.assert_allclose(update.domain_weights.numpy(), served, rtol=1e-12)
        np.testing.assert_allclose(method.alpha.numpy(), alpha, rtol=1e-12)
    assert np.abs(served - alpha).max() > 1e-2  # the two really differ in this trajectory


def test_mu_z_zero_with_eps_z_zero_keeps_task_weights_fixed_as_the_reference_doge_baseline():
    # reweight_tgt_iters = -1 in the reference: z never moves, the domain step alone runs with
    # log α_k + mu_train * sum_n z_n <g_k, h_n> and no smoothing.
    method = grape(mu_a=1.5, mu_z=0.0, eps_a=0.0, eps_z=0.0, initial_task_weights=[0.8, 0.2])
    gram, losses = [[0.4, 0.1], [0.0, 0.6], [0.2, -0.3]], [2.0, 4.0]
    alpha = np.full(3, 1 / 3)
    for _ in range(2):
        update = method.update(obs(gram, losses=losses))
        assert update.task_weights.tolist() == [0.8, 0.2]
        h = np.asarray(gram) / np.asarray(losses)[None, :]
        alpha = softmax(np.log(alpha) + 1.5 * (h @ np.array([0.8, 0.2])))
        np.testing.assert_allclose(update.domain_weights.numpy(), alpha, rtol=1e-13)


def test_domain_target_gradient_differs_from_the_task_steps_as_reference_grape_ema():
    # grape_ema: task step with grad l_n / EMA(l_n), domain step with grad log l_n.
    gram = np.array([[0.4, 0.1], [0.0, 0.6], [0.2, -0.3]])
    method = grape(target_gradient="ema", domain_target_gradient="log", loss_ema_decay=0.5)
    alpha, z, eps = np.full(3, 1 / 3), np.full(2, 1 / 2), 1e-3
    for losses, ema in (([2.0, 4.0], [2.0, 4.0]), ([1.0, 2.0], [1.5, 3.0])):
        update = method.update(obs(gram.tolist(), losses=losses))
        roi = (gram / np.asarray(ema)[None, :]).T @ alpha
        z = (1 - eps) * softmax(np.log(z) - 5.0 * roi) + eps / 2
        scores = (gram / np.asarray(losses)[None, :]) @ z
        alpha = (1 - eps) * softmax(np.log(alpha) + 1.5 * scores) + eps / 3
        np.testing.assert_allclose(update.diagnostics["roi"], roi, rtol=1e-13)
        np.testing.assert_allclose(update.diagnostics["domain_scores"], scores, rtol=1e-13)
        np.testing.assert_allclose(update.task_weights.numpy(), z, rtol=1e-13)
        np.testing.assert_allclose(update.domain_weights.numpy(), alpha, rtol=1e-13)
    np.testing.assert_allclose(method.loss_ema.numpy(), [1.5, 3.0], rtol=1e-15)
    assert grape(target_gradient="plain", domain_target_gradient="log").needs == {
        "domain_target_gram",
        "target_losses",
    }
