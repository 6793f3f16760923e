"""Parsing and validation of ``mixture.options`` for every reweighting method.

Each method declares a frozen options dataclass. :func:`parse_options` builds it from the
config mapping: unknown keys fail with the nearest valid key, and every field check below
raises :class:`~megagrape.errors.ConfigError` naming ``mixture.options.<field>``, the bad
value and the allowed range.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from megagrape.errors import ConfigError
from megagrape.utils.names import did_you_mean

OPTIONS_PREFIX = "mixture.options"

OptionsT = TypeVar("OptionsT")


def option_error(field: str, value: Any, allowed: str) -> ConfigError:
    """A ConfigError for ``mixture.options.<field>`` holding ``value``, saying what is allowed."""
    return ConfigError(f"{OPTIONS_PREFIX}.{field} = {value!r} is not valid; allowed: {allowed}")


def parse_options(
    options_class: type[OptionsT], raw: Mapping[str, Any] | None, method: str
) -> OptionsT:
    """Build ``options_class`` from a config mapping, rejecting keys it does not define."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{OPTIONS_PREFIX} must be a mapping of option names to values for method "
            f"{method!r}, got {type(raw).__name__}: {raw!r}"
        )
    valid = [field.name for field in dataclasses.fields(options_class)]
    for key in raw:
        if key not in valid:
            raise unknown_key_error(
                f"{OPTIONS_PREFIX}.{key}", str(key), valid, f"method {method!r}"
            )
    return options_class(**raw)


def unknown_key_error(where: str, key: str, valid: Sequence[str], owner: str) -> ConfigError:
    """ConfigError for an unknown key, naming the nearest valid key (if any is close) and all."""
    hint = did_you_mean(key, valid)
    hint = f"{hint} " if hint else ""
    listing = ", ".join(valid) if valid else "(none)"
    return ConfigError(f"{where}: unknown option for {owner}; {hint}valid options: {listing}")


def set_option(options: object, field: str, value: Any) -> None:
    """Store a validated (possibly converted) value on a frozen options dataclass."""
    object.__setattr__(options, field, value)


def real(
    field: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    meaning: str = "",
) -> float:
    """``value`` as a finite float inside the given interval, else ConfigError naming the field."""
    interval = _describe_interval(low, high, low_open, high_open)
    allowed = f"a finite number {interval}" + (f" ({meaning})" if meaning else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise option_error(field, value, allowed)
    number = float(value)
    if not math.isfinite(number):
        raise option_error(field, value, allowed)
    if low is not None and (number < low or (low_open and number == low)):
        raise option_error(field, value, allowed)
    if high is not None and (number > high or (high_open and number == high)):
        raise option_error(field, value, allowed)
    return number


def integer(field: str, value: Any, *, low: int, meaning: str = "") -> int:
    """``value`` as an int >= ``low`` (bools rejected), else ConfigError naming the field."""
    allowed = f"an integer >= {low}" + (f" ({meaning})" if meaning else "")
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise option_error(field, value, allowed)
    return value


def choice(field: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else ConfigError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise option_error(field, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


def boolean(field: str, value: Any) -> bool:
    """``value`` if it is a bool, else ConfigError."""
    if not isinstance(value, bool):
        raise option_error(field, value, "true or false")
    return value


def named_vector(
    field: str,
    value: Any,
    names: Sequence[str],
    *,
    what: str,
    strictly_positive: bool,
) -> list[float]:
    """Per-name numbers given as a list in ``names`` order or a mapping ``{name: number}``.

    Every entry must be finite and >= 0 (> 0 when ``strictly_positive``); a mapping must name
    each of ``names`` exactly once. Returns the numbers in ``names`` order.
    """
    sign = "> 0" if strictly_positive else ">= 0"
    allowed = (
        f"a list of {len(names)} numbers {sign} (one per {what}, in the order "
        f"{', '.join(names)}) or a mapping {{{what}: number}}"
    )
    if isinstance(value, Mapping):
        unknown = [key for key in value if key not in names]
        missing = [name for name in names if name not in value]
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"unknown {what}s {unknown}")
            if missing:
                parts.append(f"missing {what}s {missing}")
            raise option_error(field, dict(value), f"{allowed}; {' and '.join(parts)}")
        numbers = [value[name] for name in names]
    elif isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise option_error(
                field, list(value), f"{allowed}; got {len(value)} entries for {len(names)} {what}s"
            )
        numbers = list(value)
    else:
        raise option_error(field, value, allowed)
    result = []
    for name, number in zip(names, numbers):
        bad_type = isinstance(number, bool) or not isinstance(number, (int, float))
        if (
            bad_type
            or not math.isfinite(number)
            or number < 0
            or (strictly_positive and number == 0)
        ):
            raise option_error(field, value, f"{allowed}; entry for {name!r} is {number!r}")
        result.append(float(number))
    return result


def _describe_interval(
    low: float | None, high: float | None, low_open: bool, high_open: bool
) -> str:
    if low is not None and high is not None:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        return f"in {left}{low:g}, {high:g}{right}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return ""


def distribution(field: str, value: Any, names: Sequence[str], *, what: str) -> list[float]:
    """Relative weights per name (list or mapping, each >= 0, not all 0), normalised to sum 1."""
    numbers = named_vector(field, value, names, what=what, strictly_positive=False)
    total = math.fsum(numbers)
    if total <= 0.0:
        raise option_error(field, value, f"weights >= 0 per {what} with a positive sum")
    return [number / total for number in numbers]


def validate(options: object, field: str, check: Callable[..., Any], **limits: Any) -> None:
    """Run ``check(field, value, **limits)`` on an options dataclass field and store the result."""
    set_option(options, field, check(field, getattr(options, field), **limits))
