"""Read a megagrape (DeepSpeed) checkpoint into one full, unsharded tensor per parameter.

The result maps canonical parameter names (megagrape.model.init: ``word_embeddings.weight``,
``layers.3.self_attention.linear_qkv.weight``, ``final_norm.bias``, ``output_layer.weight``
when untied, ...) to whole tensors as a single-process (TP = 1, PP = 1) model holds them;
the word embedding keeps its padded rows.

Layouts read (a checkpoint directory ``step_N`` written by ``engine.save_checkpoint``):

* PP = 1, ZeRO 0/1/2: ``mp_rank_<tp>_model_states.pt`` per tensor-parallel rank, whose
  ``"module"`` is that rank's GPTModel state_dict;
* PP = 1, ZeRO 3: ``zero_pp_rank_<dp>_mp_rank_<tp>_{model,optim}_states.pt``; the fp32 weights
  are rebuilt from the optimizer partitions with DeepSpeed's zero_to_fp32, one TP rank at a time;
* PP > 1: DeepSpeed pipeline layer files ``layer_<i>-model_<tp>-model_states.pt`` for the
  layer list of megagrape.model.pipeline (0 embedding, 1..L transformer layers, L+1 final
  norm, L+2 output head).

Every file is read with megagrape.utils.safe_load.safe_torch_load (weights_only=True and an
allow-list of DeepSpeed's classes), so a checkpoint handed to you cannot run code here.

Tensor-parallel shards are merged with megatron's layout: column-parallel weights and biases
(``linear_qkv``, ``linear_fc1``) and the vocab-parallel embedding / output head along dim 0,
row-parallel weights (``linear_proj``, ``linear_fc2``) along dim 1. ``linear_qkv`` is stored
per query group ([q heads of the group, k, v] blocks) and query groups are split evenly over
ranks, so a plain concatenation restores it; swiglu's ``linear_fc1`` holds [gate; up] on every
rank (stride 2), so the gate halves and the up halves are concatenated separately. Replicated
tensors (norms, row-parallel biases, position embeddings) must be equal on every rank.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from megagrape.errors import ConfigError, DataError
from megagrape.model.config import ModelConfig
from megagrape.model.init import canonical_layer_name
from megagrape.utils.safe_load import safe_torch_load

_MP_FILE = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")
_ZERO3_FILE = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_(\d+)_model_states\.pt$")
_LAYER_FILE = re.compile(r"^layer_(\d+)(?:-model_(\d+))?-model_states\.pt$")
_GPT_LAYER_KEY = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_GPT_TOP_LEVEL = {
    "embedding.word_embeddings.weight": "word_embeddings.weight",
    "embedding.position_embeddings.weight": "position_embeddings.weight",
    "decoder.final_layernorm.weight": "final_norm.weight",
    "decoder.final_layernorm.bias": "final_norm.bias",
    "output_layer.weight": "output_layer.weight",
}


@dataclass(frozen=True)
class CheckpointLayout:
    """What was found in a checkpoint directory."""

    kind: str
    """"module" (mp_rank files), "zero3" (partitioned fp32 weights) or "pipeline" (layer files)."""
    tensor_parallel: int
    pipeline_layers: int = 0
    """Number of pipeline layer files (0 unless kind == "pipeline")."""


def detect_layout(checkpoint_dir: Path) -> CheckpointLayout:
    """Which DeepSpeed layout ``checkpoint_dir`` holds; ConfigError when it holds none."""
    if not checkpoint_dir.is_dir():
        raise ConfigError(
            f"--checkpoint {checkpoint_dir}: not a directory; give a checkpoint directory such as "
            "RUN_DIR/checkpoints/step_000200"
        )
    names = [p.name for p in checkpoint_dir.iterdir()]
    layer_files = [m for m in map(_LAYER_FILE.match, names) if m]
    if layer_files:
        tp_ranks = {int(m.group(2) or 0) for m in layer_files}
        return CheckpointLayout(
            "pipeline",
            _consecutive(tp_ranks, checkpoint_dir, "layer_*-model_<rank>"),
            pipeline_layers=len({int(m.group(1)) for m in layer_files}),
        )
    mp_ranks = {int(m.group(1)) for m in map(_MP_FILE.match, names) if m}
    if mp_ranks:
        return CheckpointLayout("module", _consecutive(mp_ranks, checkpoint_dir, "mp_rank_<rank>"))
    zero3_ranks = {int(m.group(2)) for m in map(_ZERO3_FILE.match, names) if m}
    if zero3_ranks:
        return CheckpointLayout(
            "zero3", _consecutive(zero3_ranks, checkpoint_dir, "zero_pp_rank_*_mp_rank_<rank>")
        )
    raise ConfigError(
        f"--checkpoint {checkpoint_dir}: no DeepSpeed model files (mp_rank_00_model_states.pt, "
        "zero_pp_rank_0_mp_rank_00_model_states.pt or layer_00-model_00-model_states.pt); give a "
        "step_N directory written by tools/pretrain_grape.py"
    )


def _consecutive(ranks: set[int], checkpoint_dir: Path, pattern: str) -> int:
    if ranks != set(range(len(ranks))):
        raise ConfigError(
            f"--checkpoint {checkpoint_dir}: tensor-parallel ranks {sorted(ranks)} in the "
            f"{pattern} files are not 0..{len(ranks) - 1}: some files are missing"
        )
    return len(ranks)


def read_full_state(checkpoint_dir: Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Canonical name -> full tensor (TP shards merged), checked against ``cfg``'s shapes."""
    checkpoint_dir = Path(checkpoint_dir)
    layout = detect_layout(checkpoint_dir)
    if layout.kind == "pipeline":
        if layout.pipeline_layers != cfg.num_layers + 3:
            raise ConfigError(
                f"--checkpoint {checkpoint_dir}: {layout.pipeline_layers} pipeline layer files, "
                f"but model.num_layers = {cfg.num_layers} makes {cfg.num_layers + 3} (embedding, "
                "transformer layers, final norm, output head); is --config the run's config?"
            )
        shards = [
            _pipeline_rank_state(checkpoint_dir, cfg, tp_rank, layout.tensor_parallel)
            for tp_rank in range(layout.tensor_parallel)
        ]
    elif layout.kind == "zero3":
        shards = [
            _canonical_gpt_state(_zero3_rank_state(checkpoint_dir, tp_rank), checkpoint_dir)
            for tp_rank in range(layout.tensor_parallel)
        ]
    else:
        shards = [
            _canonical_gpt_state(_module_state(checkpoint_dir, tp_rank), checkpoint_dir)
            for tp_rank in range(layout.tensor_parallel)
        ]
    state = merge_tensor_parallel(shards, cfg, checkpoint_dir)
    check_shapes(state, cfg, checkpoint_dir)
    return state


