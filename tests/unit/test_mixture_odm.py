"""ODM: EXP3 with importance-weighted rewards, the ε schedule, warm-up and overflow safety."""

import json
import math

import numpy as np
import pytest
import torch

from megagrape.mixture import Observation, build_method

DOMAINS = ["web", "code", "books", "wiki"]
F64 = torch.float64


def odm(**options):
    return build_method("odm", options, DOMAINS, [], None, None)


def observe(step, losses, counts):
    return Observation(
        step=step,
        lr=1e-3,
        domain_losses=torch.tensor(losses, dtype=F64),
        domain_sample_counts=torch.tensor(counts, dtype=F64),
    )


def reference_exp3(events, k, scale=10.0):
    """The reference's Exp3WeightUpdater extended to batches: reward share n_k / sum n."""
    pi, cum, eps = np.full(k, 1 / k), np.zeros(k), 1 / k
    for step, losses, counts in events:
        losses, counts = np.asarray(losses), np.asarray(counts, dtype=float)
        present = ~np.isnan(losses) & (counts > 0)
        share = np.where(present, counts, 0) / np.where(present, counts, 0).sum()
        for d in range(k):
            if present[d]:
                cum[d] += share[d] * (losses[d] / scale) / pi[d]
        prev_eps, eps = eps, min(1 / k, math.sqrt(math.log(k) / (k * step)))
        total = sum(math.exp(r * prev_eps) for r in cum)
        w = np.array([math.exp(r * prev_eps) * (1 - k * eps) / total + eps for r in cum])
        pi = w / w.sum()
    return pi, cum, eps


EVENTS = [
    (100, [3.0, 2.0, float("nan"), 4.0], [10, 5, 0, 1]),
    (200, [2.5, 1.5, 3.5, 3.9], [8, 4, 2, 2]),
]


def test_two_step_trajectory_matches_reference():
    method = odm()
    for i, event in enumerate(EVENTS, start=1):
        update = method.update(observe(*event))
        pi, cum, eps = reference_exp3(EVENTS[:i], len(DOMAINS))
        np.testing.assert_allclose(update.domain_weights.numpy(), pi, rtol=1e-12)
        np.testing.assert_allclose(update.diagnostics["cumulative_reward"], cum, rtol=1e-12)
        assert update.diagnostics["epsilon"] == pytest.approx(eps, rel=1e-15)


def test_first_update_by_hand():
    # One pull of domain 0 with loss 5 at t = 1000 (ε_prev = 1/K = 0.25).
    update = odm().update(
        observe(1000, [5.0, float("nan"), float("nan"), float("nan")], [4, 0, 0, 0])
    )
    r_hat = (5.0 / 10) / 0.25
    eps = math.sqrt(math.log(4) / (4 * 1000))
    exp0 = math.exp(0.25 * r_hat)
    w0 = exp0 / (exp0 + 3) * (1 - 4 * eps) + eps
    assert update.domain_weights[0].item() == pytest.approx(w0, rel=1e-14)
    assert update.domain_weights.sum().item() == pytest.approx(1.0, abs=1e-15)


def test_early_steps_stay_uniform_because_epsilon_is_one_over_k():
    # ε_t = 1/K while t < K ln K / ... : the exploitation term is multiplied by 1 - K ε = 0.
    update = odm().update(observe(1, [9.0, 1.0, 1.0, 1.0], [1, 1, 1, 1]))
    assert update.domain_weights.tolist() == pytest.approx([0.25] * 4, abs=1e-15)


def test_warmup_keeps_initial_weights_and_accumulates_nothing():
    method = odm(warmup_steps=500)
    update = method.update(observe(500, [3.0, 2.0, 1.0, 1.0], [1, 1, 1, 1]))
    assert update.diagnostics["warmup"] == 1.0
    assert update.domain_weights.tolist() == [0.25] * 4
    assert method.cumulative_reward.tolist() == [0.0] * 4


def test_huge_cumulative_rewards_do_not_overflow():
    method = odm(reward_scale=1e-300)
    update = method.update(observe(10**6, [1.0, 2.0, 3.0, 4.0], [1, 1, 1, 1]))
    assert bool(torch.isfinite(update.domain_weights).all())
    assert update.domain_weights.sum().item() == pytest.approx(1.0)
    assert int(torch.argmax(update.domain_weights)) == 3


def test_no_present_domain_skips():
    update = odm().update(observe(10, [float("nan")] * 4, [0, 0, 0, 0]))
    assert update.skipped is not None and update.domain_weights.tolist() == [0.25] * 4


def test_state_round_trip_gives_identical_next_update():
    method = odm()
    method.update(observe(*EVENTS[0]))
    resumed = odm()
    resumed.load_state_dict(json.loads(json.dumps(method.state_dict())))
    a, b = method.update(observe(*EVENTS[1])), resumed.update(observe(*EVENTS[1]))
    assert torch.equal(a.domain_weights, b.domain_weights) and a.diagnostics == b.diagnostics


def reference_exp3_fixed_sampling(events, sampling, scale=10.0):
    """EXP3 whose arms are drawn from a FIXED s (apply: loss): importance weights are 1/s_k."""
    k = len(sampling)
    cum, eps = np.zeros(k), 1 / k
    for step, losses, counts in events:
        losses, counts = np.asarray(losses), np.asarray(counts, dtype=float)
        present = ~np.isnan(losses) & (counts > 0)
        share = np.where(present, counts, 0) / np.where(present, counts, 0).sum()
        cum += np.where(present, share * (losses / scale) / np.asarray(sampling), 0.0)
        prev_eps, eps = eps, min(1 / k, math.sqrt(math.log(k) / (k * step)))
        w = np.exp(prev_eps * cum) / np.exp(prev_eps * cum).sum() * (1 - k * eps) + eps
    return w / w.sum(), cum


def test_apply_loss_rewards_are_importance_weighted_by_the_sampling_distribution():
    # Under apply: loss the sampler draws from a fixed s while the bandit's α moves; dividing by
    # α instead of s would bias every reward (here α starts uniform, s is far from it).
    sampling = [0.7, 0.1, 0.1, 0.1]
    method = odm()
    for i, (step, losses, counts) in enumerate(EVENTS, start=1):
        observation = observe(step, losses, counts)
        observation.sampling_weights = torch.tensor(sampling, dtype=F64)
        update = method.update(observation)
        pi, cum = reference_exp3_fixed_sampling(EVENTS[:i], sampling)
        np.testing.assert_allclose(update.diagnostics["cumulative_reward"], cum, rtol=1e-12)
        np.testing.assert_allclose(update.domain_weights.numpy(), pi, rtol=1e-12)
    # The domain drawn 7x as often gets 1/7 of the per-sample credit of the others.
    first = reference_exp3_fixed_sampling(EVENTS[:1], sampling)[1]
    assert first[0] == pytest.approx((10 / 16) * 0.3 / 0.7)


def test_apply_loss_domain_with_zero_sampling_probability_but_samples_skips():
    observation = observe(100, [3.0, 2.0, 1.0, 1.0], [1, 1, 1, 1])
    observation.sampling_weights = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=F64)
    update = odm().update(observation)
    assert update.skipped is not None and "('books') had samples" in update.skipped
