"""Token efficiency of a mixture method against a baseline, from target-loss curves.

A run's curve is its gold-continuation target loss (mean per-token NLL of the gold answer,
nats) at every evaluation point, against the training tokens seen by then. Two summaries of
the N targets are compared: the worst target (max over targets at each point) and the mean
target.

Token efficiency of method m against baseline b for one seed s (seed-paired: m's seed s
against b's seed s, which share the initialisation seed, the data order seed and the
target's eval/signal split):

    threshold = summary_b(final evaluation)
    tokens_m  = the first token count at which summary_m, linearly interpolated between
                evaluation points, is <= threshold
    ratio     = tokens_m / (b's total training tokens)

A method that never reaches the threshold gets no ratio: it needs more than all of its own
tokens, so its ratio is reported as "> total_m / total_b" (">1" at equal budgets).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SUMMARIES = ("worst", "mean")


@dataclass(frozen=True)
class Curve:
    """Target losses of one run at its evaluation points.

    ``tokens`` is float64 [P], strictly increasing training-token counts; ``losses`` maps each
    target to float64 [P] losses (nats per token) at those points.
    """

    tokens: np.ndarray
    losses: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        tokens = np.asarray(self.tokens, dtype=np.float64)
        if tokens.ndim != 1 or tokens.size == 0:
            raise ValueError(f"a curve needs a non-empty 1-D token axis, got shape {tokens.shape}")
        if np.any(np.diff(tokens) <= 0):
            raise ValueError(f"curve tokens must be strictly increasing, got {tokens.tolist()}")
        if not self.losses:
            raise ValueError("a curve needs at least one target")
        losses = {}
        for name, values in self.losses.items():
            array = np.asarray(values, dtype=np.float64)
            if array.shape != tokens.shape:
                raise ValueError(
                    f"target {name!r} has {array.shape} losses for {tokens.shape} token points"
                )
            losses[name] = array
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "losses", losses)

    @property
    def targets(self) -> list[str]:
        return list(self.losses)

    def summary(self, kind: str) -> np.ndarray:
        """float64 [P]: the worst (max over targets) or mean target loss at each point."""
        stacked = np.stack([self.losses[name] for name in self.targets])
        if kind == "worst":
            return stacked.max(axis=0)
        if kind == "mean":
            return stacked.mean(axis=0)
        raise ValueError(f"unknown curve summary {kind!r}; use one of {SUMMARIES}")

    @property
    def total_tokens(self) -> float:
        return float(self.tokens[-1])


def first_crossing(tokens: np.ndarray, values: np.ndarray, threshold: float) -> float | None:
    """First token count at which the piecewise-linear curve (tokens, values) is <= threshold.

    None when no point (and so no segment) reaches the threshold. When the first point is
    already at or below it, that point's tokens are returned (the curve starts there).
    """
    tokens = np.asarray(tokens, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if values[0] <= threshold:
        return float(tokens[0])
    for i in range(1, len(values)):
        if values[i] <= threshold:
            t0, t1, v0, v1 = tokens[i - 1], tokens[i], values[i - 1], values[i]
            return float(t0 + (v0 - threshold) / (v0 - v1) * (t1 - t0))
    return None


@dataclass(frozen=True)
class Efficiency:
    """One seed-paired comparison: the tokens a method needs to reach the baseline's final loss."""

    seed: int
    threshold: float
    """The baseline's final summary loss (nats per token)."""
    tokens: float | None
    """Tokens the method needed (interpolated); None when it never got there."""
    baseline_tokens: float
    method_tokens: float
    """The method's total training tokens."""
    at_first_point: bool = False
    """The method was already below the threshold at its first evaluation (an upper bound)."""

    @property
    def reached(self) -> bool:
        return self.tokens is not None

    @property
    def ratio(self) -> float | None:
        return None if self.tokens is None else self.tokens / self.baseline_tokens

    @property
    def bound(self) -> float:
        """The ratio, or when not reached the lower bound total_method / total_baseline."""
        ratio = self.ratio
        return self.method_tokens / self.baseline_tokens if ratio is None else ratio

    def label(self) -> str:
        if self.tokens is None:
            return f">{_fmt(self.bound)} (not reached)"
        return ("<=" if self.at_first_point else "") + _fmt(self.bound)

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "threshold": self.threshold,
            "tokens": self.tokens,
            "baseline_tokens": self.baseline_tokens,
            "method_tokens": self.method_tokens,
            "ratio": self.ratio,
            "reached": self.reached,
            "at_first_point": self.at_first_point,
            "label": self.label(),
        }


def _fmt(value: float) -> str:
    return f"{value:.2f}" if abs(value - 1.0) > 1e-9 else "1"


