"""Two-stage transfer: the proxy's averaged mixture file and the larger model it is used on."""

from __future__ import annotations

import dataclasses
import json
import runpy
from pathlib import Path

import pytest

from megagrape.errors import DataError
from megagrape.experiments.benchmark_spec import plan_benchmark
from megagrape.experiments.transfer import proxy_mixture
from megagrape.mixture.static import load_weights_file

REPO = Path(__file__).resolve().parents[2]


def _write(folder: Path, name: str, seed: int, alpha: dict | None) -> None:
    (folder / "results").mkdir(parents=True, exist_ok=True)
    result = {
        "name": name,
        "seed": seed,
        "steps": 40,
        "average_alpha": alpha,
        "config": {"model": {"num_layers": 2, "hidden_size": 64, "seq_length": 32}},
    }
    (folder / "results" / f"{name}.json").write_text(json.dumps(result))


def test_proxy_mixture_is_the_mean_of_the_seeds_time_averaged_alpha(tmp_path):
    _write(tmp_path, "grape-s1", 1, {"a": 0.6, "b": 0.3, "c": 0.1})
    _write(tmp_path, "grape-s2", 2, {"a": 0.2, "b": 0.5, "c": 0.3})
    _write(tmp_path, "grape-a3-z5-R10-e0.001-s1", 1, {"a": 1.0, "b": 0.0, "c": 0.0})  # a sweep run
    _write(tmp_path, "uniform-s1", 1, None)
    mixture = proxy_mixture(tmp_path, "grape")
    assert mixture["domain_weights"] == pytest.approx({"a": 0.4, "b": 0.4, "c": 0.2})
    assert mixture["proxy"]["seeds"] == [1, 2] and mixture["proxy"]["steps"] == 40
    assert mixture["proxy"]["per_seed"]["2"]["c"] == 0.3
    # the static method reads the file as written by the tool
    tool = runpy.run_path(str(REPO / "tools/proxy_mixture.py"), run_name="proxy_tool")
    out = tmp_path / "transfer" / "proxy_mixture.json"
    assert tool["main"](["--proxy", str(tmp_path), "--out", str(out)]) == 0
    weights = load_weights_file(out, ["c", "b", "a"])
    assert weights.tolist() == pytest.approx([0.2, 0.4, 0.4])
    with pytest.raises(DataError, match="no average_alpha"):
        proxy_mixture(tmp_path, "uniform")
    with pytest.raises(DataError, match="run the proxy benchmark first"):
        proxy_mixture(tmp_path, "doge")


def test_the_transfer_scale_is_at_least_twice_the_cpu_model(test_corpus, tmp_path):
    sizes = {}
    for scale in ("cpu", "cpu-2x"):
        plan = plan_benchmark(
            scale=scale,
            preset="t",
            corpus=str(test_corpus),
            methods=["uniform"],
            seeds=[1],
            out=tmp_path / scale,
        )
        model = plan.jobs[0].config().model
        sizes[scale] = dataclasses.replace(model, vocab_size=8192).num_parameters()
        assert model.num_attention_heads * 32 == model.hidden_size  # same head width
    assert sizes["cpu"] == pytest.approx(1.44e6, rel=0.01)
    assert sizes["cpu-2x"] >= 2 * sizes["cpu"]
