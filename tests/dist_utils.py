"""Run a function in real processes over gloo, the way CPU distributed tests work here.

``run_distributed(fn, world_size=2, args=(...))`` spawns ``world_size`` processes, sets the
torch.distributed environment (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK), calls
``fn(rank, world_size, *args)`` in each, and raises if any rank fails or the group does not
finish within ``timeout_s``. ``fn`` must be a module-level function (it is pickled).
Each rank's return value is sent back through a queue and returned as a list by rank.
"""

from __future__ import annotations

import os
import queue as queue_module
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, fn: Callable, args: tuple, queue) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        OMP_NUM_THREADS="1",
    )
    try:
        result = fn(rank, world_size, *args)
        queue.put((rank, "ok", result))
    except BaseException:
        queue.put((rank, "error", traceback.format_exc()))
        raise


def run_distributed(
    fn: Callable, world_size: int = 2, args: tuple = (), timeout_s: float = 600.0
) -> list[Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_entry, args=(rank, world_size, port, fn, args, queue))
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    results: dict[int, Any] = {}
    errors: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(results) < world_size and not errors:
            try:
                rank, status, payload = queue.get(timeout=1.0)
            except queue_module.Empty:
                dead = [
                    r
                    for r, p in enumerate(procs)
                    if p.exitcode not in (None, 0) and r not in results
                ]
                if dead:  # killed or crashed without reporting: the others would wait forever
                    errors.append(
                        f"ranks {dead} died with exit codes {[procs[r].exitcode for r in dead]}"
                    )
                elif time.monotonic() > deadline:
                    errors.append(f"the group did not finish within {timeout_s:.0f} s")
                continue
            if status == "ok":
                results[rank] = payload
            else:
                errors.append(f"rank {rank} failed:\n{payload}")
    finally:
        for proc in procs:
            proc.join(timeout=5 if errors else 30)
            if proc.is_alive():
                proc.kill()
                proc.join()
    if errors:
        raise AssertionError("\n".join(errors))
    return [results[r] for r in range(world_size)]
