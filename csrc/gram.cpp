// Fused sharded Gram: G[k, n] = sum_j <a[k][j], b[n][j]> over slots j, all K x N products
// produced in one pass over the K + N vectors (memory-bound by design).
//
// CPU algorithm. Every slot is cut into chunks of kItemElements elements, and the chunks are
// dealt in order to at most kMaxPartialRows rows (csrc/gram_plan.h). A row is processed by one
// thread, accumulates its chunks in order into its own row of fp64 partials, and the rows are
// summed in row order at the end, so the result is bit-identical for any thread count and
// the workspace is bounded. Inside a chunk, the K + N vectors are read in blocks of
// kBlockElements elements. A block of all of them stays in L2 while register tiles of
// kTileK x kTileN products sweep it, so each element comes from memory once; long blocks
// keep each vector's reads sequential for long enough for the hardware prefetcher. The tiles
// sum products in fp32 lanes over short runs (kLaneTerms products per lane) and add the runs
// in fp64.
// When every vector is bfloat16 (and the CPU has AVX2), the tiles widen bf16 in registers;
// otherwise bf16 blocks are widened into a per-thread float32 scratch first.
#include "gram.h"

#include <ATen/Parallel.h>

#include "gram_plan.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define MEGAGRAPE_GRAM_X86 1
#endif

#ifdef MEGAGRAPE_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "gram_cuda.h"
#endif

namespace {

constexpr int64_t kItemElements = 32768;  // elements per chunk (csrc/gram_plan.h)
constexpr int64_t kBlockElements = 4096;  // elements of every vector swept while in L2
constexpr int kTileK = 4;                 // a-vectors per register tile
constexpr int kTileN = 3;                 // b-vectors per float32 register tile
constexpr int kTileNBf16 = 2;             // b-vectors per bfloat16 register tile

// Validated inputs: vectors deduplicated by (dtype, data pointers), so `b is a` or a vector
// listed twice is read once.
struct GramLayout {
  int64_t K = 0;
  int64_t N = 0;
  int64_t P = 0;
  int64_t U = 0;
  std::vector<int64_t> slot_numel;  // [P]
  std::vector<int64_t> a_vec;       // [K] unique index of a[k]
  std::vector<int64_t> b_vec;       // [N] unique index of b[n]
  std::vector<const void*> ptrs;    // [U, P] data pointer of unique vector u in slot j
  std::vector<char> is_bf16;        // [U]
  c10::Device device = c10::Device(c10::kCPU);
};

struct WorkItem {
  int64_t slot;
  int64_t start;
  int64_t len;
};

using VectorList = std::vector<std::vector<at::Tensor>>;

using VectorKey = std::pair<bool, std::vector<const void*>>;  // (is bf16, slot pointers)

// Checks one side (a or b) against the slot layout of the first vector seen (the
// reference, `ref_side`[0]) and appends its unique-vector indices to `vec_index`. Error
// messages name the vector and slot as they are indexed in Python.
void add_side(const VectorList& side, const char* name, const char*& ref_side, GramLayout& L,
              std::map<VectorKey, int64_t>& seen, std::vector<int64_t>& vec_index) {
  for (size_t v = 0; v < side.size(); ++v) {
    const auto& slots = side[v];
    if (ref_side == nullptr) {
      ref_side = name;
      L.P = static_cast<int64_t>(slots.size());
      for (const auto& t : slots) L.slot_numel.push_back(t.numel());
      if (!slots.empty()) L.device = slots[0].device();
    }
    TORCH_CHECK_VALUE(static_cast<int64_t>(slots.size()) == L.P, "gram: ", name, "[", v,
                      "] has ", slots.size(), " slots, but ", ref_side, "[0] has ", L.P,
                      " (every vector must list the same slots, in the same order)");
    bool bf16 = false;
    std::vector<const void*> ptrs(slots.size());
    for (size_t j = 0; j < slots.size(); ++j) {
      const at::Tensor& t = slots[j];
      TORCH_CHECK_VALUE(t.layout() == at::kStrided, "gram: ", name, "[", v, "][", j,
                        "] is not a dense tensor; pass t.to_dense()");
      TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16,
                       "gram: ", name, "[", v, "][", j, "] has dtype ", t.scalar_type(),
                       "; supported: Float (float32) and BFloat16");
      TORCH_CHECK_VALUE(t.device() == L.device, "gram: ", name, "[", v, "][", j, "] is on ",
                        t.device(), ", but ", ref_side, "[0][0] is on ", L.device,
                        " (all tensors must be on one device)");
      TORCH_CHECK_VALUE(t.numel() == L.slot_numel[j], "gram: ", name, "[", v, "][", j,
                        "] has ", t.numel(), " elements, but ", ref_side, "[0][", j, "] has ",
                        L.slot_numel[j], " (slot ", j, " must have the same size in every vector)");
      TORCH_CHECK_VALUE(t.is_contiguous(), "gram: ", name, "[", v, "][", j,
                        "] is not contiguous; pass t.contiguous()");
      const bool t_bf16 = t.scalar_type() == at::kBFloat16;
      TORCH_CHECK_TYPE(j == 0 || t_bf16 == bf16, "gram: ", name, "[", v, "][", j,
                       "] has dtype ", t.scalar_type(), ", but ", name, "[", v,
                       "][0] has another (one vector keeps one dtype in all its slots)");
      bf16 = t_bf16;
      ptrs[j] = t.numel() > 0 ? t.data_ptr() : nullptr;
    }
    VectorKey key(bf16, std::move(ptrs));
    auto found = seen.find(key);
    if (found == seen.end()) {
      L.is_bf16.push_back(bf16 ? 1 : 0);
      L.ptrs.insert(L.ptrs.end(), key.second.begin(), key.second.end());
      found = seen.emplace(std::move(key), L.U++).first;
    }
    vec_index.push_back(found->second);
  }
}

