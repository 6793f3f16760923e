"""The command-line entry point as users run it: kill during a checkpoint write, crashed ranks, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.run_utils import torchrun_two_ranks, workers_after_line, write_run_config

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(REPO / "tools" / "pretrain_grape.py")


def launch(config: Path, *extra: str, env=None, ds="configs/ds/zero1.json", timeout=600):
    return subprocess.run(
        [sys.executable, SCRIPT, "--ds_config", ds, "--config", str(config), *extra],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def final_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    path = run_dir / "checkpoints" / f"step_{step:06d}" / "mp_rank_00_model_states.pt"
    return torch.load(path, map_location="cpu", weights_only=False)["module"]


def test_sigkill_during_checkpoint_write_resumes_exactly(test_corpus, tmp_path):
    grape = (
        "mixture.method=grape",
        "mixture.interval=2",
        "train.train_iters=12",
        "checkpoint.interval=4",
    )
    full = launch(write_run_config(test_corpus, tmp_path, "full", *grape))
    assert full.returncode == 0, full.stderr[-3000:]

    config = write_run_config(test_corpus, tmp_path, "killed", *grape)
    killed = launch(config, env={"MEGAGRAPE_TEST_KILL_BEFORE_COMPLETE": "8"})
    assert killed.returncode == -signal.SIGKILL
    ckpts = tmp_path / "killed" / "checkpoints"
    assert (ckpts / "step_000008.partial").is_dir(), "the kill must land inside the save"
    assert (ckpts / "step_000004" / "COMPLETE.json").is_file()

    resumed = launch(config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    output = resumed.stdout + resumed.stderr
    assert "resumed from" in output and "step_000004 at step 4" in output
    assert not (ckpts / "step_000008.partial").exists(), "stale partial checkpoints are cleaned up"
    ours, theirs = final_weights(tmp_path / "killed", 12), final_weights(tmp_path / "full", 12)
    assert ours.keys() == theirs.keys()
    tensors = [name for name in ours if torch.is_tensor(ours[name])]
    assert len(tensors) > 10
    for name in tensors:
        assert torch.equal(ours[name], theirs[name]), f"{name} differs after resume"
    events = [
        json.loads(x) for x in (tmp_path / "killed" / "mixture.jsonl").read_text().splitlines()
    ]
    reference = [
        json.loads(x) for x in (tmp_path / "full" / "mixture.jsonl").read_text().splitlines()
    ]
    assert [e["step"] for e in events] == [0, 2, 4, 6, 8, 10, 12]  # 0: the initial weights
    assert [e["domain_weights"] for e in events] == [e["domain_weights"] for e in reference]


def test_corrupt_newest_checkpoint_falls_back_with_a_note(test_corpus, tmp_path):
    config = write_run_config(
        test_corpus, tmp_path, "corrupt", "train.train_iters=8", "checkpoint.interval=4"
    )
    assert launch(config, "train.exit_interval=8").returncode == 0
    newest = tmp_path / "corrupt" / "checkpoints" / "step_000008"
    (newest / "mp_rank_00_model_states.pt").write_bytes(b"truncated")
    again = launch(config)
    assert again.returncode == 0, again.stderr[-3000:]
    output = again.stdout + again.stderr
    assert "skipping checkpoint" in output and "step_000008" in output
    assert "step_000004 at step 4" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train.lr_decay=cosine",), "did you mean 'lr_decay_style'"),
        (
            ("model.num_attention_heads=3", "model.hidden_size=48", "parallel.tensor_parallel=2"),
            "num_attention_heads",
        ),
        (("data.domains=[code,poetry]",), "data.domains names ['poetry']"),
        (("model.vocab_size=512",), "vocab"),
        (("mixture.method=doremi",), "needs mixture.reference_checkpoint"),
        (("mixture.method=mgda", "mixture.options={max_iter: 0}"), "mixture.options.max_iter"),
        (
            ("mixture.method=grape", "parallel.pipeline_parallel=1", "mixture.options={mu_a: -1}"),
            "mu_a",
        ),
        (("mixture.method=foo",), "grape"),
    ],
)
def test_bad_input_exits_with_a_clear_message(test_corpus, tmp_path, args, message):
    result = launch(write_run_config(test_corpus, tmp_path, "bad"), *args, timeout=300)
    assert result.returncode == 2
    assert message in result.stderr


def test_missing_data_prefix_is_named(test_corpus, tmp_path):
    result = launch(
        write_run_config(test_corpus, tmp_path, "nodata"),
        "data.prefixes={ghost: /nonexistent/ghost_text_document}",
    )
    assert result.returncode == 2
    assert "/nonexistent/ghost_text_document" in result.stderr


def test_crashed_rank_ends_the_job(test_corpus, tmp_path):
    """torchrun with 2 ranks; SIGKILL one mid-training: the launcher must exit non-zero, not hang."""
    config = write_run_config(
        test_corpus, tmp_path, "crash", "train.train_iters=100000", "logging.interval=1"
    )
    job = torchrun_two_ranks(config)
    pids = workers_after_line(job, "step ")
    killed_at = time.monotonic()
    os.kill(pids[-1], signal.SIGKILL)
    code = job.wait(timeout=120)
    assert code != 0
    assert time.monotonic() - killed_at < 120


def test_doremi_reference_with_another_vocabulary_is_refused(test_corpus, tmp_path):
    from megagrape.train import checkpoint as ckpt

    partial = tmp_path / "ref" / "step_000001.partial"
    partial.mkdir(parents=True)
    (partial / ckpt.STATE_FILE).write_text(
        json.dumps({"step": 1, "tokenizer_fingerprint": "0" * 64})
    )
    (partial / "mp_rank_00_model_states.pt").write_bytes(b"x")
    ckpt.finalize_save(partial, tmp_path / "ref" / "step_000001", 1, 1, tmp_path / "ref")
    config = write_run_config(test_corpus, tmp_path, "doremi", "mixture.method=doremi")
    result = launch(config, f"mixture.reference_checkpoint={tmp_path / 'ref' / 'step_000001'}")
    assert result.returncode == 2
    assert "different tokenizer" in result.stderr
