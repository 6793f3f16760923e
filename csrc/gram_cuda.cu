// CUDA kernels of the sharded Gram (host side: gram_cuda() in csrc/gram.cpp).
//
// Kernel 1 (partials): one thread block per (row, output tile). A row is a run of consecutive
// chunks (items) of at most kCudaItemElements elements of one slot (csrc/gram_plan.h); an
// output tile is up to kTileK a-vectors x kTileN b-vectors. For each chunk of its row, every
// thread walks the chunk with a block-wide stride, loads its element of each tile vector once
// (coalesced, fp32 or bf16 widened to fp32) and keeps the kTileK x kTileN products in fp32
// registers; the block then sums the threads in a fixed order (warp shuffles, then warps in
// index order, in fp64) and adds the chunk's sums to the row's fp64 totals, chunk by chunk.
// It writes one fp64 partial per output of the row. Tiles of one row have adjacent block
// indices, so when K > kTileK or N > kTileN the repeated reads of a chunk are served by L2.
// Kernel 2 (reduce): one block per output sums the partials of all rows in a fixed order.
// No atomics anywhere: the result is bit-identical from run to run.
#include "gram_cuda.h"

namespace megagrape_gram {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Two resident blocks of the partials kernel per SM (16 warps of loads in flight): caps it at
// 128 registers. Without the cap, the chunk loop takes ptxas to ~170 and 1 block per SM.
constexpr int kPartialsBlocksPerSm = 2;
constexpr int kTileK = 8;
constexpr int kTileN = 8;

__device__ __forceinline__ float load_as_float(const char* base, bool bf16, int64_t i) {
  if (bf16) {
    const unsigned short bits = __ldg(reinterpret_cast<const unsigned short*>(base) + i);
    return __uint_as_float(static_cast<unsigned int>(bits) << 16);
  }
  return __ldg(reinterpret_cast<const float*>(base) + i);
}

__global__ void __launch_bounds__(kThreads, kPartialsBlocksPerSm)
    gram_partials_kernel(GramCudaArgs args, int64_t num_rows, int tiles_n, int num_tiles) {
  const int64_t row = blockIdx.x / num_tiles;
  const int tile = static_cast<int>(blockIdx.x % num_tiles);
  const int k0 = (tile / tiles_n) * kTileK;
  const int n0 = (tile % tiles_n) * kTileN;
  const int kc = min(kTileK, args.K - k0);
  const int nc = min(kTileN, args.N - n0);

  __shared__ double warp_sums[kWarps][kTileK * kTileN];
  // This chunk's start in each tile vector (a then b; null where unused) and its storage,
  // staged by the first kTileK + kTileN threads. Through shared memory, so that no thread
  // holds the vector tables in registers across chunks: sm_90 then fits 128 registers
  // without spilling (sm_80: ~110 bytes of spills, one L1 load in the inner loop).
  __shared__ const char* chunk_base[kTileK + kTileN];
  __shared__ bool chunk_bf16[kTileK + kTileN];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int o = threadIdx.x;  // output of the tile that this thread totals (o < kTileK * kTileN)
  double row_total = 0.0;
  const int64_t last = first_chunk(row + 1, args.num_items, num_rows);
  for (int64_t item = first_chunk(row, args.num_items, num_rows); item < last; ++item) {
    const int64_t len = args.items[3 * item + 2];
    if (threadIdx.x < kTileK + kTileN) {
      const int v = threadIdx.x;
      const bool is_a = v < kTileK;
      const int index = is_a ? v : v - kTileK;
      const char* base = nullptr;
      bool bf16 = false;
      if (index < (is_a ? kc : nc)) {
        const int64_t u = is_a ? args.a_vec[k0 + index] : args.b_vec[n0 + index];
        const int64_t slot = args.items[3 * item];
        const int64_t start = args.items[3 * item + 1];
        bf16 = args.is_bf16[u] != 0;
        base = reinterpret_cast<const char*>(args.slot_ptrs[slot * args.num_unique + u]) +
               start * (bf16 ? 2 : 4);
      }
      chunk_base[v] = base;
      chunk_bf16[v] = bf16;
    }
    __syncthreads();
    const char* a_base[kTileK];
    const char* b_base[kTileN];
    bool a_bf16[kTileK];
    bool b_bf16[kTileN];
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      a_base[kk] = chunk_base[kk];
      a_bf16[kk] = chunk_bf16[kk];
    }
#pragma unroll
    for (int nn = 0; nn < kTileN; ++nn) {
      b_base[nn] = chunk_base[kTileK + nn];
      b_bf16[nn] = chunk_bf16[kTileK + nn];
    }

    float acc[kTileK][kTileN];
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk)
#pragma unroll
      for (int nn = 0; nn < kTileN; ++nn) acc[kk][nn] = 0.0f;

