"""Portable megatron-core pieces: SDPA core attention, device-keeping RoPE, layer specs.

Stock megatron-core allocates on ``torch.cuda.current_device()`` in two places that a GPT
with the local layer spec reaches: ``DotProductAttention`` (its score buffer) and
``RotaryEmbedding.get_emb`` (moves ``inv_freq`` to the GPU). The two classes here replace
them and run unchanged on CPU and GPU.
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide

from megagrape.model.config import ModelConfig


class PortableDotProductAttention(MegatronModule):
    """megatron-core core attention on ``torch.nn.functional.scaled_dot_product_attention``.

    Drop-in for ``DotProductAttention`` in a layer spec (same constructor and forward).
    Inputs ``query`` [s, b, heads/tp, d], ``key``/``value`` [s, b, groups/tp, d] (GQA when
    groups < heads); output [s, b, heads/tp * d]. ``attention_mask`` follows megatron's
    convention (bool, True = masked out, broadcastable to [b, heads, s, s]); None with a
    causal mask type means causal attention. Attention dropout is drawn inside megatron's
    model-parallel RNG fork, so tensor-parallel ranks (which hold different heads) draw
    different masks, as megatron's own core attention does.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: ProcessGroupCollection | None = None,
    ) -> None:
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("PortableDotProductAttention does not support context parallelism")
        if config.softmax_type != "vanilla":
            raise ValueError(f"softmax_type {config.softmax_type!r} is not supported")
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        tp_size = pg_collection.tp.size()
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.heads_per_partition = divide(config.num_attention_heads, tp_size)
        self.query_groups_per_partition = divide(config.num_query_groups, tp_size)
        self.head_dim = config.kv_channels
        self.softmax_scale = (
            1.0 / math.sqrt(self.head_dim) if softmax_scale is None else softmax_scale
        )
        self.dropout_p = (
            config.attention_dropout if attention_dropout is None else attention_dropout
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: PackedSeqParams | None = None,
    ) -> torch.Tensor:
        if packed_seq_params is not None:
            raise ValueError("packed sequences need the Transformer Engine attention")
        if attention_bias is not None:
            raise ValueError("attention_bias is not supported by PortableDotProductAttention")
        mask_type = self.attn_mask_type if attn_mask_type is None else attn_mask_type
        # [s, b, n, d] -> [b, n, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        attn_mask = None if attention_mask is None else ~attention_mask.to(torch.bool)
        is_causal = attn_mask is None and mask_type == AttnMaskType.causal
        dropout_p = self.dropout_p if self.training else 0.0
        kwargs = dict(
            attn_mask=attn_mask,
            dropout_p=dropout_p,
            is_causal=is_causal,
            scale=self.softmax_scale,
            enable_gqa=self.query_groups_per_partition != self.heads_per_partition,
        )
        if dropout_p > 0.0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                context = F.scaled_dot_product_attention(q, k, v, **kwargs)
        else:
            context = F.scaled_dot_product_attention(q, k, v, **kwargs)
        # [b, n, s, d] -> [s, b, n * d]
        s, b = query.shape[0], query.shape[1]
        return context.permute(2, 0, 1, 3).reshape(s, b, self.heads_per_partition * self.head_dim)


class PortableRotaryEmbedding(RotaryEmbedding):
    """megatron's RotaryEmbedding whose frequencies stay on the device they were made on.

    Built with ``use_cpu_initialization=True`` they live on the CPU (CPU runs), otherwise on
    the current GPU; the stock ``get_emb`` would move them to ``torch.cuda.current_device()``.
    The (lru-cached) ``forward`` is inherited: it returns [s, 1, 1, d] angles.
    """

    def get_emb(self, max_seq_len: int, offset: int = 0) -> torch.Tensor:
        freqs = self.get_freqs_non_repeated(max_seq_len, offset)
        if self.rotary_interleaved:
            emb = torch.stack((freqs.view(-1, 1), freqs.view(-1, 1)), dim=-1).view(
                freqs.shape[0], -1
            )
        else:
            emb = torch.cat((freqs, freqs), dim=-1)
        return emb[:, None, None, :]


def make_rotary_embedding(tcfg: TransformerConfig, cfg: ModelConfig) -> PortableRotaryEmbedding:
    """The RoPE module for a model of ``cfg`` (no parameters; one per pipeline stage)."""
    return PortableRotaryEmbedding(
        kv_channels=tcfg.kv_channels,
        rotary_percent=1.0,
        rotary_base=cfg.rotary_base,
        use_cpu_initialization=tcfg.use_cpu_initialization,
    )


def transformer_engine_available() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def uses_transformer_engine(cfg: ModelConfig, device: torch.device) -> bool:
    """Whether the Transformer Engine layer spec is used for ``cfg`` on ``device``."""
    if cfg.transformer_impl == "local":
        return False
    if cfg.transformer_impl == "transformer_engine":
        return True
    return device.type == "cuda" and transformer_engine_available()


def _leave_unset(weight: torch.Tensor) -> torch.Tensor:
    """megatron init method that draws nothing (megagrape.model.init sets the values)."""
    return weight


def transformer_config(
    cfg: ModelConfig, tp_size: int, device: torch.device, dtype: torch.dtype
) -> TransformerConfig:
    """megatron TransformerConfig for ``cfg``; pipeline stages are DeepSpeed's, so PP = 1 here.

    megatron's initialisation runs (it is what marks tensor-parallel weights with
    ``tensor_model_parallel`` / ``partition_dim`` / ``partition_stride``) with init methods
    that leave the weights untouched: megagrape.model.init writes every value afterwards.
    """
    swiglu = cfg.activation == "swiglu"
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        ffn_hidden_size=cfg.ffn_size,
        kv_channels=cfg.hidden_size // cfg.num_attention_heads,
        tensor_model_parallel_size=tp_size,
        pipeline_model_parallel_size=1,
        hidden_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout,
        normalization=cfg.normalization,
        layernorm_epsilon=cfg.layernorm_epsilon,
        gated_linear_unit=swiglu,
        activation_func=F.silu if swiglu else F.gelu,
        add_bias_linear=cfg.add_bias_linear,
        init_method_std=cfg.init_method_std,
        init_method=_leave_unset,
        output_layer_init_method=_leave_unset,
        embedding_init_method=_leave_unset,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=device.type == "cpu",
        perform_initialization=True,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
    )


def norm_class(cfg: ModelConfig, device: torch.device) -> type:
    """LayerNorm/RMSNorm class (chosen by ``TransformerConfig.normalization``): TE's fused norm
    with Transformer Engine, else torch's (apex's FusedLayerNorm would tie CPU runs to CUDA)."""
    if uses_transformer_engine(cfg, device):
        from megatron.core.extensions.transformer_engine import TENorm

        return TENorm
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    return WrappedTorchNorm


def layer_spec(cfg: ModelConfig, device: torch.device) -> ModuleSpec:
    """TransformerLayer spec: Transformer Engine's where selected, else megatron's local spec
    with the portable core attention and torch norms."""
    from megatron.core.models.gpt import gpt_layer_specs

    if uses_transformer_engine(cfg, device):
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization=cfg.normalization)
    spec.submodules.self_attention.submodules.core_attention = PortableDotProductAttention
    spec.submodules.input_layernorm = norm_class(cfg, device)
    spec.submodules.pre_mlp_layernorm = norm_class(cfg, device)
    return spec
