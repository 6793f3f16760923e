"""megagrape.export: megagrape checkpoints -> Hugging Face transformers models with equal logits.

Every exported model is loaded back with ``AutoModelForCausalLM.from_pretrained`` and its
logits are compared with megatron's GPTModel forward on the same weights (all parameters
random, biases and norms included, so a mis-mapped tensor shows). TP = 2 and PP = 2
checkpoints are written by real DeepSpeed engines in 2 gloo processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from pathlib import Path

import pytest
import torch

from megagrape.errors import ConfigError, DataError
from megagrape.model import ModelConfig, build_model
from megagrape.parallel import ParallelConfig
from tests.dist_utils import run_distributed
from tests.run_utils import one_process_group

TINY = dict(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=32, vocab_size=250)
GPT2_SHAPE = dict(
    position_embedding="learned_absolute", normalization="LayerNorm", activation="gelu"
)
LLAMA_SHAPE = dict(position_embedding="rope", normalization="RMSNorm", activation="swiglu")
QUICKSTART_SHAPE = dict(position_embedding="rope", normalization="LayerNorm", activation="gelu")
LOGIT_TOLERANCE = 1e-4

# name -> (model fields, architecture requested, architecture expected)
CASES = {
    "gpt2": ({**GPT2_SHAPE}, "auto", "gpt2"),
    "gpt2_untied_no_bias": (
        {**GPT2_SHAPE, "tie_embeddings": False, "add_bias_linear": False}, "auto", "gpt2"
    ),
    "llama_gqa": ({**LLAMA_SHAPE, "num_query_groups": 2, "add_bias_linear": False}, "auto", "llama"),
    "llama_bias_untied_ffn": (
        {**LLAMA_SHAPE, "tie_embeddings": False, "ffn_hidden_size": 96, "rotary_base": 500},
        "auto",
        "llama",
    ),
    "quickstart": ({**QUICKSTART_SHAPE}, "auto", "gpt_neox"),
    "quickstart_no_bias_untied": (
        {**QUICKSTART_SHAPE, "add_bias_linear": False, "tie_embeddings": False}, "auto", "gpt_neox"
    ),
    "quickstart_gqa": ({**QUICKSTART_SHAPE, "num_query_groups": 2}, "auto", "starcoder2"),
    "quickstart_as_starcoder2_no_bias": (
        {**QUICKSTART_SHAPE, "add_bias_linear": False}, "starcoder2", "starcoder2"
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def env():
    with one_process_group(seed=0) as dist_env:
        yield dist_env


# ----------------------------------------------------------------------------- helpers


def canonical_parameters(model: torch.nn.Module):
    from deepspeed.pipe import PipelineModule

    from megagrape.model.gpt import gpt_canonical_parameters
    from megagrape.model.pipeline import pipeline_canonical_parameters

    module = getattr(model, "module", model)
    if isinstance(module, PipelineModule):
        return pipeline_canonical_parameters(module)
    return gpt_canonical_parameters(module)


@torch.no_grad()
def randomize(model: torch.nn.Module, cfg: ModelConfig, tp_rank: int = 0, tp: int = 1) -> None:
    """Give every parameter random values that depend only on its canonical name (so TP / PP
    layouts hold the same full model): weights and biases N(0, 0.1^2), norm weights 1 + that,
    word embedding / output rows beyond the vocabulary 0."""
    from megagrape.model.init import full_shape_of, shard_of

    for name, param in canonical_parameters(model):
        shape = full_shape_of(param, tp)
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        if name in ("word_embeddings.weight", "output_layer.weight"):
            full = torch.zeros(shape)
            full[: cfg.vocab_size] = 0.1 * torch.randn(
                cfg.vocab_size, shape[1], generator=generator
            )
        else:
            full = 0.1 * torch.randn(shape, generator=generator)
            if "norm" in name and name.endswith("weight"):
                full += 1.0
        param.copy_(shard_of(full, param, tp_rank, tp))


def tokens_for(cfg: ModelConfig, batch_size: int = 2, seed: int = 7) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch_size, cfg.seq_length), generator=generator)


@torch.no_grad()
def megatron_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    model.eval()
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    return model(tokens, positions, None)


@torch.no_grad()
def hf_logits(out_dir: Path, tokens: torch.Tensor) -> tuple[torch.Tensor, object]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out_dir)).eval()
    return model(tokens).logits, model


def save_module_checkpoint(model: torch.nn.Module, directory: Path, tp_rank: int = 0) -> Path:
    """What engine.save_checkpoint writes for PP = 1, ZeRO 0-2: the state_dict under "module"."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"module": model.state_dict()}, directory / f"mp_rank_{tp_rank:02d}_model_states.pt")
    return directory


