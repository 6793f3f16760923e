"""Tokenizers: trained byte-level BPE, save/load, HF tokenizer.json, tiktoken, vocab checks."""

from __future__ import annotations

import base64
import json
import pickle
import random

import pytest
import tokenizers

from megagrape.data.tokenizer import (
    CONFIG_FILE,
    EOD_TOKEN,
    GPT2_EOD,
    GPT2_TIKTOKEN_SHA256,
    GPT2_VOCAB_SIZE,
    HFTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    check_vocab_fits,
)
from megagrape.data.tokenizer_build import gpt2_tokenizer, resolve_tokenizer, train_bpe
from megagrape.errors import DataError
from megagrape.utils.hashing import sha256_file
from tests.data_utils import synthetic_texts, write_domains

SAMPLES = [
    "The river was cold in winter.",
    "  leading spaces and trailing  ",
    "Ünïcödé: 数据混合 — ok?",
    "code: def f(x):\n    return x * 2\n",
    "",
]


@pytest.fixture(scope="module")
def domain_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("domains")
    write_domains(directory, {"alpha": 300, "beta": 200})
    return directory


@pytest.fixture(scope="module")
def bpe(domain_dir):
    return train_bpe(sorted(domain_dir.glob("*.jsonl")), vocab_size=400)


def test_trained_bpe_round_trips_and_has_eod(bpe):
    assert bpe.vocab_size <= 400
    assert bpe.decode([bpe.eod]) == EOD_TOKEN
    for text in SAMPLES:
        ids = bpe.encode(text)
        assert all(0 <= i < bpe.vocab_size for i in ids)
        assert bpe.decode(ids) == text
    assert bpe.encode_batch(SAMPLES) == [bpe.encode(t) for t in SAMPLES]


def test_trained_bpe_compresses_the_training_text(bpe):
    text = "the river and the mountain of the city"
    assert len(bpe.encode(text)) < len(text.encode()) / 2


def odd_texts(count: int, seed: int) -> list[str]:
    """Strings mixing words, digits, punctuation, whitespace runs and non-ASCII characters."""
    rng = random.Random(seed)
    pieces = [
        "the",
        " river",
        "  ",
        "\n\n",
        "\t",
        "42",
        "3.14",
        "'s",
        "'ll",
        "!?",
        "—",
        "数据",
        "é",
        "🙂",
        "x" * 30,
    ]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 40))) for _ in range(count)]


def test_trained_bpe_encodes_through_tiktoken_identically(bpe):
    assert bpe.engine == "tiktoken"
    reference = HFTokenizer(
        tokenizers.Tokenizer.from_str(bpe._backend.to_str()), "ref", bpe.eod, fast=False
    )
    assert reference.engine == "tokenizers"
    texts = SAMPLES + synthetic_texts(100, seed=9) + odd_texts(300, seed=3)
    assert bpe.encode_batch(texts) == reference.encode_batch(texts)
    assert pickle.loads(pickle.dumps(reference)).engine == "tokenizers"


def test_tokenizers_that_are_not_plain_byte_level_bpe_keep_their_engine(bpe):
    backend = tokenizers.Tokenizer.from_str(bpe._backend.to_str())
    backend.normalizer = tokenizers.normalizers.Lowercase()
    lowered = HFTokenizer(backend, "lower", bpe.eod)
    assert lowered.engine == "tokenizers"
    assert lowered.encode("The RIVER") == bpe.encode("the river")


def test_literal_end_of_text_in_a_document_is_not_the_eod_id(bpe):
    ids = bpe.encode(f"one {EOD_TOKEN} two")
    assert bpe.eod not in ids
    assert bpe.decode(ids) == f"one {EOD_TOKEN} two"


def test_training_is_deterministic(domain_dir, bpe):
    again = train_bpe(sorted(domain_dir.glob("*.jsonl")), vocab_size=400)
    assert again.fingerprint == bpe.fingerprint
    other_seed = train_bpe(
        sorted(domain_dir.glob("*.jsonl")), vocab_size=400, sample_bytes=3000, seed=5
    )
    assert other_seed.fingerprint != bpe.fingerprint


def test_save_and_load_directory(bpe, tmp_path):
    saved = bpe.save(tmp_path / "tok", metadata={"why": "test"})
    config = json.loads((saved / CONFIG_FILE).read_text())
    assert config["kind"] == "hf"
    assert config["eod"] == bpe.eod
    assert config["vocab_size"] == bpe.vocab_size
    assert config["metadata"] == {"why": "test"}
    loaded = Tokenizer.load(saved)
    assert loaded.fingerprint == bpe.fingerprint
    assert loaded.eod == bpe.eod
    assert [loaded.encode(t) for t in SAMPLES] == [bpe.encode(t) for t in SAMPLES]


def test_edited_vocabulary_is_detected(bpe, tmp_path):
    saved = bpe.save(tmp_path / "tok")
    other = json.loads((saved / "tokenizer.json").read_text())
    other["model"]["vocab"]["zzzz_extra"] = bpe.vocab_size
    (saved / "tokenizer.json").write_text(json.dumps(other))
    with pytest.raises(DataError, match="fingerprint"):
        Tokenizer.load(saved)


def test_pickle_round_trip_keeps_encoding(bpe):
    copy = pickle.loads(pickle.dumps(bpe))
    assert copy.fingerprint == bpe.fingerprint
    assert copy.encode(SAMPLES[0]) == bpe.encode(SAMPLES[0])


