"""How gradients enter GRAPE's and DoGE's products: raw, clipped to a norm, or normalised (cosine).

Raw products <g_k, h_n> scale with the gradient norms, so a step size μ acts in units of ‖g‖²
and means something else at another model size, learning rate or training phase. The GRAPE
reference clips every gradient to ``max_grad_norm`` before its products (DoGE's reference to
5.0). The option ``gradient_scaling`` of both methods chooses, per event:

* ``raw``     H[k, n] = <g_k, h_n>                             (the products as measured)
* ``clip``    H[k, n] = <clip_c(g_k), clip_c(v_n)> * m_n        clip_c(x) = x * min(1, c / ‖x‖)
              v_n is the gradient the reference back-propagates and clips: grad log l_n for
              target_gradient "log", grad l_n for "plain" and "ema"; h_n = m_n v_n (m_n = 1,
              except 1 / EMA(l_n) for "ema", applied after clipping as the reference does)
* ``cosine``  H[k, n] = <g_k, grad l_n> / (‖g_k‖ ‖grad l_n‖)   (in [-1, 1]; the positive
              target scalings cancel; 0 where a gradient is exactly 0)

All three are computed from the measured Gram matrices: scaling a vector by a scalar scales its
products, so only the norms are needed. They come from two Observation fields:

* ``domain_sq_norms`` [K]: ‖g_k‖², g_k as in the domain Gram (diag of ``domain_gram``);
* ``target_gram`` [N, N]: <grad l_n, grad l_m> of the RAW target-loss gradients (its diagonal
  gives ‖grad l_n‖²; norms of grad log l_n follow by dividing by l_n).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from megagrape.mixture import options as opt
from megagrape.mixture.base import Observation, non_finite_reason, required

GRADIENT_SCALINGS = ("raw", "clip", "cosine")
SCALING_NEEDS = frozenset({"domain_sq_norms", "target_gram"})


def validate_clip_norm(options: Any, default: float) -> None:
    """Check ``gradient_scaling`` and ``clip_norm`` of GRAPE/DoGE options; fill the default."""
    opt.validate(options, "gradient_scaling", opt.choice, choices=GRADIENT_SCALINGS)
    if options.gradient_scaling != "clip":
        if options.clip_norm is not None:
            raise opt.option_error(
                "clip_norm",
                options.clip_norm,
                f"only with gradient_scaling: clip (it is {options.gradient_scaling!r}); "
                f"remove clip_norm or set gradient_scaling: clip",
            )
        return
    if options.clip_norm is None:
        opt.set_option(options, "clip_norm", default)
    opt.validate(options, "clip_norm", opt.real, low=0.0, low_open=True, meaning="gradient norm")


def scaling_needs(kind: str) -> frozenset[str]:
    """The Observation fields ``gradient_scaling = kind`` reads (none for ``raw``)."""
    return frozenset() if kind == "raw" else SCALING_NEEDS


@dataclass(frozen=True)
class GradientNorms:
    """Norms of the measured gradients at one event."""

    domain: Tensor
    """[K] ‖g_k‖."""
    target: Tensor
    """[N] ‖grad l_n‖ of the raw target-loss gradients."""


def read_norms(
    obs: Observation,
    method: str,
    domain_names: Sequence[str],
    task_names: Sequence[str],
) -> tuple[GradientNorms | None, str | None]:
    """(norms, None), or (None, skip reason) when a squared norm is non-finite or negative."""
    k, n = len(domain_names), len(task_names)
    domain_sq = required(obs, "domain_sq_norms", (k,), method)
    target_gram = required(obs, "target_gram", (n, n), method)
    domains = ("k", "domain", domain_names)
    reason = non_finite_reason(domain_sq, "domain_sq_norms", [domains])
    reason = reason or non_finite_reason(
        target_gram, "target_gram", [("n", "task", task_names), ("m", "task", task_names)]
    )
    if reason is not None:
        return None, reason
    target_sq = target_gram.diagonal()
    for what, values, names in (
        ("domain_sq_norms", domain_sq, domain_names),
        ("target_gram diagonal", target_sq, task_names),
    ):
        negative = values < 0.0
        if bool(negative.any()):
            index = int(negative.nonzero()[0])
            return None, (
                f"{what} entry {index} ({names[index]!r}) is {float(values[index])}; a squared "
                f"gradient norm must be >= 0"
            )
    return GradientNorms(domain_sq.sqrt(), target_sq.sqrt()), None


def clip_factors(norms: Tensor, clip_norm: float) -> Tensor:
    """min(1, c / ‖x‖) per vector (1 for a zero vector, which clipping leaves unchanged)."""
    safe = torch.where(norms > 0.0, norms, torch.ones_like(norms))
    return torch.where(norms > clip_norm, clip_norm / safe, torch.ones_like(norms))


def inverse_norms(norms: Tensor) -> Tensor:
    """1 / ‖x‖ per vector, 0 for a zero vector (its products are 0: no direction, no signal)."""
    safe = torch.where(norms > 0.0, norms, torch.ones_like(norms))
    return torch.where(norms > 0.0, 1.0 / safe, torch.zeros_like(norms))


def scale_products(
    kind: str,
    raw_gram: Tensor,
    scaled_gram: Tensor,
    norms: GradientNorms | None,
    clipped_target_norms: Tensor | None,
    clip_norm: float,
) -> tuple[Tensor, dict[str, float | list[float]]]:
    """H [K, N] under ``kind`` and its diagnostics.

    ``raw_gram`` is G[k, n] = <g_k, grad l_n>; ``scaled_gram`` the same with the
    target-gradient column scaling applied (<g_k, h_n>). ``clipped_target_norms`` [N] are the
    norms of the vectors v_n that ``clip`` clips (see the module docstring).
    """
    if kind == "raw":
        return scaled_gram, {}
    assert norms is not None
    diagnostics: dict[str, float | list[float]] = {
        "domain_grad_norms": norms.domain.tolist(),
        "target_grad_norms": norms.target.tolist(),
    }
    if kind == "cosine":
        rows, columns = inverse_norms(norms.domain), inverse_norms(norms.target)
        return raw_gram * rows.unsqueeze(1) * columns.unsqueeze(0), diagnostics
    assert kind == "clip" and clipped_target_norms is not None
    rows, columns = (
        clip_factors(norms.domain, clip_norm),
        clip_factors(clipped_target_norms, clip_norm),
    )
    diagnostics["clipped_domains"] = float((rows < 1.0).sum())
    diagnostics["clipped_tasks"] = float((columns < 1.0).sum())
    return scaled_gram * rows.unsqueeze(1) * columns.unsqueeze(0), diagnostics
