"""Learning-rate schedule with Megatron-LM's step semantics: linear warmup, then constant, linear,
cosine, exponential or WSD (warmup-stable-decay) decay to min_lr.

All quantities are in optimizer steps (0-based), lrs in the optimizer's units. Decay ends at
step ``train.lr_decay_iters`` counted from step 0 (0 = ``train_iters``), as Megatron-LM's
``--lr-decay-iters``; from then on the lr stays at ``min_lr``. DeepSpeed calls ``step()`` once
per applied optimizer step (none on an fp16 overflow skip) and checkpoints ``state_dict()``.

Megatron-core's ``OptimizerParamScheduler`` is not used because it does not fit in five ways.
Its warmup gives step s the lr ``lr_warmup_init + (lr - lr_warmup_init) * s / warmup``, so step 0
trains at ``lr_warmup_init``; ours gives ``lr * (s + 1) / warmup`` (one step ahead), which existing
runs such as the quickstart depend on and which no choice of its arguments reproduces. It has no
``exponential`` decay (its ``WSD`` exponential is a different curve, ``2 * 0.5**r - 1``). Its
``step(increment)`` needs an argument: DeepSpeed calls ``step()``, catches the TypeError and calls
``step(train_batch_size())``, so the schedule would count samples, not steps. Every ``step`` also
overwrites each param group's ``weight_decay`` with its own weight-decay schedule times
``wd_mult``, which would put decay back on our no-decay group. Its ``load_state_dict`` takes
lr, min_lr, warmup and decay length from the checkpoint instead of the run config (or asserts
they are equal) and does not store the WSD fields. Where the semantics are shared (every step
from the end of warmup on, for linear, cosine and WSD) our lr equals its ``get_lr()``;
tests/unit/test_schedule.py checks this.
"""

from __future__ import annotations

import math

import torch

from megagrape.config import TrainConfig


def decay_end(cfg: TrainConfig) -> int:
    """Step at which the lr reaches min_lr: ``lr_decay_iters``, or ``train_iters`` when 0."""
    return cfg.lr_decay_iters or cfg.train_iters


def _wsd_coeff(step: int, cfg: TrainConfig) -> float:
    """WSD share of (lr - min_lr) at ``step``: 1 until the final decay phase, then down to 0."""
    start = decay_end(cfg) - cfg.lr_wsd_decay_iters
    if step <= start:
        return 1.0
    ratio = min((step - start) / cfg.lr_wsd_decay_iters, 1.0)
    if cfg.lr_wsd_decay_style == "linear":
        return 1.0 - ratio
    if cfg.lr_wsd_decay_style == "cosine":
        return 0.5 * (math.cos(math.pi * ratio) + 1.0)
    if cfg.lr_wsd_decay_style == "exponential":
        return 2.0 * 0.5**ratio - 1.0
    # minus_sqrt
    return 1.0 - math.sqrt(ratio)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    warmup = cfg.lr_warmup_iters
    if warmup > 0 and step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.lr_decay_style == "constant":
        return cfg.lr
    if cfg.lr_decay_style == "wsd":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * _wsd_coeff(step, cfg)
    # max(.., 1): with lr_decay_iters = 0 and warmup = train_iters the whole run is warmup
    progress = min(max(step - warmup, 0) / max(decay_end(cfg) - warmup, 1), 1.0)
    if cfg.lr_decay_style == "linear":
        return cfg.lr + (cfg.min_lr - cfg.lr) * progress
    if cfg.lr_decay_style == "cosine":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    # exponential: geometric interpolation from lr to min_lr (min_lr must be > 0 to decay)
    if cfg.min_lr <= 0:
        return cfg.lr * (1.0 - progress)
    return cfg.lr * (cfg.min_lr / cfg.lr) ** progress


class WarmupDecayLR:
    """Sets every param group's lr to ``lr_at(step)``; the state is the step counter.

    ``step()`` advances one optimizer step whatever it is passed (DeepSpeed passes nothing).
    """

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
