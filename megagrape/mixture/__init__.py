"""Data-mixture reweighting methods: pure maths on small tensors (no I/O, no torch.distributed).

The trainer builds a method with :func:`build_method`, computes the :class:`Observation` fields
listed in ``method.needs`` every R steps, and feeds ``method.update(obs)``'s weights to the
sampler (``apply: sample``) or to the loss via :func:`hybrid_loss_weights` (``apply: loss``).

One file per method, each registered with ``@register_method(name, Options)``; importing this
package imports them all, so ``KNOWN_METHODS`` and the registry are complete.
"""

# Each method module registers its class on import.
from megagrape.mixture import doge, doremi, epo, grape, imtl, mgda, odm, static  # noqa: F401
from megagrape.mixture.averaging import TimeAverage
from megagrape.mixture.base import (
    OBSERVATION_FIELDS,
    TARGET_FIELDS,
    MixtureContext,
    MixtureMethod,
    MixtureUpdate,
    Observation,
)
from megagrape.mixture.hybrid import hybrid_loss_weights
from megagrape.mixture.registry import (
    build_method,
    method_class,
    options_class,
    register_method,
    registered_names,
    validate_method_options,
)
from megagrape.mixture.static import load_weights_file

KNOWN_METHODS: tuple[str, ...] = registered_names()

__all__ = [
    "KNOWN_METHODS",
    "OBSERVATION_FIELDS",
    "TARGET_FIELDS",
    "MixtureContext",
    "MixtureMethod",
    "MixtureUpdate",
    "Observation",
    "TimeAverage",
    "build_method",
    "hybrid_loss_weights",
    "load_weights_file",
    "method_class",
    "options_class",
    "register_method",
    "registered_names",
    "validate_method_options",
]
