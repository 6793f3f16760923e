"""Weight initialisation that gives the same full model for a seed at any TP / PP layout.

Every parameter has a canonical name (its name in a single-process model, e.g.
``layers.3.self_attention.linear_qkv.weight``) and a canonical full shape. Its full value is
drawn from a CPU generator seeded by (seed, canonical name) with megatron's init rules:

* linear weights, position embeddings: normal(0, init_method_std);
* ``linear_proj`` / ``linear_fc2`` weights (the residual-branch outputs):
  normal(0, init_method_std / sqrt(2 * num_layers)) (megatron's scaled init);
* word embeddings (and an untied output layer): normal(0, init_method_std) on the real
  vocabulary rows, zeros on the padding rows, so the real rows do not depend on the padding;
* norm weights 1, biases 0.

A tensor-parallel rank then keeps its shard: the full tensor is cut along
``param.partition_dim`` into ``partition_stride * tp`` chunks and the rank takes chunks
``tp_rank, tp_rank + tp, ...`` (megatron's layout; swiglu's fc1 has stride 2: [gate; up]).
Layer placement on pipeline stages does not enter the key, so PP layouts agree too.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable

import torch

from megagrape.model.config import ModelConfig

# Transformer Engine fuses the pre-attention / pre-MLP norms into the next linear layer.
_TE_NORM_ALIASES = (
    ("self_attention.linear_qkv.layer_norm_weight", "input_layernorm.weight"),
    ("self_attention.linear_qkv.layer_norm_bias", "input_layernorm.bias"),
    ("mlp.linear_fc1.layer_norm_weight", "pre_mlp_layernorm.weight"),
    ("mlp.linear_fc1.layer_norm_bias", "pre_mlp_layernorm.bias"),
)
_NORM_WEIGHT = re.compile(r"(layernorm|final_norm|layer_norm)\.weight$")
_SCALED_WEIGHT = re.compile(r"(linear_proj|linear_fc2)\.weight$")
_NORMAL_WEIGHT = re.compile(
    r"(linear_qkv|linear_fc1|linear_q|linear_kv)\.weight$|^position_embeddings\.weight$"
)
_VOCAB_WEIGHT = ("word_embeddings.weight", "output_layer.weight")


def canonical_layer_name(layer_index: int, local_name: str) -> str:
    """``layers.<global index>.<name inside a TransformerLayer>``, TE norm names unified."""
    for te_name, local in _TE_NORM_ALIASES:
        if local_name == te_name:
            local_name = local
    return f"layers.{layer_index}.{local_name}"


def _seed_for(seed: int, canonical_name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{canonical_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _normal(shape: tuple[int, ...], std: float, seed: int, canonical_name: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(_seed_for(seed, canonical_name))
    return torch.empty(shape, dtype=torch.float32).normal_(0.0, std, generator=generator)


def full_value(
    canonical_name: str, full_shape: tuple[int, ...], cfg: ModelConfig, seed: int
) -> torch.Tensor:
    """The float32 value of a whole (unsharded) parameter."""
    if canonical_name.endswith(".bias"):
        return torch.zeros(full_shape)
    if _NORM_WEIGHT.search(canonical_name):
        return torch.ones(full_shape)
    if canonical_name in _VOCAB_WEIGHT:
        real_rows = min(cfg.vocab_size, full_shape[0])
        value = torch.zeros(full_shape)
        value[:real_rows] = _normal(
            (real_rows, *full_shape[1:]), cfg.init_method_std, seed, canonical_name
        )
        return value
    if _SCALED_WEIGHT.search(canonical_name):
        std = cfg.init_method_std / math.sqrt(2.0 * cfg.num_layers)
        return _normal(full_shape, std, seed, canonical_name)
    if _NORMAL_WEIGHT.search(canonical_name):
        return _normal(full_shape, cfg.init_method_std, seed, canonical_name)
    raise RuntimeError(f"no initialisation rule for parameter {canonical_name!r}")


def shard_of(full: torch.Tensor, param: torch.nn.Parameter, tp_rank: int, tp: int) -> torch.Tensor:
    """This rank's piece of ``full`` under megatron's partition attributes of ``param``."""
    if tp == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    dim = param.partition_dim
    stride = getattr(param, "partition_stride", 1)
    chunks = torch.chunk(full, stride * tp, dim=dim)
    return torch.cat(chunks[tp_rank::tp], dim=dim)


def full_shape_of(param: torch.nn.Parameter, tp: int) -> tuple[int, ...]:
    shape = list(param.shape)
    if tp > 1 and getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] *= tp
    return tuple(shape)


@torch.no_grad()
def initialize_parameters(
    named: Iterable[tuple[str, torch.nn.Parameter]],
    cfg: ModelConfig,
    seed: int,
    tp_rank: int,
    tp: int,
) -> None:
    """Write every (canonical name, parameter) pair's shard of its canonical full value."""
    for canonical_name, param in named:
        full = full_value(canonical_name, full_shape_of(param, tp), cfg, seed)
        piece = shard_of(full, param, tp_rank, tp)
        if piece.shape != param.shape:
            raise RuntimeError(
                f"{canonical_name}: shard {tuple(piece.shape)} does not match the parameter "
                f"{tuple(param.shape)}"
            )
        param.copy_(piece.to(device=param.device, dtype=param.dtype))
