"""Behaviours of a run that the loop does not know about: each callback decides when it acts.

The loop calls, on every callback in order: ``on_train_start`` once, ``on_step_end`` after
every optimizer step, ``on_event`` after every reweighting event, ``on_train_end`` once. A new
behaviour is a new :class:`Callback` passed to ``build_trainer(..., callbacks=...)``; the loop
is not edited.
"""

from megagrape.train.callbacks.base import Callback
from megagrape.train.callbacks.checkpointing import CheckpointCallback
from megagrape.train.callbacks.divergence import DivergenceGuard
from megagrape.train.callbacks.evaluation import EvaluationCallback
from megagrape.train.callbacks.metrics import MetricsCallback
from megagrape.train.callbacks.mixture_average import MixtureAverageCallback
from megagrape.train.callbacks.mixture_plot import MixturePlotCallback
from megagrape.train.callbacks.preemption import PreemptionCallback


def default_callbacks() -> list[Callback]:
    """Stop requests (signals, wall time), the divergence guard, console/TensorBoard metrics,
    target evaluation, checkpoints, the time-averaged mixture, the mixture plot. The order matters: the first two
    decide whether this step ends the run or may be saved; an evaluation at a checkpoint step
    is recorded before the checkpoint."""
    return [
        PreemptionCallback(),
        DivergenceGuard(),
        MetricsCallback(),
        EvaluationCallback(),
        CheckpointCallback(),
        MixtureAverageCallback(),
        MixturePlotCallback(),
    ]


__all__ = [
    "Callback",
    "CheckpointCallback",
    "DivergenceGuard",
    "EvaluationCallback",
    "MetricsCallback",
    "MixtureAverageCallback",
    "MixturePlotCallback",
    "PreemptionCallback",
    "default_callbacks",
]
