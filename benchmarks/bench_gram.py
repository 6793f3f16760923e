"""Benchmark of the fused sharded-Gram kernel (megagrape._C.gram, via megagrape.ops.gram_matrix).

For K domain vectors and N target vectors of E elements each (default K=16, N=6,
E=1e8, split into GPT-parameter-shaped slots that are views into one flat buffer per vector,
the way ZeRO keeps gradients), measured side by side in one run, medians of --repeats:

* the kernel vs the torch loop a user would write (torch.dot per slot per (k, n));
* the kernel's read bandwidth (bytes of the K + N vectors / time) as a fraction of this
  machine's own: torch.sum over the same bytes (read as float32), and on CUDA a
  device-to-device copy (bytes read + written / time).

The same run then times one reweighting event (GRAPE, K=--k domains, N=--n targets made by
cycling over the corpus's own) on the quickstart model, as a fraction of a training step
(benchmarks/trainer_bench.py says how).

    python benchmarks/bench_gram.py                      # full size: 22 x 1e8 fp32 = 8.8 GB
    python benchmarks/bench_gram.py --elements 1000000   # quick
    python benchmarks/bench_gram.py --variants ''          # the event cost only
    python benchmarks/bench_gram.py --no-event           # the kernel only

Prints one JSON object (all numbers) and then a short table.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from megagrape.ops.extension import built_with_cuda
from megagrape.ops.gram import Vectors, gram_matrix, kernel_available

VARIANTS = {
    "fp32": (torch.float32, torch.float32),
    "bf16": (torch.bfloat16, torch.bfloat16),
    "fp32xbf16": (torch.float32, torch.bfloat16),
}


def gpt_slot_shapes(total_elements: int) -> list[tuple[int, ...]]:
    """Parameter shapes of a GPT (embedding, then layers) whose sizes sum to total_elements.

    The hidden size grows with the total (1024 at 1e8). Layers are added parameter by
    parameter; what is left at the end becomes one flat slot, like the tail of a ZeRO
    partition that cuts a parameter.
    """
    hidden = max(64, 2 ** round(math.log2(math.sqrt(max(total_elements, 1) / 100))))
    vocab = min(50304, max(1, total_elements // (2 * hidden)))
    layer = [
        (3 * hidden, hidden), (3 * hidden,), (hidden, hidden), (hidden,), (hidden,), (hidden,),
        (4 * hidden, hidden), (4 * hidden,), (hidden, 4 * hidden), (hidden,), (hidden,), (hidden,),
    ]  # fmt: skip
    shapes: list[tuple[int, ...]] = []
    left = total_elements
    for shape in [(vocab, hidden)] + layer * (total_elements // (12 * hidden * hidden) + 1):
        size = math.prod(shape)
        if size > left:
            break
        shapes.append(shape)
        left -= size
    if left > 0:
        shapes.append((left,))
    return shapes


def make_vectors(
    count: int, shapes: list[tuple[int, ...]], dtype: torch.dtype, device: torch.device, seed: int
) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
    """`count` random vectors, each one flat buffer with parameter-shaped views as its slots.

    Returns (vectors as lists of slot views, the flat buffers).
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    total = sum(math.prod(s) for s in shapes)
    vectors, buffers = [], []
    for _ in range(count):
        flat = torch.empty(total, dtype=dtype, device=device).normal_(generator=gen)
        views, offset = [], 0
        for shape in shapes:
            size = math.prod(shape)
            views.append(flat[offset : offset + size].view(shape))
            offset += size
        vectors.append(views)
        buffers.append(flat)
    return vectors, buffers


def torch_dot_gram(a: Vectors, b: Vectors) -> torch.Tensor:
    """The torch loop a user would write: torch.dot per slot for each (k, n), fp64 total.

    Products run in the inputs' dtype; where a and b differ, both sides are upcast to
    float32 (each b vector once, each a slot per pair).
    """
    device = a[0][0].device
    a_dtype = a[0][0].dtype if a and a[0] else torch.float32
    out = torch.zeros(len(a), len(b), dtype=torch.float64, device=device)
    for n, b_vector in enumerate(b):
        b_slots = [y.flatten() if y.dtype == a_dtype else y.flatten().float() for y in b_vector]
        for k, a_vector in enumerate(a):
            total = torch.zeros((), dtype=torch.float64, device=device)
            for x, y in zip(a_vector, b_slots):
                x = x.flatten() if x.dtype == y.dtype else x.flatten().float()
                total += torch.dot(x, y).double()
            out[k, n] = total
    return out


