// Segment-restartable greedy blending-index builder.
//
// The global sample stream is cut into segments, each with its own domain weights. Inside a
// segment that starts at global sample S with per-domain counts c(S), global sample i goes to
//
//     d* = argmax_d  w_d * max(i - S, 1) - (c_d(i) - c_d(S))      (strict '>', ties -> lowest d)
//
// and takes that domain's next sample, c_d*(i). With S = 0 and c(S) = 0 this is exactly
// megatron.core.datasets.helpers_cpp.build_blending_indices, bit for bit: the error of every
// domain is computed with the same two IEEE operations (one multiply, one subtract, never
// fused), and the argmax is the first index holding the maximum error.
//
// Speed: the errors of all K domains are computed into a small buffer with 256-bit vectors
// (AVX, chosen at run time), their maximum is taken with a vector max, and the winner is the
// first index whose error equals that maximum. A scalar loop of Megatron's shape is the
// portable fallback and is used for fewer than 16 domains, where it is faster.
#include "blending.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <new>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MEGAGRAPE_BLENDING_X86 1
#endif

namespace py = pybind11;

namespace {

constexpr int64_t kMaxDomains = 32767;  // dataset ids are int16
constexpr int64_t kVectorWidth = 4;     // doubles per 256-bit vector
// Below this many domains Megatron's scalar loop is faster than a vector pass plus search
// (measured on Zen 3: equal at about 16 domains).
constexpr int64_t kMinDomainsForAvx = 16;

// Everything one call needs, as raw pointers (read after the argument checks).
struct SegmentJob {
  int16_t* dataset_index;
  int64_t* dataset_sample_index;
  int64_t num_samples;
  const double* weights;
  int64_t num_domains;
  int64_t* counts;  // global per-domain counts, advanced in place
  int64_t segment_start;
  int64_t begin;
};

// std::vector storage aligned to 32 bytes, so that every vector load/store is aligned.
template <typename T>
struct Aligned32 {
  using value_type = T;
  Aligned32() = default;
  template <typename U>
  Aligned32(const Aligned32<U>&) {}
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(32)));
  }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(32)); }
  template <typename U>
  bool operator==(const Aligned32<U>&) const { return true; }
  template <typename U>
  bool operator!=(const Aligned32<U>&) const { return false; }
};
using AlignedDoubles = std::vector<double, Aligned32<double>>;

// Per-domain state of the inner loop, padded to a whole number of vectors: padding lanes
// have weight 0 and count +inf, so their error is -inf and never wins over a real domain.
struct PaddedState {
  AlignedDoubles weights;
  AlignedDoubles counts_since_start;  // c_d(i) - c_d(S) as double (exact below 2^53)
  AlignedDoubles errors;              // scratch, one error per padded lane
};

PaddedState make_padded_state(const SegmentJob& job, const int64_t* segment_start_counts) {
  const int64_t padded = (job.num_domains + kVectorWidth - 1) / kVectorWidth * kVectorWidth;
  PaddedState state;
  state.weights.assign(padded, 0.0);
  state.counts_since_start.assign(padded, std::numeric_limits<double>::infinity());
  state.errors.assign(padded, 0.0);
  for (int64_t d = 0; d < job.num_domains; ++d) {
    state.weights[d] = job.weights[d];
    state.counts_since_start[d] = static_cast<double>(job.counts[d] - segment_start_counts[d]);
  }
  return state;
}

inline double segment_position(const SegmentJob& job, int64_t t) {
  return std::max(static_cast<double>(job.begin + t - job.segment_start), 1.0);
}

inline void emit(const SegmentJob& job, PaddedState& state, int64_t t, int64_t winner) {
  job.dataset_index[t] = static_cast<int16_t>(winner);
  job.dataset_sample_index[t] = job.counts[winner];
  job.counts[winner] += 1;
  state.counts_since_start[winner] += 1.0;
}

