"""Does one GRAPE setting mean the same step on another model or learning rate? The study
behind the default of ``gradient_scaling``.

GRAPE's domain step is ``mu_a * s`` with ``s`` a weighted sum of gradient dot products. With
``raw`` products ``s`` is in units of ‖g‖², so the same ``mu_a`` moves α by a different amount
when the model, the learning rate or the training phase changes ‖g‖; ``clip`` (each gradient
clipped to ``clip_norm``, the reference code) and ``cosine`` (unit gradients) bound it.

The study runs GRAPE under every scaling on a few *conditions* (model size x learning rate,
each with its own uniform run) and measures, per run:

* ``movement``: the mean total-variation distance between consecutive α (per event), i.e. the
  step one event takes on the simplex, and its ratio to the base condition's;
* ``average_alpha`` and its total-variation distance to the base condition's time-averaged α,
  against the distance between two seeds of the base condition (the seed noise);
* the seed-paired token efficiency against the uniform run of the same condition and seed.

A scaling is scale-free when its movement ratios stay near 1 and its α distances stay within
the seed noise. Runs are ordinary benchmark jobs (one result file each), so the study resumes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from megagrape.experiments.analysis import curve_of
from megagrape.experiments.benchmark_spec import plan_benchmark, yaml_value
from megagrape.experiments.efficiency import SUMMARIES, token_efficiency
from megagrape.experiments.runs import RunJob

SCALINGS = ("raw", "clip", "cosine")


@dataclass(frozen=True)
class Condition:
    """One model/optimiser setting of the study: run-config overrides on top of the scale's."""

    name: str
    """Short slug used in run names, e.g. ``L4-lr5e-4``."""
    description: str
    overrides: tuple[str, ...] = ()


DEFAULT_CONDITIONS: tuple[Condition, ...] = (
    Condition("base", "2 layers, lr 2e-3 (the cpu scale)"),
    Condition("lr5e-4", "2 layers, lr 5e-4", ("train.lr=5e-4", "train.min_lr=5e-5")),
    Condition("L4", "4 layers, lr 2e-3", ("model.num_layers=4",)),
    Condition(
        "L4-lr5e-4",
        "4 layers, lr 5e-4",
        ("model.num_layers=4", "train.lr=5e-4", "train.min_lr=5e-5"),
    ),
)


@dataclass(frozen=True)
class StudyPlan:
    """Uniform and GRAPE-per-scaling jobs of every condition; the base condition also runs
    ``noise_seed`` so that two seeds of one setting give the seed noise."""

    conditions: tuple[Condition, ...]
    scalings: tuple[str, ...]
    seed: int
    noise_seed: int
    out: Path
    jobs: list[RunJob]


def _renamed(job: RunJob, name: str, out: Path, extra: Sequence[str], labels: dict) -> RunJob:
    overrides = tuple(o for o in job.overrides if not o.startswith("name="))
    return replace(
        job,
        name=name,
        overrides=(*overrides, f"name={name}", *extra),
        result_path=str(out / "results" / f"{name}.json"),
        log_path=str(out / "logs" / f"{name}.log"),
        labels=labels,
    )


def plan_study(
    *,
    conditions: Sequence[Condition] = DEFAULT_CONDITIONS,
    scalings: Sequence[str] = SCALINGS,
    seed: int = 1,
    noise_seed: int = 2,
    overrides: Sequence[str] = (),
    **bench_kwargs,
) -> StudyPlan:
    """Jobs named ``uniform-<condition>-s<seed>`` and ``grape-<scaling>-<condition>-s<seed>``;
    ``bench_kwargs`` go to ``plan_benchmark`` (scale, preset, corpus, out, train_iters, ...)."""
    unknown = [s for s in scalings if s not in SCALINGS]
    if unknown or not scalings:
        raise ValueError(f"--scalings {list(scalings)}: choose from {', '.join(SCALINGS)}")
    if len({c.name for c in conditions}) != len(conditions):
        raise ValueError("condition names repeat")
    jobs: list[RunJob] = []
    out = None
    for index, condition in enumerate(conditions):
        seeds = [seed, noise_seed] if index == 0 else [seed]
        bench = plan_benchmark(
            methods=["uniform", "grape"],
            seeds=seeds,
            overrides=[*overrides, *condition.overrides],
            **bench_kwargs,
        )
        out = bench.out
        for run_seed in seeds:
            labels = {"condition": condition.name, "seed": run_seed}
            jobs.append(
                _renamed(
                    bench.job("uniform", run_seed),
                    f"uniform-{condition.name}-s{run_seed}",
                    out,
                    (),
                    {"method": "uniform", **labels},
                )
            )
            for scaling in scalings:
                jobs.append(
                    _renamed(
                        bench.job("grape", run_seed),
                        f"grape-{scaling}-{condition.name}-s{run_seed}",
                        out,
                        (f"mixture.options.gradient_scaling={yaml_value(scaling)}",),
                        {"method": "grape", "scaling": scaling, **labels},
                    )
                )
    for job in jobs:
        job.config()  # every run is valid before anything starts
    return StudyPlan(tuple(conditions), tuple(scalings), seed, noise_seed, out, jobs)


def _vector(weights: Mapping[str, float], names: Sequence[str]) -> np.ndarray:
    return np.array([float(weights[n]) for n in names], dtype=np.float64)


