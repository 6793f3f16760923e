"""Split a rank's share of the global batch into micro-batches.

Two schedules:

* ``fixed`` — the rank's contiguous slice of the global batch cut into equal micro-batches
  of ``micro_batch_size`` (Megatron's layout; gradient accumulation = G / (mbs * DP)).
* ``by_domain`` — domain-pure micro-batch *rounds* aligned across data-parallel ranks: for
  each domain (in id order) every rank takes its own samples of that domain in chunks of
  at most ``micro_batch_size``; the number of rounds for a domain is the largest chunk count
  over ranks, and a rank with no samples left in a round runs a one-sample padding
  micro-batch with loss weight 0. Every rank therefore runs the same number of
  forward/backward passes (needed by ZeRO-2/3, which reduce on every backward), and in
  round m all ranks work on the same domain, so gradients read after each round — local or
  already reduced — belong to one domain.

Both schedules cover exactly the rank's slice of the global batch (the same samples), so
the accumulated gradient is the same up to summation order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megagrape.data.sampler import GlobalBatch, MixtureSampler


@dataclass(frozen=True)
class MicroBatch:
    """One forward/backward pass on one rank."""

    domain_ids: np.ndarray  # int64 [b] domain of each sample
    sample_ids: np.ndarray  # int64 [b] index into that domain's dataset
    loss_weights: np.ndarray  # float64 [b] 1 for real samples, 0 for padding
    round_domain: int  # the domain of this round on every rank, or -1 (fixed schedule: mixed)


def plan_fixed(
    batch: GlobalBatch, dp_rank: int, dp_size: int, micro_batch_size: int
) -> list[MicroBatch]:
    local = MixtureSampler.dp_slice(batch, dp_rank, dp_size)
    size = len(local.domain_ids)
    if size % micro_batch_size:
        raise ValueError(
            f"the rank's slice of the global batch has {size} samples, not a multiple of "
            f"micro_batch_size={micro_batch_size}"
        )
    return [
        MicroBatch(
            domain_ids=local.domain_ids[i : i + micro_batch_size].astype(np.int64),
            sample_ids=local.sample_ids[i : i + micro_batch_size].astype(np.int64),
            loss_weights=np.ones(micro_batch_size),
            round_domain=-1,
        )
        for i in range(0, size, micro_batch_size)
    ]


def plan_by_domain(
    batch: GlobalBatch, dp_rank: int, dp_size: int, micro_batch_size: int
) -> list[MicroBatch]:
    slices = [MixtureSampler.dp_slice(batch, r, dp_size) for r in range(dp_size)]
    mine = slices[dp_rank]
    mine_domains = mine.domain_ids.astype(np.int64)
    pad_domain, pad_sample = int(mine_domains[0]), int(mine.sample_ids[0])
    plan: list[MicroBatch] = []
    for domain in np.unique(batch.domain_ids.astype(np.int64)):
        counts = [int(np.count_nonzero(s.domain_ids == domain)) for s in slices]
        rounds = max(-(-c // micro_batch_size) for c in counts)
        positions = np.flatnonzero(mine_domains == domain)
        for r in range(rounds):
            chunk = positions[r * micro_batch_size : (r + 1) * micro_batch_size]
            if len(chunk):
                plan.append(
                    MicroBatch(
                        domain_ids=mine_domains[chunk],
                        sample_ids=mine.sample_ids[chunk].astype(np.int64),
                        loss_weights=np.ones(len(chunk)),
                        round_domain=int(domain),
                    )
                )
            else:
                plan.append(
                    MicroBatch(
                        domain_ids=np.array([pad_domain], dtype=np.int64),
                        sample_ids=np.array([pad_sample], dtype=np.int64),
                        loss_weights=np.zeros(1),
                        round_domain=int(domain),
                    )
                )
    return plan


def plan_microbatches(
    batch: GlobalBatch, dp_rank: int, dp_size: int, micro_batch_size: int, schedule: str
) -> list[MicroBatch]:
    if schedule == "fixed":
        return plan_fixed(batch, dp_rank, dp_size, micro_batch_size)
    if schedule == "by_domain":
        return plan_by_domain(batch, dp_rank, dp_size, micro_batch_size)
    raise ValueError(f"unknown micro-batch schedule {schedule!r}; use 'fixed' or 'by_domain'")


def collate(datasets, micro_batch: MicroBatch, device) -> dict:
    """Stack the micro-batch's samples (megatron GPTDataset dicts) into tensors on ``device``.

    Returns tokens/labels/position_ids [b, S] int64, loss_mask [b, S] float32,
    domain_ids [b] int64 and loss_weights [b] float64.
    """
    import torch

    samples = [
        datasets[int(d)][int(s)] for d, s in zip(micro_batch.domain_ids, micro_batch.sample_ids)
    ]
    out = {
        key: torch.stack([torch.as_tensor(sample[key]) for sample in samples]).to(device)
        for key in ("tokens", "labels", "loss_mask", "position_ids")
    }
    out["tokens"] = out["tokens"].long()
    out["labels"] = out["labels"].long()
    out["position_ids"] = out["position_ids"].long()
    out["loss_mask"] = out["loss_mask"].float()
    out["domain_ids"] = torch.as_tensor(micro_batch.domain_ids, dtype=torch.long, device=device)
    out["loss_weights"] = torch.as_tensor(
        micro_batch.loss_weights, dtype=torch.float64, device=device
    )
    return out
