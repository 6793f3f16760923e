"""IMTL-G: the combination of domain gradients with equal projection on every unit gradient.

Closed form (Liu et al., ICLR 2021; LibMTL ``IMTL``), written with Gram entries only
(M = domain Gram, n_k = sqrt(M_kk), u_k = g_k / n_k, rows s, t = 2..K):

    D = [g_1 - g_s],  U = [u_1 - u_t]
    (D Uᵀ)[s, t] = M_11/n_1 - M_1t/n_t - M_s1/n_1 + M_st/n_t
    (g_1 Uᵀ)[t]  = M_11/n_1 - M_1t/n_t
    a_{2:K} = (g_1 Uᵀ) pinv(D Uᵀ);   a_1 = 1 - sum a_{2:K}
    α = (1 - eps) * clip(a, 0) / sum clip(a, 0) + eps / K

Then d = sum_k a_k g_k satisfies <d, u_1> = ... = <d, u_K>. Negative weights (possible when
gradients conflict strongly) are clipped to 0 and reported, since α must be a distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from megagrape.mixture import options as opt
from megagrape.mixture.base import (
    DTYPE,
    Diagnostics,
    MixtureContext,
    MixtureMethod,
    MixtureUpdate,
    Observation,
    non_finite_reason,
    required,
    smooth,
)
from megagrape.mixture.registry import register_method


@dataclass(frozen=True)
class ImtlOptions:
    """Options of ``mixture.method: imtl``."""

    eps: float = 0.0
    """Smoothing in [0, 1): α <- (1 - eps) α + eps / K."""

    def __post_init__(self) -> None:
        opt.validate(self, "eps", opt.real, low=0.0, high=1.0, high_open=True)


def imtl_weights(gram: Tensor) -> Tensor:
    """Raw IMTL-G weights a [K] (sum 1, may be negative) from the Gram [K, K] of nonzero gradients."""
    size = gram.shape[0]
    if size == 1:
        return torch.ones(1, dtype=DTYPE)
    norms = gram.diagonal().sqrt()
    # <g_i, u_j> = M_ij / n_j for every pair.
    projections = gram / norms.unsqueeze(0)
    first_on_diff = projections[0, 0] - projections[0, 1:]  # <g_1, u_1 - u_t>, t = 2..K
    rest_on_diff = projections[1:, 0].unsqueeze(1) - projections[1:, 1:]  # <g_s, u_1 - u_t>
    d_ut = first_on_diff.unsqueeze(0) - rest_on_diff  # <g_1 - g_s, u_1 - u_t>
    tail = first_on_diff @ torch.linalg.pinv(d_ut)
    return torch.cat([(1.0 - tail.sum()).unsqueeze(0), tail])


@register_method("imtl", ImtlOptions)
class Imtl(MixtureMethod):
    """IMTL-G as a data-mixing rule (multi-objective paper, §3)."""

    domain_diagnostics = frozenset({"raw_weights"})

    required_needs = frozenset({"domain_gram"})

    def __init__(self, options: ImtlOptions, context: MixtureContext) -> None:
        super().__init__(context)
        self.options = options

    def update(self, obs: Observation) -> MixtureUpdate:
        k = self.num_domains
        gram = required(obs, "domain_gram", (k, k), self.name)
        reason = non_finite_reason(
            gram,
            "domain_gram",
            [("k", "domain", self.domain_names), ("j", "domain", self.domain_names)],
        )
        if reason is not None:
            return self.skip(reason)
        gram = 0.5 * (gram + gram.T)
        zero = (gram.diagonal() <= 0.0).nonzero()
        if zero.numel() > 0:
            index = int(zero[0])
            return self.skip(
                f"domain {index} ({self.domain_names[index]!r}) has a zero gradient "
                f"(Gram diagonal {float(gram[index, index])}); IMTL needs its unit vector"
            )
        raw = imtl_weights(gram)
        negative = raw < 0.0
        clipped = raw.clamp_min(0.0)
        total = float(clipped.sum())
        diagnostics: Diagnostics = {
            "raw_weights": raw.tolist(),
            "clipped_count": float(int(negative.sum())),
            "clipped_values": raw[negative].tolist(),
        }
        if not total > 0.0:
            return self.skip(f"every IMTL weight is <= 0 ({raw.tolist()})", diagnostics)
        self.domain_weights = smooth(clipped / total, self.options.eps)
        return self.applied(diagnostics)
