"""The C++ blending builder (megagrape.ops.build_blending_segment) against Megatron's own."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

from megagrape.data.megatron_blending import megatron_helpers
from megagrape.ops.blending import blending_kernel, build_blending_segment

KERNELS = ["auto", "scalar"] + (["avx"] if blending_kernel() == "avx" else [])


MEGATRON = megatron_helpers()


def megatron_blend(weights: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    dataset_index = np.zeros(size, dtype=np.int16)
    dataset_sample_index = np.zeros(size, dtype=np.int64)
    MEGATRON.build_blending_indices(
        dataset_index, dataset_sample_index, weights, len(weights), size, False
    )
    return dataset_index, dataset_sample_index


def ours(
    weights: np.ndarray,
    size: int,
    start_counts: np.ndarray | None = None,
    counts: np.ndarray | None = None,
    segment_start: int = 0,
    begin: int = 0,
    kernel: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    num_domains = len(weights)
    start_counts = np.zeros(num_domains, np.int64) if start_counts is None else start_counts
    counts = start_counts.copy() if counts is None else counts.copy()
    dataset_index = np.empty(size, dtype=np.int16)
    dataset_sample_index = np.empty(size, dtype=np.int64)
    build_blending_segment(
        dataset_index,
        dataset_sample_index,
        weights,
        start_counts,
        counts,
        segment_start,
        begin,
        kernel=kernel,
    )
    return dataset_index, dataset_sample_index, counts


def weight_cases(num_domains: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    cases = {
        "random": rng.random(num_domains),
        "equal (ties every step)": np.ones(num_domains),
        "dyadic with zeros": 2.0 ** -rng.integers(0, 6, num_domains)
        * (rng.random(num_domains) < 0.7),
        "one domain only": np.eye(num_domains)[num_domains // 2],
        "leading zero": np.r_[0.0, rng.random(num_domains - 1)],
    }
    normalised = {}
    for name, weights in cases.items():
        if weights.sum() == 0:
            weights[0] = 1.0
        normalised[name] = weights / weights.sum()
    return normalised


@pytest.mark.parametrize("num_domains", [1, 2, 3, 5, 15, 16, 17, 64, 130])
@pytest.mark.parametrize("kernel", KERNELS)
def test_single_segment_matches_megatron(num_domains, kernel):
    rng = np.random.default_rng(num_domains)
    for name, weights in weight_cases(num_domains, rng).items():
        expected_index, expected_sample = megatron_blend(weights, 3000)
        index, sample, counts = ours(weights, 3000, kernel=kernel)
        assert np.array_equal(index, expected_index), name
        assert np.array_equal(sample, expected_sample), name
        assert np.array_equal(counts, np.bincount(index, minlength=num_domains)), name


def test_matches_megatron_with_1024_domains():
    rng = np.random.default_rng(7)
    weights = rng.dirichlet(np.full(1024, 0.5))
    expected_index, expected_sample = megatron_blend(weights, 5000)
    for kernel in KERNELS:
        index, sample, _ = ours(weights, 5000, kernel=kernel)
        assert np.array_equal(index, expected_index)
        assert np.array_equal(sample, expected_sample)


@pytest.mark.parametrize("kernel", KERNELS)
def test_pieces_with_carried_counts_equal_one_call(kernel):
    """Filling [begin, begin+n) piece by piece, counts carried, gives the one-call result."""
    rng = np.random.default_rng(3)
    weights = rng.dirichlet(np.ones(20))
    start_counts = rng.integers(0, 50, 20)
    whole_index, whole_sample, whole_counts = ours(
        weights, 4000, start_counts=start_counts, segment_start=777, begin=777, kernel=kernel
    )
    counts = start_counts.copy()
    cuts = [0, *sorted(rng.choice(np.arange(1, 4000), 9, replace=False)), 4000]
    for lo, hi in itertools.pairwise(cuts):
        index, sample, counts = ours(
            weights,
            hi - lo,
            start_counts=start_counts,
            counts=counts,
            segment_start=777,
            begin=777 + lo,
            kernel=kernel,
        )
        assert np.array_equal(index, whole_index[lo:hi])
        assert np.array_equal(sample, whole_sample[lo:hi])
    assert np.array_equal(counts, whole_counts)


def test_second_segment_is_megatron_restarted_with_carried_counts():
    """A segment starting at S with counts c(S) is Megatron's blend offset by c(S)."""
    rng = np.random.default_rng(11)
    first, second = rng.dirichlet(np.ones(6)), rng.dirichlet(np.ones(6))
    first_index, _, counts_at_switch = ours(first, 1234)
    index, sample, _ = ours(
        second, 2000, start_counts=counts_at_switch, segment_start=1234, begin=1234
    )
    expected_index, expected_sample = megatron_blend(second, 2000)
    assert np.array_equal(index, expected_index)
    assert np.array_equal(sample, expected_sample + counts_at_switch[expected_index])
    assert np.bincount(first_index, minlength=6).tolist() == counts_at_switch.tolist()


