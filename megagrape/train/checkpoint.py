"""Atomic, resumable checkpoints: the DeepSpeed engine plus megagrape's own state.

Layout of ``checkpoint.dir``::

    step_000020/               a complete checkpoint
        COMPLETE.json          written last: step, world size, every file with its size and
                               sha256 (checkpoint.checksums)
        megagrape_state.json   sampler, mixture method, trainer counters (rank independent)
        mp_rank_00_model_states.pt, zero_pp_rank_*_optim_states.pt, ...   (DeepSpeed's files)
    step_000030.partial/       being written; a kill leaves it behind, it is never loaded
    latest                     name of the newest complete checkpoint (informational)

A save writes everything into ``step_N.partial``, waits for every rank, then rank 0 writes
``COMPLETE.json`` and renames the directory. A resume picks the newest directory that has a
``COMPLETE.json`` whose listed files are all present with their recorded sizes and, in a deep
check, their recorded sha256 (rank 0 reads every file once and tells the other ranks which
checkpoint to load); anything newer that fails is reported and skipped for the next older
one. ``megagrape_state.json`` is small and is always checked against its sha256. A save that
fails on any rank (a full disk) fails on every rank with the reason, removes its partial
directory and leaves older checkpoints alone. RNG state is not saved: the trainer reseeds
every RNG from (seed, step) at each step, so a resumed run draws the same numbers.
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

from megagrape.errors import CheckpointSaveError, ConfigError
from megagrape.utils.atomic import write_atomic, write_json_atomic
from megagrape.utils.hashing import sha256_file
from megagrape.utils.safe_load import safe_torch_load

_STEP_DIR = re.compile(r"^step_(\d+)$")
COMPLETE_FILE = "COMPLETE.json"
STATE_FILE = "megagrape_state.json"


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def _list_files(root: Path, checksums: bool) -> dict[str, dict[str, Any]]:
    """{relative path: {"bytes": size[, "sha256": hex]}} of every file but the marker."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != COMPLETE_FILE:
            entry: dict[str, Any] = {"bytes": path.stat().st_size}
            if checksums or path.name == STATE_FILE:
                entry["sha256"] = sha256_file(path)
            files[str(path.relative_to(root))] = entry
    return files


