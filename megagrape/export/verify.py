"""Check an export: the HF model's logits against megatron's GPTModel on the same weights.

Both run in float32 on the CPU in this process. The megatron side is a single-process
(TP = 1, PP = 1) GPTModel (built over a world of one when no process group exists yet)
holding the exported weights (canonical state, padded vocabulary); its logits are compared
with the HF model's on the exported (unpadded) vocabulary. The whole model is held twice:
use it for models that fit in memory.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from megagrape.model.config import ModelConfig


def megatron_logits(
    state: dict[str, torch.Tensor], cfg: ModelConfig, tokens: torch.Tensor
) -> torch.Tensor:
    """Logits [B, S, padded vocab] float32 of a GPTModel holding ``state`` (canonical names).

    Needs a torch.distributed world of one with megatron's parallel state initialised
    (megagrape.parallel.init_distributed, as ``max_logit_difference`` does).
    """
    from megagrape.model import build_model
    from megagrape.model.gpt import gpt_canonical_parameters
    from megagrape.parallel import dist_env

    eval_cfg = dataclasses.replace(
        cfg,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        transformer_impl="local",
        vocab_size=state["word_embeddings.weight"].shape[0],
        make_vocab_size_divisible_by=1,
    )
    model = build_model(eval_cfg, dist_env())
    with torch.no_grad():
        for name, param in gpt_canonical_parameters(model):
            param.copy_(state[name].float())
        model.eval()
        positions = torch.arange(tokens.shape[1]).expand_as(tokens)
        return model(tokens, positions, None).float()


def hf_logits(out_dir: Path, tokens: torch.Tensor) -> torch.Tensor:
    """Logits [B, S, vocab] float32 of the exported model in ``out_dir``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(tokens).logits.float()


def max_logit_difference(
    out_dir: Path,
    state: dict[str, torch.Tensor],
    cfg: ModelConfig,
    vocab_size: int,
    batch_size: int = 2,
    seed: int = 0,
) -> float:
    """max |HF logits - megatron logits| over ``batch_size`` random sequences of
    ``cfg.seq_length`` tokens, on the first ``vocab_size`` ids.

    Starts a one-process gloo world for megatron when none is running, and tears it down after.
    """
    import torch.distributed as dist

    from megagrape import parallel

    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (batch_size, cfg.seq_length), generator=generator)
    started = not dist.is_initialized()
    if started:
        parallel.init_distributed(parallel.ParallelConfig(), seed=seed)
    try:
        with torch.random.fork_rng(devices=[]):
            reference = megatron_logits(state, cfg, tokens)[..., :vocab_size]
    finally:
        if started:
            parallel.destroy_distributed()
    return (hf_logits(out_dir, tokens) - reference).abs().max().item()
