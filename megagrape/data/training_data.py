"""Everything a run reads from disk before training: tokenizer, domains, budgets, datasets, targets.

    data = build_training_data(cfg)          # on every rank, inside the process group
    sources = resolve_data_sources(cfg)      # the same path resolution, no dataset built

``resolve_data_sources`` is what the pre-flight check (megagrape/train/preflight.py) runs
before any process group exists: the tokenizer, every domain prefix (``.bin``/``.idx``
checked), the target files and the vocabulary fit. ``build_training_data`` runs the same
resolution and then builds the per-domain megatron-core GPTDatasets and the target tasks,
so the two can never disagree about which files a run uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from megagrape.config import DataConfig, RunConfig, TargetsConfig
from megagrape.data.domains import (
    DomainSpec,
    build_domain_datasets,
    count_tokens,
    discover_domains,
    validate_prefix,
)
from megagrape.data.target_formats import target_name
from megagrape.data.targets import TargetTask, load_targets
from megagrape.data.tokenizer import Tokenizer, check_vocab_fits
from megagrape.errors import ConfigError


@dataclass(frozen=True)
class DataSources:
    """The files a run trains and evaluates on, resolved and checked (nothing tokenized or built)."""

    tokenizer_path: Path
    domains: list[DomainSpec]  # in training order: data.domains order, else sorted by name
    target_files: dict[str, Path]  # task name -> target file, in load order

    @property
    def domain_names(self) -> list[str]:
        return [spec.name for spec in self.domains]


@dataclass
class TrainingData:
    """What the engine trains on. Shapes: K domains, N target tasks."""

    tokenizer: Tokenizer
    domains: list[DomainSpec]  # [K]
    token_counts: list[int]  # [K] tokens stored per domain (for natural shares)
    budgets: list[int]  # [K] samples each domain's dataset holds (the sampler's budget)
    datasets: list  # [K] megatron-core GPTDataset, samples of seq_length tokens
    tasks: list[TargetTask]  # [N]
    target_files: dict[str, Path]  # [N] task name -> the file its items came from

    @property
    def domain_names(self) -> list[str]:
        return [spec.name for spec in self.domains]

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]


def resolve_domains(data: DataConfig) -> list[DomainSpec]:
    """The training domains named by ``data`` (bin_dir discovery plus explicit prefixes).

    A name in both ``data.bin_dir`` and ``data.prefixes`` is an error: which files would be
    trained on must never depend on a silent precedence rule.
    """
    bin_dir = data.resolved_bin_dir()
    specs = {spec.name: spec for spec in discover_domains(bin_dir)} if bin_dir else {}
    for name, prefix in data.prefixes.items():
        if name in specs:
            raise ConfigError(
                f"data.prefixes names domain {name!r}, which {bin_dir} already has "
                f"({specs[name].prefix}); rename the prefix entry or leave it out"
            )
        specs[name] = DomainSpec(name=name, prefix=prefix)
    if data.domains:
        missing = [name for name in data.domains if name not in specs]
        if missing:
            raise ConfigError(
                f"data.domains names {missing} but {bin_dir or 'data.prefixes'} only has "
                f"{sorted(specs)}; run tools/preprocess_data.py for them or fix data.domains"
            )
        chosen = [specs[name] for name in data.domains]
    elif specs:
        chosen = [specs[name] for name in sorted(specs)]
    else:
        raise ConfigError(
            f"no training domains found in {bin_dir!r} or data.prefixes; "
            "run tools/preprocess_data.py first"
        )
    for spec in chosen:
        validate_prefix(spec.prefix, spec.name)
    return chosen


def resolve_target_files(targets: TargetsConfig, corpus: str) -> dict[str, Path]:
    """Task name -> file for ``targets`` (empty when the run has no target directory)."""
    target_dir = (
        Path(targets.dir) if targets.dir else (Path(corpus) / "targets" if corpus else None)
    )
    if target_dir is None:
        return {}
    field_name = "targets.dir" if targets.dir else "data.corpus"
    if not target_dir.is_dir():
        if not targets.dir:
            return {}  # a corpus without targets/ simply has no targets
        raise ConfigError(
            f"{field_name}={str(target_dir)!r} is not a directory; run tools/prepare_corpus.py "
            "or fix targets.dir"
        )
    found: dict[str, Path] = {}
    for path in sorted(target_dir.iterdir()):
        if not path.name.endswith((".jsonl", ".jsonl.gz")):
            continue
        name = target_name(path)
        if name in found:
            raise ConfigError(
                f"target name {name!r} is used twice in {target_dir} ({found[name].name} and "
                f"{path.name}); rename or remove one"
            )
        found[name] = path
    if not found and targets.dir:
        raise ConfigError(
            f"targets.dir={targets.dir!r} has no .jsonl or .jsonl.gz target files; run "
            "tools/prepare_corpus.py or fix targets.dir"
        )
    if not targets.tasks:
        return found
    missing = [name for name in targets.tasks if name not in found]
    if missing:
        raise ConfigError(
            f"targets.tasks names {missing} but {target_dir} only has {sorted(found)}; "
            "fix targets.tasks"
        )
    return {name: found[name] for name in targets.tasks}


def resolve_data_sources(cfg: RunConfig) -> DataSources:
    """Resolve and check every input path of ``cfg`` (ConfigError/DataError naming the field)."""
    tokenizer = cfg.data.resolved_tokenizer()
    if not tokenizer:
        raise ConfigError("data.tokenizer is empty and data.corpus is not set; set one of them")
    if not Path(tokenizer).exists():
        raise ConfigError(
            f"data.tokenizer={tokenizer!r} does not exist; run tools/preprocess_data.py "
            "(it saves the tokenizer) or point data.tokenizer at a tokenizer directory or file"
        )
    return DataSources(
        tokenizer_path=Path(tokenizer),
        domains=resolve_domains(cfg.data),
        target_files=resolve_target_files(cfg.targets, cfg.data.corpus),
    )


def load_checked_tokenizer(sources: DataSources, model_vocab_size: int) -> Tokenizer:
    """The run's tokenizer, checked to fit ``model.vocab_size``."""
    tokenizer = Tokenizer.load(sources.tokenizer_path)
    check_vocab_fits(tokenizer, model_vocab_size, where="model.vocab_size")
    return tokenizer


