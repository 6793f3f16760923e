"""A long run left alone, as a user launches it: divergence, a resume that is not the same run,
a damaged checkpoint, a stop signal to a 2-rank job (and the bit-exact continuation)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.run_utils import torchrun_two_ranks, workers_after_line, write_run_config

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(REPO / "tools" / "pretrain_grape.py")


def launch(config: Path, *extra: str, ds: str = "configs/ds/zero1.json", timeout: float = 600):
    return subprocess.run(
        [sys.executable, SCRIPT, "--ds_config", ds, "--config", str(config), *extra],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def model_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    saved = torch.load(
        checkpoint / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
    )  # a file this test wrote itself
    return {k: v for k, v in saved["module"].items() if torch.is_tensor(v)}


def mixture_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "mixture.jsonl").read_text().splitlines()]


def tensorboard_losses(run_dir: Path) -> dict[int, float]:
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), purge_orphaned_data=True)
    accumulator.Reload()
    return {e.step: e.value for e in accumulator.Scalars("train/loss")}


def test_a_diverging_run_stops_non_zero_and_never_checkpoints_a_bad_step(test_corpus, tmp_path):
    config = write_run_config(
        test_corpus,
        tmp_path,
        "diverge",
        "train.lr=1e6",
        "train.min_lr=0",
        "checkpoint.interval=1",
        "logging.interval=1",
    )
    result = launch(config, ds="configs/ds/zero0.json")
    assert result.returncode == 3, result.stderr[-3000:]
    assert "training diverged: 3 bad steps in a row" in result.stderr
    saved = sorted(p.name for p in (tmp_path / "diverge" / "checkpoints").glob("step_*"))
    assert saved == ["step_000001"], "step 2's loss spiked, 3 and later are NaN: none saved"
    assert all(
        torch.isfinite(t).all()
        for t in model_tensors(tmp_path / "diverge" / "checkpoints" / saved[0]).values()
    )


def test_a_resume_that_is_not_the_same_run_stops_and_intended_changes_are_recorded(
    test_corpus, tmp_path
):
    config = write_run_config(test_corpus, tmp_path, "ident", "train.train_iters=8")
    assert launch(config, "train.exit_interval=4").returncode == 0
    started = time.monotonic()
    changed = launch(config, "seed=99", "train.lr=1e-3")
    assert changed.returncode == 2
    assert "was written by a different run" in changed.stderr
    assert "  seed: 1234 -> 99" in changed.stderr and "  train.lr: 0.003 -> 0.001" in changed.stderr
    assert "checkpoint.allow_changes=[seed, train.lr]" in changed.stderr
    assert time.monotonic() - started < 60, "the identity check runs before any process group"

    allowed = launch(config, "train.lr=1e-3", "checkpoint.allow_changes=[train.lr]")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    run = tmp_path / "ident"
    launches = [json.loads(x) for x in (run / "launches.jsonl").read_text().splitlines()]
    assert [entry["start_step"] for entry in launches] == [0, 4]
    assert launches[1]["allowed_changes"] == {"train.lr": [0.003, 0.001]}
    history = sorted(p.name for p in (run / "config_history").iterdir())
    assert len(history) == 2 and history[1].startswith("step_000004_")


def test_same_size_damage_of_the_newest_checkpoint_falls_back_to_the_older_one(
    test_corpus, tmp_path
):
    config = write_run_config(
        test_corpus, tmp_path, "damaged", "train.train_iters=12", "checkpoint.interval=4"
    )
    assert launch(config, "train.exit_interval=8").returncode == 0
    state = tmp_path / "damaged" / "checkpoints" / "step_000008" / "megagrape_state.json"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only a checksum can tell
    state.write_bytes(bytes(data))
    again = launch(config)
    assert again.returncode == 0, again.stderr[-3000:]
    output = again.stdout + again.stderr
    assert "skipping checkpoint" in output and "megagrape_state.json is damaged" in output
    assert "step_000004 at step 4" in output


def test_sigterm_to_a_two_rank_job_checkpoints_exits_0_and_resumes_bit_exactly(
    test_corpus, tmp_path
):
    grape = (
        "mixture.method=grape",
        "mixture.interval=2",
        "train.train_iters=14",
        "logging.interval=1",
    )
    full = torchrun_two_ranks(write_run_config(test_corpus, tmp_path, "full", *grape))
    full_output = full.communicate(timeout=600)[0]
    assert full.returncode == 0, full_output[-3000:]

    config = write_run_config(test_corpus, tmp_path, "stopped", *grape)
    job = torchrun_two_ranks(config)
    pids = workers_after_line(job, "step      4/")
    for pid in pids:  # what Slurm does at a time limit: every task gets SIGTERM
        os.kill(pid, signal.SIGTERM)
    rest = job.communicate(timeout=300)[0]
    assert job.returncode == 0, (rest)[-3000:]
    assert "a stop signal at step" in rest
    stopped_at = int(rest.split("a stop signal at step ")[1].split(":")[0])
    assert 4 <= stopped_at < 14
    checkpoints = sorted(p.name for p in (tmp_path / "stopped" / "checkpoints").glob("step_*"))
    assert checkpoints == [f"step_{stopped_at:06d}"]

    resumed = torchrun_two_ranks(config)
    resumed_output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, resumed_output[-3000:]
    assert f"at step {stopped_at}" in resumed_output
    ours = model_tensors(tmp_path / "stopped" / "checkpoints" / "step_000014")
    theirs = model_tensors(tmp_path / "full" / "checkpoints" / "step_000014")
    assert ours.keys() == theirs.keys() and len(ours) > 10
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), f"{name} differs after the stop and resume"
    keep = ("step", "domain_weights", "task_weights", "diagnostics", "domain_target_gram")
    assert [{k: r.get(k) for k in keep} for r in mixture_records(tmp_path / "stopped")] == [
        {k: r.get(k) for k in keep} for r in mixture_records(tmp_path / "full")
    ]
    assert tensorboard_losses(tmp_path / "stopped") == tensorboard_losses(tmp_path / "full")
    assert sorted(tensorboard_losses(tmp_path / "full")) == list(range(1, 15))
