"""gradient_scaling (raw | clip | cosine) of GRAPE and DoGE against explicit vectors, and skips
of events whose scaled signals are not finite."""

import re

import numpy as np
import pytest
import torch

from megagrape.errors import ConfigError
from megagrape.mixture import Observation, build_method

DOMAINS = ["web", "code", "books"]
TASKS = ["piqa", "arc"]
F64 = torch.float64

RNG = np.random.default_rng(11)
# Per-domain gradients g_k and RAW target gradients grad l_n, with norms on both sides of the
# clip norms used below (1.0 and 5.0).
G = RNG.normal(size=(3, 8)) * np.array([[0.1], [2.0], [9.0]])
T = RNG.normal(size=(2, 8)) * np.array([[0.4], [3.0]])
LOSSES = np.array([2.5, 0.8])


def softmax(v):
    e = np.exp(v - np.max(v))
    return e / e.sum()


def clip(vectors, c):
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors * np.minimum(1.0, c / norms)


def unit(vectors):
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def observe(g=G, t=T, losses=LOSSES, lr=1e-3, norms=True):
    obs = Observation(
        step=10,
        lr=lr,
        domain_target_gram=torch.tensor(g @ t.T, dtype=F64),
        domain_gram=torch.tensor(g @ g.T, dtype=F64),
        target_losses=torch.tensor(losses, dtype=F64),
    )
    if norms:
        obs.domain_sq_norms = torch.tensor((g * g).sum(axis=1), dtype=F64)
        obs.target_gram = torch.tensor(t @ t.T, dtype=F64)
    return obs


def grape(**options):
    return build_method("grape", options, DOMAINS, TASKS, None, None)


def doge(**options):
    return build_method("doge", options, DOMAINS, TASKS, None, None)


def grape_reference(products, mu_a=1.5, mu_z=5.0, eps=1e-3):
    """GRAPE's event on given products H [K, N] from uniform α and z."""
    alpha, z = np.full(3, 1 / 3), np.full(2, 1 / 2)
    roi = products.T @ alpha
    z = (1 - eps) * softmax(np.log(z) - mu_z * roi) + eps / 2
    alpha = (1 - eps) * softmax(np.log(alpha) + mu_a * (products @ z)) + eps / 3
    return alpha, z, roi


@pytest.mark.parametrize("target_gradient", ["log", "plain"])
def test_grape_clip_equals_products_of_explicitly_clipped_vectors(target_gradient):
    # The reference clips g_k and the gradient it back-propagates for task n: grad log l_n
    # (= grad l_n / l_n) for "log", grad l_n for "plain".
    h = T / LOSSES[:, None] if target_gradient == "log" else T
    products = clip(G, 1.0) @ clip(h, 1.0).T
    update = grape(gradient_scaling="clip", target_gradient=target_gradient).update(observe())
    assert update.skipped is None
    alpha, z, roi = grape_reference(products)
    np.testing.assert_allclose(update.diagnostics["roi"], roi, rtol=1e-12)
    np.testing.assert_allclose(update.task_weights.numpy(), z, rtol=1e-12)
    np.testing.assert_allclose(update.domain_weights.numpy(), alpha, rtol=1e-12)
    # g_web (norm ~0.3) is left alone, the other two are clipped.
    assert update.diagnostics["clipped_domains"] == 2.0
    np.testing.assert_allclose(
        update.diagnostics["domain_grad_norms"], np.linalg.norm(G, axis=1), rtol=1e-12
    )


def test_grape_clip_of_ema_variant_clips_before_dividing_by_the_loss_ema():
    # grape_ema in the reference: clip(grad l_n), then divide by EMA(l_n) (= l_n at the first event).
    products = clip(G, 2.0) @ (clip(T, 2.0) / LOSSES[:, None]).T
    update = grape(gradient_scaling="clip", clip_norm=2.0, target_gradient="ema").update(observe())
    np.testing.assert_allclose(update.domain_weights.numpy(), grape_reference(products)[0])


