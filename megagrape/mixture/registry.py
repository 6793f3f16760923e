"""Build a reweighting method from ``mixture.method`` / ``mixture.options`` and the run's facts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from megagrape.errors import ConfigError
from megagrape.mixture.base import DTYPE, MixtureContext, MixtureMethod, uniform
from megagrape.mixture.doge import Doge, DogeOptions
from megagrape.mixture.doremi import Doremi, DoremiOptions
from megagrape.mixture.epo import Epo, EpoOptions
from megagrape.mixture.grape import Grape, GrapeOptions
from megagrape.mixture.imtl import Imtl, ImtlOptions
from megagrape.mixture.mgda import Mgda, MgdaOptions
from megagrape.mixture.odm import Odm, OdmOptions
from megagrape.mixture.options import parse_options
from megagrape.mixture.static import Static, StaticOptions
from megagrape.utils.distribution import checked_distribution
from megagrape.utils.names import did_you_mean

_METHODS: dict[str, tuple[type, type[MixtureMethod]]] = {
    "grape": (GrapeOptions, Grape),
    "doge": (DogeOptions, Doge),
    "doremi": (DoremiOptions, Doremi),
    "odm": (OdmOptions, Odm),
    "mgda": (MgdaOptions, Mgda),
    "imtl": (ImtlOptions, Imtl),
    "epo": (EpoOptions, Epo),
    "static": (StaticOptions, Static),
}

KNOWN_METHODS: tuple[str, ...] = tuple(_METHODS)
METHODS_NEEDING_TARGETS = frozenset({"grape", "doge"})


def method_class(name: str) -> type[MixtureMethod]:
    """The MixtureMethod subclass registered as ``name`` (ConfigError with a hint if unknown)."""
    return _METHODS[_known(name)][1]


def options_class(name: str) -> type:
    """The frozen options dataclass of method ``name`` (for docs and config tooling)."""
    return _METHODS[_known(name)][0]


def build_method(
    name: str,
    options: Mapping[str, Any] | None,
    domain_names: Sequence[str],
    task_names: Sequence[str],
    initial_weights: Tensor | Sequence[float] | None,
    domain_token_counts: Sequence[int] | None,
) -> MixtureMethod:
    """Validate the mixture config and build the method.

    ``initial_weights`` [K] (a distribution; None = uniform) is where dynamic methods start;
    static mixtures take their weights from their options instead. ``domain_token_counts``
    (tokens per domain) is needed by ``static`` with ``source: natural``.
    Raises ConfigError naming the field for every invalid input.
    """
    options_type, method_type = _METHODS[_known(name)]
    domains = _names(domain_names, "domain", minimum=1)
    tasks = _names(task_names, "target task", minimum=0)
    if name in METHODS_NEEDING_TARGETS and not tasks:
        raise ConfigError(
            f"mixture.method = {name!r} optimises the mixture for target tasks, but the run has "
            f"none; add targets or choose a method without targets (doremi, odm, mgda, imtl, epo)"
        )
    if name == "static" and initial_weights is not None:
        raise ConfigError(
            "mixture.initial_weights is set but mixture.method = 'static' takes its weights from "
            "mixture.options (source: uniform | natural | file | inline); remove initial_weights"
        )
    context = MixtureContext(
        domain_names=domains,
        task_names=tasks,
        initial_weights=_initial_weights(initial_weights, domains),
        domain_token_counts=None
        if domain_token_counts is None
        else tuple(int(c) for c in domain_token_counts),
    )
    return method_type(parse_options(options_type, options, name), context)


def validate_method_options(name: str, options: Mapping[str, Any] | None) -> None:
    """Check ``mixture.method`` and ``mixture.options`` before any data is read (ConfigError)."""
    options_type, _method_type = _METHODS[_known(name)]
    parse_options(options_type, options, name)


def _known(name: Any) -> str:
    if isinstance(name, str) and name in _METHODS:
        return name
    hint = did_you_mean(str(name), KNOWN_METHODS)
    hint = f"{hint} " if hint else ""
    raise ConfigError(
        f"mixture.method = {name!r} is not a known method; {hint}known methods: {', '.join(KNOWN_METHODS)}"
    )


def _names(names: Sequence[str], kind: str, minimum: int) -> tuple[str, ...]:
    result = tuple(str(name) for name in names)
    if len(result) < minimum:
        raise ConfigError(f"a mixture needs at least {minimum} {kind}(s), got none")
    seen: set[str] = set()
    for name in result:
        if name in seen:
            raise ConfigError(
                f"{kind} name {name!r} appears more than once; {kind} names must be unique"
            )
        seen.add(name)
    return result


def _initial_weights(weights: Tensor | Sequence[float] | None, domains: tuple[str, ...]) -> Tensor:
    if weights is None:
        return uniform(len(domains))
    values = torch.as_tensor(weights, dtype=DTYPE).detach().cpu().flatten()
    if values.numel() != len(domains):
        raise ConfigError(
            f"mixture.initial_weights has {values.numel()} entries but the run has {len(domains)} "
            f"domains ({', '.join(domains)})"
        )
    checked = checked_distribution(
        values.tolist(), domains, what="mixture.initial_weights", error=ConfigError
    )
    return torch.tensor(checked, dtype=DTYPE)
