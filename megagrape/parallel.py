"""Distributed start-up and rank/group helpers: the only module that knows about backends.

``init_distributed`` starts torch.distributed through DeepSpeed (``deepspeed.init_distributed``),
builds megatron-core's tensor/pipeline/data-parallel groups
(``parallel_state.initialize_model_parallel``, rank order tp fastest, then dp, then pp: the
order DeepSpeed's ``PipeModelDataParallelTopology`` uses too), picks the device and seeds
every random number generator the model uses.

Launchers: it works under ``deepspeed``, ``torchrun`` and ``srun`` (the torch variables RANK,
WORLD_SIZE, LOCAL_RANK are filled from SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID when absent)
and with no launcher at all (one process on a free local port).

Random numbers (the megatron scheme, also on CPU):

* python, numpy and torch's default generators are seeded with ``seed + 100 * pp_rank``: the
  same on every tensor-parallel rank, so dropout on replicated activations (hidden dropout)
  draws the same mask on each of them.
* megatron's model-parallel RNG tracker holds a ``model-parallel-rng`` state seeded with
  ``seed + 100 * pp_rank + 2718 + tp_rank``: different per tensor-parallel rank, used for
  dropout on activations that are split across them (attention heads). On GPU this is
  megatron's own CUDA tracker; on CPU it is ``CpuRNGStatesTracker``, installed as megatron's
  tracker so that every ``get_cuda_rng_tracker().fork()`` in megatron-core forks the CPU
  generator instead. ``model_parallel_rng_tracker().get_states()`` / ``set_states()`` save
  and restore the tracker's streams (``torch.get_rng_state()`` / ``set_rng_state()`` the
  default one).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from megagrape.errors import ConfigError

BACKENDS = ("auto", "nccl", "gloo")

# Offsets of megatron's seeding scheme (megatron/training/initialize.py::_set_random_seed and
# megatron/core/tensor_parallel/random.py::model_parallel_cuda_manual_seed).
PIPELINE_SEED_STRIDE = 100
TENSOR_PARALLEL_SEED_OFFSET = 2718
EXPERT_PARALLEL_SEED_OFFSET = 1024


@dataclass
class ParallelConfig:
    """How the world is split into tensor-, pipeline- and data-parallel groups.

    The data-parallel size is derived: world_size / (tensor_parallel * pipeline_parallel).
    """

    tensor_parallel: int = 1
    """Ranks that split every weight matrix (megatron tensor parallelism)."""
    pipeline_parallel: int = 1
    """Pipeline stages (DeepSpeed PipelineModule stages holding consecutive layers)."""
    backend: str = "auto"
    """torch.distributed backend: auto (nccl when CUDA is available, else gloo), nccl, gloo."""
    timeout_minutes: float = 10.0
    """Collective timeout: a crashed rank makes the others fail after this long, not hang."""

    def validate(self, world_size: int | None = None) -> None:
        """Raise ConfigError naming the field, the bad value and what is allowed."""
        for name in ("tensor_parallel", "pipeline_parallel"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"parallel.{name} = {value!r}: must be an integer >= 1 "
                    f"(1 disables this kind of parallelism)"
                )
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"parallel.backend = {self.backend!r}: allowed values are {', '.join(BACKENDS)}"
            )
        if self.backend == "nccl" and not torch.cuda.is_available():
            raise ConfigError(
                "parallel.backend = 'nccl' but CUDA is not available on this machine: "
                "use 'gloo' or 'auto' to run on CPU"
            )
        if (
            isinstance(self.timeout_minutes, bool)
            or not isinstance(self.timeout_minutes, (int, float))
            or not self.timeout_minutes > 0
        ):
            raise ConfigError(
                f"parallel.timeout_minutes = {self.timeout_minutes!r}: must be a number > 0"
            )
        if world_size is not None:
            model_parallel = self.tensor_parallel * self.pipeline_parallel
            if world_size % model_parallel != 0:
                raise ConfigError(
                    f"world size {world_size} is not divisible by parallel.tensor_parallel "
                    f"({self.tensor_parallel}) x parallel.pipeline_parallel "
                    f"({self.pipeline_parallel}) = {model_parallel}: launch a multiple of "
                    f"{model_parallel} processes or lower the parallel sizes"
                )

    def resolved_backend(self) -> str:
        """The backend that ``auto`` stands for on this machine."""
        if self.backend != "auto":
            return self.backend
        return "nccl" if torch.cuda.is_available() else "gloo"


@dataclass
class DistEnv:
    """Where this process sits: global, data-, tensor- and pipeline-parallel coordinates."""

    rank: int
    world_size: int
    local_rank: int
    dp_rank: int
    dp_size: int
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    device: torch.device
    backend: str
    seed: int

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def is_main(self) -> bool:
        """Global rank 0: the one rank that writes logs and files."""
        return self.rank == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fill_launcher_env() -> None:
    """Make RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT present for env:// init."""
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env:
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env.get("SLURM_NTASKS", "1")
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        if "MASTER_ADDR" not in env:
            if int(env.get("SLURM_NNODES", "1")) > 1:
                raise ConfigError(
                    "MASTER_ADDR is not set in a multi-node srun job: export it in the sbatch "
                    "script, e.g. MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST "
                    "| head -n 1)"
                )
            env["MASTER_ADDR"] = "127.0.0.1"
        env.setdefault("MASTER_PORT", "29500")
    if "RANK" not in env:
        env["RANK"] = "0"
        env["WORLD_SIZE"] = "1"
        env["LOCAL_RANK"] = "0"
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    env.setdefault("LOCAL_RANK", "0")
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", "29500")


