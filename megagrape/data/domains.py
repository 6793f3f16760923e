"""Training domains: one megatron-core GPTDataset per domain, with a fixed sample budget.

A domain is an IndexedDataset prefix (``<prefix>.bin`` + ``<prefix>.idx``), made by
tools/preprocess_data.py or by Megatron-LM's own preprocess_data.py. Each domain gets its own
GPTDataset (split "train", every document) whose document order, sample boundaries and
shuffle are cached under ``cache_dir`` by megatron-core.

Why budgets are fixed up front: GPTDataset tiles the documents ``num_epochs`` times, with
``num_epochs`` the smallest number that covers ``num_samples``, and shuffles the tiled order
with one RNG. Different ``num_samples`` can therefore give a different order from the first
sample on. The live mixture sampler changes domain weights during training; if a domain's
dataset were resized when its weight changed, its stream would be reshuffled. So each domain
is built once with a budget that does not depend on the weights (enough for the whole run at
weight 1, or a whole number of epochs), and the sampler consumes it as a prefix.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import DType, IndexedDataset
from megatron.core.datasets.utils import Split

from megagrape.errors import DataError

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
_HEADER_BYTES = len(INDEX_MAGIC) + 8 + 1 + 8 + 8  # magic, version, dtype code, two counts
_FIX = "re-run tools/preprocess_data.py (it redoes files whose outputs are incomplete)"
DOCUMENT_SUFFIX = "_text_document"


@dataclass(frozen=True)
class DomainSpec:
    """A training domain: its name and the path prefix of ``<prefix>.bin`` / ``<prefix>.idx``."""

    name: str
    prefix: str


@dataclass(frozen=True)
class IndexSummary:
    """What an ``.idx`` file declares: counts and token dtype."""

    sequences: int
    documents: int  # real documents (the .idx stores documents + 1 boundaries)
    tokens: int
    dtype: np.dtype


def validate_prefix(prefix: str | Path, domain_name: str) -> IndexSummary:
    """Check ``<prefix>.bin``/``.idx`` before megatron opens them; DataError says what is wrong.

    Checks: both files exist; the ``.idx`` header (magic ``MMIDIDX\\x00\\x00``, version 1, a
    known dtype code); the ``.idx`` size matches its declared counts (truncation); the
    document boundaries; the ``.bin`` size equals the sum of sequence lengths times the dtype
    size; at least one document with tokens.
    """
    prefix = str(prefix)
    idx_path, bin_path = Path(prefix + ".idx"), Path(prefix + ".bin")
    where = f"domain {domain_name!r}"
    for path in (idx_path, bin_path):
        if not path.is_file():
            raise DataError(f"{where}: {path} is missing; {_FIX}")
    idx_size = idx_path.stat().st_size
    with open(idx_path, "rb") as stream:
        header = stream.read(_HEADER_BYTES)
    if len(header) < len(INDEX_MAGIC) or header[: len(INDEX_MAGIC)] != INDEX_MAGIC:
        raise DataError(
            f"{where}: {idx_path} is not a Megatron IndexedDataset index (it does not start with "
            f"{INDEX_MAGIC!r}); {_FIX}"
        )
    if len(header) < _HEADER_BYTES:
        raise DataError(
            f"{where}: {idx_path} is truncated ({idx_size} bytes, header incomplete); {_FIX}"
        )
    version, dtype_code, sequences, boundaries = struct.unpack("<QBQQ", header[len(INDEX_MAGIC) :])
    if version != INDEX_VERSION:
        raise DataError(
            f"{where}: {idx_path} has index version {version}, only {INDEX_VERSION} is readable; {_FIX}"
        )
    try:
        dtype = np.dtype(DType.dtype_from_code(dtype_code))
    except ValueError:
        raise DataError(
            f"{where}: {idx_path} has unknown token dtype code {dtype_code}; {_FIX}"
        ) from None
    expected_idx = _HEADER_BYTES + sequences * (4 + 8) + boundaries * 8
    if idx_size < expected_idx:
        raise DataError(
            f"{where}: {idx_path} is truncated: {idx_size} bytes, but its header declares "
            f"{sequences} sequences and {boundaries} document boundaries ({expected_idx} bytes); {_FIX}"
        )
    if idx_size not in (expected_idx, expected_idx + sequences):  # + sequences: multimodal modes
        raise DataError(
            f"{where}: {idx_path} has {idx_size - expected_idx} unexpected trailing bytes; {_FIX}"
        )
    if sequences == 0 or boundaries < 2:
        raise DataError(
            f"{where}: {idx_path} holds no documents; check that the domain's jsonl has text and {_FIX}"
        )
    index = np.memmap(idx_path, mode="r", dtype=np.uint8)
    lengths = np.frombuffer(index, dtype=np.int32, count=sequences, offset=_HEADER_BYTES)
    document_indices = np.frombuffer(
        index, dtype=np.int64, count=boundaries, offset=_HEADER_BYTES + sequences * 12
    )
    if document_indices[0] != 0 or document_indices[-1] != sequences:
        raise DataError(
            f"{where}: {idx_path} has inconsistent document boundaries (first {document_indices[0]}, "
            f"last {document_indices[-1]}, {sequences} sequences); {_FIX}"
        )
    if (lengths < 0).any():
        raise DataError(f"{where}: {idx_path} has negative sequence lengths; {_FIX}")
    tokens = int(lengths.sum(dtype=np.int64))
    expected_bin = tokens * dtype.itemsize
    bin_size = bin_path.stat().st_size
    if bin_size != expected_bin:
        raise DataError(
            f"{where}: {bin_path} has {bin_size} bytes but {idx_path.name} describes {tokens} "
            f"{dtype.name} tokens ({expected_bin} bytes): the pair is truncated or mismatched; {_FIX}"
        )
    if tokens == 0:
        raise DataError(f"{where}: {prefix} has documents but no tokens; {_FIX}")
    return IndexSummary(sequences=sequences, documents=boundaries - 1, tokens=tokens, dtype=dtype)


def discover_domains(
    bin_dir: str | Path, names: Sequence[str] | None = None, suffix: str = DOCUMENT_SUFFIX
) -> list[DomainSpec]:
    """Domains in ``bin_dir``: every ``<name>_text_document.bin``/``.idx`` pair, sorted by name.

    With ``names``, each must have its ``<bin_dir>/<name>_text_document`` prefix; the order of
    ``names`` is kept. A prefix with only one of its two files (what a preprocessing run
    killed between its two renames leaves) is a DataError, never a silently dropped domain.
    Preprocessing's temporary ``.bin.partial``/``.idx.partial`` files are not domains.
    """
    bin_dir = Path(bin_dir)
    if not bin_dir.is_dir():
        raise DataError(
            f"{bin_dir}: no such directory; run tools/preprocess_data.py --output-dir {bin_dir}"
        )
    indexes, binaries = _names_with(bin_dir, suffix + ".idx"), _names_with(bin_dir, suffix + ".bin")
    if names is None:
        names = sorted(indexes | binaries)
        if not names:
            raise DataError(
                f"{bin_dir}: no *{suffix}.bin/.idx files; run tools/preprocess_data.py "
                f"--output-dir {bin_dir}"
            )
    specs = [DomainSpec(name=name, prefix=str(bin_dir / f"{name}{suffix}")) for name in names]
    _check_unique(specs)
    for spec in specs:
        has_idx, has_bin = spec.name in indexes, spec.name in binaries
        if not (has_idx or has_bin):
            raise DataError(
                f"domain {spec.name!r}: {spec.prefix}.bin/.idx not found; domains in {bin_dir}: "
                f"{', '.join(sorted(indexes & binaries)) or 'none'}"
            )
        if has_idx != has_bin:
            present, missing = (".bin", ".idx") if has_bin else (".idx", ".bin")
            raise DataError(
                f"domain {spec.name!r}: {spec.prefix}{missing} is missing next to "
                f"{spec.prefix}{present} (an interrupted preprocessing run leaves this); {_FIX}"
            )
    return specs


def _names_with(directory: Path, ending: str) -> set[str]:
    """Names ``<name>`` of the files ``<name><ending>`` in ``directory``."""
    return {path.name[: -len(ending)] for path in directory.glob(f"*{ending}") if path.is_file()}


def count_tokens(prefix: str | Path) -> int:
    """Tokens stored under ``prefix`` (for natural token shares)."""
    return validate_prefix(prefix, Path(prefix).name).tokens


class EodTokenizer:
    """The part of a Megatron tokenizer GPTDataset reads: eod, optional pad, vocab size.

    ``unique_identifiers`` enters GPTDataset's cache key, so index caches built for one
    tokenizer are not reused with another.
    """

    def __init__(self, eod: int, vocab_size: int | None = None, pad: int | None = None) -> None:
        self.eod = eod
        self.vocab_size = vocab_size
        if pad is not None:
            self.pad = pad
        self.unique_identifiers = {"class": type(self).__name__, "eod": eod, "pad": pad}


def build_domain_datasets(
    specs: Sequence[DomainSpec],
    seq_length: int,
    budgets: Sequence[int],
    seed: int,
    cache_dir: str | Path,
    eod_id: int,
    pad_id: int | None = None,
    vocab_size: int | None = None,
) -> list[GPTDataset]:
    """One GPTDataset per domain with ``num_samples = budgets[i]`` (``len(ds) >= budget``).

    Samples are dicts of ``tokens`` [S] int64, ``labels`` [S] int64 (tokens shifted by one),
    ``loss_mask`` [S] float32 and ``position_ids`` [S] int64, with S = ``seq_length``.
    Under torch.distributed, rank 0 builds (and caches) the indices first; after a barrier
    the other ranks load them from ``cache_dir``, as Megatron does. ``vocab_size`` (optional)
    is only recorded; ``pad_id`` marks padding for GPTDataset to mask (None: no padding id).
    """
    if len(budgets) != len(specs):
        raise DataError(f"build_domain_datasets: {len(specs)} domains but {len(budgets)} budgets")
    if seq_length < 1:
        raise DataError(f"seq_length must be >= 1, got {seq_length}")
    _check_unique(specs)
    summaries = []
    for spec, budget in zip(specs, budgets):
        if int(budget) < 1:
            raise DataError(f"domain {spec.name!r}: sample budget must be >= 1, got {budget}")
        summary = validate_prefix(spec.prefix, spec.name)
        if summary.tokens < seq_length + 1:
            raise DataError(
                f"domain {spec.name!r}: {spec.prefix} has {summary.tokens} tokens, fewer than one "
                f"sample of seq_length + 1 = {seq_length + 1}; add text to the domain or drop it"
            )
        summaries.append(summary)
    cache_dir = Path(cache_dir)
    tokenizer = EodTokenizer(eod=eod_id, vocab_size=vocab_size, pad=pad_id)
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=([spec.prefix for spec in specs], None),
        split="1,0,0",
        path_to_cache=str(cache_dir),
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        add_extra_token_to_sequence=True,
    )
    return [
        _build_on_rank_zero_first(spec, summary, int(budget), config)
        for spec, summary, budget in zip(specs, summaries, budgets)
    ]


def _build_on_rank_zero_first(
    spec: DomainSpec, summary: IndexSummary, budget: int, config: GPTDatasetConfig
) -> GPTDataset:
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    dataset = None
    if rank == 0:
        os.makedirs(config.path_to_cache, exist_ok=True)
        dataset = _build_one(spec, summary, budget, config)
    if distributed:
        dist.barrier()
    if rank != 0:
        dataset = _build_one(spec, summary, budget, config)
    return dataset


def _build_one(
    spec: DomainSpec, summary: IndexSummary, budget: int, config: GPTDatasetConfig
) -> GPTDataset:
    indexed = IndexedDataset(spec.prefix, multimodal=False, mmap=config.mmap_bin_files)
    documents = np.arange(summary.sequences, dtype=np.int32)
    return GPTDataset(indexed, spec.prefix, documents, budget, Split.train, config)


def _check_unique(specs: Sequence[DomainSpec]) -> None:
    seen: dict[str, DomainSpec] = {}
    for spec in specs:
        if spec.name in seen:
            raise DataError(
                f"domain name {spec.name!r} is used twice ({seen[spec.name].prefix} and "
                f"{spec.prefix}); give every domain its own name"
            )
        seen[spec.name] = spec