def token_efficiency(method: Curve, baseline: Curve, kind: str, seed: int) -> Efficiency:
    """Seed-paired efficiency of ``method`` against ``baseline`` on the ``kind`` summary."""
    missing = sorted(set(baseline.targets) - set(method.targets))
    if missing:
        raise ValueError(f"the method's curve lacks targets {missing} that the baseline has")
    threshold = float(baseline.summary(kind)[-1])
    restricted = Curve(method.tokens, {name: method.losses[name] for name in baseline.targets})
    values = restricted.summary(kind)
    tokens = first_crossing(restricted.tokens, values, threshold)
    return Efficiency(
        seed=seed,
        threshold=threshold,
        tokens=tokens,
        baseline_tokens=baseline.total_tokens,
        method_tokens=method.total_tokens,
        at_first_point=bool(tokens is not None and values[0] <= threshold),
    )


@dataclass(frozen=True)
class Spread:
    """Efficiency over seeds: mean, min and max of the per-seed ratios.

    A seed that never reached the threshold enters with its lower bound (total tokens over the
    baseline's), so ``mean`` and ``max`` are then lower bounds too (``is_lower_bound``).
    """

    per_seed: tuple[Efficiency, ...]

    @property
    def seeds(self) -> list[int]:
        return [e.seed for e in self.per_seed]

    @property
    def reached(self) -> int:
        return sum(e.reached for e in self.per_seed)

    @property
    def is_lower_bound(self) -> bool:
        return self.reached < len(self.per_seed)

    def _bounds(self) -> np.ndarray:
        return np.array([e.bound for e in self.per_seed], dtype=np.float64)

    @property
    def mean(self) -> float:
        return float(self._bounds().mean()) if self.per_seed else math.nan

    @property
    def min(self) -> float:
        return float(self._bounds().min()) if self.per_seed else math.nan

    @property
    def max(self) -> float:
        return float(self._bounds().max()) if self.per_seed else math.nan

    def meets(self, target_ratio: float) -> bool:
        """Every seed reached the threshold within ``target_ratio`` of the baseline's tokens."""
        return bool(self.per_seed) and all(
            e.reached and e.bound <= target_ratio for e in self.per_seed
        )

    def label(self) -> str:
        """'0.62 [0.55, 0.70]' or '>=0.87 [0.60, >1] (2/3 reached)'."""
        if not self.per_seed:
            return "n/a"
        low = min(self.per_seed, key=lambda e: e.bound)
        high = max(self.per_seed, key=lambda e: (e.bound, not e.reached))
        low_text = ("<=" if low.at_first_point else "") + _fmt(low.bound)
        high_text = (">" if not high.reached else "") + _fmt(high.bound)
        mean_text = (">=" if self.is_lower_bound else "") + _fmt(self.mean)
        text = f"{mean_text} [{low_text}, {high_text}]"
        if self.is_lower_bound:
            text += f" ({self.reached}/{len(self.per_seed)} reached)"
        return text

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "min": self.min,
            "max": self.max,
            "reached": self.reached,
            "seeds": self.seeds,
            "is_lower_bound": self.is_lower_bound,
            "label": self.label(),
            "per_seed": [e.to_dict() for e in self.per_seed],
        }


def paired_spread(
    method: Mapping[int, Curve], baseline: Mapping[int, Curve], kind: str
) -> tuple[Spread, list[int]]:
    """Spread over the seeds both methods have; also returns the seeds only one side has."""
    common = sorted(set(method) & set(baseline))
    unpaired = sorted(set(method) ^ set(baseline))
    per_seed = tuple(token_efficiency(method[s], baseline[s], kind, s) for s in common)
    return Spread(per_seed), unpaired


@dataclass(frozen=True)
class Band:
    """Mean and min-max over seeds of a curve summary at common evaluation points ([P] each)."""

    tokens: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


def seed_band(curves: Sequence[Curve], values_of) -> Band:
    """Band of ``values_of(curve)`` over seeds, on the token points every curve shares.

    Seeds of one method share their evaluation steps; if they do not (a changed setting), the
    band is taken on the common prefix of points.
    """
    if not curves:
        raise ValueError("a band needs at least one curve")
    length = min(len(c.tokens) for c in curves)
    tokens = curves[0].tokens[:length]
    for curve in curves[1:]:
        if not np.allclose(curve.tokens[:length], tokens):
            raise ValueError("the seeds of one method evaluated at different token counts")
    stacked = np.stack([np.asarray(values_of(c), dtype=np.float64)[:length] for c in curves])
    return Band(tokens, stacked.mean(axis=0), stacked.min(axis=0), stacked.max(axis=0))
