#!/usr/bin/env python
"""Plot a run's domain weights α (and task weights z) over training from RUN_DIR/mixture.jsonl.

python tools/plot_mixture.py runs/quickstart [--out runs/quickstart/plots/mixture.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megagrape.errors import DataError
from megagrape.train.mixture_plot import plot_mixture, read_mixture


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="run directory holding mixture.jsonl")
    parser.add_argument(
        "--out", type=Path, default=None, help="PNG to write (default RUN_DIR/plots/mixture.png)"
    )
    parser.add_argument("--title", default=None, help="figure title (default: the run's name)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or args.run_dir / "plots" / "mixture.png"
    try:
        records = read_mixture(args.run_dir / "mixture.jsonl")
        path = plot_mixture(records, out, title=args.title or args.run_dir.resolve().name)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({len(records)} reweighting events)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
