"""One optimizer step's losses, summed per domain on each rank and made global by one all-reduce.

The local statistics vector of a step is float64 [3K + 1]: per-domain sums of per-sample
losses [K], per-domain sample counts [K], per-domain sums of DoReMi excess losses [K], and
the total loss. Every rank holds the same :class:`StepRecord` after :func:`reduce_step_stats`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from megagrape.data.microbatches import MicroBatch


@dataclass
class StepRecord:
    """What one optimizer step produced (global values, identical on every rank)."""

    loss: float  # mean per-sample loss over the global batch (nats per token)
    domain_loss_sums: np.ndarray  # float64 [K]
    domain_counts: np.ndarray  # float64 [K] samples per domain in the global batch
    domain_excess_sums: np.ndarray  # float64 [K] DoReMi: sums of per-sample excess loss
    tokens: int  # tokens in the global batch
    seconds: float  # wall time of the step, events included
    grad_norm: float


def local_step_stats(
    num_domains: int,
    micro_batches: list[MicroBatch],
    per_sample: list[torch.Tensor],
    excess: list[torch.Tensor] | None,
) -> torch.Tensor:
    """float64 [3K + 1] of this rank: ``per_sample`` / ``excess`` hold [b] per micro-batch.

    One device-to-host copy per step, after the last backward, so a GPU is never made to wait
    between micro-batches. Padding samples (loss weight 0) are left out. An empty
    ``per_sample`` (a pipeline stage without the loss) gives zeros.
    """
    k = num_domains
    stats = torch.zeros(3 * k + 1, dtype=torch.float64)
    if not per_sample:
        return stats
    real = torch.from_numpy(np.concatenate([m.loss_weights > 0 for m in micro_batches]))
    ids = torch.from_numpy(np.concatenate([m.domain_ids for m in micro_batches]).astype(np.int64))
    ids = ids[real]
    values = torch.cat([v.detach().double() for v in per_sample]).cpu()[real]
    stats[:k].index_add_(0, ids, values)
    stats[k : 2 * k].index_add_(0, ids, torch.ones(len(ids), dtype=torch.float64))
    if excess:
        excess_values = torch.cat([e.double() for e in excess]).cpu()[real]
        stats[2 * k : 3 * k].index_add_(0, ids, excess_values)
    stats[-1] += values.sum()
    return stats


def reduce_step_stats(
    stats: torch.Tensor, env, tokens: int, grad_norm: float, seconds: float = 0.0
) -> StepRecord:
    """All-reduce the local statistics into the global :class:`StepRecord` (collective).

    Only one copy per data-parallel replica (last pipeline stage, tensor-parallel rank 0)
    contributes, since the other ranks of a replica saw the same samples.
    """
    k = (stats.numel() - 1) // 3
    if not (env.is_last_stage and env.tp_rank == 0):
        stats = torch.zeros_like(stats)
    stats = stats.to(env.device)
    if env.world_size > 1:
        torch.distributed.all_reduce(stats)
    values = stats.cpu().numpy()
    counts = values[k : 2 * k]
    return StepRecord(
        loss=float(values[-1] / max(counts.sum(), 1)),
        domain_loss_sums=values[:k],
        domain_counts=counts,
        domain_excess_sums=values[2 * k : 3 * k],
        tokens=tokens,
        seconds=seconds,
        grad_norm=grad_norm,
    )
