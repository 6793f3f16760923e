"""Behaviours of a run that the loop does not know about: each callback decides when it acts.

The loop calls, on every callback in order: ``on_train_start`` once, ``on_step_end`` after
every optimizer step, ``on_event`` after every reweighting event, ``on_train_end`` once. A new
behaviour is a new :class:`Callback` passed to ``build_trainer(..., callbacks=...)``; the loop
is not edited.
"""

from megagrape.train.callbacks.base import Callback
from megagrape.train.callbacks.checkpointing import CheckpointCallback
from megagrape.train.callbacks.evaluation import EvaluationCallback
from megagrape.train.callbacks.metrics import MetricsCallback
from megagrape.train.callbacks.mixture_average import MixtureAverageCallback


def default_callbacks() -> list[Callback]:
    """Console/TensorBoard metrics, target evaluation, checkpoints, the time-averaged mixture
    (in this order: an evaluation at a checkpoint step is logged before the checkpoint)."""
    return [MetricsCallback(), EvaluationCallback(), CheckpointCallback(), MixtureAverageCallback()]


__all__ = [
    "Callback",
    "CheckpointCallback",
    "EvaluationCallback",
    "MetricsCallback",
    "MixtureAverageCallback",
    "default_callbacks",
]
