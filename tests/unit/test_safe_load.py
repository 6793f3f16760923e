"""safe_torch_load: a pickle that runs code is refused before it runs; the allow-list loads.

Real DeepSpeed checkpoints (ZeRO 0-3, pipeline) and engine resumes are in
tests/distributed/test_safe_load.py.
"""

from __future__ import annotations

import argparse
import os
import types
from pathlib import Path

import pytest
import torch

from megagrape.errors import ConfigError, DataError
from megagrape.utils.safe_load import safe_torch_load


class RunsCommand:
    """Unpickling this object runs ``command`` in a shell (what a hostile checkpoint does)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(2)}, "x": RunsCommand(f"touch {marker}")}, path)

    with pytest.raises(DataError) as info:
        safe_torch_load(path)
    message = str(info.value)
    assert str(path) in message and "outside megagrape's allow-list" in message
    assert "system" in message  # the refused global is named
    assert not marker.exists()

    torch.load(path, weights_only=False)  # the file is a real exploit: the unsafe load runs it
    assert marker.exists()


def test_only_the_allow_list_is_allowed_not_what_libraries_registered(tmp_path):
    """megatron-core allows argparse.Namespace process-wide on import; safe_torch_load does not,
    and leaves that registration as it found it."""
    import megatron.core  # noqa: F401  (registers its safe globals)

    path = tmp_path / "state.pt"
    torch.save({"args": argparse.Namespace(lr=1.0)}, path)
    assert torch.load(path, weights_only=True)["args"].lr == 1.0
    with pytest.raises(DataError, match=r"checkpoint types \(argparse\.Namespace\)"):
        safe_torch_load(path)
    assert argparse.Namespace in torch.serialization.get_safe_globals()


def test_deepspeed_checkpoint_objects_round_trip(tmp_path):
    """Every allow-listed class, as DeepSpeed pickles it, loads with its state."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    saved = {
        "loss_scaler": LossScaler(scale=1.0),
        "dynamic": DynamicLossScaler(
            init_scale=2.0**16,
            scale_window=500,
            min_scale=1.0,
            delayed_shift=2,
            consecutive_hysteresis=False,
            dtype=torch.half,
        ),
        "zero_stage": ZeroStageEnum.gradients,
        "param_slice_mappings": [{"w": fragment_address(numel=6, start=2)}],
        "state": {0: {"exp_avg": torch.arange(6.0)}},
    }
    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save(saved, path)

    loaded = safe_torch_load(path, map_location=lambda storage, location: storage)
    assert vars(loaded["loss_scaler"]) == vars(saved["loss_scaler"])
    assert type(loaded["dynamic"]) is DynamicLossScaler
    assert vars(loaded["dynamic"]) == vars(saved["dynamic"])
    assert loaded["zero_stage"] is ZeroStageEnum.gradients
    assert loaded["param_slice_mappings"] == [{"w": fragment_address(numel=6, start=2)}]
    assert torch.equal(loaded["state"][0]["exp_avg"], torch.arange(6.0))


def test_the_safe_engine_is_installed_only_over_deepspeeds_torch_engine():
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    from megagrape.utils.safe_checkpoint_engine import (
        SafeTorchCheckpointEngine,
        install_safe_checkpoint_engine,
    )

    original = TorchCheckpointEngine()
    original.zipfile_serialization = True
    engine = types.SimpleNamespace(checkpoint_engine=original)
    install_safe_checkpoint_engine(engine)
    assert type(engine.checkpoint_engine) is SafeTorchCheckpointEngine
    assert engine.checkpoint_engine.zipfile_serialization is True  # saves as before

    other = types.SimpleNamespace(checkpoint_engine=object())
    with pytest.raises(ConfigError, match="checkpoint engine object"):
        install_safe_checkpoint_engine(other)


def test_the_safe_engine_load_refuses_code(tmp_path):
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    from megagrape.utils.safe_checkpoint_engine import SafeTorchCheckpointEngine

    marker = tmp_path / "pwned"
    path = tmp_path / "layer_00-model_00-model_states.pt"
    torch.save(RunsCommand(f"touch {marker}"), path)
    engine = SafeTorchCheckpointEngine(TorchCheckpointEngine())
    with pytest.raises(DataError, match=str(Path(path).name)):
        engine.load(str(path), map_location="cpu")
    assert not marker.exists()
