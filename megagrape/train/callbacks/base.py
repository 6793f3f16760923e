"""The callback protocol (see megagrape/train/callbacks/__init__.py for the calling order)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from megagrape.train.mixture_controller import MixtureEvent
    from megagrape.train.step_stats import StepRecord
    from megagrape.train.trainer import Trainer


class Callback:
    """Override the hooks a behaviour needs; the others do nothing.

    Every hook runs on every rank (collectives inside a hook are allowed and must be entered
    by all ranks); writing files is rank 0's job (``trainer.is_main``). ``trainer.step`` is
    the number of optimizer steps completed; ``trainer.done`` / ``trainer.exiting`` say
    whether the run has reached train.train_iters / train.exit_interval.
    """

    def on_train_start(self, trainer: Trainer) -> None:
        """Once, before the first step of this invocation (after any resume)."""

    def on_step_end(self, trainer: Trainer, record: StepRecord) -> None:
        """After every optimizer step (and after its reweighting event, if any)."""

    def on_event(self, trainer: Trainer, event: MixtureEvent) -> None:
        """After every reweighting event, inside the step that ends with it."""

    def on_train_end(self, trainer: Trainer) -> None:
        """Once, after the last step of this invocation."""


def due(step: int, interval: int) -> bool:
    """True on every ``interval``-th completed step (never when interval is 0)."""
    return interval > 0 and step % interval == 0
