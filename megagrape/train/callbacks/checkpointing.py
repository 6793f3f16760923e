"""Atomic checkpoints at checkpoint.interval, at the end of the run and when the job exits early."""

from __future__ import annotations

from tqdm import tqdm

from megagrape.train.callbacks.base import Callback, due


class CheckpointCallback(Callback):
    """Saves every checkpoint.interval steps, at train.train_iters and whenever the run stops
    early (train.exit_interval, a stop signal, train.exit_duration_minutes); never a step the
    divergence guard marked bad."""

    def on_step_end(self, trainer, record) -> None:
        if not trainer.healthy:
            return
        interval = trainer.cfg.checkpoint.interval
        if not (due(trainer.step, interval) or trainer.done or trainer.exiting):
            return
        if not trainer.module.parameters_finite():
            trainer.healthy = False
            if trainer.is_main:
                tqdm.write(
                    f"[megagrape] step {trainer.step}: the parameters hold NaN or inf values; "
                    "no checkpoint is written (the newest one on disk is the last good one)"
                )
            return
        trainer.save_checkpoint()
