// CPU stand-in for the CUDA features csrc/gram_cuda.cu uses, so that its kernels can run
// (slowly) on a machine without a GPU: every block runs on its own after the previous one,
// with one std::thread per CUDA thread, so __syncthreads and warp shuffles have their GPU
// meaning (all lanes of a warp exchange values at the same step). Used only by
// tests/unit/test_gram_kernel.py::test_cuda_kernels_in_cpu_emulation.
#pragma once
#include <algorithm>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(threads)
#define __shared__ static  // one block runs at a time, so function statics are per block

using cudaError_t = int;
using cudaStream_t = void*;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorInvalidConfiguration = 9;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

struct EmulatedDim {
  unsigned int x;
};
inline thread_local EmulatedDim threadIdx;
inline thread_local EmulatedDim blockIdx;

inline std::unique_ptr<std::barrier<>> emulated_block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> emulated_warp_barriers;
inline std::vector<double> emulated_shuffle_slots;

inline void __syncthreads() { emulated_block_barrier->arrive_and_wait(); }

template <class T>
T __ldg(const T* address) {
  return *address;
}

inline float __uint_as_float(unsigned int bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

using std::min;

inline double __shfl_down_sync(unsigned int /*mask: the full warp in gram_cuda.cu*/, double value,
                               int offset) {
  const unsigned int t = threadIdx.x;
  auto& warp = *emulated_warp_barriers[t / 32];
  emulated_shuffle_slots[t] = value;
  warp.arrive_and_wait();
  const double out = (t % 32) + offset < 32 ? emulated_shuffle_slots[t + offset] : value;
  warp.arrive_and_wait();
  return out;
}

// kernel<<<grid, threads, 0, stream>>>(args...) becomes emulated_launch(kernel, grid, threads, args...).
template <class Kernel, class... Args>
void emulated_launch(Kernel kernel, unsigned int grid, int threads, Args... args) {
  emulated_shuffle_slots.assign(threads, 0.0);
  for (unsigned int block = 0; block < grid; ++block) {
    emulated_block_barrier = std::make_unique<std::barrier<>>(threads);
    emulated_warp_barriers.clear();
    for (int w = 0; w < threads / 32; ++w)
      emulated_warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
    std::vector<std::thread> lanes;
    for (int t = 0; t < threads; ++t)
      lanes.emplace_back([=] {
        blockIdx.x = block;
        threadIdx.x = static_cast<unsigned int>(t);
        kernel(args...);
      });
    for (auto& lane : lanes) lane.join();
  }
}
