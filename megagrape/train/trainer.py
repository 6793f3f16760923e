"""The training loop: live-mixture batches -> train module -> reweighting events -> callbacks.

One optimizer step (``Trainer.train_step``):
  1. reseed every RNG from (seed, step), so a resumed run draws the same numbers;
  2. the mixture controller takes the next global batch from the sampler and plans this
     rank's micro-batches (``fixed`` or domain-pure ``by_domain`` rounds);
  3. on an event step of a gradient method, the controller's capture computes the target
     gradients first and reads per-domain products after each backward;
  4. the train module runs forward/backward on every micro-batch and the optimizer step; the
     per-domain losses are all-reduced into one StepRecord (identical on every rank);
  5. at an event the method turns the observation into new weights (checked identical on
     every rank); the sampler switches at the next global batch;
  6. callbacks log, evaluate and checkpoint, each at its own interval.

Building a run (``build_trainer``): training data (megagrape/data/training_data.py), the
train module (model, optimizer, DeepSpeed), the mixture controller, the callbacks; then the
newest complete checkpoint is restored. ``run_training`` wraps it with the process group.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from megagrape import parallel
from megagrape.config import RunConfig, config_yaml, resolved_dict, save_config
from megagrape.data.loader import LoaderSettings, MicroBatchLoader
from megagrape.data.training_data import TrainingData, build_training_data
from megagrape.errors import ConfigError
from megagrape.train import checkpoint as ckpt
from megagrape.train.callbacks import Callback, default_callbacks
from megagrape.train.identity import RunIdentity, check_resume_identity, run_identity
from megagrape.train.metrics import MetricsWriter
from megagrape.train.mixture_controller import MixtureController
from megagrape.train.step_stats import StepRecord, local_step_stats, reduce_step_stats
from megagrape.train.train_module import TrainModule, build_train_module


def seed_everything(seed: int, step: int, env) -> None:
    """Reseed python/numpy/torch (and the model-parallel dropout RNG) for this step."""
    step_seed = (seed * 1_000_003 + step) % (2**31 - 1)
    parallel.seed_everything(step_seed, env.tp_rank, env.pp_rank)


class Trainer:
    """Runs the loop over already built parts; see ``build_trainer``."""

    def __init__(
        self,
        cfg: RunConfig,
        env,
        data: TrainingData,
        module: TrainModule,
        mixture: MixtureController,
        callbacks: list[Callback],
        identity: RunIdentity,
    ) -> None:
        self.cfg = cfg
        self.env = env
        self.data = data
        self.module = module
        self.mixture = mixture
        self.callbacks = callbacks
        self.identity = identity  # saved with every checkpoint, compared on resume
        self.is_main = env.rank == 0
        self.dp_group = parallel.dp_group()
        self.step = 0  # optimizer steps completed
        self.done = False  # step == train.train_iters
        self.exiting = False  # this invocation stops here (exit interval, signal, wall time)
        self.healthy = True  # the latest step passed the divergence guard (may be saved)
        # this invocation's per-step training loss, wall seconds (events included) and evaluations
        self.history: dict[str, list] = {"loss": [], "step_seconds": [], "eval": []}
        self.last_eval: dict[str, dict[str, float]] = {}
        self.allowed_changes: dict[str, tuple] = {}  # identity fields changed on purpose
        self._resume()
        if self.is_main:
            record_launch(cfg, self.step, self.allowed_changes)
        self.metrics = MetricsWriter(
            self.run_dir,
            enabled=self.is_main,
            tensorboard=cfg.logging.tensorboard,
            wandb_project=cfg.logging.wandb_project,
            run_name=cfg.name,
            resume_step=self.step,
            resume_tokens=self.consumed_tokens,
            config=resolved_dict(cfg),
            config_text=config_yaml(cfg),
        )

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    @property
    def checkpoint_root(self) -> Path:
        return self.cfg.checkpoint_root

    @property
    def consumed_tokens(self) -> int:
        """Training tokens consumed so far (the tokens axis of TensorBoard's vs_tokens run)."""
        return self.mixture.sampler.consumed_samples * self.cfg.model.seq_length

    # ----------------------------------------------------------------------------- loop
    def train(self) -> dict:
        """Train to train.train_iters (or train.exit_interval steps of this invocation).

        Returns {"step", "eval" (the last evaluation), "history", "exited"}.
        """
        iters, exit_interval = self.cfg.train.train_iters, self.cfg.train.exit_interval
        bar = tqdm(
            total=iters,
            initial=self.step,
            disable=not (self.is_main and self.cfg.logging.progress_bar),
            desc=self.cfg.name,
            unit="step",
            dynamic_ncols=True,
        )
        started_at = self.step
        self.done = self.step >= iters
        try:
            for callback in self.callbacks:
                callback.on_train_start(self)
            while not (self.done or self.exiting):
                record = self.train_step()
                self.history["loss"].append(record.loss)
                self.history["step_seconds"].append(record.seconds)
                bar.update(1)
                self.done = self.step == iters
                self.exiting = (
                    not self.done
                    and exit_interval > 0
                    and (self.step - started_at) % exit_interval == 0
                )
                for callback in self.callbacks:
                    callback.on_step_end(self, record)
            if self.exiting and self.is_main:
                tqdm.write(f"[megagrape] stopped at step {self.step}; relaunch to resume")
            for callback in self.callbacks:
                callback.on_train_end(self)
        finally:
            bar.close()
            if self.module.loader is not None:
                self.module.loader.close()  # no worker process outlives training
            self.metrics.close()  # what was logged survives a failure too
        return {
            "step": self.step,
            "eval": self.last_eval,
            "history": self.history,
            "exited": self.exiting,
        }

    def train_step(self) -> StepRecord:
        """One optimizer step, its reweighting event included (collective)."""
        cfg, env, mixture = self.cfg, self.env, self.mixture
        seed_everything(cfg.seed, self.step, env)
        started = time.perf_counter()
        plan = mixture.plan_step(self.step)
        mixture.begin_backward(plan)
        per_sample = self.module.train_batch(
            plan.micro_batches, self.data.datasets, mixture.loss_weights(), hooks=mixture
        )
        observed = mixture.before_optim_step(plan)
        self.module.optim_step()
        stats = local_step_stats(
            len(self.data.domains), plan.micro_batches, per_sample, mixture.take_step_excess()
        )
        record = reduce_step_stats(
            stats,
            env,
            tokens=cfg.train.global_batch_size * cfg.model.seq_length,
            grad_norm=self.module.grad_norm,
        )
        self.step += 1
        event = mixture.after_step(plan, self.step, record, observed, self.module.lr)
        if event is not None:
            for callback in self.callbacks:
                callback.on_event(self, event)
        record.seconds = time.perf_counter() - started
        return record

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """megagrape's own checkpoint state (rank independent); DeepSpeed saves the rest."""
        return {
            "step": self.step,
            "tokenizer_fingerprint": self.data.tokenizer.fingerprint,
            "identity": self.identity.as_dict(),
            **self.mixture.state_dict(),
        }

    def save_checkpoint(self) -> Path:
        """Collective: an atomic checkpoint of this step."""
        return self.module.save_state(self.checkpoint_root, self.step, self.state_dict())

    def _choose_checkpoint(self) -> ckpt.CheckpointInfo | None:
        """Collective: rank 0 verifies the candidates (checksums included) and tells the others.

        Every rank then loads the same checkpoint while each file is read for its sha256 once.
        """
        cfg = self.cfg
        answer: list = [None]
        if self.is_main:
            try:
                info, notes = ckpt.resolve_resume(
                    cfg.checkpoint.resume, self.checkpoint_root, deep=cfg.checkpoint.checksums
                )
                for note in notes:
                    tqdm.write(f"[megagrape] {note}")
                answer = [("ok", None if info is None else (str(info.path), info.step))]
            except ConfigError as err:
                answer = [("error", str(err))]
        if self.env.world_size > 1:
            torch.distributed.broadcast_object_list(answer, src=0)
        kind, value = answer[0]
        if kind == "error":
            raise ConfigError(value)
        return None if value is None else ckpt.CheckpointInfo(Path(value[0]), value[1])

    def _resume(self) -> None:
        info = self._choose_checkpoint()
        if info is None:
            return
        saved = ckpt.read_state(info).get("identity")
        if saved is None:
            if self.is_main:
                tqdm.write(
                    f"[megagrape] {info.path} records no run identity (an older megagrape): "
                    "resuming without comparing the data and config"
                )
        else:
            self.allowed_changes = check_resume_identity(
                RunIdentity.from_dict(saved),
                self.identity,
                self.cfg.checkpoint.allow_changes,
                info.path,
            )
        state = self.module.load_state(info)
        self.step = int(state["step"])
        self.mixture.load_state_dict(state)
        if self.is_main:
            tqdm.write(f"[megagrape] resumed from {info.path} at step {self.step}")


def record_launch(cfg: RunConfig, step: int, allowed_changes: dict[str, tuple]) -> None:
    """Rank 0: keep this launch's resolved config and what it changed on purpose.

    ``config.yaml`` is the latest launch's config; ``config_history/`` keeps every launch's
    (named by the step it started from and the time), and ``launches.jsonl`` one line per
    launch: time, starting step, its config file and the allowed identity changes.
    """
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    history = run_dir / "config_history" / f"step_{step:06d}_{stamp}.yaml"
    history.parent.mkdir(exist_ok=True)
    save_config(cfg, history)
    save_config(cfg, run_dir / "config.yaml")
    entry = {
        "time": stamp,
        "start_step": step,
        "config": str(history.relative_to(run_dir)),
        "allowed_changes": {name: list(change) for name, change in allowed_changes.items()},
    }
    with open(run_dir / "launches.jsonl", "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def build_trainer(
    cfg: RunConfig, ds_config: dict, env, callbacks: list[Callback] | None = None
) -> Trainer:
    """Build every part of a run inside an initialised process group, restore any checkpoint.

    ``callbacks`` default to ``default_callbacks()``; pass a list to add or replace behaviours.
    """
    data = build_training_data(cfg)
    module = build_train_module(cfg, env, ds_config)
    # workers start at the first step (no process exists if the rest of the build fails)
    module.loader = MicroBatchLoader(
        data.datasets, LoaderSettings.from_config(cfg.data), env.device
    )
    mixture = MixtureController.build(cfg, env, data, module)
    identity = run_identity(
        cfg,
        data.tokenizer.fingerprint,
        data.domains,
        data.target_files,
        env.dp_size,
        module.zero_stage,
    )
    return Trainer(
        cfg,
        env,
        data,
        module,
        mixture,
        default_callbacks() if callbacks is None else callbacks,
        identity,
    )


def run_training(
    cfg: RunConfig,
    ds_raw: dict,
    ds_source: str = "DeepSpeed config",
    callbacks: list[Callback] | None = None,
) -> dict:
    """Start the process group, train, tear down; returns ``Trainer.train()``'s summary.

    ``cfg`` must already have passed the pre-flight check (megagrape/train/preflight.py), as
    tools/pretrain_grape.py does before any process group exists.
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
        return build_trainer(cfg, ds_config, env, callbacks).train()
    finally:
        parallel.destroy_distributed()
