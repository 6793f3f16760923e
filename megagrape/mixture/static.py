"""Static mixtures: uniform, natural token shares, inline weights or a weights file.

Weights files (JSON or YAML) may hold any of these shapes:

* a list of numbers in the run's domain order;
* a mapping ``{domain: weight}``;
* ``{"domain_weights": <list or mapping>, ...}`` (megagrape's mixture_average.json of a proxy run:
  the two-stage workflow);
* ``{"train": {domain: weight}, ...}`` (RegMix mixture configs; a key ``train_<name>`` matches
  domain ``<name>`` when ``train_<name>`` itself is not a domain);
* ``{"train_dw": "w1,w2,..." or [..], "train_domains": "d1,d2,..."}`` (GRAPE/DoGE reference
  configs holding CRISP, RegMix or CLIMB mixtures; without train_domains, domain order).

Weights must be finite and >= 0 and name every run domain exactly once. They must sum to 1 within
``megagrape.utils.distribution.SUM_TOLERANCE`` (published tables round to 4 digits) and are then
renormalised exactly; any other sum is an error unless ``normalize: true``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from megagrape.errors import ConfigError
from megagrape.mixture import options as opt
from megagrape.mixture.base import (
    DTYPE,
    MixtureContext,
    MixtureMethod,
    MixtureUpdate,
    Observation,
    uniform,
)
from megagrape.mixture.registry import register_method
from megagrape.utils.distribution import checked_distribution

SOURCES = ("uniform", "natural", "file", "inline")
REGMIX_PREFIX = "train_"


@dataclass(frozen=True)
class StaticOptions:
    """Options of ``mixture.method: static``."""

    source: str = "uniform"
    """"uniform", "natural" (token shares of the domains), "file" (``path``) or "inline" (``weights``)."""
    path: str | None = None
    """Weights file for source "file" (JSON or YAML; shapes in the module docstring)."""
    weights: Any = None
    """Weights for source "inline": a list in domain order or {domain: weight}."""
    normalize: bool = False
    """Rescale weights whose sum is not 1 instead of rejecting them."""

    def __post_init__(self) -> None:
        opt.validate(self, "source", opt.choice, choices=SOURCES)
        opt.validate(self, "normalize", opt.boolean)
        if self.source == "file":
            if not isinstance(self.path, str) or not self.path:
                raise opt.option_error("path", self.path, 'a weights file path (source: "file")')
        elif self.path is not None:
            raise opt.option_error(
                "path", self.path, f'null unless source is "file" (source is {self.source!r})'
            )
        if self.source == "inline":
            if self.weights is None:
                raise opt.option_error(
                    "weights", None, 'a list or {domain: weight} mapping (source: "inline")'
                )
        elif self.weights is not None:
            raise opt.option_error(
                "weights",
                self.weights,
                f'null unless source is "inline" (source is {self.source!r})',
            )


def load_weights_file(
    path: str | Path, domain_names: Sequence[str], normalize: bool = False
) -> Tensor:
    """Read a weights file (any shape in the module docstring) as α [K] float64 in domain order."""
    file = Path(path)
    field = f"weights file {str(file)!r}"
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(
            f"{field} cannot be read ({error}); check mixture.options.path"
        ) from error
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            content = yaml.safe_load(text)
        else:
            content = json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{field} is not valid JSON/YAML: {error}") from error
    return weights_from_content(content, domain_names, normalize=normalize, source=field)


def weights_from_content(
    content: Any, domain_names: Sequence[str], *, normalize: bool, source: str
) -> Tensor:
    """α [K] from a parsed weights document or an inline list/mapping (see module docstring)."""
    if isinstance(content, Mapping):
        if "domain_weights" in content:
            content = content["domain_weights"]
        elif "train_dw" in content:
            content = _reference_config(content, source)
        elif isinstance(content.get("train"), Mapping):
            content = _regmix(content["train"], domain_names)
    if isinstance(content, Mapping):
        names = [str(key) for key in content]
        unknown = [name for name in names if name not in domain_names]
        missing = [name for name in domain_names if name not in names]
        if unknown:
            raise ConfigError(
                f"{source} names domains this run does not have: {unknown}; the run's domains are "
                f"{list(domain_names)}"
            )
        if missing:
            raise ConfigError(
                f"{source} has no weight for domains {missing}; give every domain a weight (0 allowed)"
            )
        values = [content[name] for name in domain_names]
    elif isinstance(content, (list, tuple)):
        if len(content) != len(domain_names):
            raise ConfigError(
                f"{source} lists {len(content)} weights but the run has {len(domain_names)} domains "
                f"({list(domain_names)}); use a {{domain: weight}} mapping to be explicit"
            )
        values = list(content)
    else:
        raise ConfigError(
            f"{source} must hold a list of weights or a {{domain: weight}} mapping, got {content!r}"
        )
    return _checked_distribution(values, domain_names, normalize=normalize, source=source)


def natural_weights(token_counts: Sequence[int], domain_names: Sequence[str]) -> Tensor:
    """Token shares [K]: domain k's tokens over all tokens."""
    if len(token_counts) != len(domain_names):
        raise ConfigError(
            f"got {len(token_counts)} domain token counts for {len(domain_names)} domains; "
            f"natural weights need one count per domain"
        )
    for name, count in zip(domain_names, token_counts):
        if count < 0:
            raise ConfigError(f"domain {name!r} has a negative token count {count}")
    total = sum(token_counts)
    if total <= 0:
        raise ConfigError(
            "natural weights need at least one domain with tokens; every domain is empty"
        )
    return torch.tensor([count / total for count in token_counts], dtype=DTYPE)