GramLayout validate(const VectorList& a, const VectorList& b) {
  GramLayout L;
  L.K = static_cast<int64_t>(a.size());
  L.N = static_cast<int64_t>(b.size());
  const char* ref_side = nullptr;
  std::map<VectorKey, int64_t> seen;
  add_side(a, "a", ref_side, L, seen, L.a_vec);
  add_side(b, "b", ref_side, L, seen, L.b_vec);
  return L;
}

int64_t count_chunks(const std::vector<int64_t>& slot_numel, int64_t item_elements) {
  int64_t chunks = 0;
  for (const int64_t numel : slot_numel) chunks += (numel + item_elements - 1) / item_elements;
  return chunks;
}

// The chunks of every slot, in slot order: [slot, start, len <= item_elements].
std::vector<WorkItem> cut_items(const GramLayout& L, int64_t item_elements) {
  std::vector<WorkItem> items;
  items.reserve(static_cast<size_t>(count_chunks(L.slot_numel, item_elements)));
  for (int64_t j = 0; j < L.P; ++j)
    for (int64_t start = 0; start < L.slot_numel[j]; start += item_elements)
      items.push_back({j, start, std::min(item_elements, L.slot_numel[j] - start)});
  return items;
}

// ---------------------------------------------------------------------------------------
// Register tiles: out[k * ld + n] += sum_i a[k][i] * b[n][i] for k < KT, n < NT, i < len.
// Products are summed in fp32 lanes over runs of kLaneTerms products per lane; each run's
// lanes are then added in fp64 (fixed order), and so is the tail that does not fill a
// vector. T is float, or uint16_t for bfloat16 bits read directly.
constexpr int64_t kLaneTerms = 64;

template <class T>
using TileFn = void (*)(const T* const* a, const T* const* b, int64_t len, double* out,
                        int64_t ld);

