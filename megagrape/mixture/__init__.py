"""Data-mixture reweighting methods: pure maths on small tensors (no I/O, no torch.distributed).

The trainer builds a method with :func:`build_method`, computes the :class:`Observation` fields
listed in ``method.needs`` every R steps, and feeds ``method.update(obs)``'s weights to the
sampler (``apply: sample``) or to the loss via :func:`hybrid_loss_weights` (``apply: loss``).
"""

from megagrape.mixture.averaging import TimeAverage
from megagrape.mixture.base import (
    OBSERVATION_FIELDS,
    MixtureContext,
    MixtureMethod,
    MixtureUpdate,
    Observation,
)
from megagrape.mixture.hybrid import hybrid_loss_weights
from megagrape.mixture.registry import (
    KNOWN_METHODS,
    build_method,
    options_class,
    validate_method_options,
)
from megagrape.mixture.static import load_weights_file

__all__ = [
    "KNOWN_METHODS",
    "OBSERVATION_FIELDS",
    "MixtureContext",
    "MixtureMethod",
    "MixtureUpdate",
    "Observation",
    "TimeAverage",
    "build_method",
    "hybrid_loss_weights",
    "load_weights_file",
    "options_class",
    "validate_method_options",
]
