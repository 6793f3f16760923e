"""Benchmark runs: one engine run per (method, seed), executed by worker processes, resumable.

A ``RunJob`` is everything one run needs (run-config overrides, DeepSpeed config, where its
result and log go). ``execute_job`` trains it with ``megagrape.train.run_training`` in the
calling process and writes a result file (curves, final scores, mixture events, timings);
``run_jobs`` hands jobs to ``workers`` spawned processes, each of which keeps its process
(imports, DeepSpeed's compiled ops) across runs, and skips jobs whose result file already
holds a finished run of the same resolved config. A job may require another (DoReMi's
reference model is the uniform run of its seed): it starts once that one has a result.

This module imports torch and the trainer only inside the functions that train, so spawned
workers can set their thread count before torch starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from megagrape.utils.atomic import write_json_atomic
from megagrape.utils.jsonl import read_jsonl

RESULT_VERSION = 3


@dataclass(frozen=True)
class RunJob:
    """One engine run of the benchmark."""

    name: str
    """Unique run name, e.g. ``grape-s2`` (the engine's run directory name)."""
    base_config: str | None
    """Run-config file the overrides apply to (None: the RunConfig defaults)."""
    overrides: tuple[str, ...]
    """``key=value`` run-config overrides, applied in order."""
    ds_config: str
    """DeepSpeed config JSON."""
    result_path: str
    log_path: str
    requires: str | None = None
    """Name of a job whose result must exist before this one starts."""
    labels: dict[str, Any] = field(default_factory=dict)
    """Copied into the result (method, seed, ...)."""

    def config(self):
        """The validated RunConfig (world size 1)."""
        from megagrape.config import load_config

        cfg = load_config(self.base_config, list(self.overrides))
        cfg.validate(1)
        return cfg

    def fingerprint(self) -> str:
        """sha256 of the resolved run config (method options completed by their defaults) and
        the DeepSpeed config: a result is reused only when both are unchanged.

        * Fields at their RunConfig default are left out, so a field added later with a
          default that keeps the old behaviour does not orphan the results made before it.
          Method options are always completed by the method's defaults, so a run made before a
          method default changed is not reused after it; a changed RunConfig default needs
          RESULT_VERSION raised.
        * Where the run writes (``output_dir``, ``data.cache_dir``) and how it logs are left
          out, so finished results copied to another folder (committed with the repository,
          say) are still found by a rerun there.
        """
        from megagrape.config import RunConfig, resolved_dict

        config = resolved_dict(self.config())
        config.pop("output_dir", None)
        config.pop("logging", None)
        config.get("data", {}).pop("cache_dir", None)
        payload = {
            "config": without_defaults(config, RunConfig().to_dict()),
            "ds_config": Path(self.ds_config).read_text(),
            "version": RESULT_VERSION,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def without_defaults(values: dict, defaults: dict) -> dict:
    """``values`` less every entry equal to ``defaults``' (recursively into dicts both have)."""
    kept = {}
    for key, value in values.items():
        default = defaults.get(key, _ABSENT)
        if isinstance(value, dict) and isinstance(default, dict):
            nested = without_defaults(value, default)
            if nested:
                kept[key] = nested
        elif value != default:
            kept[key] = value
    return kept


_ABSENT = object()


def load_result(job: RunJob, fingerprint: str) -> dict | None:
    """The job's finished result, or None when missing, unreadable or from another config."""
    path = Path(job.result_path)
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(result, dict) or result.get("fingerprint") != fingerprint:
        return None
    return result


def build_result(job: RunJob, cfg, summary: dict, seconds: float, fingerprint: str) -> dict:
    """The result document of a finished run (see the module docstring of megagrape.experiments.analysis)."""
    tokens_per_step = cfg.train.global_batch_size * cfg.model.seq_length
    evals = summary["history"]["eval"]
    targets = list(evals[-1]["results"]) if evals else []
    step_seconds = summary["history"].get("step_seconds", [])
    elapsed = np.cumsum(step_seconds) if len(step_seconds) == summary["step"] else None
    curve = {
        "steps": [e["step"] for e in evals],
        "tokens": [e["step"] * tokens_per_step for e in evals],
        # training wall time (events included, evaluations excluded) up to each evaluation
        "train_seconds": (
            [float(elapsed[e["step"] - 1]) for e in evals] if elapsed is not None else None
        ),
        "loss": {t: [e["results"][t]["loss"] for e in evals] for t in targets},
    }
    mixture_path = cfg.run_dir / "mixture.jsonl"
    events = [
        {
            "step": r["step"],
            "domain_weights": r["domain_weights"],
            "task_weights": r.get("task_weights"),
            "skipped": r.get("skipped"),
        }
        for r in (read_jsonl(mixture_path) if mixture_path.is_file() else [])
        if not r.get("initial")  # the starting weights (step 0) are not an event
    ]
    average_path = cfg.run_dir / "mixture_average.json"
    average = (
        json.loads(average_path.read_text())["domain_weights"] if average_path.is_file() else None
    )
    applied = [e for e in events if not e["skipped"]]
    final_alpha = applied[-1]["domain_weights"] if applied else average
    return {
        **job.labels,
        "name": job.name,
        "fingerprint": fingerprint,
        "version": RESULT_VERSION,
        "steps": summary["step"],
        "tokens_per_step": tokens_per_step,
        "tokens": summary["step"] * tokens_per_step,
        "seconds": seconds,
        "curve": curve,
        "final": summary["eval"],
        "train_loss": summary["history"]["loss"],
        "events": events,
        "final_alpha": final_alpha,
        "average_alpha": average,
        "final_task_weights": applied[-1]["task_weights"] if applied else None,
        "checkpoint": str(cfg.run_dir / "checkpoints"),
        "config": cfg.to_dict(),
        "threads": _torch_threads(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout/stderr (file descriptors 1 and 2 included) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _single_process_env() -> None:
    """A one-rank process group on a port nobody holds: every run (several per worker, two
    workers at once) gets its own rendezvous, so a store still closing cannot collide."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )


def execute_job(job: RunJob, redirect: bool = True) -> dict:
    """Train ``job`` in this process (from scratch), write and return its result."""
    from megagrape.ds_config import read_ds_config
    from megagrape.train import run_training

    cfg = job.config()
    fingerprint = job.fingerprint()
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    _single_process_env()
    output = _output_to(Path(job.log_path)) if redirect else contextlib.nullcontext()
    with output:
        started = time.perf_counter()
        summary = run_training(cfg, read_ds_config(job.ds_config))
        seconds = time.perf_counter() - started
    result = build_result(job, cfg, summary, seconds, fingerprint)
    write_json_atomic(Path(job.result_path), result)
    return result


def _exit_with_parent(parent: int, period: float = 2.0) -> None:
    """Daemon thread body: end this worker when the benchmark process is gone (killed, ^C)."""
    while True:
        time.sleep(period)
        if os.getppid() != parent:
            os._exit(3)


def _init_worker(threads: int) -> None:
    """Spawned worker: exit with the parent; fix the thread count before torch is imported."""
    import threading

    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    if threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["MKL_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


def _run_in_worker(job: RunJob) -> dict:
    try:
        return execute_job(job, redirect=True)
    except BaseException as error:
        raise RuntimeError(
            f"run {job.name} failed: {error!r} (log: {job.log_path})\n{traceback.format_exc()}"
        ) from None


@dataclass
class Outcome:
    """Results by run name, failures by run name (message), and which runs were reused."""

    results: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)


def run_jobs(
    jobs: Sequence[RunJob],
    workers: int,
    threads: int = 1,
    on_done: Callable[[RunJob, dict | None, float], None] | None = None,
    progress: bool = True,
) -> Outcome:
    """Run every job that has no finished result; ``workers`` = 0 runs them in this process.

    Jobs start in list order as soon as what they require has a result (a job whose
    requirement failed fails too). ``on_done(job, result or None, seconds)`` is called in
    this process after every job that ran.
    """
    from tqdm import tqdm

    outcome = Outcome()
    todo: list[RunJob] = []
    for job in jobs:
        result = load_result(job, job.fingerprint())
        if result is None:
            todo.append(job)
        else:
            outcome.results[job.name] = result
            outcome.reused.append(job.name)
    bar = tqdm(total=len(jobs), initial=len(outcome.results), unit="run", disable=not progress)

    def finish(job: RunJob, result: dict | None, error: str | None, seconds: float) -> None:
        if result is not None:
            outcome.results[job.name] = result
        else:
            outcome.failures[job.name] = error or "failed"
            bar.write(f"[bench] {job.name} failed: {(error or '').splitlines()[0]}")
        bar.update(1)
        bar.set_postfix_str(f"last: {job.name} {seconds / 60:.1f} min")
        if on_done is not None:
            on_done(job, result, seconds)

    def next_ready() -> RunJob | None:
        for job in todo:
            if job.requires is None or job.requires in outcome.results:
                return job
            if job.requires in outcome.failures:
                todo.remove(job)
                finish(job, None, f"its requirement {job.requires} failed", 0.0)
                return next_ready()
        return None

    try:
        if workers <= 0:
            while (job := next_ready()) is not None:
                todo.remove(job)
                started = time.perf_counter()
                try:
                    result, error = execute_job(job, redirect=False), None
                except Exception as err:  # a failed run must not stop the others
                    result, error = None, f"{err!r}\n{traceback.format_exc()}"
                finish(job, result, error, time.perf_counter() - started)
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                max_workers=workers,
                mp_context=context,
                initializer=_init_worker,
                initargs=(threads,),
            ) as pool:
                running: dict[Future, tuple[RunJob, float]] = {}
                while todo or running:
                    while len(running) < workers and (job := next_ready()) is not None:
                        todo.remove(job)
                        running[pool.submit(_run_in_worker, job)] = (job, time.perf_counter())
                    if not running:
                        break
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        job, started = running.pop(future)
                        error = future.exception()
                        finish(
                            job,
                            None if error else future.result(),
                            None if error is None else str(error),
                            time.perf_counter() - started,
                        )
        for job in todo:  # requirements that never appeared (not in the job list)
            finish(job, None, f"its requirement {job.requires} is not among the jobs", 0.0)
    finally:
        bar.close()
    return outcome


def finished_or_run(
    jobs: Sequence[RunJob], workers: int, threads: int, *, report_only: bool, progress: bool
) -> tuple[list[dict], dict[str, str]]:
    """The results of ``jobs`` in job order and the failures by run name: with
    ``report_only`` only the runs already finished (nothing runs), else after ``run_jobs``."""
    if report_only:
        found = [load_result(j, j.fingerprint()) for j in jobs]
        return [r for r in found if r is not None], {}
    outcome = run_jobs(jobs, workers, threads, progress=progress)
    return [outcome.results[j.name] for j in jobs if j.name in outcome.results], outcome.failures
