"""Framework overhead of a megagrape training step vs a bare loop on the same engine, and
the step with the micro-batch loader's worker processes against collating on the thread.

    python benchmarks/bench_step.py [--config configs/quickstart.yaml] [--steps 10]
                                    [--repeats 5] [--loader-workers 2] [--loader-prefetch 2]
                                    [--out benchmarks/results/bench_step.json] [key=value ...]

Both sides use one DeepSpeed engine wrapping one megatron-core GPTModel, the same batch
shape and the same number of micro-batches per step:

* megagrape: ``Trainer.train_step()`` with a static mixture — sampler, micro-batch plan,
  GPTDataset reads and collation, per-sample and per-domain loss bookkeeping, engine
  forward/backward/step, the per-step statistics reduction;
* megagrape_loader (with ``--loader-workers N > 0``): the same ``Trainer.train_step()`` with
  the step's micro-batches read and collated by N DataLoader workers
  (megagrape/data/loader.py) instead of on the training thread; same trainer, same model;
* bare: the loop a user would write by hand — pre-collated micro-batches already in memory,
  ``engine(tokens) -> masked mean loss -> engine.backward -> engine.step``.

Blocks of ``--steps`` steps alternate between the sides ``--repeats`` times (so drift in
machine load hits all of them), and the medians of the per-step times are compared; the
spread of a side is (slowest block - fastest block) / median. Also timed: collating one step's
micro-batches on the thread (what the loader can at most take off the critical path). Prints
JSON and a short table; overhead = megagrape / bare - 1 (target <= 5%). ``--json`` writes the
bare result (benchmarks/run_all.py wraps it); ``--out`` writes a self-describing record
(command, date, machine, result).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from trainer_bench import start_trainer

from megagrape import parallel
from megagrape.data.loader import LoaderSettings, MicroBatchLoader
from megagrape.data.microbatches import collate, plan_microbatches
from megagrape.model import token_losses


def bare_step(engine, micro_batches: list[dict]) -> None:
    for batch in micro_batches:
        losses = token_losses(engine, batch)
        mask = batch["loss_mask"]
        loss = (losses * mask).sum() / mask.sum() / len(micro_batches)
        engine.backward(loss, scale_wrt_gas=False)
    engine.step()


def time_block(fn, steps: int) -> float:
    """Seconds per step over ``steps`` calls of ``fn``."""
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - started) / steps


def spread(values: list[float]) -> float:
    """(slowest - fastest) / median of one side's block times."""
    return (max(values) - min(values)) / statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--ds_config", default="configs/ds/zero1.json")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per side")
    parser.add_argument(
        "--loader-workers", type=int, default=2, help="workers of the loader side (0 = no side)"
    )
    parser.add_argument("--loader-prefetch", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--json", default=None, help="also write the JSON object to this file")
    parser.add_argument(
        "--out", default=None, help="write the record (command, date, machine, result) here"
    )
    args = parser.parse_args()
    started_at, load_before = time.perf_counter(), os.getloadavg()
    sides = ["megagrape", "bare"] + (["megagrape_loader"] if args.loader_workers > 0 else [])

    trainer = start_trainer(
        args.config,
        args.ds_config,
        [
            "mixture.method=static",
            "mixture.options={}",
            "train.microbatch_schedule=fixed",
            "name=bench_step",
            f"train.train_iters={(args.repeats + 1) * args.steps * len(sides) + 10}",
            *args.overrides,
        ],
    )
    cfg, env, engine = trainer.cfg, trainer.env, trainer.module.engine
    datasets = trainer.data.datasets
    # the two megagrape sides differ only in the train module's loader
    loaders = {
        "megagrape": MicroBatchLoader(datasets, LoaderSettings(num_workers=0), env.device),
        "megagrape_loader": MicroBatchLoader(
            datasets,
            LoaderSettings(num_workers=args.loader_workers, prefetch_factor=args.loader_prefetch),
            env.device,
        ),
    }

    # The bare loop gets real micro-batches of the same shape, collated once up front.
    plan = plan_microbatches(
        trainer.mixture.sampler.next_global_batch(),
        env.dp_rank,
        env.dp_size,
        cfg.train.micro_batch_size,
        "fixed",
    )
    micro_batches = [collate(datasets, micro, env.device) for micro in plan]

    def ours(side: str):
        def step() -> None:
            trainer.module.loader = loaders[side]
            trainer.train_step()

        return step

    def bare() -> None:
        bare_step(engine, micro_batches)

    def collate_step() -> None:
        for micro in plan:
            collate(datasets, micro, env.device)

    def fetch_step() -> None:  # the loader alone: one step's batches, nothing to overlap with
        list(loaders["megagrape_loader"].batches(plan))

    run = {side: bare if side == "bare" else ours(side) for side in sides}
    for side in sides:  # warm-up: allocator, first touch of the mmaps, the worker pool
        time_block(run[side], 3)
    samples: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(args.repeats):
        for side in sides:
            samples[side].append(time_block(run[side], args.steps))
    collate_s = statistics.median(time_block(collate_step, args.steps) for _ in range(5))
    fetch_s = (
        statistics.median(time_block(fetch_step, args.steps) for _ in range(5))
        if "megagrape_loader" in sides
        else None
    )
    for loader in loaders.values():
        loader.close()
    median = {side: statistics.median(samples[side]) for side in sides}
    result = {
        "benchmark": "step_overhead",
        "device": str(env.device),
        "torch_threads": torch.get_num_threads(),
        "model": {
            "layers": cfg.model.num_layers,
            "hidden": cfg.model.hidden_size,
            "seq_length": cfg.model.seq_length,
            "parameters": cfg.model.num_parameters(env.tp_size),
        },
        "global_batch_size": cfg.train.global_batch_size,
        "micro_batches_per_step": len(plan),
        "steps_per_block": args.steps,
        "repeats": args.repeats,
        "megagrape_step_s": samples["megagrape"],
        "bare_step_s": samples["bare"],
        "megagrape_median_s": median["megagrape"],
        "bare_median_s": median["bare"],
        "overhead": median["megagrape"] / median["bare"] - 1.0,
        "tokens_per_s": cfg.train.global_batch_size * cfg.model.seq_length / median["megagrape"],
        "spread": {side: spread(samples[side]) for side in sides},
        "fastest_block_s": {side: min(samples[side]) for side in sides},
        "collate_in_thread_s_per_step": collate_s,
    }
    if "megagrape_loader" in sides:
        result["loader"] = {
            "workers": args.loader_workers,
            "prefetch": args.loader_prefetch,
            "step_s": samples["megagrape_loader"],
            "median_s": median["megagrape_loader"],
            "change_vs_in_thread": median["megagrape_loader"] / median["megagrape"] - 1.0,
            "fetch_only_s_per_step": fetch_s,
        }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(text + "\n")
    if args.out:
        seconds = time.perf_counter() - started_at
        write_record(args.out, result, seconds, str(env.device), load_before)
    print(f"\n{'side':<18} {'median step (ms)':>18} {'fastest block':>14} {'spread':>8}")
    for side in sides:
        fastest = result["fastest_block_s"][side] * 1000
        print(
            f"{side:<18} {median[side] * 1000:>18.1f} {fastest:>14.1f} "
            f"{result['spread'][side]:>8.1%}"
        )
    print(f"overhead: {result['overhead'] * 100:+.1f}% (target <= 5%)")
    if "loader" in result:
        change = result["loader"]["change_vs_in_thread"]
        print(f"loader ({args.loader_workers} workers) vs in-thread collate: {change * 100:+.1f}%")
    print(f"collating one step on the thread: {collate_s * 1000:.2f} ms")
    if fetch_s is not None:
        print(f"one step's batches through the loader alone: {fetch_s * 1000:.2f} ms")
    parallel.destroy_distributed()


def write_record(path: str, result: dict, seconds: float, device: str, load_before) -> None:
    """The result with the command, the date and the machine it was taken on."""
    from run_all import machine  # benchmarks/ is on sys.path when this runs as a script

    record = {
        "benchmark": "step_loader",
        "command": " ".join(
            ["python", "benchmarks/bench_step.py", *map(shlex.quote, sys.argv[1:])]
        ),
        "date": datetime.date.today().isoformat(),
        "seconds": round(seconds, 1),
        "machine": {**machine(device), "load_average": list(load_before)},
        "result": result,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
