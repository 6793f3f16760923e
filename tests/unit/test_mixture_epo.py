"""EPO: balance and descent LPs against hand-computed cases and a grid search."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

from megagrape.mixture import Observation, build_method
from megagrape.mixture.epo import epo_lp

F64 = torch.float64


def epo(k=2, **options):
    return build_method("epo", options, [f"d{i}" for i in range(k)], [], None, None)


def observe(gram, losses):
    return Observation(
        step=1,
        lr=1e-3,
        domain_gram=torch.tensor(gram, dtype=F64),
        domain_losses=torch.tensor(losses, dtype=F64),
    )


def test_balance_step_by_hand():
    # l = (2, 1), r = (1, 1), C = I: l̂ = (2/3, 1/3), μ = 2/3 log(4/3) + 1/3 log(2/3) > 0, so the
    # balance LP runs. a = log(2 l̂) - μ = (+, -); J = {0} = J*, so the constraints are α_0 >= 0
    # and α_1 >= a_1 (slack) and the objective αᵀa is maximised at α = (1, 0): descend on the
    # domain whose loss is too high for the preference.
    update = epo().update(observe(np.eye(2), [2.0, 1.0]))
    mu = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    assert update.diagnostics["balance_step"] == 1.0
    assert update.diagnostics["non_uniformity"] == pytest.approx(mu, rel=1e-14)
    assert update.domain_weights.tolist() == pytest.approx([1.0, 0.0], abs=1e-12)


def test_preference_moves_the_balance_point():
    # Same losses, but r = (1, 4): r⊙l = (2, 4) now says domain 1 is behind.
    update = epo(preference=[1.0, 4.0]).update(observe(np.eye(2), [2.0, 1.0]))
    assert update.diagnostics["balance_step"] == 1.0
    assert update.domain_weights.tolist() == pytest.approx([0.0, 1.0], abs=1e-12)
    named = epo(preference={"d1": 4.0, "d0": 1.0}).update(observe(np.eye(2), [2.0, 1.0]))
    assert torch.equal(named.domain_weights, update.domain_weights)


def test_descent_step_on_the_ray_by_hand():
    # l̂ uniform -> μ = 0 -> descent LP: max 1ᵀCα with C = [[1, 0.5], [0.5, 3]]: column sums
    # (1.5, 3.5), all constraints slack at α = (0, 1).
    update = epo().update(observe([[1.0, 0.5], [0.5, 3.0]], [0.7, 0.7]))
    assert update.diagnostics["balance_step"] == 0.0
    assert update.domain_weights.tolist() == pytest.approx([0.0, 1.0], abs=1e-12)


def grid_optimum(losses, gram, preference, steps=400):
    """The LP by brute force over a simplex grid (K = 3): best feasible objective."""
    losses, gram, r = map(np.asarray, (losses, gram, preference))
    k = len(losses)
    shares = r * losses / (r * losses).sum()
    mu = np.sum(shares * np.log(k * shares))
    a = r * (np.log(k * shares) - mu)
    ca = gram @ a
    rhs = ca.copy()
    rhs[ca > 0] = -np.inf
    rhs[r * losses == (r * losses).max()] = 0.0
    best = -np.inf
    for i, j in itertools.product(range(steps + 1), repeat=2):
        if i + j > steps:
            continue
        alpha = np.array([i, j, steps - i - j]) / steps
        if np.all(gram @ alpha >= rhs - 1e-12):
            best = max(best, alpha @ ca)
    return best, ca, rhs


@pytest.mark.parametrize("seed", [0, 1])
def test_balance_lp_is_optimal_against_grid_two_events(seed):
    rng = np.random.default_rng(seed)
    method = epo(k=3, preference=[1.0, 2.0, 0.5])
    for _ in range(2):
        vectors = rng.normal(size=(3, 5)) + 0.3
        gram = vectors @ vectors.T
        losses = rng.uniform(0.5, 3.0, size=3)
        update = method.update(observe(gram, losses))
        assert update.diagnostics["balance_step"] == 1.0
        best, ca, rhs = grid_optimum(losses, gram, [1.0, 2.0, 0.5])
        lp = np.asarray(update.diagnostics["lp_weights"])
        assert lp @ ca >= best - 1e-9  # at least as good as every feasible grid point
        assert np.all(gram @ lp >= rhs - 1e-7) and lp.sum() == pytest.approx(1.0)


def test_direct_lp_solution_is_feasible_in_descent_mode():
    gram = np.array([[2.0, -0.5, 0.1], [-0.5, 1.0, 0.2], [0.1, 0.2, 0.5]])
    step = epo_lp(np.array([1.0, 1.0, 1.0]), gram, np.ones(3), 1e-4)
    assert not step.balance and step.weights is not None
    assert np.all(gram @ step.weights >= -1e-9)


def test_bad_losses_skip():
    update = epo().update(observe(np.eye(2), [0.0, 1.0]))
    assert "must be > 0" in update.skipped and update.domain_weights.tolist() == [0.5, 0.5]
    assert "(k=1)" in epo().update(observe(np.eye(2), [1.0, float("nan")])).skipped


def test_state_round_trip_gives_identical_next_update():
    method = epo(k=3, eps=0.01)
    method.update(observe(np.eye(3), [1.0, 2.0, 3.0]))
    resumed = epo(k=3, eps=0.01)
    resumed.load_state_dict(json.loads(json.dumps(method.state_dict())))
    nxt = observe([[1.0, 0.2, 0.0], [0.2, 1.0, 0.1], [0.0, 0.1, 1.0]], [1.5, 1.0, 2.0])
    assert torch.equal(method.update(nxt).domain_weights, resumed.update(nxt).domain_weights)


def test_balance_lp_never_raises_the_loss_of_the_domain_furthest_behind():
    # l = (2, 1, 4), r = 1: J* = {2} (largest r⊙l). C a = (3.47, -6.93, -4.36) so J = {0}. The
    # objective 3.47 α0 - 6.93 α1 - 4.36 α2 alone would pick α = (1, 0, 0), for which
    # (C α)_2 = -4 < 0: the loss of the domain furthest behind would rise to first order. The
    # J* constraint (C α)_2 = -4 α0 + 8 α1 + 6 α2 >= 0 caps α0 at 0.6: α = (0.6, 0, 0.4).
    gram = np.array([[3.0, -6.0, -4.0], [-6.0, 12.0, 8.0], [-4.0, 8.0, 6.0]])
    update = epo(k=3).update(observe(gram, [2.0, 1.0, 4.0]))
    assert update.diagnostics["balance_step"] == 1.0
    lp = np.asarray(update.diagnostics["lp_weights"])
    np.testing.assert_allclose(lp, [0.6, 0.0, 0.4], atol=1e-9)
    assert (gram @ lp)[2] >= -1e-9
