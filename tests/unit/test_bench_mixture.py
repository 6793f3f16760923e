"""The mixture benchmark: efficiency maths on synthetic curves, reports, resumable jobs, one real run."""

from __future__ import annotations

import json
import math
import runpy
import time
from pathlib import Path

import numpy as np
import pytest

from megagrape.errors import ConfigError
from megagrape.experiments import runs as bench_runs
from megagrape.experiments.analysis import analyse
from megagrape.experiments.benchmark_spec import (
    METHODS,
    parse_methods,
    parse_seeds,
    plan_benchmark,
)
from megagrape.experiments.efficiency import (
    Curve,
    Spread,
    first_crossing,
    paired_spread,
    seed_band,
    token_efficiency,
)
from megagrape.experiments.report import write_outputs
from megagrape.experiments.runs import RunJob, run_jobs, without_defaults
from megagrape.utils.atomic import write_json_atomic

REPO = Path(__file__).resolve().parents[2]

TOKENS = np.arange(1, 11, dtype=np.float64) * 1000.0  # 10 evaluation points, 1k..10k tokens


def linear_curve(start: float, slope_per_k: float, **extra: np.ndarray) -> Curve:
    """One target 'a' falling linearly with tokens (exact under linear interpolation)."""
    return Curve(TOKENS, {"a": start - slope_per_k * TOKENS / 1000.0, **extra})


def test_first_crossing_interpolates_between_points():
    tokens = np.array([100.0, 200.0, 300.0, 400.0])
    values = np.array([5.0, 4.0, 3.0, 2.0])
    assert first_crossing(tokens, values, 3.5) == pytest.approx(250.0)
    assert first_crossing(tokens, values, 3.0) == pytest.approx(300.0)
    assert first_crossing(tokens, values, 6.0) == pytest.approx(100.0)
    assert first_crossing(tokens, values, 1.9) is None


def test_first_crossing_takes_the_first_of_several_crossings():
    tokens = np.array([1.0, 2.0, 3.0, 4.0])
    values = np.array([4.0, 2.0, 5.0, 1.0])  # dips below 3 early, rises, falls again
    assert first_crossing(tokens, values, 3.0) == pytest.approx(1.5)


def test_token_efficiency_of_a_twice_as_fast_method_is_one_half():
    baseline = linear_curve(10.0, 0.5)  # final 5.0 at 10k tokens
    method = linear_curve(10.0, 1.0)  # reaches 5.0 at 5k tokens
    result = token_efficiency(method, baseline, "worst", seed=3)
    assert result.reached and result.seed == 3
    assert result.threshold == pytest.approx(5.0)
    assert result.ratio == pytest.approx(0.5)
    assert result.label() == "0.50"


def test_not_reached_is_reported_as_more_than_one():
    baseline = linear_curve(10.0, 0.5)
    method = linear_curve(10.0, 0.25)  # ends at 7.5 > 5.0
    result = token_efficiency(method, baseline, "mean", seed=1)
    assert not result.reached and result.ratio is None
    assert result.bound == pytest.approx(1.0)
    assert result.label() == ">1 (not reached)"


def test_worst_and_mean_summaries_use_different_targets():
    b = {"x": np.full(10, 4.0)}
    baseline = Curve(TOKENS, {"a": np.linspace(10, 6, 10), **b})  # worst final 6, mean final 5
    # method: target a falls twice as fast, x stays at 4 -> worst crosses 6 when a does,
    # mean crosses 5 when a reaches 6: the same point; make x worse to separate them.
    method = Curve(TOKENS, {"a": np.linspace(10, 2, 10), "x": np.full(10, 5.0)})
    worst = token_efficiency(method, baseline, "worst", 1)
    mean = token_efficiency(method, baseline, "mean", 1)
    # worst = max(a, 5): reaches 6 where a = 6 -> a(t) = 10 - 8 (t-1k)/9k -> t = 5.5k
    assert worst.tokens == pytest.approx(5500.0)
    # mean = (a + 5)/2 <= 5 where a <= 5 -> t = 1k + 9k * 5/8 = 6.625k
    assert mean.tokens == pytest.approx(6625.0)
    assert worst.ratio == pytest.approx(0.55) and mean.ratio == pytest.approx(0.6625)


def test_efficiency_needs_the_baselines_targets():
    baseline = Curve(TOKENS, {"a": np.ones(10), "b": np.ones(10)})
    with pytest.raises(ValueError, match="lacks targets"):
        token_efficiency(linear_curve(2.0, 0.1), baseline, "worst", 1)


