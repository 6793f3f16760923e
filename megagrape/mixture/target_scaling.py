"""Target-gradient variants of the GRAPE reference, as column scalings of the raw Gram.

The trainer measures G[k, n] = <g_k, grad l_n> with RAW target-loss gradients. The reference
code uses one of three target directions h_n; each is grad l_n times a per-task scalar, so
<g_k, h_n> = G[k, n] * scale_n:

* ``log``   h_n = grad log l_n = grad l_n / l_n           (scale_n = 1 / l_n; GRAPE default)
* ``ema``   h_n = grad l_n / EMA_beta(l_n)                (scale_n = 1 / ema_n; "grape_ema")
* ``plain`` h_n = grad l_n                                (scale_n = 1; "grape_gap", DoGE)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from megagrape.mixture.base import DTYPE

TARGET_GRADIENTS = ("log", "ema", "plain")


def needs_target_losses(kind: str) -> bool:
    """Whether the variant divides by the target losses (so the trainer must measure them)."""
    return kind != "plain"


def invalid_target_loss(losses: Tensor, task_names: Sequence[str]) -> str | None:
    """Why ``losses`` [N] cannot scale gradients (non-finite or <= 0 entry), or None if usable."""
    for index, (name, value) in enumerate(zip(task_names, losses.tolist())):
        if not value > 0.0 or value == float("inf"):
            return (
                f"target loss of task {index} ({name!r}) is {value}; the log/ema target gradient "
                f"divides by it, so it must be finite and > 0"
            )
    return None


def target_scales(
    kind: str, losses: Tensor | None, loss_ema: Tensor | None, ema_decay: float
) -> tuple[Tensor | None, Tensor | None]:
    """Per-task column scales [N] and the new loss EMA (unchanged unless ``kind == "ema"``).

    ``plain`` returns ``(None, loss_ema)``: no scaling. For ``ema`` the EMA starts at the first
    observed losses and is updated with the current losses before it is used, so
    ema <- decay * ema + (1 - decay) * l. Pure: the caller stores the returned EMA only when the
    event is applied.
    """
    if kind == "plain":
        return None, loss_ema
    assert losses is not None
    if kind == "log":
        return 1.0 / losses, loss_ema
    new_ema = (
        losses.clone() if loss_ema is None else ema_decay * loss_ema + (1.0 - ema_decay) * losses
    )
    return 1.0 / new_ema.to(DTYPE), new_ema


def scale_columns(gram: Tensor, scales: Tensor | None) -> Tensor:
    """H[k, n] = G[k, n] * scale_n ([K, N]); the raw Gram when ``scales`` is None."""
    return gram if scales is None else gram * scales.unsqueeze(0)


def clipped_target_norms(kind: str, raw_norms: Tensor, losses: Tensor | None) -> Tensor:
    """Norms [N] of the target vectors ``gradient_scaling: clip`` clips, as the reference does.

    The reference clips the gradient of what it back-propagates: log l_n for ``log`` (norm
    ‖grad l_n‖ / l_n), l_n for ``plain`` and for ``ema`` (whose division by EMA(l_n) comes
    after the clipping).
    """
    if kind == "log":
        assert losses is not None
        return raw_norms / losses
    return raw_norms
