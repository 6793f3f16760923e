#!/usr/bin/env python
"""Write a proxy benchmark's time-averaged mixture as a static weights file (two-stage transfer).

    python tools/proxy_mixture.py --proxy benchmarks/results/mixture_reasoning --method grape \\
        --out benchmarks/results/transfer_reasoning/proxy_mixture.json
    python tools/bench_mixture.py --scale cpu-2x --methods uniform,file \\
        --weights-file benchmarks/results/transfer_reasoning/proxy_mixture.json \\
        --out benchmarks/results/transfer_reasoning

The weights are the mean over the proxy's seeds of each run's average α (what the sampler
served, averaged over training); the file also records the seeds and per-seed mixtures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megagrape.errors import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--proxy", required=True, help="a tools/bench_mixture.py --out folder")
    parser.add_argument("--method", default="grape", help="the proxy method whose α to average")
    parser.add_argument("--out", required=True, help="weights file to write (JSON)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from megagrape.experiments.transfer import proxy_mixture
    from megagrape.utils.atomic import write_json_atomic

    try:
        mixture = proxy_mixture(Path(args.proxy), args.method)
    except DataError as err:
        print(f"proxy_mixture: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, mixture)
    weights = ", ".join(f"{d} {w:.3f}" for d, w in mixture["domain_weights"].items())
    print(f"[proxy_mixture] {args.method} seeds {mixture['proxy']['seeds']}: {weights}")
    print(f"[proxy_mixture] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