// Megatron's loop. The product is a separate statement so that compilers that contract only
// within one expression (clang's default) cannot fuse it into an FMA; GCC is told not to.
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
void build_scalar(const SegmentJob& job, PaddedState& state) {
  const double* w = state.weights.data();
  const double* c = state.counts_since_start.data();
  for (int64_t t = 0; t < job.num_samples; ++t) {
    const double x = segment_position(job, t);
    int64_t winner = 0;
    const double first_product = w[0] * x;
    double max_error = first_product - c[0];
    for (int64_t d = 1; d < job.num_domains; ++d) {
      const double product = w[d] * x;
      const double error = product - c[d];
      if (error > max_error) {
        max_error = error;
        winner = d;
      }
    }
    emit(job, state, t, winner);
  }
}

#ifdef MEGAGRAPE_BLENDING_X86
// 256-bit version. Only "avx" is enabled (not "fma"), so the multiply and subtract intrinsics
// stay two rounded operations, exactly like the scalar rule.
//
// Per sample: the errors of all lanes go to the scratch buffer while four independent
// running maxima track the largest; two swap-and-max steps broadcast the maximum to every
// lane; the winner is the first lane whose error equals it (the lowest domain among ties, as
// with strict '>'). The winner's count is bumped with a full-vector add so that the next
// sample's load of that vector is forwarded from a store of the same width.
__attribute__((target("avx"))) void build_avx(const SegmentJob& job, PaddedState& state) {
  const double* w = state.weights.data();
  double* c = state.counts_since_start.data();
  double* err = state.errors.data();
  const int64_t padded = static_cast<int64_t>(state.weights.size());
  const __m256d minus_inf = _mm256_set1_pd(-std::numeric_limits<double>::infinity());
  alignas(32) static constexpr double kOneHot[4][4] = {
      {1.0, 0.0, 0.0, 0.0}, {0.0, 1.0, 0.0, 0.0}, {0.0, 0.0, 1.0, 0.0}, {0.0, 0.0, 0.0, 1.0}};
  for (int64_t t = 0; t < job.num_samples; ++t) {
    const __m256d x = _mm256_set1_pd(segment_position(job, t));
    __m256d m0 = minus_inf, m1 = minus_inf, m2 = minus_inf, m3 = minus_inf;
    int64_t v = 0;
    for (; v + 4 * kVectorWidth <= padded; v += 4 * kVectorWidth) {
      const __m256d e0 =
          _mm256_sub_pd(_mm256_mul_pd(_mm256_load_pd(w + v), x), _mm256_load_pd(c + v));
      const __m256d e1 = _mm256_sub_pd(_mm256_mul_pd(_mm256_load_pd(w + v + 4), x),
                                       _mm256_load_pd(c + v + 4));
      const __m256d e2 = _mm256_sub_pd(_mm256_mul_pd(_mm256_load_pd(w + v + 8), x),
                                       _mm256_load_pd(c + v + 8));
      const __m256d e3 = _mm256_sub_pd(_mm256_mul_pd(_mm256_load_pd(w + v + 12), x),
                                       _mm256_load_pd(c + v + 12));
      _mm256_store_pd(err + v, e0);
      _mm256_store_pd(err + v + 4, e1);
      _mm256_store_pd(err + v + 8, e2);
      _mm256_store_pd(err + v + 12, e3);
      m0 = _mm256_max_pd(m0, e0);
      m1 = _mm256_max_pd(m1, e1);
      m2 = _mm256_max_pd(m2, e2);
      m3 = _mm256_max_pd(m3, e3);
    }
    for (; v < padded; v += kVectorWidth) {
      const __m256d e =
          _mm256_sub_pd(_mm256_mul_pd(_mm256_load_pd(w + v), x), _mm256_load_pd(c + v));
      _mm256_store_pd(err + v, e);
      m0 = _mm256_max_pd(m0, e);
    }
    __m256d best = _mm256_max_pd(_mm256_max_pd(m0, m1), _mm256_max_pd(m2, m3));
    best = _mm256_max_pd(best, _mm256_permute2f128_pd(best, best, 1));
    best = _mm256_max_pd(best, _mm256_permute_pd(best, 0b0101));
    int64_t winner = 0;
    for (v = 0; v < padded; v += kVectorWidth) {
      const int equal =
          _mm256_movemask_pd(_mm256_cmp_pd(_mm256_load_pd(err + v), best, _CMP_EQ_OQ));
      if (equal != 0) {
        winner = v + __builtin_ctz(static_cast<unsigned>(equal));
        break;
      }
    }
    job.dataset_index[t] = static_cast<int16_t>(winner);
    job.dataset_sample_index[t] = job.counts[winner];
    job.counts[winner] += 1;
    double* winner_vector = c + (winner & ~(kVectorWidth - 1));
    _mm256_store_pd(winner_vector, _mm256_add_pd(_mm256_load_pd(winner_vector),
                                                 _mm256_load_pd(kOneHot[winner & 3])));
  }
}
#endif

