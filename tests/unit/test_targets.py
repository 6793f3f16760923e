"""Target tasks: parsing (plain and olmo-eval), signal batches, eval requests, scoring, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from megagrape.data.target_encoding import EvalRequest, collate_eval
from megagrape.data.target_formats import MCItem, target_name
from megagrape.data.targets import TargetTask, load_target, load_targets
from megagrape.data.tokenizer_build import train_bpe
from megagrape.errors import DataError
from tests.data_utils import synthetic_texts, write_domains, write_jsonl

CAPITALS = [
    ("France", " Paris", [" Lyon", " Nice"]),
    ("Italy", " Rome", [" Milan", " Turin"]),
    ("Spain", " Madrid", [" Seville", " Bilbao"]),
    ("Japan", " Tokyo", [" Osaka", " Kyoto"]),
    ("Peru", " Lima", [" Cusco", " Arequipa"]),
    ("Kenya", " Nairobi", [" Mombasa", " Kisumu"]),
    ("Chile", " Santiago", [" Valparaiso", " Arica"]),
    ("Egypt", " Cairo", [" Giza", " Luxor"]),
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tok")
    write_domains(directory, {"a": 300})
    return train_bpe([directory / "a.jsonl"], vocab_size=400)


def mc_records():
    records = []
    for number, (country, capital, others) in enumerate(CAPITALS):
        choices = [*others, capital] if number % 2 else [capital, *others]
        records.append(
            {
                "id": f"cap-{number}",
                "context": f"Question: What is the capital of {country}?\nAnswer:",
                "choices": choices,
                "gold": choices.index(capital),
            }
        )
    return records


@pytest.fixture
def mc_task(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "capitals.jsonl", mc_records())
    return load_target("capitals", path, tokenizer, eval_fraction=0.5, seed=1)


def test_split_is_deterministic_and_complete(mc_task, tokenizer, tmp_path):
    ids = {item.id for item in mc_task.signal_items} | {item.id for item in mc_task.eval_items}
    assert ids == {r["id"] for r in mc_records()}
    assert mc_task.signal_items and mc_task.eval_items
    reversed_path = write_jsonl(tmp_path / "rev.jsonl", reversed(mc_records()))
    again = load_target("capitals", reversed_path, tokenizer, eval_fraction=0.5, seed=1)
    assert {i.id for i in again.eval_items} == {i.id for i in mc_task.eval_items}
    other_seed = load_target("capitals", reversed_path, tokenizer, eval_fraction=0.5, seed=5)
    all_eval = load_target("capitals", reversed_path, tokenizer, eval_fraction=1.0)
    assert len(all_eval.eval_items) == len(CAPITALS) and not all_eval.signal_items
    assert {i.id for i in other_seed.eval_items} != {i.id for i in mc_task.eval_items}


def test_eval_split_signal_scores_the_signal_half_and_never_the_held_out_one(
    mc_task, tokenizer, tmp_path
):
    """RegMix's proxies choose a mixture with eval_split=signal: what they score must be the
    items a mixture method learns from, none of the held-out items a benchmark reports."""
    path = write_jsonl(tmp_path / "capitals.jsonl", mc_records())
    searched = load_target("capitals", path, tokenizer, 0.5, seed=1, eval_split="signal")
    assert [i.id for i in searched.eval_items] == [i.id for i in mc_task.signal_items]
    assert not {i.id for i in searched.eval_items} & {i.id for i in mc_task.eval_items}
    requests = searched.eval_requests(seq_length=64)
    assert {r.item_index for r in requests} == set(range(len(mc_task.signal_items)))
    assert len(requests) == sum(len(i.choices) for i in mc_task.signal_items)
    texts = synthetic_texts(30, seed=7)
    lm_path = write_jsonl(
        tmp_path / "lm.jsonl", ({"id": f"d{i}", "text": t} for i, t in enumerate(texts))
    )
    held = load_target("lm", lm_path, tokenizer, 0.5, seed=3, lm_stride=8)
    lm_searched = load_target(
        "lm", lm_path, tokenizer, 0.5, seed=3, lm_stride=8, eval_split="signal"
    )
    signal_stream = np.concatenate(
        [[*tokenizer.encode(d.text), tokenizer.eod] for d in held.signal_items]
    )
    labels = np.concatenate([r.labels for r in lm_searched.eval_requests(seq_length=16)])
    assert np.array_equal(labels, signal_stream[1:])
    with pytest.raises(DataError, match="eval_split"):
        load_target("capitals", path, tokenizer, 0.5, seed=1, eval_split="test")


def test_signal_batch_masks_only_the_gold_continuation(mc_task, tokenizer):
    indices = np.arange(len(mc_task.signal_items))
    batch = mc_task.signal_batch(indices, seq_length=48)
    assert batch["tokens"].shape == batch["labels"].shape == (len(indices), 48)
    assert batch["tokens"].dtype == batch["labels"].dtype == torch.int64
    assert batch["loss_mask"].dtype == torch.float32
    assert torch.equal(batch["position_ids"][0], torch.arange(48))
    for row, index in enumerate(indices):
        item = mc_task.signal_items[index]
        mask = batch["loss_mask"][row].bool()
        assert tokenizer.decode(batch["labels"][row][mask].tolist()) == item.choices[item.gold]
        first = int(mask.nonzero()[0])
        assert tokenizer.decode(batch["tokens"][row][: first + 1].tolist()) == item.context
        length = int(mask.nonzero()[-1]) + 1
        assert torch.equal(batch["tokens"][row][1:length], batch["labels"][row][: length - 1])
        assert torch.all(batch["tokens"][row][length:] == tokenizer.eod)


def test_long_context_is_truncated_on_the_left(tokenizer, tmp_path):
    long_context = " ".join(synthetic_texts(5, seed=1)) + " Answer:"
    path = write_jsonl(
        tmp_path / "t.jsonl", [{"context": long_context, "choices": [" yes", " no"], "gold": 1}]
    )
    task = load_target("t", path, tokenizer, eval_fraction=0.0)
    batch = task.signal_batch([0], seq_length=12)
    mask = batch["loss_mask"][0].bool()
    assert tokenizer.decode(batch["labels"][0][mask].tolist()) == " no"
    assert mask[-1] and int(mask.sum()) == len(tokenizer.encode(" no"))
    full = tokenizer.encode(long_context + " no")
    assert batch["tokens"][0].tolist() == full[-13:-1]


def test_signal_indices_are_deterministic_and_cover_each_pass(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "capitals.jsonl", mc_records())
    mc_task = load_target("capitals", path, tokenizer, eval_fraction=0.0)
    units = mc_task.num_signal_units
    assert units == len(CAPITALS)
    batch = 3
    draws = np.concatenate(
        [mc_task.signal_indices(step, batch, seed=11) for step in range(2 * units)]
    )
    assert np.array_equal(
        draws, np.concatenate([mc_task.signal_indices(s, batch, 11) for s in range(2 * units)])
    )
    for start in range(0, len(draws), units):  # every pass over the units visits each once
        assert sorted(draws[start : start + units]) == list(range(units))
    assert not np.array_equal(
        mc_task.signal_indices(0, units, seed=11), mc_task.signal_indices(0, units, seed=12)
    )
    assert mc_task.signal_indices(5, batch, 11).dtype == np.int64


def hand_made_task(tokenizer) -> TargetTask:
    item = MCItem(id="q", context="Pick:", choices=(" x", " yyyyyyyy"), gold=1)
    return TargetTask("hand", "mc", [item], tokenizer, eval_fraction=1.0)


def test_acc_and_acc_norm_differ_the_way_lm_eval_scores(tokenizer):
    task = hand_made_task(tokenizer)
    requests = task.eval_requests(seq_length=32)
    assert [(r.item_index, r.choice_index) for r in requests] == [(0, 0), (0, 1)]
    assert [r.continuation_chars for r in requests] == [2, 9]
    # sum log-prob prefers " x" (wrong); per-character log-prob prefers " yyyyyyyy" (gold)
    metrics = task.score([-2.0, -4.0])
    assert metrics["acc"] == 0.0
    assert metrics["acc_norm"] == 1.0
    assert metrics["loss"] == pytest.approx(4.0 / requests[1].num_target_tokens)
    assert task.score([-5.0, -4.0])["acc"] == 1.0


def test_eval_requests_and_collate(mc_task, tokenizer):
    requests = mc_task.eval_requests(seq_length=64)
    assert len(requests) == sum(len(item.choices) for item in mc_task.eval_items)
    for request in requests:
        item = mc_task.eval_items[request.item_index]
        scored = request.labels[request.target_start : request.target_end]
        assert tokenizer.decode(scored.tolist()) == item.choices[request.choice_index]
        assert request.target_end == len(request.tokens)
    batch = collate_eval(requests, pad_id=tokenizer.eod)
    width = max(len(r.tokens) for r in requests)
    assert batch["tokens"].shape == (len(requests), width)
    for row, request in enumerate(requests):
        assert batch["loss_mask"][row].sum() == request.num_target_tokens
        assert (
            batch["labels"][row][batch["loss_mask"][row].bool()].tolist()
            == request.labels[request.target_start : request.target_end].tolist()
        )
        assert torch.all(batch["tokens"][row][len(request.tokens) :] == tokenizer.eod)
    assert collate_eval(requests, pad_id=0, pad_to=80)["tokens"].shape == (len(requests), 80)
    with pytest.raises(DataError, match="pad_to"):
        collate_eval(requests, pad_id=0, pad_to=2)


def test_perfect_model_scores_full_accuracy(mc_task):
    requests = mc_task.eval_requests(seq_length=64)
    logprobs = [
        0.0 if mc_task.eval_items[r.item_index].gold == r.choice_index else -9.0 for r in requests
    ]
    assert mc_task.score(logprobs) == {"acc": 1.0, "acc_norm": 1.0, "loss": 0.0}
    with pytest.raises(DataError, match="log-probabilities"):
        mc_task.score(logprobs[:-1])


def write_olmo_requests(path, tokenizerless_docs):
    records = []
    for doc_id, (doc, contexts, continuations) in enumerate(tokenizerless_docs):
        for offset in (0, 1_000_000):  # olmo-eval adds unconditional requests at doc_id + 1e6
            for idx, (context, continuation) in enumerate(zip(contexts, continuations)):
                records.append(
                    {
                        "request_type": "loglikelihood",
                        "doc": doc,
                        "request": {
                            "context": "Answer:" if offset else context,
                            "continuation": continuation,
                        },
                        "idx": idx,
                        "task_name": "toy",
                        "doc_id": doc_id + offset,
                        "native_id": doc_id,
                        "label": doc.get("gold", doc.get("label")),
                    }
                )
    return write_jsonl(path, records)


def test_olmo_eval_requests_are_grouped_by_document(tokenizer, tmp_path):
    docs = [
        ({"query": "Q1", "gold": 1}, ["Q1 Answer:"] * 3, [" red", " green", " blue"]),
        ({"sentence": "w", "label": 0}, ["So Sarah", "So Maria"], [" went home."] * 2),
        ({"query": "Q3", "gold": 0}, ["Q3 Answer:"] * 2, [" up", " down"]),
    ]
    path = write_olmo_requests(tmp_path / "toy" / "rc_0shot" / "requests.jsonl.gz", docs)
    (path.parent / "config.json").write_text(
        json.dumps({"task_config": {"metric_kwargs": {"uncond_docid_offset": 1_000_000}}})
    )
    task = load_target("toy", path, tokenizer, eval_fraction=1.0)
    items = sorted(task.eval_items, key=lambda item: item.id)
    assert [item.id for item in items] == ["0", "1", "2"]
    assert items[0] == MCItem("0", "Q1 Answer:", (" red", " green", " blue"), 1)
    assert items[1].choice_contexts == ("So Sarah", "So Maria") and items[1].gold == 0
    assert items[1].context_for(1) == "So Maria"
    assert len(task.eval_requests(32)) == 7
    winogrande = next(
        r
        for r in task.eval_requests(32)
        if task.eval_items[r.item_index].id == "1" and r.choice_index == 1
    )
    assert tokenizer.decode(winogrande.tokens.tolist()) == "So Maria went home"
    assert target_name(path) == "toy_rc_0shot"


def test_lm_target_signal_and_eval(tokenizer, tmp_path):
    texts = synthetic_texts(40, seed=4)
    path = write_jsonl(
        tmp_path / "heldout.jsonl", ({"id": f"d{i}", "text": t} for i, t in enumerate(texts))
    )
    task = load_target("heldout", path, tokenizer, eval_fraction=0.5, seed=2, lm_stride=8)
    assert task.kind == "lm"
    stream = np.concatenate([[*tokenizer.encode(d.text), tokenizer.eod] for d in task.signal_items])
    assert task.num_signal_units == math.ceil(len(stream) / 8)
    batch = task.signal_batch([0, 3], seq_length=16)
    assert torch.all(batch["loss_mask"] == 1)
    assert batch["tokens"][1].tolist() == stream[24:40].tolist()
    assert batch["labels"][1].tolist() == stream[25:41].tolist()
    requests = task.eval_requests(seq_length=16)
    eval_stream = np.concatenate(
        [[*tokenizer.encode(d.text), tokenizer.eod] for d in task.eval_items]
    )
    assert sum(r.num_target_tokens for r in requests) == len(eval_stream) - 1
    assert np.array_equal(np.concatenate([r.labels for r in requests]), eval_stream[1:])
    counts = [r.num_target_tokens for r in requests]
    metrics = task.score([-0.5 * n for n in counts])
    assert metrics["loss"] == pytest.approx(0.5)
    assert metrics["ppl"] == pytest.approx(math.exp(0.5))
    total_bytes = sum(r.continuation_bytes for r in requests)
    assert metrics["bpb"] == pytest.approx(0.5 * sum(counts) / (math.log(2) * total_bytes))


def test_load_targets_from_directory_and_duplicates(tokenizer, tmp_path):
    write_jsonl(tmp_path / "t" / "capitals.jsonl", mc_records())
    write_jsonl(
        tmp_path / "t" / "prose.jsonl.gz", ({"text": t} for t in synthetic_texts(6, seed=1))
    )
    tasks = load_targets(tmp_path / "t", tokenizer)
    assert [(t.name, t.kind) for t in tasks] == [("capitals", "mc"), ("prose", "lm")]
    write_jsonl(tmp_path / "u" / "capitals.jsonl", mc_records())
    with pytest.raises(DataError, match="'capitals' is used twice"):
        load_targets(
            [tmp_path / "t" / "capitals.jsonl", tmp_path / "u" / "capitals.jsonl"], tokenizer
        )
    named = load_targets(
        {"a": tmp_path / "t" / "capitals.jsonl", "b": tmp_path / "u" / "capitals.jsonl"}, tokenizer
    )
    assert [t.name for t in named] == ["a", "b"]


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([], "has no items"),
        (
            [{"id": "q7", "context": "c", "choices": [" a", " b"], "gold": 2}],
            r"bad\.jsonl:1 \(item q7\): gold 2",
        ),
        ([{"context": "c", "choices": [" a"], "gold": 0}], "1 choice"),
        ([{"context": "c", "choices": [" a", ""], "gold": 0}], "empty choice"),
        ([{"context": 3, "choices": [" a", " b"], "gold": 0}], "'context' missing"),
        (
            [{"id": "x", "context": "c", "choices": [" a", " b"], "gold": 0}] * 2,
            "'x' appears twice",
        ),
        ([{"question": "?"}], "unknown target format"),
        ([{"text": ""}], "every 'text' is empty"),
    ],
)
def test_bad_target_files(tokenizer, tmp_path, records, message):
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(DataError, match=message):
        load_target("bad", path, tokenizer)


def test_task_without_signal_items_says_so(tokenizer):
    task = hand_made_task(tokenizer)
    with pytest.raises(DataError, match="no signal items"):
        task.signal_indices(0, 2, seed=0)


def test_eval_request_fields_are_consistent(mc_task):
    for request in mc_task.eval_requests(seq_length=8):
        assert isinstance(request, EvalRequest)
        assert len(request.tokens) == len(request.labels) <= 8
        assert 0 <= request.target_start < request.target_end <= len(request.labels)
