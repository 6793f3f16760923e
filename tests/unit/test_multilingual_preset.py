"""The multilingual preset: its structure, the fortune and man-page extractors, LM targets.

Every package here is built by the test in the download cache (no network). The man-page
rendering tests need the ``man`` program (man-db) and are skipped without it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from megagrape.data.corpus import PRESETS, DomainSpec, Preset, TargetSpec, prepare_corpus
from megagrape.data.corpus.fetch import Package
from megagrape.data.corpus.manpages import clean_man_text, is_redirect, render_man_page
from megagrape.data.corpus.presets import get_preset
from megagrape.data.corpus.sources import (
    Source,
    english_share,
    fortunes,
    lm_documents,
    man_pages,
    pack_pieces,
    split_fortunes,
    text_chunks,
)
from megagrape.data.target_formats import read_target_file
from megagrape.errors import DataError
from megagrape.experiments.benchmark_spec import PRESETS as BENCHMARK_PRESETS

needs_man = pytest.mark.skipif(shutil.which("man") is None, reason="needs man-db (`man`)")

FORTUNE_FILE = (
    "Erste Weisheit.\n"
    "\t\t-- Autor\n"
    "%\n"
    "%\n"
    "Zweite Weisheit,\n"
    "\n"
    "mit einem zweiten Absatz.   \n"
    "%\n"
    "  eingerückt bleibt eingerückt\n"
    "%\n"
)

PAGE = r""".\" -*- coding: UTF-8 -*-
.TH FROB 1 "2024" "frob 1.0" "User Commands"
.SH NAME
frob \- frobnicate the widgets
.SH DESCRIPTION
.B frob
turns each of the widgets in the folder around twice, and it stops when all of them are done.
.PP
Shared boilerplate paragraph about reporting bugs to the maintainers.
.SH TRANSLATION
Translated by somebody; see https://www.gnu.org/licenses/gpl-3.0.html for the licence.
"""
OTHER_PAGE = r""".TH KNOB 8 "2024" "knob 2.0" "System Administration"
.SH NAME
knob \- turn the knob
.SH DESCRIPTION
Turns the knob of the machine by exactly one notch to the left.
.PP
Shared boilerplate paragraph about reporting bugs to the maintainers.
"""


# ---- the preset --------------------------------------------------------------------------------


def test_preset_trains_eight_languages_and_targets_three_unseen_ones():
    preset = get_preset("multilingual")
    domains = [d.name for d in preset.domains]
    targets = [t.name for t in preset.targets]
    assert domains == ["en", "de", "fr", "es", "it", "ru", "ja", "zh"]
    assert targets == ["pl", "uk", "tr"]
    assert not set(domains) & set(targets)  # target languages are held out of training
    assert preset.max_mb_per_domain == 5.0
    assert BENCHMARK_PRESETS["multilingual"] == "data/multilingual"
    for target in preset.targets:
        assert target.kind == "lm"
        source = target.source
        assert source.extractor == "lm_documents" and source.options["reader"] == "man_pages"
        assert source.paths == (f"usr/share/man/{target.name}/*",)
        assert 200 <= source.options["min_chars"] < source.options["chunk_chars"] <= 2000
        assert source.package.name.startswith("manpages-")
    sources = [s for d in preset.domains for s in d.sources] + [t.source for t in preset.targets]
    for source in sources:
        assert source.package.registry == "debian" and source.package.version
        assert source.licence and source.package.licence
    packages = {s.package.name for s in sources}
    # no training package carries a target language
    assert not {f"manpages-{t}" for t in targets} & {
        s.package.name for d in preset.domains for s in d.sources
    }
    assert {"fortunes", "manpages", "manpages-zh", "debian-reference-ja"} <= packages
    # Spanish offensive fortunes stay out; strfile indexes are never read as text
    es_fortunes = next(s for s in get_domain(preset, "es").sources if s.extractor == "fortunes")
    assert "*/off/*" in es_fortunes.exclude and "*.dat" in es_fortunes.exclude
    zh_man = next(s for s in get_domain(preset, "zh").sources if s.extractor == "man_pages")
    assert zh_man.paths == ("usr/share/man/zh_CN/*",)  # zh_TW is the same text converted


def get_domain(preset: Preset, name: str) -> DomainSpec:
    return next(d for d in preset.domains if d.name == name)


# ---- fortunes ------------------------------------------------------------------------------------


def test_split_fortunes_splits_on_percent_lines_and_keeps_indentation():
    assert split_fortunes(FORTUNE_FILE) == [
        "Erste Weisheit.\n\t\t-- Autor",
        "Zweite Weisheit,\n\nmit einem zweiten Absatz.",
        "  eingerückt bleibt eingerückt",
    ]
    assert split_fortunes("no delimiter at all\n") == ["no delimiter at all"]
    assert split_fortunes("%\n%\n\n%\n") == []
    # a "%" inside a line is text, not a delimiter
    assert split_fortunes("50% off\n%\nnext\n") == ["50% off", "next"]


def test_fortunes_drops_repeats_and_index_files_and_respects_the_size():
    entries = [f"Spruch Nummer {i}: " + "wort " * 20 for i in range(30)]
    first = "\n%\n".join(entries[:20]) + "\n%\n"
    second = "\n%\n".join([entries[3], *entries[20:]]) + "\n%\n"  # entries[3] repeats
    files = [
        ("de/a", first.encode()),
        ("de/a.dat", b"\x00\x00\x00\x02\x00\x00\x00\x14"),
        ("de/b", second.encode()),
    ]
    documents = list(fortunes(files, chunk_chars=400))
    assert all(len(d) <= 400 for d in documents)
    joined = "\n\n".join(documents).split("\n\n")
    assert [e.strip() for e in joined] == [e.strip() for e in entries]  # each once, in order
    assert len(documents) >= 30 * 120 // 400


# ---- packing -------------------------------------------------------------------------------------


def test_pack_pieces_bounds_chunk_sizes_and_keeps_every_piece():
    pieces = [f"piece {i} " + "x" * (i * 7 % 90) for i in range(200)]
    chunks = pack_pieces(pieces, 500, min_chars=120)
    assert "\n\n".join(chunks).split("\n\n") == pieces
    assert all(120 <= len(c) <= 500 + 120 for c in chunks)
    assert sum(len(c) > 500 for c in chunks) <= 1  # only a merged tail may pass the limit


def test_pack_pieces_cuts_long_lines_and_drops_texts_below_the_minimum():
    prose = "\n".join("zeile " * 12 for _ in range(40))  # 40 lines of 72 characters
    chunks = pack_pieces([prose], 300)
    assert all(len(c) <= 300 for c in chunks)
    assert "".join(chunks).replace("\n", "") == prose.replace("\n", "")
    cjk = "汉" * 1000  # no spaces: cut hard at the limit
    assert [len(c) for c in pack_pieces([cjk], 300)] == [300, 300, 300, 100]
    assert pack_pieces(["too short"], 300, min_chars=50) == []


def test_text_chunks_reads_gzipped_files():
    text = "Erster Absatz.\n\nZweiter Absatz.\n"
    files = [
        ("usr/share/debian-reference/debian-reference.de.txt.gz", gzip.compress(text.encode()))
    ]
    assert list(text_chunks(files, chunk_kb=1.0)) == ["Erster Absatz.\n\nZweiter Absatz."]


# ---- man pages -----------------------------------------------------------------------------------


RENDERED = """LS(1)                        Polecenia użytkownika                       LS(1)

