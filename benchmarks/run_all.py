"""Run every benchmark and regenerate docs/benchmarks.md from their JSON.

    .venv/bin/python benchmarks/run_all.py                  # full sizes (about 15 min on 2 CPU cores)
    .venv/bin/python benchmarks/run_all.py --quick          # small sizes, a few minutes
    .venv/bin/python benchmarks/run_all.py --only gram,step # some of them; the others keep their JSON
    .venv/bin/python benchmarks/run_all.py --report-only    # re-render the page from benchmarks/results/

Each benchmark writes benchmarks/results/<name>[-<device>].json: the command, the machine, the
wall time and the benchmark's own JSON. The page shows every JSON found there, so figures
taken on a GPU machine (run this script there with --device cuda, then copy the *-cuda.json
files back) appear next to the CPU ones with the GPU's name.

The mixture studies are the long ones (hours on 2 cores; each resumes where it stopped): the
page is built from the folders they write under benchmarks/results/ (STUDIES below names each
folder and the command that fills it), and their figures are copied to docs/benchmarks/.
--mixture-run also runs (or resumes) the default mixture benchmark first.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"
FIGURES = ROOT / "docs" / "benchmarks"

SIZES = {
    "full": {
        "blending": ["--samples", "100000000", "--domains", "64", "--repeats", "5"],
        "gram": ["--elements", "100000000", "--repeats", "5"],
        "step": ["--steps", "10", "--repeats", "5"],
    },
    "quick": {
        "blending": ["--samples", "2000000", "--domains", "64", "--repeats", "3"],
        "gram": ["--elements", "2000000", "--repeats", "3", "--events", "3"],
        "step": ["--steps", "4", "--repeats", "3"],
    },
}
SCRIPTS = {
    "blending": "benchmarks/bench_blending.py",
    "gram": "benchmarks/bench_gram.py",
    "step": "benchmarks/bench_step.py",
}


def machine(device: str) -> dict:
    """Where the figures were taken: CPU model and cores, memory, torch, GPU name."""
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    out = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "torch": torch.__version__,
        "device": device,
        "load_average": os.getloadavg(),
    }
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def run_benchmark(name: str, size: str, device: str) -> dict:
    """Run one benchmark script; returns the record stored in benchmarks/results/."""
    args = list(SIZES[size][name])
    if name == "gram":
        args += ["--device", device]
    with tempfile.TemporaryDirectory() as tmp:
        json_path = Path(tmp) / "out.json"
        command = [sys.executable, SCRIPTS[name], *args]
        shown = " ".join(["python", SCRIPTS[name], *map(shlex.quote, args)])
        print(f"[run_all] {shown}", flush=True)
        started = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(ROOT / "benchmarks")}
        done = subprocess.run(
            [*command, "--json", str(json_path)], cwd=ROOT, env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            raise SystemExit(f"[run_all] {shown} failed with exit code {done.returncode}")
        print(done.stdout.split("\n}\n")[-1].strip(), flush=True)
        result = json.loads(json_path.read_text())
    return {
        "benchmark": name,
        "command": shown,
        "size": size,
        "date": datetime.date.today().isoformat(),
        "seconds": round(seconds, 1),
        "machine": machine(device),
        "result": result,
    }


def load_records() -> dict[str, list[dict]]:
    """Every stored record, by benchmark name (CPU first, then other devices). Result files of
    other tools in the same folder (crash trials, capture memory) carry no ``benchmark`` key
    and are not this page's."""
    records: dict[str, list[dict]] = {}
    for path in sorted(RESULTS.glob("*.json")):
        record = json.loads(path.read_text())
        if "benchmark" in record and "machine" in record:
            records.setdefault(record["benchmark"], []).append(record)
    for rows in records.values():
        rows.sort(key=lambda r: r["machine"]["device"] != "cpu")
    return records


def where(record: dict) -> str:
    m = record["machine"]
    device = f"{m['gpu']} + " if m.get("gpu") else ""
    return (
        f"{device}{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, torch {m['torch']}; "
        f"{record['date']}, {record['seconds'] / 60:.1f} min, load average before "
        f"{m['load_average'][0]:.1f}"
    )


