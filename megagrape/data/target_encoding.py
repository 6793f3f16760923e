"""Target sequences as token ids: lm-evaluation-harness's encoding, eval requests and batches.

Encoding follows lm-evaluation-harness: trailing whitespace of the context moves to the
continuation; the continuation's tokens are those of ``encode(context + continuation)`` after
the first ``len(encode(context))``; an empty context becomes the end-of-document token; too long
sequences lose tokens on the left.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from megagrape.data.tokenizer import Tokenizer
from megagrape.errors import DataError


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
class EncodedPair:
    """A context/continuation pair as token ids: ``prefix`` then ``target`` (the scored part)."""

    prefix: np.ndarray
    target: np.ndarray
    target_text: str


def encode_pairs(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]]) -> list[EncodedPair]:
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
            EncodedPair(
                np.asarray(prefix, dtype=np.int64), np.asarray(target, dtype=np.int64), continuation
            )
        )
    return encoded


def request_from(
    encoded: EncodedPair, seq_length: int, item_index: int, choice_index: int
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


def batch_rows(
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
    return batch_rows(rows, width, pad_id)
