"""Time average of the domain weights: a proxy run's output in the two-stage workflow.

The proxy run adds the weights in effect and how many optimizer steps they were in effect for;
the base run reads ``as_dict(...)`` (written by the trainer as mixture_average.json) as a static
mixture (``mixture.method: static``, ``source: file``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from megagrape.mixture.base import DTYPE, as_float64


class TimeAverage:
    """Step-weighted running mean of α [K]: sum_e duration_e α_e / sum_e duration_e."""

    def __init__(self, num_domains: int) -> None:
        self.weighted_sum = torch.zeros(num_domains, dtype=DTYPE)
        self.total_duration = 0.0
        self.count = 0

    def add(self, weights: Tensor, duration: float = 1.0) -> None:
        """Account ``weights`` [K] as in effect for ``duration`` (> 0) optimizer steps."""
        if not duration > 0:
            raise ValueError(f"duration must be > 0 steps, got {duration}")
        weights = as_float64(weights)
        if weights.shape != self.weighted_sum.shape:
            raise ValueError(
                f"weights have shape {tuple(weights.shape)}, expected {tuple(self.weighted_sum.shape)}"
            )
        self.weighted_sum += duration * weights
        self.total_duration += float(duration)
        self.count += 1

    def mean(self) -> Tensor:
        """The time-averaged weights [K] (a distribution when every added vector was one)."""
        if self.count == 0:
            raise ValueError("no weights were added to the time average yet")
        return self.weighted_sum / self.total_duration

    def as_dict(self, domain_names: Sequence[str]) -> dict[str, Any]:
        """The mixture_average.json document: {"domain_weights": {name: w}, "steps": .., "updates": ..}."""
        mean = self.mean().tolist()
        return {
            "domain_weights": dict(zip(domain_names, mean)),
            "steps": self.total_duration,
            "updates": self.count,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "weighted_sum": self.weighted_sum.tolist(),
            "total_duration": self.total_duration,
            "count": self.count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        weighted_sum = torch.tensor(state["weighted_sum"], dtype=DTYPE)
        if weighted_sum.shape != self.weighted_sum.shape:
            raise ValueError(
                f"time-average state has {weighted_sum.numel()} domains, this run has {self.weighted_sum.numel()}"
            )
        self.weighted_sum = weighted_sum
        self.total_duration = float(state["total_duration"])
        self.count = int(state["count"])
