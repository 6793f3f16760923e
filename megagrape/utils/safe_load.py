"""Read torch files without running code from them: ``torch.load(weights_only=True)``.

``torch.load(weights_only=False)`` unpickles arbitrary objects, so a checkpoint someone hands
you can run any command the moment it is loaded. :func:`safe_torch_load` unpickles only
tensors, containers, numbers, strings, torch's own types (dtypes, sizes, devices) and the
classes of :func:`checkpoint_globals` (not what other libraries allowed process-wide): the
non-tensor objects DeepSpeed pickles into the checkpoints megagrape writes, found by writing real checkpoints (ZeRO 0-3, TP = 2, PP = 2)
and asking ``torch.serialization.get_unsafe_globals_in_checkpoint`` for every file. Model files
(``mp_rank_*``, ``layer_*``, ZeRO-3 ``*_model_states.pt``) need none of them; the optimizer files
(``*_optim_states.pt``) need them all.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from megagrape.errors import DataError

_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+)")


def checkpoint_globals() -> list[type]:
    """The classes DeepSpeed pickles into checkpoint files, and nothing else.

    * ``LossScaler``: the ZeRO 1-3 optimizer's ``loss_scaler`` (static scale; fp32 and bf16);
    * ``DynamicLossScaler``: the same entry under fp16 with dynamic loss scaling;
    * ``ZeroStageEnum``: the ZeRO 1-3 optimizer's ``zero_stage``;
    * ``fragment_address``: ``param_slice_mappings`` of ZeRO 1/2 and of the bf16 optimizer
      (a dataclass of two ints per parameter).
    """
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, map_location, weights_only=True)`` allowing :func:`checkpoint_globals`.

    ``map_location`` is passed on as torch.load takes it (a device, a string, a dict or a
    function of (storage, location)). A file holding any other object is refused before
    that object is built: DataError naming the file and the refused global.
    """
    try:
        with _allowing_exactly(checkpoint_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _REFUSED_GLOBAL.search(str(exc))
        what = f" ({refused.group(1)})" if refused else ""
        raise DataError(
            f"{path}: holds objects outside megagrape's allow-list of checkpoint types{what}, so "
            "it was not loaded: unpickling them could run code. Load only checkpoints written "
            "by megagrape/DeepSpeed; see megagrape.utils.safe_load.checkpoint_globals"
        ) from None


@contextmanager
def _allowing_exactly(allowed: list[type]) -> Iterator[None]:
    """Inside the block weights_only loads allow torch's own types and ``allowed``, no more.

    What other libraries registered process-wide with ``add_safe_globals`` (megatron-core
    registers numpy arrays, argparse.Namespace, PosixPath, BytesIO, ... when imported) is set
    aside for the block and restored after it. Not thread-safe, like ``safe_globals``.
    """
    registered = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(allowed)
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(registered)