def test_curves_reject_bad_axes():
    with pytest.raises(ValueError, match="strictly increasing"):
        Curve(np.array([1.0, 1.0]), {"a": np.ones(2)})
    with pytest.raises(ValueError, match="losses for"):
        Curve(np.array([1.0, 2.0]), {"a": np.ones(3)})


def test_seed_spread_with_a_seed_that_never_reaches():
    baseline = {s: linear_curve(10.0, 0.5) for s in (1, 2, 3)}
    method = {
        1: linear_curve(10.0, 1.25),  # 5.0 at 4k -> 0.4
        2: linear_curve(10.0, 1.0),  # 0.5
        3: linear_curve(10.0, 0.25),  # never
    }
    spread, unpaired = paired_spread(method, baseline, "worst")
    assert unpaired == []
    assert spread.seeds == [1, 2, 3]
    assert spread.reached == 2 and spread.is_lower_bound
    assert spread.min == pytest.approx(0.4)
    assert spread.max == pytest.approx(1.0)
    assert spread.mean == pytest.approx((0.4 + 0.5 + 1.0) / 3)
    assert spread.label() == ">=0.63 [0.40, >1] (2/3 reached)"
    assert not spread.meets(0.6)
    assert Spread(spread.per_seed[:2]).meets(0.6)
    assert not Spread(spread.per_seed[:2]).meets(0.45)


def test_seeds_are_paired_not_pooled():
    # baseline seed 1 ends at 5, seed 2 at 8; the method of seed 2 only reaches 6.
    baseline = {1: linear_curve(10.0, 0.5), 2: linear_curve(10.0, 0.2), 4: linear_curve(9.0, 0.1)}
    method = {1: linear_curve(10.0, 1.0), 2: linear_curve(10.0, 0.4), 3: linear_curve(9.0, 0.5)}
    spread, unpaired = paired_spread(method, baseline, "worst")
    assert spread.seeds == [1, 2]
    assert unpaired == [3, 4]
    # seed 2: threshold 8.0, method reaches it at 5k tokens -> 0.5 (mispairing with seed 1 would not)
    assert [e.ratio for e in spread.per_seed] == pytest.approx([0.5, 0.5])
    assert [e.threshold for e in spread.per_seed] == pytest.approx([5.0, 8.0])


def test_seed_band_is_mean_min_max():
    curves = [linear_curve(10.0, 0.5), linear_curve(12.0, 0.5), linear_curve(11.0, 0.5)]
    band = seed_band(curves, lambda c: c.losses["a"])
    assert band.mean == pytest.approx(11.0 - 0.5 * TOKENS / 1000)
    assert band.low == pytest.approx(10.0 - 0.5 * TOKENS / 1000)
    assert band.high == pytest.approx(12.0 - 0.5 * TOKENS / 1000)


def synthetic_result(method: str, seed: int, slope: float, alpha: dict | None) -> dict:
    """A result document as megagrape.experiments.runs.build_result writes it."""
    a = 9.0 - slope * TOKENS / 1000
    b = 8.0 - 0.5 * slope * TOKENS / 1000
    return {
        "method": method,
        "seed": seed,
        "name": f"{method}-s{seed}",
        "tokens": float(TOKENS[-1]),
        "seconds": 60.0 * seed,
        "curve": {
            "steps": list(range(10, 110, 10)),
            "tokens": TOKENS.tolist(),
            "loss": {"arc": a.tolist(), "piqa": b.tolist()},
        },
        "final": {
            "arc": {"acc": 0.25 + slope / 10, "acc_norm": 0.3, "loss": float(a[-1])},
            "piqa": {"acc": 0.5, "acc_norm": 0.5, "loss": float(b[-1])},
        },
        "final_alpha": alpha,
    }


