// pipetrain/error.h: the exceptions pipetrain throws.
//
// Every message starts with the name of the function that rejected the input, in brackets,
// then names the value and what was expected:
//   [interleaved_1f1b] num_microbatches=3 must be >= num_ranks=4
// Library code never calls exit(); destructors never throw.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace pipetrain {

/// Base class of every exception pipetrain throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A bad argument or configuration: the caller asked for something that cannot work.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

/// A schedule that breaks a rule (completeness, dependencies, placement, deadlock).
/// what() holds the rank x step grid with the faulty cells marked.
class ScheduleError : public Error {
 public:
  using Error::Error;
};

/// A malformed or truncated file or text (CSV, checkpoint, token file).
class ParseError : public Error {
 public:
  using Error::Error;
};

/// An optional part (CUDA, NCCL, MPI) was asked for at run time but was not built.
/// The message names the CMake option that builds it.
class NotBuiltError : public Error {
 public:
  using Error::Error;
};

namespace detail {
/// Builds "[function] " followed by the streamed arguments.
template <typename... Args>
std::string message(std::string_view function, const Args&... args) {
  std::ostringstream out;
  out << '[' << function << "] ";
  (out << ... << args);
  return out.str();
}
}  // namespace detail

}  // namespace pipetrain

/// Throws ExceptionType with "[function] <streamed message>" when `condition` is false.
#define PIPETRAIN_CHECK_ARG(condition, function, ...)                                       \
  do {                                                                                      \
    if (!(condition)) throw ::pipetrain::InvalidArgument(                                   \
        ::pipetrain::detail::message(function, __VA_ARGS__));                               \
  } while (0)
