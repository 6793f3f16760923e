"""Benchmark decontamination: drop training documents that share an n-gram with a target item.

Text is normalised to lower-case word tokens (``\\w+``). Every target item contributes the
n-grams (n = 13 by default, as in the GPT-3 paper) of its context followed by its gold
continuation; an item shorter than n words contributes itself whole as one shorter n-gram
if it has at least ``min_words`` words (shorter items are counted as unchecked). A training
document is contaminated when any of its n-grams (for any of those lengths) equals one of
the target n-grams.

N-grams are compared as 64-bit polynomial hashes of word ids, computed with numpy over a
whole domain at once. Words that occur in no target item get id 0, as do document
boundaries, and a window holding a 0 never matches, so only windows made entirely of
target words are looked up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

_WORD = re.compile(r"\w+")
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


def normalized_words(text: str) -> list[str]:
    """Lower-case word tokens of ``text`` (letters, digits and underscores)."""
    return _WORD.findall(text.lower())


def _window_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """Hash of every length-``n`` window of ``ids`` (uint64, wrapping); shape (len(ids)-n+1,)."""
    count = len(ids) - n + 1
    hashes = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(n):
            hashes = hashes * _MULTIPLIER + ids[offset : offset + count]
    return hashes


def _windows_without_zero(ids: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask over windows of length ``n``: True where no id in the window is 0."""
    zeros = np.concatenate(([0], np.cumsum(ids == 0)))
    return (zeros[n:] - zeros[:-n]) == 0


@dataclass
class NgramIndex:
    """Target n-grams to search for, built with :meth:`from_items`.

    ``vocab`` maps a target word to its id (from 1); ``hashes`` maps an n-gram length to the
    sorted uint64 hashes of that length; ``items_unchecked`` counts target items with fewer
    than ``min_words`` words.
    """

    n: int
    min_words: int
    vocab: dict[str, int] = field(default_factory=dict)
    hashes: dict[int, np.ndarray] = field(default_factory=dict)
    items_checked: int = 0
    items_unchecked: int = 0

    @classmethod
    def from_texts(cls, texts: Iterable[str], n: int = 13, min_words: int = 8) -> NgramIndex:
        """Index the n-grams of each target text (context + gold continuation)."""
        index = cls(n=n, min_words=min_words)
        by_length: dict[int, list[np.ndarray]] = {}
        for text in texts:
            words = normalized_words(text)
            if len(words) < min_words:
                index.items_unchecked += 1
                continue
            index.items_checked += 1
            ids = np.array(
                [index.vocab.setdefault(w, len(index.vocab) + 1) for w in words], dtype=np.uint64
            )
            length = min(n, len(words))
            by_length.setdefault(length, []).append(_window_hashes(ids, length))
        index.hashes = {
            length: np.unique(np.concatenate(parts)) for length, parts in by_length.items()
        }
        return index

    @property
    def ngram_count(self) -> int:
        """Number of distinct target n-grams (all lengths)."""
        return int(sum(len(h) for h in self.hashes.values()))

    def contaminated(self, documents: Sequence[str]) -> np.ndarray:
        """Boolean mask, shape (len(documents),): True for documents sharing a target n-gram."""
        flags = np.zeros(len(documents), dtype=bool)
        if not self.hashes or not documents:
            return flags
        vocab = self.vocab
        id_lists: list[list[int]] = []
        starts = np.zeros(len(documents), dtype=np.int64)
        position = 0
        for number, text in enumerate(documents):
            starts[number] = position
            word_ids = [vocab.get(w, 0) for w in normalized_words(text)]
            word_ids.append(0)  # document boundary
            id_lists.append(word_ids)
            position += len(word_ids)
        ids = np.fromiter(
            (i for word_ids in id_lists for i in word_ids), dtype=np.uint64, count=position
        )
        for length, targets in self.hashes.items():
            if len(ids) < length:
                continue
            hashes = _window_hashes(ids, length)
            candidates = np.flatnonzero(_windows_without_zero(ids, length))
            if candidates.size == 0:
                continue
            hit = np.isin(hashes[candidates], targets, assume_unique=False)
            positions = candidates[hit]
            flags[np.searchsorted(starts, positions, side="right") - 1] = True
        return flags