def _valid_arguments(num_domains: int = 4, size: int = 10) -> dict:
    return {
        "dataset_index": np.empty(size, np.int16),
        "dataset_sample_index": np.empty(size, np.int64),
        "weights": np.full(num_domains, 1.0 / num_domains),
        "segment_start_counts": np.zeros(num_domains, np.int64),
        "counts": np.zeros(num_domains, np.int64),
        "segment_start": 0,
        "begin": 0,
    }


@pytest.mark.parametrize(
    ("name", "bad_value"),
    [
        ("dataset_index", np.empty(10, np.int32)),
        ("dataset_index", np.empty(10, np.uint8)),
        ("dataset_index", np.empty(10, np.int8)),
        ("dataset_sample_index", np.empty(10, np.int32)),
        ("dataset_sample_index", np.empty(10, np.uint64)),
        ("weights", np.full(4, 0.25, np.float32)),
        ("segment_start_counts", np.zeros(4, np.int32)),
        ("counts", np.zeros(4, np.float64)),
        ("counts", [0, 0, 0, 0]),
        ("weights", [0.25, 0.25, 0.25, 0.25]),
    ],
)
def test_wrong_dtype_is_a_type_error_naming_the_argument(name, bad_value):
    arguments = _valid_arguments()
    arguments[name] = bad_value
    with pytest.raises(TypeError, match=name):
        build_blending_segment(**arguments)


@pytest.mark.parametrize(
    ("name", "bad_value", "message"),
    [
        ("dataset_index", np.empty(20, np.int16)[::2], "C-contiguous"),
        ("counts", np.zeros(8, np.int64)[::2], "C-contiguous"),
        ("dataset_sample_index", np.empty((2, 5), np.int64), "1-D"),
        ("dataset_sample_index", np.empty(9, np.int64), "same length"),
        ("weights", np.full(3, 1 / 3), "one per weight"),
        ("weights", np.empty(0), r"\[1, 32767\]"),
        ("weights", np.full(32768, 1 / 32768), r"\[1, 32767\]"),
        ("weights", np.array([0.5, np.nan, 0.25, 0.25]), "finite"),
        ("counts", np.array([0, -1, 0, 0], np.int64), "below segment_start_counts"),
        ("begin", -1, "segment_start <= begin"),
    ],
)
def test_bad_shapes_and_values_are_value_errors(name, bad_value, message):
    arguments = _valid_arguments()
    arguments[name] = bad_value
    with pytest.raises(ValueError, match=message):
        build_blending_segment(**arguments)


def test_read_only_output_and_unknown_kernel_are_rejected():
    arguments = _valid_arguments()
    arguments["dataset_index"].setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        build_blending_segment(**arguments)
    with pytest.raises(ValueError, match="kernel"):
        build_blending_segment(**_valid_arguments(), kernel="cuda")


def test_outputs_are_written_in_place_not_to_a_copy():
    arguments = _valid_arguments(num_domains=3, size=30)
    arguments["dataset_index"][:] = -1
    build_blending_segment(**arguments)
    assert (arguments["dataset_index"] >= 0).all()
    assert arguments["counts"].sum() == 30


def test_gil_is_released_while_building():
    """Another Python thread runs while a long build is in progress."""
    weights = np.random.default_rng(0).dirichlet(np.ones(64))
    size = 4_000_000
    about_to_build = threading.Event()
    finished_at: list[float] = []

    def build():
        index, sample = np.empty(size, np.int16), np.empty(size, np.int64)
        counts = np.zeros(64, np.int64)
        about_to_build.set()
        build_blending_segment(index, sample, weights, np.zeros(64, np.int64), counts, 0, 0)
        finished_at.append(time.perf_counter())

    worker = threading.Thread(target=build)
    worker.start()
    about_to_build.wait()
    main_ran_at = time.perf_counter()
    worker.join()
    assert main_ran_at < finished_at[0]
