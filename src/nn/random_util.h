// Counter-based hashing shared by the initialisers and Dropout (not installed).
#pragma once

#include <cstdint>
#include <string_view>

namespace pipetrain::nn::detail {

/// SplitMix64's output function (Steele, Lea, Flood 2014): splitmix64(s + k * golden) for
/// k = 0, 1, ... is SplitMix64's stream from state s, a good 64-bit hash of a counter.
constexpr std::uint64_t kGolden = 0x9e3779b97f4a7c15ull;
constexpr std::uint64_t splitmix64(std::uint64_t x) {
  x += kGolden;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/// 64-bit FNV-1a of a string.
constexpr std::uint64_t fnv1a64(std::string_view s) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (const char ch : s) h = (h ^ static_cast<unsigned char>(ch)) * 0x100000001b3ull;
  return h;
}

}  // namespace pipetrain::nn::detail
