"""Tokenize domain jsonl files into Megatron IndexedDataset files (``.bin`` + ``.idx``).

Each ``<domain>.jsonl`` (or ``.jsonl.gz``) becomes ``<output_dir>/<domain>_text_document.bin``
and ``.idx``, written by megatron-core's ``IndexedDatasetBuilder``: the names and format
Megatron-LM's ``tools/preprocess_data.py`` produces, so either tool's output feeds the other's
readers. One sequence per document, end-of-document id appended.

Resuming. A file is written under temporary names (``.bin.partial``, ``.idx.partial``) and
renamed into place, ``.bin`` first and ``.idx`` last, only when complete; then a sidecar
``<prefix>.done.json`` records the input (size, mtime, sha256), the tokenizer fingerprint,
the settings and the counts. A rerun skips a file whose sidecar matches and whose outputs have
the recorded sizes, and redoes every other file. Before redoing, the old sidecar and ``.idx``
are deleted, so a run killed at any point never leaves an ``.idx`` that passes for finished.
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
from tqdm import tqdm

from megagrape.data.tokenizer import Tokenizer
from megagrape.errors import DataError
from megagrape.utils.atomic import write_json_atomic
from megagrape.utils.hashing import sha256_file
from megagrape.utils.jsonl import iter_jsonl_with_sizes

SIDECAR_VERSION = 1
BATCH_BYTES = 1 << 20  # text handed to a worker per task
BATCH_DOCS = 512
IN_FLIGHT_PER_WORKER = 4  # tasks queued per worker: bounds memory, keeps workers busy


@dataclass(frozen=True)
class FileStats:
    """What preprocessing one input file produced."""

    documents: int
    tokens: int
    empty_documents_skipped: int
    input_bytes: int
    seconds: float
    reused: bool  # True when a matching earlier output was kept


def domain_files(input_path: Path | Sequence[Path]) -> dict[str, Path]:
    """Domain name -> jsonl file, for a directory of ``*.jsonl[.gz]`` files or a list of files.

    The domain name is the file name without ``.jsonl`` / ``.jsonl.gz``.
    """
    paths = (
        sorted(_jsonl_in(Path(input_path)))
        if not isinstance(input_path, list | tuple)
        else [Path(p) for p in input_path]
    )
    if not paths:
        raise DataError(
            f"{input_path}: no .jsonl or .jsonl.gz files; run tools/prepare_corpus.py first or "
            "point --input at the domains directory"
        )
    files: dict[str, Path] = {}
    for path in paths:
        name = domain_name(path)
        if name in files:
            raise DataError(
                f"domain {name!r} comes from two files, {files[name]} and {path}; keep one"
            )
        files[name] = path
    return files


def domain_name(path: Path) -> str:
    name = Path(path).name
    for suffix in (".jsonl.gz", ".jsonl"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    raise DataError(f"{path}: expected a .jsonl or .jsonl.gz file")


def output_prefix(output_dir: Path, domain: str, text_key: str = "text") -> Path:
    """``<output_dir>/<domain>_<key>_document``, the prefix Megatron-LM's preprocess_data.py uses."""
    return Path(output_dir) / f"{domain}_{text_key}_document"


def token_dtype(vocab_size: int) -> type[np.number]:
    """uint16 when every id fits, else int32 (megatron-core's ``DType.optimal_dtype``)."""
    return DType.optimal_dtype(vocab_size)


def preprocess_domains(
    input_dir: Path | Sequence[Path],
    output_dir: Path,
    tokenizer: Tokenizer,
    workers: int = 1,
    skip_bad_lines: bool = False,
    append_eod: bool = True,
    text_key: str = "text",
    progress: bool = True,
) -> dict[str, str]:
    """Tokenize every domain file; return domain -> output prefix (``.bin``/``.idx`` path stem).

    Files whose finished outputs match (see module docstring) are skipped.
    """
    files = domain_files(input_dir)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    prefixes: dict[str, str] = {}
    with EncoderPool(tokenizer, workers) as encoder:
        for domain, path in files.items():
            prefix = output_prefix(output_dir, domain, text_key)
            preprocess_file(
                path, prefix, tokenizer, encoder, skip_bad_lines, append_eod, text_key, progress
            )
            prefixes[domain] = str(prefix)
    return prefixes