inline double widen(float x) { return static_cast<double>(x); }
inline double widen(uint16_t bf16_bits) {
  const uint32_t bits = static_cast<uint32_t>(bf16_bits) << 16;
  float x;
  std::memcpy(&x, &bits, sizeof(x));
  return static_cast<double>(x);
}

template <class T>
inline double tail_dot(const T* a, const T* b, int64_t from, int64_t len) {
  double sum = 0.0;
  for (int64_t i = from; i < len; ++i) sum += widen(a[i]) * widen(b[i]);
  return sum;
}

// Portable loops: 4 lanes (SSE2 / NEON width), fully unrolled over the tile so that the
// KT * NT accumulators live in registers.
template <int KT, int NT>
struct TilePortable {
  static constexpr int kLanes = 4;
  static constexpr int64_t kRun = kLaneTerms * kLanes;
  static void run(const float* const* a, const float* const* b, int64_t len, double* out,
                  int64_t ld) {
    const int64_t vector_end = len - len % kLanes;
    double sums[KT][NT] = {};
    for (int64_t start = 0; start < vector_end; start += kRun) {
      const int64_t stop = std::min(vector_end, start + kRun);
      float acc[KT][NT][kLanes] = {};
      for (int64_t i = start; i < stop; i += kLanes) {
#pragma GCC unroll 16
        for (int k = 0; k < KT; ++k)
#pragma GCC unroll 16
          for (int n = 0; n < NT; ++n)
#pragma GCC unroll 16
            for (int l = 0; l < kLanes; ++l) acc[k][n][l] += a[k][i + l] * b[n][i + l];
      }
      for (int k = 0; k < KT; ++k)
        for (int n = 0; n < NT; ++n)
          sums[k][n] += (static_cast<double>(acc[k][n][0]) + static_cast<double>(acc[k][n][2])) +
                        (static_cast<double>(acc[k][n][1]) + static_cast<double>(acc[k][n][3]));
    }
    for (int k = 0; k < KT; ++k)
      for (int n = 0; n < NT; ++n)
        out[k * ld + n] += sums[k][n] + tail_dot(a[k], b[n], vector_end, len);
  }
};

#ifdef MEGAGRAPE_GRAM_X86
// (lanes 0..3 + lanes 4..7) in fp64, then (0 + 2) + (1 + 3) of that.
__attribute__((target("avx2,fma"), always_inline)) inline double lane_sum(__m256 acc) {
  const __m256d halves = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(acc)),
                                       _mm256_cvtps_pd(_mm256_extractf128_ps(acc, 1)));
  const __m128d pair =
      _mm_add_pd(_mm256_castpd256_pd128(halves), _mm256_extractf128_pd(halves, 1));
  return _mm_cvtsd_f64(pair) + _mm_cvtsd_f64(_mm_unpackhi_pd(pair, pair));
}

// AVX2 + FMA on float32: 8 lanes; the 4 x 3 tile uses 12 accumulators + 3 b + 1 a registers.
template <int KT, int NT>
struct TileAvx2 {
  static constexpr int64_t kRun = kLaneTerms * 8;
  __attribute__((target("avx2,fma"))) static void run(const float* const* a,
                                                      const float* const* b, int64_t len,
                                                      double* out, int64_t ld) {
    const int64_t vector_end = len - len % 8;
    double sums[KT][NT] = {};
    for (int64_t start = 0; start < vector_end; start += kRun) {
      const int64_t stop = std::min(vector_end, start + kRun);
      __m256 acc[KT][NT];
      for (int k = 0; k < KT; ++k)
        for (int n = 0; n < NT; ++n) acc[k][n] = _mm256_setzero_ps();
      for (int64_t i = start; i < stop; i += 8) {
        __m256 bv[NT];
        for (int n = 0; n < NT; ++n) bv[n] = _mm256_loadu_ps(b[n] + i);
        for (int k = 0; k < KT; ++k) {
          const __m256 av = _mm256_loadu_ps(a[k] + i);
          for (int n = 0; n < NT; ++n) acc[k][n] = _mm256_fmadd_ps(av, bv[n], acc[k][n]);
        }
      }
      for (int k = 0; k < KT; ++k)
        for (int n = 0; n < NT; ++n) sums[k][n] += lane_sum(acc[k][n]);
    }
    for (int k = 0; k < KT; ++k)
      for (int n = 0; n < NT; ++n)
        out[k * ld + n] += sums[k][n] + tail_dot(a[k], b[n], vector_end, len);
  }
};

