// Test helper: how often a text contains a needle (non-overlapping).
#pragma once

#include <cstddef>
#include <string>

namespace pipetrain::testing {

inline std::size_t count(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (std::size_t pos = text.find(needle); pos != std::string::npos;
       pos = text.find(needle, pos + needle.size()))
    ++n;
  return n;
}

}  // namespace pipetrain::testing
