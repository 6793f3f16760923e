"""MixtureSampler: segments, no repeats/skips, proportion bounds, resume, DP slices, errors."""

from __future__ import annotations

import bisect
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megagrape.data import sampler as sampler_module
from megagrape.data.sampler import (
    DomainBudgetError,
    GlobalBatch,
    MixtureSampler,
    validate_weights,
)
from megagrape.errors import DataError
from tests.dist_utils import run_distributed

BIG_BUDGET = 10**9


def names(num_domains: int) -> list[str]:
    return [f"domain{d}" for d in range(num_domains)]


def make_sampler(weights, global_batch_size=8, chunk_samples=64, budgets=None, **kwargs):
    num_domains = len(weights)
    budgets = [BIG_BUDGET] * num_domains if budgets is None else budgets
    return MixtureSampler(
        names(num_domains),
        budgets,
        weights,
        global_batch_size,
        chunk_samples=chunk_samples,
        **kwargs,
    )


def reference_stream(segments, num_domains: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The rule written out in numpy, one sample at a time (float64, no fused operations)."""
    starts = [segment.start_sample for segment in segments]
    counts = np.zeros(num_domains, np.int64)
    start_counts = counts.copy()
    domains, samples = np.empty(size, np.int16), np.empty(size, np.int64)
    for i in range(size):
        index = bisect.bisect_right(starts, i) - 1
        start = starts[index]
        if i == start:
            start_counts = counts.copy()
        x = max(float(i - start), 1.0)
        errors = segments[index].weights * x - (counts - start_counts).astype(np.float64)
        winner = int(np.argmax(errors))  # first maximum: ties go to the lowest domain
        domains[i], samples[i] = winner, counts[winner]
        counts[winner] += 1
    return domains, samples


def harmonic(m: int) -> float:
    return sum(1.0 / i for i in range(1, m + 1))


def check_stream(segments, num_domains: int, domains: np.ndarray, samples: np.ndarray) -> None:
    """No repeats/skips per domain; every segment prefix within the proven bounds."""
    for d in range(num_domains):
        taken = samples[domains == d]
        assert np.array_equal(taken, np.arange(len(taken)))
    bounds = [s.start_sample for s in segments] + [len(domains)]
    under_bound = harmonic(num_domains - 1) + 1e-9
    for segment, lo, hi in zip(segments, bounds[:-1], bounds[1:]):
        if hi <= lo:
            continue
        onehot = np.zeros((hi - lo, num_domains))
        onehot[np.arange(hi - lo), domains[lo:hi]] = 1
        deviation = np.cumsum(onehot, axis=0) - np.outer(np.arange(1, hi - lo + 1), segment.weights)
        assert (deviation <= 1.0 - segment.weights + 1e-9).all()
        assert (deviation >= -under_bound).all()
        zero = segment.weights == 0
        assert (onehot[:, zero].sum(axis=0) <= 1).all()


@st.composite
def weight_vectors(draw, num_domains: int):
    raw = draw(
        st.lists(
            st.one_of(st.just(0.0), st.floats(0.01, 1.0), st.sampled_from([0.25, 0.5, 1.0])),
            min_size=num_domains,
            max_size=num_domains,
        )
    )
    weights = np.array(raw)
    if weights.sum() == 0:
        weights[draw(st.integers(0, num_domains - 1))] = 1.0
    return weights / weights.sum()


@st.composite
def scenarios(draw):
    num_domains = draw(st.integers(1, 12))
    global_batch_size = draw(st.integers(1, 16))
    initial = draw(weight_vectors(num_domains))
    steps = []  # ("batch",) or ("weights", offset from consumed or None, weights)
    for _ in range(draw(st.integers(1, 12))):
        if draw(st.booleans()):
            steps.append(("batches", draw(st.integers(1, 6))))
        else:
            offset = draw(st.one_of(st.none(), st.integers(0, 40)))
            steps.append(("weights", offset, draw(weight_vectors(num_domains))))
    chunk_samples = draw(st.integers(1, 50))
    return num_domains, global_batch_size, initial, steps, chunk_samples


def run_scenario(num_domains, global_batch_size, initial, steps, chunk_samples):
    sampler = make_sampler(initial, global_batch_size, chunk_samples)
    batches = []
    for step in steps:
        if step[0] == "batches":
            batches += [sampler.next_global_batch() for _ in range(step[1])]
        else:
            _, offset, weights = step
            at = None if offset is None else sampler.consumed_samples + offset
            last_start = sampler.segments[-1].start_sample
            if last_start > sampler.consumed_samples and (at is None or at < last_start):
                at = last_start
            # Look ahead first so that the change has built samples to discard.
            sampler.peek(sampler.consumed_samples, 30)
            sampler.set_weights(weights, at)
    return sampler, batches


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_stream_properties_under_weight_changes(scenario):
    num_domains = scenario[0]
    sampler, batches = run_scenario(*scenario)
    segments = sampler.segments
    total = max(sampler.consumed_samples, segments[-1].start_sample) + 40
    domains, samples = sampler.peek(0, total)

    # The batches handed out are exactly the stream, in order.
    for batch in batches:
        size = len(batch.domain_ids)
        assert np.array_equal(
            batch.domain_ids, domains[batch.start_sample : batch.start_sample + size]
        )
        assert np.array_equal(
            batch.sample_ids, samples[batch.start_sample : batch.start_sample + size]
        )
    consumed = sampler.consumed_samples
    assert np.array_equal(
        sampler.realised_counts(), np.bincount(domains[:consumed], minlength=num_domains)
    )

    # The rule itself, and its guarantees.
    reference_domains, reference_samples = reference_stream(segments, num_domains, total)
    assert np.array_equal(domains, reference_domains)
    assert np.array_equal(samples, reference_samples)
    check_stream(segments, num_domains, domains, samples)

    # Changing weights along the way == knowing all segments up front.
    one_go = make_sampler(segments[0].weights, chunk_samples=1000)
    for segment in segments[1:]:
        one_go.set_weights(segment.weights, segment.start_sample)
    one_go_domains, one_go_samples = one_go.peek(0, total)
    assert np.array_equal(one_go_domains, domains)
    assert np.array_equal(one_go_samples, samples)

    # state_dict round trip (through JSON): identical continuation and history.
    state = json.loads(json.dumps(sampler.state_dict()))
    resumed = make_sampler(np.full(num_domains, 1.0 / num_domains), scenario[1], chunk_samples=7)
    resumed.load_state_dict(state)
    assert resumed.consumed_samples == consumed
    assert np.array_equal(resumed.realised_counts(), sampler.realised_counts())
    for _ in range(3):
        original, again = sampler.next_global_batch(), resumed.next_global_batch()
        assert original.start_sample == again.start_sample
        assert np.array_equal(original.domain_ids, again.domain_ids)
        assert np.array_equal(original.sample_ids, again.sample_ids)
    history = resumed.peek(0, consumed)
    assert np.array_equal(history[0], domains[:consumed])
    assert np.array_equal(history[1], samples[:consumed])


def test_batches_are_consecutive_and_counts_add_up():
    sampler = make_sampler([0.5, 0.3, 0.2], global_batch_size=10, chunk_samples=7)
    seen = [sampler.next_global_batch() for _ in range(20)]
    assert [b.start_sample for b in seen] == list(range(0, 200, 10))
    assert sampler.consumed_samples == 200
    domains = np.concatenate([b.domain_ids for b in seen])
    assert domains.dtype == np.int16 and seen[0].sample_ids.dtype == np.int64
    assert sampler.realised_counts().tolist() == np.bincount(domains, minlength=3).tolist()
    assert sampler.realised_counts().tolist() == [100, 60, 40]


def test_set_weights_defaults_to_the_next_batch_and_replaces_at_the_same_start():
    sampler = make_sampler([0.5, 0.5], global_batch_size=4)
    sampler.next_global_batch()
    assert sampler.set_weights([0.9, 0.1]) == 4
    assert sampler.set_weights([0.2, 0.8]) == 4  # same start: replaces
    assert len(sampler.segments) == 2
    assert sampler.current_weights.tolist() == [0.2, 0.8]
    assert sampler.set_weights([0.3, 0.7], at_sample=100) == 100
    assert sampler.current_weights.tolist() == [0.2, 0.8]  # not in force yet
    assert [s.start_sample for s in sampler.segments] == [0, 4, 100]


def test_set_weights_discards_only_what_was_built_after_the_change(monkeypatch):
    built = []
    real_build = sampler_module.build_blending_segment

    def counting_build(domains, *args, **kwargs):
        built.append(len(domains))
        return real_build(domains, *args, **kwargs)

    monkeypatch.setattr(sampler_module, "build_blending_segment", counting_build)
    sampler = make_sampler([0.25, 0.25, 0.5], chunk_samples=100)
    sampler.peek(0, 1000)
    assert sum(built) == 1000
    built.clear()
    sampler.set_weights([0.1, 0.1, 0.8], at_sample=950)
    sampler.peek(0, 1000)
    assert sum(built) == 50  # the 50 samples after the change, nothing before
    built.clear()
    sampler.set_weights([0.3, 0.3, 0.4], at_sample=950)  # same start: rebuilt again
    sampler.peek(900, 100)
    assert sum(built) == 50


def test_consumed_chunks_are_freed_and_rebuilt_on_request():
    sampler = make_sampler([0.6, 0.4], global_batch_size=10, chunk_samples=20)
    batches = [sampler.next_global_batch() for _ in range(30)]
    freed = [chunk for chunk in sampler._chunks if chunk.domain_ids is None]
    assert len(freed) >= 10
    domains, samples = sampler.peek(35, 100)
    assert np.array_equal(domains, np.concatenate([b.domain_ids for b in batches])[35:135])
    assert np.array_equal(samples, np.concatenate([b.sample_ids for b in batches])[35:135])


def test_dp_slice_blocks_cover_the_batch():
    batch = make_sampler([0.5, 0.5], global_batch_size=12).next_global_batch()
    parts = [MixtureSampler.dp_slice(batch, r, 3) for r in range(3)]
    assert [p.start_sample for p in parts] == [0, 4, 8]
    assert np.array_equal(np.concatenate([p.domain_ids for p in parts]), batch.domain_ids)
    assert np.array_equal(np.concatenate([p.sample_ids for p in parts]), batch.sample_ids)
    with pytest.raises(ValueError, match="multiple of the data-parallel size"):
        MixtureSampler.dp_slice(batch, 0, 5)
    with pytest.raises(ValueError, match="dp_rank"):
        MixtureSampler.dp_slice(batch, 3, 3)


def test_1024_domains():
    rng = np.random.default_rng(0)
    first, second = rng.dirichlet(np.full(1024, 0.3)), rng.dirichlet(np.full(1024, 0.3))
    sampler = make_sampler(first, global_batch_size=256, chunk_samples=1000)
    for _ in range(8):
        sampler.next_global_batch()
    sampler.set_weights(second)
    for _ in range(8):
        sampler.next_global_batch()
    domains, samples = sampler.peek(0, sampler.consumed_samples)
    check_stream(sampler.segments, 1024, domains, samples)
    resumed = make_sampler(np.full(1024, 1 / 1024), global_batch_size=256)
    resumed.load_state_dict(json.loads(json.dumps(sampler.state_dict())))
    assert np.array_equal(
        resumed.next_global_batch().sample_ids, sampler.next_global_batch().sample_ids
    )


def test_state_dict_is_small_json():
    sampler = make_sampler([0.5, 0.5], global_batch_size=4)
    sampler.next_global_batch()
    sampler.set_weights([0.25, 0.75])
    state = sampler.state_dict()
    assert json.loads(json.dumps(state)) == state
    assert state["segments"] == [
        {"start_sample": 0, "weights": [0.5, 0.5]},
        {"start_sample": 4, "weights": [0.25, 0.75]},
    ]
    assert state["consumed_samples"] == 4
    assert state["consumed_counts"] == state["current_segment_start_counts"] == [2, 2]


def test_zero_weight_domain_gets_at_most_one_sample_per_segment():
    """Megatron's rule: when every error is exactly 0 the lowest domain wins, even at weight 0."""
    sampler = make_sampler([0.0, 1.0], global_batch_size=4)
    domains, _ = sampler.peek(0, 100)
    assert domains.tolist()[:3] == [1, 0, 1]
    assert (domains[3:] == 1).all()


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([0.5, -0.1, 0.6], r"domain 'b' \(index 1\) is -0.1.*finite number >= 0"),
        ([0.5, float("nan"), 0.5], r"domain 'b' \(index 1\) is nan"),
        ([0.5, float("inf"), 0.5], r"domain 'b' \(index 1\) is inf"),
        ([0.5, 0.5], r"expected 3 weights, one per domain in the order \[a, b, c\]"),
        ([0.2, 0.2, 0.2], r"sum to 0.6.*divide each weight by their sum"),
        ([0.0, 0.0, 0.0], r"sum to 0"),
        (["x", 1, 2], r"cannot read"),
    ],
)
def test_validate_weights_errors(weights, message):
    with pytest.raises(DataError, match=f"my weights.*{message}"):
        validate_weights(weights, ["a", "b", "c"], what="my weights")