def measure(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each fn, round-robin (fn1, fn2, ..., fn1, ...) after one warm-up."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns.values():
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def vector_bytes(vectors: Vectors) -> int:
    return sum(t.numel() * t.element_size() for vector in vectors for t in vector)


def kernel_fns(a: Vectors, b: Vectors, reference: bool = True) -> dict[str, Callable[[], object]]:
    """The timed calls of bench_kernel: "kernel" and, with `reference`, "reference"."""
    a_lists = [list(v) for v in a]
    b_lists = [list(v) for v in b]
    fns: dict[str, Callable[[], object]] = {"kernel": lambda: gram_matrix(a_lists, b_lists)}
    if reference:
        fns["reference"] = lambda: torch_dot_gram(a_lists, b_lists)
    return fns


def summarize_kernel(times: dict[str, list[float]], a: Vectors, b: Vectors) -> dict:
    """Medians (s), bytes read (each of the K + N vectors once), read GB/s, and speed-up
    and max |kernel - reference| / max |reference| when the reference was timed."""
    read = vector_bytes(a) + vector_bytes(b)
    result = {
        "kernel_s": statistics.median(times["kernel"]),
        "kernel_all_s": times["kernel"],
        "bytes_read": read,
    }
    result["kernel_gb_s"] = read / result["kernel_s"] / 1e9
    if "reference" in times:
        result["reference_s"] = statistics.median(times["reference"])
        result["reference_all_s"] = times["reference"]
        result["speedup"] = result["reference_s"] / result["kernel_s"]
        a_lists, b_lists = [list(v) for v in a], [list(v) for v in b]
        got, want = gram_matrix(a_lists, b_lists), torch_dot_gram(a_lists, b_lists)
        result["max_rel_diff"] = float((got - want).abs().max() / want.abs().max())
    return result


def bench_kernel(a: Vectors, b: Vectors, repeats: int = 5, reference: bool = True) -> dict:
    """Kernel time and, side by side, the torch-dot loop's (see summarize_kernel)."""
    times = measure(kernel_fns(a, b, reference), repeats, a[0][0].device)
    return summarize_kernel(times, a, b)


def bandwidth_fns(buffers: list[torch.Tensor]) -> dict[str, Callable[[], object]]:
    """The timed calls of bench_bandwidth: "sum" (torch.sum over every buffer, read as
    float32) and on CUDA "copy" (a device-to-device copy of every buffer)."""
    as_f32 = [buf.view(torch.float32) if buf.numel() % 2 == 0 else buf.float() for buf in buffers]
    fns: dict[str, Callable[[], object]] = {"sum": lambda: [t.sum() for t in as_f32]}
    if buffers[0].device.type == "cuda":
        scratch = torch.empty_like(max(as_f32, key=torch.Tensor.numel))
        fns["copy"] = lambda: [scratch[: t.numel()].copy_(t) for t in as_f32]
    return fns


def summarize_bandwidth(times: dict[str, list[float]], buffers: list[torch.Tensor]) -> dict:
    """GB/s of the sum (bytes read) and of the copy (bytes read + written), medians."""
    total = sum(buf.numel() * buf.element_size() for buf in buffers)
    result = {"bytes": total, "sum_s": statistics.median(times["sum"])}
    result["sum_gb_s"] = total / result["sum_s"] / 1e9
    if "copy" in times:
        result["copy_s"] = statistics.median(times["copy"])
        result["copy_gb_s"] = 2 * total / result["copy_s"] / 1e9
    return result


def bench_bandwidth(buffers: list[torch.Tensor], repeats: int = 5) -> dict:
    """This machine's own bandwidth on the same bytes (see summarize_bandwidth)."""
    return summarize_bandwidth(measure(bandwidth_fns(buffers), repeats, buffers[0].device), buffers)


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def bench_variant(
    name: str, k: int, n: int, elements: int, device: torch.device, repeats: int
) -> dict:
    dtype_a, dtype_b = VARIANTS[name]
    shapes = gpt_slot_shapes(elements)
    need = elements * (k * dtype_a.itemsize + n * dtype_b.itemsize)
    have = available_bytes(device)
    if need > 0.9 * have:
        raise SystemExit(
            f"bench_gram: variant {name} needs {need / 1e9:.1f} GB for {k}+{n} vectors of "
            f"{elements} elements, but {device} has {have / 1e9:.1f} GB available; "
            "pass a smaller --elements"
        )
    a, a_buffers = make_vectors(k, shapes, dtype_a, device, seed=1)
    b, b_buffers = make_vectors(n, shapes, dtype_b, device, seed=2)
    buffers = a_buffers + b_buffers
    # Kernel, reference and bandwidth calls interleaved, so that load from other processes
    # falls on all of them alike.
    times = measure({**kernel_fns(a, b), **bandwidth_fns(buffers)}, repeats, device)
    result = {"variant": name, "K": k, "N": n, "elements": elements, "slots": len(shapes)}
    result.update(summarize_kernel(times, a, b))
    result.update(summarize_bandwidth(times, buffers))
    result["fraction_of_sum_bandwidth"] = result["kernel_gb_s"] / result["sum_gb_s"]
    if "copy_gb_s" in result:
        result["fraction_of_copy_bandwidth"] = result["kernel_gb_s"] / result["copy_gb_s"]
    del a, b, a_buffers, b_buffers, buffers
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def machine_description(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "gram_has_cuda": built_with_cuda(),
        "load_average_after": os.getloadavg(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def print_table(results: list[dict]) -> None:
    header = f"{'variant':>10} {'kernel s':>9} {'torch s':>9} {'speedup':>8} {'GB/s':>7} {'sum GB/s':>9} {'frac sum':>9} {'frac copy':>9}"
    print(header)
    for r in results:
        copy = (
            f"{r['fraction_of_copy_bandwidth']:.2f}" if "fraction_of_copy_bandwidth" in r else "-"
        )
        print(
            f"{r['variant']:>10} {r['kernel_s']:9.4f} {r['reference_s']:9.4f} {r['speedup']:8.1f} "
            f"{r['kernel_gb_s']:7.1f} {r['sum_gb_s']:9.1f} {r['fraction_of_sum_bandwidth']:9.2f} {copy:>9}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--elements", type=int, default=100_000_000, help="elements per vector")
    parser.add_argument("--k", type=int, default=16, help="domain vectors (rows)")
    parser.add_argument("--n", type=int, default=6, help="target vectors (columns)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--variants", default="fp32,bf16,fp32xbf16", help=f"comma list of {list(VARIANTS)}"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--event-config",
        default="configs/quickstart.yaml",
        help="model and corpus of the event timing",
    )
    parser.add_argument("--event-ds-config", default="configs/ds/zero1.json")
    parser.add_argument("--event-interval", type=int, default=5, help="steps between events")
    parser.add_argument("--events", type=int, default=6, help="events timed")
    parser.add_argument("--no-event", action="store_true", help="skip the event timing")
    parser.add_argument("--json", default=None, help="also write the JSON object to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    if not kernel_available(device):
        parser.error(
            f"--device {device}: megagrape._C was built without CUDA, so the kernel would be the "
            "torch reference; rebuild it on a machine with a CUDA torch and nvcc (tools/install.sh)"
        )
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    load_before = os.getloadavg()
    results = [bench_variant(v, args.k, args.n, args.elements, device, args.repeats) for v in names]
    event = None
    if not args.no_event:
        from trainer_bench import measure_event_cost

        event = measure_event_cost(
            args.event_config,
            args.event_ds_config,
            domains=args.k,
            targets=args.n,
            interval=args.event_interval,
            events=args.events,
            overrides=[],
        )
    machine = machine_description(device)
    machine["load_average_before"] = load_before
    text = json.dumps({"machine": machine, "results": results, "event": event}, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(text + "\n")
    if results:
        print_table(results)
    if event is not None:
        print(
            f"\nreweighting event ({event['method']}, K={event['domains']}, N={event['targets']}, "
            f"{event['model']['parameters'] / 1e6:.2f}M params, capture {event['capture_mode']}): "
            f"plain step {event['plain_step_s'] * 1000:.0f} ms, event step "
            f"{event['event_step_s'] * 1000:.0f} ms -> event = {event['event_fraction_of_step']:.2f} "
            f"of a step; every {event['interval']} steps that is "
            f"{event['amortized_overhead'] * 100:.1f}% of training time"
        )
        parts = event["event_parts_s"]
        print(
            f"  of the event: target gradients {parts['target_gradients'] * 1000:.0f} ms, probe "
            f"micro-batches {parts['probes'] * 1000:.0f} ms; capture + Gram + update "
            f"{parts['reweight'] * 1000:.0f} ms in all"
        )


if __name__ == "__main__":
    main()
