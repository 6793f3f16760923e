"""Atomic checkpoints at checkpoint.interval, at the end of the run and when the job exits early."""

from __future__ import annotations

from megagrape.train.callbacks.base import Callback, due


class CheckpointCallback(Callback):
    """Saves every checkpoint.interval steps, at train.train_iters and at train.exit_interval."""

    def on_step_end(self, trainer, record) -> None:
        interval = trainer.cfg.checkpoint.interval
        if due(trainer.step, interval) or trainer.done or trainer.exiting:
            trainer.save_checkpoint()
