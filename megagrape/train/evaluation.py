"""Target-task evaluation: acc / acc_norm by per-choice log-likelihood, loss for LM targets.

Requests are split round-robin over data-parallel ranks; each rank scores its share and
one all-reduce of a zero-filled vector gives every rank every request's log-likelihood.
With pipeline stages the per-choice sequences go through DeepSpeed's ``eval_batch`` padded
to the training micro-batch shape, and the last stage's token losses are broadcast to the
other stages.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megagrape.data.target_encoding import collate_eval
from megagrape.data.targets import TargetTask
from megagrape.model import pipeline_batch, pipeline_loss_fn, token_losses


def _pad_rows(batch: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
    """Append rows with loss_mask 0 (copies of row 0) so every pipeline micro-batch has ``rows`` rows."""
    missing = rows - batch["tokens"].shape[0]
    if missing <= 0:
        return batch
    out = {
        key: torch.cat([value, value[:1].expand(missing, *value.shape[1:])])
        for key, value in batch.items()
    }
    out["loss_mask"][-missing:] = 0
    return out


@torch.no_grad()
def _pipeline_token_losses(engine, batches: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    from megatron.core import parallel_state

    loss_fn = pipeline_loss_fn(engine)
    loss_fn.record_token_losses = True
    engine.eval_batch(iter([pipeline_batch(b) for b in batches]), num_micro_batches=len(batches))
    loss_fn.record_token_losses = False
    recorded = loss_fn.take_token_losses()
    if not recorded:  # not the last stage: receive its losses
        recorded = [
            torch.empty(b["tokens"].shape, dtype=torch.float32, device=b["tokens"].device)
            for b in batches
        ]
    last = parallel_state.get_pipeline_model_parallel_last_rank()
    group = parallel_state.get_pipeline_model_parallel_group()
    for tensor in recorded:
        dist.broadcast(tensor, src=last, group=group)
    return recorded


@torch.no_grad()
def request_logprobs(
    model, requests: list, pad_id: int, batch_size: int, env, dp_group, pipeline_shape=None
) -> torch.Tensor:
    """Sum of continuation log-probabilities per request, float64 [len(requests)], on every rank.

    ``pipeline_shape`` = (micro_batch_size, seq_length) when the model is a pipeline engine.
    """
    totals = torch.zeros(len(requests), dtype=torch.float64, device=env.device)
    mine = list(range(env.dp_rank, len(requests), env.dp_size))
    if pipeline_shape is not None:
        batch_size = pipeline_shape[0]
    chunks = [mine[start : start + batch_size] for start in range(0, len(mine), batch_size)]
    if pipeline_shape is not None:
        rows, width = pipeline_shape
        chunks = chunks or [[]]
        batches = [
            _pad_rows(
                collate_eval([requests[i] for i in (index or [0])], pad_id, pad_to=width), rows
            )
            for index in chunks
        ]
        batches = [{k: v.to(env.device) for k, v in b.items()} for b in batches]
        losses = _pipeline_token_losses(model, batches)
    else:
        batches = [
            {
                k: v.to(env.device)
                for k, v in collate_eval([requests[i] for i in index], pad_id).items()
            }
            for index in chunks
        ]
        losses = [token_losses(model, batch) for batch in batches]
    for index, batch, loss in zip(chunks, batches, losses):
        if not index:
            continue
        rows = len(index)
        per_request = -(loss[:rows].double() * batch["loss_mask"][:rows].double()).sum(dim=1)
        totals[index] = per_request
    if env.dp_size > 1:
        dist.all_reduce(totals, group=dp_group)
    return totals


def _gold_loss(task: TargetTask, requests: list, logprobs: torch.Tensor) -> dict[str, float]:
    """Mean over items of the gold continuation's per-token NLL (the 'loss' of task.score)."""
    per_item = [-lp / max(1, r.num_target_tokens) for r, lp in zip(requests, logprobs.tolist())]
    return {"loss": float(sum(per_item) / max(1, len(per_item)))}


def evaluate_tasks(
    model,
    tasks: list[TargetTask],
    seq_length: int,
    max_items: int,
    pad_id: int,
    batch_size: int,
    env,
    dp_group,
    pipeline_shape=None,
    mode: str = "full",
) -> dict[str, dict[str, float]]:
    """Scores of every task: {task: {"acc": ..., "acc_norm": ..., "loss": ...}} or {"loss", "ppl", "bpb"}.

    ``mode="loss"`` scores only the gold continuation of multiple-choice items (a quarter of
    the forward passes for 4 choices) and reports its loss, for frequent loss curves.
    """
    was_training = model.training
    model.eval()
    results = {}
    for task in tasks:
        requests = [r for r in task.eval_requests(seq_length) if r.item_index < max_items]
        gold_only = mode == "loss" and task.kind == "mc"
        if gold_only:
            requests = [r for r in requests if r.choice_index == task.eval_items[r.item_index].gold]
        logprobs = request_logprobs(
            model, requests, pad_id, batch_size, env, dp_group, pipeline_shape
        )
        if gold_only:
            results[task.name] = _gold_loss(task, requests, logprobs)
        else:
            results[task.name] = task.score(logprobs.tolist(), requests)
    if was_training:
        model.train()
    return results
