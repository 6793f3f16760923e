"""Sharded gradient capture: the Gram matrices from DP/TP/PP shards under ZeRO 0-3 equal the Gram
of full gradients computed in one process; capture never changes training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megagrape.train.capture import capture_mode
from tests.dist_utils import run_distributed
from tests.run_utils import tiny_config

ALL_NEEDS = frozenset(
    {"domain_target_gram", "domain_gram", "target_losses", "domain_sq_norms", "target_gram"}
)
GRAPE = ("mixture.method=grape", "mixture.interval=1", "train.train_iters=1")


def _trainer(corpus, out, name, ds_path, overrides):
    from megagrape import parallel
    from megagrape.ds_config import read_ds_config, resolve_ds_config
    from megagrape.train import build_trainer

    cfg = tiny_config(corpus, out, name, *overrides)
    env = parallel.init_distributed(cfg.parallel, cfg.seed)
    pipeline = cfg.parallel.pipeline_parallel > 1
    ds = resolve_ds_config(read_ds_config(ds_path), cfg, env.world_size, env.device, pipeline)
    return build_trainer(cfg, ds, env), env


def _sharded_capture(rank, world_size, corpus, out, ds_path, overrides):
    from megagrape import parallel
    from megagrape.train.capture import CaptureSettings, GradientCapture, build_gradient_source

    trainer, env = _trainer(corpus, out, f"cap{rank}", ds_path, (*GRAPE, *overrides))
    mixture, cfg = trainer.mixture, trainer.cfg
    mode = mixture.capture.mode
    source = build_gradient_source(
        mode, trainer.module.engine, cfg.model, env, cfg.train.micro_batch_size
    )
    mixture.capture = GradientCapture(
        needs=ALL_NEEDS,
        mode=mode,
        source=source,
        env=env,
        tasks=trainer.data.tasks,
        datasets=trainer.data.datasets,
        settings=CaptureSettings.from_config(cfg),
    )
    events = []
    mixture_after_step = mixture.after_step

    def keep_observed(plan, steps_done, record, observed, lr):
        events.append(observed)
        return mixture_after_step(plan, steps_done, record, observed, lr)

    mixture.after_step = keep_observed
    trainer.train_step()
    obs = mixture.last_observation
    parallel.destroy_distributed()
    return {
        "G": obs.domain_target_gram.numpy(),
        "D": obs.domain_gram.numpy(),
        "losses": obs.target_losses.numpy(),
        "norms": obs.domain_sq_norms.numpy(),
        "T": obs.target_gram.numpy(),
        "mode": mode,
        "probed": events[0].probed_domains,
        "stored_bytes": events[0].stored_bytes,
        "slot_bytes": source.slot_bytes(),
        "model_bytes": 4
        * sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in source.params),
    }


def _reference(rank, world_size, corpus, out):
    """Full-model gradients of the same step-0 batch and signal batches, by plain autograd."""
    from megagrape import parallel
    from megagrape.data.microbatches import MicroBatch, collate
    from megagrape.model import build_model, token_losses

    trainer, env = _trainer(corpus, out, "ref", "configs/ds/zero0.json", GRAPE)
    model = build_model(trainer.cfg.model, env)
    params = [p for p in model.parameters() if p.requires_grad]

    def flat_grad(batch, weights):
        losses = token_losses(model, batch)
        mask = batch["loss_mask"]
        per_item = (losses * mask).sum(1) / mask.sum(1)
        grads = torch.autograd.grad((per_item * weights).sum(), params)
        return torch.cat([g.reshape(-1) for g in grads]).double(), float((per_item * weights).sum())

    batch = trainer.mixture.sampler.peek(0, trainer.cfg.train.global_batch_size)
    domain_ids, sample_ids = batch
    k = len(trainer.data.domains)
    assert sorted(set(domain_ids.tolist())) == list(range(k)), (
        "every domain must be in the first batch"
    )
    g = []
    for d in range(k):
        ids = sample_ids[domain_ids == d].astype(np.int64)
        micro = MicroBatch(np.full(len(ids), d), ids, np.ones(len(ids)), d)
        tensors = collate(trainer.data.datasets, micro, env.device)
        g.append(flat_grad(tensors, torch.full((len(ids),), 1.0 / len(ids)))[0])
    h, losses = [], []
    for task in trainer.data.tasks:
        indices = task.signal_indices(0, trainer.cfg.targets.signal_batch_size, trainer.cfg.seed)
        tensors = task.signal_batch(indices, trainer.cfg.model.seq_length)
        grad, loss = flat_grad(tensors, torch.full((len(indices),), 1.0 / len(indices)))
        h.append(grad)
        losses.append(loss)
    g, h = torch.stack(g), torch.stack(h)
    parallel.destroy_distributed()
    return {
        "G": (g @ h.T).numpy(),
        "D": (g @ g.T).numpy(),
        "T": (h @ h.T).numpy(),
        "norms": (g * g).sum(dim=1).numpy(),
        "losses": np.array(losses),
    }


@pytest.fixture(scope="module")
def reference(test_corpus, tmp_path_factory):
    return run_distributed(_reference, 1, args=(test_corpus, tmp_path_factory.mktemp("ref")))[0]


@pytest.mark.parametrize(
    ("ds_path", "overrides", "mode"),
    [
        ("configs/ds/zero0.json", (), "linear"),
        ("configs/ds/zero1.json", (), "linear"),
        ("configs/ds/zero2.json", (), "probe"),
        ("configs/ds/zero3.json", (), "partitioned"),
        ("configs/ds/zero1.json", ("parallel.tensor_parallel=2",), "linear"),
        ("configs/ds/zero1.json", ("parallel.pipeline_parallel=2",), "pipeline"),
    ],
    ids=["dp2-zero0", "dp2-zero1", "dp2-zero2", "dp2-zero3", "tp2-zero1", "pp2-zero1"],
)
def test_sharded_gram_equals_full_gram(test_corpus, tmp_path, reference, ds_path, overrides, mode):
    results = run_distributed(_sharded_capture, 2, args=(test_corpus, tmp_path, ds_path, overrides))
    for key in ("G", "D", "T", "norms", "losses"):
        np.testing.assert_array_equal(results[0][key], results[1][key])  # every rank agrees
    assert results[0]["mode"] == mode
    if mode in ("linear", "partitioned"):
        assert results[0]["probed"] == [], "every domain is in the step-0 batch: read from rounds"
    else:
        assert results[0]["probed"] == list(range(len(reference["G"])))
    if mode == "partitioned":  # each rank holds half of every gradient: N targets + K domains
        for r in results:
            assert r["slot_bytes"] <= r["model_bytes"] / 2 + 4096
            assert (
                r["stored_bytes"]
                <= (len(reference["losses"]) + 2 * len(reference["G"]) + 1) * r["slot_bytes"]
            )
    for key in ("G", "D", "T", "norms"):
        ref = reference[key]
        scale = np.abs(ref).max()
        assert scale > 0
        np.testing.assert_allclose(results[0][key], ref, rtol=0, atol=1e-5 * scale, err_msg=key)
    np.testing.assert_allclose(results[0]["losses"], reference["losses"], rtol=1e-5)


def _local_parameters(engine) -> np.ndarray:
    """This rank's parameter values, flat: whole local tensors, or ZeRO-3 partitions."""
    params = [getattr(p, "ds_tensor", p) for p in engine.module.parameters()]
    return torch.cat([p.detach().reshape(-1) for p in params]).clone().numpy()


