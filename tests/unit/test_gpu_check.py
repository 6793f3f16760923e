"""benchmarks/gpu_check.sh: the dry run goes through every step on the CPU with tiny shapes and
writes a JSON in which each check has a status, its exact command and, where the dry run
produces them, its figures; a spent time budget is recorded step by step, not fatal."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKS = [
    "env",
    "deps_install",
    "deps",
    "build",
    "gpu_tests",
    "bench_gram",
    "throughput",
    "transformer_engine",
]
RUN_IN_DRY_RUN = [c for c in CHECKS if c not in ("deps_install", "transformer_engine")]
STATUSES = {"ok", "failed", "timeout", "skipped"}


def run_check(out: Path, **env: str) -> dict:
    run = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["dry_run"] is True
    assert list(result["checks"]) == CHECKS
    for name, check in result["checks"].items():
        assert check["status"] in STATUSES, name
        assert check["command"], name
        assert result["statuses"][name] == check["status"]
    return result


@pytest.mark.slow
def test_dry_run_runs_every_check_with_figures(tmp_path):
    extension = {p: p.stat().st_mtime_ns for p in (REPO / "megagrape").glob("_C*.so")}
    checks = run_check(tmp_path)["checks"]
    for name in RUN_IN_DRY_RUN:
        assert checks[name]["status"] == "ok", (name, checks[name]["log_tail"])
    assert checks["deps_install"]["status"] == "skipped"
    assert "--target" in checks["deps_install"]["command"]

    assert checks["env"]["figures"]["torch"]
    tests = checks["gpu_tests"]["figures"]
    assert "--collect-only" in tests["command"] and tests["collected"] >= 1

    gram = checks["bench_gram"]["figures"]
    assert "bench_gram.py --device cpu" in gram["command"]
    assert [v["variant"] for v in gram["variants"]] == ["fp32", "bf16", "fp32xbf16"]
    for variant in gram["variants"]:
        assert variant["kernel_gb_s"] > 0 and variant["fraction_of_sum_bandwidth"] > 0

    throughput = checks["throughput"]["figures"]
    assert "bench_throughput.py --preset tiny" in throughput["command"]
    assert throughput["without_events"]["tokens_per_s"] > 0
    assert throughput["without_events"]["events_timed"] == 0
    assert throughput["with_events"]["tokens_per_s"] > 0
    assert throughput["with_events"]["events_timed"] == 1
    assert throughput["with_events"]["method"] == "grape"
    assert "amortized_event_overhead" in throughput and "event_extra_s" in throughput
    assert throughput["peak_key"] is None and throughput["without_events"]["mfu"] is None  # CPU

    te = checks["transformer_engine"]
    if importlib.util.find_spec("transformer_engine") is None:
        assert te["status"] == "skipped" and "does not import" in te["log_tail"][-1]
    assert "--transformer-impl transformer_engine" in te["command"]
    # The dry run uses the built CPU extension and leaves it as it was.
    assert {p: p.stat().st_mtime_ns for p in (REPO / "megagrape").glob("_C*.so")} == extension


def test_spent_budget_skips_steps_and_still_writes_the_json(tmp_path):
    # 10 s of budget keep a 10 s reserve: no step may start, each is recorded as skipped.
    result = run_check(tmp_path, GPU_CHECK_BUDGET_S="10")
    assert result["budget_s"] == 10
    for name in RUN_IN_DRY_RUN:
        assert result["checks"][name]["status"] == "skipped", name
        assert result["checks"][name]["log_tail"] == ["time budget of 10 s spent"]
        assert result["checks"][name]["figures"] is None
