"""Plots of a run's mixture history (``mixture.jsonl``), rendered with matplotlib's Agg backend.

``mixture.jsonl`` holds the starting weights (step 0, ``"initial": true``) and then one JSON
object per reweighting event::

    {"step": 5, "method": "grape", "time": "2026-12-02T03:04:05.678+00:00",
     "consumed_samples": 80, "domain_weights": {"web": 0.3, ...},
     "task_weights": {"sciq": 0.2, ...} | null, "skipped": null | "reason",
     "diagnostics": {"domain_scores": {"web": 0.1, ...}, ...},
     "domain_target_gram": {"web": {"sciq": 0.01, ...}, ...}, "target_losses": {...},
     "reweight_time_s": 0.8, "capture_time_s": {...}}

The weights recorded at step t are the ones used from step t until the next event, so they
are drawn as steps (piecewise constant), stacked (each panel sums to 1): the top panel holds
the domain weights α, the bottom one the task weights z when the method keeps them. Skipped
events are marked with red ticks on the top axis.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from megagrape.errors import DataError
from megagrape.utils.jsonl import iter_jsonl

_LEGEND_ROWS = 24
"""Legend entries per column before another column is started."""


def read_mixture(path: Path) -> list[dict[str, Any]]:
    """The records of a ``mixture.jsonl`` file, each checked (DataError names file and line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: no such file; a run writes mixture.jsonl in its directory at its first "
            "reweighting event (every mixture.interval steps): give a run directory that has one"
        )
    records = []
    for line_number, record in iter_jsonl(path):
        check_record(record, f"{path}:{line_number}")
        records.append(record)
    if not records:
        raise DataError(f"{path}: empty, no reweighting event has been recorded yet")
    return records


def _check_weights(weights: Any, field: str, where: str) -> None:
    if not isinstance(weights, dict) or not weights:
        raise DataError(f"{where}: {field!r} must be a non-empty object {{name: weight}}")
    for name, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise DataError(f"{where}: {field}[{name!r}] = {value!r} is not a number")


def check_record(record: Any, where: str) -> None:
    """DataError naming ``where`` unless ``record`` has an integer step and weight objects."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise DataError(f"{where}: 'step' = {step!r} must be an integer")
    _check_weights(record.get("domain_weights"), "domain_weights", where)
    if record.get("task_weights") is not None:
        _check_weights(record["task_weights"], "task_weights", where)


def _series(
    records: list[dict[str, Any]], field: str
) -> tuple[list[int], list[str], list[list[float]]] | None:
    """(steps, names, values[name][event]) over the records that have ``field``; None if none.

    Every record must name the same keys as the first one that has the field.
    """
    rows = [(i, r) for i, r in enumerate(records) if r.get(field) is not None]
    if not rows:
        return None
    first_index, first = rows[0]
    names = list(first[field])
    for index, record in rows[1:]:
        keys = list(record[field])
        if set(keys) != set(names):
            missing = sorted(set(names) - set(keys))
            extra = sorted(set(keys) - set(names))
            raise DataError(
                f"mixture record {index + 1} (step {record['step']}): {field} names differ from "
                f"record {first_index + 1}'s (missing {missing}, extra {extra}); the file mixes "
                "different runs"
            )
    steps = [record["step"] for _, record in rows]
    values = [[float(record[field][name]) for _, record in rows] for name in names]
    return steps, names, values


def _colours(count: int) -> list:
    import matplotlib.pyplot as plt
    import numpy as np

    if count <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(count)]
    if count <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(count)]
    # Neighbouring bands get distant colours: positions on the colour map step by the golden
    # ratio, so a stack of many thin areas stays readable.
    positions = 0.03 + 0.94 * ((np.arange(count) * 0.6180339887) % 1.0)
    return list(plt.get_cmap("turbo")(positions))


def _stacked_steps(
    ax, steps: list[int], names: list[str], values: list[list[float]]
) -> tuple[int, int]:
    """Stacked piecewise-constant areas on ``ax``, one per name; returns the x range drawn."""
    gap = max(1, steps[-1] - steps[-2]) if len(steps) > 1 else 1
    xs = [*steps, steps[-1] + gap]  # the last weights hold for one more interval
    ys = [[*series, series[-1]] for series in values]
    ax.stackplot(xs, ys, labels=names, colors=_colours(len(names)), step="post", linewidth=0)
    ax.set_ylim(0.0, max(1.0, max(sum(column) for column in zip(*ys))))
    ax.grid(axis="y", alpha=0.3)
    return xs[0], xs[-1]


def _legend(ax) -> None:
    """Legend right of ``ax``, top entry = top area; more columns (smaller font) when long."""
    entries = len(ax.get_legend_handles_labels()[1])
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        ncol=math.ceil(entries / _LEGEND_ROWS),
        fontsize="small" if entries <= _LEGEND_ROWS else "x-small",
        frameon=False,
        reverse=True,
    )


def plot_mixture(records: list[dict[str, Any]], out_path: Path, title: str | None = None) -> Path:
    """Render the mixture history ``records`` (as read by ``read_mixture``) to a PNG.

    Returns ``out_path`` (its directory is created). DataError for an empty list, a malformed
    record, or records whose weight names differ.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if not records:
        raise DataError("plot_mixture: no records; mixture.jsonl has no reweighting event yet")
    for index, record in enumerate(records):
        check_record(record, f"mixture record {index + 1}")
    domains = _series(records, "domain_weights")
    tasks = _series(records, "task_weights")
    widest = max(len(domains[1]), len(tasks[1]) if tasks else 0)
    legend_columns = math.ceil(widest / _LEGEND_ROWS)
    panels = 2 if tasks else 1
    figure, axes = plt.subplots(
        panels,
        1,
        sharex=True,
        squeeze=False,
        figsize=(9.0 + 2.3 * legend_columns, 3.6 + 3.0 * panels),
        height_ratios=[3, 2][:panels],
    )
    top = axes[0][0]
    x_range = _stacked_steps(top, *domains)
    top.set_ylabel("domain weight α")
    skipped = [record["step"] for record in records if record.get("skipped")]
    if skipped:
        top.plot(
            skipped,
            [top.get_ylim()[1]] * len(skipped),
            linestyle="none",
            marker="v",
            color="red",
            clip_on=False,
            label=f"skipped event ({len(skipped)})",
        )
    _legend(top)
    if tasks:
        bottom = axes[1][0]
        _stacked_steps(bottom, *tasks)
        bottom.set_ylabel("task weight z")
        _legend(bottom)
    top.set_xlim(*x_range)  # shared: task weights may start at a later event
    axes[-1][0].set_xlabel("step")
    axes[-1][0].xaxis.set_major_locator(MaxNLocator(integer=True))
    events = len(records)
    top.set_title(
        f"{title + ': ' if title else ''}mixture over {events} reweighting event"
        f"{'s' if events != 1 else ''} ({len(domains[1])} domains"
        f"{f', {len(tasks[1])} tasks' if tasks else ''})"
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return out_path
