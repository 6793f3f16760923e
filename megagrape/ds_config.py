"""Read a DeepSpeed config and reconcile it with the run config.

The run config owns the batch sizes, the optimizer and the lr schedule; the DeepSpeed
config owns ZeRO and precision. Batch sizes present in the DeepSpeed config must agree
with the run config (the error spells out the arithmetic); missing or "auto" ones are
filled in. ``"bf16": {"enabled": "auto"}`` means bf16 on a CUDA device that supports it
and fp32 elsewhere, so the same file serves CPU and GPU runs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from megagrape.config import RunConfig
from megagrape.errors import ConfigError

_OWNED_BY_RUN_CONFIG = ("optimizer", "scheduler")


def read_ds_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"DeepSpeed config {path} does not exist; pass --ds_config configs/ds/zero2.json"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"DeepSpeed config {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"DeepSpeed config {path} must be a JSON object")
    return data


def _is_set(value: Any) -> bool:
    return value is not None and value != "auto"


def _bf16_available(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def resolve_ds_config(
    ds: dict[str, Any],
    cfg: RunConfig,
    world_size: int,
    device: torch.device,
    pipeline: bool,
    source: str = "DeepSpeed config",
) -> dict[str, Any]:
    """Return a complete DeepSpeed config dict for this run (``ds`` is not modified)."""
    out = copy.deepcopy(ds)
    for key in _OWNED_BY_RUN_CONFIG:
        if key in out:
            raise ConfigError(
                f"{source} has an '{key}' block; megagrape builds the optimizer and lr schedule from "
                f"the run config's train section (train.lr, train.weight_decay, ...): remove '{key}'"
            )
    _reconcile_batch_sizes(out, cfg, world_size, source)
    clip = out.get("gradient_clipping")
    if _is_set(clip) and float(clip) != cfg.train.clip_grad:
        raise ConfigError(
            f"{source}: gradient_clipping={clip} contradicts train.clip_grad={cfg.train.clip_grad}; "
            "set one of them (the run config's train.clip_grad is used when the DeepSpeed config omits it)"
        )
    out["gradient_clipping"] = cfg.train.clip_grad
    _resolve_precision(out, device, source)
    _check_zero(out, pipeline, source)
    # megagrape drives gradient accumulation itself (variable domain-pure micro-batch rounds), so
    # backward() only accumulates and step() is the boundary. DeepSpeed's pipeline engine runs its
    # own schedule and needs managed accumulation.
    out["managed_gradient_accumulation"] = pipeline
    out.setdefault("steps_per_print", 10**9)
    out.setdefault("wall_clock_breakdown", False)
    return out


def _reconcile_batch_sizes(
    out: dict[str, Any], cfg: RunConfig, world_size: int, source: str
) -> None:
    """Fill the three batch-size keys from the run config; a contradicting value is an error."""
    dp = cfg.data_parallel_size(world_size)
    mbs = cfg.train.micro_batch_size
    gas = cfg.gradient_accumulation_steps(world_size)
    expected = {
        "train_micro_batch_size_per_gpu": mbs,
        "gradient_accumulation_steps": gas,
        "train_batch_size": cfg.train.global_batch_size,
    }
    arithmetic = (
        f"run config: train.global_batch_size={cfg.train.global_batch_size} = "
        f"train.micro_batch_size {mbs} x gradient accumulation {gas} x data-parallel size {dp} "
        f"(world size {world_size} / (TP {cfg.parallel.tensor_parallel} x PP {cfg.parallel.pipeline_parallel}))"
    )
    for key, value in expected.items():
        given = out.get(key)
        if _is_set(given) and given != value:
            raise ConfigError(
                f"{source}: {key}={given} contradicts the run config, which needs {key}={value}; "
                f'{arithmetic}. Remove {key} from the DeepSpeed config or set it to "auto".'
            )
        out[key] = value


def _resolve_precision(out: dict[str, Any], device: torch.device, source: str) -> None:
    """bf16 "auto" -> on where the device supports it; fp16 only on CUDA."""
    bf16 = out.setdefault("bf16", {})
    if bf16.get("enabled", "auto") == "auto":
        bf16["enabled"] = _bf16_available(device)
    elif bf16["enabled"] and not _bf16_available(device):
        raise ConfigError(
            f'{source}: bf16.enabled=true but {device} has no bf16 support; set it to "auto" or false'
        )
    fp16 = out.get("fp16", {})
    if fp16.get("enabled") is True and device.type != "cuda":
        raise ConfigError(
            f"{source}: fp16.enabled=true needs a CUDA device; this run is on {device}"
        )


def _check_zero(out: dict[str, Any], pipeline: bool, source: str) -> None:
    """The ZeRO stage and the options megagrape's own gradient accumulation allows with it."""
    zero = out.setdefault("zero_optimization", {"stage": 0})
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"{source}: zero_optimization.stage={stage} is not 0, 1, 2 or 3")
    if pipeline and stage > 1:
        raise ConfigError(
            f"{source}: zero_optimization.stage={stage} with pipeline parallelism; DeepSpeed's pipeline "
            "engine supports ZeRO stage 0 or 1 only"
        )
    if not pipeline and stage < 2 and zero.get("overlap_comm"):
        raise ConfigError(
            f"{source}: zero_optimization.overlap_comm=true with stage {stage}; megagrape drives gradient "
            "accumulation itself (DeepSpeed's managed_gradient_accumulation=false), which supports "
            "overlap_comm only with stage 2 or 3: remove overlap_comm or use stage 2"
        )


def zero_stage(ds: dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))
