"""Atomic, resumable checkpoints: the DeepSpeed engine plus megagrape's own state.

Layout of ``checkpoint.dir``::

    step_000020/               a complete checkpoint
        COMPLETE.json          written last: step, world size, every file with its size
        megagrape_state.json   sampler, mixture method, trainer counters (rank independent)
        mp_rank_00_model_states.pt, zero_pp_rank_*_optim_states.pt, ...   (DeepSpeed's files)
    step_000030.partial/       being written; a kill leaves it behind, it is never loaded
    latest                     name of the newest complete checkpoint (informational)

A save writes everything into ``step_N.partial``, waits for every rank, then rank 0 writes
``COMPLETE.json`` and renames the directory. A resume picks the newest directory that has a
``COMPLETE.json`` whose listed files are all present with their recorded sizes; anything
newer that fails that check is reported and skipped. RNG state is not saved: the trainer
reseeds every RNG from (seed, step) at each step, so a resumed run draws the same numbers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megagrape.errors import ConfigError
from megagrape.utils.atomic import write_atomic, write_json_atomic

_STEP_DIR = re.compile(r"^step_(\d+)$")
COMPLETE_FILE = "COMPLETE.json"
STATE_FILE = "megagrape_state.json"


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def _list_files(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != COMPLETE_FILE
    }


def verify_checkpoint(path: Path) -> str | None:
    """Return None if ``path`` is a complete checkpoint, else the reason it is not."""
    marker = path / COMPLETE_FILE
    if not marker.is_file():
        return f"{COMPLETE_FILE} is missing (the save did not finish)"
    try:
        record = json.loads(marker.read_text())
        files = record["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        return f"{COMPLETE_FILE} is unreadable ({err})"
    for name, size in files.items():
        file_path = path / name
        if not file_path.is_file():
            return f"{name} is missing"
        if file_path.stat().st_size != size:
            return f"{name} has {file_path.stat().st_size} bytes, expected {size}"
    return None


def find_checkpoints(root: Path) -> list[CheckpointInfo]:
    """Every step_N directory under ``root`` (complete or not), newest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir():
            found.append(CheckpointInfo(child, int(match.group(1))))
    return sorted(found, key=lambda info: info.step, reverse=True)


def newest_complete(root: Path) -> tuple[CheckpointInfo | None, list[str]]:
    """The newest complete checkpoint and a note for each newer one that was skipped."""
    skipped = []
    for info in find_checkpoints(root):
        reason = verify_checkpoint(info.path)
        if reason is None:
            return info, skipped
        skipped.append(f"skipping checkpoint {info.path}: {reason}")
    return None, skipped


def resolve_resume(resume: str, root: Path) -> tuple[CheckpointInfo | None, list[str]]:
    """Interpret checkpoint.resume: 'auto', 'none' or an explicit checkpoint directory."""
    if resume == "none":
        return None, []
    if resume == "auto":
        return newest_complete(root)
    path = Path(resume)
    match = _STEP_DIR.match(path.name)
    if not match:
        raise ConfigError(
            f"checkpoint.resume={resume!r} is not a step_N checkpoint directory, 'auto' or 'none'"
        )
    reason = verify_checkpoint(path)
    if reason is not None:
        raise ConfigError(f"checkpoint.resume={resume!r} cannot be used: {reason}")
    return CheckpointInfo(path, int(match.group(1))), []


def check_model_shapes(module: torch.nn.Module, ckpt_dir: Path) -> None:
    """Compare the checkpoint's saved module tensors with ``module``; name the first mismatch."""
    for model_file in sorted(ckpt_dir.glob("*model_states.pt")):
        saved = torch.load(model_file, map_location="cpu", weights_only=False)
        saved_module = saved.get("module", saved) if isinstance(saved, dict) else {}
        current = module.state_dict()
        for name, tensor in saved_module.items():
            if not torch.is_tensor(tensor):
                continue
            if name not in current:
                raise ConfigError(
                    f"checkpoint {model_file} holds tensor '{name}' that this model does not have: "
                    "it was written by a different model configuration"
                )
            if tuple(current[name].shape) != tuple(tensor.shape):
                raise ConfigError(
                    f"checkpoint {model_file} tensor '{name}' has shape {tuple(tensor.shape)} but this model "
                    f"expects {tuple(current[name].shape)}: the model config differs from the run that "
                    "wrote the checkpoint"
                )
        return


def finalize_save(partial: Path, final: Path, step: int, world_size: int, root: Path) -> None:
    """Rank 0, after every rank wrote into ``partial``: mark complete, rename, update 'latest'."""
    write_json_atomic(
        partial / COMPLETE_FILE,
        {"step": step, "world_size": world_size, "files": _list_files(partial)},
        fsync=True,
    )
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    write_atomic(root / "latest", final.name + "\n")


def apply_retention(root: Path, keep_last: int, keep: Path | None = None) -> None:
    """Remove stale .partial directories and all but the newest ``keep_last`` complete checkpoints."""
    for child in root.glob("step_*.partial"):
        shutil.rmtree(child, ignore_errors=True)
    if keep_last <= 0:
        return
    complete = [info for info in find_checkpoints(root) if verify_checkpoint(info.path) is None]
    for info in complete[keep_last:]:
        if keep is not None and info.path.resolve() == keep.resolve():
            continue
        shutil.rmtree(info.path, ignore_errors=True)


def save_checkpoint(engine, root: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Collective: every rank calls this. Returns the final checkpoint directory."""
    rank = torch.distributed.get_rank()
    world_size = torch.distributed.get_world_size()
    final = root / step_dir_name(step)
    partial = root / (final.name + ".partial")
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if partial.exists():
            shutil.rmtree(partial)
    torch.distributed.barrier()
    engine.save_checkpoint(str(root), tag=partial.name, client_state={}, save_latest=False)
    if rank == 0:
        write_json_atomic(partial / STATE_FILE, state, fsync=True)
    torch.distributed.barrier()
    if rank == 0:
        _maybe_die_for_test(step)
        finalize_save(partial, final, step, world_size, root)
        apply_retention(root, keep_last, keep=final)
    torch.distributed.barrier()
    return final


def _maybe_die_for_test(step: int) -> None:
    """Test hook: MEGAGRAPE_TEST_KILL_BEFORE_COMPLETE=<step> SIGKILLs rank 0 mid-save."""
    target = os.environ.get("MEGAGRAPE_TEST_KILL_BEFORE_COMPLETE")
    if target is not None and int(target) == step:
        os.kill(os.getpid(), 9)


def load_checkpoint(engine, info: CheckpointInfo) -> dict[str, Any]:
    """Collective: load DeepSpeed state from ``info`` and return megagrape's state dict."""
    check_model_shapes(engine.module, info.path)
    load_path, _client = engine.load_checkpoint(
        str(info.path.parent),
        tag=info.path.name,
        load_module_strict=True,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
    )
    if load_path is None:
        raise ConfigError(f"DeepSpeed could not load checkpoint {info.path}")
    return json.loads((info.path / STATE_FILE).read_text())
