"""Gradient memory the capture holds per rank, on every layout, against the model's size.

    python benchmarks/capture_memory.py [--out benchmarks/results/capture_memory.json]

Runs one GRAPE event step of the 2-layer test model (K = 3 domains, N = 2 targets, the test
corpus) in 2 processes over gloo for each layout, with every capture need switched on (G, D,
target Gram, norms), and records per rank: the bytes of one gradient in slot form, the bytes
of the whole model's float32 gradient, and the peak bytes of gradients the capture held
(stored target gradients, domain gradients, the round snapshot). Activations of the capture's
own passes are transient and not counted.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.corpus_fixture import build_test_corpus
from tests.dist_utils import run_distributed

LAYOUTS = {
    "dp2-zero1 (linear)": ("configs/ds/zero1.json", ()),
    "dp2-zero2 (probe)": ("configs/ds/zero2.json", ()),
    "dp2-zero3 (partitioned)": ("configs/ds/zero3.json", ()),
    "pp2-zero1 (pipeline)": ("configs/ds/zero1.json", ("parallel.pipeline_parallel=2",)),
}
NEEDS = frozenset(
    {"domain_target_gram", "domain_gram", "target_losses", "domain_sq_norms", "target_gram"}
)


def _one_event(rank, world_size, corpus, out, ds_path, layout):
    from megagrape import parallel
    from megagrape.ds_config import read_ds_config, resolve_ds_config
    from megagrape.train import build_trainer
    from megagrape.train.capture import CaptureSettings, GradientCapture, build_gradient_source
    from tests.run_utils import tiny_config

    cfg = tiny_config(corpus, out, "memory", "mixture.method=grape", "mixture.interval=1", *layout)
    env = parallel.init_distributed(cfg.parallel, cfg.seed)
    pipeline = cfg.parallel.pipeline_parallel > 1
    ds = resolve_ds_config(read_ds_config(ds_path), cfg, env.world_size, env.device, pipeline)
    trainer = build_trainer(cfg, ds, env)
    mixture = trainer.mixture
    mode = mixture.capture.mode
    source = build_gradient_source(
        mode, trainer.module.engine, cfg.model, env, cfg.train.micro_batch_size
    )
    mixture.capture = GradientCapture(
        NEEDS, mode, source, env, trainer.data.tasks, trainer.data.datasets,
        CaptureSettings.from_config(cfg),
    )  # fmt: skip
    seen = []
    after_step = mixture.after_step

    def keep(plan, steps_done, record, observed, lr):
        seen.append(observed)
        return after_step(plan, steps_done, record, observed, lr)

    mixture.after_step = keep
    started = time.perf_counter()
    trainer.train_step()
    seconds = time.perf_counter() - started
    full = 4 * sum(getattr(p, "ds_numel", p.numel()) for p in source.params)
    parallel.destroy_distributed()
    return {
        "mode": mode,
        "rank": rank,
        "slot_bytes": source.slot_bytes(),
        "stage_gradient_bytes": full,
        "stored_bytes": seen[0].stored_bytes,
        "event_step_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="benchmarks/results/capture_memory.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="capture_memory_"))
    corpus = build_test_corpus(work / "corpus")
    rows = {}
    for name, (ds_path, layout) in LAYOUTS.items():
        results = run_distributed(_one_event, 2, args=(corpus, work / name[:9], ds_path, layout))
        rows[name] = results
        for r in results:
            print(
                f"{name:26s} rank {r['rank']}: one gradient {r['slot_bytes'] / 1e3:8.1f} kB "
                f"(model gradient on this rank's stage {r['stage_gradient_bytes'] / 1e3:8.1f} kB), "
                f"held {r['stored_bytes'] / 1e3:8.1f} kB = "
                f"{r['stored_bytes'] / r['slot_bytes']:.2f} gradients"
            )
    document = {
        "command": "python benchmarks/capture_memory.py",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "model": "tests/run_utils.py tiny_config: 2 layers, hidden 64, vocab 2048, seq 64",
        "domains": 3,
        "targets": 2,
        "needs": sorted(NEEDS),
        "layouts": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
