"""Train modules: the model, its optimizer and the DeepSpeed engine, one class per step path.

    module = build_train_module(cfg, env, ds_config)
    per_sample = module.train_batch(micro_batches, datasets, domain_loss_weights, hooks)
    module.optim_step()

* :class:`EngineTrainModule` (PP == 1): megatron-core GPTModel inside ``deepspeed.initialize``;
  megagrape runs every micro-batch's forward/backward itself (variable, domain-pure micro-batch
  rounds are possible) and calls ``engine.step()`` in ``optim_step``.
* :class:`PipelineTrainModule` (PP > 1): a DeepSpeed ``PipelineModule``; one
  ``engine.train_batch`` runs DeepSpeed's pipeline schedule, the backward passes and the
  optimizer step, so ``optim_step`` has nothing left to do.

Both return, per micro-batch, the per-sample mean token losses [b] (device tensors; empty on
pipeline stages that never see the loss). The model and optimizer state live in DeepSpeed's
checkpoint files: ``save_state`` / ``load_state`` write and read them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Protocol

import torch

from megagrape import parallel
from megagrape.config import RunConfig
from megagrape.data.loader import MicroBatchLoader, load_batches
from megagrape.data.microbatches import MicroBatch
from megagrape.ds_config import zero_stage
from megagrape.model import build_model, pipeline_batch, pipeline_loss_fn, token_losses
from megagrape.train import checkpoint as ckpt
from megagrape.train.schedule import WarmupDecayLR


class BackwardHooks(Protocol):
    """What the engine path calls after each micro-batch's backward (the mixture controller)."""

    def after_backward(
        self, micro: MicroBatch, batch: dict[str, torch.Tensor], per_token: torch.Tensor
    ) -> None: ...


