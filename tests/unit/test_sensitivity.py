"""GRAPE's sensitivity grid: the jobs it plans, its table against uniform, its heat-maps."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from megagrape.experiments.sensitivity import (
    SweepGrid,
    plan_sweep,
    plot_sensitivity,
    sweep_markdown,
    sweep_table,
)

REPO = Path(__file__).resolve().parents[2]
GRID = SweepGrid(mu_a=(0.5, 4.5), mu_z=(5.0,), intervals=(2, 4), smoothing=(0.001,))


def test_every_grid_point_is_a_grape_run_with_its_settings(test_corpus, tmp_path):
    plan = plan_sweep(
        GRID, scale="smoke", preset="t", corpus=str(test_corpus), seeds=[1, 2], out=tmp_path
    )
    assert [j.name for j in plan.uniform_jobs] == ["uniform-s1", "uniform-s2"]
    assert len(plan.grape_jobs) == 2 * 4 and len({j.name for j in plan.jobs}) == 10
    job = next(j for j in plan.grape_jobs if j.name == "grape-a4.5-z5-R4-e0.001-s2")
    cfg = job.config()
    assert (cfg.name, cfg.seed, cfg.mixture.method, cfg.mixture.interval) == (
        job.name,
        2,
        "grape",
        4,
    )
    assert cfg.mixture.options["mu_a"] == 4.5 and cfg.mixture.options["mu_z"] == 5.0
    assert cfg.mixture.options["eps_a"] == 0.001
    assert job.labels == {"method": "grape", "seed": 2, "mu_a": 4.5, "mu_z": 5.0, "interval": 4,
                          "smoothing": 0.001}  # fmt: skip
    assert len({j.fingerprint() for j in plan.jobs}) == 10  # no two runs share a result


def test_noise_seeds_add_uniform_runs_only(test_corpus, tmp_path):
    kwargs = {"scale": "smoke", "preset": "t", "corpus": str(test_corpus), "out": tmp_path}
    plan = plan_sweep(GRID, noise_seeds=[7], seeds=[1], **kwargs)
    assert [j.name for j in plan.noise_jobs] == ["uniform-s7"]
    assert plan.noise_jobs[0].config().seed == 7 and plan.seeds == [1]
    assert len(plan.jobs) == 1 + 1 + 4
    with pytest.raises(ValueError, match="sweep seeds already"):
        plan_sweep(GRID, noise_seeds=[1], seeds=[1], **kwargs)


def _result(method: str, seed: int, slope: float, **labels) -> dict:
    tokens = np.arange(1, 6) * 1000.0
    loss = (6.0 - slope * tokens / 1000).tolist()
    return {
        "method": method,
        "seed": seed,
        **labels,
        "curve": {"tokens": tokens.tolist(), "loss": {"a": loss, "b": loss}},
    }


def test_table_and_heat_maps_from_results(tmp_path):
    results = [_result("uniform", s, 0.2 + 0.01 * s) for s in (1, 2)]
    for seed in (1, 2):
        for point in GRID.points():
            slope = 0.4 if point["mu_a"] == 0.5 else 0.1  # mu_a 4.5 never reaches uniform
            results.append(_result("grape", seed, slope, **point))
    results.pop()  # the last point lacks seed 2: left out of the table
    results.append(_result("uniform", 3, 0.25))  # a noise seed: in the floor, not in the pairing
    table = sweep_table(results, GRID, seeds=[1, 2])
    assert len(table["points"]) == 3
    fast = next(p for p in table["points"] if p["mu_a"] == 0.5 and p["interval"] == 2)
    # grape (slope 0.4) reaches uniform seed 1's final 6 - 0.21 * 5 = 4.95 at t = 2.625
    assert fast["worst"]["per_seed"][0] == pytest.approx(2.625 / 5)
    slow = next(p for p in table["points"] if p["mu_a"] == 4.5)
    assert slow["worst"]["reached"] == 0 and slow["worst"]["per_seed"] == [1.0, 1.0]
    assert len(table["noise_floor"]["worst"]["pairs"]) == 6  # ordered pairs of seeds 1, 2, 3
    assert all(len(p["worst"]["per_seed"]) == 2 for p in table["points"])
    text = sweep_markdown(table, GRID)
    assert "3 of 4 grid points" in text and "## R = 2, eps_a = 0.001: worst target" in text
    # uniform seed 2 ends at 6 - 0.22 * 5 = 4.9, which slope 0.4 reaches at t = 2.75
    per_seed = fast["worst"]["per_seed"]
    assert per_seed == pytest.approx([2.625 / 5, 2.75 / 5])
    cell = f"{np.mean(per_seed):.2f} [{min(per_seed):.2f}, {max(per_seed):.2f}]"
    assert f"| 0.5 | {cell} |" in text
    assert "| 4.5 | 1.00 [1.00, 1.00] (2 not reached) |" in text
    assert "| 4.5 | – |" in text  # R = 4, mu_a 4.5: seed 2 missing
    path = plot_sensitivity(table, GRID, tmp_path / "s.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_sweep_tool_runs_and_resumes(test_corpus, tmp_path):
    tool = runpy.run_path(str(REPO / "tools/sweep_grape.py"), run_name="sweep_tool")
    grid = ["--mu-a", "0.5,4.5", "--mu-z", "5", "--intervals", "2", "--smoothing", "0.001"]
    argv = ["--scale", "smoke", "--corpus", str(test_corpus), "--seeds", "1", *grid]
    assert tool["main"]([*argv, "--out", str(tmp_path), "--jobs", "0", "--quiet"]) == 0
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert len(sweep["points"]) == 2
    assert (tmp_path / "sensitivity_worst.png").stat().st_size > 10_000
    finished = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert len(finished) == 3
    assert tool["main"]([*argv, "--out", str(tmp_path), "--report-only"]) == 0