def preprocess_file(
    input_path: Path,
    prefix: Path,
    tokenizer: Tokenizer,
    encoder: EncoderPool | None = None,
    skip_bad_lines: bool = False,
    append_eod: bool = True,
    text_key: str = "text",
    progress: bool = True,
) -> FileStats:
    """Tokenize one jsonl file into ``<prefix>.bin``/``.idx`` unless a matching output exists."""
    input_path, prefix = Path(input_path), Path(prefix)
    settings = {
        "tokenizer": {"name": tokenizer.name, "fingerprint": tokenizer.fingerprint},
        "append_eod": append_eod,
        "text_key": text_key,
        "dtype": np.dtype(token_dtype(tokenizer.vocab_size)).name,
    }
    identity = _input_identity(input_path)
    previous = _matching_sidecar(prefix, identity, settings)
    if previous is not None:
        counts = previous["counts"]
        return FileStats(**{**counts, "seconds": 0.0, "reused": True})

    prefix.parent.mkdir(parents=True, exist_ok=True)
    _remove_outputs(prefix)
    if encoder is None:
        with EncoderPool(tokenizer, workers=1) as own_encoder:
            stats = _write_dataset(
                input_path,
                prefix,
                tokenizer,
                own_encoder,
                skip_bad_lines,
                append_eod,
                text_key,
                progress,
            )
    else:
        stats = _write_dataset(
            input_path, prefix, tokenizer, encoder, skip_bad_lines, append_eod, text_key, progress
        )
    identity["sha256"] = sha256_file(input_path)
    sidecar = {
        "version": SIDECAR_VERSION,
        "input": identity,
        "settings": settings,
        "counts": {k: v for k, v in asdict(stats).items() if k not in ("seconds", "reused")},
        "outputs": {
            "bin_bytes": _bin_path(prefix).stat().st_size,
            "idx_bytes": _idx_path(prefix).stat().st_size,
        },
        "seconds": round(stats.seconds, 3),
    }
    write_json_atomic(_sidecar_path(prefix), sidecar, indent=2)
    return stats


def read_sidecar(prefix: Path) -> dict[str, Any] | None:
    """The ``<prefix>.done.json`` record of a finished output (input, settings, counts), or None."""
    try:
        return json.loads(_sidecar_path(Path(prefix)).read_text())
    except (OSError, ValueError):
        return None


def _write_dataset(
    input_path: Path,
    prefix: Path,
    tokenizer: Tokenizer,
    encoder: EncoderPool,
    skip_bad_lines: bool,
    append_eod: bool,
    text_key: str,
    progress: bool,
) -> FileStats:
    start = time.perf_counter()
    dtype = token_dtype(tokenizer.vocab_size)
    partial_bin, partial_idx = _partial(_bin_path(prefix)), _partial(_idx_path(prefix))
    builder = IndexedDatasetBuilder(str(partial_bin), dtype=dtype)
    documents = tokens = empty = 0
    total = input_path.stat().st_size if not input_path.name.endswith(".gz") else None
    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc=input_path.name,
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        batches = _text_batches(input_path, skip_bad_lines, text_key)
        for encoded, input_bytes in encoder.map(batches, append_eod, dtype):
            for document in encoded:
                if document.size == int(append_eod):
                    empty += 1
                    continue
                builder.add_document(document, [document.size])
                documents += 1
                tokens += document.size
            bar.update(input_bytes)
            bar.set_postfix(docs=documents, refresh=False)
        builder.finalize(str(partial_idx))
    except BaseException:
        builder.data_file.close()
        partial_bin.unlink(missing_ok=True)
        partial_idx.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    if documents == 0:
        partial_bin.unlink(missing_ok=True)
        partial_idx.unlink(missing_ok=True)
        raise DataError(
            f"{input_path}: no non-empty documents (field {text_key!r}); a domain needs text, "
            "remove the file or fix tools/prepare_corpus.py output"
        )
    os.replace(partial_bin, _bin_path(prefix))
    os.replace(partial_idx, _idx_path(prefix))
    return FileStats(
        documents=documents,
        tokens=tokens,
        empty_documents_skipped=empty,
        input_bytes=input_path.stat().st_size,
        seconds=time.perf_counter() - start,
        reused=False,
    )


def _text_batches(
    input_path: Path, skip_bad_lines: bool, text_key: str
) -> Iterator[tuple[list[str], int]]:
    """Batches of (texts, input bytes they came from), in file order."""
    texts: list[str] = []
    batch_bytes = 0
    for line_number, record, line_bytes in iter_jsonl_with_sizes(input_path, skip_bad_lines):
        text = record.get(text_key)
        if not isinstance(text, str):
            if skip_bad_lines:
                batch_bytes += line_bytes
                continue
            raise DataError(
                f"{input_path}:{line_number}: field {text_key!r} missing or not a string "
                f'(each line must look like {{"{text_key}": "..."}}); fix it, choose the field '
                "with --json-key, or pass --skip-bad-lines"
            )
        texts.append(text)
        batch_bytes += line_bytes
        if batch_bytes >= BATCH_BYTES or len(texts) >= BATCH_DOCS:
            yield texts, batch_bytes
            texts, batch_bytes = [], 0
    if texts or batch_bytes:
        yield texts, batch_bytes


