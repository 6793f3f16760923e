"""ODM: online data mixing as an EXP3 multi-armed bandit over domains (rewards = training loss).

One event at optimizer step t > warmup_steps (reference: alon-albalak/online-data-mixing,
``Exp3WeightUpdater``), with π the sampling distribution in effect since the last event (the
bandit's own weights under ``apply: sample``; the fixed sampling s under ``apply: loss``, given
as ``Observation.sampling_weights``, since the importance weight 1/π must be the probability
the domain was actually drawn with or the reward estimate is biased):

    R_k   = loss_k / reward_scale                         (domain k's mean training loss)
    R̂_k  += (n_k / sum_j n_j) * R_k / π_k                 (importance-weighted, present domains)
    ε_t   = min(1/K, sqrt(ln K / (K t)))
    w_k   = softmax(ε_prev * R̂)_k * (1 - K ε_t) + ε_t;    π = w / sum w

ε_prev is the ε of the previous event (1/K before the first). The softmax is taken in log space,
so the growing cumulative reward never overflows exp. During warm-up (t <= warmup_steps) the
weights stay at their initial values and no reward is accumulated, as in the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from megagrape.mixture import options as opt
from megagrape.mixture.base import (
    MixtureContext,
    MixtureMethod,
    MixtureUpdate,
    Observation,
    required,
)
from megagrape.mixture.registry import register_method


@dataclass(frozen=True)
class OdmOptions:
    """Options of ``mixture.method: odm``."""

    reward_scale: float = 10.0
    """Divisor (> 0) turning a loss in nats into a reward (the reference uses 10)."""
    warmup_steps: int = 0
    """Optimizer steps (>= 0) with the initial weights before the bandit starts
    (the reference's 1B run uses 2000 of 100k)."""

    def __post_init__(self) -> None:
        opt.validate(self, "reward_scale", opt.real, low=0.0, low_open=True)
        opt.validate(self, "warmup_steps", opt.integer, low=0)


def exploration_rate(num_domains: int, step: int) -> float:
    """ε_t = min(1/K, sqrt(ln K / (K t))) for optimizer step t >= 1."""
    return min(1.0 / num_domains, math.sqrt(math.log(num_domains) / (num_domains * max(step, 1))))


@register_method("odm", OdmOptions)
class Odm(MixtureMethod):
    """ODM EXP3 (Albalak et al. 2023) on per-domain training losses."""

    domain_diagnostics = frozenset({"rewards", "cumulative_reward"})

    required_needs = frozenset({"domain_losses", "domain_sample_counts"})
    state_fields = ("domain_weights", "cumulative_reward", "epsilon")

    def __init__(self, options: OdmOptions, context: MixtureContext) -> None:
        super().__init__(context)
        self.options = options
        self.cumulative_reward: Tensor = torch.zeros_like(self.domain_weights)
        """R̂ [K]: importance-weighted cumulative reward per domain."""
        self.epsilon: float = 1.0 / self.num_domains
        """ε of the last applied event (the reference starts it at 1/K)."""

    def update(self, obs: Observation) -> MixtureUpdate:
        k = self.num_domains
        if obs.step <= self.options.warmup_steps:
            return self.applied({"warmup": 1.0})
        losses = required(obs, "domain_losses", (k,), self.name)
        counts = required(obs, "domain_sample_counts", (k,), self.name)
        for index in range(k):
            loss, count = float(losses[index]), float(counts[index])
            if math.isinf(loss) or not (count >= 0.0 and math.isfinite(count)):
                return self.skip(
                    f"domain {index} ({self.domain_names[index]!r}) has loss {loss} and sample "
                    f"count {count}; losses must be finite (NaN = absent), counts finite and >= 0"
                )
        sampled = self.domain_weights
        if obs.sampling_weights is not None:
            sampled = required(obs, "sampling_weights", (k,), self.name)
            if not bool((torch.isfinite(sampled) & (sampled >= 0.0)).all()):
                raise ValueError(
                    f"Observation.sampling_weights must be finite and >= 0, got {sampled.tolist()}"
                )
        present = ~torch.isnan(losses) & (counts > 0)
        if not bool(present.any()):
            return self.skip("no domain had samples and a finite loss since the last event")
        unexpected = present & (sampled <= 0.0)
        if bool(unexpected.any()):
            index = int(unexpected.nonzero()[0])
            return self.skip(
                f"domain {index} ({self.domain_names[index]!r}) had samples although its sampling "
                f"weight is 0; its importance weight 1/π is undefined"
            )
        zeros = torch.zeros_like(losses)
        share = torch.where(present, counts, zeros)
        share = share / share.sum()
        rewards = torch.where(present, losses, zeros) / self.options.reward_scale
        safe = torch.where(present, sampled, torch.ones_like(sampled))
        gains = torch.where(present, share * rewards / safe, zeros)
        cumulative = self.cumulative_reward + gains
        previous_epsilon = self.epsilon
        epsilon = exploration_rate(k, obs.step)
        exploit = torch.softmax(previous_epsilon * cumulative, dim=0)
        weights = exploit * (1.0 - k * epsilon) + epsilon
        self.domain_weights = weights / weights.sum()
        self.cumulative_reward = cumulative
        self.epsilon = epsilon
        return self.applied(
            {
                "rewards": rewards.tolist(),
                "cumulative_reward": cumulative.tolist(),
                "epsilon": epsilon,
                "warmup": 0.0,
            }
        )