// AVX2 + FMA on bfloat16 bits, widened in registers: 16 elements per 256-bit load; the
// even elements are the low halves of the 32-bit lanes (shift left 16), the odd ones the
// high halves (mask). Both sides are split the same way, so the pairs stay matched. The
// 4 x 2 tile uses 8 accumulators + 4 b + 2 a + 1 mask registers. Each lane takes two
// products per 16 elements.
template <int KT, int NT>
struct TileAvx2Bf16 {
  static constexpr int64_t kRun = kLaneTerms * 8;
  __attribute__((target("avx2,fma"))) static void run(const uint16_t* const* a,
                                                      const uint16_t* const* b, int64_t len,
                                                      double* out, int64_t ld) {
    const __m256i high_half = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
    const int64_t vector_end = len - len % 16;
    double sums[KT][NT] = {};
    for (int64_t start = 0; start < vector_end; start += kRun) {
      const int64_t stop = std::min(vector_end, start + kRun);
      __m256 acc[KT][NT];
      for (int k = 0; k < KT; ++k)
        for (int n = 0; n < NT; ++n) acc[k][n] = _mm256_setzero_ps();
      for (int64_t i = start; i < stop; i += 16) {
        __m256 b_even[NT], b_odd[NT];
        for (int n = 0; n < NT; ++n) {
          const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[n] + i));
          b_even[n] = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
          b_odd[n] = _mm256_castsi256_ps(_mm256_and_si256(x, high_half));
        }
        for (int k = 0; k < KT; ++k) {
          const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[k] + i));
          const __m256 a_even = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
          const __m256 a_odd = _mm256_castsi256_ps(_mm256_and_si256(x, high_half));
          for (int n = 0; n < NT; ++n) {
            acc[k][n] = _mm256_fmadd_ps(a_even, b_even[n], acc[k][n]);
            acc[k][n] = _mm256_fmadd_ps(a_odd, b_odd[n], acc[k][n]);
          }
        }
      }
      for (int k = 0; k < KT; ++k)
        for (int n = 0; n < NT; ++n) sums[k][n] += lane_sum(acc[k][n]);
    }
    for (int k = 0; k < KT; ++k)
      for (int n = 0; n < NT; ++n)
        out[k * ld + n] += sums[k][n] + tail_dot(a[k], b[n], vector_end, len);
  }
};
#endif

// Every (KT, NT) from 1 x 1 to TK x TN, at index (KT - 1) * TN + (NT - 1).
template <template <int, int> class Tile, int TK, int TN, size_t... I>
auto tile_table_of(std::index_sequence<I...>) {
  return std::array<decltype(&Tile<1, 1>::run), TK * TN>{
      Tile<static_cast<int>(I) / TN + 1, static_cast<int>(I) % TN + 1>::run...};
}

template <template <int, int> class Tile, int TK, int TN>
auto tile_table() {
  return tile_table_of<Tile, TK, TN>(std::make_index_sequence<TK * TN>{});
}

void bf16_to_float(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(widen(src[i]));
}

#ifdef MEGAGRAPE_GRAM_X86
__attribute__((target("avx2"))) void bf16_to_float_avx2(const uint16_t* src, float* dst,
                                                         int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    const __m256i bits = _mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16);
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(bits));
  }
  bf16_to_float(src + i, dst + i, n - i);
}
#endif