def _load(path: Path) -> dict:
    """``path`` read with safe_torch_load (DataError for objects outside its allow-list)."""
    try:
        return safe_torch_load(path)
    except DataError:
        raise
    except Exception as exc:
        raise ConfigError(f"{path}: cannot be read as a torch checkpoint ({exc})") from exc


def _module_state(checkpoint_dir: Path, tp_rank: int) -> dict[str, torch.Tensor]:
    path = checkpoint_dir / f"mp_rank_{tp_rank:02d}_model_states.pt"
    saved = _load(path)
    module = saved.get("module") if isinstance(saved, dict) else None
    if not isinstance(module, dict):
        raise ConfigError(f"{path}: has no 'module' state_dict (not a DeepSpeed model file)")
    return module


def _zero3_rank_state(checkpoint_dir: Path, tp_rank: int) -> dict[str, torch.Tensor]:
    """fp32 weights of one TP rank rebuilt from its ZeRO-3 partitions (DeepSpeed's zero_to_fp32).

    zero_to_fp32 globs every ``*_model_states.pt`` / ``*_optim_states.pt`` of a directory, so
    the files of this TP rank are linked into a scratch directory first. It reads them with
    ``torch.load(weights_only=False)``, so each is read with safe_torch_load first: a file
    holding objects outside the allow-list is refused before zero_to_fp32 unpickles it.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    suffix = f"_mp_rank_{tp_rank:02d}_"
    files = [p for p in checkpoint_dir.iterdir() if suffix in p.name and p.name.startswith("zero")]
    for path in files:
        _load(path)
    with tempfile.TemporaryDirectory(prefix="megagrape_zero3_") as scratch:
        tag_dir = Path(scratch) / "tag"
        tag_dir.mkdir()
        for path in files:
            os.symlink(path.resolve(), tag_dir / path.name)
        try:
            state = get_fp32_state_dict_from_zero_checkpoint(scratch, tag="tag")
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(
                f"--checkpoint {checkpoint_dir}: ZeRO-3 weights of tensor-parallel rank {tp_rank} "
                f"cannot be rebuilt ({exc}); every zero_pp_rank_*{suffix}*_states.pt file is needed"
            ) from exc
    return {name: tensor.contiguous() for name, tensor in state.items()}


def _canonical_gpt_state(
    module: dict[str, torch.Tensor], checkpoint_dir: Path
) -> dict[str, torch.Tensor]:
    """GPTModel state_dict keys -> canonical names; ``_extra_state`` entries are dropped."""
    out = {}
    for key, tensor in module.items():
        if key.endswith("_extra_state") or not torch.is_tensor(tensor):
            continue
        match = _GPT_LAYER_KEY.match(key)
        if match:
            out[canonical_layer_name(int(match.group(1)), match.group(2))] = tensor
        elif key in _GPT_TOP_LEVEL:
            out[_GPT_TOP_LEVEL[key]] = tensor
        else:
            raise ConfigError(
                f"--checkpoint {checkpoint_dir}: tensor {key!r} is not part of a megagrape GPTModel"
            )
    return out


def _pipeline_rank_state(
    checkpoint_dir: Path, cfg: ModelConfig, tp_rank: int, tp: int
) -> dict[str, torch.Tensor]:
    """One TP rank's canonical state from the pipeline layer files."""
    rank_part = f"-model_{tp_rank:02d}"
    expected_layers = cfg.num_layers + 3
    out: dict[str, torch.Tensor] = {}
    for index in range(expected_layers):
        path = checkpoint_dir / f"layer_{index:02d}{rank_part}-model_states.pt"
        if not path.is_file():
            raise ConfigError(
                f"--checkpoint {checkpoint_dir}: {path.name} is missing; a pipeline checkpoint of "
                f"model.num_layers = {cfg.num_layers} has layer files 00..{expected_layers - 1:02d} "
                f"(embedding, {cfg.num_layers} transformer layers, final norm, output head) for "
                f"each of the {tp} tensor-parallel ranks; is --config the run's config?"
            )
        for key, tensor in _load(path).items():
            if key.endswith("_extra_state") or not torch.is_tensor(tensor):
                continue
            name = _pipeline_key(index, key, cfg)
            if name is None:
                raise ConfigError(
                    f"{path}: tensor {key!r} is not part of a megagrape pipeline layer"
                )
            if name:
                out[name] = tensor
    return out


