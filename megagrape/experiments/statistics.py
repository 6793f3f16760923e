"""How far a benchmark's figures stand above seed noise: bootstrap intervals and the noise floor.

Three questions a reader of a mixture benchmark asks, each answered side by side with the
token efficiencies of :mod:`megagrape.experiments.efficiency`:

* **How uncertain is a method's mean over seeds?** ``bootstrap_interval``: the percentile
  interval of the mean of the per-seed values, resampling seeds with replacement. For token
  efficiency the values are seed-paired ratios (method seed s against uniform seed s), so
  this is a paired bootstrap. A seed that never reached uniform's final loss enters with its
  lower bound (total tokens over uniform's), which makes the interval a lower bound too.
* **How much does uniform differ from itself?** ``noise_floor``: uniform seed a measured
  against uniform seed b for every ordered pair a != b. A method's ratio is only evidence
  where it falls outside this spread.
* **Is the final loss lower by more than noise?** ``paired_differences``: per seed, the
  method's final summary loss minus uniform's, with its bootstrap interval, beside the same
  difference between uniform seeds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from megagrape.experiments.efficiency import Curve, token_efficiency

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same results give the same interval


@dataclass(frozen=True)
class Interval:
    """Mean of per-seed values with a bootstrap percentile interval."""

    mean: float
    low: float
    high: float
    count: int
    confidence: float

    def label(self, digits: int = 2) -> str:
        if self.count == 0:
            return "n/a"
        if self.count == 1:
            return f"{self.mean:.{digits}f} (1 seed, no interval)"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "count": self.count,
            "confidence": self.confidence,
        }


def bootstrap_interval(
    values: Sequence[float],
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Interval:
    """Percentile bootstrap interval of the mean of ``values`` (one value per seed)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1:
        raise ValueError(f"values must be 1-D (one per seed), got shape {data.shape}")
    if data.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, confidence)
    mean = float(data.mean())
    if data.size == 1:
        return Interval(mean, mean, mean, 1, confidence)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, data.size, size=(resamples, data.size))
    means = data[picks].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(mean, float(low), float(high), int(data.size), confidence)


@dataclass(frozen=True)
class NoiseFloor:
    """Uniform against itself: the efficiency of uniform seed a measured at uniform seed b."""

    pairs: tuple[tuple[int, int, float], ...]  # (seed a, seed b, ratio bound) for a != b
    final_losses: tuple[float, ...]  # uniform's final summary loss per seed (nats per token)

    @property
    def ratios(self) -> np.ndarray:
        return np.array([r for _, _, r in self.pairs], dtype=np.float64)

    @property
    def low(self) -> float:
        return float(self.ratios.min()) if self.pairs else math.nan

    @property
    def high(self) -> float:
        return float(self.ratios.max()) if self.pairs else math.nan

    @property
    def final_loss_range(self) -> float:
        """max - min of uniform's final summary loss over seeds (nats per token)."""
        return float(max(self.final_losses) - min(self.final_losses)) if self.final_losses else 0.0

    def label(self) -> str:
        if not self.pairs:
            return "n/a (one uniform seed)"
        return f"[{self.low:.2f}, {self.high:.2f}] over {len(self.pairs)} seed pairs"

    def to_dict(self) -> dict:
        return {
            "low": self.low,
            "high": self.high,
            "pairs": [{"seed": a, "against": b, "ratio": r} for a, b, r in self.pairs],
            "final_losses": list(self.final_losses),
            "final_loss_range": self.final_loss_range,
            "label": self.label(),
        }


def noise_floor(uniform: Mapping[int, Curve], kind: str) -> NoiseFloor:
    """Cross-seed efficiencies of uniform on the ``kind`` summary ("worst" or "mean")."""
    seeds = sorted(uniform)
    pairs = tuple(
        (a, b, token_efficiency(uniform[a], uniform[b], kind, a).bound)
        for a, b in itertools.permutations(seeds, 2)
    )
    finals = tuple(float(uniform[s].summary(kind)[-1]) for s in seeds)
    return NoiseFloor(pairs, finals)


@dataclass(frozen=True)
class LossDifference:
    """Per seed: the method's final summary loss minus the baseline's (negative = better)."""

    per_seed: tuple[tuple[int, float], ...]
    interval: Interval

    def to_dict(self) -> dict:
        return {
            "per_seed": [{"seed": s, "difference": d} for s, d in self.per_seed],
            **self.interval.to_dict(),
            "label": self.interval.label(3),
        }


def paired_differences(
    method: Mapping[int, Curve], baseline: Mapping[int, Curve], kind: str
) -> LossDifference:
    """Final-loss differences on the seeds both have, with their bootstrap interval."""
    seeds = sorted(set(method) & set(baseline))
    per_seed = tuple(
        (s, float(method[s].summary(kind)[-1] - baseline[s].summary(kind)[-1])) for s in seeds
    )
    return LossDifference(per_seed, bootstrap_interval([d for _, d in per_seed]))