def ds_config(zero_stage: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
        "zero_optimization": {"stage": zero_stage},
        "steps_per_print": 10**9,
    }


def make_engine(model: torch.nn.Module, zero_stage: int, mpu=None):
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=params, config=ds_config(zero_stage), mpu=mpu
    )
    return engine


def write_tiny_corpus(path: Path) -> Path:
    texts = [
        "The quick brown fox jumps over the lazy dog. " * 3,
        "def add(a, b):\n    return a + b\n" * 2,
        "Größe und Maße, naïve café; the theory of evolution by natural selection.",
        "Sphinx of black quartz, judge my vow! 12345 67890 " * 2,
    ] * 20
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


# ----------------------------------------------------------------------------- single process


@pytest.mark.parametrize("case", list(CASES))
def test_exported_logits_equal_megatron(env, tmp_path, case):
    from megagrape.export import export_hf

    fields, requested, expected_arch = CASES[case]
    cfg = ModelConfig(**{**TINY, **fields})
    model = build_model(cfg, env)
    randomize(model, cfg)
    tokens = tokens_for(cfg)
    reference = megatron_logits(model, tokens)
    assert reference.shape == (2, cfg.seq_length, cfg.padded_vocab_size(1))
    checkpoint = save_module_checkpoint(model, tmp_path / "step_000001")

    result = export_hf(checkpoint, cfg, tmp_path / "hf", architecture=requested)
    logits, hf_model = hf_logits(tmp_path / "hf", tokens)

    assert result.architecture == expected_arch
    assert type(hf_model).__name__ == result.hf_class
    assert (result.vocab_size, result.padded_vocab_size) == (250, 256)
    assert logits.shape == (2, cfg.seq_length, cfg.vocab_size)  # padding rows dropped
    gap = (logits - reference[..., : cfg.vocab_size]).abs().max().item()
    assert gap < LOGIT_TOLERANCE, (case, gap)
    assert reference.abs().max() > 1.0  # the comparison is not between near-zero logits
    hf_tied = hf_model.get_output_embeddings().weight is hf_model.get_input_embeddings().weight
    assert hf_tied == cfg.tie_embeddings


def test_real_engine_checkpoint_after_a_training_step(env, tmp_path):
    """engine.save_checkpoint (ZeRO-1) after one optimizer step: the trained weights export."""
    from megagrape.export import export_hf
    from megagrape.model import masked_mean, token_losses

    cfg = ModelConfig(**TINY, **QUICKSTART_SHAPE)
    engine = make_engine(build_model(cfg, env), zero_stage=1)
    sample = torch.randint(0, cfg.vocab_size, (2, cfg.seq_length + 1))
    batch = dict(
        tokens=sample[:, :-1],
        labels=sample[:, 1:],
        position_ids=torch.arange(cfg.seq_length).expand(2, -1),
        loss_mask=torch.ones(2, cfg.seq_length),
    )
    before = megatron_logits(engine.module, batch["tokens"])
    engine.train()
    engine.backward(masked_mean(token_losses(engine, batch), batch["loss_mask"]))
    engine.step()
    engine.save_checkpoint(str(tmp_path), tag="step_000001")
    reference = megatron_logits(engine.module, batch["tokens"])
    assert (reference - before).abs().max() > 1e-3  # the step changed the model

    export_hf(tmp_path / "step_000001", cfg, tmp_path / "hf")
    logits, _ = hf_logits(tmp_path / "hf", batch["tokens"])
    assert (logits - reference[..., : cfg.vocab_size]).abs().max() < LOGIT_TOLERANCE


