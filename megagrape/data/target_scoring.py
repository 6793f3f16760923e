"""Target metrics from the summed log-probabilities of scored requests.

Multiple choice: ``acc`` and ``acc_norm`` as lm-evaluation-harness computes them, and the gold
continuation's per-token loss. LM text: per-token loss, perplexity and bits per byte.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from megagrape.data.target_encoding import EvalRequest
from megagrape.data.target_formats import MCItem
from megagrape.errors import DataError


def score_mc(
    items: Sequence[MCItem], requests: Sequence[EvalRequest], logprobs: np.ndarray
) -> dict[str, float]:
    """``acc`` (argmax of summed log-probability), ``acc_norm`` (argmax of log-probability per
    character of the continuation) and ``loss`` (mean over items of the gold continuation's
    per-token NLL). logprobs: float64 [R], one per request, in any item/choice order.
    """
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


def score_lm(requests: Sequence[EvalRequest], logprobs: np.ndarray) -> dict[str, float]:
    """``loss`` (per-token NLL), ``ppl`` = exp(loss) and ``bpb`` (bits per UTF-8 byte).

    logprobs: float64 [R], the summed natural-log probability of each request's scored tokens.
    """
    tokens = sum(r.num_target_tokens for r in requests)
    text_bytes = sum(r.continuation_bytes for r in requests)
    loss = float(-logprobs.sum() / max(1, tokens))
    bpb = float(-logprobs.sum() / (math.log(2) * max(1, text_bytes)))
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "bpb": bpb}