def test_report_writes_tables_json_and_figures(tmp_path):
    results = []
    for seed in (1, 2):
        results.append(synthetic_result("uniform", seed, 0.3, {"web": 0.5, "code": 0.5}))
        results.append(synthetic_result("doge", seed, 0.4, {"web": 0.6, "code": 0.4}))
        results.append(synthetic_result("grape", seed, 0.6 + 0.1 * seed, {"web": 0.8, "code": 0.2}))
    analysis = analyse(results, ["uniform", "doge", "grape"])
    paths = write_outputs(tmp_path, analysis, results, {"title": "synthetic", "seeds": "1, 2"})
    for key in ("target_loss", "summary_loss", "final_alpha"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    document = json.loads((tmp_path / "results.json").read_text())
    pairs = {(c["method"], c["baseline"]) for c in document["analysis"]["comparisons"]}
    assert pairs == {("doge", "uniform"), ("grape", "uniform"), ("grape", "doge")}
    grape = next(
        c
        for c in document["analysis"]["comparisons"]
        if c["method"] == "grape" and c["baseline"] == "uniform"
    )
    # uniform's worst target is piqa, ending at 8 - 0.15 * 10 = 6.5; grape seed s (slope m) has
    # piqa = 8 - 0.5 m t/1k, the larger of its two after 2/m k tokens, at 6.5 when t = 3/m k.
    expected = [3.0 / (0.7 * 10), 3.0 / (0.8 * 10)]
    assert [e["ratio"] for e in grape["worst"]["per_seed"]] == pytest.approx(expected)
    assert document["analysis"]["grape_meets_target"] is True
    assert len(document["runs"]) == 6
    text = (tmp_path / "results.md").read_text()
    assert "| grape | doge |" in text and "| grape | uniform |" in text
    assert "**yes**" in text
    assert "![target_loss](target_loss.png)" in text


def fake_job(tmp_path: Path, name: str, requires: str | None = None, lr: str = "1e-3") -> RunJob:
    return RunJob(
        name=name,
        base_config=None,
        overrides=(
            f"name={name}",
            f"output_dir={tmp_path}/runs",
            "data.corpus=unused",
            f"train.lr={lr}",
        ),
        ds_config=str(Path(__file__).resolve().parents[2] / "configs/ds/zero0.json"),
        result_path=str(tmp_path / "results" / f"{name}.json"),
        log_path=str(tmp_path / "logs" / f"{name}.log"),
        requires=requires,
        labels={"method": name, "seed": 1},
    )


def test_jobs_resume_from_result_files_and_respect_requirements(tmp_path, monkeypatch):
    executed = []

    def fake_execute(job, redirect=True):
        executed.append(job.name)
        if job.name == "broken":
            raise RuntimeError("boom")
        result = {"name": job.name, "fingerprint": job.fingerprint()}
        write_json_atomic(Path(job.result_path), result)
        return result

    monkeypatch.setattr(bench_runs, "execute_job", fake_execute)
    jobs = [
        fake_job(tmp_path, "needs_a", requires="a"),
        fake_job(tmp_path, "a"),
        fake_job(tmp_path, "broken"),
        fake_job(tmp_path, "needs_broken", requires="broken"),
    ]
    first = run_jobs(jobs, workers=0, progress=False)
    assert executed == ["a", "needs_a", "broken"]  # needs_a waits for a
    assert set(first.results) == {"a", "needs_a"}
    assert set(first.failures) == {"broken", "needs_broken"}
    assert "requirement broken failed" in first.failures["needs_broken"]

    executed.clear()
    second = run_jobs(jobs[:2], workers=0, progress=False)
    assert executed == [] and sorted(second.reused) == ["a", "needs_a"]

    changed = [jobs[0], fake_job(tmp_path, "a", lr="2e-3")]  # a's config changed: redo it only
    third = run_jobs(changed, workers=0, progress=False)
    assert executed == ["a"] and third.reused == ["needs_a"]


def test_parsing_of_seeds_and_methods():
    assert parse_seeds("3") == [1, 2, 3]
    assert parse_seeds("2", start=101) == [101, 102]
    assert parse_seeds("7,9") == [7, 9]
    assert parse_seeds("101,") == [101]
    for bad in ("x", "1,1", "0"):
        with pytest.raises(ConfigError):
            parse_seeds(bad)
    assert parse_methods("grape,doge,uniform") == ["uniform", "grape", "doge"]
    with pytest.raises(ConfigError, match="include it"):
        parse_methods("doge,grape")
    with pytest.raises(ConfigError, match="unknown"):
        parse_methods("uniform,grapes")


def test_plan_wires_doremi_to_the_uniform_run_of_its_seed(test_corpus, tmp_path):
    plan = plan_benchmark(
        scale="smoke",
        preset="quickstart",
        corpus=str(test_corpus),
        methods=["uniform", "doremi", "grape"],
        seeds=[4, 5],
        out=tmp_path,
        method_overrides={"grape": ("mixture.options.mu_a=3.0",)},
    )
    assert [j.name for j in plan.jobs] == [
        "uniform-s4",
        "doremi-s4",
        "grape-s4",
        "uniform-s5",
        "doremi-s5",
        "grape-s5",
    ]
    doremi = plan.job("doremi", 5).config()
    assert plan.job("doremi", 5).requires == "uniform-s5"
    assert doremi.mixture.reference_checkpoint.endswith("runs/uniform-s5/checkpoints/step_000008")
    assert doremi.seed == 5 and doremi.model.vocab_size == 2048
    grape = plan.job("grape", 4).config()
    assert grape.mixture.options["mu_a"] == 3.0 and grape.mixture.interval == 2
    assert grape.targets.eval_interval == 2 and grape.targets.eval_mode == "loss"
    with pytest.raises(ConfigError, match="needs the uniform run"):
        plan_benchmark(
            scale="smoke",
            preset="x",
            corpus=str(test_corpus),
            methods=["doremi"],
            seeds=[1],
            out=tmp_path,
        )
    with pytest.raises(ConfigError, match="multiple of the evaluation points"):
        plan_benchmark(
            scale="smoke",
            preset="x",
            corpus=str(test_corpus),
            methods=["uniform"],
            seeds=[1],
            out=tmp_path,
            train_iters=9,
        )
    with pytest.raises(ConfigError, match="lacks"):
        plan_benchmark(
            scale="smoke",
            preset="x",
            corpus=str(tmp_path),
            methods=["uniform"],
            seeds=[1],
            out=tmp_path,
        )


def test_every_benchmark_method_plans_a_valid_run(test_corpus, tmp_path):
    methods = [m for m in METHODS if m != "file"]
    plan = plan_benchmark(
        scale="smoke",
        preset="t",
        corpus=str(test_corpus),
        methods=methods,
        seeds=[1],
        out=tmp_path,
    )
    engine_methods = {j.name: j.config().mixture.method for j in plan.jobs}
    assert engine_methods["epo-s1"] == "epo" and engine_methods["hybrid-s1"] == "mgda"
    assert set(engine_methods.values()) == {
        "static", "doge", "doremi", "odm", "mgda", "imtl", "epo", "grape"
    }  # fmt: skip


def test_smoke_benchmark_end_to_end(test_corpus, tmp_path):
    """Two methods x one seed, 8 steps each, in one spawned worker: curves, report, reuse."""
    plan = plan_benchmark(
        scale="smoke",
        preset="test",
        corpus=str(test_corpus),
        methods=["uniform", "grape"],
        seeds=[1],
        out=tmp_path,
    )
    started = time.perf_counter()
    outcome = run_jobs(plan.jobs, workers=1, threads=1, progress=False)
    elapsed = time.perf_counter() - started
    assert outcome.failures == {}
    results = [outcome.results[j.name] for j in plan.jobs]
    for result in results:
        assert result["curve"]["steps"] == [2, 4, 6, 8]
        assert result["curve"]["tokens"] == [s * 8 * 64 for s in (2, 4, 6, 8)]
        assert set(result["curve"]["loss"]) == {"prose_cloze", "legal_cloze"}
        assert all(math.isfinite(v) for v in result["curve"]["loss"]["legal_cloze"])
        assert set(result["final"]["legal_cloze"]) == {"acc", "acc_norm", "loss"}
        assert result["final"]["legal_cloze"]["loss"] == result["curve"]["loss"]["legal_cloze"][-1]
        assert sum(result["final_alpha"].values()) == pytest.approx(1.0)
    grape = results[1]
    assert len(grape["events"]) == 4 and grape["final_task_weights"] is not None
    assert grape["final_alpha"] != results[0]["final_alpha"]
    analysis = analyse(results, plan.methods)
    paths = write_outputs(tmp_path, analysis, results, {"title": "smoke"})
    text = paths["markdown"].read_text()
    assert text.count("| grape | uniform |") == 3  # the efficiency row, then worst and mean
    assert result["curve"]["train_seconds"][-1] > result["curve"]["train_seconds"][0] > 0
    again = run_jobs(plan.jobs, workers=1, progress=False)
    assert sorted(again.reused) == ["grape-s1", "uniform-s1"]
    # the tool's own report from the finished runs: unigram levels beside the losses
    tool = runpy.run_path(str(REPO / "tools/bench_mixture.py"), run_name="bench_mixture_tool")
    argv = ["--scale", "smoke", "--corpus", str(test_corpus), "--methods", "uniform,grape"]
    assert tool["main"]([*argv, "--seeds", "1", "--out", str(tmp_path), "--report-only"]) == 0
    report = (tmp_path / "results.md").read_text().splitlines()
    floor = next(line for line in report if line.startswith("| *unigram level* |"))
    levels = json.loads((tmp_path / "unigram_levels.json").read_text())["levels"]
    assert (
        floor
        == "| *unigram level* | "
        + " | ".join(f"{levels[t]['loss']:.3f}" for t in ("legal_cloze", "prose_cloze"))
        + " |"
    )
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["unigram_levels"] == levels
    print(f"smoke benchmark: {elapsed:.1f} s for 2 runs")


def test_a_result_is_found_again_from_another_output_folder(test_corpus, tmp_path):
    def job(out, *overrides):
        plan = plan_benchmark(
            scale="smoke",
            preset="t",
            corpus=str(test_corpus),
            methods=["uniform"],
            seeds=[1],
            out=out,
            overrides=overrides,
        )
        return plan.jobs[0]

    here = job(tmp_path / "a")
    assert job(tmp_path / "b").fingerprint() == here.fingerprint()
    assert job(tmp_path / "a", "logging.interval=1").fingerprint() == here.fingerprint()
    assert job(tmp_path / "a", "train.lr=1e-3").fingerprint() != here.fingerprint()
    assert job(tmp_path / "a", "targets.eval_max_items=3").fingerprint() != here.fingerprint()
    # A config field at its default is left out of the hash, so a field added to RunConfig
    # later (with a default that keeps the old behaviour) does not orphan finished results;
    # setting it to anything else does change the fingerprint.
    assert job(tmp_path / "a", "targets.eval_split=eval").fingerprint() == here.fingerprint()
    assert job(tmp_path / "a", "targets.eval_split=signal").fingerprint() != here.fingerprint()


def test_without_defaults_drops_exactly_the_default_entries():
    values = {"a": 1, "b": {"c": 2, "d": 3}, "e": {"f": 4}, "options": {"mu": 1.5}}
    defaults = {"a": 1, "b": {"c": 2, "d": 0}, "e": {"f": 4}, "options": {}}
    assert without_defaults(values, defaults) == {"b": {"d": 3}, "options": {"mu": 1.5}}
    assert without_defaults({"x": None}, {}) == {"x": None}  # absent from defaults: kept


def test_a_result_is_not_reused_after_a_method_default_changes(test_corpus, tmp_path):
    """The fingerprint sees method options completed by their defaults: spelling a default out
    changes nothing, and a run made under another default (raw products before GRAPE's default
    became cosine) is not taken for a run of the new one."""

    def job(*method_overrides):
        plan = plan_benchmark(
            scale="smoke",
            preset="t",
            corpus=str(test_corpus),
            methods=["uniform", "grape"],
            seeds=[1],
            out=tmp_path,
            method_overrides={"grape": method_overrides},
        )
        return plan.job("grape", 1)

    default = job()
    cosine = job("mixture.options.gradient_scaling=cosine")
    raw = job("mixture.options.gradient_scaling=raw")
    assert default.fingerprint() == cosine.fingerprint()
    assert default.fingerprint() != raw.fingerprint()


def test_a_weights_file_with_seed_gives_each_seed_its_own_mixture(test_corpus, tmp_path):
    """RegMix runs once per seed (searched on that seed's signal items); '{seed}' in
    --weights-file hands seed s the file of seed s, and a seed without one is refused."""
    for seed, weights in ((1, [0.2, 0.3, 0.5]), (2, [0.6, 0.3, 0.1])):
        (tmp_path / f"s{seed}").mkdir()
        (tmp_path / f"s{seed}" / "w.json").write_text(json.dumps(weights))

    def plan(seeds):
        return plan_benchmark(
            scale="smoke",
            preset="t",
            corpus=str(test_corpus),
            methods=["uniform", "file"],
            seeds=seeds,
            out=tmp_path / "out",
            weights_file=str(tmp_path / "s{seed}" / "w.json"),
        )

    chosen = plan([1, 2])
    paths = {s: chosen.job("file", s).config().mixture.options["path"] for s in (1, 2)}
    assert paths == {s: str((tmp_path / f"s{s}" / "w.json").resolve()) for s in (1, 2)}
    with pytest.raises(ConfigError, match=r"s3/w\.json: no such file"):
        plan([3])
