"""DoReMi: exponentiated-gradient ascent on the per-domain excess loss over a reference model.

One event (reference: sangmichaelxie/doremi ``update_domain_weights``, doremiv1):

    λ_k = mean over domain-k tokens of max(l_θ - l_ref, 0)   (measured by the trainer; a domain
                                                               absent this event keeps its last λ_k)
    α   <- softmax(log α + eta * λ);   α <- (1 - c) α + c / K

The proxy model's loss weighting (α_k / s_k with a fixed sampling s) is ``apply: loss`` in the
trainer; see :func:`megagrape.mixture.hybrid.hybrid_loss_weights`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from megagrape.mixture import options as opt
from megagrape.mixture.base import (
    MixtureContext,
    MixtureMethod,
    MixtureUpdate,
    Observation,
    exponentiated_step,
    required,
    smooth,
)
from megagrape.mixture.registry import register_method


@dataclass(frozen=True)
class DoremiOptions:
    """Options of ``mixture.method: doremi`` (defaults: the reference's 120M Pile run)."""

    eta: float = 1.0
    """Step size (> 0) on the excess loss (units: 1 / nats)."""
    smoothing: float = 1e-3
    """Smoothing c in [0, 1): α <- (1 - c) α + c / K."""

    def __post_init__(self) -> None:
        opt.validate(self, "eta", opt.real, low=0.0, low_open=True, meaning="step size")
        opt.validate(self, "smoothing", opt.real, low=0.0, high=1.0, high_open=True)


@register_method("doremi", DoremiOptions)
class Doremi(MixtureMethod):
    """DoReMi (Xie et al. 2023) domain reweighting from trainer-measured excess losses."""

    domain_diagnostics = frozenset({"excess_losses"})

    required_needs = frozenset({"domain_excess_losses"})
    state_fields = ("domain_weights", "excess_losses")

    def __init__(self, options: DoremiOptions, context: MixtureContext) -> None:
        super().__init__(context)
        self.options = options
        self.excess_losses: Tensor = torch.zeros_like(self.domain_weights)
        """λ [K]: the last excess loss seen per domain (0 before a domain is first seen)."""

    def update(self, obs: Observation) -> MixtureUpdate:
        observed = required(obs, "domain_excess_losses", (self.num_domains,), self.name)
        infinite = torch.isinf(observed)
        if bool(infinite.any()):
            k = int(infinite.nonzero()[0])
            return self.skip(
                f"infinite domain_excess_losses entry at (k={k}) [domain {self.domain_names[k]!r}]: "
                f"{float(observed[k])}"
            )
        present = ~torch.isnan(observed)
        excess = torch.where(present, observed, self.excess_losses)
        alpha = exponentiated_step(self.domain_weights, excess, self.options.eta)
        self.domain_weights = smooth(alpha, self.options.smoothing)
        self.excess_losses = excess
        return self.applied(
            {
                "excess_losses": excess.tolist(),
                "absent_domains": float(int((~present).sum())),
            }
        )