def _select_device(backend: str, local_rank: int) -> torch.device:
    if backend == "nccl" or torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


class CpuRNGStatesTracker:
    """megatron's model-parallel RNG tracker for the CPU generator.

    Same interface as ``megatron.core.tensor_parallel.random.CudaRNGStatesTracker`` (``add``,
    ``fork``, ``get_states``, ``set_states``, ``reset``, ``is_initialized``); ``fork(name)``
    swaps torch's default CPU generator to the named state for the duration of the block and
    stores the advanced state back, so megatron-core code that draws dropout masks inside
    ``get_cuda_rng_tracker().fork()`` works unchanged on CPU.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()
        self._is_initialized = False

    def is_initialized(self) -> bool:
        return self._is_initialized

    def get_states(self) -> dict[str, torch.Tensor]:
        return {name: state.clone() for name, state in self.states_.items()}

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self.states_ = {name: state.clone() for name, state in states.items()}
        self._is_initialized = True

    def add(self, name: str, seed: int) -> None:
        if seed in self.seeds_:
            raise ValueError(f"RNG seed {seed} is already used by another tracker state")
        if name in self.states_:
            raise ValueError(f"RNG tracker state {name!r} already exists")
        generator = torch.Generator()
        generator.manual_seed(seed)
        self.seeds_.add(seed)
        self.states_[name] = generator.get_state()
        self._is_initialized = True

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng") -> Iterator[None]:
        if name not in self.states_:
            raise KeyError(f"RNG tracker state {name!r} was never added")
        outer_state = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer_state)


def _install_cpu_rng_tracker(tracker: CpuRNGStatesTracker) -> None:
    # megatron-core keeps its tracker in a module global and offers no hook for another
    # class; this is the one place that sets it.
    from megatron.core.tensor_parallel import random as megatron_random

    megatron_random._CUDA_RNG_STATE_TRACKER = tracker
    megatron_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


def model_parallel_rng_tracker():
    """The tracker megatron-core forks for dropout on tensor-parallel-split activations."""
    from megatron.core import tensor_parallel

    return tensor_parallel.get_cuda_rng_tracker()


def seed_everything(seed: int, tp_rank: int, pp_rank: int, ep_rank: int = 0) -> None:
    """Seed python/numpy/torch (and the model-parallel tracker) the way megatron does."""
    rank_seed = seed + PIPELINE_SEED_STRIDE * pp_rank
    random.seed(rank_seed)
    np.random.seed(rank_seed % 2**32)
    torch.manual_seed(rank_seed)
    if torch.cuda.is_available():
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(
            rank_seed, tp_rank=tp_rank, ep_rank=ep_rank, etp_rank=tp_rank, force_reset_rng=True
        )
        return
    tracker = CpuRNGStatesTracker()
    tracker.add("data-parallel-rng", rank_seed)
    tracker.add("model-parallel-rng", rank_seed + TENSOR_PARALLEL_SEED_OFFSET + tp_rank)
    tracker.add(
        "expert-parallel-rng",
        rank_seed + EXPERT_PARALLEL_SEED_OFFSET + PIPELINE_SEED_STRIDE * ep_rank + tp_rank,
    )
    _install_cpu_rng_tracker(tracker)


_ENV: DistEnv | None = None


def init_distributed(cfg: ParallelConfig, seed: int) -> DistEnv:
    """Start torch.distributed + megatron parallel groups, pick the device, seed every RNG.

    Safe to call when torch.distributed is already initialised (the launcher's group is
    reused). Returns the coordinates of this process; ``dist_env()`` returns them later.
    """
    global _ENV
    import deepspeed
    from megatron.core import parallel_state

    cfg.validate()
    _fill_launcher_env()
    world_size = int(os.environ["WORLD_SIZE"])
    cfg.validate(world_size)
    backend = cfg.resolved_backend()
    local_rank = int(os.environ["LOCAL_RANK"])
    device = _select_device(backend, local_rank)
    timeout = timedelta(minutes=cfg.timeout_minutes)
    deepspeed.init_distributed(
        dist_backend=backend, auto_mpi_discovery=False, verbose=False, timeout=timeout
    )
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=cfg.tensor_parallel,
        pipeline_model_parallel_size=cfg.pipeline_parallel,
        distributed_timeout_minutes=max(1, math.ceil(cfg.timeout_minutes)),
        create_gloo_process_groups=backend != "gloo",
    )
    env = DistEnv(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        dp_rank=parallel_state.get_data_parallel_rank(),
        dp_size=parallel_state.get_data_parallel_world_size(),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        tp_size=parallel_state.get_tensor_model_parallel_world_size(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        pp_size=parallel_state.get_pipeline_model_parallel_world_size(),
        device=device,
        backend=backend,
        seed=seed,
    )
    seed_everything(seed, tp_rank=env.tp_rank, pp_rank=env.pp_rank)
    _ENV = env
    return env


def dist_env() -> DistEnv:
    """The DistEnv of the last ``init_distributed`` call in this process."""
    if _ENV is None:
        raise RuntimeError("megagrape.parallel.init_distributed() has not been called")
    return _ENV


def destroy_distributed() -> None:
    """Tear down megatron's groups and the torch process group (tests, clean exits)."""
    global _ENV
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        # Through deepspeed.comm, which also drops the groups DeepSpeed cached (deepspeed.utils.groups),
        # so an engine built after a re-initialisation in the same process uses the new groups.
        import deepspeed.comm

        deepspeed.comm.destroy_process_group()
    _ENV = None


