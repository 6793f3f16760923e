// Segment-restartable greedy blending-index builder (see csrc/blending.cpp).
// Plain pybind11 + numpy (no torch headers), so this unit compiles in seconds.
//
// register_blending adds to the module:
//   build_blending_segment(dataset_index int16[n], dataset_sample_index int64[n],
//                          weights float64[K], segment_start_counts int64[K], counts int64[K],
//                          segment_start, begin, *, kernel="auto")
//     Megatron's build_blending_indices rule restarted at `segment_start` with carried counts;
//     fills global samples [begin, begin+n) and advances `counts` in place.
//   blending_kernel() -> "avx" | "scalar"
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

void register_blending(pybind11::module_& m);
