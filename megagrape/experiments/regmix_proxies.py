"""RegMix proxies on the engine: one short static-mixture run per sampled mixture.

A proxy is a ``RunJob`` with ``mixture.method=static`` and inline weights, at a benchmark
scale with its own (short) step count and RegMix's constant learning rate after warmup. Its
objective is read from the result's final evaluation: the mean or worst gold-continuation
loss over the targets, or one target's loss.

Proxies evaluate with ``targets.eval_split=signal``: they score the signal half of each
target (for their seed's split), the half a mixture method such as GRAPE learns from, so the
mixture RegMix chooses for seed s never saw the held-out items that seed s's benchmark runs
report. A benchmark over several seeds therefore runs RegMix once per seed (``--seed s``) and
gives each seed its own weights file (``bench_mixture.py --weights-file 'DIR/s{seed}/...'``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from megagrape.errors import ConfigError
from megagrape.experiments.benchmark_spec import (
    SCALES,
    base_config_path,
    common_overrides,
    resolve_ds_config,
    yaml_value,
)
from megagrape.experiments.runs import RunJob

OBJECTIVES = ("mean", "worst")
"""Besides these, an objective may name one target."""


def corpus_domains(corpus: Path) -> tuple[list[str], list[int]]:
    """Domain names (sorted, as the trainer orders them) and their token counts."""
    from megagrape.data.domains import count_tokens, discover_domains

    specs = discover_domains(str(corpus / "bin"))
    if len(specs) < 2:
        raise ConfigError(f"corpus {corpus} has {len(specs)} domain(s); RegMix needs at least 2")
    return [s.name for s in specs], [count_tokens(s.prefix) for s in specs]


@dataclass(frozen=True)
class ProxyPlan:
    domains: list[str]
    token_counts: list[int]
    mixtures: np.ndarray
    """[P, K] the proxies' mixtures in domain order."""
    jobs: list[RunJob]


def plan_proxies(
    *,
    mixtures: np.ndarray,
    domains: Sequence[str],
    token_counts: Sequence[int],
    corpus: Path,
    out: Path,
    scale: str = "cpu",
    train_iters: int = 150,
    warmup_iters: int = 15,
    seed: int = 1,
    overrides: Sequence[str] = (),
    ds_config: str | None = None,
) -> ProxyPlan:
    """One job per mixture (row of ``mixtures``), named proxy-000, proxy-001, ..."""
    if scale not in SCALES:
        raise ConfigError(f"--scale {scale!r}: choose from {', '.join(SCALES)}")
    if mixtures.ndim != 2 or mixtures.shape[1] != len(domains):
        raise ValueError(f"mixtures of shape {mixtures.shape} do not match {len(domains)} domains")
    chosen = replace(SCALES[scale], train_iters=train_iters, eval_points=1)
    out = out.resolve()
    common = common_overrides(
        chosen,
        corpus,
        out,
        (
            "train.lr_decay_style=constant",
            f"train.lr_warmup_iters={warmup_iters}",
            "targets.eval_split=signal",
            *overrides,
        ),
    )
    ds_path = resolve_ds_config(ds_config)
    jobs = []
    for index, weights in enumerate(mixtures):
        name = f"proxy-{index:03d}"
        inline = {"source": "inline", "weights": [float(w) for w in weights], "normalize": True}
        jobs.append(
            RunJob(
                name=name,
                base_config=base_config_path(chosen),
                overrides=(
                    *common,
                    f"name={name}",
                    f"seed={seed}",
                    "mixture.method=static",
                    f"mixture.options={yaml_value(inline)}",
                ),
                ds_config=ds_path,
                result_path=str(out / "results" / f"{name}.json"),
                log_path=str(out / "logs" / f"{name}.log"),
                labels={"method": "proxy", "seed": seed, "proxy": index},
            )
        )
    return ProxyPlan(list(domains), list(token_counts), mixtures, jobs)


def objective_value(final: Mapping[str, Mapping[str, float]], objective: str) -> float:
    """The proxy's objective from its final scores {target: {loss, ...}}."""
    losses = {target: scores["loss"] for target, scores in final.items()}
    if objective == "mean":
        return float(np.mean(list(losses.values())))
    if objective == "worst":
        return float(max(losses.values()))
    if objective in losses:
        return float(losses[objective])
    raise ConfigError(
        f"--objective {objective!r}: choose mean, worst or a target ({', '.join(losses)})"
    )
