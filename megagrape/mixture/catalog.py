"""What ``pretrain_grape.py --list-methods [NAME]`` prints: every method, its needs and options.

Generated from the registry and the options dataclasses (their defaults and attribute
docstrings), so the listing cannot drift from what the config accepts.
"""

from __future__ import annotations

import dataclasses
import inspect

from megagrape.configtools import field_docstrings
from megagrape.mixture import KNOWN_METHODS, method_class, options_class
from megagrape.mixture.base import MixtureContext, uniform
from megagrape.mixture.options import parse_options

NEED_MEANINGS = {
    "domain_target_gram": "per-domain x per-target gradient products (gradient capture)",
    "domain_gram": "per-domain gradient Gram matrix (gradient capture)",
    "target_losses": "target signal losses (target forward/backward at events)",
    "domain_losses": "per-domain training loss (free: from the training batch)",
    "domain_sample_counts": "per-domain sample counts (free)",
    "domain_excess_losses": "excess loss over a reference model (mixture.reference_checkpoint)",
    "previous_target_losses": "target losses of the previous event",
}


def default_needs(name: str) -> frozenset[str]:
    """``needs`` of method ``name`` with its default options (on a 2-domain, 1-target run)."""
    context = MixtureContext(
        domain_names=("a", "b"),
        task_names=("t",),
        initial_weights=uniform(2),
        domain_token_counts=(1, 1),
    )
    options = parse_options(options_class(name), {}, name)
    return method_class(name)(options, context).needs


def summary_line(name: str) -> str:
    """The first line of the method class's docstring."""
    doc = inspect.getdoc(method_class(name)) or ""
    return doc.splitlines()[0] if doc else ""


def describe_methods() -> str:
    """One line per method: name, summary, and what it needs at an event (default options)."""
    width = max(len(name) for name in KNOWN_METHODS)
    lines = []
    for name in KNOWN_METHODS:
        needs = ", ".join(sorted(default_needs(name))) or "nothing (fixed weights)"
        lines.append(f"{name:<{width}}  {summary_line(name)}")
        lines.append(f"{'':<{width}}  needs: {needs}")
    lines.append("")
    lines.append("details and options: --list-methods NAME")
    return "\n".join(lines)


def describe_method(name: str) -> str:
    """A method's summary, needs with their meaning, and every option with default and doc."""
    cls = options_class(name)  # ConfigError with a did-you-mean hint for unknown names
    docs = field_docstrings(cls)
    lines = [f"{name}: {summary_line(name)}", "", "needs at each reweighting event:"]
    for need in sorted(default_needs(name)) or ["nothing (fixed weights: no events)"]:
        lines.append(f"  {need}: {NEED_MEANINGS[need]}" if need in NEED_MEANINGS else f"  {need}")
    lines.append("")
    lines.append("mixture.options (default, meaning):")
    for spec in dataclasses.fields(cls):
        default = (
            spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        )
        lines.append(f"  {spec.name} = {default!r}")
        for doc_line in docs.get(spec.name, "").splitlines():
            lines.append(f"      {doc_line}")
    return "\n".join(lines)


def resolved_options(name: str, given: dict) -> dict:
    """``given`` options completed with every default of method ``name`` (validated first)."""
    cls = options_class(name)
    parse_options(cls, given, name)
    resolved = {}
    for spec in dataclasses.fields(cls):
        if spec.name in given:
            resolved[spec.name] = given[spec.name]
        elif spec.default is not dataclasses.MISSING:
            resolved[spec.name] = spec.default
        else:
            resolved[spec.name] = spec.default_factory()
    return resolved
