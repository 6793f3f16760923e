"""Training throughput (tokens/s) and MFU of a GPT through megagrape's Trainer, without and
with GRAPE reweighting events every R steps.

Two runs in one process, each on a fresh one-rank Trainer (benchmarks/trainer_bench.py):

* **without events**: ``mixture.method=static``; ``--warmup`` untimed steps, then ``--steps``
  timed ones;
* **with events**: ``mixture.method=grape``, ``mixture.interval=R``; ``--warmup`` untimed
  steps, then ``--intervals`` x R timed steps, which hold exactly ``--intervals`` events.

tokens/s is tokens over the timed window / its wall time (CUDA synchronised at both ends).
The MFU of each run is 6 * parameters + 12 * layers * hidden * seq_length FLOPs per token
(forward + backward; parameters counted once, the tied embedding included) times tokens/s,
over the device's dense bf16 peak from PEAK_BF16_FLOPS (keyed by torch.cuda.get_device_name;
no MFU where no key matches, the CPU included). The event cost is measured two ways: the
amortised overhead 1 - tokens/s with events / tokens/s without, and the median event step
minus the median plain step of the GRAPE run.

The corpus is synthetic and built offline in --workdir: --domains domains of pseudo-words,
--targets multiple-choice target tasks, a byte-level BPE trained on them (megagrape's own
train_bpe and preprocess_domains). The model's vocabulary (padded to a multiple of 128) is
the model's shape, independent of the tokenizer's smaller one.

    python benchmarks/bench_throughput.py --preset gpt2-small --json out.json   # GPU: bf16
    python benchmarks/bench_throughput.py --preset tiny --warmup 1 --steps 2 --interval 2 --intervals 1

Prints one JSON object; every figure in it comes with the command that produced it.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer_bench import start_trainer

from megagrape import parallel

PRESETS = {
    # GPT-2 small: 12 layers, hidden 768, 12 heads, 1024 tokens, GPT-2's 50257-id vocabulary
    # (padded to 50304) and learned positions, tied embedding: 124.4M parameters.
    "gpt2-small": {
        "model.num_layers": 12,
        "model.hidden_size": 768,
        "model.num_attention_heads": 12,
        "model.seq_length": 1024,
        "model.vocab_size": 50257,
        "model.position_embedding": "learned_absolute",
        "train.micro_batch_size": 16,
        "train.global_batch_size": 32,
    },
    # CPU smoke test (benchmarks/gpu_check.sh --dry-run): seconds per step on 2 cores.
    "tiny": {
        "model.num_layers": 2,
        "model.hidden_size": 64,
        "model.num_attention_heads": 4,
        "model.seq_length": 64,
        "model.vocab_size": 2048,
        "model.position_embedding": "learned_absolute",
        "train.micro_batch_size": 2,
        "train.global_batch_size": 4,
    },
}

# Dense (no sparsity) bf16 tensor-core peak, FLOP/s. The first key that is a substring of
# torch.cuda.get_device_name() wins, so the more specific names come first.
PEAK_BF16_FLOPS = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # H100 SXM ("NVIDIA H100 80GB HBM3")
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
}

TOKENIZER_VOCAB = 1024
"""Ids of the synthetic corpus's BPE (any model vocabulary >= this fits)."""


def device_peak() -> tuple[str | None, float | None, str]:
    """(table key, dense bf16 FLOP/s, device name) of this process's device; (None, None, name)
    when the table has no key for it (every CPU)."""
    if not torch.cuda.is_available():
        return None, None, "cpu"
    name = torch.cuda.get_device_name()
    key = next((k for k in PEAK_BF16_FLOPS if k in name), None)
    return key, (PEAK_BF16_FLOPS[key] if key else None), name


def flops_per_token(layers: int, hidden: int, seq_length: int, parameters: int) -> float:
    """6 * parameters (matmuls, forward + backward) + 12 * layers * hidden * seq_length
    (attention scores and values, no causal discount): training FLOPs per token."""
    return 6.0 * parameters + 12.0 * layers * hidden * seq_length


