// exp_fp32.h (private): exp for the fp32 kernels, in double after the fp32 load, written so
// that GCC vectorises the loops that call it (with -fno-trapping-math on the calling file).
// Shared by gelu.cpp and cross_entropy.cpp; see gelu.cpp for why double.
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

// exp(x) for x <= 0 (softmax arguments after subtracting the maximum), rounded to fp32 once:
// within 0.51 ulp for results that are normal fp32 numbers. x below -150 (where exp(x) is below
// half the smallest fp32 denormal) gives +0; -inf gives +0; NaN gives NaN. Positive x must not
// occur (it is clamped to 0, giving 1).
[[gnu::always_inline]] inline float exp_nonpositive(float x) {
  // Written so that they compile to maxps / minps (which give the second operand for NaN).
  float xc = x > -150.0f ? x : -150.0f;
  xc = xc < 0.0f ? xc : 0.0f;
  const auto e = static_cast<float>(exp2_reduced(static_cast<double>(xc) * kLog2e));
  return x == x ? (x > -150.0f ? e : 0.0f) : x;
}

}  // namespace pipetrain::kernels::cpu::fastmath