def _pipeline_key(index: int, key: str, cfg: ModelConfig) -> str | None:
    """Canonical name of ``key`` in pipeline layer ``index``; "" for the tied output head's
    copy of the embedding (skipped); None when the key does not belong there."""
    if index == 0:
        return key.removeprefix("embedding.") if key.startswith("embedding.") else None
    if index <= cfg.num_layers:
        if not key.startswith("layer."):
            return None
        return canonical_layer_name(index - 1, key.removeprefix("layer."))
    if index == cfg.num_layers + 1:
        if not key.startswith("final_layernorm."):
            return None
        return "final_norm." + key.removeprefix("final_layernorm.")
    if key != "output_layer.weight":
        return None
    return "" if cfg.tie_embeddings else "output_layer.weight"


def partition_of(name: str, cfg: ModelConfig) -> tuple[int, int] | None:
    """(dim, stride) along which tensor parallelism splits ``name``; None when replicated."""
    if name in ("word_embeddings.weight", "output_layer.weight"):
        return 0, 1
    if re.search(r"linear_qkv\.(weight|bias)$", name):
        return 0, 1
    if re.search(r"linear_fc1\.(weight|bias)$", name):
        return 0, 2 if cfg.activation == "swiglu" else 1
    if re.search(r"(linear_proj|linear_fc2)\.weight$", name):
        return 1, 1
    return None


def merge_shards(shards: list[torch.Tensor], dim: int, stride: int) -> torch.Tensor:
    """Inverse of megagrape.model.init.shard_of: rank r holds chunks r, r + tp, ... of
    ``stride * tp`` equal chunks of the full tensor along ``dim``."""
    pieces = [torch.chunk(shard, stride, dim=dim) for shard in shards]
    return torch.cat([pieces[rank][j] for j in range(stride) for rank in range(len(shards))], dim)


