// lane_vectors.h (private): the eight lanes of lanes.h as one value, for the kernels' own loops.
// Only for files built with -Wno-psabi (src/kernels/cpu/CMakeLists.txt): these functions take and
// return the eight floats by value, which without AVX draws GCC's note that the calling convention
// differs from AVX's; they are always inlined, inside each clone, so no such call exists.
// (Passing them by reference instead silenced the note but kept them out of registers: the
// LayerNorm forward took 1.5 times as long.)
#pragma once

#include "lanes.h"

namespace pipetrain::kernels::cpu::lanes {

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

}  // namespace pipetrain::kernels::cpu::lanes