def blending_section(record: dict) -> list[str]:
    builders, change = record["result"]["builders"], record["result"]["weight_change"]
    lines = [
        f"`{record['command']}` ({where(record)})",
        "",
        f"One segment of {builders['samples']:,} samples over {builders['domains']} domains, "
        f"megatron-core's `build_blending_indices` against ours, alternating, median of "
        f"{builders['repeats']}; outputs identical: **{builders['identical']}** "
        f"(kernel: {builders['kernel']}).",
        "",
        "| builder | wall s | thread CPU s | ns/sample |",
        "|---|---|---|---|",
    ]
    for name in ("megatron", "megagrape"):
        m = builders[name]
        lines.append(
            f"| {name} | {m['wall_s']:.3f} | {m['cpu_s']:.3f} | {builders['ns_per_sample'][name]:.1f} |"
        )
    lines += [
        f"| **ratio ours / megatron** | **{builders['ratio_wall']:.2f}** | **{builders['ratio_cpu']:.2f}** | |",
        "",
        f"A weight change (MixtureSampler, {change['samples']:,} samples): the full stream builds "
        f"in {change['full_build_s']:.3f} s; `set_weights` at a fraction f then rebuilds only "
        "what follows it.",
        "",
        "| change at | set_weights ms | + rebuild s | cost / full build | samples after the change |",
        "|---|---|---|---|---|",
    ]
    for row in change["changes"]:
        lines.append(
            f"| {row['at_fraction']:.0%} | {row['set_weights_s'] * 1e3:.2f} | "
            f"{row['set_weights_plus_rebuild_s']:.3f} | {row['cost_vs_full']:.3f} | "
            f"{row['samples_after_change_fraction']:.2f} |"
        )
    return lines


def gram_section(record: dict) -> list[str]:
    rows = record["result"]["results"]
    if not rows:
        return []
    first = rows[0]
    lines = [
        f"`{record['command']}` ({where(record)})",
        "",
        f"K={first['K']} domain vectors against N={first['N']} target vectors of "
        f"{first['elements']:,} elements each, in {first['slots']} GPT-parameter-shaped slots "
        "that are views into one flat buffer per vector (ZeRO's layout). `torch loop` is "
        "torch.dot per slot per (k, n); bandwidth = bytes of the K + N vectors / time, against "
        "torch.sum over the same bytes (and, on a GPU, a device-to-device copy).",
        "",
        "| variant | kernel s | torch loop s | speedup | GB/s | torch.sum GB/s | fraction of sum | fraction of copy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        copy = (
            f"{r['fraction_of_copy_bandwidth']:.2f}" if "fraction_of_copy_bandwidth" in r else "-"
        )
        lines.append(
            f"| {r['variant']} | {r['kernel_s']:.4f} | {r['reference_s']:.4f} | {r['speedup']:.1f} | "
            f"{r['kernel_gb_s']:.1f} | {r['sum_gb_s']:.1f} | {r['fraction_of_sum_bandwidth']:.2f} | {copy} |"
        )
    return lines


