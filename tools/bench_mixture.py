"""Benchmark mixture methods: the same model and token budget under each method and seed.

    python tools/bench_mixture.py                                   # uniform,doge,grape x 3 seeds on reasoning, CPU scale
    python tools/bench_mixture.py --methods uniform,natural,doge,doremi,odm,mgda,imtl,epo,hybrid,grape --seeds 3
    python tools/bench_mixture.py --preset quickstart --seeds 11,12 --out runs/bench_qs
    python tools/bench_mixture.py --scale gpu --jobs 1              # configs/reasoning.yaml's model and steps
    python tools/bench_mixture.py --method-override grape:mixture.options.mu_a=3 --seeds 101,102 --out runs/tune
    python tools/bench_mixture.py --methods uniform,file --weights-file runs/regmix/regmix_weights.json

--seeds is a count (3 = seeds 1,2,3, from --seed-start) or a comma-separated list ("101," is
the single seed 101).

Writes under --out: results/<method>-s<seed>.json per run (a rerun skips runs whose result
file holds the same resolved config), runs/<run>/ (the engine's run directories), logs/,
results.json, results.md and the PNG figures. Token efficiency is seed-paired: method seed s
against uniform seed s. Exit code 1 if a run failed, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from megagrape.errors import ConfigError, DataError


def parse_args(argv: list[str]) -> argparse.Namespace:
    from megagrape.experiments.benchmark_spec import DEFAULT_METHODS, METHODS, PRESETS, SCALES

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset", default="reasoning", help=f"corpus preset: {', '.join(PRESETS)}"
    )
    parser.add_argument(
        "--corpus", default=None, help="explicit corpus directory (overrides --preset)"
    )
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated, from {', '.join(METHODS)} (uniform is required; default %(default)s)",
    )
    parser.add_argument(
        "--seeds", default="3", help="a count (3 = seeds 1,2,3) or a list (11,12,13)"
    )
    parser.add_argument(
        "--seed-start", type=int, default=1, help="first seed when --seeds is a count"
    )
    parser.add_argument("--scale", default="cpu", help=f"{', '.join(SCALES)} (default %(default)s)")
    parser.add_argument("--out", default="runs/bench_mixture", help="output directory")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs in parallel (default: the scale's; 0 = in this process)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per run (default: the scale's)"
    )
    parser.add_argument(
        "--train-iters", type=int, default=None, help="steps per run (default: the scale's)"
    )
    parser.add_argument(
        "--eval-points", type=int, default=None, help="evaluations per run (default: the scale's)"
    )
    parser.add_argument(
        "--ds-config", default=None, help="DeepSpeed config (default configs/ds/zero0.json)"
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run-config override for every run",
    )
    parser.add_argument(
        "--method-override",
        action="append",
        default=[],
        metavar="METHOD:KEY=VALUE",
        help="run-config override for one method, e.g. grape:mixture.options.mu_a=3",
    )
    parser.add_argument(
        "--weights-file",
        default=None,
        help="static weights JSON for the 'file' method (e.g. tools/regmix.py's regmix_weights.json); "
        "'{seed}' in the path picks one file per seed (RegMix run once per seed)",
    )
    parser.add_argument(
        "--estimate", action="store_true", help="print the plan and time estimate, run nothing"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild the report from finished runs"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def _settings(plan, workers: int, threads: int, wall: float | None, estimate: float | None) -> dict:
    cfg = plan.jobs[0].config()
    model = cfg.model
    return {
        "title": f"{plan.corpus.name}: {len(plan.seeds)} seed(s), {plan.scale.name} scale",
        "preset / corpus": str(plan.corpus),
        "scale": plan.scale.name,
        "model": (
            f"{model.num_layers} layers, hidden {model.hidden_size}, {model.num_attention_heads} heads, "
            f"seq {model.seq_length}, vocab {model.vocab_size}"
        ),
        "tokens per run": (
            f"{cfg.train.train_iters * cfg.train.global_batch_size * model.seq_length:,} "
            f"({cfg.train.train_iters} steps x {cfg.train.global_batch_size} x {model.seq_length})"
        ),
        "lr": f"{cfg.train.lr} {cfg.train.lr_decay_style} to {cfg.train.min_lr}, warmup {cfg.train.lr_warmup_iters}",
        "evaluation": (
            f"every {cfg.targets.eval_interval} steps, gold-continuation loss on the first "
            f"{cfg.targets.eval_max_items} eval items per target; full acc at the end"
        ),
        "reweighting interval": f"{plan.scale.interval} steps (ODM: every step)",
        "methods": ", ".join(plan.methods),
        "seeds": ", ".join(map(str, plan.seeds)),
        "overrides": " ".join(plan.overrides) or "none",
        "method overrides": "; ".join(
            f"{m}: {' '.join(v)}" for m, v in plan.method_overrides.items()
        )
        or "none",
        "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), {workers} worker(s) x {threads or 'default'} thread(s)",
        "wall time of this invocation": "n/a" if wall is None else f"{wall / 60:.1f} min",
        "estimate printed up front": "n/a" if estimate is None else f"{estimate / 60:.1f} min",
    }


def _unigram_levels(plan) -> dict:
    """Each target's unigram level for this corpus and evaluation (cached in the out dir)."""
    from megagrape.experiments.unigram import unigram_levels
    from megagrape.utils.atomic import write_json_atomic

    cfg = plan.jobs[0].config()
    key = f"{plan.corpus} {cfg.model.seq_length} {cfg.targets.eval_max_items} {cfg.seed}"
    path = plan.out / "unigram_levels.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached["levels"]
    levels = unigram_levels(cfg)
    write_json_atomic(path, {"key": key, "levels": levels})
    return levels


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from megagrape.experiments.analysis import analyse
    from megagrape.experiments.benchmark_spec import (
        estimate_seconds,
        parse_method_overrides,
        parse_methods,
        parse_seeds,
        plan_benchmark,
    )
    from megagrape.experiments.report import markdown, write_outputs
    from megagrape.experiments.runs import finished_or_run, load_result

    try:
        methods = parse_methods(args.methods)
        plan = plan_benchmark(
            scale=args.scale,
            preset=args.preset,
            corpus=args.corpus,
            methods=methods,
            seeds=parse_seeds(args.seeds, args.seed_start),
            out=args.out,
            overrides=args.override,
            method_overrides=parse_method_overrides(args.method_override, methods),
            ds_config=args.ds_config,
            train_iters=args.train_iters,
            eval_points=args.eval_points,
            weights_file=args.weights_file,
        )
    except (ConfigError, DataError) as err:
        print(f"bench_mixture: {err}", file=sys.stderr)
        return 2
    workers = plan.scale.jobs if args.jobs is None else args.jobs
    threads = plan.scale.threads if args.threads is None else args.threads
    todo = [job for job in plan.jobs if load_result(job, job.fingerprint()) is None]
    estimate = None
    if not args.report_only:
        estimate = estimate_seconds(plan, todo, workers)
        when = (
            "no timing calibration for this scale"
            if estimate is None
            else f"about {estimate / 60:.0f} min"
        )
        print(
            f"[bench] {len(plan.jobs)} runs ({len(plan.methods)} methods x {len(plan.seeds)} seeds), "
            f"{len(plan.jobs) - len(todo)} already finished; {len(todo)} to run on {workers or 1} "
            f"process(es): {when} (estimate from {plan.scale.name}-scale timings on a 2-core CPU)",
            flush=True,
        )
    if args.estimate:
        return 0
    started = time.perf_counter()
    ordered, failures = finished_or_run(
        plan.jobs, workers, threads, report_only=args.report_only, progress=not args.quiet
    )
    wall = None if args.report_only else time.perf_counter() - started
    analysis = analyse(ordered, plan.methods)
    settings = _settings(plan, workers, threads, wall, estimate)
    timing = {
        "wall_seconds": wall,
        "estimate_seconds": estimate,
        "run_seconds": {r["name"]: r["seconds"] for r in ordered},
        "failures": failures,
    }
    unigram = _unigram_levels(plan)
    paths = write_outputs(plan.out, analysis, ordered, settings, {"timing": timing}, unigram)
    print(markdown(analysis, settings, ordered, unigram).split("## Final scores")[0])
    print(f"[bench] wrote {', '.join(str(p) for p in paths.values())}")
    for name, message in failures.items():
        print(f"[bench] FAILED {name}: {message}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
