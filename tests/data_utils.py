"""Small data builders shared by the data-pipeline tests (tokenizer, preprocess, domains, targets)."""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterable
from pathlib import Path

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "they",
    "this",
    "which",
    "river",
    "mountain",
    "engine",
    "proof",
    "theorem",
    "kernel",
    "packet",
    "signal",
    "water",
    "forest",
    "music",
    "lemma",
    "function",
    "variable",
    "market",
    "city",
    "garden",
    "winter",
    "summer",
    "light",
    "sound",
]


def write_jsonl(path: Path, records: Iterable[dict]) -> Path:
    """Write one JSON object per line (gzip-compressed when ``path`` ends in .gz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(record) + "\n" for record in records).encode()
    path.write_bytes(gzip.compress(lines) if path.suffix == ".gz" else lines)
    return path


def synthetic_texts(count: int, seed: int, min_words: int = 5, max_words: int = 60) -> list[str]:
    """Reproducible English-like documents of ``min_words``..``max_words`` words."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))]
        texts.append(" ".join(words).capitalize() + ".")
    return texts


def write_domains(
    directory: Path, docs_per_domain: dict[str, int], seed: int = 0
) -> dict[str, list[str]]:
    """``<directory>/<name>.jsonl`` per domain with synthetic texts; returns the texts by domain."""
    texts = {}
    for offset, (name, count) in enumerate(docs_per_domain.items()):
        texts[name] = synthetic_texts(count, seed + offset)
        write_jsonl(directory / f"{name}.jsonl", ({"text": t} for t in texts[name]))
    return texts