def _params_after_one_step(rank, world_size, corpus, out, interval, schedule, ds_path, layout):
    from megagrape import parallel

    trainer, _env = _trainer(
        corpus,
        out,
        f"p{interval}{schedule}",
        ds_path,
        (
            *GRAPE[:1],
            f"mixture.interval={interval}",
            "train.train_iters=1",
            f"train.microbatch_schedule={schedule}",
            *layout,
        ),
    )
    trainer.train_step()
    captured = trainer.mixture.last_observation is not None
    params = _local_parameters(trainer.module.engine)
    parallel.destroy_distributed()
    return {
        "params": params,
        "captured": captured,
        "schedules": (trainer.mixture.schedule, trainer.mixture.event_schedule),
    }


def test_capture_leaves_training_bit_identical(test_corpus, tmp_path):
    """Same micro-batches with and without an event: the capture must not change a bit. The
    auto schedule packs full micro-batches on steps without an event: the same update up to
    float summation order."""
    args = (test_corpus, tmp_path)
    zero1 = ("configs/ds/zero1.json", ())
    with_capture = run_distributed(_params_after_one_step, 2, args=(*args, 1, "by_domain", *zero1))
    without = run_distributed(_params_after_one_step, 2, args=(*args, 1000, "by_domain", *zero1))
    packed = run_distributed(_params_after_one_step, 2, args=(*args, 1000, "auto", *zero1))
    assert with_capture[0]["captured"] and not without[0]["captured"]
    np.testing.assert_array_equal(with_capture[0]["params"], without[0]["params"])
    assert packed[0]["schedules"] == ("fixed", "by_domain")
    assert not np.array_equal(packed[0]["params"], without[0]["params"])
    np.testing.assert_allclose(packed[0]["params"], without[0]["params"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("schedule", "ds_path", "layout", "event_schedule"),
    [
        ("by_domain", "configs/ds/zero3.json", (), "by_domain"),
        ("auto", "configs/ds/zero1.json", ("parallel.pipeline_parallel=2",), "fixed"),
    ],
    ids=["zero3-dp2", "pp2"],
)
def test_capture_through_the_engine_leaves_training_bit_identical(
    test_corpus, tmp_path, schedule, ds_path, layout, event_schedule
):
    """ZeRO-3 and pipeline captures run their passes through the engine itself; the step that
    follows must still equal the step without a capture, on every rank's own shard."""
    args = (test_corpus, tmp_path, schedule, ds_path, layout)
    with_capture = run_distributed(_params_after_one_step, 2, args=(*args[:2], 1, *args[2:]))
    without = run_distributed(_params_after_one_step, 2, args=(*args[:2], 1000, *args[2:]))
    assert with_capture[0]["captured"] and not without[0]["captured"]
    assert with_capture[0]["schedules"][1] == event_schedule
    for rank in range(2):
        np.testing.assert_array_equal(with_capture[rank]["params"], without[rank]["params"])
    assert not np.array_equal(with_capture[0]["params"], with_capture[1]["params"])


def test_every_layout_has_a_capture_mode():
    modes = {(stage, pp): capture_mode(stage, pp) for stage in range(4) for pp in (1, 2)}
    assert modes == {
        (0, 1): "linear",
        (1, 1): "linear",
        (2, 1): "probe",
        (3, 1): "partitioned",
        **{(stage, 2): "pipeline" for stage in range(4)},
    }


def _capture_without_a_trainer(rank, world_size, corpus, out):
    """GradientCapture on a plain GPTModel (no DeepSpeed, no Trainer): domain-pure rounds of the
    step-0 batch, ordinary backward passes, then the capture's Gram."""
    from megagrape import parallel
    from megagrape.data.microbatches import collate, plan_microbatches
    from megagrape.data.sampler import MixtureSampler
    from megagrape.data.training_data import build_training_data
    from megagrape.model import build_model, token_losses
    from megagrape.train.capture import CaptureSettings, GradientCapture
    from megagrape.train.gradient_sources import ShadowGradients

    cfg = tiny_config(corpus, out, "plain", *GRAPE)
    env = parallel.init_distributed(cfg.parallel, cfg.seed)
    data = build_training_data(cfg)
    model = build_model(cfg.model, env)
    k = len(data.domains)
    sampler = MixtureSampler(data.domain_names, data.budgets, np.full(k, 1 / k), 8)
    batch = sampler.next_global_batch()
    capture = GradientCapture(
        needs=ALL_NEEDS,
        mode="linear",
        source=ShadowGradients(model, cfg.model, env),
        env=env,
        tasks=data.tasks,
        datasets=data.datasets,
        settings=CaptureSettings.from_config(cfg),
    )
    plan = plan_microbatches(batch, 0, 1, cfg.train.micro_batch_size, "by_domain")
    capture.begin_step(0, batch, plan, np.ones(k), sampler.realised_counts())
    for micro in plan:
        tensors = collate(data.datasets, micro, env.device)
        losses = token_losses(model, tensors)
        mask = tensors["loss_mask"]
        per_sample = (losses * mask).sum(1) / mask.sum(1)
        ((per_sample * tensors["loss_weights"]).sum() / len(batch.domain_ids)).backward()
        capture.after_microbatch(micro)
    result = capture.end_step()
    parallel.destroy_distributed()
    return {
        "G": result.domain_target_gram.numpy(),
        "D": result.domain_gram.numpy(),
        "losses": result.target_losses.numpy(),
        "probed": result.probed_domains,
    }


def test_capture_is_testable_without_a_trainer(test_corpus, tmp_path, reference):
    result = run_distributed(_capture_without_a_trainer, 1, args=(test_corpus, tmp_path))[0]
    assert result["probed"] == [], "every domain is in the step-0 batch: no probe needed"
    for key in ("G", "D"):
        scale = np.abs(reference[key]).max()
        np.testing.assert_allclose(result[key], reference[key], rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(result["losses"], reference["losses"], rtol=1e-5)
