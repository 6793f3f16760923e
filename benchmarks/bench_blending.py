"""Benchmark the blending builder: megagrape's C++ vs Megatron's, and a weight change's cost.

    .venv/bin/python benchmarks/bench_blending.py                 # 10^8 samples, 64 domains, 5 repeats
    .venv/bin/python benchmarks/bench_blending.py --samples 1000000 --repeats 3

(1) One segment of --samples samples over --domains domains, built by
    megatron.core.datasets.helpers_cpp.build_blending_indices and by
    megagrape.ops.build_blending_segment into preallocated arrays of the exact dtypes
    (int16/int64/float64), alternating, --repeats times; medians of wall and thread CPU time,
    the ratio ours/megatron, and whether both outputs are identical.
(2) MixtureSampler: build the whole stream, then set_weights at a fraction f of it and build
    the rest again; the rebuild should cost about (1 - f) of the full build.

Prints one JSON object, then a short table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from megagrape.data.megatron_blending import megatron_helpers
from megagrape.data.sampler import MixtureSampler
from megagrape.ops.blending import blending_kernel, build_blending_segment


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this thread) of fn()."""
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - wall, time.thread_time() - cpu


def bench_builders(samples: int, domains: int, repeats: int, seed: int) -> dict:
    megatron = megatron_helpers()
    rng = np.random.default_rng(seed)
    weights = rng.random(domains)
    weights /= weights.sum()
    megatron_index = np.zeros(samples, dtype=np.int16)
    megatron_sample = np.zeros(samples, dtype=np.int64)
    our_index = np.zeros(samples, dtype=np.int16)
    our_sample = np.zeros(samples, dtype=np.int64)
    zeros = np.zeros(domains, dtype=np.int64)

    def run_megatron():
        megatron.build_blending_indices(
            megatron_index, megatron_sample, weights, domains, samples, False
        )

    def run_ours():
        build_blending_segment(our_index, our_sample, weights, zeros, zeros.copy(), 0, 0)

    times = {"megatron": [], "megagrape": []}
    for repeat in range(repeats):
        order = [("megatron", run_megatron), ("megagrape", run_ours)]
        for name, fn in order if repeat % 2 == 0 else order[::-1]:
            times[name].append(timed(fn))
    medians = {
        name: {
            "wall_s": statistics.median(t[0] for t in runs),
            "cpu_s": statistics.median(t[1] for t in runs),
        }
        for name, runs in times.items()
    }
    return {
        "samples": samples,
        "domains": domains,
        "repeats": repeats,
        "kernel": blending_kernel() if domains >= 16 else "scalar",
        "identical": bool(
            np.array_equal(our_index, megatron_index)
            and np.array_equal(our_sample, megatron_sample)
        ),
        "megatron": medians["megatron"],
        "megagrape": medians["megagrape"],
        "ratio_wall": medians["megagrape"]["wall_s"] / medians["megatron"]["wall_s"],
        "ratio_cpu": medians["megagrape"]["cpu_s"] / medians["megatron"]["cpu_s"],
        "ns_per_sample": {name: 1e9 * m["wall_s"] / samples for name, m in medians.items()},
    }


def bench_weight_change(
    samples: int, domains: int, repeats: int, seed: int, fractions: list[float]
) -> dict:
    rng = np.random.default_rng(seed + 1)
    names = [f"domain{d}" for d in range(domains)]
    budgets = [samples] * domains
    first, later = rng.dirichlet(np.ones(domains)), rng.dirichlet(np.ones(domains))
    full_times: list[float] = []
    change_times: dict[float, list[float]] = {f: [] for f in fractions}
    set_weights_times: dict[float, list[float]] = {f: [] for f in fractions}
    for _ in range(repeats):
        sampler = MixtureSampler(names, budgets, first, global_batch_size=512)
        full_times.append(timed(lambda s=sampler: s.peek(samples - 1, 1))[0])
        for fraction in sorted(fractions):  # later changes may not precede earlier ones
            at = int(fraction * samples)
            set_weights_s = timed(lambda s=sampler, a=at: s.set_weights(later, at_sample=a))[0]
            rebuild_s = timed(lambda s=sampler: s.peek(samples - 1, 1))[0]
            set_weights_times[fraction].append(set_weights_s)
            change_times[fraction].append(set_weights_s + rebuild_s)
    full = statistics.median(full_times)
    return {
        "samples": samples,
        "domains": domains,
        "repeats": repeats,
        "full_build_s": full,
        "changes": [
            {
                "at_fraction": fraction,
                "set_weights_s": statistics.median(set_weights_times[fraction]),
                "set_weights_plus_rebuild_s": statistics.median(change_times[fraction]),
                "cost_vs_full": statistics.median(change_times[fraction]) / full,
                "samples_after_change_fraction": 1.0 - fraction,
            }
            for fraction in sorted(fractions)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10**8)
    parser.add_argument("--domains", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--change-at",
        type=float,
        nargs="+",
        default=[0.5, 0.9],
        help="fractions of the stream where the weights change (section 2)",
    )
    parser.add_argument("--json", default=None, help="also write the JSON object to this file")
    args = parser.parse_args()
    builders = bench_builders(args.samples, args.domains, args.repeats, args.seed)
    change = bench_weight_change(
        args.samples, args.domains, args.repeats, args.seed, args.change_at
    )
    text = json.dumps({"builders": builders, "weight_change": change}, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(text + "\n")

    print()
    print(
        f"blending build: {args.samples:,} samples x {args.domains} domains, median of "
        f"{args.repeats} (kernel {builders['kernel']}, identical output: {builders['identical']})"
    )
    print(f"{'':24}{'wall s':>10}{'cpu s':>10}{'ns/sample':>11}")
    for name in ("megatron", "megagrape"):
        m = builders[name]
        print(
            f"{name:24}{m['wall_s']:10.3f}{m['cpu_s']:10.3f}{builders['ns_per_sample'][name]:11.1f}"
        )
    print(
        f"{'ratio megagrape/megatron':24}{builders['ratio_wall']:10.3f}{builders['ratio_cpu']:10.3f}"
    )
    print()
    print(f"weight change (MixtureSampler): full build {change['full_build_s']:.3f} s")
    for row in change["changes"]:
        print(
            f"  change at {row['at_fraction']:.0%}: set_weights {row['set_weights_s'] * 1e3:.2f} ms"
            f" + rebuild = {row['set_weights_plus_rebuild_s']:.3f} s = "
            f"{row['cost_vs_full']:.3f} of full (samples after the change: "
            f"{row['samples_after_change_fraction']:.2f})"
        )


if __name__ == "__main__":
    main()
