// CUDA kernels of the sharded Gram (host side: gram_cuda() in csrc/gram.cpp).
//
// Kernel 1 (partials): one thread block per (work item, output tile). A work item is up to
// kCudaItemElements elements of one slot; an output tile is up to kTileK a-vectors x kTileN
// b-vectors. Every thread walks the item with a block-wide stride, loads its element of each
// tile vector once (coalesced, fp32 or bf16 widened to fp32) and keeps the kTileK x kTileN
// products in fp32 registers. The block then sums the threads in a fixed order (warp
// shuffles, then warps in index order, in fp64) and writes one fp64 partial per output of
// the item. Tiles of one item have adjacent block indices, so when K > kTileK or N > kTileN
// the repeated reads of an item are served by L2.
// Kernel 2 (reduce): one block per output sums the partials of all items in a fixed order.
// No atomics anywhere: the result is bit-identical from run to run.
#include "gram_cuda.h"

namespace megagrape_gram {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTileK = 8;
constexpr int kTileN = 8;

__device__ __forceinline__ float load_as_float(const char* base, bool bf16, int64_t i) {
  if (bf16) {
    const unsigned short bits = __ldg(reinterpret_cast<const unsigned short*>(base) + i);
    return __uint_as_float(static_cast<unsigned int>(bits) << 16);
  }
  return __ldg(reinterpret_cast<const float*>(base) + i);
}

__global__ void __launch_bounds__(kThreads)
    gram_partials_kernel(GramCudaArgs args, int tiles_n, int num_tiles) {
  const int64_t item = blockIdx.x / num_tiles;
  const int tile = static_cast<int>(blockIdx.x % num_tiles);
  const int k0 = (tile / tiles_n) * kTileK;
  const int n0 = (tile % tiles_n) * kTileN;
  const int kc = min(kTileK, args.K - k0);
  const int nc = min(kTileN, args.N - n0);
  const int64_t slot = args.items[3 * item];
  const int64_t start = args.items[3 * item + 1];
  const int64_t len = args.items[3 * item + 2];
  const int64_t* slot_ptrs = args.slot_ptrs + slot * args.num_unique;

  // Base pointers of this item's range in each tile vector (unused entries stay null).
  const char* a_base[kTileK];
  const char* b_base[kTileN];
  bool a_bf16[kTileK];
  bool b_bf16[kTileN];
#pragma unroll
  for (int kk = 0; kk < kTileK; ++kk) {
    a_base[kk] = nullptr;
    a_bf16[kk] = false;
    if (kk < kc) {
      const int64_t u = args.a_vec[k0 + kk];
      a_bf16[kk] = args.is_bf16[u] != 0;
      a_base[kk] = reinterpret_cast<const char*>(slot_ptrs[u]) + start * (a_bf16[kk] ? 2 : 4);
    }
  }
#pragma unroll
  for (int nn = 0; nn < kTileN; ++nn) {
    b_base[nn] = nullptr;
    b_bf16[nn] = false;
    if (nn < nc) {
      const int64_t u = args.b_vec[n0 + nn];
      b_bf16[nn] = args.is_bf16[u] != 0;
      b_base[nn] = reinterpret_cast<const char*>(slot_ptrs[u]) + start * (b_bf16[nn] ? 2 : 4);
    }
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

  // Fixed-order block reduction in fp64: lanes by shuffle tree, then warps 0..kWarps-1.
  __shared__ double warp_sums[kWarps][kTileK * kTileN];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
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
  const int o = threadIdx.x;
  if (o < kTileK * kTileN) {
    const int kk = o / kTileN;
    const int nn = o % kTileN;
    if (kk < kc && nn < nc) {
      double sum = 0.0;
      for (int w = 0; w < kWarps; ++w) sum += warp_sums[w][o];
      const int64_t kn = static_cast<int64_t>(args.K) * args.N;
      args.partials[item * kn + static_cast<int64_t>(k0 + kk) * args.N + (n0 + nn)] = sum;
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    gram_reduce_kernel(const double* partials, int64_t num_items, int64_t kn, double* out) {
  const int64_t o = blockIdx.x;
  double sum = 0.0;
  for (int64_t w = threadIdx.x; w < num_items; w += kThreads) sum += partials[w * kn + o];
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
  const int64_t blocks = args.num_items * num_tiles;
  if (blocks > 0x7fffffffLL || kn > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  if (blocks > 0) {
    gram_partials_kernel<<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
        args, tiles_n, num_tiles);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  gram_reduce_kernel<<<static_cast<unsigned int>(kn), kThreads, 0, stream>>>(
      args.partials, args.num_items, kn, args.out);
  return cudaGetLastError();
}

}  // namespace megagrape_gram
