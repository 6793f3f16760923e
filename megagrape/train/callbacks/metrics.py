"""Console lines, TensorBoard/wandb scalars every logging.interval steps, and mixture.jsonl events.

Scalars per log window: train/loss, train/lr, train/grad_norm, perf/tokens_per_s,
perf/step_time_s, perf/memory_gb, perf/mfu (CUDA), loss/domain/<name>. Per reweighting event:
mixture/alpha/<domain>, mixture/z/<task>, mixture/gram_row_sum/<domain>,
target/<task>/signal_loss, mixture/reweight_time_s, and one line of mixture.jsonl.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
from tqdm import tqdm

from megagrape.train.callbacks.base import Callback, due
from megagrape.train.metrics import memory_gb, mfu


@dataclass
class LogWindow:
    """Aggregates over one log interval (global values)."""

    steps: int = 0
    loss: float = 0.0
    tokens: int = 0
    seconds: float = 0.0
    domain_sums: np.ndarray | None = None  # float64 [K]
    domain_counts: np.ndarray | None = None  # float64 [K]
    grad_norms: list[float] = field(default_factory=list)

    def add(self, record) -> None:
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


def utc_now() -> str:
    """The wall-clock time of a record, ISO 8601 in UTC to the millisecond."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def named(names, values) -> dict[str, float] | None:
    """{name: value} for a [len(names)] tensor or list (None stays None)."""
    if values is None:
        return None
    listed = values.tolist() if hasattr(values, "tolist") else list(values)
    return dict(zip(names, listed, strict=True))


def named_diagnostics(method, diagnostics: dict, event) -> dict:
    """The method's diagnostics with its per-domain and per-target lists keyed by name."""
    out = {}
    for key, value in diagnostics.items():
        if key in method.domain_diagnostics and isinstance(value, list) and value:
            out[key] = named(event.domain_names, value)
        elif key in method.task_diagnostics and isinstance(value, list) and value:
            out[key] = named(event.task_names, value)
        else:
            out[key] = value
    return out


class MetricsCallback(Callback):
    """Logs every logging.interval steps, at the end and at an early exit; records every event."""

    def __init__(self) -> None:
        self.window = LogWindow()

    def on_step_end(self, trainer, record) -> None:
        self.window.add(record)
        if due(trainer.step, trainer.cfg.logging.interval) or trainer.done or trainer.exiting:
            self._log_window(trainer)
            self.window = LogWindow()

    def _log_window(self, trainer) -> None:
        window, cfg = self.window, trainer.cfg
        steps = max(window.steps, 1)
        loss = window.loss / steps
        tokens_per_s = window.tokens / max(window.seconds, 1e-9)
        lr = trainer.module.lr
        scalars = {
            "train/loss": loss,
            "train/lr": lr,
            "train/grad_norm": float(np.mean(window.grad_norms)),
            "perf/tokens_per_s": tokens_per_s,
            "perf/step_time_s": window.seconds / steps,
            "perf/memory_gb": memory_gb(trainer.env.device),
            "train/consumed_tokens": float(trainer.consumed_tokens),
        }
        mfu_value = mfu(
            cfg.model.flops_per_token() * tokens_per_s, trainer.env.device, trainer.env.world_size
        )
        if mfu_value is not None:
            scalars["perf/mfu"] = mfu_value
        with np.errstate(invalid="ignore", divide="ignore"):
            domain_means = window.domain_sums / window.domain_counts
        for name, value in zip(trainer.data.domain_names, domain_means):
            if np.isfinite(value):
                scalars[f"loss/domain/{name}"] = float(value)
        trainer.metrics.scalars(trainer.step, scalars, tokens=trainer.consumed_tokens)
        if trainer.is_main:
            alpha = " ".join(f"{w:.2f}" for w in trainer.mixture.sampler.current_weights)
            tqdm.write(
                f"step {trainer.step:>6}/{cfg.train.train_iters} | loss {loss:.4f} | lr {lr:.2e} | "
                f"{tokens_per_s:,.0f} tok/s | {window.seconds / steps * 1000:.0f} ms/step | "
                f"alpha [{alpha}]"
            )

    def on_train_start(self, trainer) -> None:
        """A fresh run records its initial weights as step 0 of mixture.jsonl."""
        if trainer.step == 0:
            method = trainer.mixture.method
            trainer.metrics.mixture_event(
                {
                    "step": 0,
                    "initial": True,
                    "method": method.name,
                    "time": utc_now(),
                    "consumed_samples": 0,
                    "domain_weights": named(trainer.data.domain_names, method.domain_weights),
                    "task_weights": named(trainer.data.task_names, method.task_weights),
                }
            )

    def on_event(self, trainer, event) -> None:
        update, observed = event.update, event.observed
        method = trainer.mixture.method
        alpha = update.domain_weights.tolist()
        z = update.task_weights.tolist() if update.task_weights is not None else None
        record = {
            "step": event.step,
            "method": method.name,
            "time": utc_now(),
            "consumed_samples": event.consumed_samples,
            "domain_weights": dict(zip(event.domain_names, alpha)),
            "task_weights": dict(zip(event.task_names, z)) if z is not None else None,
            "skipped": update.skipped,
            "diagnostics": named_diagnostics(method, update.diagnostics, event),
            "reweight_time_s": event.seconds,
        }
        if observed is not None:
            record["capture_time_s"] = {
                "total": observed.seconds,
                "target_gradients": observed.target_seconds,
                "probes": observed.probe_seconds,
            }
            if observed.domain_target_gram is not None:
                record["domain_target_gram"] = {
                    domain: named(event.task_names, row)
                    for domain, row in zip(event.domain_names, observed.domain_target_gram)
                }
            if observed.domain_gram is not None:
                record["domain_gram"] = {
                    domain: named(event.domain_names, row)
                    for domain, row in zip(event.domain_names, observed.domain_gram)
                }
            if observed.target_losses is not None:
                record["target_losses"] = named(event.task_names, observed.target_losses)
        trainer.metrics.mixture_event(record)
        scalars = {f"mixture/alpha/{n}": w for n, w in zip(event.domain_names, alpha)}
        if z is not None:
            scalars.update({f"mixture/z/{n}": w for n, w in zip(event.task_names, z)})
        if observed is not None and observed.domain_target_gram is not None:
            rows = observed.domain_target_gram.sum(dim=1).tolist()
            scalars.update(
                {f"mixture/gram_row_sum/{n}": v for n, v in zip(event.domain_names, rows)}
            )
        if observed is not None and observed.target_losses is not None:
            losses = observed.target_losses.tolist()
            scalars.update({f"target/{n}/signal_loss": v for n, v in zip(event.task_names, losses)})
        scalars["mixture/reweight_time_s"] = event.seconds
        trainer.metrics.scalars(event.step, scalars)
