"""Everything that can be checked before any process group starts, in one call.

    plan = preflight(cfg, ds_raw, world_size, ds_source="configs/ds/zero2.json")

runs, in order: every run-config field and the batch arithmetic; the DeepSpeed config against
the run config (on the device type the launch will use); the data (tokenizer and its fit to
``model.vocab_size``, every domain's ``.bin``/``.idx``, ``data.domains`` and ``targets.tasks``
names, weights files); the mixture method built on the real domain and target names (so
its options and its needs are known); the combinations the engine cannot run (listed in
``_check_combinations``); a DoReMi reference checkpoint; an explicit ``checkpoint.resume``
path. Any failure is a ConfigError or DataError naming the field or file and the fix;
tools/pretrain_grape.py turns it into exit code 2 within seconds of the launch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from megagrape.config import RunConfig
from megagrape.data.domains import count_tokens
from megagrape.data.training_data import load_checked_tokenizer, resolve_data_sources
from megagrape.ds_config import resolve_ds_config, zero_stage
from megagrape.errors import ConfigError
from megagrape.train import checkpoint as ckpt
from megagrape.train.capture import capture_mode
from megagrape.train.identity import RunIdentity, check_resume_identity, run_identity
from megagrape.train.mixture_controller import (
    build_mixture_method,
    needs_gradient_capture,
    needs_reference,
    resolve_weights_spec,
)
from megagrape.train.reference import check_reference_checkpoint


@dataclass(frozen=True)
class RunPlan:
    """What a launch would do, as the pre-flight check resolved it (``--dry-run`` prints it)."""

    world_size: int
    data_parallel: int
    tensor_parallel: int
    pipeline_parallel: int
    gradient_accumulation: int
    zero_stage: int
    precision: str  # bf16, fp16 or fp32
    device_type: str  # cuda or cpu
    domains: dict[str, int]  # domain -> tokens stored
    targets: list[str]
    method: str
    method_needs: list[str]
    capture_mode: (
        str | None
    )  # linear / partitioned / probe / pipeline (gradient methods), else None
    parameters: int  # parameters of the whole model, counted once

    def describe(self) -> str:
        """A few lines a person reads before launching a long job."""
        domains = ", ".join(f"{name} ({tokens:,} tokens)" for name, tokens in self.domains.items())
        needs = ", ".join(self.method_needs) or "nothing"
        return "\n".join(
            [
                f"layout     world {self.world_size} = DP {self.data_parallel} x TP "
                f"{self.tensor_parallel} x PP {self.pipeline_parallel}; gradient accumulation "
                f"{self.gradient_accumulation}; ZeRO stage {self.zero_stage}; {self.precision} "
                f"on {self.device_type}",
                f"model      {self.parameters:,} parameters",
                f"domains    {len(self.domains)}: {domains}",
                f"targets    {len(self.targets)}: {', '.join(self.targets) or 'none'}",
                f"method     {self.method} (needs {needs}"
                + (f"; gradient capture: {self.capture_mode})" if self.capture_mode else ")"),
            ]
        )


def launch_device(cfg: RunConfig) -> torch.device:
    """The device type ranks of this launch will use (the process group picks the index)."""
    return torch.device("cuda" if cfg.parallel.resolved_backend() == "nccl" else "cpu")


def preflight(
    cfg: RunConfig, ds_raw: dict, world_size: int, ds_source: str = "DeepSpeed config"
) -> RunPlan:
    """Check the whole launch without starting anything; returns what it would run."""
    cfg.validate(world_size)
    device = launch_device(cfg)
    pipeline = cfg.parallel.pipeline_parallel > 1
    ds_config = resolve_ds_config(ds_raw, cfg, world_size, device, pipeline, source=ds_source)
    stage = zero_stage(ds_config)

    _check_writable(cfg)
    sources = resolve_data_sources(cfg)
    tokenizer = load_checked_tokenizer(sources, cfg.model.vocab_size)
    names = sources.domain_names
    token_counts = [count_tokens(spec.prefix) for spec in sources.domains]
    targets = list(sources.target_files)
    method = build_mixture_method(cfg, names, targets, token_counts)
    if cfg.mixture.apply == "loss":
        resolve_weights_spec(cfg.mixture.sampling, names, token_counts, "mixture.sampling")
    mode = _check_combinations(cfg, ds_config, stage, method)
    if needs_reference(method):
        check_reference_checkpoint(
            cfg.mixture.method,
            cfg.mixture.reference_checkpoint,
            tokenizer.fingerprint,
            cfg.parallel.tensor_parallel,
            cfg.parallel.pipeline_parallel,
        )
    _check_resume(
        cfg,
        run_identity(
            cfg,
            tokenizer.fingerprint,
            sources.domains,
            sources.target_files,
            cfg.data_parallel_size(world_size),
            stage,
        ),
    )
    return RunPlan(
        world_size=world_size,
        data_parallel=cfg.data_parallel_size(world_size),
        tensor_parallel=cfg.parallel.tensor_parallel,
        pipeline_parallel=cfg.parallel.pipeline_parallel,
        gradient_accumulation=cfg.gradient_accumulation_steps(world_size),
        zero_stage=stage,
        precision=_precision(ds_config),
        device_type=device.type,
        domains=dict(zip(names, token_counts)),
        targets=targets,
        method=cfg.mixture.method,
        method_needs=sorted(method.needs),
        capture_mode=mode,
        parameters=cfg.model.num_parameters(cfg.parallel.tensor_parallel),
    )


def _precision(ds_config: dict) -> str:
    if ds_config["bf16"].get("enabled"):
        return "bf16"
    return "fp16" if ds_config.get("fp16", {}).get("enabled") else "fp32"


def _writable_dir(path: Path, field_name: str) -> None:
    """``path`` is (or can be created as) a writable directory; ConfigError naming the field."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(
            f"{field_name}: {probe} is a file, so {path} cannot be created as a directory; "
            f"choose another {field_name}"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{field_name}: {probe} is not writable by this user, so {path} cannot be written; "
            f"choose another {field_name} or fix its permissions"
        )