def verify_checkpoint(path: Path, deep: bool = False) -> str | None:
    """None if ``path`` is a complete, undamaged checkpoint, else the reason it is not.

    Always: the marker, every listed file present with its size, the state file's sha256.
    ``deep``: every recorded sha256 (reads every file). Markers of older megagrape versions
    (sizes only) are checked by size.
    """
    if not path.is_dir():
        return "the directory does not exist"
    marker = path / COMPLETE_FILE
    if not marker.is_file():
        return f"{COMPLETE_FILE} is missing (the save did not finish)"
    try:
        record = json.loads(marker.read_text())
        files = record["files"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        return f"{COMPLETE_FILE} is unreadable ({err})"
    for name, entry in files.items():
        size, digest = (
            (entry, None) if isinstance(entry, int) else (entry["bytes"], entry.get("sha256"))
        )
        file_path = path / name
        if not file_path.is_file():
            return f"{name} is missing"
        if file_path.stat().st_size != size:
            return f"{name} has {file_path.stat().st_size} bytes, expected {size}"
        if digest is not None and (deep or name == STATE_FILE) and sha256_file(file_path) != digest:
            return f"{name} is damaged (its sha256 differs from the one recorded at save time)"
    return None


def read_state(info: CheckpointInfo) -> dict[str, Any]:
    """megagrape's state of a verified checkpoint (``megagrape_state.json``)."""
    return json.loads((info.path / STATE_FILE).read_text())


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


def newest_complete(root: Path, deep: bool = False) -> tuple[CheckpointInfo | None, list[str]]:
    """The newest complete checkpoint and a note for each newer one that was skipped."""
    skipped = []
    for info in find_checkpoints(root):
        reason = verify_checkpoint(info.path, deep)
        if reason is None:
            return info, skipped
        skipped.append(f"skipping checkpoint {info.path}: {reason}")
    return None, skipped


def resolve_resume(
    resume: str, root: Path, deep: bool = False
) -> tuple[CheckpointInfo | None, list[str]]:
    """Interpret checkpoint.resume: 'auto', 'none' or an explicit checkpoint directory."""
    if resume == "none":
        return None, []
    if resume == "auto":
        return newest_complete(root, deep)
    path = Path(resume)
    match = _STEP_DIR.match(path.name)
    if not match:
        raise ConfigError(
            f"checkpoint.resume={resume!r} is not a step_N checkpoint directory, 'auto' or 'none'"
        )
    if not path.exists():
        raise ConfigError(
            f"checkpoint.resume={resume!r} does not exist; give an existing step_N directory, "
            "'auto' (the newest complete one in checkpoint.dir) or 'none'"
        )
    reason = verify_checkpoint(path, deep)
    if reason is not None:
        raise ConfigError(f"checkpoint.resume={resume!r} cannot be used: {reason}")
    return CheckpointInfo(path, int(match.group(1))), []


def _saved_and_current(module: torch.nn.Module, ckpt_dir: Path):
    """(file, saved tensors, this model's tensors) pairs to compare.

    A pipeline stage compares each of its layers with that layer's own file
    (``layer_NN-model_MM-model_states.pt``); any other model its first ``*model_states.pt``."""
    from deepspeed.pipe import PipelineModule

    if isinstance(module, PipelineModule):
        for index, layer in enumerate(module.forward_funcs):
            if not isinstance(layer, torch.nn.Module):
                continue
            path = Path(module.ckpt_layer_path(str(ckpt_dir), index))
            if not path.is_file():
                raise ConfigError(
                    f"checkpoint {ckpt_dir} has no {path.name} for pipeline stage layer "
                    f"{index + module._local_start}: it was written by a different pipeline layout "
                    "(parallel.pipeline_parallel / tensor_parallel) or model configuration"
                )
            yield path, safe_torch_load(path), layer.state_dict()
        return
    for model_file in sorted(ckpt_dir.glob("*model_states.pt")):
        saved = safe_torch_load(model_file)
        saved_module = saved.get("module", saved) if isinstance(saved, dict) else {}
        yield model_file, saved_module, module.state_dict()
        return


def check_model_shapes(module: torch.nn.Module, ckpt_dir: Path) -> None:
    """Compare the checkpoint's saved module tensors with ``module``; name the first mismatch."""
    for model_file, saved_module, current in _saved_and_current(module, ckpt_dir):
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


def finalize_save(
    partial: Path, final: Path, step: int, world_size: int, root: Path, checksums: bool = True
) -> None:
    """Rank 0, after every rank wrote into ``partial``: mark complete, rename, update 'latest'."""
    write_json_atomic(
        partial / COMPLETE_FILE,
        {"step": step, "world_size": world_size, "files": _list_files(partial, checksums)},
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
    # (sizes and the state file only: retention must not read every checkpoint at every save)
    for info in complete[keep_last:]:
        if keep is not None and info.path.resolve() == keep.resolve():
            continue
        shutil.rmtree(info.path, ignore_errors=True)


def _all_ranks_ok(error: str | None) -> list[str]:
    """Collective: every rank's error of the last phase (empty when all succeeded)."""
    errors: list[str | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(errors, error)
    return [f"rank {rank}: {e}" for rank, e in enumerate(errors) if e is not None]


def save_checkpoint(
    engine,
    root: Path,
    step: int,
    state: dict[str, Any],
    keep_last: int,
    checksums: bool = True,
) -> Path:
    """Collective: every rank calls this. Returns the final checkpoint directory.

    A write error on any rank (a full disk, an unwritable directory) raises
    CheckpointSaveError on every rank, after the partial directory is removed. (An error
    inside DeepSpeed's own save on some ranks only leaves the others in DeepSpeed's internal
    barrier: that ends at parallel.timeout_minutes, with older checkpoints intact.)
    """
    rank = torch.distributed.get_rank()
    world_size = torch.distributed.get_world_size()
    final = root / step_dir_name(step)
    partial = root / (final.name + ".partial")
    error = None
    try:
        if rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            if partial.exists():
                shutil.rmtree(partial)
    except OSError as err:
        error = str(err)
    failed = _all_ranks_ok(error)
    if not failed:
        try:
            engine.save_checkpoint(str(root), tag=partial.name, client_state={}, save_latest=False)
            if rank == 0:
                write_json_atomic(partial / STATE_FILE, state, fsync=True)
        except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError
            error = f"{type(err).__name__}: {err}"
        failed = _all_ranks_ok(error)
    if failed:
        if rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
        torch.distributed.barrier()
        raise CheckpointSaveError(
            f"saving checkpoint step {step} into {root} failed ({'; '.join(failed)}); its partial "
            "directory was removed and older checkpoints are kept: free space or fix the "
            "directory (checkpoint.dir), then relaunch to resume from the newest complete one"
        )
    if rank == 0:
        _maybe_die_for_test(step)
        finalize_save(partial, final, step, world_size, root, checksums)
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