    for (int64_t i = threadIdx.x; i < len; i += kThreads) {
      float bv[kTileN];
#pragma unroll
      for (int nn = 0; nn < kTileN; ++nn)
        bv[nn] = nn < nc ? load_as_float(b_base[nn], b_bf16[nn], i) : 0.0f;
#pragma unroll
      for (int kk = 0; kk < kTileK; ++kk) {
        const float av = kk < kc ? load_as_float(a_base[kk], a_bf16[kk], i) : 0.0f;
#pragma unroll
        for (int nn = 0; nn < kTileN; ++nn) acc[kk][nn] = fmaf(av, bv[nn], acc[kk][nn]);
      }
    }

    // Fixed-order block reduction in fp64: lanes by shuffle tree, then warps 0..kWarps-1,
    // added to the row's total of output o.
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk)
#pragma unroll
      for (int nn = 0; nn < kTileN; ++nn) {
        double v = static_cast<double>(acc[kk][nn]);
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1)
          v += __shfl_down_sync(0xffffffffu, v, offset);
        if (lane == 0) warp_sums[warp][kk * kTileN + nn] = v;
      }
    __syncthreads();
    if (o < kTileK * kTileN) {
      double sum = 0.0;
      for (int w = 0; w < kWarps; ++w) sum += warp_sums[w][o];
      row_total += sum;
    }
    __syncthreads();  // warp_sums and chunk_base are written again for the next chunk
  }

  if (o < kTileK * kTileN) {
    const int kk = o / kTileN;
    const int nn = o % kTileN;
    if (kk < kc && nn < nc) {
      const int64_t kn = static_cast<int64_t>(args.K) * args.N;
      args.partials[row * kn + static_cast<int64_t>(k0 + kk) * args.N + (n0 + nn)] = row_total;
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    gram_reduce_kernel(const double* partials, int64_t num_rows, int64_t kn, double* out) {
  const int64_t o = blockIdx.x;
  double sum = 0.0;
  for (int64_t r = threadIdx.x; r < num_rows; r += kThreads) sum += partials[r * kn + o];
  __shared__ double tree[kThreads];
  tree[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (static_cast<int>(threadIdx.x) < stride) tree[threadIdx.x] += tree[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[o] = tree[0];
}

}  // namespace

cudaError_t gram_cuda_launch(const GramCudaArgs& args, cudaStream_t stream) {
  const int64_t kn = static_cast<int64_t>(args.K) * args.N;
  if (kn == 0) return cudaSuccess;
  const int tiles_k = (args.K + kTileK - 1) / kTileK;
  const int tiles_n = (args.N + kTileN - 1) / kTileN;
  const int num_tiles = tiles_k * tiles_n;
  const int64_t num_rows = partial_rows(args.num_items);
  const int64_t blocks = num_rows * num_tiles;
  if (blocks > 0x7fffffffLL || kn > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  if (blocks > 0) {
    gram_partials_kernel<<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
        args, num_rows, tiles_n, num_tiles);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  gram_reduce_kernel<<<static_cast<unsigned int>(kn), kThreads, 0, stream>>>(
      args.partials, num_rows, kn, args.out);
  return cudaGetLastError();
}

}  // namespace megagrape_gram