bool avx_available() {
#ifdef MEGAGRAPE_BLENDING_X86
  static const bool available = __builtin_cpu_supports("avx");
  return available;
#else
  return false;
#endif
}

// ---- argument checks: exact dtypes, 1-D, C-contiguous, writable outputs -------------------

py::array require_array(const py::object& obj, const char* name) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string("build_blending_segment: ") + name +
                         " must be a numpy array, got " +
                         py::str(py::type::of(obj)).cast<std::string>());
  }
  return py::reinterpret_borrow<py::array>(obj);
}

template <typename T>
void check_array(const py::array& array, const char* name, const char* dtype_name,
                 bool writable) {
  const std::string where = std::string("build_blending_segment: ") + name;
  if (!array.dtype().equal(py::dtype::of<T>())) {
    throw py::type_error(where + " must have dtype " + dtype_name + ", got " +
                         py::str(array.dtype()).cast<std::string>() +
                         " (allocate it with numpy.empty(n, dtype=numpy." + dtype_name +
                         "); a converted copy would not receive the output)");
  }
  if (array.ndim() != 1) {
    throw py::value_error(where + " must be 1-D, got " + std::to_string(array.ndim()) +
                          " dimensions");
  }
  const int flags = array.flags();
  if ((flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_) == 0 ||
      (flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_) == 0) {
    throw py::value_error(where +
                          " must be C-contiguous and aligned (pass numpy.ascontiguousarray(" +
                          name + ") or a contiguous slice)");
  }
  if (writable && !array.writeable()) {
    throw py::value_error(where + " is read-only but receives output; pass a writable array");
  }
}

