"""Run configs and in-process training helpers for the engine tests (tiny model, test corpus)."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from megagrape.config import RunConfig, load_config


def tiny_config(corpus: Path, out: Path, name: str, *overrides: str) -> RunConfig:
    """A 2-layer GPT on the test corpus: 8 sequences of 64 tokens per step, 2 per micro-batch."""
    base = [
        f"name={name}",
        f"output_dir={out}",
        f"data.corpus={corpus}",
        f"data.cache_dir={out}/cache",
        "model.num_layers=2",
        "model.hidden_size=64",
        "model.num_attention_heads=4",
        "model.seq_length=64",
        "model.vocab_size=2048",
        "train.train_iters=12",
        "train.global_batch_size=8",
        "train.micro_batch_size=2",
        "train.lr=3e-3",
        "train.min_lr=3e-4",
        "train.lr_warmup_iters=2",
        "targets.eval_max_items=16",
        "targets.signal_batch_size=4",
        "mixture.method=static",
        "logging.progress_bar=false",
        "logging.interval=4",
        "checkpoint.interval=0",
    ]
    return load_config(None, [*base, *overrides])


def write_run_config(corpus: Path, out: Path, name: str, *overrides: str) -> Path:
    """``tiny_config`` written as a user's YAML file (out/<name>.yaml): the fields as given,
    ``mixture.options`` not completed with a method's defaults, so a command-line override
    may still switch the method."""
    path = out / f"{name}.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tiny_config(corpus, out, name, *overrides).to_dict()))
    return path


def train_in_process(cfg: RunConfig, ds_path: str, env):
    """Build a Trainer in an already initialised process group, train, return (trainer, summary)."""
    from megagrape.ds_config import read_ds_config, resolve_ds_config
    from megagrape.train import build_trainer

    ds = resolve_ds_config(
        read_ds_config(ds_path),
        cfg,
        env.world_size,
        env.device,
        pipeline=cfg.parallel.pipeline_parallel > 1,
    )
    trainer = build_trainer(cfg, ds, env)
    summary = trainer.train()
    return trainer, summary


REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def one_process_group(seed: int) -> Iterator:
    """A world of one process in this pytest process; environment and RNGs restored after."""
    from megagrape import parallel
    from megagrape.parallel import ParallelConfig

    saved_environ = dict(os.environ)
    saved_python, saved_numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        dist_env = parallel.init_distributed(ParallelConfig(), seed=seed)
        try:
            yield dist_env
        finally:
            parallel.destroy_distributed()
    os.environ.clear()
    os.environ.update(saved_environ)
    random.setstate(saved_python)
    np.random.set_state(saved_numpy)


def torchrun_two_ranks(config: Path, *extra: str, ds: str = "configs/ds/zero1.json"):
    """tools/pretrain_grape.py under torchrun with 2 local ranks; output merged on stdout."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            str(REPO / "tools" / "pretrain_grape.py"),
            "--ds_config",
            ds,
            "--config",
            str(config),
            *extra,
        ],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def workers_after_line(job: subprocess.Popen, prefix: str) -> list[int]:
    """Read ``job``'s output until a line starts with ``prefix``; then its 2 worker pids.

    Fails the test with the last lines of output when the line never comes.
    """
    lines = []
    for line in job.stdout:
        lines.append(line)
        if line.startswith(prefix):
            break
    else:
        pytest.fail(f"training never logged {prefix!r}:\n" + "".join(lines[-50:]))
    found = subprocess.run(
        ["pgrep", "-f", "-P", str(job.pid), "pretrain_grape"], capture_output=True, text=True
    )
    pids = [int(p) for p in found.stdout.split()]
    assert len(pids) == 2, found.stdout
    return pids
