"""The mixture controller: method, sampler, gradient capture, reference model and event accounting.

The loop calls its hooks in this order every optimizer step::

    plan = mixture.plan_step(step)            # next global batch, this rank's micro-batches
    mixture.begin_backward(plan)              # event steps: target gradients first
    ... train module: forward/backward, calling mixture.after_backward(micro, batch, per_token)
    observed = mixture.before_optim_step(plan)   # event steps: finish the capture
    ... train module: optimizer step; the loop reduces the step's losses into a StepRecord
    event = mixture.after_step(plan, step + 1, record, observed, lr)   # the reweighting event

The controller knows nothing about methods by name: what it computes at an event follows
``method.needs``, and whether events happen at all follows ``method.reweights``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from megagrape import parallel
from megagrape.config import RunConfig
from megagrape.data.microbatches import MicroBatch, plan_microbatches
from megagrape.data.sampler import GlobalBatch, MixtureSampler
from megagrape.data.training_data import TrainingData
from megagrape.errors import ConfigError
from megagrape.mixture import (
    MixtureUpdate,
    Observation,
    TimeAverage,
    build_method,
    hybrid_loss_weights,
)
from megagrape.mixture.registry import method_class
from megagrape.mixture.static import load_weights_file, natural_weights
from megagrape.train.capture import (
    CapturedGradients,
    CaptureSettings,
    GradientCapture,
    build_gradient_source,
    capture_mode,
    reads_training_rounds,
)
from megagrape.train.reference import ReferenceModel
from megagrape.train.step_stats import StepRecord
from megagrape.utils.atomic import write_json_atomic

DOMAIN_GRADIENT_NEEDS = frozenset({"domain_target_gram", "domain_gram", "domain_sq_norms"})
CAPTURE_NEEDS = DOMAIN_GRADIENT_NEEDS | {"target_losses", "target_gram"}


def needs_gradient_capture(method) -> bool:
    """True when the method's observations need per-domain or per-target gradients/losses."""
    return bool(method.needs & CAPTURE_NEEDS)


def needs_reference(method) -> bool:
    """True when the method needs DoReMi's reference model (excess losses)."""
    return "domain_excess_losses" in method.needs


def resolve_weights_spec(
    spec: str, names: list[str], token_counts: list[int], field_name: str
) -> np.ndarray:
    """'uniform', 'natural' (token shares) or a weights file -> float64 [K] on the simplex."""
    if spec == "uniform":
        return np.full(len(names), 1.0 / len(names))
    if spec == "natural":
        return natural_weights(token_counts, names).numpy()
    if not Path(spec).is_file():
        raise ConfigError(
            f"{field_name}={spec!r} is not 'uniform', 'natural' or an existing weights file"
        )
    return load_weights_file(spec, names).numpy()


def build_mixture_method(
    cfg: RunConfig, domain_names: list[str], task_names: list[str], token_counts: list[int]
):
    """The run's reweighting method, started at ``mixture.initial`` (ConfigError naming fields).

    The same call serves the pre-flight check (which needs ``method.needs`` before any
    process group) and the controller, so both see the same method.
    """
    mix = cfg.mixture
    initial = (
        torch.from_numpy(
            resolve_weights_spec(mix.initial, domain_names, token_counts, "mixture.initial")
        )
        if method_class(mix.method).takes_initial_weights
        else None
    )
    return build_method(
        mix.method,
        mix.options,
        domain_names=domain_names,
        task_names=task_names,
        initial_weights=initial,
        domain_token_counts=token_counts,
    )


@dataclass
class StepPlan:
    """One optimizer step as the controller planned it."""

    step: int  # 0-based optimizer step being trained
    batch: GlobalBatch  # the global batch (identical on every rank)
    micro_batches: list[MicroBatch]  # this rank's micro-batches
    event: bool  # a reweighting event ends this step


@dataclass
class MixtureEvent:
    """What one reweighting event did (the metrics callback records it)."""

    step: int  # optimizer steps completed when the event ran
    consumed_samples: int
    domain_names: list[str]
    task_names: list[str]
    update: MixtureUpdate
    observed: CapturedGradients | None
    seconds: float  # the whole event: capture plus the method's update


