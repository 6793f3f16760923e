"""GPT models from megatron-core that run on CPU (gloo) and GPU (nccl), TP and PP under DeepSpeed.

``build_model(cfg, env)`` returns:

* PP == 1: a megatron-core ``GPTModel`` (tensor parallel inside; give it to
  ``deepspeed.initialize(model=..., mpu=parallel.deepspeed_mpu(env))``) whose per-token
  losses come from ``token_losses(model_or_engine, batch)``;
* PP > 1: a DeepSpeed ``PipelineModule`` (see megagrape.model.pipeline for the stage list
  and the micro-batch tuple layout) trained with ``engine.train_batch(data_iter)``.

Weights are identical for a seed at every TP / PP layout (megagrape.model.init).
Importing this package is light (no megatron / DeepSpeed import until a model is built).
See docs/model.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from megagrape.model.config import ModelConfig
from megagrape.model.losses import masked_mean, token_losses
from megagrape.model.params import counts_once, is_tensor_parallel_split

if TYPE_CHECKING:
    from megagrape.parallel import DistEnv

__all__ = [
    "ModelConfig",
    "build_model",
    "counts_once",
    "is_tensor_parallel_split",
    "masked_mean",
    "pipeline_batch",
    "pipeline_loss_fn",
    "token_losses",
]


def build_model(
    cfg: ModelConfig, env: DistEnv, dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """This rank's share of the GPT on ``env.device``, initialised from ``env.seed``.

    Building does not advance any global random generator, so the dropout streams seeded by
    ``init_distributed`` do not depend on the model's construction.
    """
    from megagrape.model.init import initialize_parameters
    from megagrape.parallel import ParallelConfig

    cfg.validate(ParallelConfig(tensor_parallel=env.tp_size, pipeline_parallel=env.pp_size))
    with torch.random.fork_rng(devices=[]):
        if env.pp_size == 1:
            from megagrape.model.gpt import build_gpt_model, gpt_canonical_parameters

            model = build_gpt_model(cfg, env, dtype)
            named = gpt_canonical_parameters(model)
        else:
            from megagrape.model.pipeline import (
                build_pipeline_model,
                pipeline_canonical_parameters,
            )

            model = build_pipeline_model(cfg, env, dtype)
            model.to(dtype=dtype)
            named = pipeline_canonical_parameters(model)
        initialize_parameters(named, cfg, env.seed, env.tp_rank, env.tp_size)
    return model


def __getattr__(name: str):
    if name in ("pipeline_batch", "pipeline_loss_fn"):
        from megagrape.model import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'megagrape.model' has no attribute {name!r}")
