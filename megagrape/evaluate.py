"""Target-task evaluation: acc / acc_norm by per-choice log-likelihood, loss for LM targets.

Requests are split round-robin over data-parallel ranks; each rank scores its share and
one all-reduce of a zero-filled vector gives every rank every request's log-likelihood.
"""

from __future__ import annotations

import torch

from megagrape.data.targets import TargetTask, collate_eval
from megagrape.model import token_losses


@torch.no_grad()
def request_logprobs(
    model,
    requests: list,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    dp_rank: int,
    dp_size: int,
    dp_group,
) -> torch.Tensor:
    """Sum of continuation log-probabilities per request, float64 [len(requests)], on every rank."""
    totals = torch.zeros(len(requests), dtype=torch.float64, device=device)
    mine = list(range(dp_rank, len(requests), dp_size))
    for start in range(0, len(mine), batch_size):
        index = mine[start : start + batch_size]
        batch = {
            k: v.to(device) for k, v in collate_eval([requests[i] for i in index], pad_id).items()
        }
        losses = token_losses(model, batch).double()
        totals[index] = -(losses * batch["loss_mask"].double()).sum(dim=1)
    if dp_size > 1:
        torch.distributed.all_reduce(totals, group=dp_group)
    return totals


def evaluate_tasks(
    model,
    tasks: list[TargetTask],
    seq_length: int,
    max_items: int,
    pad_id: int,
    batch_size: int,
    env,
    dp_group,
) -> dict[str, dict[str, float]]:
    """Scores of every task: {task: {"acc": ..., "acc_norm": ...}} or {"loss": ..., "ppl": ...}."""
    was_training = model.training
    model.eval()
    results = {}
    for task in tasks:
        requests = [r for r in task.eval_requests(seq_length) if r.item_index < max_items]
        logprobs = request_logprobs(
            model, requests, pad_id, batch_size, env.device, env.dp_rank, env.dp_size, dp_group
        )
        results[task.name] = task.score(logprobs.tolist(), requests)
    if was_training:
        model.train()
    return results
