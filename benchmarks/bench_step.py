"""Framework overhead of a megagrape training step vs a bare loop on the same engine.

    python benchmarks/bench_step.py [--corpus data/quickstart] [--config configs/quickstart.yaml]
                                    [--steps 10] [--repeats 5] [key=value ...]

Both sides use one DeepSpeed engine wrapping one megatron-core GPTModel, the same batch
shape and the same number of micro-batches per step:

* megagrape: ``Trainer.train_step()`` with a static mixture — sampler, micro-batch plan,
  GPTDataset reads and collation, per-sample and per-domain loss bookkeeping, engine
  forward/backward/step, the per-step statistics reduction;
* bare: the loop a user would write by hand — pre-collated micro-batches already in memory,
  ``engine(tokens) -> masked mean loss -> engine.backward -> engine.step``.

Blocks of ``--steps`` steps alternate between the two sides ``--repeats`` times (so drift in
machine load hits both), and the medians of the per-step times are compared. Prints JSON and a
short table; overhead = megagrape / bare - 1 (target <= 5%).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from trainer_bench import start_trainer

from megagrape import parallel
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--ds_config", default="configs/ds/zero1.json")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per side")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--json", default=None, help="also write the JSON object to this file")
    args = parser.parse_args()

    trainer = start_trainer(
        args.config,
        args.ds_config,
        [
            "mixture.method=static",
            "mixture.options={}",
            "train.microbatch_schedule=fixed",
            "name=bench_step",
            f"train.train_iters={(args.repeats + 1) * args.steps * 2 + 10}",
            *args.overrides,
        ],
    )
    cfg, env, engine = trainer.cfg, trainer.env, trainer.module.engine

    # The bare loop gets real micro-batches of the same shape, collated once up front.
    plan = plan_microbatches(
        trainer.mixture.sampler.next_global_batch(),
        env.dp_rank,
        env.dp_size,
        cfg.train.micro_batch_size,
        "fixed",
    )
    micro_batches = [collate(trainer.data.datasets, micro, env.device) for micro in plan]

    def ours() -> None:
        trainer.train_step()

    def bare() -> None:
        bare_step(engine, micro_batches)

    time_block(ours, 3)  # warm-up: allocator, first-touch of the datasets' mmaps
    time_block(bare, 3)
    samples = {"megagrape": [], "bare": []}
    for _ in range(args.repeats):
        samples["megagrape"].append(time_block(ours, args.steps))
        samples["bare"].append(time_block(bare, args.steps))
    ours_median = statistics.median(samples["megagrape"])
    bare_median = statistics.median(samples["bare"])
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
        "megagrape_median_s": ours_median,
        "bare_median_s": bare_median,
        "overhead": ours_median / bare_median - 1.0,
        "tokens_per_s": cfg.train.global_batch_size * cfg.model.seq_length / ours_median,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(text + "\n")
    print(f"\n{'side':<10} {'median step (ms)':>18}")
    print(f"{'megagrape':<10} {ours_median * 1000:>18.1f}")
    print(f"{'bare':<10} {bare_median * 1000:>18.1f}")
    print(f"overhead: {result['overhead'] * 100:+.1f}% (target <= 5%)")
    parallel.destroy_distributed()


if __name__ == "__main__":
    main()
