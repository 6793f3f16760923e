"""ModelConfig: the GPT architecture, its validation, parameter count and FLOPs per token."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from megagrape.errors import ConfigError

if TYPE_CHECKING:
    from megagrape.parallel import ParallelConfig

POSITION_EMBEDDINGS = ("rope", "learned_absolute")
NORMALIZATIONS = ("LayerNorm", "RMSNorm")
ACTIVATIONS = ("gelu", "swiglu")
TRANSFORMER_IMPLS = ("auto", "local", "transformer_engine")


@dataclass
class ModelConfig:
    """A decoder-only GPT (megatron-core GPTModel). Defaults: GPT-2 small with RoPE."""

    num_layers: int = 12
    """Transformer layers (Megatron's --num-layers)."""
    hidden_size: int = 768
    """Model width: embedding and residual stream size."""
    num_attention_heads: int = 12
    """Query heads; must divide hidden_size and be a multiple of parallel.tensor_parallel."""
    num_query_groups: int | None = None
    """Key/value heads for grouped-query attention; None = one per attention head."""
    ffn_hidden_size: int | None = None
    """MLP inner width; None = 4 * hidden_size (for swiglu too: each of gate/up has it)."""
    seq_length: int = 1024
    """Tokens per sample (also the size of the learned position table)."""
    vocab_size: int = 50257
    """Tokenizer vocabulary; the embedding is padded to padded_vocab_size(tp)."""
    make_vocab_size_divisible_by: int = 128
    """Pad the embedding to a multiple of this times tensor_parallel (Megatron's rule)."""
    position_embedding: str = "rope"
    """rope (rotary) or learned_absolute (a learned table of seq_length positions)."""
    rotary_base: int = 10000
    """RoPE base frequency theta."""
    normalization: str = "LayerNorm"
    """LayerNorm or RMSNorm."""
    layernorm_epsilon: float = 1e-5
    """Epsilon of every normalisation layer."""
    activation: str = "gelu"
    """MLP activation: gelu, or swiglu (gated; two input projections)."""
    add_bias_linear: bool = True
    """Biases on every linear layer (GPT-2 style); false for Llama style."""
    hidden_dropout: float = 0.0
    """Dropout probability on the residual branches."""
    attention_dropout: float = 0.0
    """Dropout probability on the attention weights."""
    init_method_std: float = 0.02
    """Standard deviation of the normal weight initialisation."""
    tie_embeddings: bool = True
    """Share the input embedding with the output layer."""
    transformer_impl: str = "auto"
    """auto: Transformer Engine layers when importable on CUDA, else megatron's local layers;
    local: always megatron's local layers; transformer_engine: require TE."""

    @property
    def ffn_size(self) -> int:
        return 4 * self.hidden_size if self.ffn_hidden_size is None else self.ffn_hidden_size

    @property
    def query_groups(self) -> int:
        return self.num_attention_heads if self.num_query_groups is None else self.num_query_groups

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def padded_vocab_size(self, tp: int) -> int:
        """Megatron's rule: round vocab_size up to a multiple of make_vocab_size_divisible_by * tp."""
        multiple = self.make_vocab_size_divisible_by * tp
        return math.ceil(self.vocab_size / multiple) * multiple

    def validate(self, parallel: ParallelConfig | None = None) -> None:
        """Raise ConfigError naming the field, its value and what is allowed."""
        for name in (
            "num_layers",
            "hidden_size",
            "num_attention_heads",
            "seq_length",
            "vocab_size",
            "make_vocab_size_divisible_by",
            "rotary_base",
        ):
            _require_positive_int(name, getattr(self, name))
        for name in ("num_query_groups", "ffn_hidden_size"):
            if getattr(self, name) is not None:
                _require_positive_int(name, getattr(self, name))
        _require_choice("position_embedding", self.position_embedding, POSITION_EMBEDDINGS)
        _require_choice("normalization", self.normalization, NORMALIZATIONS)
        _require_choice("activation", self.activation, ACTIVATIONS)
        _require_choice("transformer_impl", self.transformer_impl, TRANSFORMER_IMPLS)
        for name in ("hidden_dropout", "attention_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"model.{name} = {value!r}: must be a number in [0, 1)")
        for name in ("init_method_std", "layernorm_epsilon"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"model.{name} = {value!r}: must be a number > 0")
        for name in ("add_bias_linear", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"model.{name} = {getattr(self, name)!r}: must be true or false")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ConfigError(
                f"model.hidden_size = {self.hidden_size} is not divisible by "
                f"model.num_attention_heads = {self.num_attention_heads}: choose a head count "
                f"that divides the hidden size"
            )
        if self.position_embedding == "rope" and self.head_dim % 2 != 0:
            raise ConfigError(
                f"model.position_embedding = 'rope' needs an even head size, got "
                f"hidden_size / num_attention_heads = {self.head_dim}"
            )
        if self.num_attention_heads % self.query_groups != 0:
            raise ConfigError(
                f"model.num_query_groups = {self.num_query_groups} does not divide "
                f"model.num_attention_heads = {self.num_attention_heads}: allowed values are "
                f"the divisors of the head count (or null for one group per head)"
            )
        if (
            self.transformer_impl == "transformer_engine"
            and importlib.util.find_spec("transformer_engine") is None
        ):
            raise ConfigError(
                "model.transformer_impl = 'transformer_engine' but transformer_engine is "
                "not importable: install it or use 'auto' / 'local'"
            )
        if parallel is not None:
            self._validate_parallel(parallel.tensor_parallel, parallel.pipeline_parallel)

    def _validate_parallel(self, tp: int, pp: int) -> None:
        divisible = [
            ("num_attention_heads", self.num_attention_heads, tp, "parallel.tensor_parallel"),
            ("num_query_groups", self.query_groups, tp, "parallel.tensor_parallel"),
            ("ffn_hidden_size", self.ffn_size, tp, "parallel.tensor_parallel"),
            ("num_layers", self.num_layers, pp, "parallel.pipeline_parallel"),
        ]
        for field_name, value, size, parallel_field in divisible:
            if value % size != 0:
                defaulted = field_name == "ffn_hidden_size" and self.ffn_hidden_size is None
                shown = "(default 4 * hidden_size) " if defaulted else ""
                raise ConfigError(
                    f"model.{field_name} = {value} {shown}is not divisible by {parallel_field} "
                    f"= {size}: every rank must hold the same share; choose a multiple of "
                    f"{size} or change {parallel_field}"
                )

    def layer_parameters(self) -> int:
        """Parameters of one transformer layer (full, not per tensor-parallel rank)."""
        h, ffn = self.hidden_size, self.ffn_size
        qkv_out = (self.num_attention_heads + 2 * self.query_groups) * self.head_dim
        fc1_out = 2 * ffn if self.activation == "swiglu" else ffn
        weights = qkv_out * h + self.num_attention_heads * self.head_dim * h + fc1_out * h + ffn * h
        biases = (qkv_out + h + fc1_out + h) if self.add_bias_linear else 0
        return weights + biases + 2 * self._norm_parameters()

    def _norm_parameters(self) -> int:
        return 2 * self.hidden_size if self.normalization == "LayerNorm" else self.hidden_size

    def num_parameters(self, tp: int = 1) -> int:
        """Parameters of the whole model as built (embedding padded for ``tp``), counted once."""
        vocab = self.padded_vocab_size(tp) * self.hidden_size
        positions = (
            self.seq_length * self.hidden_size
            if self.position_embedding == "learned_absolute"
            else 0
        )
        output = 0 if self.tie_embeddings else vocab
        return (
            vocab
            + positions
            + self.num_layers * self.layer_parameters()
            + self._norm_parameters()
            + output
        )

    def flops_per_token(self, tp: int = 1) -> float:
        """Training FLOPs per token (forward + backward, no recomputation) for MFU.

        The PaLM/Megatron convention: 6 FLOPs per matmul weight (every linear layer and the
        output projection onto the padded vocabulary) plus 12 * layers * heads * head_dim *
        seq_length for the attention score and value products (no causal discount).
        """
        h = self.hidden_size
        qkv_out = (self.num_attention_heads + 2 * self.query_groups) * self.head_dim
        fc1_out = 2 * self.ffn_size if self.activation == "swiglu" else self.ffn_size
        layer_matmul = (
            qkv_out * h
            + self.num_attention_heads * self.head_dim * h
            + (fc1_out + self.ffn_size) * h
        )
        matmul_weights = self.num_layers * layer_matmul + self.padded_vocab_size(tp) * h
        attention = (
            12 * self.num_layers * self.num_attention_heads * self.head_dim * self.seq_length
        )
        return float(6 * matmul_weights + attention)


def _require_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"model.{name} = {value!r}: must be an integer >= 1")


def _require_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"model.{name} = {value!r}: allowed values are {', '.join(allowed)}")