def test_zero3_checkpoint_is_rebuilt_from_partitions(env, tmp_path):
    from megagrape.export import export_hf

    cfg = ModelConfig(**TINY, **LLAMA_SHAPE, num_query_groups=2)
    model = build_model(cfg, env)
    randomize(model, cfg)
    tokens = tokens_for(cfg)
    reference = megatron_logits(model, tokens)
    engine = make_engine(model, zero_stage=3)
    engine.save_checkpoint(str(tmp_path), tag="step_000001")
    assert not (tmp_path / "step_000001" / "mp_rank_00_model_states.pt").exists()

    result = export_hf(tmp_path / "step_000001", cfg, tmp_path / "hf")
    logits, _ = hf_logits(tmp_path / "hf", tokens)
    assert result.layout == "zero3"
    assert (logits - reference[..., : cfg.vocab_size]).abs().max() < LOGIT_TOLERANCE


def test_tokenizer_export_matches_megagrape_and_sets_eos(env, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from megagrape.data.tokenizer_build import train_bpe
    from megagrape.export import export_hf

    tokenizer = train_bpe([write_tiny_corpus(tmp_path / "corpus.jsonl")], vocab_size=300)
    tokenizer.save(tmp_path / "tokenizer")
    cfg = ModelConfig(**{**TINY, "vocab_size": 384}, **QUICKSTART_SHAPE)
    assert tokenizer.vocab_size < cfg.vocab_size
    model = build_model(cfg, env)
    randomize(model, cfg)
    checkpoint = save_module_checkpoint(model, tmp_path / "step_000001")

    result = export_hf(checkpoint, cfg, tmp_path / "hf", tokenizer_path=tmp_path / "tokenizer")

    hf_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    hf_config = AutoConfig.from_pretrained(str(tmp_path / "hf"))
    text = "The lazy fox: naïve Größe! def add(a, b): return 12345 + 67890 🍇"
    assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)
    assert hf_tokenizer.decode(tokenizer.encode(text)) == text
    assert hf_tokenizer.eos_token_id == hf_tokenizer.bos_token_id == tokenizer.eod
    assert hf_config.eos_token_id == hf_config.bos_token_id == tokenizer.eod
    assert result.vocab_size == hf_config.vocab_size == tokenizer.vocab_size == len(hf_tokenizer)
    tokens = tokens_for(dataclasses.replace(cfg, vocab_size=tokenizer.vocab_size))
    logits, _ = hf_logits(tmp_path / "hf", tokens)
    reference = megatron_logits(model, tokens)[..., : tokenizer.vocab_size]
    assert (logits - reference).abs().max() < LOGIT_TOLERANCE
    provenance = json.loads((tmp_path / "hf" / "megagrape_export.json").read_text())
    assert provenance["architecture"] == "gpt_neox" and provenance["vocab_size"] == 300

    # pad = eos, as GPT-2-style exports do: batches pad, generate() knows its pad id, and
    # config.pad_token_id stays unset (it would make the eod row an untrained padding_idx)
    assert hf_tokenizer.pad_token == hf_tokenizer.eos_token
    assert hf_tokenizer.pad_token_id == tokenizer.eod
    texts = ["The lazy fox", "def add(a, b): return 12345 + 67890"]
    batch = hf_tokenizer(texts, padding=True, add_special_tokens=False)
    short, width = len(tokenizer.encode(texts[0])), len(tokenizer.encode(texts[1]))
    assert short < width
    assert batch["input_ids"] == [
        tokenizer.encode(texts[0]) + [tokenizer.eod] * (width - short),
        tokenizer.encode(texts[1]),
    ]
    assert batch["attention_mask"] == [[1] * short + [0] * (width - short), [1] * width]
    assert (
        json.loads((tmp_path / "hf" / "generation_config.json").read_text())["pad_token_id"]
        == tokenizer.eod
    )
    assert (
        json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["pad_token"]
        == hf_tokenizer.eos_token
    )
    assert hf_config.pad_token_id is None


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_exported_files_get_the_mode_of_a_new_file(env, tmp_path, umask, mode):
    """safetensors writes 0600; every exported file gets 0666 under the umask instead."""
    from megagrape.data.tokenizer_build import train_bpe
    from megagrape.export import export_hf

    train_bpe([write_tiny_corpus(tmp_path / "c.jsonl")], vocab_size=260).save(tmp_path / "tok")
    cfg = ModelConfig(**{**TINY, "vocab_size": 384}, **GPT2_SHAPE)
    checkpoint = save_module_checkpoint(build_model(cfg, env), tmp_path / "step_000001")
    previous = os.umask(umask)
    try:
        export_hf(checkpoint, cfg, tmp_path / "out" / "hf", tokenizer_path=tmp_path / "tok")
    finally:
        os.umask(previous)
    files = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out" / "hf").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(files)
    assert files == dict.fromkeys(files, mode)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["hf"]  # no staging left behind