def build_corpus(root: Path, domains: int, targets: int, seed: int = 0) -> Path:
    """Write root/domains/*.jsonl (about 400 kB of pseudo-word text each, its own word
    frequencies per domain), root/targets/*.jsonl (40 two-choice items each), root/tokenizer
    (a byte-level BPE of TOKENIZER_VOCAB ids) and root/bin (Megatron .bin/.idx); return root.
    Reuses a finished corpus."""
    from megagrape.data.preprocess import preprocess_domains
    from megagrape.data.tokenizer_build import train_bpe

    if (root / "done").exists():
        return root
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    words = sorted({"".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(3000)})
    (root / "domains").mkdir(parents=True, exist_ok=True)
    for d in range(domains):
        weights = [rng.random() ** 3 for _ in words]
        with open(root / "domains" / f"domain{d:02d}.jsonl", "w") as out:
            for _ in range(600):
                text = " ".join(rng.choices(words, weights, k=rng.randint(60, 160))) + "."
                out.write(json.dumps({"text": text}) + "\n")
    (root / "targets").mkdir(exist_ok=True)
    for t in range(targets):
        with open(root / "targets" / f"target{t:02d}.jsonl", "w") as out:
            for i in range(40):
                context = " ".join(rng.choices(words, k=12))
                choices = [" " + " ".join(rng.choices(words, k=3)) for _ in range(2)]
                item = {"id": f"t{t}-{i}", "context": context, "choices": choices, "gold": i % 2}
                out.write(json.dumps(item) + "\n")
    tokenizer = train_bpe(sorted((root / "domains").glob("*.jsonl")), TOKENIZER_VOCAB)
    tokenizer.save(root / "tokenizer")
    preprocess_domains(root / "domains", root / "bin", tokenizer, workers=1, progress=False)
    (root / "done").write_text("ok\n")
    return root


def timed_run(
    overrides: list[str], ds_config: str, warmup: int, timed: int
) -> tuple[dict, str, list[float], list[bool]]:
    """Build a Trainer, run ``warmup`` + ``timed`` steps; returns (model facts, the mixture
    method's name, seconds of each timed step, whether each timed step ended in an event). CUDA is synchronised around
    every step, so a step's seconds include its kernels."""
    overrides = [*overrides, f"train.train_iters={warmup + timed}"]
    trainer = start_trainer(None, ds_config, overrides)
    try:
        cuda = trainer.env.device.type == "cuda"
        seconds, events = [], []
        for _ in range(warmup + timed):
            is_event = trainer.mixture.is_event(trainer.step)
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            trainer.train_step()
            if cuda:
                torch.cuda.synchronize()
            if trainer.step > warmup:
                seconds.append(time.perf_counter() - started)
                events.append(is_event)
        cfg = trainer.cfg
        model = {
            "layers": cfg.model.num_layers,
            "hidden": cfg.model.hidden_size,
            "heads": cfg.model.num_attention_heads,
            "seq_length": cfg.model.seq_length,
            "padded_vocab": cfg.model.padded_vocab_size(trainer.env.tp_size),
            "parameters": cfg.model.num_parameters(trainer.env.tp_size),
            "transformer_impl": cfg.model.transformer_impl,
            "global_batch_size": cfg.train.global_batch_size,
            "micro_batch_size": cfg.train.micro_batch_size,
            "domains": len(trainer.data.domains),
            "targets": len(trainer.data.tasks),
            "device": str(trainer.env.device),
            "bf16": bool(trainer.module.engine.bfloat16_enabled()),
        }
        model_method = trainer.mixture.method.name
    finally:
        parallel.destroy_distributed()
    return model, model_method, seconds, events


