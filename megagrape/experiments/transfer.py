"""Two-stage transfer: a proxy benchmark's time-averaged mixture as a static mixture elsewhere.

The multi-objective workflow trains a small proxy with a dynamic method, averages the weights
it served over training (``average_alpha`` of each result, from the run's
mixture_average.json) and trains the large model on that fixed mixture. ``proxy_mixture``
averages those per-seed mixtures of one method over the proxy's seeds into the weights file
that ``tools/bench_mixture.py --methods uniform,file --weights-file`` reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from megagrape.errors import DataError


def proxy_results(folder: Path, method: str) -> list[Mapping]:
    """The finished results ``<folder>/results/<method>-s<seed>.json`` (seed order)."""
    paths = sorted((folder / "results").glob(f"{method}-s*.json"))
    results = []
    for path in paths:
        if not path.stem.removeprefix(f"{method}-s").isdigit():
            continue  # another method whose name starts like this one
        results.append(json.loads(path.read_text()))
    if not results:
        raise DataError(
            f"{folder}/results holds no {method}-s<seed>.json: run the proxy benchmark first, "
            f"e.g. python tools/bench_mixture.py --out {folder}"
        )
    return sorted(results, key=lambda r: int(r["seed"]))


def proxy_mixture(folder: Path, method: str) -> dict:
    """The mean over seeds of the method's time-averaged α, with where it came from.

    Returns ``{"domain_weights": {domain: weight}, "proxy": {...}}``: weights sum to 1, and
    ``proxy`` names the folder, method, seeds, each seed's mixture and the proxy model."""
    results = proxy_results(folder, method)
    missing = [r["name"] for r in results if not r.get("average_alpha")]
    if missing:
        raise DataError(f"{missing} have no average_alpha (the run kept no mixture_average.json)")
    domains = list(results[0]["average_alpha"])
    for result in results[1:]:
        if set(result["average_alpha"]) != set(domains):
            raise DataError(f"{result['name']} has other domains than {results[0]['name']}")
    matrix = np.array([[r["average_alpha"][d] for d in domains] for r in results])
    mean = matrix.mean(axis=0)
    mean = mean / mean.sum()
    model = results[0]["config"]["model"]
    return {
        "domain_weights": {d: float(w) for d, w in zip(domains, mean, strict=True)},
        "proxy": {
            "folder": str(folder),
            "method": method,
            "seeds": [int(r["seed"]) for r in results],
            "per_seed": {str(r["seed"]): r["average_alpha"] for r in results},
            "steps": int(results[0]["steps"]),
            "model": {
                k: model[k] for k in ("num_layers", "hidden_size", "seq_length") if k in model
            },
        },
    }
