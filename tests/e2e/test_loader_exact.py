"""Loader workers change where micro-batches are read, not what trains: identical runs.

Two data-parallel ranks over gloo train the tiny model with GRAPE (events every 3 steps, so
domain-pure ``by_domain`` rounds with padding micro-batches on event steps, fixed
micro-batches elsewhere) once with ``data.loader_workers=0`` (collate on the training thread)
and once with 2 workers per rank, and a third time with workers, stopped half-way by
``train.exit_interval`` and resumed by a new Trainer. Per-step losses, the domain weights and
every parameter must be bit-identical; the workers must exist during training and be gone
when ``train()`` returns.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.dist_utils import run_distributed
from tests.run_utils import tiny_config

STEPS = 8


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _train(corpus, out, name, env, *overrides):
    from megagrape.ds_config import read_ds_config, resolve_ds_config
    from megagrape.train import build_trainer
    from megagrape.train.callbacks import Callback, default_callbacks

    cfg = tiny_config(
        corpus,
        out,
        name,
        "mixture.method=grape",
        "mixture.interval=3",
        "mixture.options={mu_a: 20.0, mu_z: 20.0}",
        f"train.train_iters={STEPS}",
        *overrides,
    )
    seen: list[list[int]] = []

    class RecordWorkers(Callback):
        def on_step_end(self, trainer, record):
            seen.append(trainer.module.loader.worker_pids())

    ds = resolve_ds_config(
        read_ds_config("configs/ds/zero1.json"), cfg, env.world_size, env.device, pipeline=False
    )
    trainer = build_trainer(cfg, ds, env, callbacks=[*default_callbacks(), RecordWorkers()])
    summary = trainer.train()
    digest = hashlib.sha256()
    for param in trainer.module.engine.module.parameters():
        digest.update(param.detach().float().contiguous().numpy().tobytes())
    pids = sorted({p for step in seen for p in step})
    return {
        "loss": summary["history"]["loss"],
        "step": summary["step"],
        "alpha": trainer.mixture.method.domain_weights.tolist(),
        "params": digest.hexdigest(),
        "workers_per_step": [len(s) for s in seen],
        "alive_after": [p for p in pids if _alive(p)],
    }


def _runs(rank, world_size, corpus, out):
    from megagrape import parallel

    env = parallel.init_distributed(tiny_config(corpus, out, "x").parallel, 1234)
    try:
        off = _train(corpus, out, "off", env, "data.loader_workers=0")
        on = _train(corpus, out, "on", env, "data.loader_workers=2", "data.loader_prefetch=1")
        split = [
            _train(corpus, out, "split", env, "data.loader_workers=2", "train.exit_interval=4")
            for _ in range(2)
        ]
    finally:
        parallel.destroy_distributed()
    return {"off": off, "on": on, "split": split}


def test_loader_workers_train_bit_identically_and_resume_exactly(test_corpus, tmp_path):
    results = run_distributed(_runs, 2, args=(test_corpus, tmp_path))
    for rank, result in enumerate(results):
        off, on, (first, second) = result["off"], result["on"], result["split"]
        assert off["workers_per_step"] == [0] * STEPS
        assert on["workers_per_step"] == [2] * STEPS, "the workers were not used"
        assert on["alive_after"] == [], f"rank {rank}: loader workers outlived train()"
        assert len(off["loss"]) == STEPS
        assert on["loss"] == off["loss"], f"rank {rank}: losses differ with loader workers"
        assert on["alpha"] == off["alpha"]
        assert on["params"] == off["params"], f"rank {rank}: parameters differ"
        assert off["alpha"] != [1 / 3] * 3, "GRAPE never moved the weights: no event ran"
        # stopped at step 4 (workers closed at the exit), resumed by a fresh Trainer
        assert first["step"] == 4 and second["step"] == STEPS
        assert first["alive_after"] == []
        assert first["loss"] + second["loss"] == off["loss"]
        assert second["params"] == off["params"]
        assert second["alpha"] == off["alpha"]
    assert results[0]["on"]["params"] == results[1]["on"]["params"]


def _pipeline_runs(rank, world_size, corpus, out):
    from megagrape import parallel
    from tests.run_utils import train_in_process

    results = {}
    cfg0 = tiny_config(corpus, out, "x", "parallel.pipeline_parallel=2")
    env = parallel.init_distributed(cfg0.parallel, cfg0.seed)
    try:
        for workers in (0, 2):
            cfg = tiny_config(
                corpus,
                out,
                f"pp{workers}",
                "parallel.pipeline_parallel=2",
                "train.train_iters=4",
                f"data.loader_workers={workers}",
            )
            trainer, summary = train_in_process(cfg, "configs/ds/zero1.json", env)
            digest = hashlib.sha256()
            for param in trainer.module.engine.module.parameters():
                digest.update(param.detach().float().contiguous().numpy().tobytes())
            results[workers] = (summary["history"]["loss"], digest.hexdigest())
    finally:
        parallel.destroy_distributed()
    return results


def test_pipeline_path_trains_bit_identically_with_loader_workers(test_corpus, tmp_path):
    results = run_distributed(_pipeline_runs, 2, args=(test_corpus, tmp_path))
    for result in results:
        assert len(result[0][0]) == 4
        assert result[2] == result[0]  # losses and this stage's parameters
