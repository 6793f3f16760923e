"""Per-domain and per-target gradient information and the sharded gradient Gram matrices.

At a reweighting event the mixture controller needs, on a model split over DP x TP x PP ranks
(and under any ZeRO stage),

    G[k, n] = <g_k, grad l_n>    (domain_target_gram, K x N)
    D[i, j] = <g_i, g_j>         (domain_gram, K x K)
    l_n                          (target_losses, N)

where g_k is the gradient of the mean training loss on domain k over the step's global batch
and l_n the mean signal loss of target task n. Gradients are held as *slots* (one per
trainable parameter on the rank: the local parameter, or its ZeRO-3 partition) and come from
a :mod:`gradient source <megagrape.train.gradient_sources>` chosen by the layout:

=============  =====================  ==========================================================
mode           layout                 per-domain rows come from
=============  =====================  ==========================================================
``linear``     PP = 1, ZeRO 0/1       the training micro-batches (domain-pure rounds): after
                                      each round's backward, ``p.grad`` holds the rank's
                                      accumulated local gradient; its products with the stored
                                      target gradients, differenced between rounds, are the
                                      round's contribution. Nothing extra runs.
``partitioned`` PP = 1, ZeRO-3        the training rounds likewise, reading this rank's reduced
                                      gradient partitions (ZeRO-3 reduce-scatters every
                                      backward); no rank holds a full gradient.
``probe``      PP = 1, ZeRO-2         probes: ZeRO-2's partition buffers mix the parameters'
                                      gradients, so each present domain's gradient is recomputed
                                      on the step's own samples (one extra forward/backward of
                                      the batch at events).
``pipeline``   PP > 1 (ZeRO 0/1)      probes through the pipeline: DeepSpeed's 1F1B schedule
                                      interleaves micro-batches across stages, so per-round
                                      reads are not possible; one extra forward/backward of the
                                      batch, by domain, padded to whole micro-batches.
=============  =====================  ==========================================================

Target gradients and all probes are computed in ``begin_step``, before the step's first
training backward, because the pipeline and ZeRO-3 sources run through the engine and leave
its gradient buffers empty again. Domains absent from the step's global batch get a probe on
their next unconsumed samples (peeked, not consumed), so every row of G is defined.

Every product runs through ``megagrape.ops.gram_matrix`` (the fused csrc kernel) over the
slots this rank counts, then ONE all-reduce of the small matrix. Training gradients are never
modified: a step with capture leaves the parameters bit-identical to the same step without it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from megagrape import parallel
from megagrape.data.microbatches import MicroBatch, collate
from megagrape.data.sampler import GlobalBatch
from megagrape.model import ModelConfig
from megagrape.ops import gram_matrix
from megagrape.train.gradient_sources import (
    GradientSource,
    PartitionedGradients,
    PipelineGradients,
    ShadowGradients,
    all_reduce_sum,
)

CAPTURE_MODES = ("linear", "partitioned", "probe", "pipeline")


@dataclass
class CapturedGradients:
    """What one event measured (global values, identical on every rank)."""

    domain_target_gram: torch.Tensor | None  # [K, N] float64, raw grad l_n
    domain_gram: torch.Tensor | None  # [K, K] float64
    target_losses: torch.Tensor | None  # [N] float64
    domain_sq_norms: torch.Tensor | None  # [K] float64 ||g_k||^2
    target_gram: torch.Tensor | None  # [N, N] float64 <grad l_n, grad l_m>, raw gradients
    probed_domains: list[int]  # domains whose gradient came from probe passes
    seconds: float  # wall time of the whole capture, begin_step to end_step
    target_seconds: float  # of which: the N target gradients
    probe_seconds: float  # of which: probe passes for the probed domains
    stored_bytes: int = 0  # this rank: gradients the capture held at its peak (targets, rows)


@dataclass(frozen=True)
class CaptureSettings:
    """The run facts the capture reads (from the run config; see ``from_config``)."""

    signal_batch_size: int  # items per target per event, over all DP ranks
    seed: int  # run seed: which signal items an event draws
    probe_samples: int  # samples per probe of a domain absent from the step's batch
    global_batch_size: int  # sequences per optimizer step over all DP ranks
    seq_length: int  # tokens per signal item (the model's sequence length)
    store_dtype: torch.dtype  # storage of the N target gradients
    store_on_cpu: bool  # keep the target gradients in host memory

    @classmethod
    def from_config(cls, cfg) -> CaptureSettings:
        """From a RunConfig: targets.signal_batch_size, mixture.capture_*, probe_samples, seed,
        train.global_batch_size and model.seq_length."""
        return cls(
            signal_batch_size=cfg.targets.signal_batch_size,
            seed=cfg.seed,
            probe_samples=cfg.mixture.probe_samples,
            global_batch_size=cfg.train.global_batch_size,
            seq_length=cfg.model.seq_length,
            store_dtype={"float32": torch.float32, "bfloat16": torch.bfloat16}[
                cfg.mixture.capture_dtype
            ],
            store_on_cpu=cfg.mixture.capture_device == "cpu",
        )


def capture_mode(zero_stage: int, pipeline_parallel: int) -> str:
    """The capture mode of a layout (see the module docstring's table)."""
    if pipeline_parallel > 1:
        return "pipeline"
    if zero_stage >= 3:
        return "partitioned"
    return "probe" if zero_stage == 2 else "linear"


def reads_training_rounds(mode: str) -> bool:
    """Whether the mode reads per-domain rows from domain-pure training rounds."""
    return mode in ("linear", "partitioned")


def build_gradient_source(
    mode: str, engine, model_cfg: ModelConfig, env, micro_batch_size: int
) -> GradientSource:
    """The gradient source of ``mode`` for a DeepSpeed engine."""
    if mode == "pipeline":
        return PipelineGradients(engine, env, micro_batch_size)
    if mode == "partitioned":
        return PartitionedGradients(engine, env)
    if mode in ("linear", "probe"):
        return ShadowGradients(engine.module, model_cfg, env)
    raise ValueError(f"capture mode {mode!r} is not one of {CAPTURE_MODES}")


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _reduced(partial: torch.Tensor, group, device: torch.device) -> torch.Tensor:
    """A small float64 matrix of partial products summed over ``group``, on the CPU."""
    total = partial.to(device)
    dist.all_reduce(total, group=group)
    return total.cpu()


class GradientCapture:
    """Collective object: every rank calls begin_step / after_microbatch / end_step together.

    Dependencies are explicit: the gradient source (which also names the slots and how their
    products are summed), the target tasks [N] and the per-domain datasets [K] the probes
    read, and the settings above.
    """

    def __init__(
        self,
        needs: frozenset[str],
        mode: str,
        source: GradientSource,
        env,
        tasks: list,
        datasets: list,
        settings: CaptureSettings,
    ) -> None:
        if mode not in CAPTURE_MODES:
            raise ValueError(f"capture mode {mode!r} is not one of {CAPTURE_MODES}")
        if mode == "partitioned" and not isinstance(source, PartitionedGradients):
            raise ValueError("the partitioned capture mode reads a PartitionedGradients source")
        self.env = env
        self.needs = needs
        self.mode = mode
        self.source = source
        self.tasks = tasks
        self.datasets = datasets
        self.settings = settings
        self.num_domains = len(datasets)
        self.want_targets = bool(needs & {"domain_target_gram", "target_losses", "target_gram"})
        self.want_domain_gram = "domain_gram" in needs
        self.want_sq_norms = "domain_sq_norms" in needs
        self.want_target_gram = "target_gram" in needs
        self.want_domain_vectors = self.want_domain_gram or self.want_sq_norms
        if self.want_targets and not tasks:
            raise ValueError("gradient capture of target products needs at least one target task")
        self.store_dtype = settings.store_dtype
        self.store_device = torch.device("cpu") if settings.store_on_cpu else env.device
        self.counted = source.counted
        self.dp_group = parallel.dp_group()
        self._reset()

    # ------------------------------------------------------------------ event lifecycle
    def _reset(self) -> None:
        self.target_grads: list[list[torch.Tensor]] = []  # [N] slot lists
        self.target_losses: torch.Tensor | None = None
        self.target_gram: torch.Tensor | None = None
        self.prev_products: torch.Tensor | None = None
        self.products: torch.Tensor | None = None  # [K, N] local sums of round deltas
        self.snapshot: list[torch.Tensor] | None = None  # training slots after the last domain
        self.last_round: dict[int, int] = {}  # domain -> index of its last round in the plan
        self.rounds_done = 0
        self.domain_vectors: dict[int, list[torch.Tensor]] = {}  # domain -> slots of g_d
        self.sq_norms: dict[int, torch.Tensor] = {}  # domain -> local partial ||g_d||^2
        self.probe_rows: dict[int, torch.Tensor] = {}  # domain -> [N] global row of G
        self.from_training: list[int] = []
        self.probed: list[int] = []
        self.scale: dict[int, float] = {}
        self.started = 0.0
        self.target_seconds = 0.0
        self.probe_seconds = 0.0
        self.peak_bytes = 0
        self.active = False  # between begin_step and end_step of an event step

    def begin_step(
        self,
        step: int,
        batch: GlobalBatch,
        micro_batches: list[MicroBatch],
        loss_scale: np.ndarray,
        next_unconsumed: np.ndarray,
    ) -> None:
        """Start an event step, before its first training backward: target gradients and probes.

        batch: the step's global batch; micro_batches: this rank's plan (its round domains say
        which rows the training rounds give); loss_scale: float64 [K] factor on each domain's
        per-sample loss in this step (alpha/s under apply: loss, else 1); next_unconsumed:
        int [K] first unconsumed sample of each domain (where probes of absent domains read).
        """
        self._reset()
        self.active = True
        self.started = time.perf_counter()
        k, env = self.num_domains, self.env
        if self.want_targets:
            self._compute_target_gradients(step)
            self.target_seconds = time.perf_counter() - self.started
            self.products = torch.zeros(k, len(self.tasks), dtype=torch.float64)
        counts = np.bincount(batch.domain_ids.astype(np.int64), minlength=k)
        rounds = {m.round_domain for m in micro_batches}
        # by_domain plans run each domain's rounds back to back: a domain's gradient is the
        # change of the accumulated slots from the end of the previous domain to its last round
        self.last_round = {m.round_domain: i for i, m in enumerate(micro_batches)}
        self.from_training = [
            d
            for d in range(k)
            if reads_training_rounds(self.mode)
            and d in rounds
            and counts[d] > 0
            and loss_scale[d] > 0
        ]
        self.probed = [d for d in range(k) if d not in self.from_training]
        local_size = self.settings.global_batch_size // env.dp_size
        # training slots are local sums (linear) or DP means (partitioned) of sum_s grad L_s / local
        round_scale = float(env.dp_size) if self.mode == "partitioned" else 1.0
        self.scale = {
            d: round_scale * local_size / (counts[d] * loss_scale[d]) for d in self.from_training
        }
        probes_started = time.perf_counter()
        self._probe(batch, next_unconsumed)
        self.probe_seconds = time.perf_counter() - probes_started

    def after_microbatch(self, micro: MicroBatch) -> None:
        """Read this round's contribution (linear and partitioned modes) right after its backward."""
        if not reads_training_rounds(self.mode) or micro.round_domain < 0:
            return
        index, domain = self.rounds_done, micro.round_domain
        self.rounds_done += 1
        grads = self._training_slots()
        if self.want_targets:
            now = self._target_products(grads)
            delta = now - (self.prev_products if self.prev_products is not None else 0.0)
            self.products[domain] += delta
            self.prev_products = now
        if self.want_domain_vectors and self.last_round.get(domain) == index:
            if domain in self.scale:
                if self.snapshot is None:
                    vector = [g.clone() for g in grads]
                else:
                    vector = [g - before for g, before in zip(grads, self.snapshot)]
                self._domain_from_training(domain, vector)
            if index < max(self.last_round.values()):
                self.snapshot = [g.clone() for g in grads]
            self._note_bytes()

    def _domain_from_training(self, domain: int, vector: list[torch.Tensor]) -> None:
        """Keep a domain's gradient read from its rounds, in the source's slot form and scaled
        to the gradient of the domain's mean loss."""
        if self.mode == "linear":  # local gradients: DP-summed like the source's slots
            vector = all_reduce_sum(vector, self.dp_group)
        factor = self.scale[domain]
        vector = [v * factor for v in vector]
        self._keep_domain_vector(domain, vector)

    def _keep_domain_vector(self, domain: int, vector: list[torch.Tensor]) -> None:
        if self.want_sq_norms:
            counted = self._counted(vector)
            self.sq_norms[domain] = gram_matrix([counted], [counted])[0, 0].cpu()
        if self.want_domain_gram:
            self.domain_vectors[domain] = vector

    def end_step(self) -> CapturedGradients:
        """Finish the event after the step's last backward (before the optimizer step)."""
        k = self.num_domains
        gram_rows = dict(self.probe_rows)
        if self.from_training and self.want_targets:
            self._rows_from_training(gram_rows)
        domain_target_gram = (
            torch.stack([gram_rows[d] for d in range(k)]) if self.want_targets else None
        )
        group = self.source.product_group
        domain_gram = domain_sq_norms = None
        if self.want_domain_gram:
            counted = [self._counted(self.domain_vectors[d]) for d in range(k)]
            domain_gram = _reduced(gram_matrix(counted, counted), group, self.env.device)
        if self.want_sq_norms:
            partial = torch.stack([self.sq_norms[d] for d in range(k)])
            domain_sq_norms = _reduced(partial, group, self.env.device)
        self._note_bytes()
        result = CapturedGradients(
            domain_target_gram=domain_target_gram,
            domain_gram=domain_gram,
            target_losses=self.target_losses,
            domain_sq_norms=domain_sq_norms,
            target_gram=self.target_gram,
            probed_domains=list(self.probed),
            seconds=time.perf_counter() - self.started,
            target_seconds=self.target_seconds,
            probe_seconds=self.probe_seconds,
            stored_bytes=self.peak_bytes,
        )
        self._reset()
        return result

    # ------------------------------------------------------------------ pieces
    def _note_bytes(self) -> None:
        held = sum(_bytes(t) for t in self.target_grads)
        held += sum(_bytes(v) for v in self.domain_vectors.values())
        held += _bytes(self.snapshot or [])
        self.peak_bytes = max(self.peak_bytes, held)

    def _rows_from_training(self, gram_rows: dict[int, torch.Tensor]) -> None:
        """Rows of G of the domains read from the training rounds, scaled from the slots' sums
        of per-sample gradients to the gradient of the domain's mean loss (``self.scale``)."""
        summed = _reduced(self.products.clone(), None, self.env.device)  # local slots: all ranks
        for d, factor in self.scale.items():
            gram_rows[d] = summed[d] * factor

    def _probe(self, batch: GlobalBatch, next_unconsumed: np.ndarray) -> None:
        """Rows (and gradient slots) of the probed domains, from the gradient source."""
        local_rows = {}
        for d in self.probed:
            grads = self._probe_domain(batch, d, int(next_unconsumed[d]))
            if self.want_targets:
                local_rows[d] = self._target_products(grads)
            self._keep_domain_vector(d, grads)
            self._note_bytes()
        if local_rows:
            stacked = torch.stack([local_rows[d] for d in self.probed]).to(self.env.device)
            dist.all_reduce(stacked, group=self.source.product_group)
            for i, d in enumerate(self.probed):
                self.probe_rows[d] = stacked[i].cpu()

    def _counted(self, vector: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t for t, keep in zip(vector, self.counted) if keep]

    def _training_slots(self) -> list[torch.Tensor]:
        if self.mode == "partitioned":
            return self.source.training_slots()
        grads = []
        for param in self.source.params:
            if param.grad is None:
                raise RuntimeError(
                    "gradient capture found no .grad on a parameter after backward; the DeepSpeed "
                    "engine keeps gradients elsewhere for this configuration (use ZeRO stage 0/1 "
                    "for linear capture)"
                )
            grads.append(param.grad)
        return grads

    def _rows_of_this_rank(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(this DP rank's share of ``ids``, row weights 1 / len(ids)); an empty share becomes
        one row of weight 0, because every rank must run the same collective passes."""
        env = self.env
        mine = np.array_split(ids, env.dp_size)[env.dp_rank]
        if len(mine):
            return mine, np.full(len(mine), 1.0 / len(ids))
        return ids[:1], np.zeros(1)

    def _compute_target_gradients(self, step: int) -> None:
        env, settings = self.env, self.settings
        losses = torch.zeros(len(self.tasks), dtype=torch.float64, device=env.device)
        holds_loss = env.is_last_stage and env.tp_rank == 0
        for n, task in enumerate(self.tasks):
            indices = task.signal_indices(step, settings.signal_batch_size, settings.seed)
            mine, weights = self._rows_of_this_rank(np.asarray(indices))
            batch = {
                key: value.to(env.device)
                for key, value in task.signal_batch(mine, settings.seq_length).items()
            }
            grads, loss = self.source.gradient(batch, torch.from_numpy(weights).to(env.device))
            self.target_grads.append([g.to(self.store_device, self.store_dtype) for g in grads])
            if holds_loss:
                losses[n] = loss.to(env.device)
            self._note_bytes()
        dist.all_reduce(losses)  # one contribution per DP rank: the last stage, TP rank 0
        self.target_losses = losses.cpu()
        if self.want_target_gram:
            counted = [self._counted(h) for h in self.target_grads]
            self.target_gram = _reduced(
                gram_matrix(counted, counted), self.source.product_group, env.device
            )

    def _target_products(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """[N] float64 on the CPU: this rank's counted partial <grads, grad l_n> for every target.

        Target gradients kept on the CPU (capture_device: cpu) are read against a host copy of
        ``grads``: N x P device memory saved for one device-to-host copy per read."""
        targets = [self._counted(h) for h in self.target_grads]
        counted = self._counted(grads)
        if targets and targets[0] and counted[0].device != targets[0][0].device:
            counted = [g.to(targets[0][0].device) for g in counted]
        return gram_matrix([counted], targets)[0].cpu()

    def _probe_domain(self, batch: GlobalBatch, domain: int, start: int) -> list[torch.Tensor]:
        """Slots of the gradient of the mean loss of ``domain``: its samples in this step's
        batch, or (absent) its ``probe_samples`` next unconsumed samples from ``start``."""
        positions = np.flatnonzero(batch.domain_ids == domain)
        if len(positions):
            sample_ids = batch.sample_ids[positions].astype(np.int64)
        else:
            probe = self.settings.probe_samples
            sample_ids = np.arange(start, start + probe, dtype=np.int64) % len(
                self.datasets[domain]
            )
        mine, weights = self._rows_of_this_rank(sample_ids)
        micro = MicroBatch(
            domain_ids=np.full(len(mine), domain, dtype=np.int64),
            sample_ids=mine,
            loss_weights=np.ones(len(mine)),
            round_domain=domain,
        )
        tensors = collate(self.datasets, micro, self.env.device)
        grads, _loss = self.source.gradient(tensors, torch.from_numpy(weights).to(self.env.device))
        return grads