@dataclass
class EventAccumulator:
    """Per-domain training-loss sums since the last reweighting event (global, all ranks equal)."""

    loss_sums: np.ndarray  # float64 [K]
    counts: np.ndarray  # float64 [K]
    excess_sums: np.ndarray  # float64 [K]

    @classmethod
    def zeros(cls, num_domains: int) -> EventAccumulator:
        return cls(np.zeros(num_domains), np.zeros(num_domains), np.zeros(num_domains))

    def add(self, record: StepRecord) -> None:
        self.loss_sums += record.domain_loss_sums
        self.counts += record.domain_counts
        self.excess_sums += record.domain_excess_sums

    def _per_domain(self, sums: np.ndarray) -> torch.Tensor:
        with np.errstate(invalid="ignore", divide="ignore"):
            return torch.from_numpy(np.where(self.counts > 0, sums / self.counts, np.nan))

    def means(self) -> torch.Tensor:
        """[K] mean training loss per domain since the last event (NaN where absent)."""
        return self._per_domain(self.loss_sums)

    def excess_means(self) -> torch.Tensor:
        """[K] mean DoReMi excess loss per domain since the last event (NaN where absent)."""
        return self._per_domain(self.excess_sums)

    def reset(self) -> None:
        self.loss_sums[:] = 0
        self.counts[:] = 0
        self.excess_sums[:] = 0

    def state_dict(self) -> dict:
        return {
            "loss_sums": self.loss_sums.tolist(),
            "counts": self.counts.tolist(),
            "excess_sums": self.excess_sums.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.loss_sums[:] = state["loss_sums"]
        self.counts[:] = state["counts"]
        self.excess_sums[:] = state["excess_sums"]


@dataclass
class MixtureController:
    """Owns everything that decides which samples train and how the mixture moves."""

    cfg: RunConfig
    env: object
    data: TrainingData
    method: object  # a megagrape.mixture MixtureMethod
    sampler: MixtureSampler
    sampling: np.ndarray | None  # [K] fixed sampling distribution under apply: loss, else None
    schedule: str  # micro-batch schedule of ordinary steps
    event_schedule: str  # micro-batch schedule of steps that end in an event
    capture: GradientCapture | None = None
    reference: ReferenceModel | None = None
    event_acc: EventAccumulator = field(init=False)
    average: TimeAverage = field(init=False)  # the weights in effect, one term per step
    previous_target_losses: torch.Tensor | None = None
    last_observation: Observation | None = None  # what the latest event's method saw
    _step_excess: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        k = len(self.data.domains)
        self.event_acc = EventAccumulator.zeros(k)
        self.average = TimeAverage(k)

    @classmethod
    def build(cls, cfg: RunConfig, env, data: TrainingData, module) -> MixtureController:
        """Method, sampler and schedules from ``cfg``; capture and reference as the method needs.

        ``module`` is the train module: the capture reads its engine's gradients and aliases
        its parameters.
        """
        mix = cfg.mixture
        names, counts = data.domain_names, data.token_counts
        method = build_mixture_method(cfg, names, data.task_names, counts)
        sampling = (
            resolve_weights_spec(mix.sampling, names, counts, "mixture.sampling")
            if mix.apply == "loss"
            else None
        )
        sampler = MixtureSampler(
            names,
            data.budgets,
            sampling if sampling is not None else method.domain_weights.numpy(),
            cfg.train.global_batch_size,
            budget_hint=f"raise data.budget_factor (now {cfg.data.budget_factor}) in the run config",
        )
        mode = (
            capture_mode(module.zero_stage, cfg.parallel.pipeline_parallel)
            if needs_gradient_capture(method)
            else None
        )
        rounds = bool(method.needs & DOMAIN_GRADIENT_NEEDS) and reads_training_rounds(mode or "")
        schedule = cfg.train.microbatch_schedule
        # auto: domain-pure rounds only on the steps that end in an event, and only where the
        # capture reads per-domain gradients from them; every other step packs full micro-batches.
        plain = "fixed" if schedule == "auto" else schedule
        controller = cls(
            cfg=cfg,
            env=env,
            data=data,
            method=method,
            sampler=sampler,
            sampling=sampling,
            schedule=plain,
            event_schedule="by_domain" if schedule == "auto" and rounds else plain,
        )
        if needs_reference(method):
            controller.reference = ReferenceModel(
                cfg, env, mix.reference_checkpoint, data.tokenizer.fingerprint
            )
        if mode is not None:
            controller.capture = GradientCapture(
                needs=method.needs,
                mode=mode,
                source=build_gradient_source(
                    mode, module.engine, cfg.model, env, cfg.train.micro_batch_size
                ),
                env=env,
                tasks=data.tasks,
                datasets=data.datasets,
                settings=CaptureSettings.from_config(cfg),
            )
        return controller

    # ------------------------------------------------------------------ hooks of the loop
    def is_event(self, step: int) -> bool:
        """Whether optimizer step ``step`` (0-based) ends in a reweighting event."""
        mix = self.cfg.mixture
        return (
            self.method.reweights and step + 1 > mix.warmup_steps and (step + 1) % mix.interval == 0
        )

    def plan_step(self, step: int) -> StepPlan:
        """Take the next global batch and plan this rank's micro-batches for step ``step``."""
        self.average.add(self.weights_in_effect())
        batch = self.sampler.next_global_batch()
        event = self.is_event(step)
        micro_batches = plan_microbatches(
            batch,
            self.env.dp_rank,
            self.env.dp_size,
            self.cfg.train.micro_batch_size,
            self.event_schedule if event else self.schedule,
        )
        self._step_excess = []
        return StepPlan(step=step, batch=batch, micro_batches=micro_batches, event=event)

    def begin_backward(self, plan: StepPlan) -> None:
        """Event steps of gradient methods: target gradients and probes before any backward."""
        if plan.event and self.capture is not None:
            self.capture.begin_step(
                plan.step,
                plan.batch,
                plan.micro_batches,
                self.domain_loss_scale(),
                self.sampler.realised_counts(),
            )

    def after_backward(
        self, micro: MicroBatch, batch: dict[str, torch.Tensor], per_token: torch.Tensor
    ) -> None:
        """After each micro-batch's backward: read the capture's round; score the reference."""
        if self._capturing:
            self.capture.after_microbatch(micro)
        if self.reference is not None:
            self._step_excess.append(self.reference.excess_losses(batch, per_token))

    def before_optim_step(self, plan: StepPlan) -> CapturedGradients | None:
        """Event steps: finish the capture while the step's gradients are still in place."""
        if not (plan.event and self.capture is not None):
            return None
        return self.capture.end_step()

    def take_step_excess(self) -> list[torch.Tensor] | None:
        """The step's per-micro-batch DoReMi excess losses [b] (None without a reference)."""
        return self._step_excess if self.reference is not None else None

    def after_step(
        self,
        plan: StepPlan,
        steps_done: int,
        record: StepRecord,
        observed: CapturedGradients | None,
        lr: float,
    ) -> MixtureEvent | None:
        """Account the step's losses; at an event, update the method and the sampler."""
        self.event_acc.add(record)
        if not plan.event:
            return None
        started = time.perf_counter()
        obs = Observation(
            step=steps_done,
            lr=lr,
            domain_losses=self.event_acc.means(),
            domain_sample_counts=torch.from_numpy(self.event_acc.counts.copy()),
            domain_excess_losses=(
                self.event_acc.excess_means() if self.reference is not None else None
            ),
            previous_target_losses=self.previous_target_losses,
            sampling_weights=None if self.sampling is None else torch.from_numpy(self.sampling),
        )
        if observed is not None:
            obs.domain_target_gram = observed.domain_target_gram
            obs.domain_gram = observed.domain_gram
            obs.target_losses = observed.target_losses
            obs.domain_sq_norms = observed.domain_sq_norms
            obs.target_gram = observed.target_gram
            self.previous_target_losses = observed.target_losses
        update = self.method.update(obs)
        self.last_observation = obs
        alpha = update.domain_weights.double()
        if not parallel.all_ranks_agree(alpha):
            raise RuntimeError(
                f"ranks disagree on the new domain weights at step {steps_done}: {alpha.tolist()}"
            )
        if self.sampling is None and update.skipped is None:
            self.sampler.set_weights(alpha.numpy())
        self.event_acc.reset()
        seconds = time.perf_counter() - started + (observed.seconds if observed else 0.0)
        if update.skipped and self.env.rank == 0:
            tqdm.write(
                f"[megagrape] step {steps_done}: reweighting event skipped: {update.skipped}"
            )
        return MixtureEvent(
            step=steps_done,
            consumed_samples=self.sampler.consumed_samples,
            domain_names=self.data.domain_names,
            task_names=self.data.task_names,
            update=update,
            observed=observed,
            seconds=seconds,
        )

    # ------------------------------------------------------------------ weights
    @property
    def _capturing(self) -> bool:
        return self.capture is not None and self.capture.active

    def loss_weights(self) -> torch.Tensor | None:
        """[K] factor on each domain's loss under apply: loss (alpha / s), None when sampling."""
        if self.sampling is None:
            return None
        return hybrid_loss_weights(self.method.domain_weights, torch.from_numpy(self.sampling))

    def domain_loss_scale(self) -> np.ndarray:
        """float64 [K] factor on each domain's per-sample loss in this step (1 when sampling)."""
        weights = self.loss_weights()
        return np.ones(len(self.data.domains)) if weights is None else weights.double().numpy()

    def weights_in_effect(self) -> torch.Tensor:
        """[K] the mixture the coming step trains on: the sampler's, or alpha under apply: loss."""
        if self.sampling is not None:
            return self.method.domain_weights
        return torch.tensor(self.sampler.current_weights)

    def write_average(self, run_dir: Path) -> None:
        """Rank 0: the time-averaged mixture (``mixture_average.json``, two-stage workflow)."""
        if self.env.rank == 0 and self.average.count:
            document = {
                **self.average.as_dict(self.data.domain_names),
                "method": self.method.name,
            }
            write_json_atomic(run_dir / "mixture_average.json", document, fsync=True)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "sampler": self.sampler.state_dict(),
            "method": self.method.state_dict(),
            "event_accumulator": self.event_acc.state_dict(),
            "average": self.average.state_dict(),
            "previous_target_losses": (
                self.previous_target_losses.tolist()
                if self.previous_target_losses is not None
                else None
            ),
        }

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.method.load_state_dict(state["method"])
        self.event_acc.load_state_dict(state["event_accumulator"])
        self.average.load_state_dict(state["average"])
        previous = state.get("previous_target_losses")
        self.previous_target_losses = (
            torch.tensor(previous, dtype=torch.float64) if previous is not None else None
        )
