"""DoGE: GRAPE's domain step with fixed task weights, DoGE's score normalisation and clipping.

One event (reference: Olivia-fsm/DoGE ``update_domain_weights_distributed``; η = model lr):

    H[k, n] = <g_k, h_n>                          (target_gradient column scaling, default plain,
                                                   then gradient_scaling: raw, clip or cosine)
    s_k  = η * sum_n z_n H[k, n]                  (n != k when exclude_diagonal: targets = domains)
    s_k <- s_k / (mean_k ||g_k|| + 1e-6)          (normalize: mean_grad_norm; ||g_k|| from the
                                                   domain Gram diagonal, or under clip/cosine the
                                                   norms of the scaled g_k: min(||g_k||, c) / 1)
    s_k <- clip(s_k, η * dw_min, η * dw_max)      (clip)
    α   <- softmax(log α + s / mu);   α <- (1 - eps) α + eps / K

DoGE's reference clips every per-domain gradient to 5.0 before its products: that is
``gradient_scaling: clip`` with ``clip_norm: 5``. ``clip`` (a bool) is the separate clipping of
the SCORES to [η dw_min, η dw_max]. A non-finite score, step or new weight skips the event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from megagrape.errors import ConfigError
from megagrape.mixture import options as opt
from megagrape.mixture.base import (
    Diagnostics,
    MixtureContext,
    MixtureMethod,
    MixtureUpdate,
    Observation,
    exponentiated_step,
    non_finite_reason,
    required,
    smooth,
    uniform,
)
from megagrape.mixture.gradient_scaling import (
    read_norms,
    scale_products,
    scaling_needs,
    validate_clip_norm,
)
from megagrape.mixture.registry import register_method
from megagrape.mixture.target_scaling import (
    TARGET_GRADIENTS,
    clipped_target_norms,
    invalid_target_loss,
    needs_target_losses,
    scale_columns,
    target_scales,
)

NORMALIZATIONS = ("mean_grad_norm", "none")
NORM_FLOOR = 1e-6  # DoGE adds it to the mean gradient norm before dividing


@dataclass(frozen=True)
class DogeOptions:
    """Options of ``mixture.method: doge`` (defaults: DoGE's config/doge.json)."""

    mu: float = 0.01
    """Bregman strength (> 0): the step is s / mu, with s already scaled by the model lr."""
    eps: float = 0.0
    """Smoothing in [0, 1): α <- (1 - eps) α + eps / K (DoGE's reweight_eps, default 0)."""
    task_weights: Any = None
    """Fixed z: None (uniform over targets), a list in target order or {task: weight}."""
    target_gradient: str = "plain"
    """h_n: "plain" (grad l_n, as DoGE), "log" (grad l_n / l_n) or "ema" (grad l_n / EMA(l_n))."""
    loss_ema_decay: float = 0.9
    """Decay in [0, 1) of the target-loss EMA for target_gradient "ema"."""
    normalize: str = "mean_grad_norm"
    """"mean_grad_norm" divides scores by mean_k ||g_k|| + 1e-6 (needs the domain Gram), or "none"."""
    clip: bool = True
    """Clip scores to [lr * dw_min, lr * dw_max]."""
    dw_min: float = 0.0
    """Lower clip bound in units of the model lr (DoGE: 0, so no domain is actively penalised)."""
    dw_max: float = 5.0
    """Upper clip bound in units of the model lr (DoGE: 5)."""
    exclude_diagonal: bool = False
    """Targets are the domains themselves (task k = domain k): drop <g_k, h_k> from s_k, as DoGE
    does when its training and target sets coincide. Needs as many targets as domains."""
    gradient_scaling: str = "raw"
    """How gradients enter the products: "raw", "clip" (each gradient clipped to clip_norm, as
    DoGE's reference) or "cosine". clip/cosine need Observation.domain_sq_norms and target_gram."""
    clip_norm: float | None = None
    """Norm c (> 0) of gradient_scaling "clip"; None means 5.0 (DoGE's reference). Only valid
    with "clip"."""

    def __post_init__(self) -> None:
        opt.validate(self, "mu", opt.real, low=0.0, low_open=True, meaning="Bregman strength")
        opt.validate(self, "eps", opt.real, low=0.0, high=1.0, high_open=True)
        opt.validate(self, "target_gradient", opt.choice, choices=TARGET_GRADIENTS)
        opt.validate(self, "loss_ema_decay", opt.real, low=0.0, high=1.0, high_open=True)
        opt.validate(self, "normalize", opt.choice, choices=NORMALIZATIONS)
        opt.validate(self, "clip", opt.boolean)
        opt.validate(self, "dw_min", opt.real)
        opt.validate(self, "dw_max", opt.real)
        if self.dw_max <= self.dw_min:
            raise opt.option_error("dw_max", self.dw_max, f"a number > dw_min = {self.dw_min:g}")
        opt.validate(self, "exclude_diagonal", opt.boolean)
        validate_clip_norm(self, default=5.0)


@register_method("doge", DogeOptions)
class Doge(MixtureMethod):
    """DoGE (Fan, Pagliardini, Jaggi 2024) on megagrape's domain x target Gram.

    ``task_weights`` holds the fixed z (reported with every update, never changed).
    """

    domain_diagnostics = frozenset({"raw_scores", "domain_scores", "domain_grad_norms"})
    task_diagnostics = frozenset({"target_grad_norms"})

    required_needs = frozenset({"domain_target_gram"})
    state_fields = ("domain_weights", "loss_ema")

    def __init__(self, options: DogeOptions, context: MixtureContext) -> None:
        super().__init__(context)
        self.options = options
        if options.task_weights is None:
            self.task_weights = uniform(self.num_tasks)
        else:
            weights = opt.distribution(
                "task_weights", options.task_weights, self.task_names, what="task"
            )
            self.task_weights = self.domain_weights.new_tensor(weights)
        if options.exclude_diagonal and self.num_tasks != self.num_domains:
            raise ConfigError(
                f"mixture.options.exclude_diagonal = true pairs target k with domain k, but the run "
                f"has {self.num_domains} domains and {self.num_tasks} targets; use one target per "
                f"domain (same order) or set exclude_diagonal: false"
            )
        self.loss_ema: Tensor | None = None

    @property
    def needs(self) -> frozenset[str]:
        fields = set(self.required_needs) | scaling_needs(self.options.gradient_scaling)
        if self.options.normalize == "mean_grad_norm" and self.options.gradient_scaling == "raw":
            fields.add("domain_gram")  # under clip/cosine the norms come from domain_sq_norms
        if needs_target_losses(self.options.target_gradient):
            fields.add("target_losses")
        return frozenset(fields)

    def update(self, obs: Observation) -> MixtureUpdate:
        k, n = self.num_domains, self.num_tasks
        lr = float(obs.lr)
        if not lr >= 0.0 or lr == float("inf"):
            raise ValueError(f"Observation.lr must be a finite number >= 0 for DoGE, got {obs.lr}")
        gram = required(obs, "domain_target_gram", (k, n), self.name)
        domains = ("k", "domain", self.domain_names)
        reason = non_finite_reason(
            gram, "domain_target_gram", [domains, ("n", "task", self.task_names)]
        )
        if reason is not None:
            return self.skip(reason)
        scaling = self.options.gradient_scaling
        norms = None
        if scaling != "raw":
            norms, reason = read_norms(obs, self.name, self.domain_names, self.task_names)
            if reason is not None:
                return self.skip(reason)
        mean_norm = None
        if self.options.normalize == "mean_grad_norm" and norms is None:
            diagonal = required(obs, "domain_gram", (k, k), self.name).diagonal()
            reason = non_finite_reason(diagonal, "domain_gram diagonal", [domains])
            if reason is not None:
                return self.skip(reason)
            mean_norm = float(diagonal.clamp_min(0.0).sqrt().mean())
        elif self.options.normalize == "mean_grad_norm":
            assert norms is not None
            if scaling == "clip":
                assert self.options.clip_norm is not None
                mean_norm = float(norms.domain.clamp_max(self.options.clip_norm).mean())
            else:  # cosine: every non-zero g_k enters with norm 1
                mean_norm = float((norms.domain > 0.0).to(norms.domain.dtype).mean())
        losses = None
        if needs_target_losses(self.options.target_gradient):
            losses = required(obs, "target_losses", (n,), self.name)
            reason = invalid_target_loss(losses, self.task_names)
            if reason is not None:
                return self.skip(reason)

        scales, loss_ema = target_scales(
            self.options.target_gradient, losses, self.loss_ema, self.options.loss_ema_decay
        )
        scaled, scaling_diagnostics = scale_products(
            scaling,
            gram,
            scale_columns(gram, scales),
            norms,
            None
            if norms is None
            else clipped_target_norms(self.options.target_gradient, norms.target, losses),
            self.options.clip_norm or 0.0,
        )
        if self.options.exclude_diagonal:
            scaled = scaled - torch.diag(scaled.diagonal())
        raw_scores = lr * (scaled @ self.task_weights)
        tasks = ("n", "task", self.task_names)
        reason = non_finite_reason(scaled, f"{scaling} products H", [domains, tasks])
        reason = reason or non_finite_reason(raw_scores, "scores lr * H z", [domains])
        if reason is not None:  # checked before the score clipping, which would hide an inf
            return self.skip(reason)
        scores = raw_scores if mean_norm is None else raw_scores / (mean_norm + NORM_FLOOR)
        clipped_count = 0
        if self.options.clip:
            bounded = scores.clamp(lr * self.options.dw_min, lr * self.options.dw_max)
            clipped_count = int((bounded != scores).sum())
            scores = bounded
        reason = non_finite_reason(
            (1.0 / self.options.mu) * scores, "domain step scores / mu", [domains]
        )
        if reason is not None:
            return self.skip(reason)
        alpha = smooth(
            exponentiated_step(self.domain_weights, scores, 1.0 / self.options.mu),
            self.options.eps,
        )
        reason = non_finite_reason(alpha, "new domain weights", [domains])
        if reason is not None:
            return self.skip(reason)
        self.domain_weights = alpha
        self.loss_ema = loss_ema
        diagnostics: Diagnostics = {
            "raw_scores": raw_scores.tolist(),
            "domain_scores": scores.tolist(),
            "clipped_count": float(clipped_count),
            **scaling_diagnostics,
        }
        if mean_norm is not None:
            diagnostics["mean_grad_norm"] = mean_norm
        return self.applied(diagnostics)
