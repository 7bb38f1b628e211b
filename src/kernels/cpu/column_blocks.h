// column_blocks.h (private): sums over rows, column by column (the LayerNorm weight and bias
// gradients, the linear layers' bias gradient). Columns go in blocks of kColumnBlock, each block
// walking every row in order, so each column adds its rows as one thread would; the blocks run
// in parallel (src/core/parallel.h): the same bits on any thread count.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../../core/parallel.h"

namespace pipetrain::kernels::cpu {

/// Columns per block: a block's sums stay in registers (AVX-512) for its walk over the rows.
constexpr std::int64_t kColumnBlock = 64;

/// Runs block(kb, width) for the blocks [kb, kb + width) of columns [0, c), width <=
/// kColumnBlock, of sums over n rows. The blocks are the threads' chunks once a block holds at
/// least 65536 elements; smaller sums run in one chunk.
template <typename Block>
void for_column_blocks(std::int64_t n, std::int64_t c, const Block& block) {
  const std::int64_t cols = n * kColumnBlock >= 65536 ? kColumnBlock : c;
  detail::parallel_chunks(c, cols, [&](std::int64_t, std::int64_t k0, std::int64_t k1) {
    for (std::int64_t kb = k0; kb < k1; kb += kColumnBlock)
      block(kb, std::min(kColumnBlock, k1 - kb));
  });
}

}  // namespace pipetrain::kernels::cpu