void build_blending_segment(const py::object& dataset_index_obj,
                            const py::object& dataset_sample_index_obj,
                            const py::object& weights_obj,
                            const py::object& segment_start_counts_obj,
                            const py::object& counts_obj, int64_t segment_start, int64_t begin,
                            const std::string& kernel) {
  py::array dataset_index = require_array(dataset_index_obj, "dataset_index");
  py::array dataset_sample_index = require_array(dataset_sample_index_obj, "dataset_sample_index");
  py::array weights = require_array(weights_obj, "weights");
  py::array segment_start_counts = require_array(segment_start_counts_obj, "segment_start_counts");
  py::array counts = require_array(counts_obj, "counts");
  check_array<int16_t>(dataset_index, "dataset_index", "int16", true);
  check_array<int64_t>(dataset_sample_index, "dataset_sample_index", "int64", true);
  check_array<double>(weights, "weights", "float64", false);
  check_array<int64_t>(segment_start_counts, "segment_start_counts", "int64", false);
  check_array<int64_t>(counts, "counts", "int64", true);

  const int64_t num_samples = dataset_index.shape(0);
  const int64_t num_domains = weights.shape(0);
  if (dataset_sample_index.shape(0) != num_samples) {
    throw py::value_error("build_blending_segment: dataset_sample_index has " +
                          std::to_string(dataset_sample_index.shape(0)) +
                          " entries but dataset_index has " + std::to_string(num_samples) +
                          "; give both the same length");
  }
  if (num_domains < 1 || num_domains > kMaxDomains) {
    throw py::value_error("build_blending_segment: weights has " + std::to_string(num_domains) +
                          " entries; the number of domains must be in [1, 32767] (int16 ids)");
  }
  if (segment_start_counts.shape(0) != num_domains || counts.shape(0) != num_domains) {
    throw py::value_error("build_blending_segment: segment_start_counts and counts must have " +
                          std::to_string(num_domains) + " entries (one per weight), got " +
                          std::to_string(segment_start_counts.shape(0)) + " and " +
                          std::to_string(counts.shape(0)));
  }
  if (segment_start < 0 || begin < segment_start) {
    throw py::value_error("build_blending_segment: need 0 <= segment_start <= begin, got "
                          "segment_start=" + std::to_string(segment_start) +
                          ", begin=" + std::to_string(begin));
  }
  if (kernel != "auto" && kernel != "avx" && kernel != "scalar") {
    throw py::value_error("build_blending_segment: kernel must be 'auto', 'avx' or 'scalar', "
                          "got '" + kernel + "'");
  }
  if (kernel == "avx" && !avx_available()) {
    throw py::value_error("build_blending_segment: kernel='avx' but this CPU or build has no "
                          "AVX; use kernel='auto'");
  }

  SegmentJob job{static_cast<int16_t*>(dataset_index.mutable_data()),
                 static_cast<int64_t*>(dataset_sample_index.mutable_data()),
                 num_samples,
                 static_cast<const double*>(weights.data()),
                 num_domains,
                 static_cast<int64_t*>(counts.mutable_data()),
                 segment_start,
                 begin};
  const auto* start_counts = static_cast<const int64_t*>(segment_start_counts.data());
  for (int64_t d = 0; d < num_domains; ++d) {
    if (!std::isfinite(job.weights[d])) {
      throw py::value_error("build_blending_segment: weights[" + std::to_string(d) +
                            "] is not finite; every weight must be a finite float64");
    }
    if (job.counts[d] < start_counts[d]) {
      throw py::value_error("build_blending_segment: counts[" + std::to_string(d) + "]=" +
                            std::to_string(job.counts[d]) + " is below segment_start_counts[" +
                            std::to_string(d) + "]=" + std::to_string(start_counts[d]) +
                            "; counts must be the counts at `begin`, inside the segment");
    }
  }

  const bool use_avx =
      kernel == "avx" || (kernel == "auto" && avx_available() && num_domains >= kMinDomainsForAvx);
  PaddedState state = make_padded_state(job, start_counts);
  py::gil_scoped_release no_gil;
#ifdef MEGAGRAPE_BLENDING_X86
  if (use_avx) {
    build_avx(job, state);
    return;
  }
#endif
  build_scalar(job, state);
}

}  // namespace

void register_blending(pybind11::module_& m) {
  m.def("build_blending_segment", &build_blending_segment, py::arg("dataset_index"),
        py::arg("dataset_sample_index"), py::arg("weights"), py::arg("segment_start_counts"),
        py::arg("counts"), py::arg("segment_start"), py::arg("begin"), py::kw_only(),
        py::arg("kernel") = "auto",
        R"doc(Fill one piece of a blending segment (Megatron's greedy rule, restarted per segment).

dataset_index        int16 [n]   out: domain id of global samples begin .. begin+n-1
dataset_sample_index int64 [n]   out: index into that domain (its running count)
weights              float64 [K] the segment's domain weights (finite)
segment_start_counts int64 [K]   per-domain counts at the segment start
counts               int64 [K]   in: counts at `begin`; out: counts at begin+n
segment_start        int         global sample index where the segment starts
begin                int         global index of the first sample to fill (>= segment_start)
kernel               'auto' | 'avx' | 'scalar' (same results; 'auto' picks AVX when the CPU
                     has it and K >= 16)

Sample i goes to argmax_d w_d*max(i-segment_start, 1) - (counts_d - segment_start_counts_d),
ties to the lowest d. Arrays must have exactly these dtypes, be 1-D and C-contiguous.
The GIL is released while the loop runs.)doc");
  m.def("blending_kernel", []() { return std::string(avx_available() ? "avx" : "scalar"); },
        "The vector kernel build_blending_segment(kernel='auto') uses on this machine for "
        "K >= 16 domains: 'avx' or 'scalar'.");
}