def test_tiktoken_ranks_become_an_equivalent_hf_tokenizer(tmp_path):
    from tiktoken_ext.openai_public import r50k_pat_str
    from transformers import AutoTokenizer

    from megagrape.data.tokenizer import EOD_TOKEN, TiktokenTokenizer
    from megagrape.export.tokenizer import export_tokenizer

    ranks = {bytes([b]): b for b in range(256)}
    for word in (b"th", b"he", b"the", b" t", b" the", b"in", b"ing", b" lazy", b"ve", b"ver"):
        ranks.setdefault(word, len(ranks))
    eod = len(ranks)
    tokenizer = TiktokenTokenizer(
        name="toy", ranks=ranks, pattern=r50k_pat_str, special_tokens={EOD_TOKEN: eod}, eod=eod
    )
    tokenizer.save(tmp_path / "toy")

    export_tokenizer(tmp_path / "toy", tmp_path / "hf", model_max_length=64)

    hf_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    text = "the theory; over the lazy thing, thinking in the haze: 日本語 🍇 naïve"
    ids = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == tokenizer.encode(text)
    assert any(i >= 256 for i in ids)  # merges were applied
    assert hf_tokenizer.eos_token_id == eod and hf_tokenizer.eos_token == EOD_TOKEN
    assert hf_tokenizer.pad_token_id == eod
    padded = hf_tokenizer(["the", "the lazy thing"], padding=True, add_special_tokens=False)
    assert padded["input_ids"][0] == tokenizer.encode("the") + [eod] * (
        len(padded["input_ids"][1]) - len(tokenizer.encode("the"))
    )


