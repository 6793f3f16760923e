"""Bootstrap intervals, uniform's noise floor and paired final-loss differences."""

from __future__ import annotations

import numpy as np
import pytest

from megagrape.experiments.efficiency import Curve
from megagrape.experiments.statistics import (
    bootstrap_interval,
    noise_floor,
    paired_differences,
)

TOKENS = np.array([100.0, 200.0, 300.0, 400.0])


def curve(values, other=None) -> Curve:
    losses = {"a": np.asarray(values, dtype=np.float64)}
    losses["b"] = np.asarray(other if other is not None else values, dtype=np.float64) - 0.5
    return Curve(TOKENS, losses)


def test_bootstrap_is_a_percentile_interval_of_resampled_means():
    # Means of 3 draws from {0, 0, 3}: P(mean = 0) = 8/27 and P(mean = 3) = 1/27, both above
    # the 2.5% tails, so the exact percentile interval is [0, 3]. A normal approximation
    # (mean +- 1.96 standard errors) would go below 0.
    interval = bootstrap_interval([0.0, 0.0, 3.0])
    assert interval.mean == pytest.approx(1.0)
    assert (interval.low, interval.high) == (0.0, 3.0)
    assert interval.count == 3
    again = bootstrap_interval([0.0, 0.0, 3.0])
    assert again == interval  # a fixed resampling seed: the same results, the same interval


def test_bootstrap_interval_narrows_with_more_seeds_and_collapses_without_spread():
    rng = np.random.default_rng(1)
    few = bootstrap_interval(rng.normal(0.6, 0.1, size=3))
    many = bootstrap_interval(rng.normal(0.6, 0.1, size=50))
    assert many.high - many.low < few.high - few.low
    assert many.low < 0.6 < many.high
    flat = bootstrap_interval([0.5, 0.5, 0.5, 0.5])
    assert (flat.low, flat.mean, flat.high) == (0.5, 0.5, 0.5)
    one = bootstrap_interval([0.7])
    assert one.count == 1 and "no interval" in one.label()
    assert bootstrap_interval([]).count == 0
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval([1.0, 2.0], confidence=1.5)


def test_noise_floor_measures_uniform_against_itself_in_both_directions():
    uniform = {
        1: curve([6.0, 5.0, 4.5, 4.0]),
        2: curve([5.9, 4.9, 4.2, 3.8]),  # a luckier seed: reaches seed 1's final loss early
        3: curve([6.0, 5.0, 4.5, 4.0]),  # identical to seed 1
    }
    floor = noise_floor(uniform, "mean")
    pairs = {(a, b): r for a, b, r in floor.pairs}
    assert len(pairs) == 6  # every ordered pair of distinct seeds
    assert pairs[(1, 3)] == pytest.approx(1.0) and pairs[(3, 1)] == pytest.approx(1.0)
    # seed 2's mean curve is [5.65, 4.65, 3.95, 3.55]; seed 1's final mean is 3.75: crossed
    # between 300 and 400 tokens, at 350
    assert pairs[(2, 1)] == pytest.approx(350 / 400)
    assert pairs[(1, 2)] == pytest.approx(1.0)  # never reaches seed 2's 3.55: lower bound 1
    assert floor.low == pytest.approx(pairs[(2, 1)]) and floor.high == pytest.approx(1.0)
    assert floor.final_loss_range == pytest.approx(0.2)
    assert "6 seed pairs" in floor.label()
    worst = noise_floor(uniform, "worst")
    assert worst.final_losses == (4.0, 3.8, 4.0)
    assert noise_floor({1: uniform[1]}, "mean").label().startswith("n/a")


def test_paired_differences_pair_by_seed_and_ignore_unpaired_seeds():
    baseline = {1: curve([6, 5, 4, 4.0]), 2: curve([6, 5, 4, 3.9])}
    method = {1: curve([6, 5, 4, 3.8]), 2: curve([6, 5, 4, 3.8]), 9: curve([1, 1, 1, 1.0])}
    diff = paired_differences(method, baseline, "worst")
    assert [s for s, _ in diff.per_seed] == [1, 2]
    assert [d for _, d in diff.per_seed] == pytest.approx([-0.2, -0.1])
    assert diff.interval.mean == pytest.approx(-0.15)
    assert diff.interval.low == pytest.approx(-0.2) and diff.interval.high == pytest.approx(-0.1)
    assert diff.to_dict()["label"].startswith("-0.150")
