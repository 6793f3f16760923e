#!/usr/bin/env python
"""Export a trained megagrape model as a Hugging Face transformers checkpoint (+ tokenizer).

    python tools/export_hf.py --checkpoint runs/quickstart/checkpoints/step_000200 \\
        --config runs/quickstart/config.yaml --out hf/quickstart [--verify]

The architecture is chosen from the model config (GPT-2, Llama, GPT-NeoX or Starcoder2: the
first that computes exactly the same function; see docs/export.md); the tokenizer (default:
the run's data tokenizer) is written next to the model. The output loads with
``AutoModelForCausalLM.from_pretrained(OUT)`` / ``AutoTokenizer.from_pretrained(OUT)``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from megagrape.config import load_config
from megagrape.errors import ConfigError, DataError
from megagrape.export import ARCHITECTURES, export_hf
from megagrape.train.checkpoint import newest_complete

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", required=True, type=Path,
        help="a checkpoint directory (RUN_DIR/checkpoints/step_N), or RUN_DIR/checkpoints for "
        "the newest complete one",
    )  # fmt: skip
    parser.add_argument(
        "--config", required=True, type=Path, help="the run's config (RUN_DIR/config.yaml)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument(
        "--tokenizer", default=None,
        help="tokenizer directory or file (default: the run's data tokenizer); 'none' to skip",
    )  # fmt: skip
    parser.add_argument(
        "--architecture", default="auto", choices=["auto", *ARCHITECTURES],
        help="HF architecture (default auto: the first that represents the model exactly)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", default=None, choices=list(DTYPES),
        help="cast the weights (default: as saved in the checkpoint)",
    )  # fmt: skip
    parser.add_argument(
        "--verify", action="store_true",
        help="compare the exported model's logits with megatron's on random tokens (CPU, "
        "holds the model twice in memory)",
    )  # fmt: skip
    parser.add_argument(
        "--verify-tolerance", type=float, default=1e-3,
        help="largest allowed |logit difference| for --verify (default 1e-3)",
    )  # fmt: skip
    return parser.parse_args(argv)


def resolve_checkpoint(path: Path) -> Path:
    """A step_N directory as given, or the newest complete one under a checkpoints root."""
    if path.is_dir() and not any(path.glob("*model_states.pt")) and any(path.glob("step_*")):
        info, skipped = newest_complete(path)
        for note in skipped:
            print(note, file=sys.stderr)
        if info is None:
            raise ConfigError(f"--checkpoint {path}: no complete step_N checkpoint in it")
        return info.path
    return path


def resolve_tokenizer(arg: str | None, run_tokenizer: str) -> Path | None:
    if arg is not None:
        return None if arg == "none" else Path(arg)
    if not run_tokenizer or not Path(run_tokenizer).exists():
        raise ConfigError(
            f"the run's tokenizer {run_tokenizer!r} (data.tokenizer / data.corpus in --config) "
            "is not there from this directory; pass --tokenizer DIR, or --tokenizer none"
        )
    return Path(run_tokenizer)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run_cfg = load_config(args.config)
        checkpoint = resolve_checkpoint(args.checkpoint)
        tokenizer = resolve_tokenizer(args.tokenizer, run_cfg.data.resolved_tokenizer())
        start = time.perf_counter()
        result = export_hf(
            checkpoint,
            run_cfg.model,
            args.out,
            tokenizer_path=tokenizer,
            architecture=args.architecture,
            dtype=DTYPES[args.dtype] if args.dtype else None,
        )
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"exported {checkpoint} ({result.layout}, TP={result.tensor_parallel}) as "
        f"{result.hf_class} to {result.out_dir}: vocabulary {result.vocab_size} "
        f"(checkpoint rows {result.padded_vocab_size}), {str(result.dtype).removeprefix('torch.')}, "
        f"tokenizer {'none' if tokenizer is None else tokenizer} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    if args.verify:
        from megagrape.export.verify import max_logit_difference

        difference = max_logit_difference(
            result.out_dir, result.state, run_cfg.model, result.vocab_size
        )
        verdict = "ok" if difference <= args.verify_tolerance else "FAILED"
        print(f"verify: max |logit difference| vs megatron = {difference:.3e} ({verdict})")
        if difference > args.verify_tolerance:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
