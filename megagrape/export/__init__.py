"""Hugging Face transformers export of a trained megagrape model (tools/export_hf.py).

    from megagrape.export import export_hf
    result = export_hf(Path("runs/qs/checkpoints/step_000200"), run_cfg.model, Path("hf/qs"),
                       tokenizer_path=Path("data/quickstart/tokenizer"))
    AutoModelForCausalLM.from_pretrained("hf/qs")    # GPTNeoXForCausalLM for the quickstart

Steps: pick the HF architecture that computes exactly what the megagrape model computes
(megagrape.export.architectures: GPT-2, Llama, GPT-NeoX or Starcoder2; a ConfigError names
the fields when none fits), export the tokenizer (megagrape.export.tokenizer), read the
checkpoint and merge its tensor-parallel shards (megagrape.export.checkpoint), drop the
vocabulary padding rows (the HF model has exactly the tokenizer's ids), map the weights and
save with ``save_pretrained`` (safetensors). ``megagrape_export.json`` in the output records
where the model came from. megagrape.export.verify compares the exported model's logits with
megatron's on the same weights.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from megagrape.errors import ConfigError
from megagrape.export.architectures import ARCHITECTURES, ExportTarget, choose_architecture
from megagrape.export.checkpoint import detect_layout, read_full_state
from megagrape.export.tokenizer import convert_tokenizer
from megagrape.model.config import ModelConfig

__all__ = ["ARCHITECTURES", "ExportResult", "export_hf", "hf_model_from_state"]

PROVENANCE_FILE = "megagrape_export.json"


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    architecture: str
    """Key of megagrape.export.architectures.ARCHITECTURES, e.g. "gpt_neox"."""
    hf_class: str
    vocab_size: int
    """Rows of the exported embedding (the tokenizer's ids)."""
    padded_vocab_size: int
    """Rows in the checkpoint (megatron's padding included)."""
    tensor_parallel: int
    layout: str
    """Checkpoint layout read: "module", "zero3" or "pipeline"."""
    dtype: torch.dtype
    state: dict[str, torch.Tensor]
    """The merged megagrape weights as exported (canonical names, padded vocabulary, ``dtype``)."""


def hf_model_from_state(hf_config, hf_state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A transformers causal LM of ``hf_config`` holding exactly ``hf_state`` (no random init:
    the model is built on the meta device and the tensors are assigned)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(hf_state)), sorted(set(hf_state) - expected)
    if missing or unexpected:
        raise RuntimeError(
            f"{type(model).__name__}: weight mapping incomplete (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    model.load_state_dict(hf_state, strict=True, assign=True)
    return model


def export_hf(
    checkpoint_dir: Path,
    cfg: ModelConfig,
    out_dir: Path,
    tokenizer_path: Path | None = None,
    architecture: str = "auto",
    dtype: torch.dtype | None = None,
) -> ExportResult:
    """Convert the checkpoint ``checkpoint_dir`` of a model of ``cfg`` into ``out_dir``.

    tokenizer_path: a megagrape tokenizer (directory, tokenizer.json or .tiktoken); it is
    exported next to the model, sets the vocabulary kept (its size) and bos/eos/pad (its eod;
    pad in the tokenizer and generation_config.json). None: no tokenizer, ``cfg.vocab_size``
    rows, no bos/eos/pad ids.
    Nothing is written into ``out_dir`` until the checkpoint and the tokenizer have been read,
    checked and converted; the files are then written to a hidden sibling directory and moved
    in with the mode a new file gets (0644 under a 022 umask).
    dtype: cast floating-point weights (default: as saved, e.g. float32, or bfloat16 after
    bf16 training).
    """
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    cfg.validate()
    arch = choose_architecture(cfg, architecture)
    layout = detect_layout(checkpoint_dir)
    tokenizer = None
    if tokenizer_path is None:
        target = ExportTarget(vocab_size=cfg.vocab_size, eod_id=None)
    else:
        tokenizer = convert_tokenizer(Path(tokenizer_path), cfg.seq_length)
        vocab_size = tokenizer.megagrape.vocab_size
        if vocab_size > cfg.vocab_size:
            raise ConfigError(
                f"--tokenizer {tokenizer_path}: {vocab_size} ids but model.vocab_size = "
                f"{cfg.vocab_size}; give the tokenizer the run was trained with"
            )
        target = ExportTarget(vocab_size=vocab_size, eod_id=tokenizer.megagrape.eod)
    state = read_full_state(checkpoint_dir, cfg)
    if dtype is not None:
        state = {name: t.to(dtype) if t.is_floating_point() else t for name, t in state.items()}
    hf_config, hf_state = arch.convert(state, cfg, target)
    model = hf_model_from_state(hf_config, hf_state)
    if target.eod_id is not None:
        # generate()'s padding for batches; config.pad_token_id stays None: Llama and
        # Starcoder2 make it the embedding's padding_idx, a row fine-tuning would never update.
        model.generation_config.pad_token_id = target.eod_id
    padded = state["word_embeddings.weight"].shape[0]
    result = ExportResult(
        out_dir=out_dir,
        architecture=arch.name,
        hf_class=arch.hf_class,
        vocab_size=target.vocab_size,
        padded_vocab_size=padded,
        tensor_parallel=layout.tensor_parallel,
        layout=layout.kind,
        dtype=state["word_embeddings.weight"].dtype,
        state=state,
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-") as tmp:
        staging = Path(tmp)
        model.save_pretrained(str(staging))
        if tokenizer is not None:
            tokenizer.save(staging)
        _write_provenance(staging, result, checkpoint_dir, tokenizer_path)
        _publish(staging, out_dir)
    return result


def _publish(staging: Path, out_dir: Path) -> None:
    """Move every file of ``staging`` into ``out_dir`` with the mode a new file gets there.

    safetensors writes ``model.safetensors`` with mode 0600; exported files are for others to
    read, so each gets what ``open()`` gives a new file: 0666 under the umask (0644 under 022),
    found by creating one.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    probe = staging / ".mode-probe"
    os.close(os.open(probe, os.O_CREAT | os.O_WRONLY, 0o666))
    mode = stat.S_IMODE(probe.stat().st_mode)
    probe.unlink()
    for path in sorted(staging.iterdir()):
        path.chmod(mode)
        os.replace(path, out_dir / path.name)


def _write_provenance(
    directory: Path, result: ExportResult, checkpoint_dir: Path, tokenizer: Path | None
) -> None:
    record = {
        "checkpoint": str(checkpoint_dir.resolve()),
        "tokenizer": None if tokenizer is None else str(Path(tokenizer).resolve()),
        "architecture": result.architecture,
        "hf_class": result.hf_class,
        "vocab_size": result.vocab_size,
        "padded_vocab_size": result.padded_vocab_size,
        "checkpoint_layout": result.layout,
        "tensor_parallel": result.tensor_parallel,
        "dtype": str(result.dtype).removeprefix("torch."),
    }
    (directory / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