class EncoderPool:
    """Tokenizes batches of texts in order, in a process pool (workers > 1) or in-process.

    Pool workers receive the tokenizer once (pool initializer). At most
    ``IN_FLIGHT_PER_WORKER * workers`` batches are queued, so memory stays bounded however
    large the input file is; results come back in submission order.
    """

    def __init__(self, tokenizer: Tokenizer, workers: int) -> None:
        if workers < 1:
            raise DataError(f"--workers must be >= 1, got {workers}")
        self.tokenizer = tokenizer
        self.workers = workers
        self.pool = None

    def __enter__(self) -> EncoderPool:
        if self.workers > 1:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
            self.pool = context.Pool(
                self.workers, initializer=_init_worker, initargs=(self.tokenizer,)
            )
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.pool is not None:
            if exc_info[0] is None:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()

    def map(
        self, batches: Iterator[tuple[list[str], int]], append_eod: bool, dtype: type[np.number]
    ) -> Iterator[tuple[list[np.ndarray], int]]:
        """Yield ``(token arrays, input bytes)`` per batch, in input order."""
        if self.pool is None:
            for texts, input_bytes in batches:
                yield _encode_texts(self.tokenizer, texts, append_eod, dtype), input_bytes
            return
        pending: collections.deque = collections.deque()
        limit = IN_FLIGHT_PER_WORKER * self.workers
        for texts, input_bytes in batches:
            pending.append(
                (self.pool.apply_async(_encode_in_worker, (texts, append_eod, dtype)), input_bytes)
            )
            if len(pending) >= limit:
                result, done_bytes = pending.popleft()
                yield result.get(), done_bytes
        while pending:
            result, done_bytes = pending.popleft()
            yield result.get(), done_bytes


_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_in_worker(
    texts: list[str], append_eod: bool, dtype: type[np.number]
) -> list[np.ndarray]:
    assert _worker_tokenizer is not None, "pool worker started without its tokenizer"
    return _encode_texts(_worker_tokenizer, texts, append_eod, dtype)


def _encode_texts(
    tokenizer: Tokenizer, texts: list[str], append_eod: bool, dtype: type[np.number]
) -> list[np.ndarray]:
    """One token array per text (dtype ``dtype``), with the eod id appended when asked."""
    suffix = [tokenizer.eod] if append_eod else []
    return [np.asarray(ids + suffix, dtype=dtype) for ids in tokenizer.encode_batch(texts)]


def _matching_sidecar(
    prefix: Path, identity: dict[str, Any], settings: dict[str, Any]
) -> dict[str, Any] | None:
    """The sidecar of a finished output for the same input and settings, else None."""
    sidecar_path = _sidecar_path(prefix)
    try:
        sidecar = json.loads(sidecar_path.read_text())
        recorded_input = sidecar["input"]
        outputs = sidecar["outputs"]
        if sidecar["version"] != SIDECAR_VERSION or sidecar["settings"] != settings:
            return None
        if recorded_input["size"] != identity["size"]:
            return None
        if _bin_path(prefix).stat().st_size != outputs["bin_bytes"]:
            return None
        if _idx_path(prefix).stat().st_size != outputs["idx_bytes"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    same_file = recorded_input.get("mtime_ns") == identity["mtime_ns"]
    if not same_file and recorded_input.get("sha256") != sha256_file(Path(identity["path"])):
        return None
    return sidecar


def _input_identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _remove_outputs(prefix: Path) -> None:
    """Delete the sidecar, then the .idx, .bin and partial files: a stale pair never survives."""
    for path in (
        _sidecar_path(prefix),
        _idx_path(prefix),
        _bin_path(prefix),
        _partial(_idx_path(prefix)),
        _partial(_bin_path(prefix)),
    ):
        path.unlink(missing_ok=True)


def _bin_path(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + ".bin")


def _idx_path(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + ".idx")


def _sidecar_path(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + ".done.json")


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _jsonl_in(directory: Path) -> list[Path]:
    if directory.is_file():
        return [directory]
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory; point --input at DIR/domains")
    return [p for p in directory.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz"))]