def test_verify_reports_a_small_difference(env, tmp_path):
    from megagrape.export import export_hf
    from megagrape.export.verify import max_logit_difference

    cfg = ModelConfig(**TINY, **QUICKSTART_SHAPE, num_query_groups=2)
    model = build_model(cfg, env)
    randomize(model, cfg)
    result = export_hf(save_module_checkpoint(model, tmp_path / "c"), cfg, tmp_path / "hf")
    assert max_logit_difference(tmp_path / "hf", result.state, cfg, result.vocab_size) < 1e-4
    # a wrong weight is caught
    broken = dict(result.state)
    broken["layers.1.mlp.linear_fc2.weight"] = broken["layers.1.mlp.linear_fc2.weight"] * 1.5
    assert max_logit_difference(tmp_path / "hf", broken, cfg, result.vocab_size) > 1e-3
    # a bfloat16 export holds the rounded weights and says so in config.json
    half = export_hf(tmp_path / "c", cfg, tmp_path / "hf16", dtype=torch.bfloat16)
    assert json.loads((tmp_path / "hf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert half.state["layers.0.mlp.linear_fc1.weight"].dtype == torch.bfloat16
    assert max_logit_difference(tmp_path / "hf16", half.state, cfg, half.vocab_size) < 1e-4


def test_cli_exports_newest_checkpoint_with_run_tokenizer(env, tmp_path, capsys, monkeypatch):
    from megagrape.config import RunConfig, save_config
    from megagrape.data.tokenizer_build import train_bpe
    from tools import export_hf as cli

    train_bpe([write_tiny_corpus(tmp_path / "corpus.jsonl")], vocab_size=260).save(
        tmp_path / "data" / "tokenizer"
    )
    cfg = ModelConfig(**{**TINY, "vocab_size": 384}, **GPT2_SHAPE)
    run_cfg = RunConfig(model=cfg)
    run_cfg.data.corpus = "data"  # relative to the working directory, as runs record it
    save_config(run_cfg, tmp_path / "config.yaml")
    model = build_model(cfg, env)
    randomize(model, cfg)
    save_module_checkpoint(model, tmp_path / "checkpoints" / "step_000002")
    (tmp_path / "checkpoints" / "step_000002" / "COMPLETE.json").write_text(
        json.dumps({"step": 2, "world_size": 1, "files": {}})
    )
    monkeypatch.chdir(tmp_path)

    args = ["--checkpoint", "checkpoints", "--config", "config.yaml", "--out", "hf"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "GPT2LMHeadModel" in printed and "step_000002" in printed and "vocabulary 260" in printed
    assert (tmp_path / "hf" / "tokenizer.json").is_file()

    assert cli.main([*args, "--config", "missing.yaml"]) == 2
    assert "missing.yaml" in capsys.readouterr().err


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("fields", "requested", "expected"),
    [
        (
            dict(position_embedding="learned_absolute", normalization="RMSNorm"),
            "auto",
            ["model.normalization = 'RMSNorm' (needs 'LayerNorm')", "gpt2 (GPT2LMHeadModel)"],
        ),
        (
            dict(position_embedding="rope", normalization="RMSNorm", activation="gelu"),
            "auto",
            [
                "llama (LlamaForCausalLM): model.activation = 'gelu' (needs 'swiglu')",
                "starcoder2 (Starcoder2ForCausalLM): model.normalization = 'RMSNorm'",
            ],
        ),
        (
            dict(**GPT2_SHAPE, num_query_groups=2),
            "auto",
            ["model.num_query_groups = 2 (needs null"],
        ),
        (dict(**QUICKSTART_SHAPE, num_query_groups=2), "gpt_neox", ["model.num_query_groups = 2"]),
        (dict(**QUICKSTART_SHAPE), "bloom", ["--architecture 'bloom'", "gpt2, llama"]),
    ],
)
def test_unsupported_combinations_name_the_blocking_fields(fields, requested, expected):
    from megagrape.export.architectures import choose_architecture

    with pytest.raises(ConfigError) as info:
        choose_architecture(ModelConfig(**{**TINY, **fields}), requested)
    for text in expected:
        assert text in str(info.value)


def test_bad_checkpoint_inputs_are_named(env, tmp_path):
    from megagrape.export import export_hf

    cfg = ModelConfig(**TINY, **QUICKSTART_SHAPE)
    with pytest.raises(ConfigError, match="not a directory"):
        export_hf(tmp_path / "nowhere", cfg, tmp_path / "hf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no DeepSpeed model files"):
        export_hf(tmp_path / "empty", cfg, tmp_path / "hf")
    checkpoint = save_module_checkpoint(build_model(cfg, env), tmp_path / "step_000001")
    wider = dataclasses.replace(cfg, ffn_hidden_size=128)
    with pytest.raises(ConfigError, match=r"linear_fc1.weight has shape \(256, 64\).*\(128, 64\)"):
        export_hf(checkpoint, wider, tmp_path / "hf")
    untied = dataclasses.replace(cfg, tie_embeddings=False)
    with pytest.raises(ConfigError, match=r"missing \['output_layer.weight'\]"):
        export_hf(checkpoint, untied, tmp_path / "hf")
    (checkpoint / "mp_rank_02_model_states.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"ranks \[0, 2\].*some files are missing"):
        export_hf(checkpoint, cfg, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()  # nothing written on failure


class RunsCommand:
    """Unpickling this object runs ``command`` in a shell (what a hostile checkpoint does)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_checkpoint_that_runs_code_is_refused_before_it_runs(env, tmp_path):
    """A module file and (ZeRO 3, read by DeepSpeed's unsafe zero_to_fp32) an optimizer file."""
    from megagrape.export import export_hf

    cfg = ModelConfig(**TINY, **QUICKSTART_SHAPE)
    marker = tmp_path / "pwned"
    module_file = save_module_checkpoint(build_model(cfg, env), tmp_path / "module") / (
        "mp_rank_00_model_states.pt"
    )
    make_engine(build_model(cfg, env), zero_stage=3).save_checkpoint(str(tmp_path), tag="zero3")
    optim_file = tmp_path / "zero3" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    for path in (module_file, optim_file):
        torch.save({"module": RunsCommand(f"touch {marker}")}, path)
        with pytest.raises(DataError, match=rf"{path.name}: holds objects outside"):
            export_hf(path.parent, cfg, tmp_path / "hf")
        assert not marker.exists()
        assert not (tmp_path / "hf").exists()


def test_tokenizer_larger_than_the_model_vocabulary_is_refused(env, tmp_path):
    from megagrape.data.tokenizer_build import train_bpe
    from megagrape.export import export_hf

    train_bpe([write_tiny_corpus(tmp_path / "c.jsonl")], vocab_size=300).save(tmp_path / "tok")
    cfg = ModelConfig(**TINY, **QUICKSTART_SHAPE)  # vocab_size 250 < 300
    checkpoint = save_module_checkpoint(build_model(cfg, env), tmp_path / "step_000001")
    with pytest.raises(ConfigError, match=r"300 ids but model\.vocab_size = 250"):
        export_hf(checkpoint, cfg, tmp_path / "hf", tokenizer_path=tmp_path / "tok")
    with pytest.raises(DataError, match="no such file or directory"):
        export_hf(checkpoint, cfg, tmp_path / "hf", tokenizer_path=tmp_path / "nope")


# ----------------------------------------------------------------------------- TP = 2, PP = 2

TP2_CASES = {
    # swiglu fc1 (stride 2), grouped qkv, untied vocab-parallel output layer, TP padding 224
    "llama_gqa_untied": {**LLAMA_SHAPE, "num_query_groups": 2, "tie_embeddings": False},
    "quickstart": {**QUICKSTART_SHAPE},
}
TP2_VOCAB = {"vocab_size": 210, "make_vocab_size_divisible_by": 8}


def _tp2_save_worker(
    rank: int, world_size: int, directory: str, case: str, zero_stage: int
) -> None:
    from megagrape import parallel

    env = parallel.init_distributed(ParallelConfig(tensor_parallel=2), seed=0)
    cfg = ModelConfig(**{**TINY, **TP2_VOCAB}, **TP2_CASES[case])
    model = build_model(cfg, env)
    randomize(model, cfg, env.tp_rank, env.tp_size)
    engine = make_engine(model, zero_stage=zero_stage, mpu=parallel.deepspeed_mpu(env))
    engine.save_checkpoint(directory, tag="step_000001")
    parallel.destroy_distributed()


def _check_tensor_parallel_export(env, tmp_path: Path, case: str, zero_stage: int = 1) -> None:
    from megagrape.export import export_hf

    run_distributed(_tp2_save_worker, world_size=2, args=(str(tmp_path), case, zero_stage))
    cfg = ModelConfig(**{**TINY, **TP2_VOCAB}, **TP2_CASES[case])
    checkpoint = tmp_path / "step_000001"
    prefix = "zero_pp_rank_0_" if zero_stage == 3 else ""
    assert sorted(p.name for p in checkpoint.glob("*model_states.pt")) == [
        f"{prefix}mp_rank_00_model_states.pt",
        f"{prefix}mp_rank_01_model_states.pt",
    ]
    model = build_model(cfg, env)  # TP = 1, the same full weights
    randomize(model, cfg)
    tokens = tokens_for(cfg)
    reference = megatron_logits(model, tokens)[..., : cfg.vocab_size]

    result = export_hf(checkpoint, cfg, tmp_path / "hf")
    logits, _ = hf_logits(tmp_path / "hf", tokens)
    assert result.tensor_parallel == 2 and result.padded_vocab_size == 224  # 210 -> 16 * 14
    assert result.layout == ("zero3" if zero_stage == 3 else "module")
    assert (logits - reference).abs().max() < LOGIT_TOLERANCE


def test_tensor_parallel_shards_merge_to_the_single_rank_model(env, tmp_path):
    _check_tensor_parallel_export(env, tmp_path, "llama_gqa_untied")


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [1, 3])
def test_tensor_parallel_shards_merge_quickstart_shape(env, tmp_path, zero_stage):
    _check_tensor_parallel_export(env, tmp_path, "quickstart", zero_stage)


def _pp2_save_worker(rank: int, world_size: int, directory: str, fields: dict) -> None:
    from megagrape import parallel

    env = parallel.init_distributed(ParallelConfig(pipeline_parallel=2), seed=0)
    cfg = ModelConfig(**TINY, **fields)
    model = build_model(cfg, env)
    randomize(model, cfg)
    engine = make_engine(model, zero_stage=1)
    engine.save_checkpoint(directory, tag="step_000001")
    parallel.destroy_distributed()


@pytest.mark.slow
@pytest.mark.parametrize(
    "fields", [dict(QUICKSTART_SHAPE), dict(**GPT2_SHAPE, tie_embeddings=False)]
)
def test_pipeline_layer_files_export(env, tmp_path, fields):
    from megagrape.export import export_hf

    run_distributed(_pp2_save_worker, world_size=2, args=(str(tmp_path), fields))
    cfg = ModelConfig(**TINY, **fields)
    checkpoint = tmp_path / "step_000001"
    assert (checkpoint / f"layer_{cfg.num_layers + 2:02d}-model_00-model_states.pt").is_file()
    model = build_model(cfg, env)
    randomize(model, cfg)
    tokens = tokens_for(cfg)
    reference = megatron_logits(model, tokens)[..., : cfg.vocab_size]

    result = export_hf(checkpoint, cfg, tmp_path / "hf")
    logits, _ = hf_logits(tmp_path / "hf", tokens)
    assert result.layout == "pipeline"
    assert (logits - reference).abs().max() < LOGIT_TOLERANCE


def test_lm_eval_task_files_are_consistent():
    """tools/lm_eval_tasks: every task includes the template and reads its own target file;
    the group lists exactly the tasks (the files are parsed by lm-eval, not installed here)."""
    import yaml

    task_dir = Path(__file__).resolve().parents[2] / "tools" / "lm_eval_tasks"
    template = yaml.safe_load((task_dir / "_megagrape_mc_template_yaml").read_text())
    assert template["output_type"] == "multiple_choice" and template["target_delimiter"] == ""
    assert (template["doc_to_text"], template["doc_to_choice"], template["doc_to_target"]) == (
        "context",
        "choices",
        "gold",
    )
    tasks = {}
    for path in sorted(task_dir.glob("megagrape_*.yaml")):
        spec = yaml.safe_load(path.read_text())
        if "group" in spec:
            group = spec
            continue
        assert spec["include"] == "_megagrape_mc_template_yaml" and spec["task"] == path.stem
        target = spec["dataset_kwargs"]["data_files"]["test"]
        assert target == f"data/quickstart/targets/{path.stem.removeprefix('megagrape_')}.jsonl"
        tasks[spec["task"]] = target
    assert sorted(group["task"]) == sorted(tasks) and len(tasks) == 4
