#!/usr/bin/env python
"""GRAPE's sensitivity grid: mu_a x mu_z x reweighting interval x smoothing, against uniform.

    python tools/sweep_grape.py --preset quickstart --scale cpu --seeds 2 \\
        --mu-a 0.5,1.5,4.5 --mu-z 1.5,5,15 --intervals 5,10,20 --smoothing 0.001,0.05 \\
        --out runs/sweep_grape [--jobs 2] [--estimate] [--report-only]

--noise-seeds 3,4 also runs uniform on seeds 3 and 4, so that uniform's noise floor has more
seeds than the grid. Writes under --out: results/<run>.json (one per run; an interrupted sweep
continues from them), sweep.md (the tables), sweep.json (per grid point: the seed-paired token efficiency vs uniform on the worst
and mean target, with bootstrap intervals, and uniform's noise floor) and the heat-maps
sensitivity_worst.png / sensitivity_mean.png. Every run of the sweep uses the benchmark
scale's model, budget and evaluation (megagrape/experiments/benchmark_spec.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megagrape.errors import ConfigError, DataError


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="quickstart")
    parser.add_argument("--corpus", default=None, help="explicit corpus directory")
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--seeds", default="2", help="a count or a comma-separated list")
    parser.add_argument(
        "--noise-seeds",
        default="",
        help="extra uniform seeds (comma-separated) that only widen uniform's noise floor",
    )
    parser.add_argument("--mu-a", default="0.5,1.5,4.5", help="GRAPE mu_a values")
    parser.add_argument("--mu-z", default="1.5,5,15", help="GRAPE mu_z values")
    parser.add_argument("--intervals", default="5,10,20", help="reweighting intervals R")
    parser.add_argument("--smoothing", default="0.001,0.05", help="smoothing values")
    parser.add_argument(
        "--smoothing-option", default="eps_a", help="GRAPE option the smoothing values set"
    )
    parser.add_argument("--train-iters", type=int, default=None)
    parser.add_argument("--eval-points", type=int, default=None)
    parser.add_argument("--override", action="append", default=[], help="run-config KEY=VALUE")
    parser.add_argument("--out", default="runs/sweep_grape")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--estimate", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--report-only", action="store_true", help="table and plots only")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from megagrape.experiments.benchmark_spec import estimate_seconds, parse_seeds
    from megagrape.experiments.runs import finished_or_run, load_result
    from megagrape.experiments.sensitivity import (
        SweepGrid,
        plan_sweep,
        plot_sensitivity,
        sweep_markdown,
        sweep_table,
    )
    from megagrape.utils.atomic import write_json_atomic

    try:
        grid = SweepGrid(
            _floats(args.mu_a),
            _floats(args.mu_z),
            _ints(args.intervals),
            _floats(args.smoothing),
            args.smoothing_option,
        )
        noise_seeds = [int(v) for v in args.noise_seeds.split(",") if v.strip()]
        plan = plan_sweep(
            grid,
            noise_seeds=noise_seeds,
            scale=args.scale,
            preset=args.preset,
            corpus=args.corpus,
            seeds=parse_seeds(args.seeds),
            out=args.out,
            overrides=args.override,
            train_iters=args.train_iters,
            eval_points=args.eval_points,
        )
    except (ConfigError, DataError, ValueError) as err:
        print(f"sweep_grape: {err}", file=sys.stderr)
        return 2
    bench = plan.bench
    workers = bench.scale.jobs if args.jobs is None else args.jobs
    threads = bench.scale.threads if args.threads is None else args.threads
    todo = [j for j in plan.jobs if load_result(j, j.fingerprint()) is None]
    estimate = estimate_seconds(bench, todo, workers)
    print(
        f"[sweep] {len(grid.points())} grid points x {len(bench.seeds)} seeds + uniform: "
        f"{len(plan.jobs)} runs, {len(todo)} to run"
        + ("" if estimate is None else f", about {estimate / 60:.0f} min"),
        flush=True,
    )
    if args.estimate:
        return 0
    results, failures = finished_or_run(
        plan.jobs, workers, threads, report_only=args.report_only, progress=not args.quiet
    )
    table = sweep_table(results, grid, plan.seeds)
    out = Path(bench.out)
    write_json_atomic(out / "sweep.json", {"grid": grid.__dict__, **table})
    for kind in ("worst", "mean"):
        plot_sensitivity(table, grid, out / f"sensitivity_{kind}.png", kind)
    (out / "sweep.md").write_text(sweep_markdown(table, grid))
    print(json.dumps(table["noise_floor"].get("worst", {}).get("label", "n/a")))
    print(f"[sweep] wrote {out}/sweep.json, sweep.md and sensitivity_{{worst,mean}}.png")
    for name, message in failures.items():
        print(f"[sweep] FAILED {name}: {message}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