// The inner loops for this CPU: AVX2 + FMA where the CPU has them (runtime check), else the
// portable loops that the compiler vectorises for the baseline ISA (SSE2, NEON, ...).
// Without bf16 tiles, bfloat16 vectors are widened into a float32 scratch block first.
struct CpuKernels {
  std::array<TileFn<float>, kTileK * kTileN> tiles;
  bool has_bf16_tiles;
  std::array<TileFn<uint16_t>, kTileK * kTileNBf16> bf16_tiles;
  void (*widen_bf16)(const uint16_t* src, float* dst, int64_t n);
};

const CpuKernels& kernels_for_this_cpu() {
#ifdef MEGAGRAPE_GRAM_X86
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  static const CpuKernels chosen =
      avx2 ? CpuKernels{tile_table<TileAvx2, kTileK, kTileN>(), true,
                        tile_table<TileAvx2Bf16, kTileK, kTileNBf16>(), bf16_to_float_avx2}
           : CpuKernels{tile_table<TilePortable, kTileK, kTileN>(), false, {}, bf16_to_float};
#else
  static const CpuKernels chosen{tile_table<TilePortable, kTileK, kTileN>(), false, {},
                                 bf16_to_float};
#endif
  return chosen;
}

// All tiles of one block: row[k * N + n] += <a_k, b_n> over the block, for every (k, n).
template <int TK, int TN, class T>
void sweep_tiles(const GramLayout& L, const std::vector<const T*>& block_of,
                 const std::array<TileFn<T>, TK * TN>& table, int64_t len, double* row) {
  for (int64_t k0 = 0; k0 < L.K; k0 += TK) {
    const int kt = static_cast<int>(std::min<int64_t>(TK, L.K - k0));
    const T* a_ptr[TK];
    for (int k = 0; k < kt; ++k) a_ptr[k] = block_of[L.a_vec[k0 + k]];
    for (int64_t n0 = 0; n0 < L.N; n0 += TN) {
      const int nt = static_cast<int>(std::min<int64_t>(TN, L.N - n0));
      const T* b_ptr[TN];
      for (int n = 0; n < nt; ++n) b_ptr[n] = block_of[L.b_vec[n0 + n]];
      table[(kt - 1) * TN + (nt - 1)](a_ptr, b_ptr, len, row + k0 * L.N + n0, L.N);
    }
  }
}

// Per-thread buffers of item_partials.
struct BlockViews {
  std::vector<float> scratch;               // [U, kBlockElements] widened bf16 blocks
  std::vector<const float*> as_float;       // [U] block start, float32 (or scratch)
  std::vector<const uint16_t*> as_bf16;     // [U] block start, bf16 bits (all-bf16 calls)
};

// row[K * N] += the fp64 partials of one chunk.
void item_partials(const GramLayout& L, const WorkItem& item, const CpuKernels& cpu,
                   bool direct_bf16, BlockViews& views, double* row) {
  for (int64_t off = 0; off < item.len; off += kBlockElements) {
    const int64_t len = std::min(kBlockElements, item.len - off);
    const int64_t first = item.start + off;
    if (direct_bf16) {
      for (int64_t u = 0; u < L.U; ++u)
        views.as_bf16[u] = static_cast<const uint16_t*>(L.ptrs[u * L.P + item.slot]) + first;
      sweep_tiles<kTileK, kTileNBf16>(L, views.as_bf16, cpu.bf16_tiles, len, row);
      continue;
    }
    for (int64_t u = 0; u < L.U; ++u) {
      const void* base = L.ptrs[u * L.P + item.slot];
      if (L.is_bf16[u]) {
        float* dst = views.scratch.data() + u * kBlockElements;
        cpu.widen_bf16(static_cast<const uint16_t*>(base) + first, dst, len);
        views.as_float[u] = dst;
      } else {
        views.as_float[u] = static_cast<const float*>(base) + first;
      }
    }
    sweep_tiles<kTileK, kTileN>(L, views.as_float, cpu.tiles, len, row);
  }
}

