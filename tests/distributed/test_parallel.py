"""megagrape.parallel: config checks, launcher environments, RNG tracker, real gloo groups."""

from __future__ import annotations

import os
import time

import pytest
import torch

from megagrape.errors import ConfigError
from megagrape.parallel import CpuRNGStatesTracker, ParallelConfig, _fill_launcher_env
from tests.dist_utils import run_distributed

LAUNCHER_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "SLURM_NNODES",
)


@pytest.fixture
def clean_launcher_env(monkeypatch):
    """No launcher variables during the test, and exactly the original ones after it (the code
    under test sets some; monkeypatch alone would not remove variables that were absent)."""
    saved = {name: os.environ.get(name) for name in LAUNCHER_VARS}
    for name in LAUNCHER_VARS:
        os.environ.pop(name, None)
    yield monkeypatch
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# ----------------------------------------------------------------------------- ParallelConfig


@pytest.mark.parametrize(
    ("kwargs", "world_size", "expected"),
    [
        ({"tensor_parallel": 0}, None, "parallel.tensor_parallel = 0"),
        ({"pipeline_parallel": 1.5}, None, "parallel.pipeline_parallel = 1.5"),
        ({"tensor_parallel": True}, None, "parallel.tensor_parallel = True"),
        ({"backend": "mpi"}, None, "parallel.backend = 'mpi': allowed values are auto, nccl"),
        ({"timeout_minutes": 0}, None, "parallel.timeout_minutes = 0"),
        ({"tensor_parallel": 2, "pipeline_parallel": 2}, 6, "world size 6 is not divisible"),
    ],
)
def test_parallel_config_rejects_bad_values(kwargs, world_size, expected):
    with pytest.raises(ConfigError, match="") as info:
        ParallelConfig(**kwargs).validate(world_size)
    assert expected in str(info.value)


def test_parallel_config_accepts_divisible_world():
    ParallelConfig(tensor_parallel=2, pipeline_parallel=2).validate(8)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_nccl_without_cuda_is_a_config_error():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        ParallelConfig(backend="nccl").validate()
    assert ParallelConfig().resolved_backend() == "gloo"


# ----------------------------------------------------------------------------- launchers


def test_no_launcher_gets_single_process_defaults(clean_launcher_env):
    _fill_launcher_env()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == (
        "0",
        "1",
        "0",
    )
    assert os.environ["MASTER_ADDR"] == "127.0.0.1"
    assert 0 < int(os.environ["MASTER_PORT"]) < 65536


def test_srun_variables_fill_torch_variables(clean_launcher_env):
    clean_launcher_env.setenv("SLURM_PROCID", "3")
    clean_launcher_env.setenv("SLURM_NTASKS", "4")
    clean_launcher_env.setenv("SLURM_LOCALID", "1")
    clean_launcher_env.setenv("SLURM_NNODES", "1")
    _fill_launcher_env()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == (
        "3",
        "4",
        "1",
    )
    assert os.environ["MASTER_ADDR"] == "127.0.0.1"


def test_torch_variables_win_over_slurm(clean_launcher_env):
    clean_launcher_env.setenv("RANK", "0")
    clean_launcher_env.setenv("WORLD_SIZE", "2")
    clean_launcher_env.setenv("LOCAL_RANK", "0")
    clean_launcher_env.setenv("SLURM_PROCID", "5")
    clean_launcher_env.setenv("SLURM_NTASKS", "8")
    _fill_launcher_env()
    assert os.environ["RANK"] == "0"
    assert os.environ["WORLD_SIZE"] == "2"


def test_multi_node_srun_needs_master_addr(clean_launcher_env):
    clean_launcher_env.setenv("SLURM_PROCID", "0")
    clean_launcher_env.setenv("SLURM_NTASKS", "16")
    clean_launcher_env.setenv("SLURM_NNODES", "2")
    with pytest.raises(ConfigError, match="MASTER_ADDR is not set"):
        _fill_launcher_env()


# ----------------------------------------------------------------------------- RNG tracker


def test_cpu_tracker_fork_uses_and_advances_its_own_stream():
    tracker = CpuRNGStatesTracker()
    tracker.add("model-parallel-rng", 1234)
    torch.manual_seed(7)
    outer_before = torch.get_rng_state()
    with tracker.fork():
        first = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), outer_before)  # default stream untouched
    with tracker.fork():
        second = torch.rand(4)
    expected = torch.rand(8, generator=torch.Generator().manual_seed(1234))
    assert torch.equal(torch.cat([first, second]), expected)


