"""MGDA: Frank-Wolfe min-norm weights against closed forms and an independent QP solve."""

import json

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from megagrape.mixture import Observation, build_method
from megagrape.mixture.mgda import min_norm_weights, two_point_min_norm

F64 = torch.float64


def mgda(domains=("a", "b", "c"), **options):
    return build_method("mgda", options, list(domains), [], None, None)


def observe(vectors, losses=None):
    g = np.asarray(vectors, dtype=np.float64)
    return Observation(
        step=1,
        lr=1e-3,
        domain_gram=torch.tensor(g @ g.T, dtype=F64),
        domain_losses=None if losses is None else torch.tensor(losses, dtype=F64),
    )


def qp_min_norm(vectors):
    """min ||sum c_k g_k||^2 over the simplex with SLSQP, independent of the Frank-Wolfe code."""
    g = np.asarray(vectors, dtype=np.float64)
    m = g @ g.T
    k = len(g)
    result = minimize(
        lambda c: c @ m @ c,
        np.full(k, 1 / k),
        jac=lambda c: 2 * m @ c,
        bounds=[(0, 1)] * k,
        constraints=[{"type": "eq", "fun": lambda c: c.sum() - 1}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return result.x, result.fun


def test_two_domains_closed_form():
    # g1 = (1, 0), g2 = (0, 2): γ = (4 - 0) / (1 + 4) = 0.8, ||0.8 g1 + 0.2 g2||² = 0.8.
    update = mgda(domains=("a", "b")).update(observe([[1.0, 0.0], [0.0, 2.0]]))
    assert update.domain_weights.tolist() == pytest.approx([0.8, 0.2], rel=1e-15)
    assert update.diagnostics["min_norm_sq"] == pytest.approx(0.8, rel=1e-14)
    assert update.diagnostics["iterations"] == 0.0


def test_two_point_rule_ends():
    assert two_point_min_norm(1.0, 2.0, 5.0) == (1.0, 1.0)  # v1 is the min-norm point
    assert two_point_min_norm(5.0, 2.0, 1.0) == (0.0, 1.0)  # v2 is
    gamma, cost = two_point_min_norm(1.0, 0.0, 1.0)
    assert (gamma, cost) == (0.5, 0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frank_wolfe_matches_qp_on_random_gradients_two_events(seed):
    rng = np.random.default_rng(seed)
    method = mgda(domains=("a", "b", "c", "d"), max_iter=5000, tol=1e-12)
    for _ in range(2):  # two consecutive events: MGDA keeps no state besides α
        vectors = rng.normal(size=(4, 6)) + 0.5
        update = method.update(observe(vectors))
        weights, norm_sq = qp_min_norm(vectors)
        assert update.diagnostics["min_norm_sq"] == pytest.approx(norm_sq, rel=1e-6, abs=1e-10)
        np.testing.assert_allclose(update.domain_weights.numpy(), weights, atol=2e-3)
        assert 0.0 <= update.diagnostics["duality_gap"] < 1e-5


def test_origin_inside_hull_gives_zero_norm():
    # 0.5 g1 + 0.25 g2 + 0.25 g3 = 0.
    update = mgda().update(observe([[1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]]))
    assert update.diagnostics["min_norm_sq"] < 1e-6
    np.testing.assert_allclose(update.domain_weights.numpy(), [0.5, 0.25, 0.25], atol=2e-3)


def test_iteration_cap_is_enforced_and_reported():
    vectors = np.random.default_rng(3).normal(size=(5, 8))
    gram = torch.tensor(vectors @ vectors.T, dtype=F64)
    capped = min_norm_weights(gram, max_iter=2, tol=1e-15)
    assert capped.iterations == 2 and not capped.converged
    assert capped.weights.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "normalization, losses, expected",
    [
        ("l2", None, [0.5, 0.5]),  # unit vectors e1, e2
        ("loss", [1.0, 2.0], [0.5, 0.5]),  # g / l = e1, e2
        ("loss+", [1.0, 2.0], [0.2, 0.8]),  # g / (l ||g||) = e1, e2 / 2
        ("none", None, [0.8, 0.2]),
    ],
)
def test_normalisations(normalization, losses, expected):
    method = mgda(domains=("a", "b"), normalization=normalization)
    update = method.update(observe([[1.0, 0.0], [0.0, 2.0]], losses))
    assert update.domain_weights.tolist() == pytest.approx(expected, rel=1e-14)


def test_smoothing_and_needs():
    method = mgda(domains=("a", "b"), eps=0.1)
    assert method.needs == {"domain_gram"}
    assert mgda(normalization="loss").needs == {"domain_gram", "domain_losses"}
    update = method.update(observe([[1.0, 0.0], [0.0, 2.0]]))
    assert update.domain_weights.tolist() == pytest.approx([0.9 * 0.8 + 0.05, 0.9 * 0.2 + 0.05])


def test_bad_inputs_skip():
    nan_gram = observe([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    nan_gram.domain_gram[0, 2] = float("nan")
    assert "(k=0, j=2)" in mgda().update(nan_gram).skipped
    zero = mgda(normalization="l2").update(observe([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]))
    assert "domain 1 ('b')" in zero.skipped and zero.domain_weights.tolist() == [1 / 3] * 3
    absent = mgda(normalization="loss").update(observe(np.eye(3), [1.0, float("nan"), 2.0]))
    assert "absent" in absent.skipped


def test_state_round_trip_gives_identical_next_update():
    method = mgda(eps=0.01)
    method.update(observe(np.eye(3)))
    resumed = mgda(eps=0.01)
    resumed.load_state_dict(json.loads(json.dumps(method.state_dict())))
    vectors = [[1.0, 0.2], [0.1, 1.0], [0.5, 0.5]]
    assert torch.equal(
        method.update(observe(vectors)).domain_weights,
        resumed.update(observe(vectors)).domain_weights,
    )