NAZWA
       ls - wypisuje zawartość katalogu

OPIS
       Wypisuje informacje o PLIKACH.

       -a, --all
              bez ukrywania plików

TŁUMACZENIE
       Niniejsze tłumaczenie jest wolną dokumentacją; GNU General Public
       License ⟨https://www.gnu.org/licenses/gpl-3.0.html⟩.



GNU coreutils 9.1                wrzesień 2022                           LS(1)
"""


def test_clean_man_text_drops_header_footer_translation_section_and_indent():
    assert clean_man_text(RENDERED) == (
        "NAZWA\n"
        "ls - wypisuje zawartość katalogu\n"
        "\n"
        "OPIS\n"
        "Wypisuje informacje o PLIKACH.\n"
        "\n"
        "-a, --all\n"
        "       bez ukrywania plików"
    )
    # without markers the credits stay; a page without a running title keeps its first line
    assert "TŁUMACZENIE" in clean_man_text(RENDERED, drop_sections_with=())
    assert clean_man_text("NAME\n    plain text\n") == "NAME\nplain text"


def test_is_redirect_recognises_so_stubs_only():
    assert is_redirect(b'.\\" comment\n.so man1/bzip2.1\n')
    assert is_redirect(b".so man3/printf.3\n\n")
    assert not is_redirect(PAGE.encode())
    assert not is_redirect(b".so man1/a.1\n.so man1/b.1\n")


def test_english_share_separates_untranslated_paragraphs():
    english = "If the nocasematch shell option is enabled, the match is performed without regard"
    polish = "Jeżeli opcja powłoki nocasematch jest włączona, dopasowanie nie uwzględnia wielkości"
    german = "Was an dieser Stelle geschieht, wird in der Anleitung genau beschrieben und erklärt"
    assert english_share(english) > 0.3
    assert english_share(polish) == 0.0
    assert english_share(german) < 0.2  # German "was"/"an" alone stay far below the cut
    assert english_share("the of and is") == 0.0  # too few words to judge


@needs_man
def test_render_man_page_gives_plain_utf8_text():
    text = render_man_page(PAGE.replace("widgets", "widgets – naïve ünïcode", 1).encode())
    assert text is not None
    assert "frob - frobnicate the widgets – naïve ünïcode" in text
    assert "\x08" not in text and "FROB(1)" in text  # plain text; header still there
    cleaned = clean_man_text(text)
    assert cleaned.startswith("NAME\nfrob - frobnicate")
    assert "FROB(1)" not in cleaned and "TRANSLATION" not in cleaned
    assert "turns each of the widgets in the folder around twice" in " ".join(cleaned.split())


@needs_man
def test_man_pages_skips_stubs_keeps_boilerplate_once_and_chunks():
    files = [
        ("usr/share/man/xx/man1/frob.1.gz", gzip.compress(PAGE.encode())),
        ("usr/share/man/xx/man1/frobnicate.1.gz", gzip.compress(b".so man1/frob.1\n")),
        ("usr/share/man/xx/man8/knob.8", OTHER_PAGE.encode()),
    ]
    documents = list(man_pages(files, chunk_chars=2000, workers=2))
    assert len(documents) == 2  # the stub renders nothing
    assert documents[0].startswith("NAME\nfrob") and documents[1].startswith("NAME\nknob")
    text = "\n".join(documents)
    assert text.count("Shared boilerplate paragraph") == 1
    assert "gpl-3.0" not in text
    # untranslated English paragraphs go when asked; the short NAME line is too short to judge
    not_english = "\n".join(man_pages(files, max_english_share=0.2, workers=1))
    assert "frob - frobnicate" in not_english and "Turns the knob" not in not_english
    assert "turns each of the widgets" not in not_english
    small = list(man_pages(files[:1], chunk_chars=60, min_chars=20, workers=1))
    assert len(small) > 1 and all(len(d) <= 60 + 20 for d in small)


# ---- LM targets ----------------------------------------------------------------------------------


def test_lm_documents_ids_are_content_hashes_and_the_cap_is_deterministic():
    entries = [
        f"Fortuna {i}: " + " ".join(f"słowo{i}x{j}" for j in range(8 + i)) for i in range(40)
    ]
    data = ("\n%\n".join(entries + entries[:5]) + "\n").encode()  # 5 repeats
    files = [("pl/a", data)]
    items = list(lm_documents(files, reader="fortunes", chunk_chars=150))
    texts = [item["text"] for item in items]
    assert texts == list(fortunes(files, chunk_chars=150))
    assert [i["id"] for i in items] == [hashlib.sha256(t.encode()).hexdigest()[:16] for t in texts]
    assert len({i["id"] for i in items}) == len(items)
    capped = list(lm_documents(files, reader="fortunes", chunk_chars=150, max_mb=0.002))
    assert 0 < sum(len(i["text"].encode()) for i in capped) <= 2000
    ids = [i["id"] for i in capped]
    assert ids == [i["id"] for i in items if i["id"] in set(ids)]  # reader order kept
    # the cap visits ids in order and takes each document that still fits
    size = {i["id"]: len(i["text"].encode()) for i in items}
    assert min(size) in ids
    for left_out in set(size) - set(ids):
        taken_before = sum(size[i] for i in ids if i < left_out)
        assert taken_before + size[left_out] > 2000
    assert capped == list(lm_documents(files, reader="fortunes", chunk_chars=150, max_mb=0.002))
    # equal documents (here two copies of one file) become one item
    twice = [("a.txt", b"Jeden akapit.\n"), ("b.txt", b"Jeden akapit.\n")]
    assert list(lm_documents(twice, reader="text_chunks")) == [
        {"id": hashlib.sha256(b"Jeden akapit.").hexdigest()[:16], "text": "Jeden akapit."}
    ]
    with pytest.raises(DataError, match="unknown reader"):
        list(lm_documents(files, reader="nope"))


# ---- a toy multilingual build (no network, no man) -------------------------------------------------

TRAIN_PKG = Package("debian", "fortunes-xx", "1.0-1", "GPL-2+")
TARGET_PKG = Package("debian", "fortunes-yy", "2.0-1", "GPL-2+")
HELD_OUT = "Ta przepowiednia jest tylko w zbiorze docelowym i nigdy nie trafia do treningu"


def _seed_debian(cache: Path, package: Package, files: dict[str, str]) -> None:
    folder = cache / "debian" / package.key
    root = folder / "root"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    (folder / f"{package.name}_{package.version}_all.deb").write_bytes(b"!<arch>\n")
    (root / ".complete").write_text("ok\n")


def test_toy_multilingual_build_writes_lm_targets_and_decontaminates(monkeypatch, tmp_path):
    train_entries = [f"Training fortune {i} about the sea and the wind." for i in range(50)]
    train_entries[17] = f"Stolen: {HELD_OUT}."  # a held-out target text in a training file
    target_entries = [HELD_OUT] + [f"Inna przepowiednia numer {i} o morzu." for i in range(30)]
    cache = tmp_path / "cache"
    _seed_debian(
        cache,
        TRAIN_PKG,
        {"usr/share/games/fortunes/xx/a": "\n%\n".join(train_entries) + "\n%\n"},
    )
    _seed_debian(
        cache,
        TARGET_PKG,
        {"usr/share/games/fortunes/yy/b": "\n%\n".join(target_entries) + "\n%\n"},
    )
    preset = Preset(
        name="toy_multilingual",
        description="toy",
        domains=(
            DomainSpec(
                "xx",
                "training language",
                (
                    Source(
                        TRAIN_PKG,
                        "fortunes",
                        ("usr/share/games/fortunes/xx/*",),
                        "GPL-2+",
                        options={"chunk_chars": 200},
                    ),
                ),
            ),
        ),
        targets=(
            TargetSpec(
                "yy",
                "held-out language",
                "lm",
                Source(
                    TARGET_PKG,
                    "lm_documents",
                    ("usr/share/games/fortunes/yy/*",),
                    "GPL-2+",
                    options={"reader": "fortunes", "chunk_chars": 120, "min_chars": 30},
                ),
            ),
        ),
        max_mb_per_domain=1.0,
    )
    monkeypatch.setitem(PRESETS, preset.name, preset)
    out = tmp_path / "out"
    manifest = prepare_corpus(preset.name, out, cache_dir=cache, progress=False)

    kind, documents = read_target_file("yy", out / "targets/yy.jsonl")
    assert kind == "lm" and len(documents) == manifest.targets["yy"].count >= 5
    assert all(30 <= len(d.text) <= 150 for d in documents)
    assert HELD_OUT in documents[0].text
    assert manifest.targets["yy"].kind == "lm"
    assert manifest.targets["yy"].sources[0].version == "2.0-1"

    training = [
        json.loads(line)["text"] for line in (out / "domains/xx.jsonl").read_text().splitlines()
    ]
    assert not any(HELD_OUT in text for text in training)
    assert manifest.domains["xx"].dropped_contaminated == 1
    assert sum(text.count("Training fortune") for text in training) >= 45
    assert manifest.decontamination["items_checked"] == len(documents)
