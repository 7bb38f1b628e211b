// lane_vectors.h (private): the eight lanes of lanes.h as one value, and the bodies of lanes.h's
// functions, for clones that inline them into their own loops (lanes.cpp's, and the attention
// softmax's over a block of rows: one call per row cost more than the row's own work). Only for
// files built with -Wno-psabi, -fno-trapping-math and -ffp-contract=off
// (src/kernels/cpu/CMakeLists.txt): load() and combine() take or return the eight floats by
// value, which without AVX draws the compilers' note that the calling convention differs from
// AVX's; they are always inlined, so no such call exists. A clone must not call them itself,
// though: Clang rejects that before inlining. Clones call functions without Lanes in their
// signatures (exp_sum_inline, dot_inline, lane_sums with lambdas, grad_sums_fp32 in
// layernorm.cpp), which use them. (Passing the lanes by reference instead silenced the note
// but kept them out of registers: the LayerNorm forward took 1.5 times as long.)
#pragma once

#include <algorithm>
#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "exp_fp32.h"
#include "lanes.h"

namespace pipetrain::kernels::cpu::lanes {

/// After the parameters of every lambda that lane_sums calls: a lambda compiled out
/// of line is a function of the baseline instruction set, not of the calling clone, and a Lanes
/// it returns then crosses from one calling convention to the other (GCC's -Wpsabi note). The
/// sanitizer build, which inlines less, called such a lambda with a null closure.
#define PIPETRAIN_LANES_INLINE __attribute__((always_inline))

/// Eight fp32 lanes as one value (GCC/Clang vector extension): one AVX register, two SSE ones.
/// Partial sums kept in a plain float[8] stayed in memory, and every addition then waited on a
/// store and a load (about four times as long for a row of 256).
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));

/// The eight partial sums added pairwise: ((0+4)+(2+6)) + ((1+5)+(3+7)).
[[gnu::always_inline]] inline float combine(Lanes a) {
  return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

/// Eight floats from p, any alignment.
[[gnu::always_inline]] inline Lanes load(const float* p) {
  Lanes v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

// The sums of term(r, k) for k < n, one for each of R rows r, into out[r]: in each row, lane j
// adds the terms with k % 8 == j in order, then combine(). lanes(r, k) gives row r's eight
// terms k .. k + 7 at once, term(r, k) one of its last n % 8. With R > 1 the rows are R
// independent chains of additions, each adding exactly what it adds alone (the same bits).
// Inlined into each clone, so that each compiles it for its own instruction set.
template <int R, typename LanesTerm, typename Term>
[[gnu::always_inline]] inline void lane_sums(std::int64_t n, const LanesTerm& lanes,
                                             const Term& term, float* out) {
  Lanes acc[R] = {};
  std::int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    for (int r = 0; r < R; ++r) acc[r] += lanes(r, k);
  }
  for (int j = 0; k < n; ++k, ++j) {
    for (int r = 0; r < R; ++r) acc[r][j] += term(r, k);
  }
  for (int r = 0; r < R; ++r) out[r] = combine(acc[r]);
}

// lanes::dot(a, b, n).
[[gnu::always_inline]] inline float dot_inline(const float* a, const float* b, std::int64_t n) {
  float out;
  lane_sums<1>(
      n, [&](int, std::int64_t k) PIPETRAIN_LANES_INLINE { return load(a + k) * load(b + k); },
      [&](int, std::int64_t k) PIPETRAIN_LANES_INLINE { return a[k] * b[k]; }, &out);
  return out;
}

// lanes::max(z, n). GCC does not turn the select into maxps without -ffinite-math-only, so SSE
// (the x86-64 baseline) is asked for directly: maxps(x, m) is x > m ? x : m, the same select.
[[gnu::always_inline]] inline float max_inline(const float* z, std::int64_t n) {
  float m[kLanes];
  for (float& x : m) x = z[0];
  std::int64_t k = 0;
#if defined(__SSE2__)
  __m128 lo = _mm_set1_ps(z[0]), hi = lo;
  for (; k + kLanes <= n; k += kLanes) {
    lo = _mm_max_ps(_mm_loadu_ps(z + k), lo);
    hi = _mm_max_ps(_mm_loadu_ps(z + k + 4), hi);
  }
  _mm_storeu_ps(m, lo);
  _mm_storeu_ps(m + 4, hi);
#endif
  for (; k < n; ++k) m[0] = z[k] > m[0] ? z[k] : m[0];
  float r = m[0];
  for (int j = 1; j < kLanes; ++j) r = m[j] > r ? m[j] : r;
  return r;
}

// lanes::exp_sum(p, z, zmax, n). Blocks go through a local buffer, so the vectorised loops never
// need a runtime alias check (p may be z).
[[gnu::always_inline]] inline float exp_sum_inline(float* p, const float* z, float zmax,
                                                   std::int64_t n) {
  constexpr std::int64_t kBlock = 512;  // a multiple of the 8 lanes
  Lanes acc = {};
  float buf[kBlock];
  for (std::int64_t b = 0; b < n; b += kBlock) {
    const std::int64_t len = std::min(kBlock, n - b);
    for (std::int64_t k = 0; k < len; ++k) buf[k] = fastmath::exp_nonpositive(z[b + k] - zmax);
    std::int64_t k = 0;
    for (; k + kLanes <= len; k += kLanes) acc += load(buf + k);
    for (int j = 0; k < len; ++k, ++j) acc[j] += buf[k];  // only in the last block
    std::memcpy(p + b, buf, static_cast<std::size_t>(len) * sizeof(float));
  }
  return combine(acc);
}

}  // namespace pipetrain::kernels::cpu::lanes