def event_section(record: dict) -> list[str]:
    event = record["result"].get("event")
    if not event:
        return []
    parts = event["event_parts_s"]
    model = event["model"]
    return [
        f"`{record['command']}` ({where(record)})",
        "",
        f"{event['method']} with K={event['domains']} domains and N={event['targets']} targets "
        f"(the quickstart corpus's own, cycled) on the quickstart model ({model['layers']} "
        f"layers, hidden {model['hidden']}, seq {model['seq_length']}, "
        f"{model['parameters'] / 1e6:.2f}M parameters, global batch {event['global_batch_size']}), "
        f"capture mode `{event['capture_mode']}`, an event every {event['interval']} steps; "
        f"medians over {event['events_timed']} events and {event['plain_steps_timed']} plain steps.",
        "",
        "| plain step | event step | event cost | event / plain step | amortised over the interval |",
        "|---|---|---|---|---|",
        f"| {event['plain_step_s'] * 1e3:.0f} ms | {event['event_step_s'] * 1e3:.0f} ms | "
        f"{event['event_extra_s'] * 1e3:.0f} ms | **{event['event_fraction_of_step']:.2f}** | "
        f"{event['amortized_overhead']:.1%} |",
        "",
        f"Of the event: the N target gradients take {parts['target_gradients'] * 1e3:.0f} ms, "
        f"probe micro-batches for domains absent from the batch {parts['probes'] * 1e3:.0f} ms, "
        f"and capture + Gram + method update {parts['reweight'] * 1e3:.0f} ms in all (the "
        "capture total includes the target gradients). The target gradients are a forward and "
        "backward over N x targets.signal_batch_size items, so relative to a step they cost "
        "about N x signal_batch_size / global_batch_size: large for this 16-sequence batch, "
        "small for a real global batch of hundreds of sequences.",
        "",
        *projection_lines(record),
    ]


GPU_SCALE_CONFIG = "configs/reasoning.yaml"
GPU_MFU, GPU_BANDWIDTH_USE = 0.4, 0.8


def projection_lines(record: dict) -> list[str]:
    """The measured event projected to the gpu scale (configs/reasoning.yaml, the reasoning
    preset's K and N): on a machine with this record's FLOPs per byte, and on an H100."""
    from megagrape.config import load_config
    from megagrape.data.corpus.presets import get_preset
    from megagrape.experiments.event_projection import (
        H100_SXM_BF16_FLOPS,
        H100_SXM_BYTES_PER_S,
        device_balance,
        measured_from_bench_gram,
        project_event,
        shape_from_config,
    )

    event_cfg = load_config(
        ROOT / command_option(record["command"], "--event-config", EVENT_CONFIG)
    )
    measured = measured_from_bench_gram(
        record["result"], event_cfg.model.flops_per_token(), event_cfg.targets.signal_batch_size
    )
    preset = get_preset("reasoning")
    gpu = shape_from_config(
        load_config(ROOT / GPU_SCALE_CONFIG), len(preset.domains), len(preset.targets)
    )
    h100 = device_balance(H100_SXM_BF16_FLOPS, GPU_MFU, H100_SXM_BYTES_PER_S, GPU_BANDWIDTH_USE)
    balances = [("this machine's balance", measured.balance)]
    if record["machine"]["device"] == "cpu":
        balances.append(
            (f"H100 (MFU {GPU_MFU:.0%}, {GPU_BANDWIDTH_USE:.0%} of HBM bandwidth)", h100)
        )
    lines = [
        f"**Projected to the gpu scale** (`{GPU_SCALE_CONFIG}`: {gpu.parameters / 1e6:.0f}M "
        f"parameters, K={gpu.domains}, N={gpu.targets}, global batch {gpu.global_batch_size} x "
        f"{gpu.seq_length}, signal batch {gpu.signal_batch_size}, R={gpu.interval}), with "
        "`megagrape/experiments/event_projection.py`: the target gradients scale with "
        "N x signal_batch_size / global_batch_size (compute-bound, like the step); the rest "
        "with the bytes of the K + N gradients over the step's FLOPs, times the machine's "
        f"FLOPs per byte (this machine: {measured.balance:.1f}, from its step FLOP/s and fp32 "
        "Gram bandwidth). A projection, not a measurement: the GPU check measures it.",
        "",
        "| machine balance | target gradients | rest | event / plain step | amortised over R |",
        "|---|---|---|---|---|",
    ]
    for label, balance in balances:
        p = project_event(measured, gpu, balance)
        lines.append(
            f"| {label}: {balance:.1f} FLOPs/B | {p.target_steps:.2f} | {p.rest_steps:.2f} | "
            f"**{p.event_steps:.2f}** | {p.overhead:.1%} |"
        )
    return lines


EVENT_CONFIG = "configs/quickstart.yaml"


