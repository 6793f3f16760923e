"""EPO: exact-Pareto-optimal search along a preference ray, with the LP weights as α.

One event (Mahapatra & Rajan 2020; reference dbmptr/EPOSearch ``epo_lp.py``), with l the K
domain losses, r > 0 the preference vector and C the K x K domain Gram:

    l̂  = r⊙l / sum(r⊙l);   μ = sum_k l̂_k log(K l̂_k)   (non-uniformity; 0 on the ray r⊙l ∝ 1)
    a   = r ⊙ (log(K l̂) - μ)
    μ > balance_threshold (balance LP):
        max αᵀ C a  s.t.  α in simplex,  (C α)_j >= rhs_j
        rhs = C a with -inf on J = {j: (C a)_j > 0} and 0 on J* = argmax r⊙l  (rhs = 0 if J is empty)
    otherwise (descent LP):
        max 1ᵀ C α  s.t.  α in simplex,  αᵀ C a >= min(max_j (C a)_j, 0),  C α >= 0
    α <- (1 - eps) clip(α, 0) / sum + eps / K

Solved with scipy.optimize.linprog (HiGHS). The losses end up on the ray where r_k l_k is equal
for every k, i.e. l ∝ 1 / r.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linprog

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
class EpoOptions:
    """Options of ``mixture.method: epo``."""

    preference: Any = None
    """r: None (all ones), a list in domain order or {domain: r_k}; every r_k > 0. The losses are
    steered to r_1 l_1 = ... = r_K l_K (a larger r_k asks for a smaller loss on domain k)."""
    balance_threshold: float = 1e-4
    """Non-uniformity μ above which the balance LP runs instead of the descent LP (> 0)."""
    eps: float = 0.0
    """Smoothing in [0, 1): α <- (1 - eps) α + eps / K."""

    def __post_init__(self) -> None:
        opt.validate(self, "balance_threshold", opt.real, low=0.0, low_open=True)
        opt.validate(self, "eps", opt.real, low=0.0, high=1.0, high_open=True)


@dataclass
class EpoStep:
    """Solution of one EPO linear program."""

    weights: np.ndarray | None
    """α [K] as returned by the LP (None when it failed)."""
    balance: bool
    """True for the balance LP, False for the descent LP."""
    non_uniformity: float
    """μ of the preference-weighted losses."""
    message: str
    """The solver's status message."""


def epo_lp(
    losses: np.ndarray, gram: np.ndarray, preference: np.ndarray, threshold: float
) -> EpoStep:
    """Solve EPO's balance or descent LP for positive ``losses`` [K] and Gram [K, K]."""
    size = losses.size
    weighted = preference * losses
    shares = weighted / weighted.sum()
    non_uniformity = float(np.sum(shares * np.log(size * shares)))
    adjustment = preference * (np.log(size * shares) - non_uniformity)
    c_a = gram @ adjustment
    simplex = {"A_eq": np.ones((1, size)), "b_eq": [1.0], "bounds": [(0.0, None)] * size}
    if non_uniformity > threshold:
        rhs = np.zeros(size)
        improving = c_a > 0
        if improving.any():
            rhs = c_a.copy()
            rhs[improving] = -np.inf
            rhs[weighted == weighted.max()] = 0.0
        rows = np.isfinite(rhs)
        result = linprog(-c_a, A_ub=-gram[rows], b_ub=-rhs[rows], method="highs", **simplex)
        balance = True
    else:
        a_ub = np.vstack([-c_a[None, :], -gram])
        b_ub = np.concatenate([[-min(float(c_a.max()), 0.0)], np.zeros(size)])
        result = linprog(-gram.sum(axis=0), A_ub=a_ub, b_ub=b_ub, method="highs", **simplex)
        balance = False
    weights = result.x if result.status == 0 else None
    return EpoStep(weights, balance, non_uniformity, str(result.message))


@register_method("epo", EpoOptions)
class Epo(MixtureMethod):
    """EPO as a data-mixing rule (multi-objective paper, §5.1) on the domain Gram and losses."""

    domain_diagnostics = frozenset({"lp_weights"})

    required_needs = frozenset({"domain_gram", "domain_losses"})

    def __init__(self, options: EpoOptions, context: MixtureContext) -> None:
        super().__init__(context)
        self.options = options
        if options.preference is None:
            values = [1.0] * self.num_domains
        else:
            values = opt.named_vector(
                "preference",
                options.preference,
                self.domain_names,
                what="domain",
                strictly_positive=True,
            )
        self.preference = np.asarray(values, dtype=np.float64)

    def update(self, obs: Observation) -> MixtureUpdate:
        k = self.num_domains
        domains = ("k", "domain", self.domain_names)
        gram = required(obs, "domain_gram", (k, k), self.name)
        losses = required(obs, "domain_losses", (k,), self.name)
        reason = non_finite_reason(
            gram, "domain_gram", [domains, ("j", "domain", self.domain_names)]
        )
        reason = reason or non_finite_reason(losses, "domain_losses", [domains])
        if reason is not None:
            return self.skip(reason)
        if not bool((losses > 0.0).all()):
            index = int((losses <= 0.0).nonzero()[0])
            return self.skip(
                f"domain_losses entry at (k={index}) [domain {self.domain_names[index]!r}] is "
                f"{float(losses[index])}; EPO takes log of the losses, so they must be > 0"
            )
        gram = 0.5 * (gram + gram.T)
        step = epo_lp(losses.numpy(), gram.numpy(), self.preference, self.options.balance_threshold)
        diagnostics: Diagnostics = {
            "balance_step": float(step.balance),
            "non_uniformity": step.non_uniformity,
        }
        if step.weights is None:
            kind = "balance" if step.balance else "descent"
            return self.skip(f"EPO {kind} LP failed: {step.message}", diagnostics)
        weights = torch.tensor(step.weights, dtype=DTYPE).clamp_min(0.0)
        diagnostics["lp_weights"] = step.weights.tolist()
        self.domain_weights = smooth(weights / weights.sum(), self.options.eps)
        return self.applied(diagnostics)
