"""Crash trials: SIGKILL a 2-rank CPU run at random moments, resume it, compare with a run that
was never interrupted.

    summary = run_trials(TrialSetup(corpus=..., out=...), trials=20)

One reference run trains without interruption. Each trial launches the same run (its own
directory), kills it one or two times (both ranks at a random logged step, one rank only,
or rank 0 inside a checkpoint save through ``MEGAGRAPE_TEST_KILL_BEFORE_COMPLETE``),
relaunches after every kill, and when the run has finished compares with the reference:
``mixture.jsonl`` (every field but wall times), every TensorBoard scalar but the timing ones
(both the step axis and the vs_tokens axis), and every tensor of the final model. A trial's
verdict is written to ``<out>/trial_NNN.json`` as soon as it is known, so an interrupted
series continues where it stopped.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from megagrape.config import load_config
from megagrape.utils.atomic import write_json_atomic
from megagrape.utils.safe_load import safe_torch_load

TIME_FIELDS = ("time", "reweight_time_s", "capture_time_s")
"""mixture.jsonl fields that hold wall-clock times (they differ between any two runs)."""
TIMING_TAGS = ("perf/", "mixture/reweight_time_s")
"""TensorBoard tags (prefixes) that hold timings."""
KILL_KINDS = ("both_ranks", "one_rank", "during_save")


@dataclass(frozen=True)
class TrialSetup:
    """The run every trial repeats: a small GRAPE run on 2 ranks (torchrun, gloo)."""

    corpus: Path
    out: Path
    ds_config: str = "configs/ds/zero1.json"
    train_iters: int = 24
    checkpoint_interval: int = 4
    overrides: tuple[str, ...] = ()
    repo: Path = Path(__file__).resolve().parents[2]

    def run_config(self, name: str) -> Path:
        """Write the YAML of run ``name`` under ``out`` and return its path."""
        cfg = load_config(
            None,
            [
                f"name={name}",
                f"output_dir={self.out / 'runs'}",
                f"data.corpus={self.corpus}",
                f"data.cache_dir={self.out / 'cache'}",
                "model.num_layers=2",
                "model.hidden_size=64",
                "model.num_attention_heads=4",
                "model.seq_length=64",
                f"model.vocab_size={_tokenizer_vocab(self.corpus)}",
                f"train.train_iters={self.train_iters}",
                "train.global_batch_size=8",
                "train.micro_batch_size=2",
                "train.lr=3e-3",
                "train.min_lr=3e-4",
                "train.lr_warmup_iters=2",
                "targets.eval_max_items=16",
                "targets.signal_batch_size=4",
                f"targets.eval_interval={self.checkpoint_interval * 2}",
                "mixture.method=grape",
                "mixture.interval=2",
                "mixture.options={mu_a: 20.0, mu_z: 20.0}",
                "logging.progress_bar=false",
                "logging.interval=1",
                f"checkpoint.interval={self.checkpoint_interval}",
                "checkpoint.keep_last=2",
                *self.overrides,
            ],
        )
        path = self.out / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return path

    def run_dir(self, name: str) -> Path:
        return self.out / "runs" / name


def _tokenizer_vocab(corpus: Path) -> int:
    from megagrape.data.tokenizer import Tokenizer

    return Tokenizer.load(corpus / "tokenizer").vocab_size


@dataclass
class Kill:
    """One interruption: how, and at which logged step (or which save) it strikes."""

    kind: str  # one of KILL_KINDS
    step: int


@dataclass
class TrialResult:
    trial: int
    kills: list[Kill]
    exit_codes: list[int]  # of each interrupted launch (negative: killed by that signal)
    resumed_from: list[int | None]  # the step each relaunch resumed at (None: from scratch)
    identical: bool
    differences: list[str] = field(default_factory=list)


def _launch(setup: TrialSetup, config: Path, env_extra: dict[str, str] | None = None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            str(setup.repo / "tools" / "pretrain_grape.py"),
            "--ds_config",
            setup.ds_config,
            "--config",
            str(config),
        ],
        cwd=setup.repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _workers(job: subprocess.Popen) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-f", "-P", str(job.pid), "pretrain_grape"], capture_output=True, text=True
    )
    return sorted(int(pid) for pid in found.stdout.split())


def _resumed_at(output: str) -> int | None:
    """The step a launch resumed from, read from its log (None: it started from scratch)."""
    marker = "[megagrape] resumed from "
    for line in output.splitlines():
        if marker in line:
            return int(line.rsplit("at step ", 1)[1])
    return None


def _run_to_end(setup: TrialSetup, config: Path) -> str:
    job = _launch(setup, config)
    output = job.communicate(timeout=1800)[0]
    if job.returncode != 0:
        raise RuntimeError(f"run {config.stem} failed (exit {job.returncode}):\n{output[-3000:]}")
    return output


def _interrupt(setup: TrialSetup, config: Path, kill: Kill) -> tuple[int, str]:
    """Launch and kill once as ``kill`` says; (exit code, log) once the job is gone."""
    if kill.kind == "during_save":
        job = _launch(setup, config, {"MEGAGRAPE_TEST_KILL_BEFORE_COMPLETE": str(kill.step)})
        output = job.communicate(timeout=1800)[0]  # rank 0 dies mid-save; torchrun ends the rest
        return job.returncode, output
    job = _launch(setup, config)
    assert job.stdout is not None
    lines = []
    for line in job.stdout:
        lines.append(line)
        if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= kill.step:
            pids = _workers(job)
            for pid in pids if kill.kind == "both_ranks" else pids[-1:]:
                os.kill(pid, signal.SIGKILL)
            break
    try:
        rest = job.communicate(timeout=300)[0]
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        rest = job.communicate()[0]
    return job.returncode, "".join(lines) + (rest or "")


def _plan(rng: random.Random, setup: TrialSetup) -> list[Kill]:
    count = rng.choice((1, 2))
    saves = list(range(setup.checkpoint_interval, setup.train_iters, setup.checkpoint_interval))
    kills, earliest = [], 1
    for _ in range(count):
        kind = rng.choice(KILL_KINDS)
        if kind == "during_save":
            later = [s for s in saves if s >= earliest]
            if not later:
                kind = "both_ranks"
            else:
                kills.append(Kill(kind, rng.choice(later)))
                earliest = kills[-1].step + 1
                continue
        kills.append(Kill(kind, rng.randint(earliest, setup.train_iters - 1)))
        earliest = kills[-1].step + 1
        if earliest >= setup.train_iters:
            break
    return kills


def _mixture(run_dir: Path) -> list[dict]:
    records = [json.loads(x) for x in (run_dir / "mixture.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in records]


def _scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), purge_orphaned_data=True)
    accumulator.Reload()
    return {
        tag: {e.step: e.value for e in accumulator.Scalars(tag)}
        for tag in accumulator.Tags()["scalars"]
        if not tag.startswith(TIMING_TAGS)
    }


def _final_model(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    path = run_dir / "checkpoints" / f"step_{step:06d}" / "mp_rank_00_model_states.pt"
    saved = safe_torch_load(path)
    return {k: v for k, v in saved["module"].items() if torch.is_tensor(v)}


def compare_runs(run: Path, reference: Path, final_step: int) -> list[str]:
    """What differs between two finished runs (empty when they are identical)."""
    differences = []
    if _mixture(run) != _mixture(reference):
        differences.append("mixture.jsonl")
    for sub in ("tensorboard", "tensorboard/vs_tokens"):
        ours, theirs = _scalars(run / sub), _scalars(reference / sub)
        for tag in sorted(set(ours) | set(theirs)):
            if ours.get(tag) != theirs.get(tag):
                differences.append(f"{sub}:{tag}")
    ours, theirs = _final_model(run, final_step), _final_model(reference, final_step)
    if ours.keys() != theirs.keys():
        differences.append("final model: tensor names")
    differences += [
        f"final model: {name}"
        for name in ours
        if name in theirs and not torch.equal(ours[name], theirs[name])
    ]
    return differences


def run_trial(setup: TrialSetup, trial: int, seed: int = 0) -> TrialResult:
    """Interrupt, resume to the end, compare with the reference run (which must exist)."""
    name = f"trial_{trial:03d}"
    shutil.rmtree(setup.run_dir(name), ignore_errors=True)
    config = setup.run_config(name)
    kills = _plan(random.Random(seed * 1000 + trial), setup)
    exit_codes, outputs = [], []
    for kill in kills:
        code, output = _interrupt(setup, config, kill)
        exit_codes.append(code)
        outputs.append(output)
    outputs.append(_run_to_end(setup, config))
    differences = compare_runs(setup.run_dir(name), setup.run_dir("reference"), setup.train_iters)
    if any(code == 0 for code in exit_codes):
        differences.append(f"an interrupted launch finished normally (exit codes {exit_codes})")
    return TrialResult(
        trial,
        kills,
        exit_codes,
        [_resumed_at(output) for output in outputs[1:]],
        not differences,
        differences,
    )


def run_trials(setup: TrialSetup, trials: int, seed: int = 0) -> dict:
    """The reference run (once), then ``trials`` trials; finished trials are not rerun."""
    setup.out.mkdir(parents=True, exist_ok=True)
    reference_done = setup.out / "reference.done"
    if not reference_done.is_file():
        shutil.rmtree(setup.run_dir("reference"), ignore_errors=True)
        _run_to_end(setup, setup.run_config("reference"))
        reference_done.write_text("ok\n")
    results = []
    for trial in tqdm(range(1, trials + 1), desc="crash trials", unit="trial"):
        path = setup.out / f"trial_{trial:03d}.json"
        if not path.is_file():
            result = run_trial(setup, trial, seed)
            write_json_atomic(path, asdict(result))
            shutil.rmtree(setup.run_dir(f"trial_{trial:03d}"), ignore_errors=True)
        results.append(json.loads(path.read_text()))
    summary = {
        "trials": len(results),
        "identical": sum(r["identical"] for r in results),
        "kills": sum(len(r["kills"]) for r in results),
        "kill_kinds": {
            k: sum(x["kind"] == k for r in results for x in r["kills"]) for k in KILL_KINDS
        },
        "failures": [r for r in results if not r["identical"]],
    }
    write_json_atomic(setup.out / "summary.json", summary)
    return summary
