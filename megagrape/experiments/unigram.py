"""Each target's unigram level: the score of a model that knows only the training token counts.

A target loss means little without its floor. A 2-layer model at 7 nats on a vocabulary of
8192 (ln 8192 = 9.0) may have learnt nothing beyond token frequencies; the unigram level says
where that is. The unigram model is the add-one-smoothed frequency of every token id over all
training domains pooled (the natural mixture):

    log p(v) = log((count(v) + 1) / (sum_u count(u) + V))          V = the tokenizer's vocab

and it is scored exactly as the run scores the model: the same evaluation requests (the first
``targets.eval_max_items`` eval items, the same windows), the same per-target ``score`` (gold
continuation's per-token NLL for multiple choice, with acc/acc_norm; loss/ppl/bpb for LM text),
so the number sits beside the model's loss in the same units (nats per token).
"""

from __future__ import annotations

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megagrape.config import RunConfig
from megagrape.data.targets import load_targets
from megagrape.data.training_data import load_checked_tokenizer, resolve_data_sources


def token_counts(prefixes: list[str], vocab_size: int) -> np.ndarray:
    """int64 [V]: occurrences of every token id over the indexed datasets ``prefixes``."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for prefix in prefixes:
        dataset = IndexedDataset(prefix)
        tokens = np.memmap(f"{prefix}.bin", dtype=dataset.index.dtype, mode="r")
        counts += np.bincount(tokens, minlength=vocab_size)[:vocab_size]
    return counts


def unigram_log_probs(counts: np.ndarray) -> np.ndarray:
    """float64 [V] add-one-smoothed log-probabilities from token counts [V]."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.log(counts + 1.0) - np.log(counts.sum() + counts.size)


def score_with_unigram(task, log_probs: np.ndarray, seq_length: int, max_items: int) -> dict:
    """The task's own scores of the unigram model on its evaluation requests."""
    requests = [r for r in task.eval_requests(seq_length) if r.item_index < max_items]
    logprobs = [float(log_probs[r.labels[r.target_start : r.target_end]].sum()) for r in requests]
    return task.score(logprobs, requests)


def unigram_levels(cfg: RunConfig) -> dict[str, dict[str, float]]:
    """{target: scores of the unigram model} for the run config's corpus and targets."""
    sources = resolve_data_sources(cfg)
    tokenizer = load_checked_tokenizer(sources, cfg.model.vocab_size)
    counts = token_counts([str(spec.prefix) for spec in sources.domains], tokenizer.vocab_size)
    log_probs = unigram_log_probs(counts)
    tasks = load_targets(
        sources.target_files, tokenizer, eval_fraction=cfg.targets.eval_fraction, seed=cfg.seed
    )
    return {
        task.name: score_with_unigram(
            task, log_probs, cfg.model.seq_length, cfg.targets.eval_max_items
        )
        for task in tasks
    }
