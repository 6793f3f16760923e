"""Which Hugging Face architecture computes exactly what a megagrape GPT computes, and the
weight mapping into it.

megagrape's GPT (megatron-core, pre-norm, sequential residual, causal softmax attention
scaled by 1/sqrt(head_dim), RoPE over the whole head in megatron's non-interleaved
"rotate half" form, exact erf GELU or SwiGLU = silu(gate) * up) maps exactly onto:

============  =====================================  ===================  ====================
name          position / norm / MLP                  attention            linear biases
============  =====================================  ===================  ====================
gpt2          learned_absolute / LayerNorm / gelu    one group per head   yes (zeros if off)
llama         rope / RMSNorm / swiglu                any GQA              attention_bias/mlp_bias
gpt_neox      rope / LayerNorm / gelu                one group per head   yes (MLP zeros if off)
starcoder2    rope / LayerNorm / gelu                any GQA              use_bias
============  =====================================  ===================  ====================

Tied and untied output layers are both exact everywhere (``tie_word_embeddings``). GPT-NeoX
is configured with ``use_parallel_residual=False`` and ``partial_rotary_factor=1.0`` (its
``query_key_value`` is laid out per head as [q, k, v], megatron's per-group layout when every
head is its own group). Biases a megagrape model does not have are written as zeros where the
HF architecture always has them, which computes the same function.

Megatron's ``linear_qkv`` rows are grouped per query group: [q heads of group 0, k_0, v_0,
q heads of group 1, k_1, v_1, ...], query head n belonging to group n // (heads / groups),
the same head-to-group rule as HF's ``repeat_kv``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from megagrape.errors import ConfigError
from megagrape.model.config import ModelConfig

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ExportTarget:
    """What the HF model is built for: the real vocabulary and the end-of-document id."""

    vocab_size: int
    eod_id: int | None
    """None: no tokenizer exported, bos/eos ids left unset."""


@dataclass(frozen=True)
class Architecture:
    name: str
    hf_class: str
    position_embedding: str
    normalization: str
    activation: str
    grouped_query_attention: bool
    convert: Callable[[State, ModelConfig, ExportTarget], tuple[object, State]]
    """(megagrape canonical state, config, target) -> (transformers config, HF state_dict)."""

    def blockers(self, cfg: ModelConfig) -> list[str]:
        """The model fields that stop ``cfg`` from being this architecture exactly."""
        out = []
        for field_name, needed in (
            ("position_embedding", self.position_embedding),
            ("normalization", self.normalization),
            ("activation", self.activation),
        ):
            value = getattr(cfg, field_name)
            if value != needed:
                out.append(f"model.{field_name} = {value!r} (needs {needed!r})")
        if not self.grouped_query_attention and cfg.query_groups != cfg.num_attention_heads:
            out.append(
                f"model.num_query_groups = {cfg.num_query_groups} (needs null: one key/value "
                "head per attention head)"
            )
        return out


def choose_architecture(cfg: ModelConfig, requested: str = "auto") -> Architecture:
    """The architecture for ``cfg``: ``requested`` by name, or the first exact one ("auto").

    ConfigError names, for each candidate, the fields that block it and the values it needs.
    """
    if requested != "auto" and requested not in ARCHITECTURES:
        raise ConfigError(
            f"--architecture {requested!r}: allowed values are auto, {', '.join(ARCHITECTURES)}"
        )
    candidates = list(ARCHITECTURES.values()) if requested == "auto" else [ARCHITECTURES[requested]]
    reasons = []
    for arch in candidates:
        blockers = arch.blockers(cfg)
        if not blockers:
            return arch
        reasons.append(f"  {arch.name} ({arch.hf_class}): {'; '.join(blockers)}")
    summary = (
        f"position_embedding={cfg.position_embedding!r}, normalization={cfg.normalization!r}, "
        f"activation={cfg.activation!r}, num_attention_heads={cfg.num_attention_heads}, "
        f"num_query_groups={cfg.num_query_groups}"
    )
    raise ConfigError(
        f"model ({summary}) cannot be exported exactly as "
        f"{'any supported Hugging Face architecture' if requested == 'auto' else requested}:\n"
        + "\n".join(reasons)
        + "\nTrain with one of these combinations to export the model."
    )


# ----------------------------------------------------------------------------- helpers


def split_qkv(
    tensor: torch.Tensor, cfg: ModelConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron's per-group fused qkv weight [rows, h] (or bias [rows]) -> q [heads * d, ...],
    k [groups * d, ...], v [groups * d, ...] with heads in group-major order."""
    groups, d = cfg.query_groups, cfg.head_dim
    per_group = cfg.num_attention_heads // groups
    rest = tuple(tensor.shape[1:])
    blocks = tensor.reshape(groups, per_group + 2, d, *rest)
    query = blocks[:, :per_group].reshape(groups * per_group * d, *rest)
    key = blocks[:, per_group].reshape(groups * d, *rest)
    value = blocks[:, per_group + 1].reshape(groups * d, *rest)
    return query.contiguous(), key.contiguous(), value.contiguous()