def test_cpu_tracker_states_round_trip_and_reject_duplicates():
    tracker = CpuRNGStatesTracker()
    tracker.add("a", 1)
    saved = tracker.get_states()
    with tracker.fork("a"):
        drawn = torch.rand(3)
    tracker.set_states(saved)
    with tracker.fork("a"):
        assert torch.equal(torch.rand(3), drawn)
    with pytest.raises(ValueError, match="already"):
        tracker.add("a", 2)
    with pytest.raises(ValueError, match="seed 1"):
        tracker.add("b", 1)
    with pytest.raises(KeyError, match="never added"), tracker.fork("missing"):
        pass


# ----------------------------------------------------------------------------- real groups


def _tensor_parallel_world(rank: int, world_size: int) -> dict:
    from megatron.core import tensor_parallel

    from megagrape import parallel

    env = parallel.init_distributed(parallel.ParallelConfig(tensor_parallel=2), seed=11)
    agree_same = parallel.all_ranks_agree(torch.arange(5.0))
    agree_rank = parallel.all_ranks_agree(torch.tensor([float(rank)]))
    agree_shape = parallel.all_ranks_agree(torch.zeros(2 + rank))
    shared = parallel.broadcast_tensor_from_rank0(torch.full((3,), float(rank + 1)))
    sizes = [torch.distributed.get_world_size(g()) for g in (parallel.tp_group, parallel.dp_group)]
    default_draw = torch.rand(4)
    with tensor_parallel.get_cuda_rng_tracker().fork():
        split_draw = torch.rand(4)
    saved_default = torch.get_rng_state()
    saved_tracker = parallel.model_parallel_rng_tracker().get_states()
    with tensor_parallel.get_cuda_rng_tracker().fork():
        again = torch.rand(4)
    after = torch.rand(4)
    torch.set_rng_state(saved_default)
    parallel.model_parallel_rng_tracker().set_states(saved_tracker)
    with tensor_parallel.get_cuda_rng_tracker().fork():
        replay = torch.rand(4)
    replay_after = torch.rand(4)
    mpu = parallel.deepspeed_mpu(env)
    result = {
        "env": (env.rank, env.tp_rank, env.tp_size, env.dp_size, env.pp_size, env.device.type),
        "agree": (agree_same, agree_rank, agree_shape),
        "shared": shared.tolist(),
        "sizes": sizes,
        "default_draw": default_draw.tolist(),
        "split_draw": split_draw.tolist(),
        "replayed": torch.equal(again, replay) and torch.equal(after, replay_after),
        "mpu": (mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size()),
        "default_agrees": parallel.all_ranks_agree(default_draw),
        "split_agrees": parallel.all_ranks_agree(split_draw),
    }
    parallel.destroy_distributed()
    return result


def test_tensor_parallel_groups_rng_and_helpers():
    results = run_distributed(_tensor_parallel_world, world_size=2)
    for rank, result in enumerate(results):
        assert result["env"] == (rank, rank, 2, 1, 1, "cpu")
        assert result["agree"] == (True, False, False)
        assert result["shared"] == [1.0, 1.0, 1.0]
        assert result["sizes"] == [2, 1]
        assert result["replayed"]
        assert result["mpu"] == (rank, 2)
        # replicated activations: same default stream; split activations: different streams
        assert result["default_agrees"] and not result["split_agrees"]
    assert results[0]["default_draw"] == results[1]["default_draw"]
    assert results[0]["split_draw"] != results[1]["split_draw"]


def _silent_peer(rank: int, world_size: int, silence_s: float) -> float | None:
    from megagrape import parallel

    parallel.init_distributed(parallel.ParallelConfig(timeout_minutes=0.1), seed=0)
    if rank == 1:
        time.sleep(silence_s)  # alive, but never joins the collective
        return None
    start = time.monotonic()
    try:
        torch.distributed.all_reduce(torch.ones(1))
    except Exception:  # any failure is what the test wants
        return time.monotonic() - start
    return -1.0


@pytest.mark.slow
def test_collective_with_a_silent_rank_fails_after_the_timeout():
    silence_s = 40.0
    waited, _ = run_distributed(_silent_peer, world_size=2, args=(silence_s,), timeout_s=300)
    assert waited is not None and waited >= 0, "the all-reduce completed without its peer"
    assert 3.0 < waited < silence_s / 2  # timeout_minutes = 0.1 -> about 6 s
