"""Writing the benchmark's outputs: results.json, results.md and the PNG figures."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from megagrape.experiments.analysis import BASELINE, TARGET_RATIO, Analysis, curves_by_method
from megagrape.experiments.benchmark_plots import (
    plot_final_alpha,
    plot_summary_losses,
    plot_target_losses,
)
from megagrape.utils.atomic import write_atomic

FIGURES = {
    "target_loss": "target_loss.png",
    "summary_loss": "worst_mean_loss.png",
    "final_alpha": "final_alpha.png",
}


NOT_SCORED = "n/a"
"""Table entry for a number a target does not have (accuracy of an LM-text target, ...)."""


def _range(stats: Mapping[str, float] | None, digits: int = 3) -> str:
    if stats is None:
        return NOT_SCORED
    return f"{stats['mean']:.{digits}f} [{stats['min']:.{digits}f}, {stats['max']:.{digits}f}]"


def _per_target_table(
    analysis: Analysis,
    key: str,
    caption: str,
    digits: int = 3,
    floor: Mapping[str, float] | None = None,
) -> list[str]:
    """A method x target table of ``summaries[method][key]`` means, over the targets any
    method has that number for (n/a where one lacks it); no lines when no target has it.
    ``floor``: a last row of reference values per target (the unigram level)."""
    targets: list[str] = []
    for method in analysis.methods:
        for target in analysis.summaries[method].get(key, {}):
            if target not in targets:
                targets.append(target)
    if not targets:
        return []
    lines = ["", caption, "", "| method | " + " | ".join(targets) + " |"]
    lines.append("|---|" + "---|" * len(targets))
    for method in analysis.methods:
        values = analysis.summaries[method].get(key, {})
        cells = [f"{values[t]['mean']:.{digits}f}" if t in values else NOT_SCORED for t in targets]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if floor:
        cells = [f"{floor[t]:.{digits}f}" if t in floor else NOT_SCORED for t in targets]
        lines.append("| *unigram level* | " + " | ".join(cells) + " |")
    return lines


def _evidence_table(analysis: Analysis) -> list[str]:
    """Beside each efficiency: its bootstrap interval, the wall-clock efficiency, the final-loss
    difference, and uniform's own spread (the noise floor)."""
    if not analysis.comparisons:
        return []
    lines = [
        "",
        "## Against seed noise",
        "",
        "Paired bootstrap: the 95% percentile interval of the mean efficiency, resampling seeds. "
        "Wall clock: training seconds (reweighting events included, evaluations excluded) to "
        "reach the baseline's final loss, over the baseline's training seconds. Final-loss "
        "difference: method - baseline, nats/token, per seed then bootstrapped.",
        "",
        "| method | vs | summary | token efficiency [95% CI] | wall-clock efficiency | "
        "final-loss difference [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for comparison in analysis.comparisons:
        for kind in ("worst", "mean"):
            wall = comparison.wall_clock[kind].label() if comparison.wall_clock else NOT_SCORED
            lines.append(
                f"| {comparison.method} | {comparison.baseline} | {kind} | "
                f"{comparison.intervals[kind].label()} | {wall} | "
                f"{comparison.loss_differences[kind].interval.label(3)} |"
            )
    if analysis.noise_floors:
        lines += [
            "",
            f"Noise floor: {BASELINE} seed a measured against {BASELINE} seed b (every ordered "
            "pair a != b). A method's efficiency is evidence only outside this range.",
            "",
            "| summary | uniform vs uniform efficiency | uniform final-loss range (nats/token) |",
            "|---|---|---|",
        ]
        for kind, floor in analysis.noise_floors.items():
            lines.append(f"| {kind} | {floor.label()} | {floor.final_loss_range:.3f} |")
    return lines


def _unigram_column(unigram: Mapping[str, Mapping[str, float]] | None, key: str) -> dict:
    return {t: scores[key] for t, scores in (unigram or {}).items() if key in scores}


def markdown(
    analysis: Analysis,
    settings: Mapping,
    results: Sequence[Mapping],
    unigram: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """The results.md text: settings, token efficiency (per seed and spread), final scores.

    ``unigram``: each target's scores of the unigram model (megagrape.experiments.unigram),
    shown as the last row of the per-target loss and bits-per-byte tables."""
    lines = ["# Mixture benchmark", ""]
    lines += [f"* {key}: {value}" for key, value in settings.items()]
    lines += [
        "",
        "## Token efficiency (seed-paired)",
        "",
        "Tokens a method needs to reach the baseline's final loss, as a share of the baseline's "
        "tokens: method seed s against baseline seed s (same initialisation, data order and "
        "eval items), linear interpolation between evaluation points. Mean [min, max] over "
        "seeds; a seed that never reaches it counts as its lower bound ('>1 (not reached)').",
        "",
        "| method | vs | worst-target | mean-target | worst-target per seed | mean-target per seed |",
        "|---|---|---|---|---|---|",
    ]
    for comparison in analysis.comparisons:
        worst, mean = comparison.spreads["worst"], comparison.spreads["mean"]
        per_seed = [
            ", ".join(f"s{e.seed}: {e.label()}" for e in spread.per_seed)
            for spread in (worst, mean)
        ]
        lines.append(
            f"| {comparison.method} | {comparison.baseline} | {worst.label()} | {mean.label()} | "
            f"{per_seed[0]} | {per_seed[1]} |"
        )
    lines += _evidence_table(analysis)
    meets = analysis.grape_meets_target()
    if meets is not None:
        lines += [
            "",
            f"GRAPE reaches {BASELINE}'s final worst-target loss with <= {TARGET_RATIO} of its "
            f"tokens on every seed: **{'yes' if meets else 'no'}**.",
        ]
    lines += [
        "",
        "## Final scores",
        "",
        "Target loss (nats/token) of the last evaluation (the gold continuation's for "
        "multiple-choice targets, the text's for LM-text targets) and mean accuracy over the "
        "multiple-choice targets (n/a when there are none); mean [min, max] over seeds. Wall "
        "time is per run.",
        "",
        "| method | seeds | worst-target loss | mean-target loss | mean acc | mean acc_norm | worst target | minutes/run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in analysis.methods:
        s = analysis.summaries[method]
        lines.append(
            f"| {method} | {len(s['seeds'])} | {_range(s['final_worst_loss'])} | "
            f"{_range(s['final_mean_loss'])} | {_range(s['mean_acc'])} | "
            f"{_range(s['mean_acc_norm'])} | {s['worst_target']} | "
            f"{s['seconds']['mean'] / 60:.1f} |"
        )
    lines += _per_target_table(
        analysis,
        "final_loss",
        "Final loss per target (mean over seeds; the unigram level is a model that knows only "
        "the training token frequencies):",
        floor=_unigram_column(unigram, "loss"),
    )
    lines += _per_target_table(
        analysis,
        "final_acc",
        "Final accuracy per multiple-choice target (mean over seeds):",
    )
    lines += _per_target_table(
        analysis,
        "final_ppl",
        "Final perplexity per LM-text target (mean over seeds):",
        digits=2,
    )
    lines += _per_target_table(
        analysis,
        "final_bpb",
        "Final bits per UTF-8 byte per LM-text target (mean over seeds; compares across "
        "tokenizers):",
        floor=_unigram_column(unigram, "bpb"),
    )
    with_alpha = [m for m in analysis.methods if "final_alpha" in analysis.summaries[m]]
    if with_alpha:
        domains = list(analysis.summaries[with_alpha[0]]["final_alpha"])
        lines += [
            "",
            "Final domain weights α (mean over seeds):",
            "",
            "| method | " + " | ".join(domains) + " |",
            "|---|" + "---|" * len(domains),
        ]
        for method in with_alpha:
            alpha = analysis.summaries[method]["final_alpha"]
            lines.append(
                f"| {method} | " + " | ".join(f"{alpha[d]['mean']:.3f}" for d in domains) + " |"
            )
    lines += ["", "## Figures", ""]
    lines += [f"![{key}]({name})" for key, name in FIGURES.items()]
    lines.append("")
    return "\n".join(lines)


def write_outputs(
    out: Path,
    analysis: Analysis,
    results: Sequence[Mapping],
    settings: Mapping,
    extra: Mapping | None = None,
    unigram: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Path]:
    """Write results.json, results.md and the figures under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    curves = curves_by_method(results)
    ordered = {m: curves[m] for m in analysis.methods}
    title = settings.get("title", "")
    if ordered:
        paths["target_loss"] = plot_target_losses(ordered, out / FIGURES["target_loss"], title)
        paths["summary_loss"] = plot_summary_losses(
            ordered, out / FIGURES["summary_loss"], title=title
        )
        alphas = {
            m: [r["final_alpha"] for r in results if r["method"] == m and r.get("final_alpha")]
            for m in analysis.methods
        }
        if any(alphas.values()):
            paths["final_alpha"] = plot_final_alpha(alphas, out / FIGURES["final_alpha"], title)
    document = {
        "settings": dict(settings),
        **(dict(extra) if extra else {}),
        "analysis": analysis.to_dict(),
        "unigram_levels": dict(unigram) if unigram else None,
        "runs": list(results),
    }
    paths["json"] = out / "results.json"
    write_atomic(paths["json"], json.dumps(document, indent=1))
    paths["markdown"] = out / "results.md"
    write_atomic(paths["markdown"], markdown(analysis, settings, results, unigram))
    return paths