def test_validate_weights_renormalises_within_tolerance():
    weights = validate_weights([0.5, 0.2, 0.3 + 5e-7], ["a", "b", "c"])
    assert weights.dtype == np.float64
    assert math.isclose(weights.sum(), 1.0, abs_tol=1e-15)


def test_constructor_errors():
    with pytest.raises(DataError, match="'a' appears twice"):
        MixtureSampler(["a", "b", "a"], [10] * 3, [0.2, 0.3, 0.5], 4)
    with pytest.raises(DataError, match="initial mixture weights"):
        MixtureSampler(["a", "b"], [10] * 2, [0.2, 0.3], 4)
    with pytest.raises(DataError, match="expected 2 sample budgets"):
        MixtureSampler(["a", "b"], [10], [0.5, 0.5], 4)
    with pytest.raises(DataError, match=r"'b' has budget 2\.5"):
        MixtureSampler(["a", "b"], [10, 2.5], [0.5, 0.5], 4)
    with pytest.raises(DataError, match="global_batch_size"):
        MixtureSampler(["a", "b"], [10, 10], [0.5, 0.5], 0)
    with pytest.raises(DataError, match="non-empty string"):
        MixtureSampler(["a", ""], [10, 10], [0.5, 0.5], 4)


def test_set_weights_errors():
    sampler = make_sampler([0.5, 0.5], global_batch_size=4)
    sampler.next_global_batch()
    sampler.next_global_batch()
    with pytest.raises(ValueError, match=r"at_sample=4 is in the past \(8 samples"):
        sampler.set_weights([0.5, 0.5], at_sample=4)
    sampler.set_weights([0.4, 0.6], at_sample=20)
    with pytest.raises(ValueError, match="before the last segment, which starts at 20"):
        sampler.set_weights([0.5, 0.5], at_sample=12)
    with pytest.raises(DataError, match=r"set_weights weights.*domain1"):
        sampler.set_weights([1.5, -0.5])