def build_training_data(cfg: RunConfig) -> TrainingData:
    """Resolve the sources, load the tokenizer and targets, build one GPTDataset per domain.

    Every domain's budget is ``ceil(train_samples * data.budget_factor)`` samples, fixed up
    front so that a weight change never reshuffles a domain (megagrape/data/domains.py).
    """
    sources = resolve_data_sources(cfg)
    tokenizer = load_checked_tokenizer(sources, cfg.model.vocab_size)
    budget = math.ceil(cfg.train.train_samples * cfg.data.budget_factor)
    budgets = [budget] * len(sources.domains)
    cache_dir = str(cfg.cache_dir)
    datasets = build_domain_datasets(
        sources.domains,
        seq_length=cfg.model.seq_length,
        budgets=budgets,
        seed=cfg.seed,
        cache_dir=cache_dir,
        eod_id=tokenizer.eod,
    )
    tasks = (
        load_targets(
            sources.target_files,
            tokenizer,
            eval_fraction=cfg.targets.eval_fraction,
            seed=cfg.seed,
            eval_split=cfg.targets.eval_split,
        )
        if sources.target_files
        else []
    )
    return TrainingData(
        tokenizer=tokenizer,
        domains=sources.domains,
        token_counts=[count_tokens(spec.prefix) for spec in sources.domains],
        budgets=budgets,
        datasets=datasets,
        tasks=tasks,
        target_files=sources.target_files,
    )
