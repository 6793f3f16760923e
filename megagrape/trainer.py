"""The training loop: live-mixture batches -> DeepSpeed engine -> reweighting events -> eval -> logs -> checkpoints.

One optimizer step:
  1. reseed every RNG from (seed, step), so a resumed run draws the same numbers;
  2. take the next global batch from the sampler and plan this rank's micro-batches
     (``fixed`` or domain-pure ``by_domain`` rounds, megagrape/microbatches.py);
  3. if a reweighting event is due and the method needs gradients, the gradient capture
     computes the target gradients first and reads per-domain products after each round;
  4. forward/backward every micro-batch (loss = sum of per-sample losses x weights / local
     batch), then ``engine.step()``; per-domain losses are all-reduced over DP every step;
  5. at an event: the method turns the observation into new weights (checked identical on
     every rank); the sampler switches at the next global batch;
  6. log, evaluate and checkpoint at their intervals.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from megagrape import checkpoint as ckpt
from megagrape import parallel
from megagrape.config import RunConfig, save_config
from megagrape.data.domains import DomainSpec, build_domain_datasets, count_tokens, discover_domains
from megagrape.data.sampler import MixtureSampler
from megagrape.data.targets import load_targets, target_name
from megagrape.data.tokenizer import Tokenizer, check_vocab_fits
from megagrape.ds_config import zero_stage
from megagrape.errors import ConfigError
from megagrape.evaluate import evaluate_tasks
from megagrape.metrics import MetricsWriter, memory_gb, mfu
from megagrape.microbatches import collate, plan_microbatches
from megagrape.mixture import Observation, TimeAverage, build_method, hybrid_loss_weights
from megagrape.mixture.static import load_weights_file, natural_weights
from megagrape.model import build_model, pipeline_batch, pipeline_loss_fn, token_losses
from megagrape.reference import ReferenceModel
from megagrape.schedule import WarmupDecayLR


@dataclass
class StepRecord:
    """What one optimizer step produced (global values, identical on every rank)."""

    loss: float
    domain_loss_sums: np.ndarray  # float64 [K]
    domain_counts: np.ndarray  # float64 [K]
    domain_excess_sums: np.ndarray  # float64 [K] DoReMi: sums of per-sample excess loss
    tokens: int
    seconds: float
    grad_norm: float


@dataclass
class EventAccumulator:
    """Per-domain training-loss sums since the last reweighting event (global, all ranks equal)."""

    loss_sums: np.ndarray
    counts: np.ndarray
    excess_sums: np.ndarray

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
class LogWindow:
    """Console/TensorBoard aggregates over one log interval."""

    steps: int = 0
    loss: float = 0.0
    tokens: int = 0
    seconds: float = 0.0
    domain_sums: np.ndarray | None = None
    domain_counts: np.ndarray | None = None
    grad_norms: list[float] = field(default_factory=list)

    def add(self, record: StepRecord) -> None:
        self.steps += 1
        self.loss += record.loss
        self.tokens += record.tokens
        self.seconds += record.seconds
        self.grad_norms.append(record.grad_norm)
        if self.domain_sums is None:
            self.domain_sums = record.domain_loss_sums.copy()
            self.domain_counts = record.domain_counts.copy()
        else:
            self.domain_sums += record.domain_loss_sums
            self.domain_counts += record.domain_counts


def seed_everything(seed: int, step: int, env) -> None:
    """Reseed python/numpy/torch (and the model-parallel dropout RNG) for this step."""
    step_seed = (seed * 1_000_003 + step) % (2**31 - 1)
    parallel.seed_everything(step_seed, env.tp_rank, env.pp_rank)


class Trainer:
    """Builds everything from a validated RunConfig and a resolved DeepSpeed config, then trains."""

    def __init__(self, cfg: RunConfig, ds_config: dict, env) -> None:
        import deepspeed

        self.cfg = cfg
        self.env = env
        self.rank0 = env.rank == 0
        self.run_dir = cfg.run_dir
        self.dp_group = parallel.dp_group()

        self.tokenizer = Tokenizer.load(Path(cfg.data.resolved_tokenizer()))
        check_vocab_fits(self.tokenizer, cfg.model.vocab_size, where="model.vocab_size")
        self.tokenizer_fingerprint = self.tokenizer.fingerprint

        self.domain_specs = self._domain_specs()
        self.domain_names = [spec.name for spec in self.domain_specs]
        self.token_counts = [count_tokens(spec.prefix) for spec in self.domain_specs]
        budget = math.ceil(cfg.train.train_samples * cfg.data.budget_factor)
        self.budgets = [budget] * len(self.domain_specs)
        cache_dir = cfg.data.cache_dir or str(Path(cfg.data.corpus or cfg.run_dir) / "cache")
        self.datasets = build_domain_datasets(
            self.domain_specs,
            seq_length=cfg.model.seq_length,
            budgets=self.budgets,
            seed=cfg.seed,
            cache_dir=cache_dir,
            eod_id=self.tokenizer.eod,
        )

        self.tasks = self._load_tasks()
        self.task_names = [task.name for task in self.tasks]

        initial = resolve_weights_spec(
            cfg.mixture.initial, self.domain_names, self.token_counts, "mixture.initial"
        )
        self.method = build_method(
            cfg.mixture.method,
            cfg.mixture.options,
            domain_names=self.domain_names,
            task_names=self.task_names,
            initial_weights=None if cfg.mixture.method == "static" else torch.from_numpy(initial),
            domain_token_counts=self.token_counts,
        )
        self.apply_loss = cfg.mixture.apply == "loss"
        self.sampling = (
            resolve_weights_spec(
                cfg.mixture.sampling, self.domain_names, self.token_counts, "mixture.sampling"
            )
            if self.apply_loss
            else None
        )
        sample_weights = self.sampling if self.apply_loss else self.method.domain_weights.numpy()
        self.sampler = MixtureSampler(
            self.domain_names,
            self.budgets,
            sample_weights,
            cfg.train.global_batch_size,
            budget_hint=f"raise data.budget_factor (now {cfg.data.budget_factor}) in the run config",
        )
        needs_domain_grads = bool(self.method.needs & {"domain_target_gram", "domain_gram"})
        schedule = cfg.train.microbatch_schedule
        if cfg.parallel.pipeline_parallel > 1 and schedule == "by_domain":
            raise ConfigError(
                "train.microbatch_schedule=by_domain is not supported with pipeline parallelism: DeepSpeed's "
                "pipeline engine runs a fixed number of equal micro-batches; use fixed or auto"
            )
        # auto: domain-pure rounds only on the steps that end in an event (where the capture
        # reads per-domain gradients from them); every other step packs full micro-batches.
        self.schedule = "fixed" if schedule == "auto" else schedule
        self.event_schedule = (
            "by_domain" if schedule == "auto" and needs_domain_grads else self.schedule
        )

        self.pipelined = cfg.parallel.pipeline_parallel > 1
        if self.pipelined and self.apply_loss:
            raise ConfigError(
                "mixture.apply=loss is not supported with parallel.pipeline_parallel > 1 (DeepSpeed's "
                "pipeline loss is a per-micro-batch mean); use mixture.apply=sample"
            )
        self.model = build_model(cfg.model, env)
        optimizer = torch.optim.AdamW(
            _param_groups(self.model, cfg.train.weight_decay),
            lr=cfg.train.lr,
            betas=(cfg.train.adam_beta1, cfg.train.adam_beta2),
            eps=cfg.train.adam_eps,
            **({"fused": True} if env.device.type == "cuda" else {"foreach": True}),
        )
        self.engine, _opt, _loader, _sched = deepspeed.initialize(
            model=self.model,
            optimizer=optimizer,
            lr_scheduler=lambda opt: WarmupDecayLR(opt, cfg.train),
            config=ds_config,
            mpu=parallel.deepspeed_mpu(env),
        )
        self.zero_stage = zero_stage(ds_config)
        self.reference = (
            ReferenceModel(cfg, env, cfg.mixture.reference_checkpoint, self.tokenizer_fingerprint)
            if "domain_excess_losses" in self.method.needs
            else None
        )
        self.current_batch = None
        self.last_observation: Observation | None = None
        self.capture = None
        if needs_domain_grads or "target_losses" in self.method.needs:
            from megagrape.gradients import GradientCapture

            self.capture = GradientCapture(self, needs=self.method.needs)

        k = len(self.domain_names)
        self.event_acc = EventAccumulator(np.zeros(k), np.zeros(k), np.zeros(k))
        self.average = TimeAverage(k)  # the weights in effect, one term per optimizer step
        self.step = 0
        self.history: dict[str, list] = {"loss": [], "eval": []}
        self.previous_target_losses: torch.Tensor | None = None
        self._resume()
        if self.rank0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        self.metrics = MetricsWriter(
            self.run_dir,
            enabled=self.rank0,
            tensorboard=cfg.logging.tensorboard,
            wandb_project=cfg.logging.wandb_project,
            run_name=cfg.name,
            resume_step=self.step,
            config=cfg.to_dict(),
        )

    # ----------------------------------------------------------------------------- set-up
    def _domain_specs(self) -> list[DomainSpec]:
        data = self.cfg.data
        specs = (
            {spec.name: spec for spec in discover_domains(data.resolved_bin_dir())}
            if data.resolved_bin_dir()
            else {}
        )
        for name, prefix in data.prefixes.items():
            specs[name] = DomainSpec(name=name, prefix=prefix)
        if data.domains:
            missing = [name for name in data.domains if name not in specs]
            if missing:
                raise ConfigError(
                    f"data.domains names {missing} but {data.resolved_bin_dir() or 'data.prefixes'} only has "
                    f"{sorted(specs)}; run tools/preprocess_data.py for them or fix data.domains"
                )
            return [specs[name] for name in data.domains]
        if not specs:
            raise ConfigError(
                f"no training domains found in {data.resolved_bin_dir()!r} or data.prefixes; "
                "run tools/preprocess_data.py first"
            )
        return [specs[name] for name in sorted(specs)]

    def _load_tasks(self) -> list:
        tcfg, corpus = self.cfg.targets, self.cfg.data.corpus
        target_dir = Path(tcfg.dir) if tcfg.dir else (Path(corpus) / "targets" if corpus else None)
        if target_dir is None:
            return []
        if tcfg.tasks:
            found = {
                target_name(p): p
                for p in target_dir.iterdir()
                if p.name.endswith((".jsonl", ".jsonl.gz"))
            }
            missing = [name for name in tcfg.tasks if name not in found]
            if missing:
                raise ConfigError(
                    f"targets.tasks names {missing} but {target_dir} only has {sorted(found)}; fix targets.tasks"
                )
            source = {name: found[name] for name in tcfg.tasks}
        else:
            source = target_dir
        return load_targets(
            source, self.tokenizer, eval_fraction=tcfg.eval_fraction, seed=self.cfg.seed
        )

    def _resume(self) -> None:
        root = self.checkpoint_root
        info, notes = ckpt.resolve_resume(self.cfg.checkpoint.resume, root)
        if self.rank0:
            for note in notes:
                tqdm.write(f"[megagrape] {note}")
        if info is None:
            return
        state = ckpt.load_checkpoint(self.engine, info)
        self.step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
        self.method.load_state_dict(state["method"])
        self.event_acc.load_state_dict(state["event_accumulator"])
        self.average.load_state_dict(state["average"])
        prev = state.get("previous_target_losses")
        self.previous_target_losses = (
            torch.tensor(prev, dtype=torch.float64) if prev is not None else None
        )
        if self.rank0:
            tqdm.write(f"[megagrape] resumed from {info.path} at step {self.step}")

    @property
    def checkpoint_root(self) -> Path:
        return (
            Path(self.cfg.checkpoint.dir)
            if self.cfg.checkpoint.dir
            else self.run_dir / "checkpoints"
        )

    # ----------------------------------------------------------------------------- one step
    def _is_event(self, step: int) -> bool:
        mix = self.cfg.mixture
        return (
            self.method.name != "static"
            and step + 1 > mix.warmup_steps
            and (step + 1) % mix.interval == 0
        )

    def _loss_weights(self) -> torch.Tensor | None:
        if not self.apply_loss:
            return None
        return hybrid_loss_weights(self.method.domain_weights, torch.from_numpy(self.sampling))

    def domain_loss_scale(self) -> np.ndarray:
        """[K] factor on each domain's per-sample loss in this step (alpha/s for apply: loss, else 1)."""
        weights = self._loss_weights()
        return np.ones(len(self.domain_names)) if weights is None else weights.double().numpy()

    def train_step(self) -> StepRecord:
        cfg, env = self.cfg, self.env
        seed_everything(cfg.seed, self.step, env)
        started = time.perf_counter()
        batch = self.current_batch = self.sampler.next_global_batch()
        event = self._is_event(self.step)
        plan = plan_microbatches(
            batch,
            env.dp_rank,
            env.dp_size,
            cfg.train.micro_batch_size,
            self.event_schedule if event else self.schedule,
        )
        k = len(self.domain_names)
        # Per-domain sums of per-sample losses (and DoReMi excess losses), counts, total loss.
        stats = torch.zeros(3 * k + 1, dtype=torch.float64)
        observed = None
        if self.pipelined:
            self._pipeline_step(plan, stats)
        else:
            capture = self.capture if event else None
            if capture is not None:
                capture.begin_step(self.step)
            self._engine_microbatches(plan, stats, capture)
            observed = capture.end_step() if capture is not None else None
            self.engine.step()
        # Every rank holds the same per-step statistics: only one copy per data-parallel replica
        # (last pipeline stage, tensor-parallel rank 0) contributes to the sum.
        if not (env.is_last_stage and env.tp_rank == 0):
            stats.zero_()
        stats = stats.to(env.device)
        if env.world_size > 1:
            torch.distributed.all_reduce(stats)
        stats = stats.cpu().numpy()
        counts = stats[k : 2 * k]
        record = StepRecord(
            loss=float(stats[-1] / max(counts.sum(), 1)),
            domain_loss_sums=stats[:k],
            domain_counts=counts,
            domain_excess_sums=stats[2 * k : 3 * k],
            tokens=cfg.train.global_batch_size * cfg.model.seq_length,
            seconds=0.0,
            grad_norm=float(self.engine.get_global_grad_norm() or 0.0),
        )
        self.event_acc.add(record)
        self.step += 1
        if event:
            self._reweight(observed)
        record.seconds = time.perf_counter() - started
        return record

    def _accumulate(
        self,
        stats: torch.Tensor,
        micros: list,
        per_sample: list[torch.Tensor],
        excess: list[torch.Tensor] | None,
    ) -> None:
        """Add the step's per-sample losses [b_i] (device tensors, one per micro-batch) into
        the per-domain sums. One device-to-host copy per step, after the last backward, so a
        GPU is never made to wait between micro-batches."""
        k = len(self.domain_names)
        real = torch.from_numpy(np.concatenate([m.loss_weights > 0 for m in micros]))
        ids = torch.from_numpy(np.concatenate([m.domain_ids for m in micros]).astype(np.int64))[real]
        values = torch.cat([v.detach().double() for v in per_sample]).cpu()[real]
        stats[:k].index_add_(0, ids, values)
        stats[k : 2 * k].index_add_(0, ids, torch.ones(len(ids), dtype=torch.float64))
        if excess is not None:
            excess_values = torch.cat([e.double() for e in excess]).cpu()[real]
            stats[2 * k : 3 * k].index_add_(0, ids, excess_values)
        stats[-1] += values.sum()

    def _engine_microbatches(self, plan, stats: torch.Tensor, capture) -> None:
        """Forward/backward every micro-batch through the DeepSpeed engine (PP == 1)."""
        env = self.env
        domain_weights = self._loss_weights()
        local_size = self.cfg.train.global_batch_size // env.dp_size
        per_samples: list[torch.Tensor] = []
        excesses: list[torch.Tensor] | None = [] if self.reference is not None else None
        for micro in plan:
            tensors = collate(self.datasets, micro, env.device)
            per_token = token_losses(self.engine, tensors)
            mask = tensors["loss_mask"]
            per_sample = (per_token.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            weights = tensors["loss_weights"]
            if domain_weights is not None:
                weights = weights * domain_weights.to(env.device)[tensors["domain_ids"]]
            loss = (per_sample * weights.to(per_sample.dtype)).sum() / local_size
            self.engine.backward(loss, scale_wrt_gas=False)
            if capture is not None:
                capture.after_microbatch(micro)
            per_samples.append(per_sample)
            if excesses is not None:
                excesses.append(self.reference.excess_losses(tensors, per_token.detach()))
        self._accumulate(stats, plan, per_samples, excesses)

    def _pipeline_step(self, plan, stats: torch.Tensor) -> None:
        """One DeepSpeed pipeline ``train_batch`` (forward, backward and optimizer step)."""
        loss_fn = pipeline_loss_fn(self.engine)
        loss_fn.record_token_losses = True
        batches = [collate(self.datasets, micro, self.env.device) for micro in plan]
        self.engine.train_batch(data_iter=iter([pipeline_batch(b) for b in batches]))
        recorded = loss_fn.take_token_losses()
        loss_fn.record_token_losses = False
        if not recorded:  # only the last stage computes the loss
            return
        per_samples = [
            (per_token.float() * b["loss_mask"]).sum(dim=1) / b["loss_mask"].sum(dim=1).clamp(min=1)
            for b, per_token in zip(batches, recorded)
        ]
        self._accumulate(stats, plan, per_samples, None)

    # ----------------------------------------------------------------------------- events
    def _reweight(self, observed) -> None:
        started = time.perf_counter()
        obs = Observation(
            step=self.step,
            lr=float(self.engine.get_lr()[0]),
            domain_losses=self.event_acc.means(),
            domain_sample_counts=torch.from_numpy(self.event_acc.counts.copy()),
            domain_excess_losses=self.event_acc.excess_means()
            if self.reference is not None
            else None,
            previous_target_losses=self.previous_target_losses,
        )
        if observed is not None:
            obs.domain_target_gram = observed.domain_target_gram
            obs.domain_gram = observed.domain_gram
            obs.target_losses = observed.target_losses
            self.previous_target_losses = observed.target_losses
        update = self.method.update(obs)
        self.last_observation = obs
        alpha = update.domain_weights.double()
        if not parallel.all_ranks_agree(alpha):
            raise RuntimeError(
                f"ranks disagree on the new domain weights at step {self.step}: {alpha.tolist()}"
            )
        if not self.apply_loss and update.skipped is None:
            self.sampler.set_weights(alpha.numpy())
        self.event_acc.reset()
        seconds = (
            time.perf_counter() - started + (observed.seconds if observed is not None else 0.0)
        )
        self._log_event(update, observed, seconds)

    def _log_event(self, update, observed, seconds: float) -> None:
        alpha = update.domain_weights.tolist()
        z = update.task_weights.tolist() if update.task_weights is not None else None
        record = {
            "step": self.step,
            "consumed_samples": self.sampler.consumed_samples,
            "domain_weights": dict(zip(self.domain_names, alpha)),
            "task_weights": dict(zip(self.task_names, z)) if z is not None else None,
            "skipped": update.skipped,
            "diagnostics": update.diagnostics,
            "reweight_time_s": seconds,
        }
        if observed is not None:
            record["capture_time_s"] = {
                "total": observed.seconds,
                "target_gradients": observed.target_seconds,
                "probes": observed.probe_seconds,
            }
        self.metrics.mixture_event(record)
        scalars = {f"mixture/alpha/{n}": w for n, w in zip(self.domain_names, alpha)}
        if z is not None:
            scalars.update({f"mixture/z/{n}": w for n, w in zip(self.task_names, z)})
        if observed is not None and observed.domain_target_gram is not None:
            rows = observed.domain_target_gram.sum(dim=1).tolist()
            scalars.update(
                {f"mixture/gram_row_sum/{n}": v for n, v in zip(self.domain_names, rows)}
            )
        if observed is not None and observed.target_losses is not None:
            scalars.update(
                {
                    f"target/{n}/signal_loss": v
                    for n, v in zip(self.task_names, observed.target_losses.tolist())
                }
            )
        scalars["mixture/reweight_time_s"] = seconds
        self.metrics.scalars(self.step, scalars)
        if update.skipped and self.rank0:
            tqdm.write(f"[megagrape] step {self.step}: reweighting event skipped: {update.skipped}")

    def _record_average(self) -> None:
        """Add the weights in effect for the coming step to the time average (mixture_average.json)."""
        in_effect = (
            self.method.domain_weights
            if self.apply_loss
            else torch.tensor(self.sampler.current_weights)
        )
        self.average.add(in_effect)

    # ----------------------------------------------------------------------------- loop
    def _due(self, interval: int) -> bool:
        return interval > 0 and self.step % interval == 0

    def train(self) -> dict:
        """Train to train.iters (or to train.exit_interval steps of this invocation); returns a summary."""
        cfg = self.cfg
        window = LogWindow()
        bar = tqdm(
            total=cfg.train.train_iters,
            initial=self.step,
            disable=not (self.rank0 and cfg.logging.progress_bar),
            desc=cfg.name,
            unit="step",
            dynamic_ncols=True,
        )
        started_at, last_eval, exited = self.step, {}, False
        while self.step < cfg.train.train_iters and not exited:
            self._record_average()
            record = self.train_step()
            self.history["loss"].append(record.loss)
            window.add(record)
            bar.update(1)
            done = self.step == cfg.train.train_iters
            exited = (
                not done
                and cfg.train.exit_interval > 0
                and (self.step - started_at) % cfg.train.exit_interval == 0
            )
            if self._due(cfg.logging.interval) or done or exited:
                self._log_window(window, bar)
                window = LogWindow()
            if self.tasks and (
                self._due(cfg.targets.eval_interval) or (done and not cfg.targets.eval_interval)
            ):
                last_eval = self.evaluate(final=done)
            if self._due(cfg.checkpoint.interval) or done or exited:
                self.save()
        bar.close()
        if exited and self.rank0:
            tqdm.write(
                f"[megagrape] train.exit_interval reached at step {self.step}; relaunch to resume"
            )
        if not exited:
            self._write_average()
        self.metrics.close()
        return {"step": self.step, "eval": last_eval, "history": self.history, "exited": exited}

    def _log_window(self, window: LogWindow, bar) -> None:
        steps = max(window.steps, 1)
        loss = window.loss / steps
        tokens_per_s = window.tokens / max(window.seconds, 1e-9)
        lr = float(self.engine.get_lr()[0])
        scalars = {
            "train/loss": loss,
            "train/lr": lr,
            "train/grad_norm": float(np.mean(window.grad_norms)),
            "perf/tokens_per_s": tokens_per_s,
            "perf/step_time_s": window.seconds / steps,
            "perf/memory_gb": memory_gb(self.env.device),
        }
        mfu_value = mfu(
            self.cfg.model.flops_per_token() * tokens_per_s, self.env.device, self.env.world_size
        )
        if mfu_value is not None:
            scalars["perf/mfu"] = mfu_value
        with np.errstate(invalid="ignore", divide="ignore"):
            domain_means = window.domain_sums / window.domain_counts
        for name, value in zip(self.domain_names, domain_means):
            if np.isfinite(value):
                scalars[f"loss/domain/{name}"] = float(value)
        self.metrics.scalars(self.step, scalars)
        if self.rank0:
            alpha = " ".join(f"{w:.2f}" for w in self.sampler.current_weights)
            bar.write(
                f"step {self.step:>6}/{self.cfg.train.train_iters} | loss {loss:.4f} | lr {lr:.2e} | "
                f"{tokens_per_s:,.0f} tok/s | {window.seconds / steps * 1000:.0f} ms/step | alpha [{alpha}]"
            )

    def evaluate(self, final: bool = True) -> dict:
        """Score every target task (every rank gets the results); ``final`` forces full scores."""
        tcfg = self.cfg.targets
        results = evaluate_tasks(
            self.engine,
            self.tasks,
            self.cfg.model.seq_length,
            tcfg.eval_max_items,
            self.tokenizer.eod,
            tcfg.eval_batch_size,
            self.env,
            self.dp_group,
            pipeline_shape=(self.cfg.train.micro_batch_size, self.cfg.model.seq_length)
            if self.pipelined
            else None,
            mode="full" if final else tcfg.eval_mode,
        )
        scalars = {
            f"target/{task}/{metric}": value
            for task, scores in results.items()
            for metric, value in scores.items()
        }
        self.metrics.scalars(self.step, scalars)
        if self.rank0:
            summary = ", ".join(
                f"{task} " + " ".join(f"{m}={v:.3f}" for m, v in scores.items())
                for task, scores in results.items()
            )
            tqdm.write(f"[eval] step {self.step}: {summary}")
        self.history["eval"].append({"step": self.step, "results": results})
        return results

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
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

    def save(self) -> Path:
        return ckpt.save_checkpoint(
            self.engine,
            self.checkpoint_root,
            self.step,
            self.state_dict(),
            self.cfg.checkpoint.keep_last,
        )

    def _write_average(self) -> None:
        if self.rank0 and self.average.count:
            document = {**self.average.as_dict(self.domain_names), "method": self.method.name}
            ckpt.write_json_atomic(self.run_dir / "mixture_average.json", document)


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


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; biases and norm weights (1-D) are not decayed."""
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def run_training(cfg: RunConfig, ds_raw: dict, ds_source: str = "DeepSpeed config") -> dict:
    """Start the process group, train, tear down; returns ``Trainer.train()``'s summary.

    The config must already be validated (tools/pretrain_grape.py does it before any process
    group exists).
    """
    from megagrape.ds_config import resolve_ds_config

    env = parallel.init_distributed(cfg.parallel, cfg.seed)
    try:
        ds_config = resolve_ds_config(
            ds_raw,
            cfg,
            env.world_size,
            env.device,
            pipeline=cfg.parallel.pipeline_parallel > 1,
            source=ds_source,
        )
        return Trainer(cfg, ds_config, env).train()
    finally:
        parallel.destroy_distributed()