at::Tensor gram_cpu(const GramLayout& L) {
  const auto items = cut_items(L, kItemElements);
  const int64_t C = static_cast<int64_t>(items.size());
  const int64_t R = megagrape_gram::partial_rows(C);
  const int64_t KN = L.K * L.N;
  std::vector<double> partials(static_cast<size_t>(R * KN), 0.0);
  const CpuKernels& cpu = kernels_for_this_cpu();
  const bool all_bf16 = std::all_of(L.is_bf16.begin(), L.is_bf16.end(), [](char b) { return b; });
  const bool direct_bf16 = cpu.has_bf16_tiles && all_bf16;
  at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
    BlockViews views;
    views.scratch.resize(direct_bf16 ? 0 : static_cast<size_t>(L.U * kBlockElements));
    views.as_float.resize(static_cast<size_t>(L.U));
    views.as_bf16.resize(static_cast<size_t>(L.U));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t last = megagrape_gram::first_chunk(r + 1, C, R);
      for (int64_t c = megagrape_gram::first_chunk(r, C, R); c < last; ++c)
        item_partials(L, items[c], cpu, direct_bf16, views, partials.data() + r * KN);
    }
  });
  at::Tensor out = at::zeros({L.K, L.N}, at::kDouble);
  double* g = out.data_ptr<double>();
  for (int64_t r = 0; r < R; ++r)
    for (int64_t o = 0; o < KN; ++o) g[o] += partials[r * KN + o];
  return out;
}

#ifdef MEGAGRAPE_WITH_CUDA
static_assert(megagrape_gram::kCudaItemElements == kItemElements,
              "gram_workspace_bytes reports one plan for the CPU and CUDA paths");

