"""The benchmark's figures (matplotlib, Agg backend): loss curves over tokens and final α.

Every curve is the mean over seeds with a shaded min-max band; the x axis is millions of
training tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from megagrape.experiments.efficiency import Curve, seed_band

LOSS_LABEL = "target loss (nats/token)"
"""The curves' y axis: the gold continuation's loss for multiple-choice targets, the text's
next-token loss for LM-text targets."""

PALETTE = {
    "uniform": "#000000",
    "natural": "#7f7f7f",
    "doge": "#1f77b4",
    "doremi": "#2ca02c",
    "odm": "#9467bd",
    "mgda": "#8c564b",
    "imtl": "#e377c2",
    "hybrid": "#bcbd22",
    "grape": "#d62728",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _color(method: str, index: int) -> str:
    return PALETTE.get(method, f"C{index % 10}")


def _draw_band(ax, curves: Sequence[Curve], values_of, method: str, index: int) -> None:
    band = seed_band(curves, values_of)
    x = band.tokens / 1e6
    color = _color(method, index)
    ax.plot(x, band.mean, color=color, label=f"{method} ({len(curves)} seeds)", linewidth=1.6)
    if len(curves) > 1:
        ax.fill_between(x, band.low, band.high, color=color, alpha=0.15, linewidth=0)


def plot_target_losses(
    curves: Mapping[str, Mapping[int, Curve]], path: Path, title: str = ""
) -> Path:
    """One panel per target: its loss over tokens, a line per method (any target kind)."""
    plt = _pyplot()
    methods = list(curves)
    targets = next(iter(next(iter(curves.values())).values())).targets
    columns = min(3, len(targets))
    rows = math.ceil(len(targets) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows), squeeze=False)
    for panel, target in enumerate(targets):
        ax = axes[panel // columns][panel % columns]
        for index, method in enumerate(methods):
            _draw_band(
                ax, list(curves[method].values()), lambda c, t=target: c.losses[t], method, index
            )
        ax.set_title(target)
        ax.set_xlabel("training tokens (M)")
        ax.set_ylabel(LOSS_LABEL)
        ax.grid(alpha=0.3)
    for panel in range(len(targets), rows * columns):
        axes[panel // columns][panel % columns].axis("off")
    axes[0][0].legend(fontsize=8)
    return _save(fig, path, title)


def plot_summary_losses(
    curves: Mapping[str, Mapping[int, Curve]],
    path: Path,
    baseline: str = "uniform",
    title: str = "",
) -> Path:
    """Worst-target and mean-target loss over tokens; dashed: the baseline's final value."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
    for ax, kind in zip(axes[0], ("worst", "mean")):
        for index, method in enumerate(curves):
            _draw_band(
                ax, list(curves[method].values()), lambda c, k=kind: c.summary(k), method, index
            )
        if baseline in curves:
            finals = [c.summary(kind)[-1] for c in curves[baseline].values()]
            ax.axhline(
                float(np.mean(finals)),
                color="black",
                linestyle="--",
                linewidth=0.8,
                label=f"{baseline} final (mean over seeds)",
            )
        ax.set_title(f"{kind}-target loss")
        ax.set_xlabel("training tokens (M)")
        ax.set_ylabel(LOSS_LABEL)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path, title)


def plot_final_alpha(
    alphas: Mapping[str, Sequence[Mapping[str, float]]], path: Path, title: str = ""
) -> Path:
    """Grouped bars: each domain's final α per method (mean over seeds, min-max whiskers)."""
    plt = _pyplot()
    methods = [m for m, runs in alphas.items() if runs]
    domains = list(alphas[methods[0]][0])
    width = 0.8 / len(methods)
    x = np.arange(len(domains))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(domains) + 2), 4))
    for index, method in enumerate(methods):
        values = np.array([[run[d] for d in domains] for run in alphas[method]])
        mean = values.mean(axis=0)
        # clipped: with identical runs, float rounding of the mean can leave -1e-17
        errors = np.clip(np.stack([mean - values.min(axis=0), values.max(axis=0) - mean]), 0, None)
        ax.bar(
            x + (index - (len(methods) - 1) / 2) * width,
            mean,
            width,
            yerr=errors if len(values) > 1 else None,
            color=_color(method, index),
            label=method,
            capsize=2,
        )
    ax.set_xticks(x)
    ax.set_xticklabels(domains, rotation=35, ha="right")
    ax.set_ylabel("final domain weight α")
    ax.axhline(1.0 / len(domains), color="black", linestyle=":", linewidth=0.8)
    ax.legend(fontsize=8, ncol=min(4, len(methods)))
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, path, "")


def _save(fig, path: Path, title: str) -> Path:
    """Title, lay out, write ``path`` (parents created) at 110 dpi, free the figure."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
