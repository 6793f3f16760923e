"""Preemption-safe stopping: a signal or a wall-time limit ends the run at the next step boundary,
after a checkpoint, with exit code 0, so a requeued job resumes where this one stopped.

Slurm sends SIGTERM to every task at the end of a job's time limit or when it is preempted
(``--signal=USR1@120`` asks for SIGUSR1 two minutes earlier). The handler only sets a flag;
after every optimizer step the ranks agree on it with one all-reduce of a single number
(any rank that saw a signal, or rank 0's clock past ``train.exit_duration_minutes``, stops
everyone), so all ranks leave at the same step and the checkpoint is collective.
"""

from __future__ import annotations

import signal
import time

import torch
from tqdm import tqdm

from megagrape.train.callbacks.base import Callback

SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGUSR1": signal.SIGUSR1, "SIGINT": signal.SIGINT}


class PreemptionCallback(Callback):
    """Turns train.exit_signals and train.exit_duration_minutes into a clean exit."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.started = time.monotonic()
        self._previous: dict[int, object] = {}

    def _handle(self, signum, _frame) -> None:
        self.received = signal.Signals(signum).name

    def on_train_start(self, trainer) -> None:
        self.started = time.monotonic()
        for name in trainer.cfg.train.exit_signals:
            number = SIGNALS[name]
            self._previous[number] = signal.signal(number, self._handle)

    def on_step_end(self, trainer, record) -> None:
        limit = trainer.cfg.train.exit_duration_minutes
        over_time = limit > 0 and trainer.is_main and time.monotonic() - self.started > limit * 60
        reason = 2.0 if self.received else 1.0 if over_time else 0.0
        flag = torch.tensor([reason], dtype=torch.float64, device=trainer.env.device)
        if trainer.env.world_size > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        agreed = float(flag.item())
        if agreed == 0.0 or trainer.done:
            return
        why = "a stop signal" if agreed == 2.0 else f"train.exit_duration_minutes={limit}"
        if trainer.is_main:
            tqdm.write(
                f"[megagrape] {why} at step {trainer.step}: saving a checkpoint and exiting; "
                "relaunch to resume"
            )
        trainer.exiting = True

    def on_train_end(self, trainer) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()
