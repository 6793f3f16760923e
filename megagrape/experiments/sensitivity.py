"""GRAPE's sensitivity to its step sizes, reweighting interval and smoothing: a grid of runs.

The grid is every combination of ``mu_a`` x ``mu_z`` x interval R x smoothing (GRAPE's
``eps_a`` by default: α <- (1 - eps) α + eps / K), each run against the uniform run of the same
seed (``megagrape.experiments.benchmark_spec`` builds both, so the model, budget, evaluation
and data are the benchmark's). Every grid point gets the seed-paired token efficiency on the
worst and the mean target, and uniform's own noise floor is measured from its seeds.

Runs are ordinary benchmark jobs (one result file each, reused when its config is unchanged),
so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from megagrape.experiments.analysis import BASELINE, curve_of
from megagrape.experiments.benchmark_spec import BenchPlan, plan_benchmark, yaml_value
from megagrape.experiments.efficiency import SUMMARIES, paired_spread
from megagrape.experiments.runs import RunJob
from megagrape.experiments.statistics import bootstrap_interval, noise_floor


@dataclass(frozen=True)
class SweepGrid:
    """The values of each swept setting (every combination is one GRAPE run per seed)."""

    mu_a: tuple[float, ...]
    mu_z: tuple[float, ...]
    intervals: tuple[int, ...]
    smoothing: tuple[float, ...]
    smoothing_option: str = "eps_a"

    def points(self) -> list[dict]:
        """Every grid point as {"mu_a", "mu_z", "interval", "smoothing"}."""
        return [
            {"mu_a": a, "mu_z": z, "interval": r, "smoothing": s}
            for r, s, a, z in itertools.product(
                self.intervals, self.smoothing, self.mu_a, self.mu_z
            )
        ]


def point_name(point: Mapping, seed: int) -> str:
    return (
        f"grape-a{point['mu_a']:g}-z{point['mu_z']:g}-R{point['interval']}"
        f"-e{point['smoothing']:g}-s{seed}"
    )


@dataclass(frozen=True)
class SweepPlan:
    """The uniform jobs of every seed, one GRAPE job per (grid point, seed), and uniform on
    the extra ``noise_seeds`` that only widen uniform's noise floor."""

    bench: BenchPlan
    grid: SweepGrid
    uniform_jobs: list[RunJob]
    grape_jobs: list[RunJob]
    noise_jobs: list[RunJob] = field(default_factory=list)

    @property
    def jobs(self) -> list[RunJob]:
        return [*self.uniform_jobs, *self.noise_jobs, *self.grape_jobs]

    @property
    def seeds(self) -> list[int]:
        """The seeds every grid point runs on."""
        return list(self.bench.seeds)


def plan_sweep(grid: SweepGrid, noise_seeds: Sequence[int] = (), **bench_kwargs) -> SweepPlan:
    """``plan_benchmark`` for uniform and GRAPE, then GRAPE repeated over the grid; uniform
    also runs on ``noise_seeds`` (seeds the grid does not use)."""
    bench = plan_benchmark(methods=["uniform", "grape"], **bench_kwargs)
    shared = sorted(set(noise_seeds) & set(bench.seeds))
    if shared:
        raise ValueError(f"--noise-seeds {shared} are sweep seeds already; give other seeds")
    out = bench.out
    uniform_jobs = [bench.job("uniform", seed) for seed in bench.seeds]
    noise_jobs = []
    if noise_seeds:
        kwargs = {**bench_kwargs, "seeds": list(noise_seeds)}
        noise = plan_benchmark(methods=["uniform"], **kwargs)
        noise_jobs = [noise.job("uniform", seed) for seed in noise_seeds]
    grape_jobs = []
    for seed in bench.seeds:
        template = bench.job("grape", seed)
        for point in grid.points():
            name = point_name(point, seed)
            options = (
                f"mixture.options.mu_a={yaml_value(point['mu_a'])}",
                f"mixture.options.mu_z={yaml_value(point['mu_z'])}",
                f"mixture.options.{grid.smoothing_option}={yaml_value(point['smoothing'])}",
                f"mixture.interval={point['interval']}",
            )
            overrides = tuple(o for o in template.overrides if not o.startswith("name="))
            grape_jobs.append(
                replace(
                    template,
                    name=name,
                    overrides=(*overrides, f"name={name}", *options),
                    result_path=str(out / "results" / f"{name}.json"),
                    log_path=str(out / "logs" / f"{name}.log"),
                    labels={"method": "grape", "seed": seed, **point},
                )
            )
    for job in grape_jobs:
        job.config()  # every grid point is a valid run before anything starts
    return SweepPlan(bench, grid, uniform_jobs, grape_jobs, noise_jobs)


