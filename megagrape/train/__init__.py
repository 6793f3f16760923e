"""The engine: the training loop, its train modules, the mixture controller, capture, callbacks.

    from megagrape.train import run_training
    summary = run_training(cfg, ds_raw)     # cfg checked by megagrape.train.preflight first

See docs/architecture.md for the layers and where each kind of change goes.
"""

from megagrape.train.trainer import Trainer, build_trainer, run_training

__all__ = ["Trainer", "build_trainer", "run_training"]