def _check_writable(cfg: RunConfig) -> None:
    """Every directory the run writes: outputs, checkpoints, the dataset index cache."""
    _writable_dir(cfg.run_dir, "output_dir")
    _writable_dir(cfg.checkpoint_root, "checkpoint.dir" if cfg.checkpoint.dir else "output_dir")
    _writable_dir(cfg.cache_dir, "data.cache_dir")


def _check_resume(cfg: RunConfig, identity: RunIdentity) -> None:
    """The checkpoint this launch would resume from must come from the same run (identity)."""
    info, _notes = ckpt.resolve_resume(cfg.checkpoint.resume, cfg.checkpoint_root)
    if info is None:
        return
    saved = ckpt.read_state(info).get("identity")
    if saved is not None:
        check_resume_identity(
            RunIdentity.from_dict(saved), identity, cfg.checkpoint.allow_changes, info.path
        )


def _check_combinations(cfg: RunConfig, ds_config: dict, stage: int, method) -> str | None:
    """Reject what the engine cannot run; returns the gradient-capture mode (None without one).

    * ``train.microbatch_schedule: by_domain`` with pipeline parallelism (DeepSpeed's pipeline
      engine runs a fixed number of equal micro-batches);
    * ``mixture.apply: loss`` with pipeline parallelism (its loss is a per-micro-batch mean);
    * gradient methods with fp16 (the captured training gradients would be loss-scaled while
      the target gradients are not).
    """
    pipeline = cfg.parallel.pipeline_parallel > 1
    if pipeline and cfg.train.microbatch_schedule == "by_domain":
        raise ConfigError(
            "train.microbatch_schedule=by_domain is not supported with parallel.pipeline_parallel "
            "> 1: DeepSpeed's pipeline engine runs a fixed number of equal micro-batches; use "
            "fixed or auto"
        )
    if pipeline and cfg.mixture.apply == "loss":
        raise ConfigError(
            "mixture.apply=loss is not supported with parallel.pipeline_parallel > 1 (DeepSpeed's "
            "pipeline loss is a per-micro-batch mean); use mixture.apply=sample"
        )
    if not needs_gradient_capture(method):
        return None
    mode = capture_mode(stage, cfg.parallel.pipeline_parallel)
    if ds_config.get("fp16", {}).get("enabled") is True:
        raise ConfigError(
            f"mixture.method={cfg.mixture.method} reads training gradients, which DeepSpeed fp16 "
            'keeps loss-scaled: use bf16 ("bf16": {"enabled": true}) or fp32 in the '
            "DeepSpeed config"
        )
    return mode
