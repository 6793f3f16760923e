"""Per-domain GPTDatasets over .bin/.idx prefixes: samples, budgets, validation, distributed build."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megagrape.data.domains import (
    DomainSpec,
    build_domain_datasets,
    count_tokens,
    discover_domains,
    validate_prefix,
)
from megagrape.errors import DataError
from tests.dist_utils import run_distributed

SEQ = 16
EOD = 0


def write_megatron_prefix(prefix: str, documents: list[list[int]], dtype=np.int32) -> str:
    """Write ``documents`` with megatron-core's own builder (as Megatron-LM's tools do)."""
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for document in documents:
        builder.add_document(torch.tensor(document), [len(document)])
    builder.finalize(prefix + ".idx")
    return prefix


def random_documents(count: int, seed: int, vocab: int = 500) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[*rng.integers(1, vocab, size=rng.integers(5, 40)).tolist(), EOD] for _ in range(count)]


@pytest.fixture
def bin_dir(tmp_path):
    directory = tmp_path / "bin"
    directory.mkdir()
    write_megatron_prefix(str(directory / "alpha_text_document"), random_documents(60, 1))
    write_megatron_prefix(
        str(directory / "beta_text_document"), random_documents(30, 2), dtype=np.uint16
    )
    return directory


def test_discover_and_count(bin_dir):
    specs = discover_domains(bin_dir)
    assert [s.name for s in specs] == ["alpha", "beta"]
    assert specs[0].prefix == str(bin_dir / "alpha_text_document")
    assert count_tokens(specs[1].prefix) == sum(len(d) for d in random_documents(30, 2))
    assert [s.name for s in discover_domains(bin_dir, names=["beta", "alpha"])] == ["beta", "alpha"]
    with pytest.raises(DataError, match=r"'gamma'.*domains in .*alpha, beta"):
        discover_domains(bin_dir, names=["gamma"])


def test_discover_empty_directory(tmp_path):
    with pytest.raises(DataError, match=r"no \*_text_document\.bin/\.idx"):
        discover_domains(tmp_path)


@pytest.mark.parametrize("removed, present", [(".idx", ".bin"), (".bin", ".idx")])
def test_discover_refuses_a_half_written_domain(bin_dir, removed, present):
    """A domain with one of its two files is an error naming it, never a dropped domain."""
    prefix = bin_dir / "beta_text_document"
    Path(f"{prefix}{removed}").unlink()
    message = (
        rf"domain 'beta': {prefix}\{removed} is missing next to {prefix}\{present}"
        r".*re-run tools/preprocess_data\.py"
    )
    with pytest.raises(DataError, match=message):
        discover_domains(bin_dir)
    with pytest.raises(DataError, match=message):
        discover_domains(bin_dir, names=["alpha", "beta"])


def test_discover_ignores_preprocessing_partial_files(bin_dir):
    """``.bin.partial``/``.idx.partial`` (a file preprocessing is still writing) are no domain."""
    for ending in (".bin.partial", ".idx.partial"):
        (bin_dir / f"gamma_text_document{ending}").write_bytes(b"half")
    assert [s.name for s in discover_domains(bin_dir)] == ["alpha", "beta"]


def test_samples_have_shapes_shift_and_come_from_the_domain(bin_dir, tmp_path):
    specs = discover_domains(bin_dir)
    datasets = build_domain_datasets(
        specs, SEQ, [50, 20], seed=3, cache_dir=tmp_path / "cache", eod_id=EOD
    )
    streams = {"alpha": random_documents(60, 1), "beta": random_documents(30, 2)}
    for spec, dataset in zip(specs, datasets):
        token_set = {t for doc in streams[spec.name] for t in doc}
        for index in (0, 7, len(dataset) - 1):
            sample = dataset[index]
            assert set(sample) == {"tokens", "labels", "loss_mask", "position_ids"}
            assert sample["tokens"].shape == sample["labels"].shape == (SEQ,)
            assert sample["tokens"].dtype == sample["labels"].dtype == torch.int64
            assert sample["loss_mask"].dtype == torch.float32
            assert torch.equal(sample["position_ids"], torch.arange(SEQ))
            assert torch.equal(sample["tokens"][1:], sample["labels"][:-1])
            assert torch.all(sample["loss_mask"] == 1)
            assert set(sample["tokens"].tolist()) <= token_set


def test_budget_is_respected_and_covered(bin_dir, tmp_path):
    specs = discover_domains(bin_dir)
    tokens = [count_tokens(s.prefix) for s in specs]
    budgets = [3 * tokens[0] // SEQ, 5]  # alpha: several epochs; beta: part of one
    datasets = build_domain_datasets(
        specs, SEQ, budgets, seed=3, cache_dir=tmp_path / "c", eod_id=EOD
    )
    for dataset, budget, n_tokens in zip(datasets, budgets, tokens):
        assert len(dataset) >= budget
        epochs = -(-(budget * SEQ + 1) // n_tokens)  # the fewest epochs that cover the budget
        documents = len(dataset.indices)
        assert np.array_equal(
            np.bincount(dataset.document_index, minlength=documents), [epochs] * documents
        )
        assert len(np.unique(dataset.shuffle_index[:budget])) == budget  # no sample repeats


def test_first_samples_depend_on_the_budget(bin_dir, tmp_path):
    """Why budgets are fixed up front: a different budget can reshuffle from sample 0."""
    spec = discover_domains(bin_dir, names=["alpha"])
    one_epoch = count_tokens(spec[0].prefix) // SEQ - 1
    small = build_domain_datasets(spec, SEQ, [10], seed=3, cache_dir=tmp_path / "c", eod_id=EOD)[0]
    same = build_domain_datasets(spec, SEQ, [10], seed=3, cache_dir=tmp_path / "c2", eod_id=EOD)[0]
    large = build_domain_datasets(
        spec, SEQ, [3 * one_epoch], seed=3, cache_dir=tmp_path / "c", eod_id=EOD
    )[0]
    first = lambda ds: torch.stack([ds[i]["tokens"] for i in range(8)])  # noqa: E731
    assert torch.equal(first(small), first(same))
    assert not torch.equal(first(small), first(large))


def test_index_caches_are_reused(bin_dir, tmp_path):
    specs = discover_domains(bin_dir)
    build_domain_datasets(specs, SEQ, [40, 40], seed=1, cache_dir=tmp_path / "c", eod_id=EOD)
    cached = sorted(os.listdir(tmp_path / "c"))
    assert len([f for f in cached if f.endswith("shuffle_index.npy")]) == 2
    build_domain_datasets(specs, SEQ, [40, 40], seed=1, cache_dir=tmp_path / "c", eod_id=EOD)
    assert sorted(os.listdir(tmp_path / "c")) == cached


def test_pad_id_is_masked(tmp_path):
    prefix = write_megatron_prefix(
        str(tmp_path / "p_text_document"), [[5, 6, 7, 9, 9, 9, 8, 0]] * 10
    )
    spec = [DomainSpec("p", prefix)]
    dataset = build_domain_datasets(
        spec, 8, [4], seed=0, cache_dir=tmp_path / "c", eod_id=0, pad_id=9
    )[0]
    for index in range(4):
        raw_labels = torch.from_numpy(dataset._query_document_sample_shuffle_indices(index)[0][1:])
        sample = dataset[index]
        assert torch.equal(sample["loss_mask"], (raw_labels != 9).float())
        assert torch.equal(sample["labels"], torch.where(raw_labels == 9, 0, raw_labels))


def write_raw_idx(
    prefix: str, magic=b"MMIDIDX\x00\x00", version=1, code=4, lengths=(3, 2), docs=(0, 1, 2)
):
    with open(prefix + ".idx", "wb") as stream:
        stream.write(magic + struct.pack("<Q", version) + struct.pack("<B", code))
        stream.write(struct.pack("<Q", len(lengths)) + struct.pack("<Q", len(docs)))
        stream.write(np.asarray(lengths, dtype=np.int32).tobytes())
        stream.write((np.cumsum([0, *lengths[:-1]]) * 4).astype(np.int64).tobytes())
        stream.write(np.asarray(docs, dtype=np.int64).tobytes())
    return prefix


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_bin", r"\.bin is missing"),
        ("no_idx", r"\.idx is missing"),
        ("magic", "not a Megatron IndexedDataset index"),
        ("version", "index version 2"),
        ("dtype", "unknown token dtype code 99"),
        ("truncated", "truncated"),
        ("trailing", "trailing bytes"),
        ("short_bin", r"has 16 bytes but .* describes 5 int32 tokens"),
        ("empty", "holds no documents"),
        ("boundaries", "inconsistent document boundaries"),
    ],
)
def test_validate_prefix_reports_damage(tmp_path, damage, message):
    prefix = str(tmp_path / "d_text_document")
    write_megatron_prefix(prefix, [[1, 2, 3], [4, 5]])
    idx = prefix + ".idx"
    raw = Path(idx).read_bytes()
    if damage == "no_bin":
        os.remove(prefix + ".bin")
    elif damage == "no_idx":
        os.remove(idx)
    elif damage == "magic":
        Path(idx).write_bytes(b"NOTANIDX!" + raw[9:])
    elif damage == "version":
        Path(idx).write_bytes(raw[:9] + struct.pack("<Q", 2) + raw[17:])
    elif damage == "dtype":
        Path(idx).write_bytes(raw[:17] + bytes([99]) + raw[18:])
    elif damage == "truncated":
        Path(idx).write_bytes(raw[:-5])
    elif damage == "trailing":
        Path(idx).write_bytes(raw + b"\x00" * 3)
    elif damage == "short_bin":
        bin_path = Path(prefix + ".bin")
        bin_path.write_bytes(bin_path.read_bytes()[:16])
    elif damage == "empty":
        write_megatron_prefix(prefix, [])
    elif damage == "boundaries":
        write_raw_idx(prefix, docs=(0, 1))
    with pytest.raises(DataError, match=message) as info:
        validate_prefix(prefix, "dom")
    assert "domain 'dom'" in str(info.value)
    assert "tools/preprocess_data.py" in str(info.value)


def test_build_refuses_bad_domains(bin_dir, tmp_path):
    specs = discover_domains(bin_dir)
    with pytest.raises(DataError, match="'alpha' is used twice"):
        build_domain_datasets(
            [specs[0], specs[0]], SEQ, [1, 1], seed=0, cache_dir=tmp_path, eod_id=EOD
        )
    tiny = write_megatron_prefix(str(tmp_path / "tiny_text_document"), [[1, 2, 3, 0]])
    with pytest.raises(DataError, match=r"'tiny'.*4 tokens, fewer than one sample"):
        build_domain_datasets(
            [DomainSpec("tiny", tiny)], SEQ, [1], seed=0, cache_dir=tmp_path, eod_id=EOD
        )
    empty = write_megatron_prefix(str(tmp_path / "empty_text_document"), [])
    with pytest.raises(DataError, match=r"'empty'.*no documents"):
        build_domain_datasets(
            [DomainSpec("empty", empty)], SEQ, [1], seed=0, cache_dir=tmp_path, eod_id=EOD
        )
    with pytest.raises(DataError, match="2 domains but 1 budgets"):
        build_domain_datasets(specs, SEQ, [1], seed=0, cache_dir=tmp_path, eod_id=EOD)


def _build_in_process_group(rank: int, world_size: int, bin_dir: str, cache_dir: str) -> list:
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        specs = discover_domains(bin_dir)
        datasets = build_domain_datasets(
            specs, SEQ, [30, 30], seed=5, cache_dir=cache_dir, eod_id=EOD
        )
        return [ds[i]["tokens"].tolist() for ds in datasets for i in range(5)]
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch and megatron-core: ~40 s on 2 cores
def test_ranks_build_the_same_datasets_rank_zero_first(bin_dir, tmp_path):
    results = run_distributed(
        _build_in_process_group, world_size=2, args=(str(bin_dir), str(tmp_path / "c"))
    )
    assert results[0] == results[1]
    assert len([f for f in os.listdir(tmp_path / "c") if f.endswith("sample_index.npy")]) == 2
