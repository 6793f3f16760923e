"""From run results to the benchmark's numbers: curves, seed-paired token efficiency, finals.

A result is the dict ``megagrape.experiments.runs.build_result`` writes: ``method``, ``seed``,
``curve`` (``tokens`` [P] and ``loss`` {target: [P]}), ``final`` ({target: scores}),
``final_alpha`` ({domain: w}), ``seconds``, ``tokens``.

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

BASELINE = "uniform"
TARGET_RATIO = 0.6
"""GRAPE's goal: reach uniform's final worst-target loss with at most this share of its tokens."""


def curve_of(result: Mapping) -> Curve:
    curve = result["curve"]
    return Curve(np.asarray(curve["tokens"], dtype=np.float64), curve["loss"])


def curves_by_method(results: Sequence[Mapping]) -> dict[str, dict[int, Curve]]:
    """{method: {seed: Curve}} over the results (results without eval points are left out)."""
    out: dict[str, dict[int, Curve]] = {}
    for result in results:
        if result["curve"]["tokens"]:
            out.setdefault(result["method"], {})[int(result["seed"])] = curve_of(result)
    return out


@dataclass(frozen=True)
class Comparison:
    """Token efficiency of ``method`` against ``baseline`` on both summaries."""

    method: str
    baseline: str
    spreads: Mapping[str, Spread]
    unpaired: list[int]

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "baseline": self.baseline,
            "unpaired_seeds": self.unpaired,
            **{kind: spread.to_dict() for kind, spread in self.spreads.items()},
        }


def comparisons(
    curves: Mapping[str, Mapping[int, Curve]], methods: Sequence[str]
) -> list[Comparison]:
    """Every method against uniform, and GRAPE against DoGE when both ran."""
    pairs = [(m, BASELINE) for m in methods if m != BASELINE]
    if "grape" in methods and "doge" in methods:
        pairs.append(("grape", "doge"))
    out = []
    for method, baseline in pairs:
        if method not in curves or baseline not in curves:
            continue
        spreads, unpaired = {}, []
        for kind in SUMMARIES:
            spreads[kind], unpaired = paired_spread(curves[method], curves[baseline], kind)
        out.append(Comparison(method, baseline, spreads, unpaired))
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
            "target_ratio": TARGET_RATIO,
            "grape_meets_target": self.grape_meets_target(),
        }


def analyse(results: Sequence[Mapping], methods: Sequence[str]) -> Analysis:
    """Per-method finals and every comparison, for the methods that have results."""
    curves = curves_by_method(results)
    present = [m for m in methods if m in curves]
    return Analysis(
        methods=present,
        summaries={m: method_summary(results, m) for m in present},
        comparisons=comparisons(curves, present),
    )