def summarize(
    model: dict, method: str, seconds: list[float], events: list[bool], peak: float | None
) -> dict:
    """tokens/s over the timed steps, step-time medians (s), and MFU where the peak is known."""
    tokens = model["global_batch_size"] * model["seq_length"] * len(seconds)
    tokens_per_s = tokens / sum(seconds)
    per_token = flops_per_token(
        model["layers"], model["hidden"], model["seq_length"], model["parameters"]
    )
    plain = [s for s, e in zip(seconds, events) if not e]
    event = [s for s, e in zip(seconds, events) if e]
    return {
        "method": method,
        "timed_steps": len(seconds),
        "events_timed": len(event),
        "tokens_timed": tokens,
        "seconds_timed": sum(seconds),
        "tokens_per_s": tokens_per_s,
        "plain_step_s": statistics.median(plain) if plain else None,
        "event_step_s": statistics.median(event) if event else None,
        "flops_per_token": per_token,
        "model_flops_per_s": per_token * tokens_per_s,
        "mfu": per_token * tokens_per_s / peak if peak else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="gpt2-small")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps of each run")
    parser.add_argument("--steps", type=int, default=100, help="timed steps without events")
    parser.add_argument("--interval", type=int, default=100, help="R: steps between events")
    parser.add_argument("--intervals", type=int, default=2, help="timed intervals with events")
    parser.add_argument("--domains", type=int, default=8, help="K, training domains")
    parser.add_argument("--targets", type=int, default=4, help="N, target tasks")
    parser.add_argument(
        "--transformer-impl",
        choices=["auto", "local", "transformer_engine"],
        default="local",
        help="model.transformer_impl (layer spec)",
    )
    parser.add_argument(
        "--no-events", action="store_true", help="only the run without events (a layer-spec check)"
    )
    parser.add_argument("--ds-config", default="configs/ds/zero1.json")
    parser.add_argument("--workdir", default=None, help="corpus and run outputs (default: temp)")
    parser.add_argument("--json", default=None, help="also write the JSON object to this file")
    args = parser.parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    with tempfile.TemporaryDirectory(prefix="megagrape_throughput_") as tmp:
        work = Path(args.workdir or tmp)
        corpus = build_corpus(work / "corpus", args.domains, args.targets)
        common = [
            *(f"{k}={v}" for k, v in PRESETS[args.preset].items()),
            f"model.transformer_impl={args.transformer_impl}",
            f"data.corpus={corpus}",
            f"data.cache_dir={work}/cache",
            f"output_dir={work}/runs",
            "train.lr_warmup_iters=0",
            "targets.signal_batch_size=4",
        ]
        key, peak, device_name = device_peak()
        runs = {}
        model, method, seconds, events = timed_run(
            [*common, f"name=plain-{args.transformer_impl}", "mixture.method=static"],
            args.ds_config,
            args.warmup,
            args.steps,
        )
        runs["without_events"] = summarize(model, method, seconds, events, peak)
        if not args.no_events:
            _, method, seconds, events = timed_run(
                [
                    *common,
                    f"name=grape-{args.transformer_impl}",
                    "mixture.method=grape",
                    f"mixture.interval={args.interval}",
                    "mixture.warmup_steps=0",
                ],
                args.ds_config,
                args.warmup,
                args.interval * args.intervals,
            )
            runs["with_events"] = summarize(model, method, seconds, events, peak)
    result = {
        "command": command,
        "preset": args.preset,
        "model": model,
        "device_name": device_name,
        "peak_key": key,
        "peak_bf16_flops": peak,
        "mfu_formula": "(6 * parameters + 12 * layers * hidden * seq_length) * tokens_per_s / peak",
        "interval": None if args.no_events else args.interval,
        "torch": torch.__version__,
        **runs,
    }
    if not args.no_events:
        without, with_events = runs["without_events"], runs["with_events"]
        result["amortized_event_overhead"] = (
            1 - with_events["tokens_per_s"] / without["tokens_per_s"]
        )
        if with_events["event_step_s"] is not None and with_events["plain_step_s"] is not None:
            extra = with_events["event_step_s"] - with_events["plain_step_s"]
            result["event_extra_s"] = extra
            result["event_extra_fraction_of_interval"] = extra / (
                args.interval * without["plain_step_s"]
            )
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
