"""MicroBatchLoader: worker processes materialise exactly the planned micro-batches, in order."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from megagrape.config import load_config
from megagrape.data.loader import LoaderSettings, MicroBatchLoader, load_batches, pack_batch
from megagrape.data.microbatches import MicroBatch, collate, plan_microbatches
from megagrape.data.sampler import MixtureSampler
from megagrape.errors import ConfigError

SEQ = 16
KEYS = {
    "tokens": torch.int64,
    "labels": torch.int64,
    "position_ids": torch.int64,
    "loss_mask": torch.float32,
    "domain_ids": torch.int64,
    "loss_weights": torch.float64,
}


class FakeDomain:
    """A GPTDataset stand-in: sample s of domain d is a deterministic function of (d, s).

    ``reads`` records every read made in this process (reads in a forked worker stay there).
    """

    def __init__(self, domain: int) -> None:
        self.domain = domain
        self.reads: list[int] = []

    def __getitem__(self, sample: int) -> dict:
        self.reads.append(sample)
        rng = np.random.default_rng(1000 * self.domain + sample)
        tokens = rng.integers(0, 50_000, SEQ + 1)
        mask = (rng.random(SEQ) > 0.2).astype(np.float32)
        return {
            "tokens": tokens[:-1].astype(np.int32),  # int32 like megatron's: collate widens
            "labels": tokens[1:].astype(np.int32),
            "loss_mask": mask,
            "position_ids": np.arange(SEQ),
        }


def fake_datasets(k: int = 3) -> list[FakeDomain]:
    return [FakeDomain(d) for d in range(k)]


def step_plans(steps: int, dp_rank: int, schedule: str, dp_size: int = 2) -> list[list]:
    """Consecutive steps' micro-batch plans from a real sampler (weights change mid-way)."""
    sampler = MixtureSampler(["a", "b", "c"], [10_000] * 3, [0.6, 0.3, 0.1], 16)
    plans = []
    for step in range(steps):
        if step == steps // 2:
            sampler.set_weights([0.1, 0.2, 0.7])
        batch = sampler.next_global_batch()
        plans.append(plan_microbatches(batch, dp_rank, dp_size, 2, schedule))
    return plans


def assert_same_batch(got: dict, want: dict) -> None:
    assert set(got) == set(KEYS)
    for key, dtype in KEYS.items():
        assert got[key].dtype == dtype, key
        assert want[key].dtype == dtype, key
        assert torch.equal(got[key], want[key]), key


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, or a recycled pid of another program, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and "python" in Path(
        f"/proc/{pid}/cmdline"
    ).read_bytes().decode(errors="replace")


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


@pytest.fixture
def loader():
    datasets = fake_datasets()
    with MicroBatchLoader(datasets, LoaderSettings(num_workers=2), "cpu") as made:
        yield made


@pytest.mark.parametrize(("schedule", "dp_rank"), [("fixed", 0), ("by_domain", 1)])
def test_workers_yield_exactly_each_steps_plan_in_order(loader, schedule, dp_rank):
    plans = step_plans(6, dp_rank, schedule)
    if schedule == "by_domain":  # the padding micro-batches (loss weight 0) go through too
        assert any(not micro.loss_weights.any() for plan in plans for micro in plan)
    pools, steps = [], []
    for plan in plans:
        steps.append(list(loader.batches(plan)))
        pools.append(loader.worker_pids())
    # every read happened in a worker: the training process touched no sample
    assert all(not domain.reads for domain in loader.datasets)
    assert len(pools[0]) == 2
    assert all(p == pools[0] for p in pools), "workers were re-spawned between steps"
    for plan, got in zip(plans, steps):
        assert len(got) == len(plan)
        for micro, batch in zip(plan, got):
            assert_same_batch(batch, collate(loader.datasets, micro, torch.device("cpu")))