def test_budget_overflow_names_domain_budget_position_and_fix():
    hint = "raise data.budget_factor (now 1.0) in the run config"
    sampler = MixtureSampler(["web", "code"], [1000, 5], [0.5, 0.5], 4, budget_hint=hint)
    sampler.next_global_batch()
    sampler.next_global_batch()  # samples 0..7: code gets #0..#3
    with pytest.raises(DomainBudgetError) as raised:
        sampler.next_global_batch()
    message = str(raised.value)
    assert "'code'" in message and "budget of 5 samples" in message
    assert "sample #5" in message and "global sample 11" in message
    assert hint in message
    assert sampler.consumed_samples == 8  # the bad batch was not consumed
    with pytest.raises(DomainBudgetError):
        sampler.peek(0, 100)  # also when only looking ahead


def test_load_state_dict_errors():
    sampler = make_sampler([0.5, 0.5], global_batch_size=4)
    sampler.next_global_batch()
    state = sampler.state_dict()
    other = MixtureSampler(["domain0", "web"], [10, 10], [0.5, 0.5], 4)
    with pytest.raises(DataError, match=r"only in the checkpoint: \['domain1'\]"):
        other.load_state_dict(state)
    corrupt = dict(state, consumed_counts=[3, 3])
    with pytest.raises(DataError, match="do not agree"):
        make_sampler([0.5, 0.5]).load_state_dict(corrupt)
    with pytest.raises(DataError, match="missing keys"):
        make_sampler([0.5, 0.5]).load_state_dict({"version": 1})
    bad_weights = dict(state, segments=[{"start_sample": 0, "weights": [0.7, 0.7]}])
    with pytest.raises(DataError, match=r"segment 0.*sum to 1\.4"):
        make_sampler([0.5, 0.5]).load_state_dict(bad_weights)


