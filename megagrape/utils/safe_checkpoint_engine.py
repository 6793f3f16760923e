"""DeepSpeed's checkpoint loading through :func:`megagrape.utils.safe_load.safe_torch_load`.

``deepspeed.initialize`` gives every engine a ``checkpoint_engine`` (DeepSpeed's
``TorchCheckpointEngine`` unless the DeepSpeed config picks another writer) whose ``load``
calls ``torch.load(weights_only=False)``. ``engine.load_checkpoint`` reads every file through
it: the model files and the ZeRO optimizer partitions (the engine's own methods) and, for a
``PipelineEngine``, the ``layer_*`` files (handed to ``PipelineModule.load_state_dir``).
:func:`install_safe_checkpoint_engine` replaces it with a subclass whose ``load`` refuses
files holding anything but tensors and the allow-listed DeepSpeed classes; saving is unchanged.
"""

from __future__ import annotations

from typing import Any

from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

from megagrape.errors import ConfigError
from megagrape.utils.safe_load import safe_torch_load


class SafeTorchCheckpointEngine(TorchCheckpointEngine):
    """``TorchCheckpointEngine`` with ``load`` = ``safe_torch_load``; saves as the one it replaces."""

    def __init__(self, replaced: TorchCheckpointEngine) -> None:
        super().__init__(config_params=None)
        self.zipfile_serialization = replaced.zipfile_serialization

    def load(self, path: str, map_location: Any = None) -> Any:
        return safe_torch_load(path, map_location=map_location)


def install_safe_checkpoint_engine(engine) -> None:
    """Make ``engine.load_checkpoint`` (a DeepSpeedEngine or PipelineEngine) load safely.

    Call it right after ``deepspeed.initialize``. ConfigError when the DeepSpeed config chose
    another checkpoint engine (``checkpoint.writer``, ``datastates``), whose saving this would
    change.
    """
    current = engine.checkpoint_engine
    if not isinstance(current, TorchCheckpointEngine):
        raise ConfigError(
            f"the DeepSpeed config selects checkpoint engine {type(current).__name__}; megagrape "
            "loads checkpoints only through DeepSpeed's default TorchCheckpointEngine (with "
            "weights_only=True): remove checkpoint.writer / datastates from the DeepSpeed config"
        )
    engine.checkpoint_engine = SafeTorchCheckpointEngine(current)
