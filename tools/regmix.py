"""RegMix on the engine: sample mixtures, train tiny proxies, regress target loss, search the best.

    python tools/regmix.py --preset reasoning --proxies 24 --proxy-iters 150 --parallel 2 --out runs/regmix
    python tools/regmix.py ... --objective worst          # or mean (default) or one target, e.g. sciq
    python tools/bench_mixture.py --methods uniform,file --weights-file runs/regmix/regmix_weights.json

Steps (megagrape/experiments/regmix.py has the rules): mixtures are drawn around the domains'
token shares with RegMix's sharpening, strength grid, usage bound and rounding; each proxy is a
short static-mixture run (constant lr after warmup) whose final gold-continuation target loss
is recorded; a regressor (LightGBM when importable, else leave-one-out-tuned ridge on the
weights and their logs) maps mixture -> loss; the average of the top-k of many Dirichlet
samples, by predicted loss, is written as {"domain_weights": {name: w}} to --weights-out
(default OUT/regmix_weights.json), usable as mixture.options={source: file, path: ...}.

Proxies are resumable: a proxy whose result file holds the same resolved config is not
retrained. OUT/regmix.json records the mixtures, losses, fit quality and the search.
Exit code 1 if a proxy failed, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from megagrape.errors import ConfigError, DataError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset", default="reasoning", help="corpus preset (reasoning, quickstart)"
    )
    parser.add_argument(
        "--corpus", default=None, help="explicit corpus directory (overrides --preset)"
    )
    parser.add_argument("--out", default="runs/regmix", help="output directory")
    parser.add_argument("--proxies", type=int, default=24, help="number of proxy runs")
    parser.add_argument("--proxy-iters", type=int, default=150, help="steps per proxy")
    parser.add_argument("--warmup-iters", type=int, default=15, help="lr warmup steps per proxy")
    parser.add_argument(
        "--scale", default="cpu", help="model/batch of the benchmark scale (cpu, gpu, smoke)"
    )
    parser.add_argument(
        "--parallel", type=int, default=2, help="proxies trained at once (0 = in this process)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per proxy process")
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the sampler, the search and the proxies"
    )
    parser.add_argument("--objective", default="mean", help="mean, worst or a target name")
    parser.add_argument(
        "--regressor",
        default="auto",
        help="auto (LightGBM if importable, else ridge), lightgbm, ridge",
    )
    parser.add_argument("--features", default="log", help="ridge features: linear, log, quadratic")
    parser.add_argument("--samples", type=int, default=100_000, help="Dirichlet samples searched")
    parser.add_argument("--top-k", type=int, default=128, help="averaged best candidates")
    parser.add_argument(
        "--search-strength",
        type=float,
        default=1.0,
        help="search draws Dirichlet(strength x token shares)",
    )
    parser.add_argument("--temperature", type=float, default=0.5, help="prior sharpening p^t")
    parser.add_argument(
        "--max-usage", type=float, default=15.0, help="weight bound: max_usage x token share"
    )
    parser.add_argument(
        "--minimum", type=float, default=2e-4, help="weights below are zeroed; rounding unit"
    )
    parser.add_argument("--weights-out", default=None, help="default OUT/regmix_weights.json")
    parser.add_argument(
        "--ds-config", default=None, help="DeepSpeed config (default configs/ds/zero0.json)"
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run-config override for every proxy",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import numpy as np

    from megagrape.experiments import regmix
    from megagrape.experiments.benchmark_spec import resolve_corpus
    from megagrape.experiments.regmix_proxies import corpus_domains, objective_value, plan_proxies
    from megagrape.experiments.runs import run_jobs
    from megagrape.utils.atomic import write_json_atomic

    out = Path(args.out).resolve()
    try:
        corpus = resolve_corpus(args.preset, args.corpus)
        domains, counts = corpus_domains(corpus)
        settings = regmix.SamplerSettings(
            temperature=args.temperature, max_usage=args.max_usage, minimum=args.minimum
        )
        rng = np.random.default_rng(args.seed)
        mixtures = regmix.sample_mixtures(counts, args.proxies, rng, settings)
        plan = plan_proxies(
            mixtures=mixtures,
            domains=domains,
            token_counts=counts,
            corpus=corpus,
            out=out,
            scale=args.scale,
            train_iters=args.proxy_iters,
            warmup_iters=args.warmup_iters,
            seed=args.seed,
            overrides=args.override,
            ds_config=args.ds_config,
        )
    except (ConfigError, DataError, ValueError) as err:
        print(f"regmix: {err}", file=sys.stderr)
        return 2
    print(
        f"[regmix] {len(plan.jobs)} proxies x {args.proxy_iters} steps over {len(domains)} domains "
        f"({', '.join(domains)}), {args.parallel or 1} at a time",
        flush=True,
    )
    started = time.perf_counter()
    outcome = run_jobs(plan.jobs, args.parallel, args.threads, progress=not args.quiet)
    wall = time.perf_counter() - started
    finished = [
        (i, outcome.results[j.name]) for i, j in enumerate(plan.jobs) if j.name in outcome.results
    ]
    if len(finished) < 3:
        print(f"regmix: only {len(finished)} proxies finished; need >= 3 to fit", file=sys.stderr)
        return 1
    try:
        y = np.array([objective_value(r["final"], args.objective) for _, r in finished])
        x = mixtures[[i for i, _ in finished]]
        model = regmix.fit_regressor(x, y, kind=args.regressor, features=args.features)
        search = regmix.search_mixture(
            model,
            counts,
            np.random.default_rng(args.seed + 1),
            samples=args.samples,
            top_k=args.top_k,
            strength=args.search_strength,
        )
    except (ConfigError, ValueError) as err:
        print(f"regmix: {err}", file=sys.stderr)
        return 2
    fit = model.describe()
    if getattr(model, "loo_predictions", None) is not None:
        fit["loo_spearman"] = regmix.spearman(model.loo_predictions, y)
    fit["train_spearman"] = regmix.spearman(model.predict(x), y)
    best = int(np.argmin(y))
    weights = {d: float(w) for d, w in zip(domains, search.weights)}
    shares = np.asarray(counts, dtype=np.float64) / sum(counts)
    document = {
        "domain_weights": weights,
        "objective": args.objective,
        "predicted_loss": search.predicted,
        "regressor": fit,
        "proxies": len(finished),
        "source": "tools/regmix.py",
    }
    weights_out = Path(args.weights_out) if args.weights_out else out / "regmix_weights.json"
    write_json_atomic(weights_out, document)
    summary = {
        **document,
        "settings": {k: v for k, v in vars(args).items()},
        "domains": domains,
        "token_shares": shares.tolist(),
        "mixtures": x.tolist(),
        "losses": y.tolist(),
        "best_proxy": {
            "index": finished[best][0],
            "loss": float(y[best]),
            "weights": x[best].tolist(),
        },
        "predicted_token_shares": float(model.predict(shares[None])[0]),
        "top_predicted": search.top_predicted.tolist(),
        "wall_seconds": wall,
        "proxy_seconds": [r["seconds"] for _, r in finished],
        "failures": outcome.failures,
    }
    write_json_atomic(out / "regmix.json", summary)
    print(f"[regmix] fit: {json.dumps(fit)}")
    print(
        f"[regmix] observed {args.objective} loss: best proxy {y[best]:.4f}, median {np.median(y):.4f}, "
        f"worst {y.max():.4f}; predicted for the searched mixture {search.predicted:.4f}, "
        f"for the token shares {summary['predicted_token_shares']:.4f}"
    )
    print("[regmix] mixture: " + ", ".join(f"{d} {w:.3f}" for d, w in weights.items()))
    print(f"[regmix] wrote {weights_out} and {out / 'regmix.json'} ({wall / 60:.1f} min)")
    for name, message in outcome.failures.items():
        print(f"[regmix] FAILED {name}: {message}", file=sys.stderr)
    return 1 if outcome.failures else 0


if __name__ == "__main__":
    sys.exit(main())
