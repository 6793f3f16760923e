// Work plan of the sharded Gram, shared by the CPU kernel (csrc/gram.cpp) and the CUDA kernels
// (csrc/gram_cuda.cu). Plain C++: no torch or CUDA headers.
//
// Each slot is cut into chunks (at most 32768 elements of one slot, in slot order). The chunks
// are dealt, in order, to at most kMaxPartialRows work items ("rows"): row r takes the
// contiguous chunks [first_chunk(r), first_chunk(r + 1)) and writes one fp64 partial per output,
// and the result sums the rows in row order. The workspace is therefore at most
// kMaxPartialRows x K x N doubles (32 MiB at K = N = 32), however many elements there are, and
// the summation order depends on the slot sizes alone, never on thread or block counts. With
// at most kMaxPartialRows chunks every row is one chunk.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define MEGAGRAPE_HOST_DEVICE __host__ __device__
#else
#define MEGAGRAPE_HOST_DEVICE
#endif

namespace megagrape_gram {

// Cap on the rows of fp64 partials: enough work items to spread over every CPU thread or
// GPU block slot (a few waves of 2 blocks on each of 132 SMs), few enough to keep the
// workspace small.
constexpr int64_t kMaxPartialRows = 4096;

// Rows of partials for `chunks` chunks.
constexpr int64_t partial_rows(int64_t chunks) {
  return chunks < kMaxPartialRows ? chunks : kMaxPartialRows;
}

// First chunk of row `row` (0 <= row <= rows, rows = partial_rows(chunks)); rows differ by at
// most one chunk, and every row has at least one.
MEGAGRAPE_HOST_DEVICE inline int64_t first_chunk(int64_t row, int64_t chunks, int64_t rows) {
  return row * chunks / rows;
}

}  // namespace megagrape_gram
