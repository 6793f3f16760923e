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

    ``alpha`` and ``sampling`` are [K] distributions. A NaN, infinite or negative entry in either
    is a ConfigError naming the domain (it would silently turn the training loss into NaN or
    flip a domain's gradient). A domain with α_k > 0 that is never sampled (s_k == 0) cannot be
    weighted up: ConfigError naming it.
    """
    alpha, sampling = as_float64(alpha), as_float64(sampling)
    if alpha.shape != sampling.shape or alpha.dim() != 1:
        raise ValueError(
            f"alpha {tuple(alpha.shape)} and sampling {tuple(sampling.shape)} must both be [K]"
        )
    for what, weights in (("domain weights (alpha)", alpha), ("sampling weights", sampling)):
        bad = ~torch.isfinite(weights) | (weights < 0)
        if bool(bad.any()):
            index = int(bad.nonzero()[0])
            name = domain_names[index] if domain_names is not None else str(index)
            raise ConfigError(
                f"apply: loss needs finite {what} >= 0, but domain {name!r} has "
                f"{float(weights[index])} (all: {weights.tolist()}); a loss multiplier "
                f"alpha_k / s_k must be a finite number >= 0"
            )
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