def merge_tensor_parallel(
    shards: list[dict[str, torch.Tensor]], cfg: ModelConfig, checkpoint_dir: Path
) -> dict[str, torch.Tensor]:
    """Merge per-TP-rank canonical states into full tensors."""
    names = set(shards[0])
    for rank, shard in enumerate(shards[1:], start=1):
        if set(shard) != names:
            differing = sorted(names ^ set(shard))[:5]
            raise ConfigError(
                f"--checkpoint {checkpoint_dir}: tensor-parallel rank {rank} holds different "
                f"tensors than rank 0 (e.g. {differing}); the files come from different runs"
            )
    merged = {}
    for name in shards[0]:
        parts = [shard[name] for shard in shards]
        partition = partition_of(name, cfg)
        if partition is None or len(parts) == 1:
            for rank, part in enumerate(parts[1:], start=1):
                if not torch.equal(part, parts[0]):
                    raise ConfigError(
                        f"--checkpoint {checkpoint_dir}: {name} is replicated over tensor-parallel "
                        f"ranks but rank {rank} differs from rank 0; the checkpoint is inconsistent"
                    )
            merged[name] = parts[0]
        else:
            merged[name] = merge_shards(parts, *partition)
    return merged


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical name -> full shape of a model of ``cfg``; the word embedding's (and untied
    output layer's) first dimension is -1 because it depends on the padding of the run."""
    h, ffn, head_dim = cfg.hidden_size, cfg.ffn_size, cfg.head_dim
    qkv_rows = (cfg.num_attention_heads + 2 * cfg.query_groups) * head_dim
    fc1_rows = 2 * ffn if cfg.activation == "swiglu" else ffn
    norm_params = ("weight", "bias") if cfg.normalization == "LayerNorm" else ("weight",)
    shapes: dict[str, tuple[int, ...]] = {"word_embeddings.weight": (-1, h)}
    if cfg.position_embedding == "learned_absolute":
        shapes["position_embeddings.weight"] = (cfg.seq_length, h)
    for layer in range(cfg.num_layers):
        prefix = f"layers.{layer}."
        for norm in ("input_layernorm", "pre_mlp_layernorm"):
            for param in norm_params:
                shapes[f"{prefix}{norm}.{param}"] = (h,)
        linears = {
            "self_attention.linear_qkv": (qkv_rows, h),
            "self_attention.linear_proj": (h, cfg.num_attention_heads * head_dim),
            "mlp.linear_fc1": (fc1_rows, h),
            "mlp.linear_fc2": (h, ffn),
        }
        for linear, shape in linears.items():
            shapes[f"{prefix}{linear}.weight"] = shape
            if cfg.add_bias_linear:
                shapes[f"{prefix}{linear}.bias"] = shape[:1]
    for param in norm_params:
        shapes[f"final_norm.{param}"] = (h,)
    if not cfg.tie_embeddings:
        shapes["output_layer.weight"] = (-1, h)
    return shapes


def check_shapes(state: dict[str, torch.Tensor], cfg: ModelConfig, checkpoint_dir: Path) -> None:
    """ConfigError when the checkpoint's tensors are not those of a model of ``cfg``."""
    expected = expected_shapes(cfg)
    hint = "is --config the config.yaml of the run that wrote this checkpoint?"
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ConfigError(
            f"--checkpoint {checkpoint_dir}: tensors do not match the model config "
            f"(missing {missing[:4]}, unexpected {extra[:4]}; model.add_bias_linear = "
            f"{cfg.add_bias_linear}, model.tie_embeddings = {cfg.tie_embeddings}, "
            f"model.normalization = {cfg.normalization!r}, model.position_embedding = "
            f"{cfg.position_embedding!r}); {hint}"
        )
    for name, shape in expected.items():
        actual = tuple(state[name].shape)
        if len(actual) != len(shape) or any(e not in (-1, a) for e, a in zip(shape, actual)):
            raise ConfigError(
                f"--checkpoint {checkpoint_dir}: {name} has shape {actual}, the model config "
                f"gives {tuple('padded vocab' if e == -1 else e for e in shape)}; {hint}"
            )
    for name in ("word_embeddings.weight", "output_layer.weight"):
        if name in state and state[name].shape[0] < cfg.vocab_size:
            raise ConfigError(
                f"--checkpoint {checkpoint_dir}: {name} has {state[name].shape[0]} rows but "
                f"model.vocab_size = {cfg.vocab_size}; {hint}"
            )
