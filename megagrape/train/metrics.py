"""Run outputs on rank 0: TensorBoard scalars, optional wandb, and mixture.jsonl.

Scalar names (TensorBoard tags):
    train/loss, train/lr, train/grad_norm, train/consumed_tokens, perf/tokens_per_s,
    perf/step_time_s, perf/mfu, perf/memory_gb, loss/domain/<name>, mixture/alpha/<domain>,
    mixture/z/<task>, mixture/gram_row_sum/<domain>, mixture/reweight_time_s,
    target/<task>/loss, target/<task>/acc, target/<task>/acc_norm, target/<task>/signal_loss
and the run's resolved config as the text ``config``. ``tensorboard/vs_tokens`` holds the loss
and target curves against consumed tokens (its own run in TensorBoard, so both axes purge
consistently).

A launch that resumes at step N keeps every record up to and including step N: mixture.jsonl
is truncated to step <= N and TensorBoard purges events from step N + 1 on (tokens after N's
on the tokens axis); a launch without a checkpoint starts both from nothing, so a relaunch
never writes a step twice.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from megagrape.utils.atomic import write_atomic


class MetricsWriter:
    """Writes nothing unless ``enabled`` (rank 0)."""

    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        tensorboard: bool = True,
        wandb_project: str = "",
        run_name: str = "",
        resume_step: int = 0,
        resume_tokens: int = 0,
        config: dict[str, Any] | None = None,
        config_text: str = "",
    ) -> None:
        self.enabled = enabled
        self.mixture_path = run_dir / "mixture.jsonl"
        self._tb = None
        self._tb_tokens = None
        self._wandb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        truncate_jsonl(self.mixture_path, resume_step if resume_step else -1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                log_dir=str(run_dir / "tensorboard"),
                purge_step=resume_step + 1 if resume_step else 0,
            )
            self._tb_tokens = SummaryWriter(
                log_dir=str(run_dir / "tensorboard" / "vs_tokens"),
                purge_step=resume_tokens + 1 if resume_tokens else 0,
            )
            if config_text:
                self._tb.add_text("config", f"```yaml\n{config_text}```", resume_step)
        if wandb_project:
            try:
                import wandb
            except ImportError:
                wandb = None
            if wandb is not None:
                self._wandb = wandb.init(
                    project=wandb_project,
                    name=run_name,
                    config=config,
                    resume="allow",
                    id=wandb_run_id(run_dir),
                )

    def scalars(self, step: int, values: dict[str, float], tokens: int | None = None) -> None:
        """Log ``values`` at optimizer step ``step`` (and at ``tokens`` on the tokens axis)."""
        if not self.enabled:
            return
        if self._tb is not None:
            for tag, value in values.items():
                self._tb.add_scalar(tag, value, step)
        if self._tb_tokens is not None and tokens is not None:
            for tag, value in values.items():
                self._tb_tokens.add_scalar(tag, value, tokens)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def mixture_event(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.mixture_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        for writer in (self._tb, self._tb_tokens):
            if writer is not None:
                writer.flush()

    def close(self) -> None:
        for writer in (self._tb, self._tb_tokens):
            if writer is not None:
                writer.close()
        if self._wandb is not None:
            self._wandb.finish()


def wandb_run_id(run_dir: Path) -> str:
    """The run's wandb id: made once (random) and kept in ``<run_dir>/wandb_id``, so a resumed
    run continues its own wandb run while two runs that share a name never merge."""
    path = run_dir / "wandb_id"
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:16]
    write_atomic(path, run_id + "\n")
    return run_id


def truncate_jsonl(path: Path, keep_through_step: int) -> None:
    """Drop records with step > keep_through_step (left behind by a run that was killed)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(record.get("step", 0)) <= keep_through_step:
            kept.append(line)
    write_atomic(path, "".join(line + "\n" for line in kept))


# Dense bf16 peak of common accelerators (FLOP/s), for MFU; unknown devices report no MFU.
_PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def memory_gb(device) -> float:
    """Peak memory of this process: GPU max allocated on CUDA, else peak resident set size (GB)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # ru_maxrss is in KiB on Linux


def mfu(model_flops_per_s: float, device, world_size: int) -> float | None:
    """Model FLOPs utilisation over all ranks, or None when the device's peak is unknown."""
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((flops for key, flops in _PEAK_BF16_FLOPS.items() if key in name), None)
    return None if peak is None else model_flops_per_s / (peak * world_size)