def dp_group() -> dist.ProcessGroup:
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_group()


def tp_group() -> dist.ProcessGroup:
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_group()


def model_parallel_group() -> dist.ProcessGroup:
    """Tensor x pipeline ranks that together hold one full copy of the model."""
    from megatron.core import parallel_state

    return parallel_state.get_model_parallel_group()


def broadcast_tensor_from_rank0(tensor: torch.Tensor) -> torch.Tensor:
    """Overwrite ``tensor`` (same shape/dtype on all ranks) with global rank 0's, in place.

    Under nccl the tensor must live on this rank's GPU (``DistEnv.device``).
    """
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(tensor, src=0)
    return tensor


def _collective_device(group: dist.ProcessGroup | None) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_ranks_agree(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> bool:
    """True when every rank of ``group`` (default: world) holds a bit-identical tensor.

    Compares shape and dtype, then the raw bytes (so NaNs and -0.0 compare by value bits).
    Collective: every rank of the group calls it and every rank gets the same answer.
    """
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return True
    described = [None] * dist.get_world_size(group)
    dist.all_gather_object(described, (tuple(tensor.shape), str(tensor.dtype)), group=group)
    if any(item != described[0] for item in described):
        return False
    device = _collective_device(group)
    raw = tensor.detach().contiguous().view(-1).view(torch.uint8).to(device, torch.int32)
    extremes = torch.stack([raw, -raw])  # one MAX all-reduce yields the max and -min
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX, group=group)
    return torch.equal(extremes[0], -extremes[1])


