"""GRAPE: group-robust multi-target reweighting of domains (α) and target tasks (z).

One event (K domains, N tasks; H[k, n] = <g_k, h_n> is the Gram with the target-gradient
column scaling of target_scaling.py applied, then the ``gradient_scaling`` of
gradient_scaling.py: raw products, each gradient clipped to ``clip_norm``, or cosines):

    task step    r_n = sum_k a_k H[k, n]                 (first-order RoI along d = sum_k a_k g_k,
                                                          a = the weights the sampler used)
                 or r_n = (l_n(prev) - l_n(now)) / l_n(prev)              (roi: measured)
                 z   <- softmax(log z - mu_z * r);   z <- (1 - eps_z) z + eps_z / N
    domain step  s_k = sum_n z_n H'[k, n]                (with the NEW z; H' = H unless the
                                                          option domain_target_gradient differs)
                 α   <- softmax(log α + mu_a * s);   α <- (1 - eps_a) α + eps_a / K
    served       a   <- α, or a <- β a + (1 - β) α when weights_ema = β > 0

Tasks that improve least gain weight; domains whose gradients align with the prioritised
tasks gain weight; smoothing keeps every domain reachable (a zero-weight domain recovers).
An event whose scaled products, steps or new weights are not finite (e.g. a huge Gram divided
by a small loss) is skipped with the reason; the weights stay as they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

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

ROI_MODES = ("first_order", "measured")


@dataclass(frozen=True)
class GrapeOptions:
    """Options of ``mixture.method: grape`` (defaults: the reference's ClimbLab config)."""

    mu_a: float = 1.5
    """Domain step size (> 0): multiplies the domain score s_k (units: 1 / score)."""
    mu_z: float = 5.0
    """Task step size (>= 0): multiplies the rate of improvement r_n. 0 keeps z fixed (with
    eps_z = 0 exactly): GRAPE's domain step alone, the reference's DoGE baseline
    (reweight_tgt_iters = -1)."""
    eps_a: float = 1e-3
    """Domain smoothing in [0, 1): α <- (1 - eps_a) α + eps_a / K. 0 reproduces the reference."""
    eps_z: float = 1e-3
    """Task smoothing in [0, 1): z <- (1 - eps_z) z + eps_z / N (the reference hard-codes 1e-3)."""
    roi: str = "first_order"
    """Rate of improvement: "first_order" (r = Hᵀa) or "measured" (relative loss drop between events)."""
    target_gradient: str = "log"
    """h_n: "log" (grad l_n / l_n), "ema" (grad l_n / EMA(l_n)) or "plain" (grad l_n)."""
    domain_target_gradient: str | None = None
    """h_n of the domain step when it differs from the task step's: None (= target_gradient),
    "log", "ema" or "plain". The reference's grape_ema uses "ema" in its task step and "log" in
    its domain step."""
    loss_ema_decay: float = 0.9
    """Decay β in [0, 1) of the target-loss EMA used by target_gradient "ema"."""
    weights_ema: float = 0.0
    """Decay β in [0, 1) of an EMA of the weights the sampler receives; 0 turns it off."""
    initial_task_weights: Any = None
    """Starting z: None (uniform), a list in target order or {task: weight} (normalised)."""
    gradient_scaling: str = "cosine"
    """How gradients enter the products: "cosine" (normalised; the default, chosen by
    tools/study_gradient_scaling.py: the same mu_a/mu_z gives the closest step on two model
    sizes and two learning rates), "clip" (each g_k and target gradient clipped to clip_norm,
    as the reference) or "raw" (as measured, in units of ||g||^2). clip/cosine need the
    gradient norms (Observation.domain_sq_norms and target_gram)."""
    clip_norm: float | None = None
    """Norm c (> 0) of gradient_scaling "clip"; None means 1.0 (the reference's max_grad_norm
    on ClimbLab). Only valid with "clip"."""

    def __post_init__(self) -> None:
        opt.validate(self, "mu_a", opt.real, low=0.0, low_open=True, meaning="domain step size")
        opt.validate(self, "mu_z", opt.real, low=0.0, meaning="task step size, 0 = fixed z")
        opt.validate(self, "eps_a", opt.real, low=0.0, high=1.0, high_open=True)
        opt.validate(self, "eps_z", opt.real, low=0.0, high=1.0, high_open=True)
        opt.validate(self, "roi", opt.choice, choices=ROI_MODES)
        opt.validate(self, "target_gradient", opt.choice, choices=TARGET_GRADIENTS)
        if self.domain_target_gradient is not None:
            opt.validate(self, "domain_target_gradient", opt.choice, choices=TARGET_GRADIENTS)
        opt.validate(self, "loss_ema_decay", opt.real, low=0.0, high=1.0, high_open=True)
        opt.validate(self, "weights_ema", opt.real, low=0.0, high=1.0, high_open=True)
        validate_clip_norm(self, default=1.0)


@register_method("grape", GrapeOptions)
class Grape(MixtureMethod):
    """GRAPE (arXiv 2505.20380) with the exact z-weighted target direction."""

    domain_diagnostics = frozenset({"domain_scores", "gram_row_sums", "domain_grad_norms"})
    task_diagnostics = frozenset({"roi", "target_grad_norms"})

    required_needs = frozenset({"domain_target_gram"})
    state_fields = (
        "domain_weights",
        "task_weights",
        "alpha",
        "loss_ema",
        "previous_target_losses",
    )

    def __init__(self, options: GrapeOptions, context: MixtureContext) -> None:
        super().__init__(context)
        self.options = options
        self.alpha: Tensor = self.domain_weights.clone()
        """The mirror-descent iterate α (equals domain_weights unless weights_ema > 0)."""
        if options.initial_task_weights is None:
            self.task_weights = uniform(self.num_tasks)
        else:
            weights = opt.distribution(
                "initial_task_weights", options.initial_task_weights, self.task_names, what="task"
            )
            self.task_weights = self.domain_weights.new_tensor(weights)
        self.loss_ema: Tensor | None = None
        self.previous_target_losses: Tensor | None = None

    @property
    def needs(self) -> frozenset[str]:
        fields = self.required_needs | scaling_needs(self.options.gradient_scaling)
        kinds = (self.options.target_gradient, self.options.domain_target_gradient or "plain")
        if any(needs_target_losses(kind) for kind in kinds) or self.options.roi == "measured":
            fields |= {"target_losses"}
        return fields

    def update(self, obs: Observation) -> MixtureUpdate:
        k, n = self.num_domains, self.num_tasks
        gram = required(obs, "domain_target_gram", (k, n), self.name)
        reason = non_finite_reason(
            gram,
            "domain_target_gram",
            [("k", "domain", self.domain_names), ("n", "task", self.task_names)],
        )
        if reason is not None:
            return self.skip(reason)
        losses = None
        if "target_losses" in self.needs:
            losses = required(obs, "target_losses", (n,), self.name)
            reason = invalid_target_loss(losses, self.task_names)
            if reason is not None:
                return self.skip(reason)
        previous = self.previous_target_losses
        if self.options.roi == "measured" and obs.previous_target_losses is not None:
            previous = required(obs, "previous_target_losses", (n,), self.name)
            reason = invalid_target_loss(previous, self.task_names)
            if reason is not None:
                return self.skip("previous " + reason)

        scaling = self.options.gradient_scaling
        norms = None
        if scaling != "raw":
            norms, reason = read_norms(obs, self.name, self.domain_names, self.task_names)
            if reason is not None:
                return self.skip(reason)

        def products(kind: str) -> tuple[Tensor, Tensor | None, Diagnostics]:
            """H [K, N] for target gradient ``kind``, its loss EMA and scaling diagnostics."""
            scales, ema = target_scales(kind, losses, self.loss_ema, self.options.loss_ema_decay)
            clipped = None if norms is None else clipped_target_norms(kind, norms.target, losses)
            scaled, diagnostics = scale_products(
                scaling,
                gram,
                scale_columns(gram, scales),
                norms,
                clipped,
                self.options.clip_norm or 0.0,
            )
            return scaled, ema, diagnostics

        task_kind = self.options.target_gradient
        domain_kind = self.options.domain_target_gradient or task_kind
        scaled, loss_ema, scaling_diagnostics = products(task_kind)
        domain_scaled = scaled
        if domain_kind != task_kind:
            domain_scaled, domain_ema, _ = products(domain_kind)
            if domain_kind == "ema":
                loss_ema = domain_ema
        task_axes = [("n", "task", self.task_names)]
        domain_axes = [("k", "domain", self.domain_names)]
        for matrix in (scaled, domain_scaled):
            reason = non_finite_reason(matrix, f"{scaling} products H", domain_axes + task_axes)
            if reason is not None:
                return self.skip(reason)

        if self.options.roi == "first_order":
            roi = scaled.T @ self.domain_weights
        elif previous is not None:
            assert losses is not None
            roi = (previous - losses) / previous
        else:
            roi = None
        task_weights = self.task_weights
        if roi is not None:
            reason = non_finite_reason(self.options.mu_z * roi, "task step mu_z * roi", task_axes)
            if reason is not None:
                return self.skip(reason)
            task_weights = smooth(
                exponentiated_step(task_weights, -roi, self.options.mu_z), self.options.eps_z
            )
        scores = domain_scaled @ task_weights
        reason = non_finite_reason(
            self.options.mu_a * scores, "domain step mu_a * scores", domain_axes
        )
        if reason is not None:
            return self.skip(reason)
        alpha = smooth(
            exponentiated_step(self.alpha, scores, self.options.mu_a), self.options.eps_a
        )
        beta = self.options.weights_ema
        served = alpha if beta == 0.0 else beta * self.domain_weights + (1.0 - beta) * alpha
        reason = non_finite_reason(task_weights, "new task weights", task_axes)
        reason = reason or non_finite_reason(served, "new domain weights", domain_axes)
        if reason is not None:
            return self.skip(reason)

        self.alpha, self.task_weights, self.domain_weights = alpha, task_weights, served
        self.loss_ema = loss_ema
        if self.options.roi == "measured":
            self.previous_target_losses = losses
        return self.applied(
            {
                "roi": [] if roi is None else roi.tolist(),
                "task_step_applied": float(roi is not None),
                "domain_scores": scores.tolist(),
                "gram_row_sums": domain_scaled.sum(dim=1).tolist(),
                **scaling_diagnostics,
            }
        )
