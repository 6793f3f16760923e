"""Each target's unigram level: token counts of the training domains, smoothing, scoring."""

from __future__ import annotations

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megagrape.data.targets import load_targets
from megagrape.data.training_data import load_checked_tokenizer, resolve_data_sources
from megagrape.experiments.unigram import (
    token_counts,
    unigram_levels,
    unigram_log_probs,
)
from tests.run_utils import tiny_config


def test_add_one_smoothing_is_a_distribution():
    log_probs = unigram_log_probs(np.array([6, 0, 2]))
    assert np.exp(log_probs).sum() == pytest.approx(1.0)
    assert np.exp(log_probs) == pytest.approx([7 / 11, 1 / 11, 3 / 11])


def test_unigram_level_pools_every_domain_and_scores_like_the_evaluation(test_corpus, tmp_path):
    cfg = tiny_config(test_corpus, tmp_path, "unigram", "targets.eval_max_items=6")
    sources = resolve_data_sources(cfg)
    tokenizer = load_checked_tokenizer(sources, cfg.model.vocab_size)
    prefixes = [str(spec.prefix) for spec in sources.domains]
    assert len(prefixes) == 3
    counts = token_counts(prefixes, tokenizer.vocab_size)
    datasets = [IndexedDataset(p) for p in prefixes]  # alive while their index is read
    lengths = sum(int(d.sequence_lengths.sum()) for d in datasets)
    assert counts.sum() == lengths  # every token of every domain, once
    one_domain = token_counts(prefixes[:1], tokenizer.vocab_size)
    assert 0 < one_domain.sum() < counts.sum()

    levels = unigram_levels(cfg)
    tasks = load_targets(sources.target_files, tokenizer, seed=cfg.seed)
    assert set(levels) == {task.name for task in tasks}
    log_probs = unigram_log_probs(counts)
    for task in tasks:
        requests = task.eval_requests(cfg.model.seq_length)
        gold = [
            r
            for r in requests
            if r.item_index < 6 and r.choice_index == task.eval_items[r.item_index].gold
        ]
        by_hand = np.mean(
            [-log_probs[r.labels[r.target_start : r.target_end]].mean() for r in gold]
        )
        assert levels[task.name]["loss"] == pytest.approx(by_hand)
        assert 0.0 <= levels[task.name]["acc"] <= 1.0  # multiple choice: acc comes along
        assert np.log(2) < levels[task.name]["loss"] < -log_probs.min()