def test_zero_workers_collates_on_the_training_thread_one_micro_batch_at_a_time():
    datasets = fake_datasets()
    plan = step_plans(1, 0, "fixed")[0]
    loader = MicroBatchLoader(datasets, LoaderSettings(num_workers=0), "cpu")
    stream = loader.batches(plan)
    assert not any(d.reads for d in datasets), "nothing is read before it is asked for"
    first = next(stream)
    assert sum(len(d.reads) for d in datasets) == len(plan[0].sample_ids)
    assert_same_batch(first, collate(datasets, plan[0], torch.device("cpu")))
    rest = list(stream)
    assert len(rest) == len(plan) - 1
    assert loader.worker_pids() == []
    # the train modules' entry point without a loader is the same in-thread collate
    direct = list(load_batches(None, datasets, plan, "cpu"))
    for micro, batch in zip(plan, direct):
        assert_same_batch(batch, collate(datasets, micro, torch.device("cpu")))


def test_a_new_step_drops_the_unread_rest_of_an_abandoned_one(loader):
    first, second = step_plans(2, 0, "fixed")
    old = loader.batches(first)
    next(old)  # a step that failed after its first micro-batch
    got = list(loader.batches(second))
    assert len(got) == len(second)
    for micro, batch in zip(second, got):
        assert_same_batch(batch, collate(loader.datasets, micro, torch.device("cpu")))
    with pytest.raises(RuntimeError, match="called again before"):
        next(old)


def test_close_ends_the_workers_and_a_later_step_starts_a_fresh_pool():
    datasets = fake_datasets()
    plan = step_plans(1, 0, "fixed")[0]
    loader = MicroBatchLoader(datasets, LoaderSettings(num_workers=2, prefetch_factor=1), "cpu")
    list(loader.batches(plan))
    pids = loader.worker_pids()
    assert len(pids) == 2 and all(alive(p) for p in pids)
    loader.close()
    assert [p for p in pids if alive(p)] == [], "close() must wait for its workers"
    assert loader.worker_pids() == []
    loader.close()  # idempotent
    again = list(loader.batches(plan))
    assert set(loader.worker_pids()).isdisjoint(pids)
    for micro, batch in zip(plan, again):
        assert_same_batch(batch, collate(datasets, micro, torch.device("cpu")))
    loader.close()


def test_stop_signals_leave_the_workers_running(loader):
    first, second = step_plans(2, 0, "fixed")
    list(loader.batches(first))
    pids = loader.worker_pids()
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGUSR1)
    time.sleep(0.3)
    assert all(alive(p) for p in pids), "a stop signal killed a loader worker"
    got = list(loader.batches(second))
    for micro, batch in zip(second, got):
        assert_same_batch(batch, collate(loader.datasets, micro, torch.device("cpu")))
    assert loader.worker_pids() == pids


def test_starting_workers_draws_nothing_from_the_training_rngs(loader):
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    for plan in step_plans(2, 0, "fixed"):
        list(loader.batches(plan))
    assert torch.equal(torch.get_rng_state(), before[0])
    assert random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])


def test_a_loader_over_other_datasets_is_refused(loader):
    plan = step_plans(1, 0, "fixed")[0]
    with pytest.raises(ValueError, match="other datasets"):
        load_batches(loader, fake_datasets(), plan, "cpu")


def test_a_batch_that_does_not_match_its_micro_batch_is_refused(loader):
    plan = step_plans(1, 0, "fixed")[0]
    # results one place ahead of the plan they are checked against
    stream = loader._check_and_move(plan, _shifted(loader, plan), loader._current)
    with pytest.raises(RuntimeError, match="wrong samples for micro-batch 0"):
        next(stream)
    # a batch of another size cannot even be unpacked as this micro-batch
    one = MicroBatch(plan[0].domain_ids[:1], plan[0].sample_ids[:1], np.ones(1), -1)
    wrong_size = iter([pack_batch(collate(loader.datasets, one, "cpu"), one.sample_ids)])
    stream = loader._check_and_move(plan, wrong_size, loader._current)
    with pytest.raises(RuntimeError, match="wrong samples for micro-batch 0"):
        next(stream)


