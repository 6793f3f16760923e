"""Shared by the benchmarks that time real training steps: a one-process Trainer, and the
cost of a reweighting event measured against the plain steps around it.

The event cost is timed the way a user pays it: with a gradient method every ``interval``
steps, the step that ends in an event (per-domain gradient capture during its backward,
the target gradients, the sharded Gram, the method's update, the sampler's new segment)
against the median of the plain steps of the same run.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from megagrape import parallel
from megagrape.config import RunConfig, load_config
from megagrape.ds_config import read_ds_config, resolve_ds_config
from megagrape.train import Trainer, build_trainer

QUIET_RUN = [
    "logging.tensorboard=false",
    "logging.progress_bar=false",
    "checkpoint.resume=none",
    "checkpoint.interval=0",
    "targets.eval_interval=0",
]
"""Overrides that keep a timed run free of logging, evaluation and checkpoint writes."""


def start_trainer(config: str, ds_config: str, overrides: list[str], edit=None) -> Trainer:
    """Load ``config`` with ``overrides`` (then ``edit(cfg)`` if given; warm-up clipped to the
    short timed run), start a one-rank process group and build the Trainer. Call
    ``parallel.destroy_distributed()`` after."""
    cfg = load_config(config, [*QUIET_RUN, *overrides])
    if edit is not None:
        edit(cfg)
    cfg.train.lr_warmup_iters = min(cfg.train.lr_warmup_iters, cfg.train.train_iters)
    cfg.validate(world_size=1)
    env = parallel.init_distributed(cfg.parallel, cfg.seed)
    ds = resolve_ds_config(
        read_ds_config(ds_config), cfg, env.world_size, env.device, pipeline=False
    )
    return build_trainer(cfg, ds, env)


def replicate_corpus(cfg: RunConfig, domains: int, targets: int, workdir: Path) -> None:
    """Point ``cfg`` at ``domains`` training domains and ``targets`` target tasks made by
    cycling over the corpus's own (Megatron prefixes reused under new names; target files
    linked under new names in ``workdir``), so K and N can be set independently of the
    corpus while the model, tokens and batch stay real."""
    bin_dir = Path(cfg.data.resolved_bin_dir())
    prefixes = sorted(str(p)[: -len(".idx")] for p in bin_dir.glob("*_text_document.idx"))
    target_dir = Path(cfg.data.corpus) / "targets"
    target_files = sorted(target_dir.glob("*.jsonl"))
    if not prefixes or not target_files:
        raise SystemExit(
            f"{cfg.data.corpus}: needs bin/*.idx and targets/*.jsonl (prepare it first)"
        )
    cfg.data.prefixes = {f"domain{i:03d}": prefixes[i % len(prefixes)] for i in range(domains)}
    cfg.data.domains = list(cfg.data.prefixes)
    linked = workdir / "targets"
    linked.mkdir(parents=True, exist_ok=True)
    for j in range(targets):
        (linked / f"target{j:02d}.jsonl").symlink_to(target_files[j % len(target_files)].resolve())
    cfg.targets.dir = str(linked)
    cfg.targets.tasks = []


def measure_event_cost(
    config: str,
    ds_config: str,
    domains: int,
    targets: int,
    interval: int,
    events: int,
    overrides: list[str],
) -> dict:
    """Time ``events`` reweighting events of ``mixture.method`` (GRAPE unless overridden)
    at K=``domains``, N=``targets``; returns step and event seconds (medians) and the event
    cost as a fraction of a plain step."""
    steps = 2 * interval + interval * events  # two warm-up intervals, then the timed ones
    with tempfile.TemporaryDirectory(prefix="megagrape_event_") as tmp:
        trainer = start_trainer(
            config,
            ds_config,
            [
                "mixture.method=grape",
                f"mixture.interval={interval}",
                "mixture.warmup_steps=0",
                "name=bench_event",
                f"output_dir={tmp}/runs",
                f"train.train_iters={steps}",
                *overrides,
            ],
            edit=lambda cfg: replicate_corpus(cfg, domains, targets, Path(tmp)),
        )
        reported: list[dict] = []
        log_event = trainer.metrics.mixture_event

        def keep_event_time(record: dict) -> None:
            reported.append({"reweight": record["reweight_time_s"], **record["capture_time_s"]})
            log_event(record)

        trainer.metrics.mixture_event = keep_event_time
        try:
            plain, event = [], []
            for _ in range(steps):
                is_event = trainer.mixture.is_event(trainer.step)
                started = time.perf_counter()
                trainer.train_step()
                seconds = time.perf_counter() - started
                if trainer.step <= 2 * interval:
                    continue
                (event if is_event else plain).append(seconds)
            cfg = trainer.cfg
            result = {
                "method": trainer.mixture.method.name,
                "domains": len(trainer.data.domains),
                "targets": len(trainer.data.tasks),
                "interval": interval,
                "events_timed": len(event),
                "plain_steps_timed": len(plain),
                "model": {
                    "layers": cfg.model.num_layers,
                    "hidden": cfg.model.hidden_size,
                    "seq_length": cfg.model.seq_length,
                    "parameters": cfg.model.num_parameters(trainer.env.tp_size),
                },
                "global_batch_size": cfg.train.global_batch_size,
                "capture_mode": getattr(trainer.mixture.capture, "mode", None),
                "plain_step_s": statistics.median(plain),
                "event_step_s": statistics.median(event),
                "event_extra_s": statistics.median(event) - statistics.median(plain),
                "event_parts_s": {
                    part: statistics.median(r[part] for r in reported[-len(event) :])
                    for part in ("reweight", "target_gradients", "probes")
                },
            }
        finally:
            parallel.destroy_distributed()
    result["event_fraction_of_step"] = result["event_extra_s"] / result["plain_step_s"]
    result["amortized_overhead"] = result["event_fraction_of_step"] / interval
    return result