def command_option(command: str, option: str, default: str) -> str:
    """The value of ``option`` in a recorded shell command, or ``default`` when it is absent."""
    words = shlex.split(command)
    return words[words.index(option) + 1] if option in words[:-1] else default


def step_section(record: dict) -> list[str]:
    r = record["result"]
    return [
        f"`{record['command']}` ({where(record)})",
        "",
        f"`Trainer.train_step()` with a static mixture against a bare DeepSpeed loop on the same "
        f"engine and the same micro-batches ({r['model']['layers']} layers, hidden "
        f"{r['model']['hidden']}, seq {r['model']['seq_length']}, global batch "
        f"{r['global_batch_size']} in {r['micro_batches_per_step']} micro-batches, "
        f"{r['torch_threads']} torch threads); blocks of {r['steps_per_block']} steps alternate "
        f"{r['repeats']} times, medians of the per-step times.",
        "",
        "| megagrape step | bare step | overhead | tokens/s |",
        "|---|---|---|---|",
        f"| {r['megagrape_median_s'] * 1e3:.1f} ms | {r['bare_median_s'] * 1e3:.1f} ms | "
        f"**{r['overhead']:+.1%}** | {r['tokens_per_s']:,.0f} |",
    ]


def device_sections(rows: list[dict], render) -> list[str]:
    lines: list[str] = []
    for record in rows:
        body = render(record)
        if body:
            label = record["machine"].get("gpu") or "CPU"
            lines += [f"**{label}**", "", *body, ""]
    return lines


@dataclass(frozen=True)
class Study:
    """A mixture study whose results live in one folder under benchmarks/results/."""

    folder: str
    title: str
    command: str
    """The command that produces (and resumes) the folder."""
    markdown: str
    """The study's own Markdown report in the folder."""


STUDIES = (
    Study(
        "mixture_reasoning",
        "Mixture quality: reasoning preset (multiple-choice targets)",
        "python tools/bench_mixture.py --methods uniform,doge,grape --seeds 5 "
        "--out benchmarks/results/mixture_reasoning; for s in 1 2 3; do python tools/regmix.py "
        "--preset reasoning --seed $s --out benchmarks/results/regmix_reasoning/s$s; done; "
        "python tools/bench_mixture.py "
        "--methods uniform,natural,doremi,odm,mgda,imtl,epo,hybrid,file --seeds 3 "
        "--weights-file 'benchmarks/results/regmix_reasoning/s{seed}/regmix_weights.json' "
        "--out benchmarks/results/mixture_reasoning",
        "results.md",
    ),
    Study(
        "mixture_reasoning_raw",
        "Mixture quality: reasoning preset, GRAPE with raw gradient products (the default before "
        "cosine)",
        "python tools/bench_mixture.py --methods uniform,grape "
        "--method-override grape:mixture.options.gradient_scaling=raw "
        "--out benchmarks/results/mixture_reasoning_raw",
        "results.md",
    ),
    Study(
        "mixture_multilingual",
        "Mixture quality: multilingual preset (held-out LM-text targets)",
        "python tools/bench_mixture.py --preset multilingual --methods uniform,grape "
        "--out benchmarks/results/mixture_multilingual",
        "results.md",
    ),
    Study(
        "gradient_scaling",
        "GRAPE gradient scaling: one setting on two model sizes and two learning rates",
        "python tools/study_gradient_scaling.py",
        "study.md",
    ),
    Study(
        "transfer_reasoning",
        "Two-stage transfer: the proxy's average GRAPE mixture on a 2.3x larger model",
        "python tools/proxy_mixture.py --proxy benchmarks/results/mixture_reasoning "
        "--out benchmarks/results/transfer_reasoning/proxy_mixture.json && "
        "python tools/bench_mixture.py --scale cpu-2x --methods uniform,file "
        "--weights-file benchmarks/results/transfer_reasoning/proxy_mixture.json "
        "--out benchmarks/results/transfer_reasoning",
        "results.md",
    ),
    Study(
        "sweep_grape",
        "GRAPE sensitivity: mu_a x mu_z x interval x smoothing",
        "python tools/sweep_grape.py --preset reasoning --out benchmarks/results/sweep_grape",
        "sweep.md",
    ),
)


