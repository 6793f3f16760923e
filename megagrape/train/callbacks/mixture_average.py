"""The time-averaged mixture of a finished run (``mixture_average.json``, two-stage workflow)."""

from __future__ import annotations

from megagrape.train.callbacks.base import Callback


class MixtureAverageCallback(Callback):
    """Writes the step-weighted mean of the weights in effect when the run reaches its end.

    An invocation that stops at train.exit_interval writes nothing: the average would cover
    only part of the run.
    """

    def on_train_end(self, trainer) -> None:
        if trainer.done:
            trainer.mixture.write_average(trainer.run_dir)
