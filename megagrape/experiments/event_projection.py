"""Project the cost of a reweighting event, measured on one model and machine, to another scale.

``benchmarks/bench_gram.py`` times an event on a small model and splits its extra time (over a
plain step) into two parts that scale differently with the model, the batch and the machine:

* **Target gradients**: a forward and backward over N x ``signal_batch_size`` sequences. They
  run at the same per-token speed as the training step, so in units of plain steps

      T' = T x (N' b' L' / (B' L')) / (N b L / (B L))

  (b the signal batch, B the global batch, L the sequence length, all in sequences/tokens).
* **The rest** (the per-round products in the capture, the Gram matrices, the method's update):
  passes over (K + N) gradient-sized vectors. Their time is memory-bound, about
  (K + N) x P x bytes / bandwidth, while the step is compute-bound, F x B x L / flops (F the
  training FLOPs per token). In units of plain steps

      C' = C x ((K'+N') P' / ((K+N) P)) x ((F B L) / (F' B' L')) x (balance' / balance)

  with ``balance`` = achieved step FLOP/s / achieved gradient-pass bandwidth (FLOPs per byte)
  of each machine. The measuring machine's balance comes from the same file (its step's FLOP/s
  and its Gram kernel's bytes per second); the target machine's is an input.

Both terms are projections under these two scaling assumptions, not measurements; the GPU check
(``benchmarks/gpu_check.sh``) measures the event on the GPU model directly.
"""

from __future__ import annotations

from dataclasses import dataclass

FP32_BYTES = 4


@dataclass(frozen=True)
class EventShape:
    """What decides an event's cost: the model, the batch and the number of gradients.

    ``parameters`` is P, ``flops_per_token`` the training FLOPs per token (forward + backward),
    ``global_batch_size``/``signal_batch_size`` are sequences, ``seq_length`` tokens per
    sequence, ``interval`` steps between events.
    """

    domains: int
    targets: int
    parameters: int
    flops_per_token: float
    global_batch_size: int
    signal_batch_size: int
    seq_length: int
    interval: int

    def __post_init__(self) -> None:
        for name in (
            "domains",
            "targets",
            "parameters",
            "global_batch_size",
            "signal_batch_size",
            "seq_length",
            "interval",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"EventShape.{name} must be >= 1, got {getattr(self, name)}")
        if not self.flops_per_token > 0:
            raise ValueError(f"EventShape.flops_per_token must be > 0, got {self.flops_per_token}")

    @property
    def target_share(self) -> float:
        """Target-gradient sequences per training sequence of one step: N b / B."""
        return self.targets * self.signal_batch_size / self.global_batch_size

    @property
    def step_flops(self) -> float:
        """Training FLOPs of one plain step: F x B x L."""
        return self.flops_per_token * self.global_batch_size * self.seq_length

    @property
    def vector_bytes(self) -> float:
        """Bytes of the (K + N) fp32 gradient vectors the products pass over."""
        return (self.domains + self.targets) * self.parameters * FP32_BYTES


@dataclass(frozen=True)
class MeasuredEvent:
    """One machine's measured event (seconds) and its gradient-pass bandwidth (bytes/s)."""

    shape: EventShape
    plain_step_s: float
    event_extra_s: float
    target_gradients_s: float
    gram_bytes_per_s: float

    def __post_init__(self) -> None:
        if not (self.plain_step_s > 0 and self.gram_bytes_per_s > 0):
            raise ValueError("a measured event needs a positive step time and Gram bandwidth")
        if not 0 <= self.target_gradients_s <= self.event_extra_s:
            raise ValueError(
                f"target gradients ({self.target_gradients_s:.3g} s) must lie within the "
                f"event's extra time ({self.event_extra_s:.3g} s)"
            )

    @property
    def target_steps(self) -> float:
        """T: the target gradients in plain steps."""
        return self.target_gradients_s / self.plain_step_s

    @property
    def rest_steps(self) -> float:
        """C: everything else the event adds, in plain steps."""
        return (self.event_extra_s - self.target_gradients_s) / self.plain_step_s

    @property
    def balance(self) -> float:
        """Achieved step FLOP/s over achieved Gram bytes/s (FLOPs per byte)."""
        return (self.shape.step_flops / self.plain_step_s) / self.gram_bytes_per_s


