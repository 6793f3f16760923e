"""The method registry: ``mixture.method`` names -> (options dataclass, method class), and
building a method from ``mixture.method`` / ``mixture.options`` and the run's facts.

Each method module registers its class with :func:`register_method`; importing
``megagrape.mixture`` imports every method module, so the registry is full for any user of
the package. Nothing here knows a method by name: what differs between methods is read from
class-level facts (``needs_targets``, ``takes_initial_weights``, ``reweights``, see
:class:`~megagrape.mixture.base.MixtureMethod`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

from megagrape.errors import ConfigError
from megagrape.mixture.base import DTYPE, MixtureContext, MixtureMethod, uniform
from megagrape.mixture.options import parse_options
from megagrape.utils.distribution import checked_distribution
from megagrape.utils.names import did_you_mean

MethodT = TypeVar("MethodT", bound=type[MixtureMethod])

_METHODS: dict[str, tuple[type, type[MixtureMethod]]] = {}


def register_method(name: str, options_type: type) -> Callable[[MethodT], MethodT]:
    """Class decorator: register a MixtureMethod subclass as ``mixture.method: name``.

    ``options_type`` is the frozen dataclass ``mixture.options`` is parsed into. The decorator
    sets the class's ``name``; a name registered twice raises ValueError.
    """

    def register(method_type: MethodT) -> MethodT:
        if not issubclass(method_type, MixtureMethod):
            raise TypeError(f"register_method({name!r}): {method_type!r} is not a MixtureMethod")
        if name in _METHODS:
            raise ValueError(
                f"register_method({name!r}): already registered by {_METHODS[name][1].__name__}"
            )
        method_type.name = name
        _METHODS[name] = (options_type, method_type)
        return method_type

    return register


def registered_names() -> tuple[str, ...]:
    """Every registered method name, in registration (import) order."""
    return tuple(_METHODS)


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

    ``initial_weights`` [K] (a distribution; None = uniform) is where the method starts; it
    must be None for methods whose ``takes_initial_weights`` is False (their options give the
    weights). ``domain_token_counts`` (tokens per domain) is needed by ``static`` with
    ``source: natural``.
    Raises ConfigError naming the field for every invalid input.
    """
    options_type, method_type = _METHODS[_known(name)]
    domains = _names(domain_names, "domain", minimum=1)
    tasks = _names(task_names, "target task", minimum=0)
    if method_type.needs_targets and not tasks:
        without = [
            other
            for other, (_, other_type) in _METHODS.items()
            if other_type.reweights and not other_type.needs_targets
        ]
        raise ConfigError(
            f"mixture.method = {name!r} optimises the mixture for target tasks, but the run has "
            f"none; add targets or choose a method without targets ({', '.join(without)})"
        )
    if not method_type.takes_initial_weights and initial_weights is not None:
        fields = ", ".join(spec.name for spec in dataclasses.fields(options_type))
        raise ConfigError(
            f"mixture.initial_weights is set but mixture.method = {name!r} takes its weights from "
            f"mixture.options ({fields}); remove initial_weights"
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
    known = registered_names()
    hint = did_you_mean(str(name), known)
    hint = f"{hint} " if hint else ""
    raise ConfigError(
        f"mixture.method = {name!r} is not a known method; {hint}known methods: {', '.join(known)}"
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
