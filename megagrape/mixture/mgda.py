"""MGDA: the min-norm point of the convex hull of the domain gradients, as domain weights.

One event (Sener & Koltun 2018; reference solver isl-org/MultiObjectiveOptimization
``find_min_norm_element_FW``), with M the K x K domain Gram and ĝ_k = g_k / ν_k normalised:

    ν_k = 1 (none) | ||g_k|| (l2) | l_k (loss) | l_k ||g_k|| (loss+);   M̂ = M / (ν νᵀ)
    c   = argmin_{c in simplex} cᵀ M̂ c                      (Frank-Wolfe, at most max_iter steps)
          start: the best pair (i, j) by the closed-form 2-point solution;
          step:  t = argmin_i (M̂ c)_i; exact line search between c and e_t;
          stop:  ||c_new - c||_1 < tol
    α   = (1 - eps) c + eps / K

The convex weights c become the new α (they weight the normalised gradients).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from megagrape.mixture import options as opt
from megagrape.mixture.base import (
    DTYPE,
    MixtureContext,
    MixtureMethod,
    MixtureUpdate,
    Observation,
    non_finite_reason,
    required,
    smooth,
)
from megagrape.mixture.registry import register_method

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


@dataclass(frozen=True)
class MgdaOptions:
    """Options of ``mixture.method: mgda``."""

    normalization: str = "none"
    """Gradient normalisation ν_k: "none", "l2" (||g_k||), "loss" (l_k) or "loss+" (l_k ||g_k||)."""
    max_iter: int = 250
    """Frank-Wolfe iteration cap (>= 1; the reference declares 250 but never enforces it)."""
    tol: float = 1e-5
    """Stop when the L1 change of c is below tol (> 0)."""
    eps: float = 0.0
    """Smoothing in [0, 1): α <- (1 - eps) c + eps / K."""

    def __post_init__(self) -> None:
        opt.validate(self, "normalization", opt.choice, choices=NORMALIZATIONS)
        opt.validate(self, "max_iter", opt.integer, low=1, meaning="Frank-Wolfe iteration cap")
        opt.validate(self, "tol", opt.real, low=0.0, low_open=True)
        opt.validate(self, "eps", opt.real, low=0.0, high=1.0, high_open=True)


def two_point_min_norm(v11: float, v12: float, v22: float) -> tuple[float, float]:
    """argmin over γ in [0, 1] of ||γ v1 + (1 - γ) v2||² from the three inner products.

    Returns (γ, squared norm at γ). Exact at the ends (the reference uses 0.999 / 0.001).
    """
    if v12 >= v11:
        return 1.0, v11
    if v12 >= v22:
        return 0.0, v22
    gamma = (v22 - v12) / (v11 + v22 - 2.0 * v12)
    return gamma, v22 + gamma * (v12 - v22)


@dataclass
class MinNormResult:
    """Frank-Wolfe solution of min_{c in simplex} cᵀ M c."""

    weights: Tensor
    """c [K] on the simplex."""
    iterations: int
    """Frank-Wolfe steps taken (0 when the best pair already is the answer or K <= 2)."""
    converged: bool
    """Whether the L1 change fell below tol before max_iter."""
    norm_sq: float
    """cᵀ M c: squared norm of the min-norm combination."""
    duality_gap: float
    """cᵀ M c - min_i (M c)_i >= 0: zero exactly at the optimum."""


def min_norm_weights(gram: Tensor, max_iter: int, tol: float) -> MinNormResult:
    """Min-norm convex combination of K vectors given only their Gram matrix [K, K]."""
    size = gram.shape[0]
    weights = torch.zeros(size, dtype=DTYPE)
    if size == 1:
        weights[0] = 1.0
        return MinNormResult(weights, 0, True, float(gram[0, 0]), 0.0)
    entries = gram.tolist()
    best = None
    for i in range(size):
        for j in range(i + 1, size):
            gamma, cost = two_point_min_norm(entries[i][i], entries[i][j], entries[j][j])
            if best is None or cost < best[0]:
                best = (cost, i, j, gamma)
    assert best is not None
    _, i, j, gamma = best
    weights[i], weights[j] = gamma, 1.0 - gamma
    iterations, converged = 0, size == 2
    while not converged and iterations < max_iter:
        product = gram @ weights
        target = int(torch.argmin(product))
        gamma, _ = two_point_min_norm(
            float(weights @ product), float(product[target]), entries[target][target]
        )
        updated = gamma * weights
        updated[target] += 1.0 - gamma
        iterations += 1
        converged = float((updated - weights).abs().sum()) < tol
        weights = updated
    product = gram @ weights
    norm_sq = float(weights @ product)
    return MinNormResult(weights, iterations, converged, norm_sq, norm_sq - float(product.min()))


@register_method("mgda", MgdaOptions)
class Mgda(MixtureMethod):
    """MGDA (Sener & Koltun 2018) as a data-mixing rule (multi-objective paper, §3)."""

    domain_diagnostics = frozenset({"min_norm_weights"})

    required_needs = frozenset({"domain_gram"})

    def __init__(self, options: MgdaOptions, context: MixtureContext) -> None:
        super().__init__(context)
        self.options = options

    @property
    def needs(self) -> frozenset[str]:
        if self.options.normalization in ("loss", "loss+"):
            return self.required_needs | {"domain_losses"}
        return self.required_needs

    def update(self, obs: Observation) -> MixtureUpdate:
        k = self.num_domains
        domains = ("k", "domain", self.domain_names)
        gram = required(obs, "domain_gram", (k, k), self.name)
        reason = non_finite_reason(
            gram, "domain_gram", [domains, ("j", "domain", self.domain_names)]
        )
        if reason is not None:
            return self.skip(reason)
        gram = 0.5 * (gram + gram.T)
        scale = torch.ones(k, dtype=DTYPE)
        mode = self.options.normalization
        if mode in ("l2", "loss+"):
            scale = scale * gram.diagonal().clamp_min(0.0).sqrt()
        if mode in ("loss", "loss+"):
            losses = required(obs, "domain_losses", (k,), self.name)
            reason = non_finite_reason(losses, "domain_losses", [domains])
            if reason is not None:
                return self.skip(reason + " (a NaN loss means the domain was absent)")
            scale = scale * losses
        if not bool((scale > 0.0).all()):
            index = int((scale <= 0.0).nonzero()[0])
            return self.skip(
                f"normalisation {mode!r} of domain {index} ({self.domain_names[index]!r}) is "
                f"{float(scale[index])}; it must be > 0 (zero gradient or non-positive loss)"
            )
        normalised = gram / torch.outer(scale, scale)
        result = min_norm_weights(normalised, self.options.max_iter, self.options.tol)
        self.domain_weights = smooth(result.weights, self.options.eps)
        return self.applied(
            {
                "min_norm_weights": result.weights.tolist(),
                "iterations": float(result.iterations),
                "converged": float(result.converged),
                "min_norm_sq": result.norm_sq,
                "duality_gap": result.duality_gap,
            }
        )
