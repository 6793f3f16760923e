"""Per-domain and per-target gradient information and the sharded gradient Gram matrices.

At a reweighting event the mixture controller needs, on a model split over DP x TP ranks (and under ZeRO),

    G[k, n] = <g_k, grad l_n>    (domain_target_gram, K x N)
    D[i, j] = <g_i, g_j>         (domain_gram, K x K)
    l_n                          (target_losses, N)

where g_k is the gradient of the mean training loss on domain k over the step's global batch
and l_n the mean signal loss of target task n. How they are obtained:

* Target gradients grad l_n are computed once per event on a *shadow* module: a second
  GPTModel whose parameters alias the engine's parameter storage (no copy) but which
  DeepSpeed has not wrapped, so autograd on it never touches the engine's gradient hooks or
  buffers. Each DP rank takes a slice of the target's signal batch, then one all-reduce over
  the DP group gives every rank the same grad l_n (stored as N vectors of this rank's shards,
  fp32 or bf16, on the device or the CPU: ``mixture.capture_dtype`` / ``capture_device``).
* Per-domain information, ``linear`` mode (ZeRO 0/1): the training micro-batches run in
  domain-pure rounds (megagrape/data/microbatches.py ``by_domain``). After each backward,
  ``p.grad`` holds this rank's accumulated, not yet reduced gradient; its products with the
  stored target gradients, differenced between rounds, are the round's contribution. By
  linearity, summing these over rounds of domain k and over ranks gives <sum of domain-k
  sample gradients, grad l_n>. Nothing extra is run forward or backward.
* Per-domain information, ``probe`` mode (ZeRO 2, which reduce-scatters into partition
  buffers on every backward): the shadow module recomputes each present domain's gradient on
  the same samples the step trains on (one extra forward/backward of the batch at events).
* Domains absent from the step's global batch get a probe on their next unconsumed samples
  (peeked, not consumed), so every row of G is defined.

Every product runs through ``megagrape.ops.gram_matrix`` (the fused csrc kernel) over the
parameters this rank counts (tensor-parallel duplicates only on TP rank 0), then ONE
all-reduce of the small matrix. Training gradients are never modified: a step with capture
leaves the parameters bit-identical to the same step without it.
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
from megagrape.errors import ConfigError
from megagrape.model import ModelConfig, build_model, token_losses
from megagrape.model.params import counts_once
from megagrape.ops import gram_matrix


@dataclass
class CapturedGradients:
    """What one event measured (global values, identical on every rank)."""

    domain_target_gram: torch.Tensor | None  # [K, N] float64, raw grad l_n
    domain_gram: torch.Tensor | None  # [K, K] float64
    target_losses: torch.Tensor | None  # [N] float64
    probed_domains: list[int]  # domains whose gradient came from probe micro-batches
    seconds: float  # wall time of the whole capture, begin_step to end_step
    target_seconds: float  # of which: the N target gradients
    probe_seconds: float  # of which: probe micro-batches for the probed domains


@dataclass(frozen=True)
class CaptureSettings:
    """The run facts the capture reads (from the run config; see ``from_config``)."""

    signal_batch_size: int  # items per target per event, over all DP ranks
    seed: int  # run seed: which signal items an event draws
    probe_samples: int  # samples per probe of a domain absent from the step's batch
    global_batch_size: int  # sequences per optimizer step over all DP ranks
    store_dtype: torch.dtype  # storage of the N target gradients
    store_on_cpu: bool  # keep the target gradients in host memory

    @classmethod
    def from_config(cls, cfg) -> CaptureSettings:
        """From a RunConfig: targets.signal_batch_size, mixture.capture_*, probe_samples, seed."""
        return cls(
            signal_batch_size=cfg.targets.signal_batch_size,
            seed=cfg.seed,
            probe_samples=cfg.mixture.probe_samples,
            global_batch_size=cfg.train.global_batch_size,
            store_dtype={"float32": torch.float32, "bfloat16": torch.bfloat16}[
                cfg.mixture.capture_dtype
            ],
            store_on_cpu=cfg.mixture.capture_device == "cpu",
        )


def capture_mode(zero_stage: int, pipeline_parallel: int, method: str) -> str:
    """'linear' or 'probe', or a ConfigError for combinations that cannot work."""
    if pipeline_parallel > 1:
        raise ConfigError(
            f"mixture.method={method} needs per-domain/per-target gradients, which megagrape does not "
            "capture with pipeline parallelism (parallel.pipeline_parallel > 1): use tensor and data "
            "parallelism for gradient-based methods, or a loss-based method (odm, doremi, static)"
        )
    if zero_stage >= 3:
        raise ConfigError(
            f"mixture.method={method} needs gradients of a model whose parameters ZeRO stage 3 "
            "partitions across ranks; use zero_optimization.stage 0, 1 or 2"
        )
    return "probe" if zero_stage == 2 else "linear"


def _aliased_shadow(model_cfg: ModelConfig, env, engine_module: torch.nn.Module) -> torch.nn.Module:
    """A GPTModel sharing the engine's parameter storage, outside DeepSpeed's hooks, in eval mode."""
    shadow = build_model(model_cfg, env)
    engine_params = dict(engine_module.named_parameters())
    for name, param in shadow.named_parameters():
        source = engine_params.get(name)
        if source is None or source.shape != param.shape:
            raise RuntimeError(f"shadow model parameter {name} does not match the engine's model")
        param.data = source.data
    shadow.eval()  # no dropout: the capture draws no random numbers and is deterministic
    return shadow


class GradientCapture:
    """Collective object: every rank calls begin_step / after_microbatch / end_step together.

    Dependencies are explicit: the engine's (unwrapped) module whose ``.grad`` the linear mode
    reads, the model config to build the aliased shadow, the target tasks [N] and the
    per-domain datasets [K] the probes read, and the settings above.
    """

    def __init__(
        self,
        needs: frozenset[str],
        mode: str,
        engine_module: torch.nn.Module,
        model_cfg: ModelConfig,
        env,
        tasks: list,
        datasets: list,
        settings: CaptureSettings,
    ) -> None:
        if mode not in ("linear", "probe"):
            raise ValueError(f"capture mode {mode!r} is not 'linear' or 'probe'")
        self.env = env
        self.needs = needs
        self.mode = mode
        self.tasks = tasks
        self.datasets = datasets
        self.settings = settings
        self.num_domains = len(datasets)
        self.seq_length = model_cfg.seq_length
        self.want_targets = "domain_target_gram" in needs or "target_losses" in needs
        self.want_domain_gram = "domain_gram" in needs
        if self.want_targets and not tasks:
            raise ValueError("gradient capture of target products needs at least one target task")
        self.store_dtype = settings.store_dtype
        self.store_device = torch.device("cpu") if settings.store_on_cpu else env.device
        self.shadow = _aliased_shadow(model_cfg, env, engine_module)
        self.engine_params = [p for p in engine_module.parameters() if p.requires_grad]
        self.shadow_params = [p for p in self.shadow.parameters() if p.requires_grad]
        self.counted = [counts_once(p, self.env.tp_rank) for p in self.engine_params]
        self.dp_group = parallel.dp_group()
        self.mp_group = parallel.model_parallel_group()
        self._reset()

    # ------------------------------------------------------------------ event lifecycle
    def _reset(self) -> None:
        self.target_grads: list[list[torch.Tensor]] = []
        self.target_losses: torch.Tensor | None = None
        self.prev_products: torch.Tensor | None = None
        self.products: torch.Tensor | None = None  # [K, N] local sums of round deltas
        self.prev_grads: list[torch.Tensor] | None = None
        self.domain_vectors: dict[int, list[torch.Tensor]] = {}
        self.rounds_seen: set[int] = set()
        self.started = 0.0
        self.target_seconds = 0.0
        self.active = False  # between begin_step and end_step of an event step

    def begin_step(self, step: int) -> None:
        self._reset()
        self.active = True
        self.started = time.perf_counter()
        if self.want_targets:
            self._compute_target_gradients(step)
            self.target_seconds = time.perf_counter() - self.started
            self.products = torch.zeros(self.num_domains, len(self.tasks), dtype=torch.float64)

    def after_microbatch(self, micro: MicroBatch) -> None:
        """Read this round's contribution (linear mode) right after its backward."""
        if self.mode != "linear" or micro.round_domain < 0:
            return
        self.rounds_seen.add(micro.round_domain)
        grads = self._current_grads()
        if self.want_targets:
            now = self._target_products(grads)
            delta = now - (self.prev_products if self.prev_products is not None else 0.0)
            self.products[micro.round_domain] += delta
            self.prev_products = now
        if self.want_domain_gram:
            previous = self.prev_grads
            vector = self.domain_vectors.setdefault(
                micro.round_domain, [torch.zeros_like(g) for g in grads]
            )
            for acc, now_g, index in zip(vector, grads, range(len(grads))):
                acc += now_g if previous is None else now_g - previous[index]
            self.prev_grads = [g.clone() for g in grads]

    def end_step(
        self, batch: GlobalBatch, loss_scale: np.ndarray, next_unconsumed: np.ndarray
    ) -> CapturedGradients:
        """Finish the event after the step's last backward (before the optimizer step).

        batch: the step's global batch; loss_scale: float64 [K] factor on each domain's
        per-sample loss in this step (alpha/s under apply: loss, else 1); next_unconsumed:
        int [K] first unconsumed sample of each domain (where probes of absent domains read).
        """
        env = self.env
        k = self.num_domains
        counts = np.bincount(batch.domain_ids.astype(np.int64), minlength=k)
        local_size = self.settings.global_batch_size // env.dp_size
        usable = [d for d in range(k) if counts[d] > 0 and loss_scale[d] > 0]
        from_training = [d for d in usable if self.mode == "linear" and d in self.rounds_seen]
        probe_domains = [d for d in range(k) if d not in from_training]

        gram_rows: dict[int, torch.Tensor] = {}  # domain -> [N] float64 row of G
        domain_vectors: dict[int, list[torch.Tensor]] = {}  # domain -> its gradient slots
        if from_training:
            scale = {d: local_size / (counts[d] * loss_scale[d]) for d in from_training}
            self._rows_from_training(scale, gram_rows, domain_vectors)
        probes_started = time.perf_counter()
        self._rows_from_probes(batch, probe_domains, next_unconsumed, gram_rows, domain_vectors)
        probe_seconds = time.perf_counter() - probes_started

        domain_target_gram = (
            torch.stack([gram_rows[d] for d in range(k)]) if self.want_targets else None
        )
        domain_gram = None
        if self.want_domain_gram:
            vectors = [self._counted(domain_vectors[d]) for d in range(k)]
            domain_gram = gram_matrix(vectors, vectors).to(env.device)
            dist.all_reduce(domain_gram, group=self.mp_group)
            domain_gram = domain_gram.cpu()
        result = CapturedGradients(
            domain_target_gram=domain_target_gram,
            domain_gram=domain_gram,
            target_losses=self.target_losses,
            probed_domains=probe_domains,
            seconds=time.perf_counter() - self.started,
            target_seconds=self.target_seconds,
            probe_seconds=probe_seconds,
        )
        self._reset()
        return result

    # ------------------------------------------------------------------ pieces
    def _rows_from_training(
        self,
        scale: dict[int, float],
        gram_rows: dict[int, torch.Tensor],
        domain_vectors: dict[int, list[torch.Tensor]],
    ) -> None:
        """Linear mode: rows of the domains read from the training rounds, scaled from summed
        per-sample gradients to the gradient of the domain's mean loss (``scale`` per domain)."""
        if self.want_targets:
            summed = self.products.clone().to(self.env.device)
            dist.all_reduce(summed)  # over DP x TP: local grads, counted slots
            for d, factor in scale.items():
                gram_rows[d] = summed[d].cpu() * factor
        if self.want_domain_gram:
            for d, factor in scale.items():
                flat = _all_reduce_sum(self.domain_vectors[d], self.dp_group)
                domain_vectors[d] = [v * factor for v in flat]

    def _rows_from_probes(
        self,
        batch: GlobalBatch,
        domains: list[int],
        next_unconsumed: np.ndarray,
        gram_rows: dict[int, torch.Tensor],
        domain_vectors: dict[int, list[torch.Tensor]],
    ) -> None:
        """Rows of ``domains`` from probe backward passes on the shadow module."""
        for d in domains:
            grads = self._probe_domain(batch, d, int(next_unconsumed[d]))
            if self.want_targets:
                gram_rows[d] = self._target_products(grads)
            if self.want_domain_gram:
                domain_vectors[d] = grads
        if domains and self.want_targets:
            stacked = torch.stack([gram_rows[d] for d in domains]).to(self.env.device)
            dist.all_reduce(stacked, group=self.mp_group)  # DP ranks hold identical reduced vectors
            for i, d in enumerate(domains):
                gram_rows[d] = stacked[i].cpu()

    def _counted(self, vector: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t for t, keep in zip(vector, self.counted) if keep]

    def _current_grads(self) -> list[torch.Tensor]:
        grads = []
        for param in self.engine_params:
            grad = param.grad
            if grad is None:
                raise RuntimeError(
                    "gradient capture found no .grad on a parameter after backward; the DeepSpeed "
                    "engine keeps gradients elsewhere for this configuration (use ZeRO stage 0/1 "
                    "for linear capture)"
                )
            grads.append(grad)
        return grads

    def _shadow_grads(
        self, batch: dict[str, torch.Tensor], item_weights: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Gradient of sum_i w_i * mean-token-loss_i over this rank's rows; also that weighted sum."""
        losses = token_losses(self.shadow, batch)
        mask = batch["loss_mask"]
        per_item = (losses.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        objective = (per_item * item_weights.to(per_item.dtype)).sum()
        grads = torch.autograd.grad(objective, self.shadow_params, allow_unused=True)
        out = [
            (g if g is not None else torch.zeros_like(p)).to(torch.float32)
            for g, p in zip(grads, self.shadow_params)
        ]
        return out, objective.detach().double()

    def _compute_target_gradients(self, step: int) -> None:
        env, settings = self.env, self.settings
        losses = torch.zeros(len(self.tasks), dtype=torch.float64, device=env.device)
        for n, task in enumerate(self.tasks):
            indices = task.signal_indices(step, settings.signal_batch_size, settings.seed)
            mine = np.array_split(indices, env.dp_size)[env.dp_rank]
            if len(mine):
                batch = {
                    key: value.to(env.device)
                    for key, value in task.signal_batch(mine, self.seq_length).items()
                }
                weights = torch.full((len(mine),), 1.0 / len(indices), device=env.device)
                grads, loss = self._shadow_grads(batch, weights)
            else:
                grads = [torch.zeros_like(p, dtype=torch.float32) for p in self.shadow_params]
                loss = torch.zeros((), dtype=torch.float64, device=env.device)
            reduced = _all_reduce_sum(grads, self.dp_group)
            self.target_grads.append([g.to(self.store_device, self.store_dtype) for g in reduced])
            losses[n] = loss
        dist.all_reduce(losses, group=self.dp_group)
        self.target_losses = losses.cpu()

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
        """DP-reduced gradient of the mean loss of ``domain``: its samples in this step's batch,
        or (absent) its ``probe_samples`` next unconsumed samples from ``start``; identical on
        every DP rank."""
        env = self.env
        positions = np.flatnonzero(batch.domain_ids == domain)
        if len(positions):
            sample_ids = batch.sample_ids[positions].astype(np.int64)
        else:
            probe = self.settings.probe_samples
            sample_ids = np.arange(start, start + probe, dtype=np.int64) % len(
                self.datasets[domain]
            )
        total = len(sample_ids)
        mine = np.array_split(sample_ids, env.dp_size)[env.dp_rank]
        if len(mine):
            micro = MicroBatch(
                domain_ids=np.full(len(mine), domain, dtype=np.int64),
                sample_ids=mine,
                loss_weights=np.ones(len(mine)),
                round_domain=domain,
            )
            tensors = collate(self.datasets, micro, env.device)
            weights = torch.full((len(mine),), 1.0 / total, device=env.device)
            grads, _loss = self._shadow_grads(tensors, weights)
        else:
            grads = [torch.zeros_like(p, dtype=torch.float32) for p in self.shadow_params]
        return _all_reduce_sum(grads, self.dp_group)


def _all_reduce_sum(tensors: list[torch.Tensor], group) -> list[torch.Tensor]:
    """Sum a list of tensors over ``group`` with one flat all-reduce; returns new tensors."""
    if dist.get_world_size(group) == 1:
        return [t.clone() for t in tensors]
    flat = torch.cat([t.reshape(-1).to(torch.float32) for t in tensors])
    dist.all_reduce(flat, group=group)
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset : offset + t.numel()].view_as(t).to(t.dtype))
        offset += t.numel()
    return out
