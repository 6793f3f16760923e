"""From run results to the benchmark's numbers: curves, seed-paired token efficiency, finals.

A result is the dict ``megagrape.experiments.runs.build_result`` writes: ``method``, ``seed``,
``curve`` (``tokens`` [P], ``train_seconds`` [P] and ``loss`` {target: [P]}), ``final``
({target: scores}), ``final_alpha`` ({domain: w}), ``seconds``, ``tokens``.

Every comparison of a method with uniform carries, per summary (worst / mean target): the
token efficiency per seed, its paired bootstrap interval, the wall-clock efficiency (training
seconds, events included, to reach uniform's final loss over uniform's training seconds) and
the paired final-loss difference; the analysis carries uniform's noise floor beside them
(``megagrape.experiments.statistics``).

A target's final scores depend on its kind: multiple-choice targets have ``acc``, ``acc_norm``
and ``loss`` (the gold continuation's), LM-text targets ``loss``, ``ppl`` and ``bpb``. Every
target has ``loss`` (the curves and the worst/mean summaries use it); accuracies are summarised
over the targets that have them, perplexities likewise, so a benchmark may mix both kinds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from megagrape.experiments.efficiency import SUMMARIES, Curve, Spread, paired_spread
from megagrape.experiments.statistics import (
    Interval,
    LossDifference,
    NoiseFloor,
    bootstrap_interval,
    noise_floor,
    paired_differences,
)

BASELINE = "uniform"
TARGET_RATIO = 0.6
"""GRAPE's goal: reach uniform's final worst-target loss with at most this share of its tokens."""


def curve_of(result: Mapping) -> Curve:
    curve = result["curve"]
    return Curve(np.asarray(curve["tokens"], dtype=np.float64), curve["loss"])


def time_curve_of(result: Mapping) -> Curve | None:
    """The target losses against training seconds (events included); None if not recorded."""
    curve = result["curve"]
    seconds = curve.get("train_seconds")
    if not seconds:
        return None
    return Curve(np.asarray(seconds, dtype=np.float64), curve["loss"])


def curves_by_method(results: Sequence[Mapping], axis=curve_of) -> dict[str, dict[int, Curve]]:
    """{method: {seed: Curve}} over the results (results without eval points are left out).

    ``axis``: ``curve_of`` (tokens) or ``time_curve_of`` (training seconds; a method is left out
    unless every one of its results recorded them)."""
    out: dict[str, dict[int, Curve]] = {}
    missing: set[str] = set()
    for result in results:
        if not result["curve"]["tokens"]:
            continue
        curve = axis(result)
        if curve is None:
            missing.add(result["method"])
        else:
            out.setdefault(result["method"], {})[int(result["seed"])] = curve
    return {m: c for m, c in out.items() if m not in missing}


@dataclass(frozen=True)
class Comparison:
    """``method`` against ``baseline`` on both summaries (keys of every mapping: SUMMARIES)."""

    method: str
    baseline: str
    spreads: Mapping[str, Spread]  # token efficiency per seed
    unpaired: list[int]
    intervals: Mapping[str, Interval]  # paired bootstrap interval of the token efficiency
    wall_clock: Mapping[str, Spread] | None  # None when a side lacks training seconds
    loss_differences: Mapping[str, LossDifference]  # final loss, method - baseline

    def to_dict(self) -> dict:
        out = {
            "method": self.method,
            "baseline": self.baseline,
            "unpaired_seeds": self.unpaired,
            **{kind: spread.to_dict() for kind, spread in self.spreads.items()},
        }
        for kind in self.spreads:
            out[kind]["interval"] = self.intervals[kind].to_dict()
            out[kind]["wall_clock"] = self.wall_clock[kind].to_dict() if self.wall_clock else None
            out[kind]["final_loss_difference"] = self.loss_differences[kind].to_dict()
        return out


def comparisons(
    curves: Mapping[str, Mapping[int, Curve]],
    methods: Sequence[str],
    time_curves: Mapping[str, Mapping[int, Curve]] | None = None,
) -> list[Comparison]:
    """Every method against uniform, and GRAPE against DoGE when both ran."""
    time_curves = time_curves or {}
    pairs = [(m, BASELINE) for m in methods if m != BASELINE]
    if "grape" in methods and "doge" in methods:
        pairs.append(("grape", "doge"))
    out = []
    for method, baseline in pairs:
        if method not in curves or baseline not in curves:
            continue
        spreads, intervals, differences, unpaired = {}, {}, {}, []
        timed = method in time_curves and baseline in time_curves
        wall_clock = {} if timed else None
        for kind in SUMMARIES:
            spreads[kind], unpaired = paired_spread(curves[method], curves[baseline], kind)
            intervals[kind] = bootstrap_interval([e.bound for e in spreads[kind].per_seed])
            differences[kind] = paired_differences(curves[method], curves[baseline], kind)
            if timed:
                wall_clock[kind], _ = paired_spread(
                    time_curves[method], time_curves[baseline], kind
                )
        out.append(
            Comparison(method, baseline, spreads, unpaired, intervals, wall_clock, differences)
        )
    return out


def _stats(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "min": float(array.min()), "max": float(array.max())}


def scored_targets(runs: Sequence[Mapping], targets: Sequence[str], metric: str) -> list[str]:
    """The targets whose final scores hold ``metric`` in every run (in ``targets`` order)."""
    return [t for t in targets if all(metric in r["final"][t] for r in runs)]


def _per_target(runs: Sequence[Mapping], targets: Sequence[str], metric: str) -> dict:
    return {t: _stats([r["final"][t][metric] for r in runs]) for t in targets}


def _mean_over(runs: Sequence[Mapping], targets: Sequence[str], metric: str) -> dict | None:
    """Stats over seeds of the mean of ``metric`` across ``targets``; None without targets."""
    if not targets:
        return None
    return _stats([float(np.mean([r["final"][t][metric] for t in targets])) for r in runs])


def method_summary(results: Sequence[Mapping], method: str) -> dict:
    """Final scores of one method over its seeds: mean/min/max of each number.

    ``final_acc``/``final_acc_norm`` and ``mean_acc``/``mean_acc_norm`` cover the targets with
    accuracies (multiple choice; ``accuracy_targets``), ``final_ppl`` those with perplexities
    (LM text); a mean over no targets is None.
    """
    runs = [r for r in results if r["method"] == method]
    if not runs:
        return {}
    targets = list(runs[0]["final"])
    missing = [(r.get("name", r["seed"]), t) for r in runs for t in targets if t not in r["final"]]
    if missing:
        raise ValueError(
            f"method {method!r}: runs evaluated different targets; {missing[0][0]} lacks "
            f"{missing[0][1]!r} (the runs of one benchmark must share their targets)"
        )
    acc_targets = scored_targets(runs, targets, "acc")
    acc_norm_targets = scored_targets(runs, targets, "acc_norm")
    final_worst = [max(r["final"][t]["loss"] for t in targets) for r in runs]
    final_mean = [float(np.mean([r["final"][t]["loss"] for t in targets])) for r in runs]
    summary = {
        "seeds": sorted(int(r["seed"]) for r in runs),
        "tokens": runs[0]["tokens"],
        "seconds": _stats([r["seconds"] for r in runs]),
        "final_worst_loss": _stats(final_worst),
        "final_mean_loss": _stats(final_mean),
        "final_loss": _per_target(runs, targets, "loss"),
        "accuracy_targets": acc_targets,
        "final_acc": _per_target(runs, acc_targets, "acc"),
        "final_acc_norm": _per_target(runs, acc_norm_targets, "acc_norm"),
        "mean_acc": _mean_over(runs, acc_targets, "acc"),
        "mean_acc_norm": _mean_over(runs, acc_norm_targets, "acc_norm"),
        "final_ppl": _per_target(runs, scored_targets(runs, targets, "ppl"), "ppl"),
        "final_bpb": _per_target(runs, scored_targets(runs, targets, "bpb"), "bpb"),
        "worst_target": _most_common(
            [max(targets, key=lambda t, r=r: r["final"][t]["loss"]) for r in runs]
        ),
    }
    alphas = [r["final_alpha"] for r in runs if r.get("final_alpha")]
    if alphas:
        domains = list(alphas[0])
        summary["final_alpha"] = {d: _stats([a[d] for a in alphas]) for d in domains}
    return summary


def _most_common(names: Sequence[str]) -> str:
    return max(sorted(set(names)), key=names.count)


@dataclass(frozen=True)
class Analysis:
    """Per-method final scores and the seed-paired comparisons of one benchmark."""

    methods: list[str]
    summaries: dict[str, dict]
    comparisons: list[Comparison]
    noise_floors: Mapping[str, NoiseFloor]  # uniform against itself, per summary (empty without)

    def comparison(self, method: str, baseline: str) -> Comparison | None:
        return next(
            (c for c in self.comparisons if c.method == method and c.baseline == baseline), None
        )

    def grape_meets_target(self) -> bool | None:
        """GRAPE reached uniform's final worst-target loss within TARGET_RATIO on every seed."""
        headline = self.comparison("grape", BASELINE)
        return None if headline is None else headline.spreads["worst"].meets(TARGET_RATIO)

    def to_dict(self) -> dict:
        return {
            "methods": self.methods,
            "summaries": self.summaries,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "noise_floor": {kind: floor.to_dict() for kind, floor in self.noise_floors.items()},
            "target_ratio": TARGET_RATIO,
            "grape_meets_target": self.grape_meets_target(),
        }


def analyse(results: Sequence[Mapping], methods: Sequence[str]) -> Analysis:
    """Per-method finals and every comparison, for the methods that have results."""
    curves = curves_by_method(results)
    present = [m for m in methods if m in curves]
    floors = (
        {kind: noise_floor(curves[BASELINE], kind) for kind in SUMMARIES}
        if BASELINE in curves
        else {}
    )
    return Analysis(
        methods=present,
        summaries={m: method_summary(results, m) for m in present},
        comparisons=comparisons(curves, present, curves_by_method(results, time_curve_of)),
        noise_floors=floors,
    )
