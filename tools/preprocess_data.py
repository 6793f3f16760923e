#!/usr/bin/env python
"""Tokenize domain jsonl files into Megatron .bin/.idx files (one pair per domain).

    python tools/preprocess_data.py --input DIR/domains --output-dir DIR/bin \\
        --tokenizer train:8192 --workers 2

Each ``<domain>.jsonl[.gz]`` ({"text": ...} per line) becomes
``<output-dir>/<domain>_text_document.{bin,idx}``, the names and format of Megatron-LM's
tools/preprocess_data.py. The tokenizer is saved to ``--tokenizer-dir`` (default: DIR/tokenizer
next to the output directory). Rerunning skips domains whose outputs are complete and current.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megagrape.data.preprocess import domain_files, preprocess_domains, read_sidecar
from megagrape.data.tokenizer_build import resolve_tokenizer
from megagrape.errors import DataError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--input", required=True, nargs="+", type=Path,
        help="a directory of <domain>.jsonl[.gz] files, or the files themselves",
    )  # fmt: skip
    parser.add_argument("--output-dir", required=True, type=Path, help="where .bin/.idx go")
    parser.add_argument(
        "--tokenizer", default="train:8192",
        help="train:VOCAB (byte-level BPE trained on the inputs), gpt2, or a path "
        "(tokenizer directory, HF tokenizer.json, .tiktoken file); default train:8192",
    )  # fmt: skip
    parser.add_argument(
        "--tokenizer-dir", type=Path, default=None,
        help="where the tokenizer is saved (default: <output-dir>/../tokenizer)",
    )  # fmt: skip
    parser.add_argument(
        "--cache-dir", type=Path,
        default=Path(os.environ.get("MEGAGRAPE_CACHE", Path.home() / ".cache" / "megagrape")),
        help="download cache for the GPT-2 tokenizer (default: $MEGAGRAPE_CACHE or ~/.cache/megagrape)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=max(1, os.cpu_count() or 1),
        help="tokenizing processes (default: one per CPU); 1 tokenizes in this process",
    )  # fmt: skip
    parser.add_argument("--json-key", default="text", help="the field holding the text")
    parser.add_argument(
        "--skip-bad-lines", action="store_true",
        help="skip lines that are not JSON objects with a text field (counted, warned) instead of failing",
    )  # fmt: skip
    parser.add_argument(
        "--append-eod", action=argparse.BooleanOptionalAction, default=True,
        help="append the end-of-document id to every document (default on)",
    )  # fmt: skip
    parser.add_argument(
        "--train-sample-bytes", type=int, default=20_000_000,
        help="text sampled across the domains to train a tokenizer (train:VOCAB)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the tokenizer training sample")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    inputs = args.input[0] if len(args.input) == 1 else list(args.input)
    try:
        files = domain_files(inputs)
        tokenizer_dir = args.tokenizer_dir or args.output_dir.resolve().parent / "tokenizer"
        start = time.perf_counter()
        tokenizer = resolve_tokenizer(
            args.tokenizer,
            list(files.values()),
            save_dir=tokenizer_dir,
            cache_dir=args.cache_dir,
            sample_bytes=args.train_sample_bytes,
            seed=args.seed,
        )
        tokenizer_seconds = time.perf_counter() - start
        print(f"tokenizer {tokenizer} saved in {tokenizer_dir} ({tokenizer_seconds:.1f} s)")
        prefixes = preprocess_domains(
            inputs,
            args.output_dir,
            tokenizer,
            workers=args.workers,
            skip_bad_lines=args.skip_bad_lines,
            append_eod=args.append_eod,
            text_key=args.json_key,
            progress=not args.quiet,
        )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    domains = {}
    for domain, prefix in prefixes.items():
        sidecar = read_sidecar(Path(prefix)) or {}
        domains[domain] = {
            "prefix": prefix,
            **sidecar.get("counts", {}),
            "seconds": sidecar.get("seconds"),
        }
    summary = {
        "tokenizer": {
            "dir": str(tokenizer_dir),
            "name": tokenizer.name,
            "vocab_size": tokenizer.vocab_size,
        },
        "tokenizer_seconds": round(tokenizer_seconds, 3),
        "total_seconds": round(time.perf_counter() - start, 3),
        "domains": domains,
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
