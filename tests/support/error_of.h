// Test helper: the what() of the exception of type E (any std::exception by default) that
// `body` throws, or "<no exception>" when it throws none. Tests compare it with the exact message.
#pragma once

#include <exception>
#include <string>

namespace pipetrain::testing {

template <typename E = std::exception, typename F>
std::string error_of(F&& body) {
  try {
    body();
  } catch (const E& e) {
    return e.what();
  }
  return "<no exception>";
}

}  // namespace pipetrain::testing
