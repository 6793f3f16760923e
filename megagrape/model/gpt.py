"""PP == 1: megatron-core GPTModel (tensor parallel through megatron, data parallel via DeepSpeed)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

from megagrape.model.config import ModelConfig
from megagrape.model.init import canonical_layer_name
from megagrape.model.layers import (
    layer_spec,
    make_rotary_embedding,
    norm_class,
    transformer_config,
)
from megagrape.parallel import DistEnv

_LAYER_PARAM = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_TOP_LEVEL_NAMES = {
    "embedding.word_embeddings.weight": "word_embeddings.weight",
    "embedding.position_embeddings.weight": "position_embeddings.weight",
    "decoder.final_layernorm.weight": "final_norm.weight",
    "decoder.final_layernorm.bias": "final_norm.bias",
    "output_layer.weight": "output_layer.weight",
}


def build_gpt_model(cfg: ModelConfig, env: DistEnv, dtype: torch.dtype) -> GPTModel:
    """An uninitialised GPTModel for this rank's tensor-parallel shard (on ``env.device``)."""
    tcfg = transformer_config(cfg, env.tp_size, env.device, dtype)
    block = TransformerBlockSubmodules(
        layer_specs=[layer_spec(cfg, env.device)] * cfg.num_layers,
        layer_norm=norm_class(cfg, env.device),
    )
    model = GPTModel(
        config=tcfg,
        transformer_layer_spec=block,
        vocab_size=cfg.padded_vocab_size(env.tp_size),
        max_sequence_length=cfg.seq_length,
        pre_process=True,
        post_process=True,
        parallel_output=True,
        share_embeddings_and_output_weights=cfg.tie_embeddings,
        position_embedding_type=cfg.position_embedding,
        rotary_base=cfg.rotary_base,
    )
    if cfg.position_embedding == "rope":
        model.rotary_pos_emb = make_rotary_embedding(tcfg, cfg)
    return model.to(device=env.device, dtype=dtype)


def gpt_canonical_parameters(model: GPTModel) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """(canonical name, parameter) for every parameter of a GPTModel."""
    for name, param in model.named_parameters():
        match = _LAYER_PARAM.match(name)
        if match:
            yield canonical_layer_name(int(match.group(1)), match.group(2)), param
        elif name in _TOP_LEVEL_NAMES:
            yield _TOP_LEVEL_NAMES[name], param
        else:
            raise RuntimeError(f"GPTModel parameter {name!r} has no canonical name")