def _bias(state: State, name: str, size: int, like: torch.Tensor) -> torch.Tensor:
    """The bias ``name`` or, for a model without linear biases, zeros of ``size``."""
    return state[name] if name in state else torch.zeros(size, dtype=like.dtype)


def _vocab_rows(
    state: State, cfg: ModelConfig, target: ExportTarget
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input embedding, output layer) on the real vocabulary; the same tensor when tied."""
    embedding = state["word_embeddings.weight"][: target.vocab_size].contiguous()
    if cfg.tie_embeddings:
        return embedding, embedding
    return embedding, state["output_layer.weight"][: target.vocab_size].contiguous()


def _common_kwargs(cfg: ModelConfig, target: ExportTarget) -> dict:
    return dict(
        vocab_size=target.vocab_size,
        bos_token_id=target.eod_id,
        eos_token_id=target.eod_id,
        tie_word_embeddings=cfg.tie_embeddings,
    )


def _rope(cfg: ModelConfig, **extra: float) -> dict:
    return {"rope_type": "default", "rope_theta": float(cfg.rotary_base), **extra}


# ----------------------------------------------------------------------------- conversions


def _to_gpt2(state: State, cfg: ModelConfig, target: ExportTarget) -> tuple[object, State]:
    from transformers import GPT2Config

    config = GPT2Config(
        n_positions=cfg.seq_length,
        n_embd=cfg.hidden_size,
        n_layer=cfg.num_layers,
        n_head=cfg.num_attention_heads,
        n_inner=cfg.ffn_size,
        activation_function="gelu",
        resid_pdrop=cfg.hidden_dropout,
        embd_pdrop=cfg.hidden_dropout,
        attn_pdrop=cfg.attention_dropout,
        layer_norm_epsilon=cfg.layernorm_epsilon,
        initializer_range=cfg.init_method_std,
        **_common_kwargs(cfg, target),
    )
    h = cfg.hidden_size
    embedding, output = _vocab_rows(state, cfg, target)
    out: State = {
        "transformer.wte.weight": embedding,
        "transformer.wpe.weight": state["position_embeddings.weight"],
        "transformer.ln_f.weight": state["final_norm.weight"],
        "transformer.ln_f.bias": state["final_norm.bias"],
        "lm_head.weight": output,
    }
    for i in range(cfg.num_layers):
        src, dst = f"layers.{i}.", f"transformer.h.{i}."
        qkv_weight = state[src + "self_attention.linear_qkv.weight"]
        qkv_bias = _bias(state, src + "self_attention.linear_qkv.bias", 3 * h, qkv_weight)
        fc1 = state[src + "mlp.linear_fc1.weight"]
        # GPT-2's Conv1D stores weights as [in, out]: transpose megatron's [out, in].
        out |= {
            dst + "ln_1.weight": state[src + "input_layernorm.weight"],
            dst + "ln_1.bias": state[src + "input_layernorm.bias"],
            dst + "attn.c_attn.weight": torch.cat(split_qkv(qkv_weight, cfg)).t().contiguous(),
            dst + "attn.c_attn.bias": torch.cat(split_qkv(qkv_bias, cfg)),
            dst + "attn.c_proj.weight": state[src + "self_attention.linear_proj.weight"]
            .t()
            .contiguous(),
            dst + "attn.c_proj.bias": _bias(
                state, src + "self_attention.linear_proj.bias", h, qkv_weight
            ),
            dst + "ln_2.weight": state[src + "pre_mlp_layernorm.weight"],
            dst + "ln_2.bias": state[src + "pre_mlp_layernorm.bias"],
            dst + "mlp.c_fc.weight": fc1.t().contiguous(),
            dst + "mlp.c_fc.bias": _bias(state, src + "mlp.linear_fc1.bias", cfg.ffn_size, fc1),
            dst + "mlp.c_proj.weight": state[src + "mlp.linear_fc2.weight"].t().contiguous(),
            dst + "mlp.c_proj.bias": _bias(state, src + "mlp.linear_fc2.bias", h, fc1),
        }
    return config, out


def _attention_projections(state: State, cfg: ModelConfig, src: str, dst: str) -> State:
    """q/k/v/o projections (Llama and Starcoder2 names), biases only when the model has them."""
    out = {}
    q, k, v = split_qkv(state[src + "self_attention.linear_qkv.weight"], cfg)
    out |= {dst + "q_proj.weight": q, dst + "k_proj.weight": k, dst + "v_proj.weight": v}
    out[dst + "o_proj.weight"] = state[src + "self_attention.linear_proj.weight"]
    if cfg.add_bias_linear:
        qb, kb, vb = split_qkv(state[src + "self_attention.linear_qkv.bias"], cfg)
        out |= {dst + "q_proj.bias": qb, dst + "k_proj.bias": kb, dst + "v_proj.bias": vb}
        out[dst + "o_proj.bias"] = state[src + "self_attention.linear_proj.bias"]
    return out


def _to_llama(state: State, cfg: ModelConfig, target: ExportTarget) -> tuple[object, State]:
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.query_groups,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=cfg.seq_length,
        rms_norm_eps=cfg.layernorm_epsilon,
        rope_parameters=_rope(cfg),
        attention_bias=cfg.add_bias_linear,
        mlp_bias=cfg.add_bias_linear,
        attention_dropout=cfg.attention_dropout,
        initializer_range=cfg.init_method_std,
        **_common_kwargs(cfg, target),
    )
    embedding, output = _vocab_rows(state, cfg, target)
    out: State = {
        "model.embed_tokens.weight": embedding,
        "model.norm.weight": state["final_norm.weight"],
        "lm_head.weight": output,
    }
    ffn = cfg.ffn_size
    for i in range(cfg.num_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        out |= _attention_projections(state, cfg, src, dst + "self_attn.")
        fc1 = state[src + "mlp.linear_fc1.weight"]  # [gate; up]
        out |= {
            dst + "input_layernorm.weight": state[src + "input_layernorm.weight"],
            dst + "post_attention_layernorm.weight": state[src + "pre_mlp_layernorm.weight"],
            dst + "mlp.gate_proj.weight": fc1[:ffn].contiguous(),
            dst + "mlp.up_proj.weight": fc1[ffn:].contiguous(),
            dst + "mlp.down_proj.weight": state[src + "mlp.linear_fc2.weight"],
        }
        if cfg.add_bias_linear:
            fc1_bias = state[src + "mlp.linear_fc1.bias"]
            out |= {
                dst + "mlp.gate_proj.bias": fc1_bias[:ffn].contiguous(),
                dst + "mlp.up_proj.bias": fc1_bias[ffn:].contiguous(),
                dst + "mlp.down_proj.bias": state[src + "mlp.linear_fc2.bias"],
            }
    return config, out


def _to_gpt_neox(state: State, cfg: ModelConfig, target: ExportTarget) -> tuple[object, State]:
    from transformers import GPTNeoXConfig

    config = GPTNeoXConfig(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.ffn_size,
        hidden_act="gelu",
        rope_parameters=_rope(cfg, partial_rotary_factor=1.0),
        max_position_embeddings=cfg.seq_length,
        layer_norm_eps=cfg.layernorm_epsilon,
        use_parallel_residual=False,
        attention_bias=cfg.add_bias_linear,
        hidden_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout,
        initializer_range=cfg.init_method_std,
        **_common_kwargs(cfg, target),
    )
    h = cfg.hidden_size
    embedding, output = _vocab_rows(state, cfg, target)
    out: State = {
        "gpt_neox.embed_in.weight": embedding,
        "gpt_neox.final_layer_norm.weight": state["final_norm.weight"],
        "gpt_neox.final_layer_norm.bias": state["final_norm.bias"],
        "lm_head.weight": output,
    }
    for i in range(cfg.num_layers):
        src, dst = f"layers.{i}.", f"gpt_neox.layers.{i}."
        fc1 = state[src + "mlp.linear_fc1.weight"]
        # With one query group per head, megatron's per-group [q, k, v] rows are NeoX's
        # per-head [q, k, v] rows: copied unchanged.
        out |= {
            dst + "input_layernorm.weight": state[src + "input_layernorm.weight"],
            dst + "input_layernorm.bias": state[src + "input_layernorm.bias"],
            dst + "post_attention_layernorm.weight": state[src + "pre_mlp_layernorm.weight"],
            dst + "post_attention_layernorm.bias": state[src + "pre_mlp_layernorm.bias"],
            dst + "attention.query_key_value.weight": state[
                src + "self_attention.linear_qkv.weight"
            ],
            dst + "attention.dense.weight": state[src + "self_attention.linear_proj.weight"],
            dst + "mlp.dense_h_to_4h.weight": fc1,
            dst + "mlp.dense_h_to_4h.bias": _bias(
                state, src + "mlp.linear_fc1.bias", cfg.ffn_size, fc1
            ),
            dst + "mlp.dense_4h_to_h.weight": state[src + "mlp.linear_fc2.weight"],
            dst + "mlp.dense_4h_to_h.bias": _bias(state, src + "mlp.linear_fc2.bias", h, fc1),
        }
        if cfg.add_bias_linear:
            out[dst + "attention.query_key_value.bias"] = state[
                src + "self_attention.linear_qkv.bias"
            ]
            out[dst + "attention.dense.bias"] = state[src + "self_attention.linear_proj.bias"]
    return config, out


def _to_starcoder2(state: State, cfg: ModelConfig, target: ExportTarget) -> tuple[object, State]:
    from transformers import Starcoder2Config

    config = Starcoder2Config(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.query_groups,
        hidden_act="gelu",
        max_position_embeddings=cfg.seq_length,
        norm_epsilon=cfg.layernorm_epsilon,
        rope_parameters=_rope(cfg),
        sliding_window=None,
        use_bias=cfg.add_bias_linear,
        residual_dropout=cfg.hidden_dropout,
        embedding_dropout=0.0,
        attention_dropout=cfg.attention_dropout,
        initializer_range=cfg.init_method_std,
        **_common_kwargs(cfg, target),
    )
    embedding, output = _vocab_rows(state, cfg, target)
    out: State = {
        "model.embed_tokens.weight": embedding,
        "model.norm.weight": state["final_norm.weight"],
        "model.norm.bias": state["final_norm.bias"],
        "lm_head.weight": output,
    }
    for i in range(cfg.num_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        out |= _attention_projections(state, cfg, src, dst + "self_attn.")
        out |= {
            dst + "input_layernorm.weight": state[src + "input_layernorm.weight"],
            dst + "input_layernorm.bias": state[src + "input_layernorm.bias"],
            dst + "post_attention_layernorm.weight": state[src + "pre_mlp_layernorm.weight"],
            dst + "post_attention_layernorm.bias": state[src + "pre_mlp_layernorm.bias"],
            dst + "mlp.c_fc.weight": state[src + "mlp.linear_fc1.weight"],
            dst + "mlp.c_proj.weight": state[src + "mlp.linear_fc2.weight"],
        }
        if cfg.add_bias_linear:
            out[dst + "mlp.c_fc.bias"] = state[src + "mlp.linear_fc1.bias"]
            out[dst + "mlp.c_proj.bias"] = state[src + "mlp.linear_fc2.bias"]
    return config, out


ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        Architecture("gpt2", "GPT2LMHeadModel", "learned_absolute", "LayerNorm", "gelu", False, _to_gpt2),
        Architecture("llama", "LlamaForCausalLM", "rope", "RMSNorm", "swiglu", True, _to_llama),
        Architecture("gpt_neox", "GPTNeoXForCausalLM", "rope", "LayerNorm", "gelu", False, _to_gpt_neox),
        Architecture("starcoder2", "Starcoder2ForCausalLM", "rope", "LayerNorm", "gelu", True, _to_starcoder2),
    )
}  # fmt: skip
