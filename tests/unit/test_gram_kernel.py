"""The fused sharded-Gram kernel (megagrape._C.gram) against the plain torch reference, and the
extension policy of megagrape.ops (required extension; CUDA without CUDA build -> reference)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import megagrape.ops.extension as extension_module
import megagrape.ops.gram as gram_module
from megagrape.ops.extension import ExtensionMissingError, built_with_cuda, extension
from megagrape.ops.gram import gram_matrix, gram_reference, gram_workspace_bytes

gram_kernel = extension().gram

ODD_SHAPES = [(1,), (7,), (1000003,), (0,), (3, 5), (2, 3, 4)]


def random_vectors(count, shapes, dtype, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(shape, generator=gen).to(dtype=dtype, device=device) for shape in shapes]
        for _ in range(count)
    ]


def cauchy_schwarz_scale(a, b):
    """[K, N] bound ||a_k|| * ||b_n|| on |G[k, n]|: the scale the rounding error lives on."""

    def norms(vectors):
        return torch.tensor(
            [sum(float(t.double().square().sum()) for t in v) ** 0.5 for v in vectors],
            dtype=torch.float64,
        )

    return torch.outer(norms(a), norms(b))


def assert_close_to_reference(got, a, b, rel=1e-6):
    want = gram_reference(a, b)
    assert got.dtype == torch.float64
    assert got.shape == want.shape
    err = (got.cpu() - want.cpu()).abs()
    bound = rel * cauchy_schwarz_scale(a, b) + 1e-300
    assert torch.all(err <= bound), f"max error / bound = {(err / bound).max():.3g}"


def test_reference_on_integers():
    a = [[torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]]
    b = [[torch.tensor([4.0, 5.0]), torch.tensor([[6.0]])], [torch.ones(2), torch.ones(1, 1)]]
    want = torch.tensor([[1 * 4 + 2 * 5 + 3 * 6, 1 + 2 + 3]], dtype=torch.float64)
    assert torch.equal(gram_reference(a, b), want)
    assert torch.equal(gram_kernel(a, b), want)


@pytest.mark.parametrize(
    ("dtype_a", "dtype_b"),
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.bfloat16),
        (torch.float32, torch.bfloat16),
        (torch.bfloat16, torch.float32),
    ],
)
def test_k16_n6_odd_shapes_match_reference(dtype_a, dtype_b):
    # bf16 x bf16 products are exact in fp32, so bf16 needs no looser tolerance than fp32.
    a = random_vectors(16, ODD_SHAPES, dtype_a, seed=1)
    b = random_vectors(6, ODD_SHAPES, dtype_b, seed=2)
    assert_close_to_reference(gram_kernel(a, b), a, b)


@pytest.mark.parametrize(("k", "n"), [(1, 1), (1, 6), (16, 1), (5, 4), (9, 7)])
def test_tile_edges_match_reference(k, n):
    shapes = [(4099,), (13, 3), (1,)]
    a = random_vectors(k, shapes, torch.float32, seed=k)
    b = random_vectors(n, shapes, torch.float32, seed=100 + n)
    assert_close_to_reference(gram_kernel(a, b), a, b)


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 6),
    n=st.integers(1, 6),
    sizes=st.lists(st.integers(0, 70), min_size=0, max_size=4),
    a_bf16=st.booleans(),
    b_bf16=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_layouts_match_reference(k, n, sizes, a_bf16, b_bf16, seed):
    shapes = [(size,) for size in sizes]
    a = random_vectors(k, shapes, torch.bfloat16 if a_bf16 else torch.float32, seed)
    b = random_vectors(n, shapes, torch.bfloat16 if b_bf16 else torch.float32, seed + 1)
    assert_close_to_reference(gram_kernel(a, b), a, b)


def test_slots_may_be_views_into_flat_buffers_at_odd_offsets():
    # ZeRO-style: every vector is one flat buffer; slots are parameter-shaped views into it.
    shapes = [(3,), (33, 17), (1,), (4000,)]
    total = sum(torch.Size(s).numel() for s in shapes)

    def views(flat):
        out, offset = [], 1  # offset 1: no slot starts 32-byte aligned
        for shape in shapes:
            size = torch.Size(shape).numel()
            out.append(flat[offset : offset + size].view(shape))
            offset += size
        return out

    gen = torch.Generator().manual_seed(5)
    a = [views(torch.randn(total + 1, generator=gen)) for _ in range(4)]
    b = [views(torch.randn(total + 1, generator=gen).bfloat16()) for _ in range(3)]
    assert_close_to_reference(gram_kernel(a, b), a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_vectors_give_exactly_symmetric_gram(dtype):
    a = random_vectors(7, [(5003,), (17,)], dtype, seed=3)
    got = gram_kernel(a, a)
    assert_close_to_reference(got, a, a)
    assert torch.equal(got, got.T)
    assert torch.all(got.diagonal() > 0)


def test_result_independent_of_thread_count_and_run():
    a = random_vectors(16, [(1000003,), (40000,)], torch.float32, seed=4)
    b = random_vectors(6, [(1000003,), (40000,)], torch.bfloat16, seed=5)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(gram_kernel(a, b))
        results.append(gram_kernel(a, b))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert torch.equal(results[0], other)


def test_workspace_is_bounded_for_any_element_count():
    # A 7B-parameter shard at K = N = 32: one partial row per 32768-element chunk would be
    # 213,624 rows, 1.75 GB of float64; the rows are capped instead.
    cap = extension().gram_max_partial_rows
    chunk = extension().gram_chunk_elements
    assert (cap, chunk) == (4096, 32768)
    bounded = cap * 32 * 32 * 8
    assert gram_workspace_bytes([7_000_000_000], 32, 32) == bounded  # 32 MiB
    assert gram_workspace_bytes([3_500_000_000] * 2 + [10**12], 32, 32) == bounded
    # Below the cap: one row per chunk (an empty slot has none).
    assert gram_workspace_bytes([1, 0, 2 * chunk + 1], 16, 6) == 4 * 16 * 6 * 8
    assert gram_workspace_bytes([cap * chunk], 3, 2) == bounded // (32 * 32) * 6
    assert gram_workspace_bytes([], 3, 2) == 0
    with pytest.raises(ValueError, match="slot 1 has -1 elements"):
        gram_workspace_bytes([5, -1], 1, 1)


def many_slot_vectors(count, dtype, seed, integers=False):
    """Vectors of 6000 slots (views into one flat buffer each) of 1..37 elements, plus one
    of 3 chunks: 6003 chunks, more than the 4096-row cap, so rows take 1 or 2 chunks that
    may belong to different slots. With `integers`, values in [-8, 8] make every sum exact."""
    sizes = [i % 37 + 1 for i in range(6000)] + [2 * 32768 + 5]
    gen = torch.Generator().manual_seed(seed)
    vectors = []
    for _ in range(count):
        if integers:
            flat = torch.randint(-8, 9, (sum(sizes),), generator=gen).to(dtype)
        else:
            flat = torch.randn(sum(sizes), generator=gen).to(dtype)
        vectors.append(list(flat.split(sizes)))
    return vectors


def test_capped_rows_equal_float64_reference():
    a = many_slot_vectors(3, torch.float32, seed=21, integers=True)
    b = many_slot_vectors(2, torch.bfloat16, seed=22, integers=True)
    slot_numel = [t.numel() for t in a[0]]
    assert gram_workspace_bytes(slot_numel, 3, 2) == extension().gram_max_partial_rows * 6 * 8
    assert torch.equal(gram_kernel(a, b), gram_reference(a, b))
    assert torch.equal(gram_kernel(a, a), gram_reference(a, a))
    assert torch.equal(gram_kernel(b, b), gram_reference(b, b))  # bf16 tiles


def test_capped_rows_independent_of_thread_count():
    a = many_slot_vectors(4, torch.float32, seed=23)
    b = many_slot_vectors(3, torch.bfloat16, seed=24)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(gram_kernel(a, b))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
    assert_close_to_reference(results[0], a, b)


def test_empty_inputs():
    b = random_vectors(3, [(4,)], torch.float32, seed=6)
    assert gram_kernel([], b).shape == (0, 3)
    assert gram_kernel(b, []).shape == (3, 0)
    assert gram_kernel([], []).shape == (0, 0)
    assert torch.equal(gram_kernel([[]], [[], []]), torch.zeros(1, 2, dtype=torch.float64))
    empty_slots = [[torch.empty(0), torch.empty(0, 3)] for _ in range(2)]
    assert torch.equal(
        gram_kernel(empty_slots, empty_slots), torch.zeros(2, 2, dtype=torch.float64)
    )


def test_wrapper_matches_kernel_and_falls_back_to_reference(monkeypatch):
    a = tuple(tuple(v) for v in random_vectors(3, [(300,), (2, 2)], torch.float32, seed=7))
    b = random_vectors(2, [(300,), (2, 2)], torch.bfloat16, seed=8)
    assert gram_module.kernel_available()
    with_kernel = gram_matrix(a, b)
    assert torch.equal(with_kernel, gram_kernel([list(v) for v in a], b))
    assert torch.equal(gram_matrix(a, a), gram_matrix(a, a).T)
    monkeypatch.setattr(gram_module, "fall_back_to_reference", lambda kernel, device: True)
    assert torch.equal(gram_matrix(a, b), gram_reference(a, b))


def test_cuda_without_cuda_build_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(extension(), "gram_has_cuda", False)
    monkeypatch.setattr(extension_module, "_warned_kernels", set())
    cuda = torch.device("cuda", 0)
    assert not gram_module.kernel_available(cuda)
    assert not extension_module.fall_back_to_reference("gram", torch.device("cpu"))
    with pytest.warns(RuntimeWarning, match=r"built without CUDA.*gram on cuda:0.*install\.sh"):
        assert extension_module.fall_back_to_reference("gram", cuda)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert extension_module.fall_back_to_reference("gram", cuda)  # no second warning
    monkeypatch.setattr(extension(), "gram_has_cuda", True)
    assert gram_module.kernel_available(cuda)
    assert not extension_module.fall_back_to_reference("gram", cuda)


def test_missing_extension_says_how_to_build_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "megagrape._C", None)  # the import now fails
    extension.cache_clear()
    try:
        with pytest.raises(
            ExtensionMissingError, match=r"bash tools/install\.sh.*no-build-isolation"
        ):
            gram_matrix([[torch.ones(2)]], [[torch.ones(2)]])
    finally:
        monkeypatch.undo()
        extension.cache_clear()
    assert extension().gram is gram_kernel


@pytest.mark.parametrize(
    ("a", "b", "error", "words"),
    [
        (
            [[torch.ones(2)]],
            [[torch.ones(2), torch.ones(1)]],
            ValueError,
            ["b[0] has 2 slots", "a[0] has 1"],
        ),
        (
            [[torch.ones(2)], [torch.ones(3)]],
            [[torch.ones(2)]],
            ValueError,
            ["a[1][0] has 3 elements", "slot 0"],
        ),
        ([[torch.ones(2)]], [[torch.ones(2, dtype=torch.float16)]], TypeError, ["b[0][0]", "Half"]),
        (
            [[torch.ones(2), torch.ones(1, dtype=torch.bfloat16)]],
            [[torch.ones(2), torch.ones(1)]],
            TypeError,
            ["a[0][1]", "one dtype"],
        ),
        (
            [[torch.ones(2, 3).T]],
            [[torch.ones(3, 2)]],
            ValueError,
            ["a[0][0] is not contiguous", ".contiguous()"],
        ),
        (
            [[torch.ones(2)]],
            [[torch.ones(2, device="meta")]],
            ValueError,
            ["b[0][0] is on meta", "one device"],
        ),
        (
            [[torch.ones(2, device="meta")]],
            [[torch.ones(2, device="meta")]],
            ValueError,
            ["meta", "not supported"],
        ),
    ],
)
def test_bad_input_names_vector_and_slot(a, b, error, words):
    with pytest.raises(error) as caught:
        gram_kernel(a, b)
    for word in words:
        assert word in str(caught.value)


EMULATION_DIR = Path(__file__).parent / "gram_cuda_emulation"
CSRC = Path(__file__).parents[2] / "csrc"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (C++20)")
@pytest.mark.parametrize("max_rows", [None, 2], ids=["as-built", "2-rows"])
def test_cuda_kernels_in_cpu_emulation(tmp_path, max_rows):
    """csrc/gram_cuda.cu's kernels, run on the CPU (tests/unit/gram_cuda_emulation/cuda_mock.h),
    match a float64 reference: covers the CUDA indexing and reduction where CI has no GPU.
    With max_rows=2 (kMaxPartialRows rewritten in a copy of csrc/gram_plan.h) the cases of
    several chunks become rows of several chunks, across slots: the bounded-workspace path."""
    source, launches = re.subn(
        r"(\w+)<<<(.+?), kThreads, 0, stream>>>\(",
        r"emulated_launch(\1, \2, kThreads, ",
        (CSRC / "gram_cuda.cu").read_text(),
    )
    assert launches == 2, "the kernel launches in gram_cuda.cu changed: update the rewrite above"
    # The mock's __launch_bounds__ takes one argument (the block size).
    source = re.sub(r"__launch_bounds__\((\w+), \w+\)", r"__launch_bounds__(\1)", source)
    (tmp_path / "gram_cuda_emulated.inc").write_text(source)
    if max_rows is not None:
        # Next to the .inc, these copies shadow csrc's headers for its #include "...".
        shutil.copy(CSRC / "gram_cuda.h", tmp_path)
        plan, found = re.subn(
            r"kMaxPartialRows = \d+;",
            f"kMaxPartialRows = {max_rows};",
            (CSRC / "gram_plan.h").read_text(),
        )
        assert found == 1, "kMaxPartialRows moved: update the rewrite above"
        (tmp_path / "gram_plan.h").write_text(plan)
    (tmp_path / "cuda_runtime_api.h").write_text('#pragma once\n#include "cuda_mock.h"\n')
    binary = tmp_path / "emulate_gram"
    subprocess.run(
        ["g++", "-std=c++20", "-O2", "-pthread", f"-I{tmp_path}", f"-I{EMULATION_DIR}",
         f"-I{CSRC}", str(EMULATION_DIR / "emulate_gram.cpp"), "-o", str(binary)],
        check=True,
    )  # fmt: skip
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("ok ") == 5, run.stdout


def cuda_ready():
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_ready(), reason="needs CUDA")
class TestCuda:
    def test_extension_was_built_with_cuda(self):
        assert built_with_cuda(), "rebuild megagrape._C against a CUDA torch with nvcc on PATH"

    @pytest.mark.parametrize(
        ("k", "n", "dtype_a", "dtype_b"),
        [
            (16, 6, torch.float32, torch.float32),
            (16, 6, torch.bfloat16, torch.bfloat16),
            (16, 6, torch.float32, torch.bfloat16),
            (1, 1, torch.float32, torch.float32),
            (20, 10, torch.bfloat16, torch.float32),
        ],
    )
    def test_matches_reference(self, k, n, dtype_a, dtype_b):
        a = random_vectors(k, ODD_SHAPES, dtype_a, seed=11, device="cuda")
        b = random_vectors(n, ODD_SHAPES, dtype_b, seed=12, device="cuda")
        got = gram_kernel(a, b)
        assert got.device.type == "cuda"
        assert_close_to_reference(got, a, b)

    def test_same_vectors_deterministic_and_symmetric(self):
        a = random_vectors(9, [(3_000_001,), (5,)], torch.float32, seed=13, device="cuda")
        first = gram_kernel(a, a)
        assert torch.equal(first, gram_kernel(a, a))
        assert torch.equal(first, first.T)
        assert_close_to_reference(first, a, a)

    def test_capped_rows_equal_cpu_and_workspace_stays_bounded(self):
        # 20000 chunks of 3 elements, K = 8 vectors (b is a): the partials take 4096 rows
        # (2 MiB) where one row per chunk would take 10 MiB; the chunk table adds 1.8 MiB.
        gen = torch.Generator().manual_seed(14)
        a_cpu = [
            list(torch.randint(-8, 9, (60000,), generator=gen).float().split(3)) for _ in range(8)
        ]
        a = [[t.cuda() for t in vector] for vector in a_cpu]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        got = gram_kernel(a, a)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        assert gram_workspace_bytes([3] * 20000, 8, 8) == 4096 * 64 * 8
        assert peak < 5 * 2**20, f"peak {peak / 2**20:.1f} MiB"
        assert torch.equal(got.cpu(), gram_kernel(a_cpu, a_cpu))

    def test_empty_slots_give_zeros(self):
        a = [[torch.empty(0, device="cuda")] for _ in range(3)]
        assert torch.equal(gram_kernel(a, a), torch.zeros(3, 3, dtype=torch.float64, device="cuda"))
