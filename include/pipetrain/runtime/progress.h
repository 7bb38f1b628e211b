// pipetrain/runtime/progress.h: progress lines and log messages with a per-rank prefix.
//
// Everything goes through spdlog (a private dependency: no spdlog header here), on a logger named
// "pipetrain" writing to stderr with the pattern "[time] [level] [rank r] message".
#pragma once

#include <cstdint>
#include <string>

namespace pipetrain::runtime {

/// Logs `message` at info / warning level with the prefix "[rank r]".
void log_info(int rank, const std::string& message);
void log_warning(int rank, const std::string& message);

/// Silences (false) or restores (true) the log messages of this module (tests).
void set_logging(bool enabled);

/// Tracks steps, tokens and time; formats "step 3/100 loss 2.3456 tokens/s 12345 ETA 1m23s".
class ProgressMeter {
 public:
  /// total_steps >= 1; tokens_per_step = global batch tokens. Throws InvalidArgument otherwise:
  ///   "[ProgressMeter] total_steps=0 must be >= 1"
  ProgressMeter(std::int64_t total_steps, std::int64_t tokens_per_step);

  /// Records a finished step (0-based) that took `seconds`, and returns its progress line
  /// (tokens/s of this step; ETA from the mean step time so far).
  std::string update(std::int64_t step, double loss, double seconds, bool skipped = false);

  /// "1h02m03s", "4m05s", "6s".
  static std::string format_duration(double seconds);

 private:
  std::int64_t total_steps_;
  std::int64_t tokens_per_step_;
  double total_seconds_ = 0;
  std::int64_t steps_seen_ = 0;
};

}  // namespace pipetrain::runtime