def test_grape_cosine_equals_products_of_unit_vectors():
    products = unit(G) @ unit(T).T
    update = grape(gradient_scaling="cosine").update(observe())
    alpha, z, roi = grape_reference(products)
    np.testing.assert_allclose(update.diagnostics["roi"], roi, rtol=1e-12)
    np.testing.assert_allclose(update.domain_weights.numpy(), alpha, rtol=1e-12)
    np.testing.assert_allclose(update.task_weights.numpy(), z, rtol=1e-12)


@pytest.mark.parametrize(
    ("scaling", "invariant"), [("raw", False), ("clip", True), ("cosine", True)]
)
def test_scale_free_options_ignore_the_gradient_scale(scaling, invariant):
    # Every gradient 10x larger (another model size / phase). With clip (c below every norm
    # at both scales) and cosine the same mu means the same step; raw steps 100x further.
    mu = {"raw": 1e-4, "clip": 1.0, "cosine": 1e-2}[scaling]  # small steps, no saturation
    small_mu = {"mu_a": mu, "mu_z": mu, **({"clip_norm": 0.01} if scaling == "clip" else {})}
    one = grape(gradient_scaling=scaling, **small_mu).update(observe(G, T))
    ten = grape(gradient_scaling=scaling, **small_mu).update(observe(G * 10, T * 10))
    moved = np.abs(one.domain_weights.numpy() - 1 / 3).max()
    assert moved > 1e-7  # the step is not trivially zero
    same = np.allclose(one.domain_weights.numpy(), ten.domain_weights.numpy(), rtol=1e-12)
    assert same is invariant


def test_doge_clip_reproduces_doge_reference_clipping_to_five():
    lr, mu = 1e-3, 0.01
    products = clip(G, 5.0) @ clip(T, 5.0).T  # DoGE: plain target gradients
    clipped_norms = np.linalg.norm(clip(G, 5.0), axis=1)
    scores = lr * (products @ np.array([0.5, 0.5])) / (clipped_norms.mean() + 1e-6)
    scores = np.clip(scores, 0.0, 5 * lr)
    expected = softmax(np.log(np.full(3, 1 / 3)) + scores / mu)
    method = doge(gradient_scaling="clip", mu=mu)
    assert method.options.clip_norm == 5.0
    assert "domain_gram" not in method.needs  # the norms come from domain_sq_norms
    update = method.update(observe(norms=True))
    assert update.skipped is None
    np.testing.assert_allclose(update.domain_weights.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(update.diagnostics["mean_grad_norm"], clipped_norms.mean())


def test_doge_cosine_scores_are_cosines():
    lr, mu = 1e-2, 0.05
    scores = lr * (unit(G) @ unit(T).T @ np.array([0.5, 0.5]))
    expected = softmax(np.log(np.full(3, 1 / 3)) + scores / mu)
    update = doge(gradient_scaling="cosine", normalize="none", clip=False, mu=mu).update(
        observe(lr=lr)
    )
    np.testing.assert_allclose(update.domain_weights.numpy(), expected, rtol=1e-12)


def test_needs_and_option_checks():
    base = {"domain_target_gram", "target_losses"}
    assert (
        grape().options.gradient_scaling == "cosine"
    )  # the default (study: docs/grape_settings.md)
    assert grape(gradient_scaling="raw").needs == base
    assert grape(gradient_scaling="clip").needs == base | {"domain_sq_norms", "target_gram"}
    assert grape(gradient_scaling="cosine").needs == base | {"domain_sq_norms", "target_gram"}
    assert doge().needs == {"domain_target_gram", "domain_gram"}
    assert grape(gradient_scaling="clip").options.clip_norm == 1.0
    with pytest.raises(ConfigError, match=r"mixture\.options\.clip_norm = 2\.0.*only with"):
        grape(clip_norm=2.0)
    with pytest.raises(ConfigError, match=r"mixture\.options\.clip_norm = 0"):
        doge(gradient_scaling="clip", clip_norm=0)
    with pytest.raises(ConfigError, match=r"mixture\.options\.gradient_scaling = 'norm'"):
        grape(gradient_scaling="norm")


def test_missing_norms_name_the_observation_field():
    with pytest.raises(ValueError, match=r"Observation\.domain_sq_norms"):
        grape(gradient_scaling="cosine").update(observe(norms=False))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "domain_sq_norms",
            [1.0, float("nan"), 1.0],
            r"non-finite domain_sq_norms entry at \(k=1\)",
        ),
        ("domain_sq_norms", [1.0, -1.0, 1.0], r"domain_sq_norms entry 1 \('code'\) is -1\.0"),
        ("target_gram", [[1.0, 0.0], [0.0, -2.0]], r"target_gram diagonal entry 1 \('arc'\)"),
    ],
)
@pytest.mark.parametrize("build", [grape, doge])
def test_bad_norms_skip_the_event(build, field, value, message):
    obs = observe()
    setattr(obs, field, torch.tensor(value, dtype=F64))
    method = build(gradient_scaling="clip")
    update = method.update(obs)
    assert update.skipped is not None and re.search(message, update.skipped)
    assert update.domain_weights.tolist() == [1 / 3] * 3


