"""jsonl -> Megatron .bin/.idx: contents, order, EOD, resumability, bad input, the CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megagrape.data import preprocess
from megagrape.data.domains import validate_prefix
from megagrape.data.preprocess import (
    output_prefix,
    preprocess_domains,
    preprocess_file,
    read_sidecar,
)
from megagrape.data.tokenizer import Tokenizer
from megagrape.data.tokenizer_build import train_bpe
from megagrape.errors import DataError
from megagrape.utils.jsonl import iter_jsonl
from tests.data_utils import synthetic_texts, write_domains, write_jsonl
from tools import preprocess_data as cli


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("train")
    write_domains(directory, {"a": 200, "b": 200})
    return train_bpe(sorted(directory.glob("*.jsonl")), vocab_size=380)


def read_documents(prefix: str) -> list[list[int]]:
    dataset = IndexedDataset(prefix)
    return [dataset[i].tolist() for i in range(len(dataset))]


def test_outputs_are_megatron_indexed_datasets_in_document_order(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(preprocess, "BATCH_DOCS", 7)  # many small batches through the pool
    texts = write_domains(tmp_path / "domains", {"web": 150, "code": 40})
    prefixes = preprocess_domains(
        tmp_path / "domains", tmp_path / "bin", tokenizer, workers=2, progress=False
    )
    assert prefixes == {
        "code": str(tmp_path / "bin" / "code_text_document"),
        "web": str(tmp_path / "bin" / "web_text_document"),
    }
    for domain, prefix in prefixes.items():
        expected = [[*tokenizer.encode(t), tokenizer.eod] for t in texts[domain]]
        assert read_documents(prefix) == expected
        dataset = IndexedDataset(prefix)
        assert dataset.index.dtype == np.uint16
        assert list(dataset.document_indices) == list(range(len(expected) + 1))
        assert validate_prefix(prefix, domain).tokens == sum(map(len, expected))


def test_without_eod_and_gzip_input(tokenizer, tmp_path):
    texts = synthetic_texts(20, seed=3)
    write_jsonl(tmp_path / "in" / "gz.jsonl.gz", ({"text": t} for t in texts))
    prefixes = preprocess_domains(
        tmp_path / "in", tmp_path / "bin", tokenizer, append_eod=False, progress=False
    )
    assert read_documents(prefixes["gz"]) == [tokenizer.encode(t) for t in texts]


def test_empty_documents_are_skipped_and_counted(tokenizer, tmp_path):
    write_jsonl(tmp_path / "in" / "d.jsonl", [{"text": "one"}, {"text": ""}, {"text": "two"}])
    stats = preprocess_file(
        tmp_path / "in" / "d.jsonl", tmp_path / "bin" / "d_text_document", tokenizer, progress=False
    )
    assert (stats.documents, stats.empty_documents_skipped) == (2, 1)
    assert len(read_documents(str(tmp_path / "bin" / "d_text_document"))) == 2


def test_second_run_skips_finished_files(tokenizer, tmp_path):
    write_domains(tmp_path / "domains", {"x": 30, "y": 30})
    prefixes = preprocess_domains(tmp_path / "domains", tmp_path / "bin", tokenizer, progress=False)
    stamps = {d: os.stat(p + ".bin").st_mtime_ns for d, p in prefixes.items()}
    again = preprocess_file(
        tmp_path / "domains" / "x.jsonl", prefixes["x"], tokenizer, progress=False
    )
    assert again.reused
    assert again.documents == read_sidecar(prefixes["x"])["counts"]["documents"] == 30
    preprocess_domains(tmp_path / "domains", tmp_path / "bin", tokenizer, progress=False)
    assert {d: os.stat(p + ".bin").st_mtime_ns for d, p in prefixes.items()} == stamps


def test_changed_input_or_tokenizer_is_redone(tokenizer, tmp_path):
    write_domains(tmp_path / "domains", {"x": 30})
    prefix = output_prefix(tmp_path / "bin", "x")
    preprocess_file(tmp_path / "domains" / "x.jsonl", prefix, tokenizer, progress=False)
    new_texts = synthetic_texts(12, seed=99)
    write_jsonl(tmp_path / "domains" / "x.jsonl", ({"text": t} for t in new_texts))
    stats = preprocess_file(tmp_path / "domains" / "x.jsonl", prefix, tokenizer, progress=False)
    assert not stats.reused and stats.documents == 12
    assert read_documents(str(prefix))[0] == [*tokenizer.encode(new_texts[0]), tokenizer.eod]
    other = train_bpe([tmp_path / "domains" / "x.jsonl"], vocab_size=300)
    assert not preprocess_file(
        tmp_path / "domains" / "x.jsonl", prefix, other, progress=False
    ).reused


def test_touched_but_identical_input_is_reused(tokenizer, tmp_path):
    write_domains(tmp_path / "domains", {"x": 10})
    path = tmp_path / "domains" / "x.jsonl"
    prefix = output_prefix(tmp_path / "bin", "x")
    preprocess_file(path, prefix, tokenizer, progress=False)
    os.utime(path, ns=(1, 1))
    assert preprocess_file(path, prefix, tokenizer, progress=False).reused


def test_killed_run_leftovers_are_redone(tokenizer, tmp_path):
    texts = write_domains(tmp_path / "domains", {"x": 25})
    prefix = str(output_prefix(tmp_path / "bin", "x"))
    preprocess_domains(tmp_path / "domains", tmp_path / "bin", tokenizer, progress=False)
    # A kill after the .bin rename, before the .idx rename and the sidecar: partial .idx left.
    os.replace(prefix + ".idx", prefix + ".idx.partial")
    os.remove(prefix + ".done.json")
    with pytest.raises(DataError, match=r"\.idx is missing"):
        validate_prefix(prefix, "x")
    stats = preprocess_file(tmp_path / "domains" / "x.jsonl", prefix, tokenizer, progress=False)
    assert not stats.reused
    assert not os.path.exists(prefix + ".idx.partial")
    assert read_documents(prefix) == [[*tokenizer.encode(t), tokenizer.eod] for t in texts["x"]]


def test_truncated_idx_is_detected_and_redone(tokenizer, tmp_path):
    write_domains(tmp_path / "domains", {"x": 25})
    prefix = str(output_prefix(tmp_path / "bin", "x"))
    preprocess_domains(tmp_path / "domains", tmp_path / "bin", tokenizer, progress=False)
    size = os.path.getsize(prefix + ".idx")
    with open(prefix + ".idx", "r+b") as stream:
        stream.truncate(size - 16)
    with pytest.raises(DataError, match="truncated"):
        validate_prefix(prefix, "x")
    assert not preprocess_file(
        tmp_path / "domains" / "x.jsonl", prefix, tokenizer, progress=False
    ).reused
    assert validate_prefix(prefix, "x").documents == 25


def test_failure_mid_file_leaves_no_index(tokenizer, tmp_path, monkeypatch):
    write_domains(tmp_path / "domains", {"x": 40})
    prefix = str(output_prefix(tmp_path / "bin", "x"))
    preprocess_domains(tmp_path / "domains", tmp_path / "bin", tokenizer, progress=False)
    write_jsonl(
        tmp_path / "domains" / "x.jsonl", ({"text": t} for t in synthetic_texts(40, seed=7))
    )
    monkeypatch.setattr(preprocess, "BATCH_DOCS", 5)
    calls = {"n": 0}
    original = preprocess._encode_texts

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(preprocess, "_encode_texts", failing)
    with pytest.raises(KeyboardInterrupt):
        preprocess_file(tmp_path / "domains" / "x.jsonl", prefix, tokenizer, progress=False)
    leftovers = sorted(p.name for p in (tmp_path / "bin").iterdir())
    assert leftovers == []  # old outputs removed before writing, partial files cleaned


def test_bad_json_line_names_file_and_line(tokenizer, tmp_path):
    path = tmp_path / "domains" / "bad.jsonl"
    path.parent.mkdir()
    path.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": broken\n{"text": "last"}\n')
    with pytest.raises(DataError) as info:
        preprocess_domains(tmp_path / "domains", tmp_path / "bin", tokenizer, progress=False)
    assert f"{path}:3" in str(info.value) and "--skip-bad-lines" in str(info.value)
    assert not (tmp_path / "bin" / "bad_text_document.idx").exists()
    with pytest.warns(UserWarning, match="skipped 1 line"):
        prefixes = preprocess_domains(
            tmp_path / "domains", tmp_path / "bin", tokenizer, skip_bad_lines=True, progress=False
        )
    assert len(read_documents(prefixes["bad"])) == 3


def test_missing_text_field_names_line(tokenizer, tmp_path):
    write_jsonl(tmp_path / "d" / "x.jsonl", [{"text": "a"}, {"body": "b"}])
    with pytest.raises(DataError, match=r"x\.jsonl:2: field 'text' missing"):
        preprocess_domains(tmp_path / "d", tmp_path / "bin", tokenizer, progress=False)


def test_domain_without_text_is_refused(tokenizer, tmp_path):
    write_jsonl(tmp_path / "d" / "empty.jsonl", [{"text": ""}])
    with pytest.raises(DataError, match="no non-empty documents"):
        preprocess_domains(tmp_path / "d", tmp_path / "bin", tokenizer, progress=False)
    assert list((tmp_path / "bin").iterdir()) == []


def test_no_input_files(tokenizer, tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match=r"no \.jsonl"):
        preprocess_domains(tmp_path / "d", tmp_path / "bin", tokenizer, progress=False)


def test_iter_jsonl_line_numbers_and_gzip_corruption(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"a": 1}, {"a": 2}])
    path.write_text(path.read_text() + "\n" + json.dumps({"a": 3}) + "\n")
    assert [(n, r["a"]) for n, r in iter_jsonl(path)] == [(1, 1), (2, 2), (4, 3)]
    gz = write_jsonl(tmp_path / "r.jsonl.gz", [{"a": i} for i in range(1000)])
    gz.write_bytes(gz.read_bytes()[:-30])
    with pytest.raises(DataError, match="corrupt"):
        list(iter_jsonl(gz))


def test_cli_trains_tokenizer_then_reuses_everything(tmp_path, capsys):
    write_domains(tmp_path / "data" / "domains", {"p": 60, "q": 40})
    argv = [
        "--input", str(tmp_path / "data" / "domains"), "--output-dir", str(tmp_path / "data" / "bin"),
        "--tokenizer", "train:320", "--workers", "1", "--quiet",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert set(summary["domains"]) == {"p", "q"}
    assert summary["domains"]["p"]["documents"] == 60
    tokenizer = Tokenizer.load(tmp_path / "data" / "tokenizer")
    prefix = summary["domains"]["q"]["prefix"]
    stamp = os.stat(prefix + ".bin").st_mtime_ns
    assert cli.main(argv) == 0
    assert os.stat(prefix + ".bin").st_mtime_ns == stamp
    assert Tokenizer.load(tmp_path / "data" / "tokenizer").fingerprint == tokenizer.fingerprint
    assert read_sidecar(prefix)["settings"]["tokenizer"]["fingerprint"] == tokenizer.fingerprint


def test_cli_reports_data_errors(tmp_path, capsys):
    argv = ["--input", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "bin"), "--quiet"]
    assert cli.main(argv) == 2
    assert "no such directory" in capsys.readouterr().err