@dataclass(frozen=True)
class EventProjection:
    """An event's projected cost at another scale, in plain steps of that scale."""

    target_steps: float
    rest_steps: float
    interval: int

    @property
    def event_steps(self) -> float:
        return self.target_steps + self.rest_steps

    @property
    def overhead(self) -> float:
        """Extra training time per plain step: event_steps / interval (0.05 = 5% slower)."""
        return self.event_steps / self.interval


def project_event(measured: MeasuredEvent, target: EventShape, balance: float) -> EventProjection:
    """The measured event scaled to ``target`` on a machine of the given ``balance`` (FLOPs/B)."""
    if not balance > 0:
        raise ValueError(f"balance must be > 0 FLOPs per byte, got {balance}")
    source = measured.shape
    target_steps = measured.target_steps * target.target_share / source.target_share
    rest_steps = (
        measured.rest_steps
        * (target.vector_bytes / source.vector_bytes)
        * (source.step_flops / target.step_flops)
        * (balance / measured.balance)
    )
    return EventProjection(target_steps, rest_steps, target.interval)


def device_balance(peak_flops: float, mfu: float, peak_bytes_per_s: float, bw_use: float) -> float:
    """FLOPs per byte of a machine that reaches ``mfu`` of its peak FLOP/s in the training step
    and ``bw_use`` of its peak memory bandwidth in the gradient passes."""
    return (peak_flops * mfu) / (peak_bytes_per_s * bw_use)


H100_SXM_BF16_FLOPS = 989e12
"""H100 SXM dense bf16 tensor-core peak (NVIDIA's datasheet, without sparsity)."""
H100_SXM_BYTES_PER_S = 3.35e12
"""H100 SXM HBM3 peak bandwidth (datasheet)."""


def measured_from_bench_gram(
    record: dict, flops_per_token: float, signal_batch_size: int
) -> MeasuredEvent:
    """The event and fp32 Gram bandwidth of a ``bench_gram.py`` result file's ``result``.

    The file records the model's size and batch; its FLOPs per token and signal batch come from
    the config the event ran (``--event-config``), which the caller loads.
    """
    event = record["event"]
    fp32 = [row for row in record["results"] if row["variant"] == "fp32"]
    if not event or not fp32:
        raise ValueError("the bench_gram result needs an event timing and an fp32 kernel row")
    shape = EventShape(
        domains=event["domains"],
        targets=event["targets"],
        parameters=event["model"]["parameters"],
        flops_per_token=flops_per_token,
        global_batch_size=event["global_batch_size"],
        signal_batch_size=signal_batch_size,
        seq_length=event["model"]["seq_length"],
        interval=event["interval"],
    )
    return MeasuredEvent(
        shape=shape,
        plain_step_s=event["plain_step_s"],
        event_extra_s=event["event_extra_s"],
        target_gradients_s=event["event_parts_s"]["target_gradients"],
        gram_bytes_per_s=fp32[0]["kernel_gb_s"] * 1e9,
    )


def shape_from_config(cfg, domains: int, targets: int) -> EventShape:
    """The EventShape of a RunConfig (its model, batches and interval) with K and N given."""
    return EventShape(
        domains=domains,
        targets=targets,
        parameters=cfg.model.num_parameters(),
        flops_per_token=cfg.model.flops_per_token(),
        global_batch_size=cfg.train.global_batch_size,
        signal_batch_size=cfg.targets.signal_batch_size,
        seq_length=cfg.model.seq_length,
        interval=cfg.mixture.interval,
    )
