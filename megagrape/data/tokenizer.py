"""Tokenizers behind one interface: Hugging Face ``tokenizers`` (tokenizer.json) and tiktoken.

Three ways to get one:

* :func:`gpt2_tokenizer` — the GPT-2 BPE (tiktoken ``r50k_base`` ranks, 50,257 ids,
  ``<|endoftext|>`` = 50256), fetched offline from the ``openai-whisper`` sdist on PyPI;
* :func:`train_bpe` — a byte-level BPE trained locally on a sample of the domain files;
* :meth:`Tokenizer.load` — a directory written by :meth:`Tokenizer.save`, an HF
  ``tokenizer.json``, or a ``*.tiktoken`` ranks file.

Documents are encoded without special tokens: a literal ``<|endoftext|>`` inside a text is
encoded as ordinary text, so the end-of-document id ``eod`` appears only where the
preprocessing appends it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import tiktoken
import tokenizers
from tiktoken_ext.openai_public import r50k_pat_str

from megagrape.data.jsonl import iter_jsonl
from megagrape.errors import DataError

EOD_TOKEN = "<|endoftext|>"
CONFIG_FILE = "tokenizer_config.json"
HF_FILE = "tokenizer.json"

WHISPER_VERSION = "20250625"
GPT2_TIKTOKEN_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_VOCAB_SIZE = 50257
GPT2_EOD = 50256

# Special tokens that mark the end of a document in common HF tokenizers, in order of preference.
_EOD_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[EOS]")


class Tokenizer(ABC):
    """Text <-> token ids. ``vocab_size`` counts every id the tokenizer can emit (special ones too)."""

    kind: ClassVar[str]
    name: str
    eod: int

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""

    @abstractmethod
    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``, computed in one call (faster)."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abstractmethod
    def _payload(self) -> bytes:
        """The bytes that define the vocabulary and merges (what the fingerprint hashes)."""

    @abstractmethod
    def _save_files(self, directory: Path) -> dict[str, Any]:
        """Write the vocabulary files into ``directory``; return extra config entries."""

    @property
    def fingerprint(self) -> str:
        """sha256 over kind, eod and vocabulary: equal fingerprints encode identically."""
        digest = hashlib.sha256(f"{self.kind}:{self.eod}:".encode())
        digest.update(self._payload())
        return digest.hexdigest()

    def save(self, directory: Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write the tokenizer into ``directory`` (created) and return the directory.

        Writes the vocabulary (``tokenizer.json`` for HF tokenizers, ``<name>.tiktoken`` for
        tiktoken ones) and ``tokenizer_config.json`` with kind, name, eod, vocab size,
        fingerprint and ``metadata`` (e.g. how it was trained). ``Tokenizer.load(directory)``
        reads it back.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "megagrape_tokenizer": 1,
            "kind": self.kind,
            "name": self.name,
            "eod": self.eod,
            "vocab_size": self.vocab_size,
            "fingerprint": self.fingerprint,
            **self._save_files(directory),
            "metadata": metadata or {},
        }
        _write_atomic(directory / CONFIG_FILE, json.dumps(config, indent=2).encode())
        return directory

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        """Load a directory written by :meth:`save`, an HF tokenizer.json, or a *.tiktoken file."""
        path = Path(path)
        if path.is_dir():
            return _load_directory(path)
        if not path.is_file():
            raise DataError(
                f"tokenizer {path}: no such file or directory; give a directory written by "
                "tools/preprocess_data.py (DIR/tokenizer), an HF tokenizer.json or a .tiktoken file"
            )
        if path.suffix == ".tiktoken":
            return _load_tiktoken_file(path)
        return _load_hf_file(path, eod_hint=_hf_eos_hint(path.parent))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, eod={self.eod})"


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers.Tokenizer`` (any model; byte-level BPE when trained here).

    A plain byte-level BPE (GPT-2 style: no normalizer, the ByteLevel pre-tokenizer with its
    regex, no dropout or unknown token), which is what :func:`train_bpe` makes, is encoded
    with tiktoken built from the same vocabulary (``engine == "tiktoken"``, about 6x faster
    here). tiktoken merges adjacent tokens by the rank of the merged token, ``tokenizers`` by
    the rank of the merge rule; they agree unless one token can be formed by two different
    merges, and gave identical ids on every document of the 8 MB quickstart corpus.
    Pass ``fast=False`` to always encode with ``tokenizers``.
    """

    kind = "hf"

    def __init__(
        self, backend: tokenizers.Tokenizer, name: str, eod: int, fast: bool = True
    ) -> None:
        backend.encode_special_tokens = True
        self._backend = backend
        self.name = name
        self.eod = eod
        if not 0 <= eod < self.vocab_size:
            raise DataError(
                f"tokenizer {name}: eod id {eod} is outside the vocabulary [0, {self.vocab_size})"
            )
        self._fast = fast
        self._engine = _byte_level_bpe_as_tiktoken(backend, name) if fast else None

    @property
    def engine(self) -> str:
        """What encodes: ``"tiktoken"`` (plain byte-level BPE) or ``"tokenizers"``."""
        return "tiktoken" if self._engine is not None else "tokenizers"

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        if self._engine is not None:
            return self._engine.encode_ordinary(text)
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._engine is not None:
            return [self._engine.encode_ordinary(text) for text in texts]
        return [enc.ids for enc in self._backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def _payload(self) -> bytes:
        return self._backend.to_str().encode()

    def _save_files(self, directory: Path) -> dict[str, Any]:
        _write_atomic(directory / HF_FILE, self._payload())
        return {"file": HF_FILE}

    def __getstate__(self) -> dict[str, Any]:
        return {
            "payload": self._backend.to_str(),
            "name": self.name,
            "eod": self.eod,
            "fast": self._fast,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        backend = tokenizers.Tokenizer.from_str(state["payload"])
        self.__init__(backend, state["name"], state["eod"], fast=state["fast"])


class TiktokenTokenizer(Tokenizer):
    """A tiktoken BPE given by its mergeable ranks, split pattern and special tokens."""

    kind = "tiktoken"

    def __init__(
        self,
        name: str,
        ranks: dict[bytes, int],
        pattern: str,
        special_tokens: dict[str, int],
        eod: int,
    ) -> None:
        self.name = name
        self.eod = eod
        self._ranks = ranks
        self._pattern = pattern
        self._special_tokens = dict(special_tokens)
        self._encoding = tiktoken.Encoding(
            name=name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=self._special_tokens
        )
        if not 0 <= eod < self.vocab_size:
            raise DataError(
                f"tokenizer {name}: eod id {eod} is outside the vocabulary [0, {self.vocab_size})"
            )

    @property
    def vocab_size(self) -> int:
        return self._encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # A plain loop: tiktoken's own batch call submits one thread-pool task per text, which
        # costs more than it saves for the short texts of targets and inside pool workers.
        return [self._encoding.encode_ordinary(text) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return self._encoding.decode([int(i) for i in ids])

    def _payload(self) -> bytes:
        spec = json.dumps({"pattern": self._pattern, "special_tokens": self._special_tokens})
        return spec.encode() + _ranks_to_bytes(self._ranks)

    def _save_files(self, directory: Path) -> dict[str, Any]:
        filename = f"{self.name}.tiktoken"
        _write_atomic(directory / filename, _ranks_to_bytes(self._ranks))
        return {"file": filename, "pattern": self._pattern, "special_tokens": self._special_tokens}

    def __getstate__(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ranks": self._ranks,
            "pattern": self._pattern,
            "special_tokens": self._special_tokens,
            "eod": self.eod,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)


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
    return _gpt2_from_bytes(ranks_path.read_bytes(), str(ranks_path))


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


def check_vocab_fits(tokenizer: Tokenizer, model_vocab_size: int, where: str) -> None:
    """Raise DataError when the tokenizer can emit ids the model's embedding cannot hold."""
    if tokenizer.vocab_size > model_vocab_size:
        raise DataError(
            f"{where}: tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} ids but "
            f"model.vocab_size is {model_vocab_size}; set model.vocab_size >= {tokenizer.vocab_size} "
            "(or pad it up to a multiple of 128), or use a smaller tokenizer"
        )


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


def read_saved_metadata(directory: Path) -> dict[str, Any] | None:
    """The ``metadata`` recorded by :meth:`Tokenizer.save` in ``directory``; None if not saved."""
    config_path = Path(directory) / CONFIG_FILE
    if not config_path.is_file():
        return None
    config = _read_json(config_path)
    return config.get("metadata") if config.get("megagrape_tokenizer") == 1 else None


def _byte_level_bpe_as_tiktoken(
    backend: tokenizers.Tokenizer, name: str
) -> tiktoken.Encoding | None:
    """tiktoken over the same vocabulary when ``backend`` is a plain byte-level BPE, else None.

    Token strings of a byte-level BPE spell bytes through GPT-2's byte-to-unicode table;
    decoding them gives tiktoken's mergeable ranks (token bytes -> id). Added tokens must all
    be special (they are never produced from text here).
    """
    spec = json.loads(backend.to_str())
    model, pre_tokenizer = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    plain = (
        spec.get("normalizer") is None
        and pre_tokenizer.get("type") == "ByteLevel"
        and pre_tokenizer.get("use_regex", True)
        and not pre_tokenizer.get("add_prefix_space", False)
        and model.get("type") == "BPE"
        and model.get("dropout") is None
        and model.get("unk_token") is None
        and not model.get("continuing_subword_prefix")
        and not model.get("end_of_word_suffix")
        and not model.get("byte_fallback", False)
        and not model.get("ignore_merges", False)
        and all(token.get("special") for token in spec.get("added_tokens", []))
    )
    if not plain:
        return None
    special = {token["content"]: token["id"] for token in spec.get("added_tokens", [])}
    byte_of = _unicode_to_byte()
    ranks: dict[bytes, int] = {}
    for token, token_id in model["vocab"].items():
        if token in special:
            continue
        if any(char not in byte_of for char in token):
            return None
        ranks[bytes(byte_of[char] for char in token)] = token_id
    if len(ranks) < 256 or len(set(ranks.values())) != len(ranks):
        return None
    return tiktoken.Encoding(
        name=f"{name}-tiktoken", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens=special
    )


def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode``: printable bytes map to themselves, the other
    68 bytes to code points 256 and up, in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {chr(b): b for b in printable}
    others = [b for b in range(256) if b not in mapping.values()]
    mapping.update({chr(256 + offset): b for offset, b in enumerate(others)})
    return mapping


def _load_directory(directory: Path) -> Tokenizer:
    config_path = directory / CONFIG_FILE
    config = _read_json(config_path) if config_path.is_file() else {}
    if config.get("megagrape_tokenizer") != 1:
        hf_file = directory / HF_FILE
        if hf_file.is_file():
            return _load_hf_file(hf_file, eod_hint=_hf_eos_hint(directory))
        raise DataError(
            f"tokenizer directory {directory}: has neither {CONFIG_FILE} written by megagrape nor "
            f"{HF_FILE}; re-run tools/preprocess_data.py or point at a tokenizer file"
        )
    vocab_path = directory / config["file"]
    if not vocab_path.is_file():
        raise DataError(
            f"tokenizer {directory}: {vocab_path.name} is missing; re-run tools/preprocess_data.py"
        )
    if config["kind"] == HFTokenizer.kind:
        backend = tokenizers.Tokenizer.from_file(str(vocab_path))
        tokenizer: Tokenizer = HFTokenizer(backend, name=config["name"], eod=int(config["eod"]))
    elif config["kind"] == TiktokenTokenizer.kind:
        tokenizer = TiktokenTokenizer(
            name=config["name"],
            ranks=_ranks_from_bytes(vocab_path.read_bytes(), str(vocab_path)),
            pattern=config["pattern"],
            special_tokens={k: int(v) for k, v in config["special_tokens"].items()},
            eod=int(config["eod"]),
        )
    else:
        raise DataError(
            f"{config_path}: unknown tokenizer kind {config['kind']!r} (hf or tiktoken)"
        )
    if tokenizer.fingerprint != config.get("fingerprint", tokenizer.fingerprint):
        raise DataError(
            f"{config_path}: the vocabulary in {vocab_path.name} does not match the recorded "
            "fingerprint (edited or partly copied); re-run tools/preprocess_data.py"
        )
    return tokenizer


def _load_hf_file(path: Path, eod_hint: Any) -> Tokenizer:
    try:
        backend = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:
        raise DataError(f"tokenizer {path}: not a Hugging Face tokenizer.json ({exc})") from exc
    candidates = ([eod_hint] if isinstance(eod_hint, str) else []) + list(_EOD_CANDIDATES)
    for token in candidates:
        token_id = backend.token_to_id(token)
        if token_id is not None:
            return HFTokenizer(backend, name=path.parent.name or path.stem, eod=token_id)
    raise DataError(
        f"tokenizer {path}: no end-of-document token found (looked for {', '.join(candidates)}); "
        f"add one as a special token, or save the tokenizer with megagrape so that {CONFIG_FILE} "
        "names its eod id"
    )


def _hf_eos_hint(directory: Path) -> Any:
    """The ``eos_token`` of an HF ``tokenizer_config.json`` next to a tokenizer.json, if any."""
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        return None
    eos = _read_json(config_path).get("eos_token")
    return eos.get("content") if isinstance(eos, dict) else eos


def _load_tiktoken_file(path: Path) -> Tokenizer:
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() == GPT2_TIKTOKEN_SHA256:
        return _gpt2_from_bytes(data, str(path))
    raise DataError(
        f"tokenizer {path}: only the GPT-2 r50k_base .tiktoken file (sha256 {GPT2_TIKTOKEN_SHA256[:12]}...) "
        "can be loaded bare, because a .tiktoken file does not say its split pattern or special "
        "tokens; use --tokenizer gpt2, or a directory written by Tokenizer.save"
    )


def _gpt2_from_bytes(data: bytes, origin: str) -> Tokenizer:
    return TiktokenTokenizer(
        name="gpt2",
        ranks=_ranks_from_bytes(data, origin),
        pattern=r50k_pat_str,
        special_tokens={EOD_TOKEN: GPT2_EOD},
        eod=GPT2_EOD,
    )


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
    _write_atomic(target, data)


def _ranks_from_bytes(data: bytes, origin: str) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line_number, line in enumerate(data.splitlines(), start=1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError as exc:
            raise DataError(f"{origin}:{line_number}: not a '<base64 token> <rank>' line") from exc
    return ranks


def _ranks_to_bytes(ranks: dict[bytes, int]) -> bytes:
    ordered = sorted(ranks.items(), key=lambda item: item[1])
    return b"".join(base64.b64encode(token) + b" %d\n" % rank for token, rank in ordered)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path}: not valid JSON ({exc}); delete it and re-run tools/preprocess_data.py"
        ) from exc


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename (never half-written)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
