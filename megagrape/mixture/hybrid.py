"""Loss weights for ``apply: loss``: sample domains by a fixed s, weight domain k's loss by α_k / s_k.

This is the "hybrid" of the multi-objective data-mixing paper (§3) and DoReMi's proxy-model loss:
with x drawn from s, E[α_d(x) / s_d(x) * l(x)] = sum_k α_k l_k, the α-mixture loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from megagrape.errors import ConfigError
from megagrape.mixture.base import as_float64


def hybrid_loss_weights(
    alpha: Tensor, sampling: Tensor, domain_names: Sequence[str] | None = None
) -> Tensor:
    """Per-domain loss multipliers α_k / s_k [K] (0 where both are 0).

    ``alpha`` and ``sampling`` are [K] distributions. A domain with α_k > 0 that is never sampled
    (s_k == 0) cannot be weighted up: ConfigError naming it.
    """
    alpha, sampling = as_float64(alpha), as_float64(sampling)
    if alpha.shape != sampling.shape or alpha.dim() != 1:
        raise ValueError(
            f"alpha {tuple(alpha.shape)} and sampling {tuple(sampling.shape)} must both be [K]"
        )
    if bool((sampling < 0).any()) or not bool(torch.isfinite(sampling).all()):
        raise ConfigError(f"sampling weights must be finite and >= 0, got {sampling.tolist()}")
    starved = (alpha > 0) & (sampling == 0)
    if bool(starved.any()):
        index = int(starved.nonzero()[0])
        name = domain_names[index] if domain_names is not None else str(index)
        raise ConfigError(
            f"apply: loss gives domain {name!r} weight {float(alpha[index]):.6g} but its sampling "
            f"probability is 0, so its loss can never be weighted; give it a positive sampling weight"
        )
    safe = torch.where(sampling > 0, sampling, torch.ones_like(sampling))
    return torch.where(sampling > 0, alpha / safe, torch.zeros_like(alpha))
