"""megagrape tokenizer -> a transformers fast tokenizer (tokenizer.json + tokenizer_config.json).

* A ``tokenizers`` tokenizer (megagrape's trained byte-level BPE, any HF tokenizer.json) is
  wrapped as it is.
* A tiktoken BPE (GPT-2's r50k_base ranks, or any ``*.tiktoken`` saved by megagrape) becomes a
  byte-level BPE: the vocabulary spells each token's bytes with GPT-2's byte-to-unicode
  table, and the merges are every split of a token into two vocabulary tokens, ranked by the
  rank of the merged token. Applying the lowest-ranked merge first is then tiktoken's rule
  (merge the adjacent pair whose concatenation has the lowest rank); ``ignore_merges`` takes
  a pre-token that is itself a token whole, as tiktoken does. The split pattern becomes a
  ``Split`` pre-tokenizer followed by ``ByteLevel`` without its own regex.

bos and eos are the end-of-document token (what megagrape puts between documents), so
lm-evaluation-harness scores a choice with an empty context after that token, as megagrape's
own evaluation does. pad is that token too, as GPT-2-style exports do, so ``tokenizer(batch,
padding=True)`` works (the attention mask, not the id, tells padding from a real eod). The exported tokenizer is checked against megagrape's on a fixed
multilingual sample: a difference raises instead of writing a tokenizer that disagrees.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

from megagrape.data.tokenizer import CONFIG_FILE, Tokenizer
from megagrape.errors import DataError

HF_TOKENIZER_CONFIG = "tokenizer_config.json"
SELF_CHECK_TEXT = (
    "Hello world! It's 2025: naïve café, 42 apples...\n\n"
    "def f(x):\n    return x ** 2  # comment\n"
    "Größe und Maße. Съешь же ещё этих мягких французских булок. 日本語のテキスト。 🍇🍇\t end"
)


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table: printable Latin-1 bytes map to themselves,
    the other 68 bytes to code points 256, 257, ... in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + offset) for offset, b in enumerate(others)})
    return table


def tiktoken_to_tokenizers(
    ranks: dict[bytes, int], pattern: str, special_tokens: dict[str, int]
) -> tokenizers.Tokenizer:
    """A ``tokenizers`` byte-level BPE that encodes like tiktoken with these ranks."""
    table = gpt2_bytes_to_unicode()

    def spell(token: bytes) -> str:
        return "".join(table[b] for b in token)

    vocab = {spell(token): rank for token, rank in ranks.items()}
    ranked_merges = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                ranked_merges.append((rank, ranks[left], ranks[right], spell(left), spell(right)))
    ranked_merges.sort()
    vocab.update(special_tokens)
    backend = tokenizers.Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=[(left, right) for *_, left, right in ranked_merges],
            fuse_unk=False,
            ignore_merges=True,
        )
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    ordered = sorted(special_tokens.items(), key=lambda item: item[1])
    backend.add_special_tokens(
        [AddedToken(text, special=True, normalized=False) for text, _ in ordered]
    )
    for text, token_id in ordered:
        if backend.token_to_id(text) != token_id:
            raise DataError(
                f"special token {text!r}: id {token_id} cannot be kept in the exported tokenizer "
                f"(got {backend.token_to_id(text)})"
            )
    return backend


def _read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    from tiktoken.load import load_tiktoken_bpe

    return load_tiktoken_bpe(str(path))


def hf_backend(tokenizer: Tokenizer) -> tokenizers.Tokenizer:
    """The ``tokenizers`` object equivalent to a megagrape tokenizer (read from its saved files)."""
    with tempfile.TemporaryDirectory(prefix="megagrape_tokenizer_") as scratch:
        directory = tokenizer.save(Path(scratch))
        config = json.loads((directory / CONFIG_FILE).read_text())
        vocab_file = directory / config["file"]
        if config["kind"] == "hf":
            return tokenizers.Tokenizer.from_file(str(vocab_file))
        return tiktoken_to_tokenizers(
            _read_tiktoken_ranks(vocab_file),
            config["pattern"],
            {text: int(token_id) for text, token_id in config["special_tokens"].items()},
        )


@dataclass(frozen=True)
class ConvertedTokenizer:
    megagrape: Tokenizer
    """The source tokenizer (its eod and vocab_size set the exported model's)."""
    hf: Any
    """The checked transformers fast tokenizer, not yet saved."""

    def save(self, out_dir: Path) -> None:
        """Write tokenizer.json and tokenizer_config.json into ``out_dir``."""
        self.hf.save_pretrained(str(out_dir))
        _name_generic_class(Path(out_dir) / HF_TOKENIZER_CONFIG)


def convert_tokenizer(source: Path, model_max_length: int) -> ConvertedTokenizer:
    """``source`` (anything megagrape's Tokenizer.load reads) as a transformers fast tokenizer,
    checked to encode the self-check text exactly as megagrape does (DataError otherwise)."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer.load(Path(source))
    backend = hf_backend(tokenizer)
    eod_token = backend.id_to_token(tokenizer.eod)
    if eod_token is None:
        raise DataError(f"tokenizer {source}: its eod id {tokenizer.eod} has no token string")
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=eod_token,
        eos_token=eod_token,
        pad_token=eod_token,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    exported = hf_tokenizer(SELF_CHECK_TEXT, add_special_tokens=False, verbose=False)["input_ids"]
    expected = tokenizer.encode(SELF_CHECK_TEXT)
    if exported != expected:
        first = next(
            (i for i, (a, b) in enumerate(zip(exported, expected)) if a != b),
            min(len(exported), len(expected)),
        )
        raise DataError(
            f"tokenizer {source}: the exported tokenizer encodes the self-check text differently "
            f"from megagrape's (first difference at token {first}: {exported[first : first + 3]} "
            f"vs {expected[first : first + 3]}); this tokenizer cannot be exported exactly"
        )
    return ConvertedTokenizer(megagrape=tokenizer, hf=hf_tokenizer)


def export_tokenizer(source: Path, out_dir: Path, model_max_length: int) -> Tokenizer:
    """Convert ``source`` and write it into ``out_dir``; returns the megagrape tokenizer."""
    converted = convert_tokenizer(source, model_max_length)
    converted.save(out_dir)
    return converted.megagrape


def _name_generic_class(config_path: Path) -> None:
    """Record the class as ``PreTrainedTokenizerFast``: transformers 5 writes its new name
    (``TokenizersBackend``), which transformers 4 cannot load; both load the old name."""
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