def per_sample_losses(per_token: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """[b] float32 mean token loss of each sample over its loss mask (per_token, mask: [b, S])."""
    return (per_token.float() * loss_mask).sum(dim=1) / loss_mask.sum(dim=1).clamp(min=1)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; biases and norm weights (1-D) are not decayed."""
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class TrainModule(ABC):
    """Owns the model, the AdamW optimizer, the lr schedule and ``deepspeed.initialize``."""

    def __init__(self, cfg: RunConfig, env, ds_config: dict) -> None:
        import deepspeed

        from megagrape.utils.safe_checkpoint_engine import install_safe_checkpoint_engine

        self.cfg = cfg
        self.env = env
        self.zero_stage = zero_stage(ds_config)
        self.model = build_model(cfg.model, env)
        train = cfg.train
        optimizer = torch.optim.AdamW(
            param_groups(self.model, train.weight_decay),
            lr=train.lr,
            betas=(train.adam_beta1, train.adam_beta2),
            eps=train.adam_eps,
            **({"fused": True} if env.device.type == "cuda" else {"foreach": True}),
        )
        self.loader: MicroBatchLoader | None = None  # the trainer's; None = collate in-thread
        self.engine, _optimizer, _loader, _scheduler = deepspeed.initialize(
            model=self.model,
            optimizer=optimizer,
            lr_scheduler=lambda opt: WarmupDecayLR(opt, train),
            config=ds_config,
            mpu=parallel.deepspeed_mpu(env),
        )
        install_safe_checkpoint_engine(self.engine)  # checkpoints load with weights_only=True

    @abstractmethod
    def train_batch(
        self,
        micro_batches: list[MicroBatch],
        datasets: list,
        domain_loss_weights: torch.Tensor | None,
        hooks: BackwardHooks,
    ) -> list[torch.Tensor]:
        """Forward/backward every micro-batch of this rank; per micro-batch [b] per-sample losses.

        ``domain_loss_weights`` [K] multiplies each sample's loss by its domain's weight
        (``mixture.apply: loss``), None for plain sampling.
        """

    @abstractmethod
    def optim_step(self) -> None:
        """Apply the accumulated gradients (clipping and the lr schedule included)."""

    @property
    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    @property
    def grad_norm(self) -> float:
        """Global gradient norm of the last optimizer step (0 before the first)."""
        return float(self.engine.get_global_grad_norm() or 0.0)

    @property
    def pipeline_shape(self) -> tuple[int, int] | None:
        """(micro_batch_size, seq_length) every pipeline micro-batch must have, None without PP."""
        return None

    def parameters_finite(self) -> bool:
        """Collective: True when no rank holds a NaN or infinite parameter."""
        local = all(bool(torch.isfinite(p).all()) for p in self.engine.module.parameters())
        flag = torch.tensor([0.0 if local else 1.0], device=self.env.device)
        if self.env.world_size > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return float(flag.item()) == 0.0

    def save_state(self, root: Path, step: int, megagrape_state: dict) -> Path:
        """Collective: an atomic checkpoint of the engine plus ``megagrape_state``."""
        checkpoint = self.cfg.checkpoint
        return ckpt.save_checkpoint(
            self.engine, root, step, megagrape_state, checkpoint.keep_last, checkpoint.checksums
        )

    def load_state(self, info: ckpt.CheckpointInfo) -> dict:
        """Collective: restore the engine from ``info``; returns the saved megagrape state."""
        return ckpt.load_checkpoint(self.engine, info)


class EngineTrainModule(TrainModule):
    """PP == 1: megagrape drives the micro-batches; ``engine.step()`` is the step boundary."""

    def train_batch(self, micro_batches, datasets, domain_loss_weights, hooks):
        device = self.env.device
        local_size = self.cfg.train.global_batch_size // self.env.dp_size
        weights_on_device = (
            domain_loss_weights.to(device) if domain_loss_weights is not None else None
        )
        per_samples = []
        batches = load_batches(self.loader, datasets, micro_batches, device)
        for micro, batch in zip(micro_batches, batches):
            per_token = token_losses(self.engine, batch)
            per_sample = per_sample_losses(per_token, batch["loss_mask"])
            weights = batch["loss_weights"]
            if weights_on_device is not None:
                weights = weights * weights_on_device[batch["domain_ids"]]
            loss = (per_sample * weights.to(per_sample.dtype)).sum() / local_size
            self.engine.backward(loss, scale_wrt_gas=False)
            hooks.after_backward(micro, batch, per_token.detach())
            per_samples.append(per_sample)
        return per_samples

    def optim_step(self) -> None:
        self.engine.step()


class PipelineTrainModule(TrainModule):
    """PP > 1: DeepSpeed's pipeline schedule runs the whole step inside ``train_batch``.

    Domain loss weights and backward hooks are not available on this path (the pipeline loss
    is a per-micro-batch mean computed inside DeepSpeed); the pre-flight check rejects the
    configurations that would need them.
    """

    def train_batch(self, micro_batches, datasets, domain_loss_weights, hooks):
        if domain_loss_weights is not None:
            raise ValueError("domain loss weights are not supported with pipeline parallelism")
        loss_fn = pipeline_loss_fn(self.engine)
        loss_fn.record_token_losses = True
        batches = list(load_batches(self.loader, datasets, micro_batches, self.env.device))
        self.engine.train_batch(data_iter=iter([pipeline_batch(b) for b in batches]))
        recorded = loss_fn.take_token_losses()
        loss_fn.record_token_losses = False
        return [
            per_sample_losses(per_token, batch["loss_mask"])
            for batch, per_token in zip(batches, recorded)
        ]

    def optim_step(self) -> None:
        """Nothing: ``engine.train_batch`` already stepped the optimizer."""

    @property
    def pipeline_shape(self) -> tuple[int, int]:
        return (self.cfg.train.micro_batch_size, self.cfg.model.seq_length)


def build_train_module(cfg: RunConfig, env, ds_config: dict) -> TrainModule:
    """The train module for this run's layout (pipeline when parallel.pipeline_parallel > 1)."""
    cls = PipelineTrainModule if cfg.parallel.pipeline_parallel > 1 else EngineTrainModule
    return cls(cfg, env, ds_config)
