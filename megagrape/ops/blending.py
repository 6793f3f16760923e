"""Typed wrapper of the C++ blending builder ``megagrape._C.build_blending_segment``.

The builder fills host numpy arrays, so of the policy in :mod:`megagrape.ops.extension` only
point 1 applies: the extension is required, and there is no CUDA case to fall back from.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from megagrape.ops.extension import extension

BlendingKernel = Literal["auto", "avx", "scalar"]


def build_blending_segment(
    dataset_index: np.ndarray,
    dataset_sample_index: np.ndarray,
    weights: np.ndarray,
    segment_start_counts: np.ndarray,
    counts: np.ndarray,
    segment_start: int,
    begin: int,
    *,
    kernel: BlendingKernel = "auto",
) -> None:
    """Fill one piece of a blending segment in place (Megatron's greedy rule, per segment).

    dataset_index: int16 [n], out: the domain of global samples ``begin .. begin + n - 1``.
    dataset_sample_index: int64 [n], out: the index into that domain (its running count).
    weights: float64 [K], the segment's domain weights (finite).
    segment_start_counts: int64 [K], per-domain counts at the segment start.
    counts: int64 [K], in: the counts at ``begin``; out: the counts at ``begin + n``.
    segment_start: global sample index where the segment starts (<= ``begin``).
    kernel: "auto" (AVX when the CPU has it and K >= 16), "avx" or "scalar"; same results.

    Sample i goes to argmax_d w_d * max(i - segment_start, 1) - (counts_d -
    segment_start_counts_d), ties to the lowest d. Arrays must have exactly these dtypes and
    be 1-D and C-contiguous: TypeError/ValueError name the argument otherwise. The GIL is
    released while the loop runs.
    """
    extension().build_blending_segment(
        dataset_index,
        dataset_sample_index,
        weights,
        segment_start_counts,
        counts,
        segment_start,
        begin,
        kernel=kernel,
    )


def blending_kernel() -> Literal["avx", "scalar"]:
    """The vector kernel ``kernel="auto"`` uses on this machine for K >= 16 domains."""
    return extension().blending_kernel()
