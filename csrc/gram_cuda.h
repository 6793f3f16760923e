// CUDA launcher of the sharded Gram (csrc/gram_cuda.cu). Plain CUDA runtime types only, no
// torch headers, so the .cu compiles on its own; csrc/gram.cpp validates the inputs, builds
// the tables below on the device and calls gram_cuda_launch on the current stream.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "gram_plan.h"

namespace megagrape_gram {

// Elements of one chunk: a contiguous range of one slot, reduced by one thread block at a time.
constexpr int64_t kCudaItemElements = 32768;

// Device tables of one call. An item is one chunk [start, start + len) of one slot, in slot
// order; the items are dealt to partial_rows(num_items) rows (csrc/gram_plan.h). Vectors are
// deduplicated ("unique vectors", U of them) so a vector that appears in both a and b is read
// once per tile.
struct GramCudaArgs {
  const int64_t* items;      // [num_items, 3]: slot, start element, length (<= kCudaItemElements)
  const int64_t* slot_ptrs;  // [P, U]: data pointer of unique vector u in slot j, as an integer
  const int64_t* is_bf16;    // [U]: 1 for bfloat16 storage, 0 for float32
  const int64_t* a_vec;      // [K]: unique-vector index of a[k]
  const int64_t* b_vec;      // [N]: unique-vector index of b[n]
  int64_t num_items;
  int64_t num_unique;        // U
  int32_t K;
  int32_t N;
  double* partials;          // [partial_rows(num_items), K, N] workspace: fp64 partials per row
  double* out;               // [K, N] result: the partials summed over rows in a fixed order
};

// Enqueues the two kernels on `stream`; returns the launch error, if any (the kernels run
// asynchronously, like every CUDA op of torch).
cudaError_t gram_cuda_launch(const GramCudaArgs& args, cudaStream_t stream);

}  // namespace megagrape_gram
