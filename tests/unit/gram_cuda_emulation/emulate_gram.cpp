// Runs csrc/gram_cuda.cu's kernels under cuda_mock.h against a float64 CPU reference.
// Built by tests/unit/test_gram_kernel.py, which rewrites the two kernel launches of the .cu into
// emulated_launch(...) calls, saves that as gram_cuda_emulated.inc in a build folder, and puts
// there a cuda_runtime_api.h that includes cuda_mock.h.
#include <cmath>
#include <cstdio>
#include <random>

#include "cuda_mock.h"
#include "gram_cuda_emulated.inc"

using megagrape_gram::GramCudaArgs;
using megagrape_gram::kCudaItemElements;

namespace {

float round_to_bf16(float x, uint16_t* bits) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  *bits = static_cast<uint16_t>(u >> 16);
  u = static_cast<uint32_t>(*bits) << 16;
  std::memcpy(&x, &u, 4);
  return x;
}

// One vector: per slot, its float32 values (bf16-rounded when stored as bf16) and bf16 bits.
struct Vector {
  bool bf16 = false;
  std::vector<std::vector<float>> values;
  std::vector<std::vector<uint16_t>> bits;
};

// Returns 0 when every output is within 1e-6 * ||a_k|| ||b_n|| of the fp64 reference
// (and G == G^T exactly when b is a).
int check(int K, int N, const std::vector<int64_t>& sizes, bool a_bf16, bool b_bf16, bool b_is_a,
          unsigned int seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal;
  const int64_t P = static_cast<int64_t>(sizes.size());
  const int U = b_is_a ? K : K + N;
  std::vector<Vector> vectors(U);
  for (int u = 0; u < U; ++u) {
    vectors[u].bf16 = u < K ? a_bf16 : b_bf16;
    for (int64_t size : sizes) {
      std::vector<float> values(size);
      std::vector<uint16_t> bits(size);
      for (int64_t i = 0; i < size; ++i) {
        const float x = normal(gen);
        values[i] = vectors[u].bf16 ? round_to_bf16(x, &bits[i]) : x;
      }
      vectors[u].values.push_back(std::move(values));
      vectors[u].bits.push_back(std::move(bits));
    }
  }
  std::vector<int64_t> items;
  for (int64_t j = 0; j < P; ++j)
    for (int64_t start = 0; start < sizes[j]; start += kCudaItemElements)
      items.insert(items.end(), {j, start, std::min(kCudaItemElements, sizes[j] - start)});
  const int64_t W = static_cast<int64_t>(items.size()) / 3;
  std::vector<int64_t> slot_ptrs(P * U), is_bf16(U), a_vec(K), b_vec(N);
  for (int64_t j = 0; j < P; ++j)
    for (int u = 0; u < U; ++u)
      slot_ptrs[j * U + u] = vectors[u].bf16 ? reinterpret_cast<int64_t>(vectors[u].bits[j].data())
                                             : reinterpret_cast<int64_t>(vectors[u].values[j].data());
  for (int u = 0; u < U; ++u) is_bf16[u] = vectors[u].bf16;
  for (int k = 0; k < K; ++k) a_vec[k] = k;
  for (int n = 0; n < N; ++n) b_vec[n] = b_is_a ? n : K + n;
  // NaN everywhere: an output or partial that the kernels never write shows up as NaN.
  std::vector<double> partials(std::max<int64_t>(W, 1) * K * N, NAN), out(K * N, NAN);
  const GramCudaArgs args{items.data(), slot_ptrs.data(), is_bf16.data(), a_vec.data(),
                          b_vec.data(), W, U, K, N, partials.data(), out.data()};
  if (megagrape_gram::gram_cuda_launch(args, nullptr) != cudaSuccess) {
    std::printf("FAIL launch error\n");
    return 1;
  }
  for (int k = 0; k < K; ++k)
    for (int n = 0; n < N; ++n) {
      double want = 0, norm_a = 0, norm_b = 0;
      for (int64_t j = 0; j < P; ++j)
        for (int64_t i = 0; i < sizes[j]; ++i) {
          const double x = vectors[a_vec[k]].values[j][i], y = vectors[b_vec[n]].values[j][i];
          want += x * y;
          norm_a += x * x;
          norm_b += y * y;
        }
      const double got = out[k * N + n];
      if (!(std::fabs(got - want) <= 1e-6 * std::sqrt(norm_a * norm_b))) {
        std::printf("FAIL K=%d N=%d: G[%d][%d] = %.12g, want %.12g\n", K, N, k, n, got, want);
        return 1;
      }
      if (b_is_a && got != out[n * N + k]) {
        std::printf("FAIL K=%d: G[%d][%d] != G[%d][%d]\n", K, k, n, n, k);
        return 1;
      }
    }
  std::printf("ok K=%d N=%d items=%ld\n", K, N, static_cast<long>(W));
  return 0;
}

}  // namespace

int main() {
  int failed = 0;
  failed |= check(16, 6, {1, 7, 70001, 0, 15}, false, false, false, 1);  // 2 tiles, 3-item slot
  failed |= check(11, 10, {5000, 3}, true, false, false, 2);             // 2 x 2 tiles, bf16 x fp32
  failed |= check(3, 5, {40000, 9}, true, true, false, 3);               // bf16 x bf16
  failed |= check(9, 9, {1000, 1}, false, false, true, 4);               // b is a
  failed |= check(3, 2, {0, 0}, false, false, false, 5);                 // only empty slots
  return failed;
}