def study_section(study: Study, folder: Path) -> list[str]:
    """The study's report with its headings demoted under this page's and its figures
    copied to docs/benchmarks/<folder>_<name>.png; a line saying how to run it if absent."""
    report = folder / study.markdown
    if not report.exists():
        return [f"Not run yet: `{study.command}`."]
    FIGURES.mkdir(parents=True, exist_ok=True)
    figures = []
    for png in sorted(folder.glob("*.png")):
        name = f"{study.folder}_{png.name}"
        shutil.copyfile(png, FIGURES / name)
        figures.append(f"![{png.stem}](benchmarks/{name})")
    text = report.read_text().split("\n## Figures")[0]  # its figures are linked below instead
    lines = text.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]  # the report's own title: this page's section heading replaces it
    body = [("#" + line if line.startswith("##") else line) for line in lines]
    intro = [f"`{study.command}`"]
    runs_file = folder / "results.json"
    if runs_file.exists():
        runs = json.loads(runs_file.read_text())["runs"]
        minutes = sum(r["seconds"] for r in runs) / 60
        intro = [
            f"`{study.command}` (settings and machine below). The {len(runs)} runs took "
            f"{minutes:.0f} run-minutes in all (runs go 2 at a time at the cpu scale, and the "
            "times include any other load on the machine while they ran)."
        ]
    return [*intro, *body, "", *figures]


GPU_TODO = [
    "No GPU figures yet: no GPU was available to the runs above. On a GPU machine run",
    "",
    "    python benchmarks/run_all.py --device cuda --only gram",
    "    python tools/bench_mixture.py --scale gpu --out runs/bench_mixture_gpu",
    "",
    "and copy benchmarks/results/*-cuda.json back; this page then shows them beside the CPU rows.",
]


def render_page(records: dict[str, list[dict]], results_dir: Path) -> str:
    has_gpu = any(r["machine"].get("gpu") for rows in records.values() for r in rows)
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/run_all.py` from benchmarks/results/*.json and the "
        "mixture benchmark's results; do not edit by hand. Ratios are measured side by side in "
        "one run (ours against the reference, alternating), and times are medians of repeats.",
        "",
    ]
    if not has_gpu:
        lines += [*GPU_TODO, ""]
    sections = [
        ("Blending builder", "blending", blending_section),
        ("Sharded Gram kernel", "gram", gram_section),
        ("Reweighting overhead", "gram", event_section),
        ("Step overhead", "step", step_section),
    ]
    for title, name, render in sections:
        lines += [f"## {title}", ""]
        rows = records.get(name, [])
        lines += device_sections(rows, render) if rows else ["Not measured yet.", ""]
    for study in STUDIES:
        lines += [f"## {study.title}", "", *study_section(study, results_dir / study.folder), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--only", default="blending,gram,step", help="benchmarks to run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the Gram kernel's device)")
    parser.add_argument("--report-only", action="store_true", help="only re-render the page")
    parser.add_argument(
        "--mixture-run",
        action="store_true",
        help="also run (or resume) the default mixture benchmark",
    )
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(SCRIPTS))
    if unknown:
        parser.error(f"--only: unknown {unknown}; choose from {sorted(SCRIPTS)}")
    if not args.report_only:
        RESULTS.mkdir(parents=True, exist_ok=True)
        suffix = "" if args.device == "cpu" else f"-{args.device.split(':')[0]}"
        for name in names:
            record = run_benchmark(name, "quick" if args.quick else "full", args.device)
            (RESULTS / f"{name}{suffix}.json").write_text(json.dumps(record, indent=1) + "\n")
        if args.mixture_run:
            command = [sys.executable, *shlex.split(STUDIES[0].command)[1:]]
            subprocess.run(command, cwd=ROOT, check=True)
    PAGE.write_text(render_page(load_records(), RESULTS))
    print(f"[run_all] wrote {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