@pytest.mark.parametrize("scaling", ["raw", "clip", "cosine"])
def test_huge_gram_over_small_loss_skips_grape_instead_of_returning_nan(scaling):
    # 1e308 / 0.5 overflows to inf: today this returned NaN weights with skipped = None.
    gram = torch.full((3, 2), 1e308, dtype=F64)
    obs = Observation(
        step=10,
        lr=1e-3,
        domain_target_gram=gram,
        target_losses=torch.tensor([0.5, 0.5], dtype=F64),
        domain_sq_norms=torch.full((3,), 1e300, dtype=F64),
        target_gram=torch.full((2, 2), 1e300, dtype=F64),
    )
    method = grape(gradient_scaling=scaling)
    update = method.update(obs)
    if scaling == "raw":
        assert update.skipped is not None and "non-finite raw products H" in update.skipped
        assert update.domain_weights.tolist() == [1 / 3] * 3
        assert update.task_weights.tolist() == [0.5, 0.5]
    # Clip and cosine bound the products, so the same event is usable; in every case the
    # weights are finite distributions.
    assert bool(torch.isfinite(update.domain_weights).all())
    assert bool(torch.isfinite(update.task_weights).all())
    assert update.domain_weights.sum().item() == pytest.approx(1.0)
    assert method.alpha.tolist() == pytest.approx(update.domain_weights.tolist())


def test_huge_gram_over_small_loss_skips_doge():
    obs = Observation(
        step=10,
        lr=1e-3,
        domain_target_gram=torch.full((3, 2), 1e308, dtype=F64),
        domain_gram=torch.eye(3, dtype=F64),
        target_losses=torch.tensor([0.5, 0.5], dtype=F64),
    )
    # Score clipping would turn inf into lr * dw_max and hide it: the event must skip instead.
    update = doge(target_gradient="log").update(obs)
    assert update.skipped is not None and "non-finite raw products H" in update.skipped
    assert update.domain_weights.tolist() == [1 / 3] * 3


def test_overflowing_step_skips_grape():
    # Finite products whose step mu * score overflows: softmax would give NaN.
    obs = Observation(
        step=10,
        lr=1e-3,
        domain_target_gram=torch.tensor([[1e307, 0.0], [0.0, 0.0], [0.0, 1e307]], dtype=F64),
    )
    update = grape(target_gradient="plain", mu_z=1e3, gradient_scaling="raw").update(obs)
    assert update.skipped is not None and "task step mu_z * roi" in update.skipped
    assert update.task_weights.tolist() == [0.5, 0.5]
