"""What the mixture benchmark runs: presets (corpora), scales (model, steps, evaluation) and
methods (run-config overrides), turned into one ``RunJob`` per (method, seed).

Every run of a benchmark shares the model, the token budget, the evaluation schedule and the
DoReMi/GRAPE event interval; only the mixture section differs. Evaluations every
``eval_interval`` steps score only the gold continuation (``targets.eval_mode=loss``), the last
one scores acc/acc_norm/loss.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from megagrape.errors import ConfigError
from megagrape.experiments.runs import RunJob

REPO_ROOT = Path(__file__).resolve().parents[2]

PRESETS: dict[str, str] = {
    "reasoning": "data/reasoning",
    "quickstart": "data/quickstart",
    "multilingual": "data/multilingual",
}
"""Preset name -> corpus directory (relative to the repository root)."""


@dataclass(frozen=True)
class MethodSpec:
    """A method of the benchmark: its mixture section as run-config overrides."""

    name: str
    mixture: Mapping[str, Any]
    """Fields of the run config's ``mixture`` section (``options`` included)."""
    cost: str
    """Cost family for the time estimate: static, gradient, reference or loss_only."""
    reference: str | None = None
    """Method whose run of the same seed is this method's reference model (DoReMi: uniform)."""
    uses_interval: bool = True
    """Events every ``Scale.interval`` steps (False: the method sets its own interval)."""


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "uniform",
            {"method": "static", "options": {"source": "uniform"}},
            "static",
            uses_interval=False,
        ),
        MethodSpec(
            "natural",
            {"method": "static", "options": {"source": "natural"}},
            "static",
            uses_interval=False,
        ),
        MethodSpec(
            "doge",
            {"method": "doge", "options": {"mu": 0.05, "target_gradient": "plain"}},
            "gradient",
        ),
        MethodSpec(
            "doremi",
            {"method": "doremi", "options": {"eta": 1.0, "smoothing": 1e-3}},
            "reference",
            reference="uniform",
        ),
        MethodSpec(
            "odm",
            {"method": "odm", "interval": 1, "options": {"reward_scale": 10.0}},
            "loss_only",
            uses_interval=False,
        ),
        MethodSpec(
            "mgda",
            {"method": "mgda", "options": {"normalization": "l2", "eps": 0.02}},
            "gradient",
        ),
        MethodSpec("imtl", {"method": "imtl", "options": {"eps": 0.02}}, "gradient"),
        MethodSpec("epo", {"method": "epo", "options": {"eps": 0.02}}, "gradient"),
        MethodSpec(
            "hybrid",
            {
                "method": "mgda",
                "apply": "loss",
                "sampling": "uniform",
                "options": {"normalization": "l2", "eps": 0.02},
            },
            "gradient",
        ),
        MethodSpec("grape", {"method": "grape", "options": {"mu_a": 1.5, "mu_z": 5.0}}, "gradient"),
        MethodSpec(
            "file",
            {"method": "static", "options": {"source": "file"}},
            "static",
            uses_interval=False,
        ),
    )
}

DEFAULT_METHODS = ("uniform", "doge", "grape")
"""``file`` is a static weights file given with ``weights_file`` (RegMix's regmix_weights.json,
a proxy run's mixture_average.json, CRISP/BiMix tables)."""