@register_method("static", StaticOptions)
class Static(MixtureMethod):
    """A mixture that never changes; ``update`` reports it back unchanged."""

    reweights = False
    takes_initial_weights = False
    state_fields = ("domain_weights",)

    def __init__(self, options: StaticOptions, context: MixtureContext) -> None:
        super().__init__(context)
        self.options = options
        names = self.domain_names
        if options.source == "uniform":
            self.domain_weights = uniform(len(names))
        elif options.source == "natural":
            if context.domain_token_counts is None:
                raise ConfigError(
                    'mixture.options.source = "natural" needs the domains\' token counts'
                )
            self.domain_weights = natural_weights(context.domain_token_counts, names)
        elif options.source == "file":
            assert options.path is not None
            self.domain_weights = load_weights_file(
                options.path, names, normalize=options.normalize
            )
        else:
            self.domain_weights = weights_from_content(
                options.weights,
                names,
                normalize=options.normalize,
                source="mixture.options.weights",
            )

    def update(self, obs: Observation) -> MixtureUpdate:
        return self.applied({})


def _reference_config(content: Mapping[str, Any], source: str) -> Any:
    """The {domain: weight} (or ordered list) held by a GRAPE/DoGE reference config."""
    weights = _comma_list(content["train_dw"], f"{source} field train_dw")
    try:
        weights = [float(weight) if isinstance(weight, str) else weight for weight in weights]
    except ValueError as error:
        raise ConfigError(
            f"{source} field train_dw must hold numbers: {content['train_dw']!r}"
        ) from error
    domains = content.get("train_domains")
    if domains is None:
        return weights
    names = [str(name) for name in _comma_list(domains, f"{source} field train_domains")]
    if len(names) != len(weights):
        raise ConfigError(
            f"{source} has {len(weights)} train_dw weights for {len(names)} train_domains"
        )
    return dict(zip(names, weights))


def _comma_list(value: Any, where: str) -> list[Any]:
    """A list as given, or the stripped items of a comma-separated string."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ConfigError(f"{where} must be a list or a comma-separated string, got {value!r}")


def _regmix(train: Mapping[str, Any], domain_names: Sequence[str]) -> dict[str, Any]:
    """RegMix ``train:`` block; ``train_<name>`` keys map to domain ``<name>``."""
    result = {}
    for key, value in train.items():
        name = str(key)
        if name not in domain_names and name.startswith(REGMIX_PREFIX):
            stripped = name[len(REGMIX_PREFIX) :]
            if stripped in domain_names:
                name = stripped
        result[name] = value
    return result


def _checked_distribution(
    values: Sequence[Any], domain_names: Sequence[str], *, normalize: bool, source: str
) -> Tensor:
    checked = checked_distribution(
        values,
        domain_names,
        what=source,
        error=ConfigError,
        sum_hint="fix the weights or set mixture.options.normalize: true to rescale them",
        normalize=normalize,
    )
    return torch.tensor(checked, dtype=DTYPE)