# ---- two ranks, two processes ---------------------------------------------------------------

WEIGHT_PLAN = {0: [0.7, 0.2, 0.1], 3: [0.1, 0.1, 0.8], 5: [0.0, 0.5, 0.5]}


def _dp_rank_worker(rank: int, world_size: int, steps: int) -> list[dict]:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    sampler = MixtureSampler(["web", "code", "books"], [10**6] * 3, WEIGHT_PLAN[0], 16)
    observed = []
    for step in range(steps):
        if step in WEIGHT_PLAN and step > 0:
            sampler.set_weights(WEIGHT_PLAN[step])
        batch = sampler.next_global_batch()
        mine = MixtureSampler.dp_slice(batch, rank, world_size)
        pairs = torch.from_numpy(np.stack([mine.domain_ids.astype(np.int64), mine.sample_ids]))
        gathered = [torch.empty_like(pairs) for _ in range(world_size)]
        dist.all_gather(gathered, pairs)
        observed.append(
            {
                "global": [batch.domain_ids.tolist(), batch.sample_ids.tolist()],
                "slices": [g.tolist() for g in gathered],
            }
        )
    dist.destroy_process_group()
    return observed


def test_two_ranks_take_disjoint_slices_that_make_the_global_batch():
    per_rank = run_distributed(_dp_rank_worker, world_size=2, args=(8,))
    assert per_rank[0] == per_rank[1]  # same global batches and gathered slices on both ranks
    seen_pairs: set[tuple[int, int]] = set()
    for step in per_rank[0]:
        first, second = step["slices"]
        union = [first[0] + second[0], first[1] + second[1]]
        assert union == step["global"]
        pairs = {(d, s) for d, s in zip(union[0], union[1])}
        assert len(pairs) == 16  # disjoint within the batch
        assert not pairs & seen_pairs  # and never repeated across batches
        seen_pairs |= pairs


def test_global_batch_is_a_frozen_record():
    batch = GlobalBatch(0, np.zeros(2, np.int16), np.zeros(2, np.int64))
    with pytest.raises(AttributeError):
        batch.start_sample = 3
