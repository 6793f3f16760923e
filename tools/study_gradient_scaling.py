#!/usr/bin/env python
"""GRAPE's gradient_scaling study: does one mu_a/mu_z give the same step on two model sizes
and two learning rates under raw, clip and cosine products?

    python tools/study_gradient_scaling.py                      # reasoning preset, 400 steps
    python tools/study_gradient_scaling.py --scalings clip,cosine --out runs/scaling_study
    python tools/study_gradient_scaling.py --report-only        # tables and figure only

Conditions: 2 or 4 layers x lr 2e-3 or 5e-4 (the cpu scale's model otherwise); the base
condition also runs a second seed for the seed noise. Writes under --out: results/<run>.json
(an interrupted study continues from them), study.json, study.md and alpha_movement.png.
See megagrape/experiments/scaling_study.py for what is measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megagrape.errors import ConfigError, DataError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="reasoning")
    parser.add_argument("--corpus", default=None, help="explicit corpus directory")
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--scalings", default="raw,clip,cosine")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--noise-seed", type=int, default=2)
    parser.add_argument("--train-iters", type=int, default=400)
    parser.add_argument("--eval-points", type=int, default=4)
    parser.add_argument(
        "--override",
        action="append",
        default=["targets.eval_max_items=200"],
        help="run-config KEY=VALUE for every run (default: targets.eval_max_items=200)",
    )
    parser.add_argument("--out", default="benchmarks/results/gradient_scaling")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--report-only", action="store_true", help="tables and figure only")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from megagrape.experiments.benchmark_spec import SCALES
    from megagrape.experiments.runs import finished_or_run, load_result
    from megagrape.experiments.scaling_study import (
        plan_study,
        plot_movement,
        study_markdown,
        study_table,
    )
    from megagrape.utils.atomic import write_json_atomic

    try:
        plan = plan_study(
            scalings=[s.strip() for s in args.scalings.split(",") if s.strip()],
            seed=args.seed,
            noise_seed=args.noise_seed,
            overrides=args.override,
            scale=args.scale,
            preset=args.preset,
            corpus=args.corpus,
            out=args.out,
            train_iters=args.train_iters,
            eval_points=args.eval_points,
        )
    except (ConfigError, DataError, ValueError) as err:
        print(f"study_gradient_scaling: {err}", file=sys.stderr)
        return 2
    scale = SCALES[args.scale]
    workers = scale.jobs if args.jobs is None else args.jobs
    threads = scale.threads if args.threads is None else args.threads
    todo = [j for j in plan.jobs if load_result(j, j.fingerprint()) is None]
    print(f"[study] {len(plan.jobs)} runs, {len(todo)} to run", flush=True)
    results, failures = finished_or_run(
        plan.jobs, workers, threads, report_only=args.report_only, progress=not args.quiet
    )
    table = study_table(results, plan)
    out = Path(plan.out)
    write_json_atomic(out / "study.json", table)
    (out / "study.md").write_text(study_markdown(table))
    plot_movement(results, plan, out / "alpha_movement.png")
    print(study_markdown(table))
    print(f"[study] wrote {out}/study.json, study.md and alpha_movement.png")
    for name, message in failures.items():
        print(f"[study] FAILED {name}: {message}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