def test_load_plain_hf_tokenizer_json(bpe, tmp_path):
    path = tmp_path / "hf" / "tokenizer.json"
    path.parent.mkdir()
    path.write_text(bpe._backend.to_str())
    loaded = Tokenizer.load(path)
    assert loaded.eod == bpe.eod
    assert loaded.encode(SAMPLES[2]) == bpe.encode(SAMPLES[2])


def test_hf_tokenizer_config_names_the_eos_token(tmp_path):
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<my_end>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(["some text to train on"] * 10, trainer=trainer)
    directory = tmp_path / "hf"
    directory.mkdir()
    backend.save(str(directory / "tokenizer.json"))
    with pytest.raises(DataError, match="no end-of-document token"):
        Tokenizer.load(directory / "tokenizer.json")
    (directory / CONFIG_FILE).write_text(json.dumps({"eos_token": {"content": "<my_end>"}}))
    assert Tokenizer.load(directory / "tokenizer.json").eod == backend.token_to_id("<my_end>")
    assert Tokenizer.load(directory).eod == backend.token_to_id("<my_end>")


def test_tiktoken_tokenizer_save_load(tmp_path):
    ranks = {bytes([b]): b for b in range(256)}
    ranks[b"ab"] = 256
    tokenizer = TiktokenTokenizer(
        name="tiny", ranks=ranks, pattern=r"\S+|\s+", special_tokens={EOD_TOKEN: 257}, eod=257
    )
    assert tokenizer.encode("abab c") == [256, 256, ord(" "), ord("c")]
    assert tokenizer.vocab_size == 258
    loaded = Tokenizer.load(tokenizer.save(tmp_path / "tik"))
    assert loaded.fingerprint == tokenizer.fingerprint
    assert loaded.encode("abab c") == tokenizer.encode("abab c")
    assert pickle.loads(pickle.dumps(tokenizer)).encode("ab") == [256]


def test_unknown_tiktoken_file_is_refused(tmp_path):
    path = tmp_path / "mine.tiktoken"
    path.write_bytes(base64.b64encode(b"a") + b" 0\n")
    with pytest.raises(DataError, match="GPT-2 r50k_base"):
        Tokenizer.load(path)


def test_missing_tokenizer_path(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        Tokenizer.load(tmp_path / "nope")


def test_check_vocab_fits(bpe):
    check_vocab_fits(bpe, bpe.vocab_size, "model.vocab_size")
    with pytest.raises(DataError) as info:
        check_vocab_fits(bpe, bpe.vocab_size - 1, "configs/run.yaml model.vocab_size")
    message = str(info.value)
    assert str(bpe.vocab_size) in message and str(bpe.vocab_size - 1) in message
    assert "configs/run.yaml" in message and "model.vocab_size" in message


def test_too_small_vocab_is_refused(domain_dir):
    with pytest.raises(DataError, match="at least 257"):
        train_bpe(sorted(domain_dir.glob("*.jsonl")), vocab_size=100)


def test_resolve_train_reuses_a_matching_saved_tokenizer(domain_dir, tmp_path):
    files = sorted(domain_dir.glob("*.jsonl"))
    save_dir = tmp_path / "tokenizer"
    first = resolve_tokenizer("train:350", files, save_dir, cache_dir=tmp_path / "cache")
    written = (save_dir / "tokenizer.json").stat().st_mtime_ns
    again = resolve_tokenizer("train:350", files, save_dir, cache_dir=tmp_path / "cache")
    assert again.fingerprint == first.fingerprint
    assert (save_dir / "tokenizer.json").stat().st_mtime_ns == written
    bigger = resolve_tokenizer("train:420", files, save_dir, cache_dir=tmp_path / "cache")
    assert bigger.fingerprint != first.fingerprint
    assert Tokenizer.load(save_dir).fingerprint == bigger.fingerprint
    with pytest.raises(DataError, match="train:VOCAB"):
        resolve_tokenizer("train:big", files, save_dir, cache_dir=tmp_path / "cache")


def test_resolve_path_copies_tokenizer_next_to_data(bpe, tmp_path):
    source = bpe.save(tmp_path / "elsewhere")
    resolved = resolve_tokenizer(
        str(source), [], tmp_path / "data" / "tokenizer", tmp_path / "cache"
    )
    assert resolved.fingerprint == bpe.fingerprint
    assert Tokenizer.load(tmp_path / "data" / "tokenizer").fingerprint == bpe.fingerprint


@pytest.mark.slow
def test_gpt2_tokenizer_from_whisper_sdist(tmp_path):
    tokenizer = gpt2_tokenizer(tmp_path / "cache")
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.vocab_size == GPT2_VOCAB_SIZE
    assert tokenizer.eod == GPT2_EOD
    assert sha256_file(tmp_path / "cache" / "gpt2.tiktoken") == GPT2_TIKTOKEN_SHA256
    assert Tokenizer.load(tmp_path / "cache" / "gpt2.tiktoken").encode("Hello world") == [
        15496,
        995,
    ]
    saved = tokenizer.save(tmp_path / "tok")
    assert sha256_file(saved / "gpt2.tiktoken") == GPT2_TIKTOKEN_SHA256
    assert Tokenizer.load(saved).fingerprint == tokenizer.fingerprint
