"""Learning-rate schedule: linear warmup, then constant, linear, cosine or exponential decay to min_lr.

DeepSpeed calls ``step()`` once per optimizer step and checkpoints ``state_dict()``.
"""

from __future__ import annotations

import math

import torch

from megagrape.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    if cfg.lr_warmup_iters > 0 and step < cfg.lr_warmup_iters:
        return cfg.lr * (step + 1) / cfg.lr_warmup_iters
    decay_iters = cfg.lr_decay_iters or max(cfg.train_iters - cfg.lr_warmup_iters, 1)
    progress = min(max(step - cfg.lr_warmup_iters, 0) / decay_iters, 1.0)
    if cfg.lr_decay_style == "constant":
        return cfg.lr
    if cfg.lr_decay_style == "linear":
        return cfg.lr + (cfg.min_lr - cfg.lr) * progress
    if cfg.lr_decay_style == "cosine":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    # exponential: geometric interpolation from lr to min_lr (min_lr must be > 0 to decay)
    if cfg.min_lr <= 0:
        return cfg.lr * (1.0 - progress)
    return cfg.lr * (cfg.min_lr / cfg.lr) ** progress


class WarmupDecayLR:
    """Sets every param group's lr to ``lr_at(step)``; the state is the step counter."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.step_count = 0
        self._apply()

    def _apply(self) -> None:
        lr = lr_at(self.step_count, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, *args, **kwargs) -> None:
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        return self.get_last_lr()

    def state_dict(self) -> dict:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self._apply()
