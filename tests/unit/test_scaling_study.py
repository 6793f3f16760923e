"""The gradient_scaling study: the runs it plans and what it measures from their results."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import numpy as np
import pytest

from megagrape.experiments.scaling_study import (
    Condition,
    effective_domains,
    movement,
    plan_study,
    plot_movement,
    study_markdown,
    study_table,
    total_variation,
)

REPO = Path(__file__).resolve().parents[2]
CONDITIONS = (
    Condition("base", "base"),
    Condition("lr-low", "low lr", ("train.lr=1e-3", "train.min_lr=1e-4")),
)


def test_plan_names_every_run_and_sets_its_scaling_and_condition(test_corpus, tmp_path):
    plan = plan_study(
        conditions=CONDITIONS,
        scalings=["raw", "cosine"],
        scale="smoke",
        preset="t",
        corpus=str(test_corpus),
        out=tmp_path,
    )
    names = [j.name for j in plan.jobs]
    assert names == [
        "uniform-base-s1",
        "grape-raw-base-s1",
        "grape-cosine-base-s1",
        "uniform-base-s2",
        "grape-raw-base-s2",
        "grape-cosine-base-s2",
        "uniform-lr-low-s1",
        "grape-raw-lr-low-s1",
        "grape-cosine-lr-low-s1",
    ]
    job = next(j for j in plan.jobs if j.name == "grape-cosine-lr-low-s1")
    cfg = job.config()
    assert cfg.mixture.method == "grape" and cfg.mixture.options["gradient_scaling"] == "cosine"
    assert cfg.train.lr == 1e-3 and cfg.name == job.name and cfg.seed == 1
    assert job.labels == {"method": "grape", "scaling": "cosine", "condition": "lr-low", "seed": 1}
    assert plan.jobs[3].config().seed == 2
    assert len({j.fingerprint() for j in plan.jobs}) == len(plan.jobs)
    with pytest.raises(ValueError, match="choose from"):
        plan_study(
            scalings=["norm"], scale="smoke", preset="t", corpus=str(test_corpus), out=tmp_path
        )


def _events(steps: list[dict[str, float]], skipped_at: int | None = None) -> list[dict]:
    return [
        {"step": 10 * (i + 1), "domain_weights": w, "skipped": "nan" if i == skipped_at else None}
        for i, w in enumerate(steps)
    ]


def test_movement_is_the_mean_tv_step_from_uniform_on_and_skips_skipped_events():
    a = {"x": 0.6, "y": 0.4}
    b = {"x": 0.7, "y": 0.3}
    assert total_variation(a, b) == pytest.approx(0.1)
    # uniform -> a (0.1), a -> [skipped] , a -> b (0.1), b -> a (0.1)
    result = {"events": _events([a, {"x": 0.0, "y": 1.0}, b, a], skipped_at=1)}
    assert movement(result) == pytest.approx(0.1)
    assert math.isnan(movement({"events": []}))
    assert effective_domains({"x": 0.5, "y": 0.5}) == pytest.approx(2.0)
    assert effective_domains({"x": 1.0, "y": 0.0}) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="different domains"):
        total_variation(a, {"x": 1.0})


def _result(name: str, slope: float, alphas: list[dict[str, float]]) -> dict:
    tokens = np.arange(1, 6) * 1000.0
    loss = (6.0 - slope * tokens / 1000).tolist()
    return {
        "name": name,
        "curve": {"tokens": tokens.tolist(), "loss": {"t1": loss, "t2": loss}},
        "events": _events(alphas),
        "average_alpha": alphas[-1],
    }


def test_table_ratios_distances_noise_and_efficiency(test_corpus, tmp_path):
    plan = plan_study(
        conditions=CONDITIONS,
        scalings=["raw"],
        scale="smoke",
        preset="t",
        corpus=str(test_corpus),
        out=tmp_path,
    )
    small = [{"x": 0.55, "y": 0.45}, {"x": 0.6, "y": 0.4}]  # 0.05 per event
    large = [{"x": 0.7, "y": 0.3}, {"x": 0.9, "y": 0.1}]  # 0.2 per event
    results = [
        _result("uniform-base-s1", 0.2, small),
        _result("grape-raw-base-s1", 0.4, small),
        _result("grape-raw-base-s2", 0.4, [{"x": 0.55, "y": 0.45}, {"x": 0.65, "y": 0.35}]),
        _result("uniform-lr-low-s1", 0.2, small),
        _result("grape-raw-lr-low-s1", 0.1, large),
    ]
    table = study_table(results, plan)
    block = table["scalings"]["raw"]
    base, low = block["rows"]
    assert base["movement"] == pytest.approx(0.05) and low["movement"] == pytest.approx(0.2)
    assert low["movement_ratio"] == pytest.approx(4.0) and block[
        "movement_spread"
    ] == pytest.approx(4.0)
    assert low["tv_to_base"] == pytest.approx(0.3) and block["max_tv_to_base"] == pytest.approx(0.3)
    assert block["seed_noise_tv"] == pytest.approx(0.05)
    # grape base (slope 0.4) reaches uniform's final 5.0 at t = 2.5 of 5; lr-low never does
    assert base["efficiency_worst"]["tokens"] / base["efficiency_worst"]["baseline_tokens"] == (
        pytest.approx(0.5)
    )
    assert low["efficiency_worst"]["tokens"] is None
    text = study_markdown(table)
    assert "| low lr | 0.2000 | 4.00 |" in text
    assert plot_movement(results, plan, tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_the_study_tool_runs_reports_and_resumes(test_corpus, tmp_path):
    tool = runpy.run_path(str(REPO / "tools/study_gradient_scaling.py"), run_name="study_tool")
    argv = ["--scale", "smoke", "--corpus", str(test_corpus), "--scalings", "raw"]
    argv += ["--train-iters", "8", "--eval-points", "4", "--out", str(tmp_path)]
    assert tool["main"]([*argv, "--jobs", "0", "--quiet"]) == 0
    assert len(list((tmp_path / "results").glob("*.json"))) == 10  # 5 runs x (uniform, raw)
    table = json.loads((tmp_path / "study.json").read_text())
    assert [r["condition"] for r in table["scalings"]["raw"]["rows"]] == [
        "base", "lr5e-4", "L4", "L4-lr5e-4"
    ]  # fmt: skip
    assert (tmp_path / "alpha_movement.png").stat().st_size > 5_000
    assert tool["main"]([*argv, "--report-only"]) == 0
