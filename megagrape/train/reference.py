"""DoReMi's reference model: a frozen copy of an earlier run, scored on every training micro-batch.

The excess loss of a sample is the token mean of max(l_theta - l_ref, 0) over its loss mask
(the DoReMi reference rule); the trainer sums it per domain between reweighting events.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from megagrape.errors import ConfigError
from megagrape.model import build_model, token_losses
from megagrape.train import checkpoint as ckpt
from megagrape.utils.safe_load import safe_torch_load

FIELD = "mixture.reference_checkpoint"


def check_reference_checkpoint(
    method: str,
    checkpoint: str,
    tokenizer_fingerprint: str,
    tensor_parallel: int,
    pipeline_parallel: int,
) -> Path:
    """Check ``mixture.reference_checkpoint`` before any model is built; returns its path.

    ConfigError when it is unset, incomplete, made with another tokenizer, or with another
    tensor-parallel size, or when the run is pipeline-parallel.
    """
    if not checkpoint:
        raise ConfigError(
            f"mixture.method={method} needs {FIELD}: train a reference run first (e.g. "
            "mixture.method=static on the same data) and point to one of its checkpoints/step_N"
        )
    if pipeline_parallel > 1:
        raise ConfigError(
            f"mixture.method={method} ({FIELD}) is not supported with "
            "parallel.pipeline_parallel > 1: the reference model scores the training micro-batches, "
            "which DeepSpeed's pipeline engine does not expose"
        )
    path = Path(checkpoint)
    reason = ckpt.verify_checkpoint(path)
    if reason is not None:
        raise ConfigError(
            f"{FIELD}={checkpoint!r} is not a complete megagrape checkpoint: {reason}"
        )
    state = json.loads((path / ckpt.STATE_FILE).read_text())
    theirs = state.get("tokenizer_fingerprint")
    if theirs != tokenizer_fingerprint:
        raise ConfigError(
            f"{FIELD}={checkpoint!r} was trained with a different tokenizer (fingerprint {theirs}, this "
            f"run uses {tokenizer_fingerprint}): DoReMi's excess loss compares per-token losses, so the "
            "reference must share this run's vocabulary"
        )
    for tp_rank in range(tensor_parallel):
        model_file = path / f"mp_rank_{tp_rank:02d}_model_states.pt"
        if not model_file.is_file():
            raise ConfigError(
                f"{FIELD}={checkpoint!r} has no {model_file.name}: it was written with a different "
                f"tensor-parallel size than this run's {tensor_parallel}"
            )
    return path


class ReferenceModel:
    """Frozen model loaded from ``checkpoint`` (a step_N directory written by megagrape)."""

    def __init__(self, cfg, env, checkpoint: str, tokenizer_fingerprint: str) -> None:
        path = check_reference_checkpoint(
            cfg.mixture.method, checkpoint, tokenizer_fingerprint, env.tp_size, env.pp_size
        )
        model_file = path / f"mp_rank_{env.tp_rank:02d}_model_states.pt"
        self.model = build_model(cfg.model, env)
        ckpt.check_model_shapes(self.model, path)
        saved = safe_torch_load(model_file)["module"]
        self.model.load_state_dict(saved, strict=True)
        self.model.to(env.device).eval()
        for param in self.model.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def excess_losses(
        self, batch: dict[str, torch.Tensor], token_loss: torch.Tensor
    ) -> torch.Tensor:
        """[b] per-sample token mean of max(token_loss - reference token loss, 0) over loss_mask."""
        reference = token_losses(self.model, batch).float()
        mask = batch["loss_mask"]
        excess = (token_loss.float() - reference).clamp(min=0) * mask
        return excess.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
