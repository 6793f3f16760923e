#!/usr/bin/env python
"""Render the ZDT-2 toy comparison (multi-objective data-mixing paper, Figure 3) to a PNG.

One panel per reweighting rule in megagrape.mixture.zdt2.CASES: the Pareto front (red), the
trajectories of projected gradient descent from several starts (blue; grey cross = start, blue
dot = end) and, for EPO, the preference ray (dashed).

    python tools/plot_zdt2.py --out docs/zdt2.png
"""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from tqdm import tqdm

from megagrape.mixture.zdt2 import (
    CASES,
    REWEIGHT_EVERY,
    STEP_SIZE,
    STEPS,
    pareto_front,
    run_case,
    start_point,
)

START_X1 = (0.2, 0.5, 0.8)
START_REST = (0.02, 0.1)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("docs/zdt2.png"), help="PNG to write")
    parser.add_argument("--steps", type=int, default=STEPS, help="gradient steps per run")
    parser.add_argument("--lr", type=float, default=STEP_SIZE, help="projected-gradient step size")
    parser.add_argument(
        "--every", type=int, default=REWEIGHT_EVERY, help="steps between reweighting events"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    starts = [start_point(x1, rest) for x1, rest in itertools.product(START_X1, START_REST)]
    columns = 4
    rows = math.ceil(len(CASES) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(4 * columns, 3.6 * rows), sharex=True, sharey=True
    )
    front = pareto_front(200).numpy()
    jobs = list(itertools.product(enumerate(CASES), starts))
    for (index, case), x0 in tqdm(jobs, desc="ZDT-2 runs", unit="run"):
        axis = axes.flat[index]
        losses = run_case(case, x0, args.steps, args.lr, args.every).losses.numpy()
        axis.plot(losses[:, 0], losses[:, 1], color="tab:blue", linewidth=0.8, alpha=0.7)
        axis.plot(losses[0, 0], losses[0, 1], marker="x", color="grey")
        axis.plot(losses[-1, 0], losses[-1, 1], marker="o", color="tab:blue")
    for index, case in enumerate(CASES):
        axis = axes.flat[index]
        axis.plot(front[:, 0], front[:, 1], color="tab:red", linewidth=1.5, label="Pareto front")
        if case.method == "epo":
            r1, r2 = case.options["preference"]
            scale = 2.0 / max(1 / r1, 1 / r2)
            axis.plot(
                [0, scale / r1], [0, scale / r2], "k--", linewidth=0.8, label="preference ray"
            )
        axis.set_title(case.label)
        axis.set_xlim(-0.02, 1.05)
        axis.set_ylim(-0.02, 2.0)
        axis.set_xlabel("f1")
        axis.set_ylabel("f2")
    for axis in axes.flat[len(CASES) :]:
        axis.set_visible(False)
    axes.flat[0].legend(loc="upper right", fontsize="small")
    first_epo = next(index for index, case in enumerate(CASES) if case.method == "epo")
    axes.flat[first_epo].legend(loc="upper right", fontsize="small")
    figure.suptitle(
        f"ZDT-2: projected gradient descent weighted by each method "
        f"({args.steps} steps of {args.lr:g}, reweighting every {args.every})"
    )
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
