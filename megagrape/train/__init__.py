"""The engine: the training loop, its train modules, the mixture controller, capture, callbacks.

    from megagrape.train import run_training
    summary = run_training(cfg, ds_raw)     # cfg checked by megagrape.train.preflight first

Importing this package is light (DeepSpeed and megatron-core load with the trainer), so the
command line answers ``--help`` or a bad config within a second or two. See
docs/architecture.md for the layers and where each kind of change goes.
"""

__all__ = ["Trainer", "build_trainer", "run_training"]


def __getattr__(name: str):
    if name in __all__:
        from megagrape.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'megagrape.train' has no attribute {name!r}")