def sweep_table(
    results: Sequence[Mapping], grid: SweepGrid, seeds: Sequence[int] | None = None
) -> dict:
    """Per grid point and summary: per-seed efficiencies vs uniform of the same seed and their
    interval; plus uniform's noise floor over every uniform seed (``seeds``, the grid's seeds,
    and any noise seeds). Points without a result for every grid seed are left out."""
    every_uniform = {int(r["seed"]): curve_of(r) for r in results if r["method"] == BASELINE}
    wanted = set(every_uniform) if seeds is None else set(seeds)
    uniform = {s: c for s, c in every_uniform.items() if s in wanted}
    rows = []
    for point in grid.points():
        curves = {
            int(r["seed"]): curve_of(r)
            for r in results
            if r["method"] == "grape" and all(r.get(k) == v for k, v in point.items())
        }
        if not uniform or set(curves) != set(uniform):
            continue  # the point has not run on every seed (yet): not comparable with the rest
        row = {**point, "seeds": sorted(curves)}
        for kind in SUMMARIES:
            spread, _ = paired_spread(curves, uniform, kind)
            row[kind] = {
                "per_seed": [e.bound for e in spread.per_seed],
                "reached": spread.reached,
                "interval": bootstrap_interval([e.bound for e in spread.per_seed]).to_dict(),
            }
        rows.append(row)
    floors = (
        {kind: noise_floor(every_uniform, kind).to_dict() for kind in SUMMARIES}
        if len(every_uniform) > 1
        else {}
    )
    return {"points": rows, "noise_floor": floors, "smoothing_option": grid.smoothing_option}


def plot_sensitivity(table: Mapping, grid: SweepGrid, path: Path, kind: str = "worst") -> Path:
    """Heat-maps of GRAPE's mean token efficiency vs uniform: one mu_a x mu_z panel per
    (interval, smoothing); lower is better, 1 = uniform, '>' marks a seed that never reached."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(grid.intervals), len(grid.smoothing)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.4 * cols + 1.2, 3.0 * rows + 0.8), squeeze=False
    )
    by_point = {(p["mu_a"], p["mu_z"], p["interval"], p["smoothing"]): p for p in table["points"]}
    image = None
    for i, interval in enumerate(grid.intervals):
        for j, smoothing in enumerate(grid.smoothing):
            ax = axes[i][j]
            values = np.full((len(grid.mu_a), len(grid.mu_z)), np.nan)
            for a, mu_a in enumerate(grid.mu_a):
                for z, mu_z in enumerate(grid.mu_z):
                    point = by_point.get((mu_a, mu_z, interval, smoothing))
                    if point is None:
                        continue
                    cell = point[kind]
                    values[a, z] = cell["interval"]["mean"]
                    missed = len(cell["per_seed"]) - cell["reached"]
                    text = f"{values[a, z]:.2f}" + (f"\n>{missed}" if missed else "")
                    ax.text(z, a, text, ha="center", va="center", fontsize=8)
            image = ax.imshow(values, cmap="RdYlGn_r", vmin=0.3, vmax=1.3, origin="lower")
            ax.set_xticks(range(len(grid.mu_z)), [f"{v:g}" for v in grid.mu_z])
            ax.set_yticks(range(len(grid.mu_a)), [f"{v:g}" for v in grid.mu_a])
            ax.set_xlabel("mu_z")
            ax.set_ylabel("mu_a")
            ax.set_title(f"R = {interval}, {table['smoothing_option']} = {smoothing:g}", fontsize=9)
    floor = table.get("noise_floor", {}).get(kind)
    subtitle = f"; uniform vs uniform {floor['label']}" if floor else ""
    fig.suptitle(
        f"GRAPE token efficiency vs uniform, {kind} target (mean over seeds){subtitle}",
        fontsize=10,
    )
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="tokens to uniform's final loss / uniform's")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cell(point: Mapping | None, kind: str) -> str:
    if point is None:
        return "–"
    cell = point[kind]
    missed = len(cell["per_seed"]) - cell["reached"]
    text = f"{cell['interval']['mean']:.2f}"
    if len(cell["per_seed"]) > 1:
        text += f" [{min(cell['per_seed']):.2f}, {max(cell['per_seed']):.2f}]"
    return text + (f" ({missed} not reached)" if missed else "")


def sweep_markdown(table: Mapping, grid: SweepGrid) -> str:
    """The sweep as Markdown: uniform's noise floor, then one mu_a x mu_z table per
    (interval, smoothing) of the worst- and mean-target token efficiency (mean [min, max] over
    seeds; lower is better, 1 = uniform's tokens)."""
    by_point = {(p["mu_a"], p["mu_z"], p["interval"], p["smoothing"]): p for p in table["points"]}
    floors = table.get("noise_floor", {})
    lines = [
        f"{len(table['points'])} of {len(grid.points())} grid points finished on every seed. "
        "Cells: tokens GRAPE needs to reach uniform's final loss of the same seed, as a share "
        "of uniform's (mean [min, max] over seeds; a seed that never reaches it counts as its "
        "lower bound).",
        "",
    ]
    for kind in SUMMARIES:
        if kind in floors:
            lines.append(f"* uniform vs uniform ({kind} target): {floors[kind]['label']}")
    lines.append("")
    for interval in grid.intervals:
        for smoothing in grid.smoothing:
            for kind in SUMMARIES:
                lines += [
                    f"## R = {interval}, {table['smoothing_option']} = {smoothing:g}: {kind} target",
                    "",
                    "| mu_a \\ mu_z | " + " | ".join(f"{z:g}" for z in grid.mu_z) + " |",
                    "|---|" + "---|" * len(grid.mu_z),
                ]
                for mu_a in grid.mu_a:
                    cells = [
                        _cell(by_point.get((mu_a, mu_z, interval, smoothing)), kind)
                        for mu_z in grid.mu_z
                    ]
                    lines.append(f"| {mu_a:g} | " + " | ".join(cells) + " |")
                lines.append("")
    return "\n".join(lines)