def total_variation(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """½ Σ |a_k − b_k| over the domains of ``a`` (both must name the same domains)."""
    if set(a) != set(b):
        raise ValueError(f"weights over different domains: {sorted(a)} vs {sorted(b)}")
    names = sorted(a)
    return 0.5 * float(np.abs(_vector(a, names) - _vector(b, names)).sum())


def movement(result: Mapping) -> float:
    """Mean TV distance between consecutive α over the run's applied events (the first event is
    measured from uniform); NaN when no event was applied."""
    applied = [e["domain_weights"] for e in result["events"] if not e["skipped"]]
    if not applied:
        return math.nan
    previous = {name: 1.0 / len(applied[0]) for name in applied[0]}
    steps = []
    for weights in applied:
        steps.append(total_variation(weights, previous))
        previous = weights
    return float(np.mean(steps))


def effective_domains(weights: Mapping[str, float]) -> float:
    """exp(entropy) of a mixture: K for uniform, 1 for a single domain."""
    p = np.array([w for w in weights.values() if w > 0], dtype=np.float64)
    return float(np.exp(-(p * np.log(p)).sum()))


def skipped_events(result: Mapping) -> int:
    return sum(1 for e in result["events"] if e["skipped"])


def study_table(results: Sequence[Mapping], plan: StudyPlan) -> dict:
    """Per scaling and condition: movement (and its ratio to base), the effective number of
    domains of the average α, its TV distance to the base condition's, and the token
    efficiency vs that condition's uniform; plus the base condition's seed noise. Runs that have
    not finished yet are left out (a resumed study fills them in)."""
    by_name = {r["name"]: r for r in results}
    base = plan.conditions[0].name
    seed = plan.seed

    def result_of(method: str, condition: str, run_seed: int, scaling: str | None = None):
        prefix = f"{method}-{scaling}" if scaling else method
        return by_name.get(f"{prefix}-{condition}-s{run_seed}")

    table: dict = {"conditions": [c.__dict__ for c in plan.conditions], "scalings": {}}
    for scaling in plan.scalings:
        base_run = result_of("grape", base, seed, scaling)
        noise_run = result_of("grape", base, plan.noise_seed, scaling)
        noise = (
            total_variation(base_run["average_alpha"], noise_run["average_alpha"])
            if base_run and noise_run
            else None
        )
        base_movement = movement(base_run) if base_run else None
        rows = []
        for condition in plan.conditions:
            run = result_of("grape", condition.name, seed, scaling)
            uniform = result_of("uniform", condition.name, seed)
            if run is None:
                continue
            row = {
                "condition": condition.name,
                "movement": movement(run),
                "movement_ratio": (movement(run) / base_movement if base_movement else None),
                "effective_domains": effective_domains(run["average_alpha"]),
                "tv_to_base": (
                    total_variation(run["average_alpha"], base_run["average_alpha"])
                    if base_run
                    else None
                ),
                "skipped_events": skipped_events(run),
                "average_alpha": run["average_alpha"],
            }
            if uniform is not None:
                for kind in SUMMARIES:
                    e = token_efficiency(curve_of(run), curve_of(uniform), kind, seed)
                    row[f"efficiency_{kind}"] = e.to_dict()
            rows.append(row)
        ratios = [r["movement_ratio"] for r in rows if r["movement_ratio"] is not None]
        distances = [r["tv_to_base"] for r in rows[1:] if r["tv_to_base"] is not None]
        table["scalings"][scaling] = {
            "rows": rows,
            "seed_noise_tv": noise,
            "movement_spread": (max(ratios) / min(ratios)) if len(ratios) > 1 else None,
            "max_tv_to_base": max(distances) if distances else None,
        }
    return table


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def study_markdown(table: Mapping) -> str:
    """The study as a Markdown table per scaling plus a one-line summary each."""
    lines = []
    descriptions = {c["name"]: c["description"] for c in table["conditions"]}
    for scaling, block in table["scalings"].items():
        lines += [
            f"## gradient_scaling: {scaling}",
            "",
            f"Seed noise (TV between two seeds' average α, base condition): "
            f"{_fmt(block['seed_noise_tv'])}; largest TV to base: {_fmt(block['max_tv_to_base'])}; "
            f"movement max/min over conditions: {_fmt(block['movement_spread'], 2)}.",
            "",
            "| condition | α step per event (TV) | ratio to base | effective domains | TV to base | "
            "worst-target efficiency | mean-target efficiency | skipped |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in block["rows"]:
            worst = row.get("efficiency_worst", {}).get("label", "–")
            mean = row.get("efficiency_mean", {}).get("label", "–")
            lines.append(
                f"| {descriptions.get(row['condition'], row['condition'])} | "
                f"{_fmt(row['movement'], 4)} | {_fmt(row['movement_ratio'], 2)} | "
                f"{_fmt(row['effective_domains'], 2)} | {_fmt(row['tv_to_base'])} | {worst} | "
                f"{mean} | {row['skipped_events']} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot_movement(results: Sequence[Mapping], plan: StudyPlan, path: Path) -> Path:
    """Per scaling, one panel: the TV step of every event over training, a line per condition
    (seed ``plan.seed``); a scale-free signal gives lines that lie on each other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {r["name"]: r for r in results}
    fig, axes = plt.subplots(
        1, len(plan.scalings), figsize=(4.2 * len(plan.scalings), 3.4), squeeze=False, sharey=True
    )
    for ax, scaling in zip(axes[0], plan.scalings, strict=True):
        for condition in plan.conditions:
            run = by_name.get(f"grape-{scaling}-{condition.name}-s{plan.seed}")
            if run is None:
                continue
            applied = [e for e in run["events"] if not e["skipped"]]
            steps, moves = [], []
            previous = None
            for event in applied:
                if previous is not None:
                    steps.append(event["step"])
                    moves.append(total_variation(event["domain_weights"], previous))
                previous = event["domain_weights"]
            ax.plot(steps, moves, label=condition.description, linewidth=1.0)
        ax.set_yscale("log")
        ax.set_title(f"gradient_scaling = {scaling}", fontsize=10)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("α step per event (total variation)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("GRAPE's step on the simplex under each gradient scaling", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