def _shifted(loader, plan):
    for micro in plan[1:]:
        yield pack_batch(collate(loader.datasets, micro, torch.device("cpu")), micro.sample_ids)


def test_settings_and_config_fields_are_checked():
    with pytest.raises(ValueError, match="num_workers=-1"):
        LoaderSettings(num_workers=-1)
    with pytest.raises(ValueError, match="prefetch_factor=0"):
        LoaderSettings(prefetch_factor=0)
    cfg = load_config(None, ["data.corpus=/tmp/x", "data.loader_workers=3"])
    assert LoaderSettings.from_config(cfg.data) == LoaderSettings(3, 2)
    assert load_config(None, ["data.corpus=/tmp/x"]).data.loader_workers == 0
    for override, message in (
        ("data.loader_workers=-1", r"data.loader_workers=-1 is not allowed; allowed: an integer"),
        ("data.loader_prefetch=0", r"data.loader_prefetch=0 is not allowed; allowed: an integer"),
    ):
        cfg = load_config(None, ["data.corpus=/tmp/x", override])
        with pytest.raises(ConfigError, match=message):
            cfg.validate(world_size=1)
    cfg = load_config(None, ["data.corpus=/tmp/x"])
    cfg.data.loader_workers = True  # a YAML slip: true is not a worker count
    with pytest.raises(ConfigError, match=r"data\.loader_workers=True"):
        cfg.validate(world_size=1)


DIES_WITH_PARENT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from unit.test_loader import fake_datasets, step_plans
    from megagrape.data.loader import LoaderSettings, MicroBatchLoader

    loader = MicroBatchLoader(fake_datasets(), LoaderSettings(num_workers=2), "cpu")
    list(loader.batches(step_plans(1, 0, "fixed")[0]))
    print(" ".join(map(str, loader.worker_pids())), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_workers_die_with_a_killed_training_process():
    tests = str(Path(__file__).resolve().parents[1])
    job = subprocess.run(
        [sys.executable, "-c", DIES_WITH_PARENT.format(tests=tests)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(tests).parent,
    )
    assert job.returncode == -signal.SIGKILL, job.stderr[-2000:]
    pids = [int(p) for p in job.stdout.split()]
    assert len(pids) == 2
    # torch's own watchdog would take up to 5 s; the parent-death signal is immediate
    assert wait_gone(pids, 2.0) == [], "loader workers outlived their SIGKILLed parent"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_are_pinned_copies_of_the_cpu_collate():
    datasets = fake_datasets()
    with MicroBatchLoader(datasets, LoaderSettings(num_workers=2), "cuda") as made:
        assert made.pin_memory
        for plan in step_plans(3, 0, "by_domain"):
            for micro, batch in zip(plan, made.batches(plan)):
                want = collate(datasets, micro, torch.device("cuda"))
                assert all(t.is_cuda for t in batch.values())
                assert_same_batch(batch, want)


def test_micro_batch_is_an_index_the_workers_receive_whole():
    # the DataLoader passes each sampler item to the dataset unchanged (batch_size=None)
    micro = MicroBatch(
        domain_ids=np.array([2, 0], dtype=np.int64),
        sample_ids=np.array([5, 9], dtype=np.int64),
        loss_weights=np.array([1.0, 0.0]),
        round_domain=-1,
    )
    datasets = fake_datasets()
    with MicroBatchLoader(datasets, LoaderSettings(num_workers=1), "cpu") as made:
        (batch,) = list(made.batches([micro]))
    assert batch["loss_weights"].tolist() == [1.0, 0.0]
    assert batch["domain_ids"].tolist() == [2, 0]
    assert_same_batch(batch, collate(datasets, micro, torch.device("cpu")))
