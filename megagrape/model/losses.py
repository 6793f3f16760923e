"""Per-token language-model losses and the masked mean the training loss is made of."""

from __future__ import annotations

import torch


def masked_mean(token_losses: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """sum(token_losses * loss_mask) / sum(loss_mask), float32 scalar; 0 when the mask is empty.

    token_losses, loss_mask: [B, S]. Megatron's loss rule; loss_mask values other than 0/1
    weight tokens (a self-normalised weighted mean).
    """
    mask = loss_mask.to(device=token_losses.device, dtype=torch.float32)
    total = mask.sum()
    weighted = (token_losses.float() * mask).sum()
    return torch.where(total > 0, weighted / total.clamp(min=torch.finfo(torch.float32).tiny), 0.0)


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def token_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-token cross-entropy [B, S] float32 of a PP == 1 model (GPTModel or its engine).

    batch: tokens, labels, position_ids int64 [B, S] (GPTDataset convention; labels are the
    tokens shifted by one) and optionally attention_mask (bool, True = masked). Under TP the
    loss is megatron's vocab-parallel cross-entropy, identical on every TP rank. Gradients
    flow (call it under the engine for training, under torch.no_grad() for evaluation).
    """
    from deepspeed.pipe import PipelineModule

    module = _unwrapped(model)
    if isinstance(module, PipelineModule):
        raise TypeError(
            "token_losses() is for pipeline_parallel == 1; with pipeline stages run "
            "engine.train_batch / eval_batch and read pipeline_loss_fn(engine).take_token_losses()"
        )
    device = next(module.parameters()).device
    losses = model(
        batch["tokens"].to(device),
        batch["position_ids"].to(device),
        None if batch.get("attention_mask") is None else batch["attention_mask"].to(device),
        labels=batch["labels"].to(device),
    )
    return losses.float()
