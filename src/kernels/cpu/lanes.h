// lanes.h (private): fp32 row reductions for the CPU kernels, in eight lanes combined in a
// fixed order, so that they vectorise and still give the same bits on every machine.
//
// A plain `for (k) sum += x[k]` is one chain of dependent additions (GCC may not reorder fp32
// additions without -ffast-math): at a 256-element LayerNorm row, about a thousand cycles of
// add latency for a few hundred of work. Here lane j adds the elements k with k % 8 == j in
// order, and the lanes are added pairwise at the end (combine() in lane_vectors.h, which holds
// the bodies for other clones to inline). The clones below (AVX-512, AVX2, x86-64 baseline,
// chosen at load time) all do exactly these IEEE operations, with -ffp-contract=off on the files
// that define clones (src/kernels/cpu/CMakeLists.txt), so the results do not depend on the CPU. The
// fp64 instantiations of the kernels keep plain loops: they are the references the tests compare
// against.
#pragma once

#include <cstdint>

#include "cpu_clones.h"

namespace pipetrain::kernels::cpu::lanes {

constexpr int kLanes = 8;

/// The largest of z[0, n), n >= 1; NaN elements are ignored after the first (as
/// std::max_element does), a NaN first element is the result.
float max(const float* z, std::int64_t n);

/// p[k] = exp(z[k] - zmax) for k < n (p may be z; z[k] - zmax <= 0 expected, exp_fp32.h) and
/// returns their sum in eight lanes.
float exp_sum(float* p, const float* z, float zmax, std::int64_t n);

/// sum of x[k], k < n, in eight lanes.
float sum(const float* x, std::int64_t n);

/// sum of (x[k] - m)^2, k < n, in eight lanes.
float sum_sq_dev(const float* x, float m, std::int64_t n);

/// sum of a[k] * b[k], k < n, in eight lanes.
float dot(const float* a, const float* b, std::int64_t n);

/// Four rows at once, x + r * ld for r < 4, each with exactly the additions of the one-row
/// function (the same bits): four independent chains of additions where one row is a single
/// chain of n / 8 dependent vector additions, which at a LayerNorm row of 256 takes longer than
/// the rest of the row's work. out[r] = sum(row r); out[r] = sum_sq_dev(row r, m[r]).
void sum4(const float* x, std::int64_t ld, std::int64_t n, float* out);
void sum_sq_dev4(const float* x, std::int64_t ld, const float* m, std::int64_t n, float* out);

}  // namespace pipetrain::kernels::cpu::lanes