at::Tensor gram_cuda(const GramLayout& L) {
  const c10::cuda::CUDAGuard guard(L.device);
  const auto items = cut_items(L, megagrape_gram::kCudaItemElements);
  const int64_t W = static_cast<int64_t>(items.size());
  const int64_t R = megagrape_gram::partial_rows(W);
  // One int64 table, copied to the device once: items | slot pointers [P, U] | a | b | bf16.
  const int64_t n_items = 3 * W, n_ptrs = L.P * L.U;
  at::Tensor meta = at::empty({n_items + n_ptrs + L.K + L.N + L.U}, at::kLong);
  int64_t* m = meta.data_ptr<int64_t>();
  for (int64_t w = 0; w < W; ++w) {
    m[3 * w] = items[w].slot;
    m[3 * w + 1] = items[w].start;
    m[3 * w + 2] = items[w].len;
  }
  for (int64_t j = 0; j < L.P; ++j)
    for (int64_t u = 0; u < L.U; ++u)
      m[n_items + j * L.U + u] = reinterpret_cast<int64_t>(L.ptrs[u * L.P + j]);
  std::copy(L.a_vec.begin(), L.a_vec.end(), m + n_items + n_ptrs);
  std::copy(L.b_vec.begin(), L.b_vec.end(), m + n_items + n_ptrs + L.K);
  for (int64_t u = 0; u < L.U; ++u) m[n_items + n_ptrs + L.K + L.N + u] = L.is_bf16[u];

  const at::Tensor meta_dev = meta.to(L.device);
  const auto f64 = at::TensorOptions().dtype(at::kDouble).device(L.device);
  at::Tensor partials = at::empty({std::max<int64_t>(R, 1) * L.K * L.N}, f64);
  at::Tensor out = at::empty({L.K, L.N}, f64);
  const int64_t* md = meta_dev.data_ptr<int64_t>();

  megagrape_gram::GramCudaArgs args;
  args.items = md;
  args.slot_ptrs = md + n_items;
  args.a_vec = md + n_items + n_ptrs;
  args.b_vec = md + n_items + n_ptrs + L.K;
  args.is_bf16 = md + n_items + n_ptrs + L.K + L.N;
  args.num_items = W;
  args.num_unique = L.U;
  args.K = static_cast<int32_t>(L.K);
  args.N = static_cast<int32_t>(L.N);
  args.partials = partials.data_ptr<double>();
  args.out = out.data_ptr<double>();
  const cudaError_t err =
      megagrape_gram::gram_cuda_launch(args, c10::cuda::getCurrentCUDAStream(L.device.index()));
  TORCH_CHECK(err == cudaSuccess, "gram: CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}
#endif

at::Tensor gram(const VectorList& a, const VectorList& b) {
  const GramLayout L = validate(a, b);
  if (L.K == 0 || L.N == 0)
    return at::zeros({L.K, L.N}, at::TensorOptions().dtype(at::kDouble).device(L.device));
  if (L.device.is_cpu()) return gram_cpu(L);
  if (L.device.is_cuda()) {
#ifdef MEGAGRAPE_WITH_CUDA
    TORCH_CHECK_VALUE(L.K <= INT32_MAX && L.N <= INT32_MAX, "gram: K and N must fit int32");
    return gram_cuda(L);
#else
    TORCH_CHECK_VALUE(false, "gram: the tensors are on ", L.device.str(),
                      ", but megagrape._C was built without CUDA; rebuild it against a CUDA "
                      "torch with nvcc on PATH, or use megagrape.gram.gram_reference");
#endif
  }
  TORCH_CHECK_VALUE(false, "gram: tensors on ", L.device.str(),
                    " are not supported (CPU and CUDA only)");
}

// Bytes of fp64 partials that gram() allocates for slots of these sizes (on either device; the
// CUDA path also copies a table of 24 bytes per chunk to the device).
int64_t workspace_bytes(const std::vector<int64_t>& slot_numel, int64_t K, int64_t N) {
  for (size_t j = 0; j < slot_numel.size(); ++j)
    TORCH_CHECK_VALUE(slot_numel[j] >= 0, "gram_workspace_bytes: slot ", j, " has ",
                      slot_numel[j], " elements");
  TORCH_CHECK_VALUE(K >= 0 && N >= 0, "gram_workspace_bytes: K = ", K, ", N = ", N);
  const int64_t rows = megagrape_gram::partial_rows(count_chunks(slot_numel, kItemElements));
  return rows * K * N * static_cast<int64_t>(sizeof(double));
}

}  // namespace

void register_gram(pybind11::module_& m) {
  m.def("gram", &gram, pybind11::arg("a"), pybind11::arg("b"),
        pybind11::call_guard<pybind11::gil_scoped_release>(),
        R"doc(Local partial Gram matrix of sharded vectors.

a: K vectors, b: N vectors; each vector is a list of P contiguous float32 or bfloat16
tensors ("slots"); slot j has the same numel in every vector (shapes may differ). Returns
float64 [K, N] on the tensors' device with entry (k, n) = sum_j <a[k][j], b[n][j]>.
Every element is read once; fp32 sums within short blocks, fp64 across blocks, and a
fixed reduction order (bit-identical results for any thread count). The GIL is released
while it runs.)doc");
  m.def("gram_workspace_bytes", &workspace_bytes, pybind11::arg("slot_numel"), pybind11::arg("k"),
        pybind11::arg("n"),
        R"doc(Bytes of float64 partials gram(a, b) allocates: slot_numel[j] is the numel of slot
j, k = len(a), n = len(b). At most gram_max_partial_rows * k * n * 8 for any slot sizes.)doc");
  m.attr("gram_max_partial_rows") = megagrape_gram::kMaxPartialRows;
  m.attr("gram_chunk_elements") = kItemElements;
#ifdef MEGAGRAPE_WITH_CUDA
  m.attr("gram_has_cuda") = true;
#else
  m.attr("gram_has_cuda") = false;
#endif
}
