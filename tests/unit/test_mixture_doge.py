"""DoGE: normalised, lr-clipped scores and the exponentiated step, against a NumPy reference."""

import json

import numpy as np
import pytest
import torch

from megagrape.errors import ConfigError
from megagrape.mixture import Observation, build_method

DOMAINS = ["web", "code", "books"]
TASKS = ["piqa", "arc"]
F64 = torch.float64


def doge(tasks=TASKS, **options):
    return build_method("doge", options, DOMAINS, tasks, None, None)


def gram_pair(domain_vectors, target_vectors):
    g = np.asarray(domain_vectors, dtype=np.float64)
    h = np.asarray(target_vectors, dtype=np.float64)
    return g @ h.T, g @ g.T


def observe(domain_target, domain, lr, losses=None):
    return Observation(
        step=5,
        lr=lr,
        domain_target_gram=torch.tensor(domain_target, dtype=F64),
        domain_gram=torch.tensor(domain, dtype=F64),
        target_losses=None if losses is None else torch.tensor(losses, dtype=F64),
    )


def reference_doge(alpha, domain_target, domain, lr, z, mu, dw_min, dw_max):
    """DoGE's update_domain_weights_distributed, in NumPy (eps = 0)."""
    scores = lr * (np.asarray(domain_target) @ z)
    scores = scores / (np.sqrt(np.diag(domain)).mean() + 1e-6)
    scores = np.clip(scores, lr * dw_min, lr * dw_max)
    logits = np.log(alpha) + scores / mu
    e = np.exp(logits - logits.max())
    return e / e.sum(), scores


RNG = np.random.default_rng(7)
G1 = RNG.normal(size=(3, 16))
H1 = RNG.normal(size=(2, 16))
G2 = RNG.normal(size=(3, 16))
H2 = RNG.normal(size=(2, 16))


def test_two_step_trajectory_matches_numpy_reference():
    method = doge(mu=0.01, dw_min=-1.0, dw_max=1.0)
    alpha = np.full(3, 1 / 3)
    for (g, h), lr in [((G1, H1), 5e-3), ((G2, H2), 4e-3)]:
        dt, dd = gram_pair(g, h)
        update = method.update(observe(dt, dd, lr))
        alpha, scores = reference_doge(alpha, dt, dd, lr, np.array([0.5, 0.5]), 0.01, -1.0, 1.0)
        np.testing.assert_allclose(update.domain_weights.numpy(), alpha, rtol=1e-12)
        np.testing.assert_allclose(update.diagnostics["domain_scores"], scores, rtol=1e-12)
        assert update.task_weights.tolist() == [0.5, 0.5]


def test_scores_are_clipped_to_lr_scaled_bounds():
    # Scores before clipping: lr * [2, 0.5, -1] (no normalisation): with dw in [0, 1] the first
    # is clipped to lr * 1 and the last to 0.
    lr = 1e-2
    method = build_method("doge", {"normalize": "none", "mu": 0.05}, DOMAINS, ["t"], None, None)
    update = method.update(
        Observation(
            step=1, lr=lr, domain_target_gram=torch.tensor([[2.0], [0.5], [-1.0]], dtype=F64)
        )
    )
    assert update.diagnostics["raw_scores"] == pytest.approx([2 * lr, 0.5 * lr, -lr])
    assert update.diagnostics["domain_scores"] == pytest.approx([2 * lr, 0.5 * lr, 0.0])
    assert update.diagnostics["clipped_count"] == 1.0  # only the negative score (dw_max = 5 > 2)
    clipped = build_method(
        "doge", {"normalize": "none", "mu": 0.05, "dw_max": 1.0}, DOMAINS, ["t"], None, None
    )
    update = clipped.update(
        Observation(
            step=1, lr=lr, domain_target_gram=torch.tensor([[2.0], [0.5], [-1.0]], dtype=F64)
        )
    )
    assert update.diagnostics["domain_scores"] == pytest.approx([lr, 0.5 * lr, 0.0])
    assert update.diagnostics["clipped_count"] == 2.0
    weights = np.array([1.0, np.exp(0.5 * lr / 0.05 - lr / 0.05), np.exp(-lr / 0.05)])
    np.testing.assert_allclose(update.domain_weights.numpy(), weights / weights.sum(), rtol=1e-12)


def test_exclude_diagonal_drops_self_alignment():
    # Targets are the domains: only cross terms count, as in DoGE when train == target sets.
    g = np.array([[1.0, 0.0], [0.6, 0.8]])
    method = build_method(
        "doge",
        {"exclude_diagonal": True, "normalize": "none", "clip": False},
        ["a", "b"],
        ["a", "b"],
        None,
        None,
    )
    update = method.update(
        Observation(step=1, lr=1.0, domain_target_gram=torch.tensor(g @ g.T, dtype=F64))
    )
    assert update.diagnostics["raw_scores"] == pytest.approx([0.5 * 0.6, 0.5 * 0.6])
    assert update.domain_weights.tolist() == pytest.approx([0.5, 0.5], abs=1e-15)


def test_exclude_diagonal_needs_one_target_per_domain():
    with pytest.raises(ConfigError, match="exclude_diagonal"):
        doge(exclude_diagonal=True)


def test_fixed_task_weights_weight_the_targets():
    method = doge(task_weights={"piqa": 0.0, "arc": 1.0}, normalize="none", clip=False, mu=1.0)
    update = method.update(
        Observation(
            step=1,
            lr=1.0,
            domain_target_gram=torch.tensor([[5.0, 1.0], [0.0, 2.0], [0.0, 0.0]], dtype=F64),
        )
    )
    assert update.diagnostics["raw_scores"] == pytest.approx([1.0, 2.0, 0.0])
    assert update.task_weights.tolist() == [0.0, 1.0]


def test_needs_follow_options():
    assert doge().needs == {"domain_target_gram", "domain_gram"}
    assert doge(normalize="none", target_gradient="log").needs == {
        "domain_target_gram",
        "target_losses",
    }


def test_non_finite_entries_skip():
    dt, dd = gram_pair(G1, H1)
    dd[1, 1] = np.nan
    update = doge().update(observe(dt, dd, 1e-3))
    assert "domain_gram diagonal" in update.skipped and "'code'" in update.skipped
    dt[0, 1] = np.inf
    update = doge().update(observe(dt, gram_pair(G1, H1)[1], 1e-3))
    assert "(k=0, n=1)" in update.skipped
    assert update.domain_weights.tolist() == [1 / 3] * 3


def test_state_round_trip_gives_identical_next_update():
    method = doge(target_gradient="ema")
    dt, dd = gram_pair(G1, H1)
    method.update(observe(dt, dd, 1e-3, losses=[2.0, 3.0]))
    resumed = doge(target_gradient="ema")
    resumed.load_state_dict(json.loads(json.dumps(method.state_dict())))
    dt, dd = gram_pair(G2, H2)
    a = method.update(observe(dt, dd, 1e-3, losses=[1.5, 2.0]))
    b = resumed.update(observe(dt, dd, 1e-3, losses=[1.5, 2.0]))
    assert torch.equal(a.domain_weights, b.domain_weights) and a.diagnostics == b.diagnostics