@dataclass(frozen=True)
class Scale:
    """Model, budget and evaluation of every run, plus how runs are spread over processes."""

    name: str
    base_config: str | None
    """Run-config file (relative to the repository root) the overrides apply to."""
    overrides: tuple[str, ...]
    train_iters: int
    eval_points: int
    """Interval evaluations per run (train_iters must be a multiple of this count)."""
    interval: int
    """Reweighting interval R of event-based methods."""
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per-method option updates at this scale (merged over MethodSpec.mixture['options'])."""
    odm_warmup_fraction: float = 0.05
    jobs: int = 1
    """Runs in parallel (worker processes)."""
    threads: int = 0
    """torch threads per worker (0: torch's default)."""
    seconds: Mapping[str, float] | None = None
    """Measured costs for the time estimate: step_<cost family>, eval, final_eval, setup
    (seconds per run-process on the machine the scale was sized on); None: no estimate."""

    @property
    def eval_interval(self) -> int:
        return self.train_iters // self.eval_points


_CPU_MODEL = (
    "model.num_layers=2",
    "model.hidden_size=128",
    "model.num_attention_heads=4",
)
_CPU_2X_MODEL = (
    "model.num_layers=4",
    "model.hidden_size=192",
    "model.num_attention_heads=6",
)
"""The cpu-2x model: 3.35M parameters (tied embedding 1.57M + 4 layers 1.78M) against the cpu
model's 1.45M (1.05M + 0.40M), i.e. 2.3x (2.35x the FLOPs per token), with the same head
width (32) and twice the depth."""

SCALES: dict[str, Scale] = {
    scale.name: scale
    for scale in (
        Scale(
            name="cpu",
            base_config=None,
            overrides=(
                *_CPU_MODEL,
                "model.seq_length=128",
                "model.position_embedding=rope",
                "train.global_batch_size=16",
                "train.micro_batch_size=8",
                "train.lr=2e-3",
                "train.min_lr=2e-4",
                "train.lr_warmup_iters=30",
                "train.lr_decay_style=cosine",
                "train.weight_decay=0.01",
                "train.clip_grad=1.0",
                "targets.eval_max_items=500",
                "targets.signal_batch_size=8",
                "targets.eval_batch_size=32",
            ),
            # 2000 steps (4.1M tokens a run): on the reasoning preset uniform ends 1.4-2.0 nats
            # below every target's unigram level (0.85-1.4 at the earlier 600 steps); 500 eval
            # items per target (all of a target's eval split where it has fewer). Measured
            # 2026-12-03, 2 runs at a time on 2 cores: 0.39 s/step static, 0.58 s/step GRAPE
            # (R = 10), 23 s per interval evaluation, about 80 s for the final one.
            train_iters=2000,
            eval_points=20,
            interval=10,
            method_options={"grape": {"mu_a": 1.5, "mu_z": 5.0}},
            jobs=2,
            threads=1,
            seconds={
                "step_static": 0.39,
                "step_loss_only": 0.41,
                "step_gradient": 0.58,
                "step_reference": 0.47,
                "eval": 23.0,
                "final_eval": 80.0,
                "setup": 15.0,
            },
        ),
        Scale(
            name="gpu",
            base_config="configs/reasoning.yaml",
            overrides=("targets.eval_max_items=500",),
            train_iters=10000,
            eval_points=20,
            interval=100,
            jobs=1,
        ),
        Scale(
            name="smoke",
            base_config=None,
            overrides=(
                "model.num_layers=2",
                "model.hidden_size=64",
                "model.num_attention_heads=4",
                "model.seq_length=64",
                "train.global_batch_size=8",
                "train.micro_batch_size=4",
                "train.lr=3e-3",
                "train.min_lr=3e-4",
                "train.lr_warmup_iters=2",
                "targets.eval_max_items=8",
                "targets.signal_batch_size=4",
            ),
            train_iters=8,
            eval_points=4,
            interval=2,
            jobs=0,
        ),
    )
}


SCALES["cpu-2x"] = replace(
    SCALES["cpu"],
    name="cpu-2x",
    overrides=(*SCALES["cpu"].overrides, *_CPU_2X_MODEL),  # later overrides win
    seconds=None,  # not measured yet
)
"""The cpu scale's budget and evaluation on a 2.3x larger model: the two-stage transfer's target."""


def parse_seeds(text: str, start: int = 1) -> list[int]:
    """'3' -> [start, start+1, start+2]; '11,12,13' -> [11, 12, 13]."""
    text = text.strip()
    try:
        if "," in text:
            seeds = [int(part) for part in text.split(",") if part.strip()]
        else:
            seeds = list(range(start, start + int(text)))
    except ValueError:
        raise ConfigError(
            f"--seeds {text!r}: give a count (3) or a comma-separated list of seeds (11,12,13)"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: need at least one seed and no repeats")
    return seeds


def parse_methods(text: str) -> list[str]:
    """'uniform,doge,grape' -> names, checked against METHODS (uniform is always first)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise ConfigError(
            f"--methods {text!r}: unknown {unknown or 'empty list'}; choose from {', '.join(METHODS)}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"--methods {text!r} repeats a method")
    if "uniform" not in names:
        raise ConfigError(
            f"--methods {text!r}: the token efficiency is measured against uniform; include it"
        )
    return ["uniform", *[n for n in names if n != "uniform"]]


def resolve_corpus(preset: str, corpus: str | None) -> Path:
    """The corpus directory of a preset (or an explicit one), checked for bin/ and tokenizer/."""
    if corpus is None:
        if preset not in PRESETS:
            raise ConfigError(
                f"--preset {preset!r}: choose from {', '.join(PRESETS)} or pass --corpus"
            )
        path = REPO_ROOT / PRESETS[preset]
    else:
        path = Path(corpus).resolve()
    missing = [p for p in ("bin", "tokenizer", "targets") if not (path / p).is_dir()]
    if missing:
        raise ConfigError(
            f"corpus {path} lacks {', '.join(missing)}/; prepare it first:\n"
            f"  python tools/prepare_corpus.py --preset {preset} --out {path}\n"
            f"  python tools/preprocess_data.py --input {path}/domains --output-dir {path}/bin "
            "--tokenizer train:8192 --workers 2"
        )
    return path


def _tokenizer_vocab(corpus: Path) -> int:
    from megagrape.data.tokenizer import Tokenizer

    return Tokenizer.load(corpus / "tokenizer").vocab_size


def yaml_value(value: Any) -> str:
    """A value as an override string (JSON is YAML flow syntax)."""
    return json.dumps(value)


def _deep_update(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_ds_config(ds_config: str | None) -> str:
    """An absolute DeepSpeed config path (default: configs/ds/zero0.json of this repository)."""
    path = Path(ds_config).resolve() if ds_config else REPO_ROOT / "configs/ds/zero0.json"
    if not path.is_file():
        raise ConfigError(f"--ds-config {path}: no such file; e.g. configs/ds/zero0.json")
    return str(path)


def base_config_path(scale: Scale) -> str | None:
    return str(REPO_ROOT / scale.base_config) if scale.base_config else None


def common_overrides(
    scale: Scale, corpus: Path, out: Path, overrides: Sequence[str] = ()
) -> tuple[str, ...]:
    """Run-config overrides shared by every run at ``scale``: data, model, budget, evaluation,
    one final checkpoint (DoReMi's reference), no TensorBoard, output under ``out``/runs."""
    return (
        f"output_dir={out / 'runs'}",
        f"data.corpus={corpus}",
        f"data.cache_dir={out / 'cache'}",
        f"model.vocab_size={_tokenizer_vocab(corpus)}",
        *scale.overrides,
        f"train.train_iters={scale.train_iters}",
        f"targets.eval_interval={scale.eval_interval}",
        "targets.eval_mode=loss",
        "checkpoint.interval=0",
        "checkpoint.keep_last=1",
        "checkpoint.resume=none",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        f"logging.interval={max(1, scale.eval_interval)}",
        *overrides,
    )


@dataclass(frozen=True)
class BenchPlan:
    """The resolved benchmark: every job plus what the report needs to know."""

    scale: Scale
    corpus: Path
    methods: list[str]
    seeds: list[int]
    out: Path
    jobs: list[RunJob]
    overrides: tuple[str, ...]
    method_overrides: Mapping[str, tuple[str, ...]]

    def job(self, method: str, seed: int) -> RunJob:
        return next(j for j in self.jobs if j.labels == {"method": method, "seed": seed})


def run_name(method: str, seed: int) -> str:
    return f"{method}-s{seed}"


def method_mixture(
    method: str, scale: Scale, weights_file: str | None = None, seed: int | None = None
) -> dict[str, Any]:
    """The mixture section of ``method`` at ``scale`` (interval and options filled in).

    A ``weights_file`` containing ``{seed}`` names one file per seed (RegMix run once per
    seed, each searched on its own seed's signal items): the seed is put in its place."""
    spec = METHODS[method]
    mixture = _deep_update(spec.mixture, {"options": scale.method_options.get(method, {})})
    if method == "file":
        if not weights_file:
            raise ConfigError("method file needs a weights file: pass --weights-file PATH")
        if "{seed}" in weights_file:
            if seed is None:
                raise ConfigError(f"--weights-file {weights_file}: '{{seed}}' needs a seed")
            weights_file = weights_file.replace("{seed}", str(seed))
        path = Path(weights_file).resolve()
        if not path.is_file():
            raise ConfigError(f"--weights-file {path}: no such file")
        mixture["options"] = {**mixture["options"], "path": str(path)}
    if spec.uses_interval:
        mixture["interval"] = scale.interval
    if method == "odm":
        warmup = round(scale.odm_warmup_fraction * scale.train_iters)
        mixture["options"] = {**mixture["options"], "warmup_steps": warmup}
    return mixture


def parse_method_overrides(
    items: Sequence[str], methods: Sequence[str]
) -> dict[str, tuple[str, ...]]:
    """['grape:mixture.options.mu_a=3', ...] -> {'grape': ('mixture.options.mu_a=3',)}."""
    parsed: dict[str, list[str]] = {}
    for item in items:
        method, sep, override = item.partition(":")
        if not sep or "=" not in override:
            raise ConfigError(
                f"--method-override {item!r}: write METHOD:KEY=VALUE, e.g. grape:mixture.options.mu_a=3"
            )
        if method not in methods:
            raise ConfigError(
                f"--method-override {item!r}: method {method!r} is not among --methods {list(methods)}"
            )
        parsed.setdefault(method, []).append(override)
    return {method: tuple(values) for method, values in parsed.items()}


def plan_benchmark(
    *,
    scale: str,
    preset: str,
    corpus: str | None,
    methods: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    overrides: Sequence[str] = (),
    method_overrides: Mapping[str, Sequence[str]] | None = None,
    ds_config: str | None = None,
    train_iters: int | None = None,
    eval_points: int | None = None,
    weights_file: str | None = None,
) -> BenchPlan:
    """One job per (seed, method), ordered seed by seed with uniform first (DoReMi needs it)."""
    if scale not in SCALES:
        raise ConfigError(f"--scale {scale!r}: choose from {', '.join(SCALES)}")
    chosen = SCALES[scale]
    if train_iters is not None or eval_points is not None:
        chosen = replace(
            chosen,
            train_iters=train_iters or chosen.train_iters,
            eval_points=eval_points or chosen.eval_points,
        )
    if chosen.train_iters % chosen.eval_points:
        raise ConfigError(
            f"train iterations ({chosen.train_iters}) must be a multiple of the evaluation points "
            f"({chosen.eval_points}) so that the last evaluation is at the last step"
        )
    corpus_dir = resolve_corpus(preset, corpus)
    out_dir = Path(out).resolve()
    ds_path = resolve_ds_config(ds_config)
    base = base_config_path(chosen)
    common = common_overrides(chosen, corpus_dir, out_dir, overrides)
    extra = {m: tuple(v) for m, v in (method_overrides or {}).items()}
    jobs = []
    for seed in seeds:
        for method in methods:
            spec = METHODS[method]
            mixture = method_mixture(method, chosen, weights_file, seed)
            mixture_overrides = [
                f"mixture.{key}={yaml_value(value)}" for key, value in mixture.items()
            ]
            requires = None
            if spec.reference is not None:
                if spec.reference not in methods:
                    raise ConfigError(
                        f"method {method} needs the {spec.reference} run of each seed as its "
                        f"reference model; add {spec.reference} to --methods"
                    )
                requires = run_name(spec.reference, seed)
                checkpoint = (
                    out_dir / "runs" / requires / "checkpoints" / f"step_{chosen.train_iters:06d}"
                )
                mixture_overrides.append(f"mixture.reference_checkpoint={checkpoint}")
            name = run_name(method, seed)
            jobs.append(
                RunJob(
                    name=name,
                    base_config=base,
                    overrides=(
                        *common,
                        f"name={name}",
                        f"seed={seed}",
                        *mixture_overrides,
                        *extra.get(method, ()),
                    ),
                    ds_config=ds_path,
                    result_path=str(out_dir / "results" / f"{name}.json"),
                    log_path=str(out_dir / "logs" / f"{name}.log"),
                    requires=requires,
                    labels={"method": method, "seed": seed},
                )
            )
    for job in jobs:
        job.config()  # every config is valid before anything starts
    return BenchPlan(
        scale=chosen,
        corpus=corpus_dir,
        methods=list(methods),
        seeds=list(seeds),
        out=out_dir,
        jobs=jobs,
        overrides=tuple(overrides),
        method_overrides=extra,
    )


def estimate_seconds(plan: BenchPlan, jobs: Sequence[RunJob], workers: int) -> float | None:
    """Wall-clock estimate for ``jobs`` from the scale's measured costs (None if it has none)."""
    costs = plan.scale.seconds
    if not costs:
        return None
    total = 0.0
    for job in jobs:
        family = METHODS[job.labels["method"]].cost
        total += (
            plan.scale.train_iters * costs[f"step_{family}"]
            + (plan.scale.eval_points - 1) * costs["eval"]
            + costs["final_eval"]
            + costs["setup"]
        )
    return total / max(1, workers)
