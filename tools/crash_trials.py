"""Kill a 2-rank CPU run at random moments (SIGKILL of both ranks, of one rank, or inside a
checkpoint save), resume it, and check it ends identical to a run never interrupted.

    python tools/crash_trials.py --corpus data/quickstart --out runs/crash_trials --trials 20

Resumable: finished trials are kept in <out>/trial_NNN.json; <out>/summary.json holds the count.
Exit code 0 when every trial was identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from megagrape.experiments.crash_trials import TrialSetup, run_trials


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--corpus", type=Path, required=True, help="a prepared corpus (bin/, tokenizer/, targets/)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/crash_trials"))
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill schedule")
    parser.add_argument("--train-iters", type=int, default=24)
    parser.add_argument("--ds-config", default="configs/ds/zero1.json")
    args = parser.parse_args(argv)
    setup = TrialSetup(
        corpus=args.corpus.resolve(),
        out=args.out.resolve(),
        ds_config=args.ds_config,
        train_iters=args.train_iters,
    )
    summary = run_trials(setup, args.trials, args.seed)
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"}, indent=1))
    for failure in summary["failures"]:
        print(f"trial {failure['trial']} differs: {failure['differences']}", file=sys.stderr)
    return 0 if summary["identical"] == summary["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
