"""Making the tokenizer of a corpus: train a byte-level BPE, fetch GPT-2's, or take a saved one.

* :func:`gpt2_tokenizer` — the GPT-2 BPE (tiktoken ``r50k_base`` ranks, 50,257 ids,
  ``<|endoftext|>`` = 50256), fetched offline from the ``openai-whisper`` sdist on PyPI;
* :func:`train_bpe` — a byte-level BPE trained locally on a sample of the domain files;
* :func:`resolve_tokenizer` — one of these, or any file :meth:`Tokenizer.load` reads, named by
  a ``--tokenizer`` spec and saved into the data's ``DIR/tokenizer``.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import tokenizers

from megagrape.data.tokenizer import (
    EOD_TOKEN,
    GPT2_TIKTOKEN_SHA256,
    HFTokenizer,
    Tokenizer,
    gpt2_from_bytes,
    read_saved_metadata,
)
from megagrape.errors import DataError
from megagrape.utils.atomic import write_atomic
from megagrape.utils.hashing import sha256_file
from megagrape.utils.jsonl import iter_jsonl

WHISPER_VERSION = "20250625"


def gpt2_tokenizer(cache_dir: Path) -> Tokenizer:
    """The GPT-2 BPE (r50k_base), built from ``gpt2.tiktoken`` in the openai-whisper sdist.

    The first call runs ``pip download --no-deps --no-binary :all: openai-whisper==20250625``
    (0.8 MB), extracts ``whisper/assets/gpt2.tiktoken`` into ``cache_dir`` and checks its sha256;
    later calls read the cached file.
    """
    cache_dir = Path(cache_dir)
    ranks_path = cache_dir / "gpt2.tiktoken"
    if not (ranks_path.is_file() and sha256_file(ranks_path) == GPT2_TIKTOKEN_SHA256):
        _fetch_gpt2_ranks(ranks_path)
    return gpt2_from_bytes(ranks_path.read_bytes(), str(ranks_path))


def _fetch_gpt2_ranks(target: Path) -> None:
    """Download the openai-whisper sdist with pip and extract gpt2.tiktoken into ``target``."""
    member_suffix = "whisper/assets/gpt2.tiktoken"
    with tempfile.TemporaryDirectory() as download_dir:
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
            f"openai-whisper=={WHISPER_VERSION}", "--dest", download_dir,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        archives = list(Path(download_dir).glob("openai_whisper-*.tar.gz"))
        if result.returncode != 0 or not archives:
            raise DataError(
                f"GPT-2 tokenizer: `{' '.join(command[2:])}` failed ({result.stderr.strip()[-500:]}); "
                f"without PyPI access, copy gpt2.tiktoken (sha256 {GPT2_TIKTOKEN_SHA256}) to {target}"
            )
        with tarfile.open(archives[0]) as archive:
            members = [m for m in archive.getmembers() if m.name.endswith(member_suffix)]
            if not members:
                raise DataError(f"GPT-2 tokenizer: {archives[0].name} has no {member_suffix}")
            data = archive.extractfile(members[0]).read()
    if hashlib.sha256(data).hexdigest() != GPT2_TIKTOKEN_SHA256:
        raise DataError(
            f"GPT-2 tokenizer: gpt2.tiktoken from openai-whisper=={WHISPER_VERSION} has an "
            f"unexpected sha256 (want {GPT2_TIKTOKEN_SHA256}); the download is corrupt, retry"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, data)


def train_bpe(
    jsonl_files: Sequence[Path],
    vocab_size: int,
    sample_bytes: int = 20_000_000,
    seed: int = 0,
    text_key: str = "text",
    skip_bad_lines: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE with ``vocab_size`` ids (including ``<|endoftext|>`` = 0).

    The training text is a deterministic sample (given ``seed``) of about ``sample_bytes``
    bytes of documents, drawn evenly across ``jsonl_files`` (one file per domain), so that
    small domains are represented as well as large ones.
    """
    min_vocab = 256 + 1
    if vocab_size < min_vocab:
        raise DataError(
            f"tokenizer train:{vocab_size}: a byte-level BPE needs at least {min_vocab} ids "
            "(256 bytes + end-of-document); use e.g. train:8192"
        )
    files = [Path(f) for f in jsonl_files]
    if not files:
        raise DataError("train_bpe: no input files; give the domain .jsonl files to train on")
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOD_TOKEN],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    sample = _sample_texts(files, sample_bytes, seed, text_key, skip_bad_lines)
    backend.train_from_iterator(sample, trainer=trainer)
    if backend.get_vocab_size(with_added_tokens=True) <= min_vocab:
        raise DataError(
            f"tokenizer train:{vocab_size}: the sample of {', '.join(map(str, files))} "
            "produced no merges; give more text"
        )
    return HFTokenizer(backend, name=f"bpe{vocab_size}", eod=backend.token_to_id(EOD_TOKEN))


