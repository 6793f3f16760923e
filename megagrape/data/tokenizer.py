"""Tokenizers behind one interface: Hugging Face ``tokenizers`` (tokenizer.json) and tiktoken.

This module holds the interface, its two backends and their files: :meth:`Tokenizer.save`
writes a directory, and :meth:`Tokenizer.load` reads one back, or an HF ``tokenizer.json``, or
the GPT-2 ``*.tiktoken`` ranks file. Making a tokenizer (training a byte-level BPE, fetching
GPT-2's) is :mod:`megagrape.data.tokenizer_build`.

Documents are encoded without special tokens: a literal ``<|endoftext|>`` inside a text is
encoded as ordinary text, so the end-of-document id ``eod`` appears only where the
preprocessing appends it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import tiktoken
import tokenizers
from tiktoken_ext.openai_public import r50k_pat_str

from megagrape.data.byte_level_bpe import byte_level_bpe_as_tiktoken
from megagrape.errors import DataError
from megagrape.utils.atomic import write_atomic

EOD_TOKEN = "<|endoftext|>"
CONFIG_FILE = "tokenizer_config.json"
HF_FILE = "tokenizer.json"

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
        write_atomic(directory / CONFIG_FILE, json.dumps(config, indent=2).encode())
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
    regex, no dropout or unknown token), which is what
    :func:`megagrape.data.tokenizer_build.train_bpe` makes, is encoded with tiktoken built
    from the same vocabulary (``engine == "tiktoken"``, about 6x faster here; see
    :mod:`megagrape.data.byte_level_bpe`). tiktoken merges adjacent tokens by the rank of the
    merged token, ``tokenizers`` by the rank of the merge rule; they agree unless one token can
    be formed by two different merges, and gave identical ids on every document of the 8 MB
    quickstart corpus.
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
        self._engine = byte_level_bpe_as_tiktoken(backend, name) if fast else None

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
        write_atomic(directory / HF_FILE, self._payload())
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
        write_atomic(directory / filename, _ranks_to_bytes(self._ranks))
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


def check_vocab_fits(tokenizer: Tokenizer, model_vocab_size: int, where: str) -> None:
    """Raise DataError when the tokenizer can emit ids the model's embedding cannot hold."""
    if tokenizer.vocab_size > model_vocab_size:
        raise DataError(
            f"{where}: tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} ids but "
            f"model.vocab_size is {model_vocab_size}; set model.vocab_size >= {tokenizer.vocab_size} "
            "(or pad it up to a multiple of 128), or use a smaller tokenizer"
        )


def read_saved_metadata(directory: Path) -> dict[str, Any] | None:
    """The ``metadata`` recorded by :meth:`Tokenizer.save` in ``directory``; None if not saved."""
    config_path = Path(directory) / CONFIG_FILE
    if not config_path.is_file():
        return None
    config = _read_json(config_path)
    return config.get("metadata") if config.get("megagrape_tokenizer") == 1 else None


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
        return gpt2_from_bytes(data, str(path))
    raise DataError(
        f"tokenizer {path}: only the GPT-2 r50k_base .tiktoken file (sha256 {GPT2_TIKTOKEN_SHA256[:12]}...) "
        "can be loaded bare, because a .tiktoken file does not say its split pattern or special "
        "tokens; use --tokenizer gpt2, or a directory written by Tokenizer.save"
    )


def gpt2_from_bytes(data: bytes, origin: str) -> Tokenizer:
    """The GPT-2 BPE (r50k_base) from the bytes of ``gpt2.tiktoken``; ``origin`` names them in errors."""
    return TiktokenTokenizer(
        name="gpt2",
        ranks=_ranks_from_bytes(data, origin),
        pattern=r50k_pat_str,
        special_tokens={EOD_TOKEN: GPT2_EOD},
        eod=GPT2_EOD,
    )


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
