"""PP > 1: a DeepSpeed PipelineModule whose stages are megatron-core pieces (GPTModelPipe-style).

Layer list (DeepSpeed partitions it with ``partition_method="type:TransformerLayerPipe"``,
so every stage gets num_layers / PP transformer layers; the embedding lands on the first
stage, the final norm and the output head on the last):

    EmbeddingPipe          (tokens, position_ids) -> hidden [S, B, H]
    TransformerLayerPipe   hidden [S, B, H] -> hidden [S, B, H]        (x num_layers)
    FinalNormPipe          hidden -> hidden
    OutputHeadPipe         hidden -> logits [S, B, padded_vocab / TP]  (vocab-parallel)

then ``loss_fn(logits, (labels, loss_mask))`` = masked mean token loss.

Batches for ``engine.train_batch(data_iter)`` / ``eval_batch``: each ``next(data_iter)``
is one micro-batch ``((tokens, position_ids), (labels, loss_mask))`` with tokens, labels,
position_ids int64 [B, S] and loss_mask float32 [B, S] (``pipeline_batch`` builds it from
a GPTDataset-style dict). Only first- and last-stage ranks read the iterator.

Tied embeddings: the word embedding (first stage) and the output head weight (last stage)
are one ``TiedLayerSpec`` key ``"embed"``; DeepSpeed starts them equal (broadcast from the
first stage) and sums their gradients over the tied group before each optimizer step. The
last stage's copy carries ``ds_pipe_replicated = True`` (count it once).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from megatron.core import tensor_parallel
from megatron.core.models.common.embeddings.language_model_embedding import (
    LanguageModelEmbedding,
)
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig

from megagrape.model.config import ModelConfig
from megagrape.model.init import canonical_layer_name
from megagrape.model.layers import layer_spec, make_rotary_embedding, norm_class, transformer_config
from megagrape.model.losses import masked_mean
from megagrape.parallel import DistEnv, pipeline_topology

TIED_EMBEDDING_KEY = "embed"


class EmbeddingPipe(MegatronModule):
    """(tokens [B, S], position_ids [B, S]) -> embeddings [S, B, H] (megatron's embedding)."""

    def __init__(self, tcfg: TransformerConfig, cfg: ModelConfig, padded_vocab: int) -> None:
        super().__init__(config=tcfg)
        self.embedding = LanguageModelEmbedding(
            config=tcfg,
            vocab_size=padded_vocab,
            max_sequence_length=cfg.seq_length,
            position_embedding_type=cfg.position_embedding,
        )

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        tokens, position_ids = inputs
        return self.embedding(input_ids=tokens, position_ids=position_ids)

    @staticmethod
    def canonical_name(local_name: str) -> str:
        return local_name.removeprefix("embedding.")


class TransformerLayerPipe(MegatronModule):
    """One megatron TransformerLayer; computes its own RoPE angles from the sequence length."""

    def __init__(
        self, tcfg: TransformerConfig, cfg: ModelConfig, spec: ModuleSpec, layer_index: int
    ) -> None:
        super().__init__(config=tcfg)
        self.layer_index = layer_index
        self.layer = build_module(spec, config=tcfg, layer_number=layer_index + 1)
        self.rotary_pos_emb = (
            make_rotary_embedding(tcfg, cfg) if cfg.position_embedding == "rope" else None
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rotary = None if self.rotary_pos_emb is None else self.rotary_pos_emb(hidden.size(0))
        output, _ = self.layer(hidden_states=hidden, attention_mask=None, rotary_pos_emb=rotary)
        return output

    def canonical_name(self, local_name: str) -> str:
        return canonical_layer_name(self.layer_index, local_name.removeprefix("layer."))


class FinalNormPipe(MegatronModule):
    """The final LayerNorm/RMSNorm before the output head."""

    def __init__(self, tcfg: TransformerConfig, cfg: ModelConfig, device: torch.device) -> None:
        super().__init__(config=tcfg)
        self.final_layernorm = build_module(
            norm_class(cfg, device),
            config=tcfg,
            hidden_size=tcfg.hidden_size,
            eps=tcfg.layernorm_epsilon,
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.final_layernorm(hidden)

    @staticmethod
    def canonical_name(local_name: str) -> str:
        return "final_norm." + local_name.removeprefix("final_layernorm.")


class OutputHeadPipe(MegatronModule):
    """hidden [S, B, H] -> vocab-parallel logits [S, B, padded_vocab / TP]."""

    def __init__(
        self, tcfg: TransformerConfig, cfg: ModelConfig, padded_vocab: int, tied: bool
    ) -> None:
        super().__init__(config=tcfg)
        self.tied = tied
        self.output_layer = tensor_parallel.ColumnParallelLinear(
            tcfg.hidden_size,
            padded_vocab,
            config=tcfg,
            init_method=tcfg.init_method,
            bias=False,
            gather_output=False,
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits, _ = self.output_layer(hidden)
        return logits

    def canonical_name(self, local_name: str) -> str:
        if local_name != "output_layer.weight":
            raise RuntimeError(f"OutputHeadPipe parameter {local_name!r} has no canonical name")
        return "word_embeddings.weight" if self.tied else "output_layer.weight"


class PipelineLoss:
    """``loss_fn`` of the PipelineModule: masked mean of the per-token losses of a micro-batch.

    loss = sum(token_loss * loss_mask) / sum(loss_mask) (megatron's rule; fractional
    loss_mask values act as token weights of a self-normalised weighted mean). With
    ``record_token_losses`` on, the detached per-token losses [B, S] float32 of every
    micro-batch are kept (last stage only) until ``take_token_losses()``.

    With ``weighted_sum`` on (gradient capture, megagrape/train/gradient_sources.py) the loss
    mask carries token weights and the loss is their weighted sum, not a mean; each
    micro-batch's sum (float64 scalar) is kept until ``take_weighted_sums()``.
    """

    def __init__(self) -> None:
        self.record_token_losses = False
        self.weighted_sum = False
        self._recorded: list[torch.Tensor] = []
        self._weighted_sums: list[torch.Tensor] = []

    def __call__(
        self, logits: torch.Tensor, labels_and_mask: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        labels, loss_mask = labels_and_mask
        losses = tensor_parallel.vocab_parallel_cross_entropy(
            logits, labels.transpose(0, 1).contiguous()
        ).transpose(0, 1)
        if self.record_token_losses:
            self._recorded.append(losses.detach().float().contiguous().clone())
        if self.weighted_sum:
            total = (losses.float() * loss_mask).sum()
            self._weighted_sums.append(total.detach().double())
            return total
        return masked_mean(losses, loss_mask)

    def take_token_losses(self) -> list[torch.Tensor]:
        """The recorded per-micro-batch token losses, oldest first; clears the record."""
        recorded, self._recorded = self._recorded, []
        return recorded

    def take_weighted_sums(self) -> list[torch.Tensor]:
        """The per-micro-batch weighted sums of ``weighted_sum`` mode; clears the record."""
        sums, self._weighted_sums = self._weighted_sums, []
        return sums


def pipeline_batch(
    batch: dict[str, torch.Tensor],
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """GPTDataset-style dict -> ((tokens, position_ids), (labels, loss_mask))."""
    return (
        (batch["tokens"], batch["position_ids"]),
        (batch["labels"], batch["loss_mask"].float()),
    )


def build_pipeline_model(cfg: ModelConfig, env: DistEnv, dtype: torch.dtype) -> PipelineModule:
    """This stage's part of the pipeline (uninitialised weights; DeepSpeed moves it to device)."""
    tcfg = transformer_config(cfg, env.tp_size, env.device, dtype)
    spec = layer_spec(cfg, env.device)
    vocab = cfg.padded_vocab_size(env.tp_size)
    tied = cfg.tie_embeddings
    if tied:
        embedding = TiedLayerSpec(
            TIED_EMBEDDING_KEY,
            EmbeddingPipe,
            tcfg,
            cfg,
            vocab,
            tied_weight_attr=["embedding.word_embeddings.weight"],
        )
        head = TiedLayerSpec(
            TIED_EMBEDDING_KEY,
            OutputHeadPipe,
            tcfg,
            cfg,
            vocab,
            True,
            tied_weight_attr=["output_layer.weight"],
        )
    else:
        embedding = LayerSpec(EmbeddingPipe, tcfg, cfg, vocab)
        head = LayerSpec(OutputHeadPipe, tcfg, cfg, vocab, False)
    layers = [
        embedding,
        *(LayerSpec(TransformerLayerPipe, tcfg, cfg, spec, i) for i in range(cfg.num_layers)),
        LayerSpec(FinalNormPipe, tcfg, cfg, env.device),
        head,
    ]
    module = PipelineModule(
        layers=layers,
        topology=pipeline_topology(env),
        loss_fn=PipelineLoss(),
        partition_method=f"type:{TransformerLayerPipe.__name__}",
    )
    _check_stage_contents(module, env)
    return module


def _check_stage_contents(module: PipelineModule, env: DistEnv) -> None:
    kinds = {type(m) for m in module.forward_funcs if isinstance(m, torch.nn.Module)}
    kinds |= {type(m) for m in module.tied_modules.values()}
    if (EmbeddingPipe in kinds) != env.is_first_stage or (OutputHeadPipe in kinds) != (
        env.is_last_stage
    ):
        raise RuntimeError(
            f"pipeline partition {module.parts} puts the embedding or the output head on "
            f"stage {env.pp_rank} of {env.pp_size}"
        )


def pipeline_canonical_parameters(
    module: PipelineModule,
) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """(canonical name, parameter) for every parameter this stage holds."""
    stage_modules = [m for name, m in module.named_children() if name != "tied_modules"]
    stage_modules += list(module.tied_modules.values())
    for stage_module in stage_modules:
        for local_name, param in stage_module.named_parameters():
            yield stage_module.canonical_name(local_name), param


def pipeline_loss_fn(model) -> PipelineLoss:
    """The PipelineLoss of a pipeline model or of the DeepSpeed engine wrapping it."""
    module = getattr(model, "module", model)
    if not isinstance(module, PipelineModule) or not isinstance(module.loss_fn, PipelineLoss):
        raise TypeError("expected a megagrape pipeline model (pipeline_parallel > 1)")
    return module.loss_fn