def _sample_texts(
    files: list[Path], sample_bytes: int, seed: int, text_key: str, skip_bad_lines: bool
) -> Iterator[str]:
    """Yield documents: about ``sample_bytes / len(files)`` bytes from each file.

    Each document is kept with probability ``share / file_size`` (capped at 1) drawn from a
    generator seeded by ``seed`` and the file name, so the sample is reproducible.
    """
    share = max(1, sample_bytes // len(files))
    for path in files:
        keep_probability = min(1.0, share / max(1, path.stat().st_size))
        rng = random.Random(seed * 1_000_003 + zlib.crc32(path.name.encode()))
        taken = 0
        for line_number, record in iter_jsonl(path, skip_bad_lines=skip_bad_lines):
            if rng.random() >= keep_probability:
                continue
            text = record.get(text_key)
            if not isinstance(text, str):
                raise DataError(
                    f"{path}:{line_number}: field {text_key!r} missing or not a string; "
                    f'each line must look like {{"{text_key}": "..."}}'
                )
            yield text
            taken += len(text.encode())
            if taken >= share:
                break


def resolve_tokenizer(
    spec: str,
    train_files: Sequence[Path],
    save_dir: Path,
    cache_dir: Path,
    sample_bytes: int = 20_000_000,
    seed: int = 0,
) -> Tokenizer:
    """The tokenizer named by ``spec``, saved into ``save_dir`` (the data's DIR/tokenizer).

    ``spec`` is ``train:VOCAB`` (train a byte-level BPE on ``train_files``; a tokenizer already
    in ``save_dir`` trained with the same settings on the same files is reused), ``gpt2``, or
    a path accepted by :meth:`Tokenizer.load`.
    """
    save_dir = Path(save_dir)
    if spec.startswith("train:"):
        try:
            vocab_size = int(spec.split(":", 1)[1])
        except ValueError:
            raise DataError(
                f"--tokenizer {spec}: expected train:VOCAB with an integer, e.g. train:8192"
            ) from None
        recipe = {
            "trained": {
                "vocab_size": vocab_size,
                "sample_bytes": sample_bytes,
                "seed": seed,
                "inputs": [
                    {
                        "name": Path(f).name,
                        "size": Path(f).stat().st_size,
                        "mtime_ns": Path(f).stat().st_mtime_ns,
                    }
                    for f in train_files
                ],
            }
        }
        if read_saved_metadata(save_dir) == recipe:
            return Tokenizer.load(save_dir)
        tokenizer = train_bpe(train_files, vocab_size, sample_bytes=sample_bytes, seed=seed)
        tokenizer.save(save_dir, metadata=recipe)
        return tokenizer
    tokenizer = gpt2_tokenizer(cache_dir) if spec == "gpt2" else Tokenizer.load(Path(spec))
    if Path(spec).resolve() != save_dir.resolve():
        tokenizer.save(save_dir, metadata={"source": spec})
    return tokenizer