class DeepSpeedMPU:
    """The ``mpu`` object ``deepspeed.initialize(mpu=...)`` reads, backed by megatron groups.

    DeepSpeed's "model parallel" means tensor slicing: its model-parallel rank/size/group are
    the tensor-parallel ones (checkpoint names ``mp_rank_XX``, gradient-norm reduction).
    Only for engines without pipeline parallelism; a PipelineModule brings its own grid.
    """

    def __init__(self) -> None:
        from megatron.core import parallel_state

        if parallel_state.get_pipeline_model_parallel_world_size() != 1:
            raise RuntimeError(
                "DeepSpeedMPU is for pipeline_parallel == 1; with pipeline stages pass no mpu "
                "(the PipelineModule's topology defines the groups)"
            )
        self._ps = parallel_state

    def get_model_parallel_rank(self) -> int:
        return self._ps.get_tensor_model_parallel_rank()

    def get_model_parallel_world_size(self) -> int:
        return self._ps.get_tensor_model_parallel_world_size()

    def get_model_parallel_group(self) -> dist.ProcessGroup:
        return self._ps.get_tensor_model_parallel_group()

    def get_tensor_model_parallel_rank(self) -> int:
        return self._ps.get_tensor_model_parallel_rank()

    def get_tensor_model_parallel_world_size(self) -> int:
        return self._ps.get_tensor_model_parallel_world_size()

    def get_tensor_model_parallel_group(self) -> dist.ProcessGroup:
        return self._ps.get_tensor_model_parallel_group()

    def get_tensor_model_parallel_src_rank(self) -> int:
        return self._ps.get_tensor_model_parallel_src_rank()

    def get_pipeline_model_parallel_rank(self) -> int:
        return self._ps.get_pipeline_model_parallel_rank()

    def get_pipeline_model_parallel_world_size(self) -> int:
        return self._ps.get_pipeline_model_parallel_world_size()

    def get_pipeline_model_parallel_group(self) -> dist.ProcessGroup:
        return self._ps.get_pipeline_model_parallel_group()

    def get_data_parallel_rank(self) -> int:
        return self._ps.get_data_parallel_rank()

    def get_data_parallel_world_size(self) -> int:
        return self._ps.get_data_parallel_world_size()

    def get_data_parallel_group(self) -> dist.ProcessGroup:
        return self._ps.get_data_parallel_group()


def deepspeed_mpu(env: DistEnv) -> DeepSpeedMPU | None:
    """What to pass as ``mpu`` to ``deepspeed.initialize``: None unless TP > 1 without PP."""
    if env.pp_size > 1 or env.tp_size == 1:
        return None
    return DeepSpeedMPU()


def pipeline_topology(env: DistEnv):
    """DeepSpeed's ``PipeModelDataParallelTopology`` matching megatron's rank order."""
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    return PipeModelDataParallelTopology(num_pp=env.pp_size, num_mp=env.tp_size, num_dp=env.dp_size)
