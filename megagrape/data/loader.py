"""Read and collate the planned micro-batches in DataLoader worker processes.

    loader = MicroBatchLoader(datasets, LoaderSettings(num_workers=2), device)
    for micro, batch in zip(plan, loader.batches(plan)):   # batch: collate()'s dict, on device
        ...
    loader.close()

The sampler and the micro-batch plan stay where they are (the mixture controller, on the
training thread, exactly as before). The loader only materialises a plan it is handed: each
call of ``batches(plan)`` is one epoch of a persistent ``torch.utils.data.DataLoader`` whose
sampler yields that plan's micro-batches themselves as indices, so worker ``i mod W`` reads
and stacks micro-batch ``i`` (``collate`` on the CPU) while the training thread runs the
forward/backward of the earlier ones. It never looks ahead of the plan and holds no state
that a checkpoint would need: the stream, each rank's share of it and the exact resume are
the sampler's, unchanged.

* ``num_workers == 0``: no processes, no DataLoader; every micro-batch is collated on the
  training thread just before its forward, as ``collate(datasets, micro, device)`` always was.
* Workers are forked (the per-domain megatron GPTDatasets are shared through the fork, not
  pickled) on the first ``batches`` call and reused by every later step; ``close()`` ends
  them (the Trainer calls it when training ends, whichever way it ends) and a later
  ``batches`` call starts a fresh pool.
* A worker hands back each micro-batch as one packed byte tensor (``pack_batch``: one
  shared-memory segment instead of six); on CUDA the DataLoader's pin-memory thread pins it
  and it is copied with ``non_blocking=True``, once; ``unpack_batch`` gives ``collate``'s
  keys and dtypes as views of it.
* Stop signals (SIGTERM, SIGUSR1, SIGINT) are ignored in the workers: the training process
  decides when to stop (a checkpoint at the next step boundary) and closes the loader.
  A worker dies with its parent (``PR_SET_PDEATHSIG`` on Linux; torch's own watchdog too).
* Every batch that comes back is checked against the micro-batch it was planned for
  (domain and sample ids), so a batch can never train in the wrong place.
"""

from __future__ import annotations

import ctypes
import itertools
import multiprocessing
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from megagrape.data.microbatches import MicroBatch, collate

STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class LoaderSettings:
    """How planned micro-batches are read: on the training thread or in worker processes."""

    num_workers: int = 0
    """Worker processes (0 = collate on the training thread, today's behaviour)."""
    prefetch_factor: int = 2
    """Micro-batches each worker reads ahead of the training thread, within the step's plan."""
    pin_memory: bool | None = None
    """Pin the workers' tensors for an asynchronous host-to-device copy (None = on CUDA only)."""

    def __post_init__(self) -> None:
        for name, least in (("num_workers", 0), ("prefetch_factor", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"LoaderSettings.{name}={value!r}: an integer >= {least}")

    @classmethod
    def from_config(cls, data) -> LoaderSettings:
        """From the run config's ``data`` section (``loader_workers``, ``loader_prefetch``)."""
        return cls(num_workers=data.loader_workers, prefetch_factor=data.loader_prefetch)


def pack_batch(batch: dict, sample_ids: np.ndarray) -> torch.Tensor:
    """One micro-batch as one flat byte tensor (one shared-memory segment, one H2D copy).

    Layout, b samples of S tokens: int64 tokens, labels, position_ids [b*S] each, domain_ids
    and sample_ids [b] each; float64 loss_weights [b]; float32 loss_mask [b*S] (every part
    starts at a multiple of 8 bytes). ``unpack_batch`` returns views of the same bytes, so the
    values and dtypes are exactly ``collate``'s.
    """
    ints = torch.cat(
        [
            batch["tokens"].reshape(-1),
            batch["labels"].reshape(-1),
            batch["position_ids"].reshape(-1),
            batch["domain_ids"],
            torch.from_numpy(np.asarray(sample_ids, dtype=np.int64)),
        ]
    )
    parts = [ints, batch["loss_weights"], batch["loss_mask"].reshape(-1)]
    return torch.cat([part.contiguous().view(torch.uint8) for part in parts])


def unpack_batch(packed: torch.Tensor, size: int) -> tuple[torch.Tensor, dict]:
    """(sample_ids [b], collate's dict) as views of ``pack_batch``'s bytes for ``size`` samples."""
    b = size
    seq, rest = divmod(packed.numel() - 24 * b, 28 * b)  # 8 (3 b S + 2 b) + 8 b + 4 b S bytes
    if rest or seq < 1:
        raise ValueError(f"{packed.numel()} bytes are not a packed batch of {b} samples")
    ints_end = 8 * (3 * b * seq + 2 * b)
    ints = packed[:ints_end].view(torch.int64)
    bs = b * seq
    batch = {
        "tokens": ints[:bs].view(b, seq),
        "labels": ints[bs : 2 * bs].view(b, seq),
        "position_ids": ints[2 * bs : 3 * bs].view(b, seq),
        "loss_mask": packed[ints_end + 8 * b :].view(torch.float32).view(b, seq),
        "domain_ids": ints[3 * bs : 3 * bs + b],
        "loss_weights": packed[ints_end : ints_end + 8 * b].view(torch.float64),
    }
    return ints[3 * bs + b :], batch


class _PlannedMicroBatches(torch.utils.data.Dataset):
    """Map-style dataset whose indices are the micro-batches themselves (read in a worker)."""

    def __init__(self, datasets: Sequence) -> None:
        self.datasets = datasets

    def __getitem__(self, micro: MicroBatch) -> torch.Tensor:
        return pack_batch(collate(self.datasets, micro, torch.device("cpu")), micro.sample_ids)


class _PlanSampler(torch.utils.data.Sampler):
    """Yields the current step's micro-batches; the loader replaces ``plan`` before each epoch."""

    def __init__(self) -> None:
        self.plan: list[MicroBatch] = []

    def __iter__(self) -> Iterator[MicroBatch]:
        return iter(self.plan)

    def __len__(self) -> int:
        return len(self.plan)


def _as_is(item):
    return item


def _worker_start(_worker_id: int) -> None:
    """In each worker: leave stop signals to the training process; die with it."""
    for name in STOP_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # torch's watchdog still ends the worker within a few seconds


def _fork_context():
    """fork where the platform has it: the datasets are shared with the workers, not pickled."""
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return None


class MicroBatchLoader:
    """Collated device batches of a step's planned micro-batches, in plan order."""

    def __init__(self, datasets: Sequence, settings: LoaderSettings, device) -> None:
        self.datasets = datasets
        self.settings = settings
        self.device = torch.device(device)
        pin = settings.pin_memory
        self.pin_memory = bool(self.device.type == "cuda" if pin is None else pin)
        self._sampler = _PlanSampler()
        self._loader: torch.utils.data.DataLoader | None = None
        self._epochs = itertools.count(1)
        self._current = 0  # the epoch whose batches are being handed out

    @property
    def num_workers(self) -> int:
        return self.settings.num_workers

    def batches(self, micro_batches: Sequence[MicroBatch]) -> Iterator[dict]:
        """One collated batch per micro-batch (``collate``'s keys and dtypes) on the device.

        With workers, starting a new ``batches`` iteration ends any earlier one that was not
        read to its end (its remaining batches are dropped, never handed to the new one).
        """
        plan = list(micro_batches)
        if self.num_workers == 0:
            return (collate(self.datasets, micro, self.device) for micro in plan)
        return self._from_workers(plan)

    def _from_workers(self, plan: list[MicroBatch]) -> Iterator[dict]:
        if self._loader is None:
            self._loader = self._new_loader()
        epoch = self._current = next(self._epochs)
        self._sampler.plan = plan
        results = iter(self._loader)  # persistent workers: a new epoch on the same pool
        return self._check_and_move(plan, results, epoch)

    def _check_and_move(self, plan, results, epoch: int) -> Iterator[dict]:
        for index, micro in enumerate(plan):
            if epoch != self._current:
                raise RuntimeError(
                    "MicroBatchLoader.batches was called again before this step's batches "
                    "were all read; the older iteration is over"
                )
            packed = next(results)
            size = len(micro.sample_ids)
            try:
                sample_ids, batch = unpack_batch(packed, size)  # checked on the host
            except ValueError:
                sample_ids, batch = None, {}
            if sample_ids is None or not (
                np.array_equal(sample_ids.numpy(), micro.sample_ids)
                and np.array_equal(batch["domain_ids"].numpy(), micro.domain_ids)
            ):
                raise RuntimeError(
                    f"loader returned the wrong samples for micro-batch {index} of the plan"
                )
            if self.device.type != "cpu":
                _, batch = unpack_batch(packed.to(self.device, non_blocking=self.pin_memory), size)
            yield batch

    def _new_loader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            _PlannedMicroBatches(self.datasets),
            batch_size=None,
            sampler=self._sampler,
            collate_fn=_as_is,
            num_workers=self.num_workers,
            prefetch_factor=self.settings.prefetch_factor,
            persistent_workers=True,
            pin_memory=self.pin_memory,
            worker_init_fn=_worker_start,
            multiprocessing_context=_fork_context(),
            # its own generator: starting the pool must not draw from the training RNG
            generator=torch.Generator().manual_seed(0),
        )

    def worker_pids(self) -> list[int]:
        """Process ids of the running workers (empty without a pool)."""
        iterator = getattr(self._loader, "_iterator", None)
        return [w.pid for w in getattr(iterator, "_workers", [])]

    def close(self) -> None:
        """End the worker processes and wait for them (idempotent; a later call restarts)."""
        loader, self._loader = self._loader, None
        self._current = next(self._epochs)  # an unfinished iteration cannot continue
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None:
            loader._iterator = None
            iterator._shutdown_workers()  # joins them (terminates any that do not exit)

    def __enter__(self) -> MicroBatchLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_batches(
    loader: MicroBatchLoader | None, datasets: Sequence, micro_batches, device
) -> Iterator[dict]:
    """The train modules' entry: through ``loader`` when there is one, else collated in-thread.

    ``loader`` must read ``datasets``: a loader over other datasets would train other samples.
    """
    if loader is None:
        return (collate(datasets, micro, device) for micro in micro_batches)
    if loader.datasets is not datasets:
        raise ValueError("the micro-batch loader was built over other datasets than these")
    return loader.batches(micro_batches)
