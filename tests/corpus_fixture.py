"""A small real corpus the tests build offline: three domains and two multiple-choice targets.

Domains come from text already on every machine that runs the tests: the running Python's
standard-library sources (code), the docstrings of those modules (English technical prose)
and the licence texts shipped in site-packages (legal). The targets are cloze items built
from held-out docstring and licence sentences: the context is a sentence's opening words,
the gold choice its true ending and the distractors endings of other sentences. A trained
4096-token BPE tokenizes everything into Megatron .bin/.idx files with the project's own
preprocessing, exactly as a user's corpus would be.
"""

from __future__ import annotations

import ast
import json
import random
import re
import sysconfig
from pathlib import Path

from megagrape.data.preprocess import preprocess_domains
from megagrape.data.tokenizer_build import train_bpe

DOMAIN_BYTES = 300_000
VOCAB = 2048


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if p.stat().st_size > 2_000)


def _code_documents() -> list[str]:
    return [f"# {p.name}\n{p.read_text(errors='replace')}" for p in _stdlib_files()]


def _docstring_documents() -> list[str]:
    docs = []
    for path in _stdlib_files():
        try:
            tree = ast.parse(path.read_text(errors="replace"))
        except SyntaxError:
            continue
        parts = [
            ast.get_docstring(node) or ""
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
        ]
        text = "\n\n".join(p for p in parts if len(p) > 40)
        if text:
            docs.append(text)
    return docs


def _licence_documents() -> list[str]:
    site = Path(sysconfig.get_paths()["purelib"])
    files = sorted(
        p
        for p in site.glob("*.dist-info/**/*")
        if p.is_file() and re.match(r"(LICEN[CS]E|COPYING)", p.name.upper())
    )
    texts = sorted({p.read_text(errors="replace") for p in files if p.stat().st_size > 500})
    return texts


def _take(documents: list[str], limit: int) -> list[str]:
    out, total = [], 0
    for doc in documents:
        if total >= limit:
            break
        out.append(doc)
        total += len(doc)
    return out


def _sentences(documents: list[str]) -> list[str]:
    found = []
    for doc in documents:
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
            words = sentence.split()
            if 10 <= len(words) <= 40 and sentence[0].isupper():
                found.append(sentence)
    return found


def _cloze_items(sentences: list[str], count: int, rng: random.Random) -> list[dict]:
    items = []
    pool = sentences[:]
    rng.shuffle(pool)
    for i, sentence in enumerate(pool[:count]):
        words = sentence.split()
        cut = len(words) // 2
        context, ending = " ".join(words[:cut]), " " + " ".join(words[cut:])
        others = [pool[(i + j) % len(pool)].split() for j in (101, 211, 307)]
        distractors = [" " + " ".join(w[len(w) // 2 :]) for w in others]
        choices = [ending, *distractors]
        rng.shuffle(choices)
        items.append(
            {
                "id": f"cloze-{i}",
                "context": context,
                "choices": choices,
                "gold": choices.index(ending),
            }
        )
    return items


def build_test_corpus(root: Path) -> Path:
    """Write root/domains, root/targets, root/tokenizer and root/bin; return root."""
    rng = random.Random(0)
    docstrings = _docstring_documents()
    licences = _licence_documents()
    split_doc, split_lic = len(docstrings) * 4 // 5, len(licences) * 4 // 5
    domains = {
        "code": _take(_code_documents(), DOMAIN_BYTES),
        "prose": _take(docstrings[:split_doc], DOMAIN_BYTES),
        "legal": _take(licences[:split_lic], DOMAIN_BYTES),
    }
    (root / "domains").mkdir(parents=True, exist_ok=True)
    for name, documents in domains.items():
        with open(root / "domains" / f"{name}.jsonl", "w") as handle:
            for doc in documents:
                handle.write(json.dumps({"text": doc}) + "\n")
    (root / "targets").mkdir(exist_ok=True)
    targets = {
        "prose_cloze": _cloze_items(_sentences(docstrings[split_doc:]), 120, rng),
        "legal_cloze": _cloze_items(_sentences(licences[split_lic:]), 120, rng),
    }
    for name, items in targets.items():
        with open(root / "targets" / f"{name}.jsonl", "w") as handle:
            for item in items:
                handle.write(json.dumps(item) + "\n")
    files = sorted((root / "domains").glob("*.jsonl"))
    tokenizer = train_bpe(files, VOCAB, sample_bytes=1_000_000)
    tokenizer.save(root / "tokenizer")
    preprocess_domains(root / "domains", root / "bin", tokenizer, workers=1, progress=False)
    return root
