"""The divergence guard: non-finite or exploding losses are counted, never checkpointed, and
stop the run (exit code 3) after train.divergence_max_bad_steps consecutive bad steps.

A step is bad when its global loss or gradient norm is not finite, or its loss exceeds
``train.divergence_spike_factor`` times the mean of the last (up to ``divergence_history``)
good losses. While the latest step is bad, no checkpoint is written (the checkpoint callback
asks ``trainer.healthy``, and also refuses parameters that hold NaN or inf), so retention can
never rotate a good checkpoint out for a diverged one.

What this cannot see: step k's loss is measured before step k's update, so the checkpoint of
step k holds weights whose loss is only seen at step k + 1; one update that blows the weights
up (while keeping them finite) is in the checkpoint of that step. DeepSpeed has applied a bad
step's update by the time its loss is known (an fp16 loss scaler skips overflowing steps
itself); a run whose weights went non-finite keeps failing and stops after the allowed
number of steps.
"""

from __future__ import annotations

import math
from collections import deque

from tqdm import tqdm

from megagrape.errors import TrainingDiverged
from megagrape.train.callbacks.base import Callback


class DivergenceGuard(Callback):
    """Marks bad steps on ``trainer.healthy`` and raises TrainingDiverged after too many."""

    def __init__(self) -> None:
        self.good_losses: deque[float] = deque()
        self.bad_steps: list[int] = []  # consecutive bad steps, oldest first

    def on_train_start(self, trainer) -> None:
        self.good_losses = deque(maxlen=trainer.cfg.train.divergence_history)

    def _why_bad(self, trainer, record) -> str | None:
        if not math.isfinite(record.loss):
            return f"loss is {record.loss}"
        if not math.isfinite(record.grad_norm):
            return f"gradient norm is {record.grad_norm}"
        factor = trainer.cfg.train.divergence_spike_factor
        history = self.good_losses
        if factor > 0 and history:
            mean = sum(history) / len(history)
            if record.loss > factor * mean:
                return (
                    f"loss {record.loss:.4g} > train.divergence_spike_factor {factor} x the mean "
                    f"{mean:.4g} of the last {len(history)} good steps"
                )
        return None

    def on_step_end(self, trainer, record) -> None:
        reason = self._why_bad(trainer, record)
        if reason is None:
            self.good_losses.append(record.loss)
            self.bad_steps.clear()
            trainer.healthy = True
            return
        trainer.healthy = False
        self.bad_steps.append(trainer.step)
        limit = trainer.cfg.train.divergence_max_bad_steps
        if trainer.is_main:
            tqdm.write(
                f"[megagrape] step {trainer.step}: bad step ({reason}); "
                f"{len(self.bad_steps)} in a row, the limit is {limit or 'off'}; no checkpoint"
            )
        if limit and len(self.bad_steps) >= limit:
            raise TrainingDiverged(
                f"training diverged: {len(self.bad_steps)} bad steps in a row "
                f"(steps {self.bad_steps[0]}-{self.bad_steps[-1]}, last: {reason}); no checkpoint "
                f"was written after step {self.bad_steps[0] - 1}, so the newest checkpoint in "
                f"{trainer.checkpoint_root} is the last good one. Lower train.lr or raise "
                "train.lr_warmup_iters, then relaunch to resume from it "
                "(checkpoint.allow_changes=[train.lr])"
            )
