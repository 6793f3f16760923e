"""megagrape.model: megatron-core GPT on CPU, tensor parallel (TP=2) and pipeline (PP=2) over gloo.

Single-process checks run in this pytest process (world size 1); the TP=1 / PP=1 references
for the 2-process runs are computed here too and handed to the workers.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from megagrape.errors import ConfigError
from megagrape.model import ModelConfig, build_model, counts_once, masked_mean, token_losses
from megagrape.parallel import ParallelConfig
from tests.dist_utils import run_distributed
from tests.run_utils import one_process_group

TINY = dict(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=32, vocab_size=256)
SEED = 1234
VARIANTS = {
    "gqa": dict(num_query_groups=2),
    "learned_positions": dict(position_embedding="learned_absolute"),
    "rmsnorm_swiglu": dict(normalization="RMSNorm", activation="swiglu"),
    "untied_no_bias": dict(tie_embeddings=False, add_bias_linear=False),
}


def make_batch(cfg: ModelConfig, batch_size: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """GPTDataset-style batch; the last 5 tokens of sample 1 are masked out of the loss."""
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randint(0, cfg.vocab_size, (batch_size, cfg.seq_length + 1), generator=generator)
    loss_mask = torch.ones(batch_size, cfg.seq_length)
    loss_mask[1, -5:] = 0.0
    positions = torch.arange(cfg.seq_length).expand(batch_size, -1).clone()
    return dict(
        tokens=sample[:, :-1].contiguous(),
        labels=sample[:, 1:].contiguous(),
        loss_mask=loss_mask,
        position_ids=positions,
    )


def ds_config(
    micro_batch: int = 4, accumulation: int = 1, zero_stage: int = 0, clip: float = 0.0
) -> dict:
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.01}},
        "zero_optimization": {"stage": zero_stage},
        "gradient_clipping": clip,
        "steps_per_print": 10**9,
    }


def make_engine(model: torch.nn.Module, config: dict, mpu=None):
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=config, mpu=mpu)
    return engine


def canonical_named(model: torch.nn.Module):
    from megagrape.model.gpt import gpt_canonical_parameters

    return gpt_canonical_parameters(getattr(model, "module", model))


@pytest.fixture(scope="module")
def env():
    with one_process_group(seed=SEED) as dist_env:
        yield dist_env


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("model_kwargs", "tp", "pp", "expected"),
    [
        (dict(num_attention_heads=6, hidden_size=96), 4, 1, "model.num_attention_heads = 6"),
        (dict(num_layers=3), 1, 2, "model.num_layers = 3 is not divisible by parallel.pipeline"),
        (dict(num_query_groups=2, num_attention_heads=8), 4, 1, "model.num_query_groups = 2"),
        (dict(num_query_groups=3), 1, 1, "model.num_query_groups = 3 does not divide"),
        (dict(hidden_size=66), 1, 1, "model.hidden_size = 66 is not divisible"),
        (dict(ffn_hidden_size=102), 4, 1, "model.ffn_hidden_size = 102 is not divisible"),
        (dict(hidden_size=36, num_attention_heads=4), 1, 1, "needs an even head size"),
        (dict(activation="relu"), 1, 1, "model.activation = 'relu': allowed values are gelu"),
        (dict(attention_dropout=1.0), 1, 1, "model.attention_dropout = 1.0"),
        (dict(vocab_size=0), 1, 1, "model.vocab_size = 0"),
        (dict(position_embedding="alibi"), 1, 1, "model.position_embedding = 'alibi'"),
    ],
)
def test_bad_model_config_names_field_and_value(model_kwargs, tp, pp, expected):
    cfg = ModelConfig(**{**TINY, **model_kwargs})
    with pytest.raises(ConfigError) as info:
        cfg.validate(ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp))
    assert expected in str(info.value)


@pytest.mark.parametrize("tp", [1, 2, 8])
def test_padded_vocab_is_the_smallest_multiple(tp):
    cfg = ModelConfig(vocab_size=50257)
    multiple = cfg.make_vocab_size_divisible_by * tp
    padded = cfg.padded_vocab_size(tp)
    assert padded % multiple == 0 and cfg.vocab_size <= padded < cfg.vocab_size + multiple


def test_flops_per_token_counts_matmuls_and_attention(env):
    cfg = ModelConfig(**TINY)
    model = build_model(cfg, env)
    matmul_weights = sum(
        p.numel()
        for name, p in canonical_named(model)
        if p.dim() == 2 and name != "position_embeddings.weight"
    )  # tied: the word embedding is the output projection, counted once
    attention = 12 * cfg.num_layers * cfg.hidden_size * cfg.seq_length
    assert cfg.flops_per_token() == pytest.approx(6 * matmul_weights + attention)
    longer = dataclasses.replace(cfg, seq_length=2 * cfg.seq_length)
    assert longer.flops_per_token() - cfg.flops_per_token() == pytest.approx(attention)


# ----------------------------------------------------------------------------- single process


@pytest.mark.parametrize("variant", ["base", *VARIANTS])
def test_variant_builds_runs_and_every_parameter_gets_a_gradient(env, variant):
    cfg = ModelConfig(**TINY, **VARIANTS.get(variant, {}))
    model = build_model(cfg, env)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_parameters()
    batch = make_batch(cfg)
    losses = token_losses(model, batch)
    assert losses.shape == (4, cfg.seq_length) and losses.dtype == torch.float32
    assert torch.isfinite(losses).all()
    # at initialisation the model is close to uniform over the vocabulary
    assert abs(losses.mean().item() - math.log(cfg.padded_vocab_size(1))) < 0.3
    masked_mean(losses, batch["loss_mask"]).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_portable_attention_matches_softmax_attention_with_gqa(env):
    from megatron.core.transformer.enums import AttnMaskType

    from megagrape.model.layers import PortableDotProductAttention, transformer_config

    cfg = ModelConfig(**{**TINY, "num_attention_heads": 4, "num_query_groups": 2})
    attention = PortableDotProductAttention(
        transformer_config(cfg, 1, env.device, torch.float32),
        layer_number=1,
        attn_mask_type=AttnMaskType.causal,
        attention_type="self",
    )
    s, b, heads, groups, d = 6, 2, 4, 2, 16
    generator = torch.Generator().manual_seed(3)
    q = torch.randn(s, b, heads, d, generator=generator)
    k, v = (torch.randn(s, b, groups, d, generator=generator) for _ in range(2))
    out = attention(q, k, v, None)
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    expected = torch.empty(s, b, heads, d)
    for head in range(heads):
        group = head // (heads // groups)  # megatron: query heads of a group are adjacent
        for i in range(b):
            scores = q[:, i, head] @ k[:, i, group].T / math.sqrt(d)
            probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
            expected[:, i, head] = probs @ v[:, i, group]
    assert out.shape == (s, b, heads * d)
    assert torch.allclose(out, expected.reshape(s, b, heads * d), atol=1e-5)
    masked_out = ~causal.expand(b, 1, s, s)  # megatron's mask convention: True = masked
    assert torch.allclose(attention(q, k, v, masked_out), out, atol=1e-6)


@pytest.mark.parametrize("variant", ["base", "learned_positions"])
def test_a_token_only_affects_later_positions(env, variant):
    cfg = ModelConfig(**TINY, **VARIANTS.get(variant, {}))
    model = build_model(cfg, env)
    batch = make_batch(cfg)
    changed = {key: value.clone() for key, value in batch.items()}
    position = 10
    changed["tokens"][:, position] = (changed["tokens"][:, position] + 1) % cfg.vocab_size
    with torch.no_grad():
        before, after = token_losses(model, batch), token_losses(model, changed)
    assert torch.equal(before[:, :position], after[:, :position])
    assert (before[:, position:] != after[:, position:]).all(dim=0).any()


def test_masked_mean_ignores_masked_tokens():
    losses = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert masked_mean(losses, mask).item() == pytest.approx(15.0 / 5.0)
    assert masked_mean(losses, torch.zeros_like(mask)).item() == 0.0


def test_weights_depend_on_the_seed_only_and_leave_global_rngs_alone(env):
    cfg = ModelConfig(**TINY)
    before = torch.get_rng_state()
    first = dict(canonical_named(build_model(cfg, env)))
    assert torch.equal(torch.get_rng_state(), before)
    second = dict(canonical_named(build_model(cfg, env)))
    other = dict(canonical_named(build_model(cfg, dataclasses.replace(env, seed=SEED + 1))))
    assert all(torch.equal(first[name], second[name]) for name in first)
    qkv = "layers.0.self_attention.linear_qkv.weight"
    assert not torch.equal(first[qkv], other[qkv])
    proj = "layers.0.self_attention.linear_proj.weight"
    expected_std = cfg.init_method_std / math.sqrt(2 * cfg.num_layers)
    assert first[proj].std().item() == pytest.approx(expected_std, rel=0.1)


def test_deepspeed_adamw_steps_lower_the_loss(env):
    cfg = ModelConfig(**TINY)
    engine = make_engine(build_model(cfg, env), ds_config())
    batch = make_batch(cfg)
    losses = []
    for _ in range(6):
        loss = masked_mean(token_losses(engine, batch), batch["loss_mask"])
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3
    assert all(later < earlier for earlier, later in itertools.pairwise(losses))


def test_dropout_runs_on_cpu_and_replays_from_the_rng_state(env):
    from megagrape import parallel

    cfg = ModelConfig(**TINY, hidden_dropout=0.2, attention_dropout=0.2)
    model = build_model(cfg, env)
    batch = make_batch(cfg)
    model.eval()
    with torch.no_grad():
        deterministic = token_losses(model, batch)
    model.train()
    with torch.no_grad():
        parallel.seed_everything(7, tp_rank=0, pp_rank=0)
        first = token_losses(model, batch)
        # hidden dropout draws from the device's default stream, attention dropout from the
        # model-parallel tracker: saving and restoring both replays the masks
        default_stream = torch.cuda if env.device.type == "cuda" else torch
        saved_default = default_stream.get_rng_state()
        saved_tracker = parallel.model_parallel_rng_tracker().get_states()
        second = token_losses(model, batch)
        default_stream.set_rng_state(saved_default)
        parallel.model_parallel_rng_tracker().set_states(saved_tracker)
        replayed = token_losses(model, batch)
        parallel.seed_everything(7, tp_rank=0, pp_rank=0)
        reseeded = token_losses(model, batch)
    assert not torch.equal(first, deterministic)
    assert not torch.equal(first, second)
    assert torch.equal(second, replayed)
    assert torch.equal(first, reseeded)


# ----------------------------------------------------------------------------- TP = 2


def _tp1_reference(env, cfg: ModelConfig, config: dict) -> dict:
    engine = make_engine(build_model(cfg, env), config)
    batch = make_batch(cfg)
    losses = token_losses(engine, batch)
    engine.backward(masked_mean(losses, batch["loss_mask"]))
    named = list(canonical_named(engine))
    grads = {name: p.grad.detach().clone().numpy() for name, p in named}
    engine.step()
    params = {name: p.detach().clone().numpy() for name, p in named}
    return {
        "losses": losses.detach().numpy(),
        "grads": grads,
        "params": params,
        "grad_norm": math.sqrt(
            sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values())
        ),
    }


def _tp2_worker(rank: int, world_size: int, model_kwargs: dict, clip: float, reference: dict):
    from megagrape import parallel
    from megagrape.model.init import shard_of

    env = parallel.init_distributed(ParallelConfig(tensor_parallel=2), seed=SEED)
    cfg = ModelConfig(**model_kwargs)
    batch = make_batch(cfg)

    def largest_gap(engine, values: dict, read) -> float:
        gaps = []
        for name, p in canonical_named(engine):
            expected = shard_of(torch.from_numpy(values[name]), p, env.tp_rank, env.tp_size)
            gaps.append((read(p) - expected).abs().max().item())
        return max(gaps)

    gaps = {}
    for zero_stage in (0, 2):  # ZeRO-0 keeps p.grad after backward; ZeRO-2 partitions it
        engine = make_engine(
            build_model(cfg, env),
            ds_config(zero_stage=zero_stage, clip=clip),
            mpu=parallel.deepspeed_mpu(env),
        )
        losses = token_losses(engine, batch)
        engine.backward(masked_mean(losses, batch["loss_mask"]))
        if zero_stage == 0:
            gaps["grad"] = largest_gap(engine, reference["grads"], lambda p: p.grad)
            squares = sum(
                (p.grad.double() ** 2).sum()
                for p in engine.module.parameters()
                if counts_once(p, env.tp_rank)
            )
            torch.distributed.all_reduce(squares, group=parallel.tp_group())
            norm = squares.sqrt().item()
        engine.step()
        if zero_stage == 2:
            norm = float(engine.get_global_grad_norm())  # what DeepSpeed clipped with
        gaps[f"param_zero{zero_stage}"] = largest_gap(engine, reference["params"], lambda p: p)
        gaps[f"norm_zero{zero_stage}"] = abs(norm / reference["grad_norm"] - 1.0)
        gaps[f"loss_zero{zero_stage}"] = float(
            np.abs(losses.detach().numpy() - reference["losses"]).max()
        )

    dropout_cfg = dataclasses.replace(cfg, hidden_dropout=0.3, attention_dropout=0.3)
    dropout_model = build_model(dropout_cfg, env).train()
    with torch.no_grad():
        dropout_losses = token_losses(dropout_model, batch)
    result = {
        "gaps": {key: float(value) for key, value in gaps.items()},
        "dropout_losses_agree": parallel.all_ranks_agree(dropout_losses),
        "dropout_changed_losses": not torch.allclose(
            dropout_losses, torch.from_numpy(reference["losses"])
        ),
    }
    parallel.destroy_distributed()
    return result


def _check_tensor_parallel(env, model_kwargs: dict) -> None:
    cfg = ModelConfig(**model_kwargs)
    clip = 0.05  # below the gradient norm, so clipping is active
    reference = _tp1_reference(env, cfg, ds_config(clip=clip))
    results = run_distributed(_tp2_worker, world_size=2, args=(model_kwargs, clip, reference))
    for result in results:
        gaps = result["gaps"]
        assert gaps["loss_zero0"] < 1e-5 and gaps["loss_zero2"] < 1e-5, gaps
        assert gaps["grad"] < 1e-6, gaps
        # counts_once (ZeRO-0) and DeepSpeed's clipping norm with our mpu (ZeRO-2) count every
        # TP shard exactly once
        assert gaps["norm_zero0"] < 1e-5 and gaps["norm_zero2"] < 1e-5, gaps
        # AdamW's first step is lr * g / (|g| + eps): tiny gradients amplify float noise
        assert gaps["param_zero0"] < 2e-5 and gaps["param_zero2"] < 2e-5, gaps
        assert result["dropout_losses_agree"] and result["dropout_changed_losses"]


def test_tensor_parallel_matches_single_rank(env):
    _check_tensor_parallel(env, TINY)


@pytest.mark.slow
def test_tensor_parallel_matches_single_rank_gqa_swiglu_rmsnorm_untied(env):
    kwargs = {**TINY, **VARIANTS["gqa"], **VARIANTS["rmsnorm_swiglu"], **VARIANTS["untied_no_bias"]}
    _check_tensor_parallel(env, kwargs)


# ----------------------------------------------------------------------------- PP = 2

STEPS = 4


def _micro_batches(cfg: ModelConfig) -> list[dict[str, torch.Tensor]]:
    batch = make_batch(cfg)
    return [{key: value[i : i + 2] for key, value in batch.items()} for i in (0, 2)]


def _pp1_reference(env, cfg: ModelConfig, clip: float) -> dict:
    engine = make_engine(build_model(cfg, env), ds_config(micro_batch=2, accumulation=2, clip=clip))
    micro = _micro_batches(cfg)
    first_token_losses, step_losses = None, []
    for _ in range(STEPS):
        total = 0.0
        for mb in micro:
            losses = token_losses(engine, mb)
            first_token_losses = (
                losses.detach() if first_token_losses is None else first_token_losses
            )
            loss = masked_mean(losses, mb["loss_mask"])
            engine.backward(loss)
            engine.step()
            total += loss.item() / len(micro)
        step_losses.append(total)
    return {"first_token_losses": first_token_losses.numpy(), "step_losses": step_losses}


def _pp2_worker(rank: int, world_size: int, model_kwargs: dict, tp: int, clip: float):
    from megagrape import parallel
    from megagrape.model import pipeline_batch, pipeline_loss_fn

    env = parallel.init_distributed(
        ParallelConfig(tensor_parallel=tp, pipeline_parallel=2), seed=SEED
    )
    cfg = ModelConfig(**model_kwargs)
    engine = make_engine(
        build_model(cfg, env), ds_config(micro_batch=2, accumulation=2, zero_stage=1, clip=clip)
    )
    loss_fn = pipeline_loss_fn(engine)
    loss_fn.record_token_losses = True
    micro = [pipeline_batch(mb) for mb in _micro_batches(cfg)]
    step_losses = [engine.train_batch(iter(micro)).item() for _ in range(STEPS)]
    recorded = loss_fn.take_token_losses()
    tied = engine.module.tied_modules["embed"] if cfg.tie_embeddings else None
    if tied is None:
        tied_weight = None
    elif env.is_first_stage:
        tied_weight = tied.embedding.word_embeddings.weight.detach().numpy()
    else:
        tied_weight = tied.output_layer.weight.detach().numpy()
    parallel.destroy_distributed()
    return {
        "step_losses": step_losses,
        "recorded": [r.numpy() for r in recorded],
        "tied_weight": tied_weight,
        "replicated_flags": sorted(
            {bool(getattr(p, "ds_pipe_replicated", False)) for p in engine.module.parameters()}
        ),
    }


def _check_pipeline(env, model_kwargs: dict, tp: int = 1, clip: float = 0.0) -> None:
    cfg = ModelConfig(**model_kwargs)
    reference = _pp1_reference(env, cfg, clip)
    results = run_distributed(
        _pp2_worker, world_size=2 * tp, args=(model_kwargs, tp, clip), timeout_s=900
    )
    first, last = results[0], results[-1]  # global rank 0 is on stage 0, the last on stage 1
    assert all(r["step_losses"] == first["step_losses"] for r in results)  # broadcast
    losses = last["step_losses"]
    assert losses[0] == pytest.approx(reference["step_losses"][0], abs=1e-5)
    assert losses == pytest.approx(reference["step_losses"], abs=1e-4)
    assert losses[-1] < losses[0] - 0.2
    assert first["recorded"] == [] and len(last["recorded"]) == 2 * STEPS
    gap = np.abs(last["recorded"][0] - reference["first_token_losses"]).max()
    assert gap < 1e-5
    if cfg.tie_embeddings:  # rank tp_rank + tp * stage: compare each TP shard's two copies
        for stage0, stage1 in zip(results[:tp], results[tp:]):
            assert np.array_equal(stage0["tied_weight"], stage1["tied_weight"])
            assert stage0["replicated_flags"] == [False]
            assert stage1["replicated_flags"] == [False, True]


def test_pipeline_matches_single_stage_and_trains(env):
    _check_pipeline(env, TINY)


@pytest.mark.slow
def test_tensor_and_pipeline_parallel_together_with_clipping(env):
    _check_pipeline(env, TINY, tp=2, clip=0.05)  # 4 processes: TP=2 x PP=2


@pytest.mark.slow
def test_pipeline_untied_swiglu_learned_positions(env):
    kwargs = {
        **TINY,
        **VARIANTS["untied_no_bias"],
        **VARIANTS["rmsnorm_swiglu"],
        **VARIANTS["learned_positions"],
    }
    _check_pipeline(env, kwargs)


def test_token_losses_refuses_a_pipeline_model():
    from deepspeed.pipe import PipelineModule

    class FakePipeline(PipelineModule):
        def __init__(self):  # skip PipelineModule's distributed set-up
            torch.nn.Module.__init__(self)

    with pytest.raises(TypeError, match="pipeline_loss_fn"):
        token_losses(FakePipeline(), make_batch(ModelConfig(**TINY)))


# ----------------------------------------------------------------------------- GPU


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _gpu_worker(rank: int, world_size: int, tp: int, impl: str):
    from megagrape import parallel

    env = parallel.init_distributed(ParallelConfig(tensor_parallel=tp), seed=SEED)
    cfg = ModelConfig(**TINY, transformer_impl=impl, hidden_dropout=0.1, attention_dropout=0.1)
    model = build_model(cfg, env, dtype=torch.bfloat16)
    batch = make_batch(cfg)
    losses = token_losses(model, batch)
    masked_mean(losses, batch["loss_mask"]).backward()
    grads_finite = all(torch.isfinite(p.grad).all().item() for p in model.parameters())
    result = {
        "backend": env.backend,
        "device": env.device.type,
        "dtype": str(next(model.parameters()).dtype),
        "loss": masked_mean(losses, batch["loss_mask"]).item(),
        "grads_finite": grads_finite,
        "losses_agree": parallel.all_ranks_agree(losses.detach()),
    }
    parallel.destroy_distributed()
    return result


@pytest.mark.gpu
@needs_cuda
def test_nccl_bf16_forward_backward():
    tp = 2 if torch.cuda.device_count() >= 2 else 1
    results = run_distributed(_gpu_worker, world_size=tp, args=(tp, "local"))
    for result in results:
        assert result["backend"] == "nccl" and result["device"] == "cuda"
        assert result["dtype"] == "torch.bfloat16"
        assert math.isfinite(result["loss"]) and result["grads_finite"] and result["losses_agree"]


@pytest.mark.gpu
@needs_cuda
def test_transformer_engine_spec_runs():
    pytest.importorskip("transformer_engine")
    (result,) = run_distributed(_gpu_worker, world_size=1, args=(1, "transformer_engine"))
    assert math.isfinite(result["loss"]) and result["grads_finite"]
