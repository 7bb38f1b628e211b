// exp_fp32.h (private): exponentials for the fp32 kernels, written so that GCC vectorises the
// loops that call them (with -fno-trapping-math on the calling file). exp2_reduced is in double,
// for GELU (see gelu.cpp for why); exp_nonpositive, the softmax's (attention and cross-entropy),
// is fp32 throughout, sixteen lanes an AVX-512 vector.
#pragma once

#include <bit>
#include <cstdint>

namespace pipetrain::kernels::cpu::fastmath {

constexpr double kLn2 = 0.6931471805599453;
constexpr double kLog2e = 1.4426950408889634;
// 1.5 * 2^52: z + kRoundMagic rounds z to an integer n, held in the low bits of the double.
constexpr double kRoundMagic = 6755399441055744.0;

// exp(r) for |r| <= ln2 / 2: Taylor to degree 8, relative error 2e-10 (0.003 fp32 ulp).
[[gnu::always_inline]] inline double exp_poly(double r) {
  double p = 1.0 / 40320;
  p = p * r + 1.0 / 5040;
  p = p * r + 1.0 / 720;
  p = p * r + 1.0 / 120;
  p = p * r + 1.0 / 24;
  p = p * r + 1.0 / 6;
  p = p * r + 0.5;
  p = p * r + 1.0;
  return p * r + 1.0;
}

// 2^z for z in [-1022, 1023] (z need not be an integer): 2^n from n's bits times exp_poly of
// the remainder.
[[gnu::always_inline]] inline double exp2_reduced(double z) {
  const double big = z + kRoundMagic;
  const double r = (z - (big - kRoundMagic)) * kLn2;  // z - n is exact
  // 2^n from n's bits: (n + 1023) << 52, with n = bits(big) - bits(kRoundMagic).
  const std::int64_t bits =
      (std::bit_cast<std::int64_t>(big) - std::bit_cast<std::int64_t>(kRoundMagic) + 1023) << 52;
  return exp_poly(r) * std::bit_cast<double>(bits);
}

// Cody-Waite split of ln 2: the high part has 9 significant bits, so n * kLn2Hi is exact for
// |n| < 2^15, and x - n * kLn2Hi is exact (Sterbenz) for the n that rounds x / ln 2.
constexpr float kLn2HiF = 0.693359375f;
constexpr float kLn2LoF = -2.12194440e-4f;
constexpr float kLog2eF = 1.44269504f;
// 1.5 * 2^23: y + kRoundMagicF rounds y (|y| < 2^22) to an integer, held in the low bits.
constexpr float kRoundMagicF = 12582912.0f;
// Below this, exp(x) is under half the smallest fp32 denormal (exp(-103.972) = 2^-150).
constexpr float kExpUnderflowF = -104.0f;

// exp(x) for x <= 0 (softmax arguments after subtracting the maximum), in fp32: x = n ln2 + r
// with |r| just over ln2 / 2 (n is rounded from the rounded x / ln2; Cody-Waite, error under
// 1.6e-8), e^r by Taylor to degree 7 (truncation 5e-9), then 2^n in two normal factors so that a
// denormal result rounds once. Within 1.22 ulp of exp, and 0.78 ulp of a denormal below the
// normal range, over every input (tests/unit/nn/test_exp_fp32.cpp bounds it), at about a third
// of the instructions of the double evaluation it replaced (0.51 ulp), which took most of the
// attention softmax's time. x below -104 gives +0, -inf gives +0, NaN gives NaN. Positive x must
// not occur (it is clamped to 0, giving 1).
[[gnu::always_inline]] inline float exp_nonpositive(float x) {
  // Written so that they compile to maxps / minps (which give the second operand for NaN).
  float xc = x > kExpUnderflowF ? x : kExpUnderflowF;
  xc = xc < 0.0f ? xc : 0.0f;
  const float big = xc * kLog2eF + kRoundMagicF;
  const float nf = big - kRoundMagicF;  // round(x / ln2), in [-150, 0]
  const float r = (xc - nf * kLn2HiF) - nf * kLn2LoF;
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const std::int32_t n =
      std::bit_cast<std::int32_t>(big) - std::bit_cast<std::int32_t>(kRoundMagicF);
  const std::int32_t n1 = n / 2, n2 = n - n1;  // each >= -75: 2^n1, 2^n2 normal
  const float e =
      (p * std::bit_cast<float>((n1 + 127) << 23)) * std::bit_cast<float>((n2 + 127) << 23);
  return x == x ? (x > kExpUnderflowF ? e : 0.0f) : x;
}

}  // namespace pipetrain::kernels::cpu::fastmath
