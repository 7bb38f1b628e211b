#include "pipetrain/runtime/progress.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <memory>
#include <mutex>

#include "pipetrain/error.h"

namespace pipetrain::runtime {

namespace {

std::atomic<bool> g_enabled{true};

std::shared_ptr<spdlog::logger> logger() {
  static std::once_flag once;
  static std::shared_ptr<spdlog::logger> instance;
  std::call_once(once, [] {
    instance = spdlog::get("pipetrain");
    if (!instance) {
      instance = spdlog::stderr_color_mt("pipetrain");
      instance->set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
    }
  });
  return instance;
}

}  // namespace

void set_logging(bool enabled) { g_enabled = enabled; }

void log_info(int rank, const std::string& message) {
  if (g_enabled) logger()->info("[rank {}] {}", rank, message);
}

void log_warning(int rank, const std::string& message) {
  if (g_enabled) logger()->warn("[rank {}] {}", rank, message);
}

ProgressMeter::ProgressMeter(std::int64_t total_steps, std::int64_t tokens_per_step)
    : total_steps_(total_steps), tokens_per_step_(tokens_per_step) {
  PIPETRAIN_CHECK_ARG(total_steps >= 1, "ProgressMeter", "total_steps=", total_steps,
                      " must be >= 1");
  PIPETRAIN_CHECK_ARG(tokens_per_step >= 1, "ProgressMeter", "tokens_per_step=", tokens_per_step,
                      " must be >= 1");
}

std::string ProgressMeter::format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  auto s = static_cast<long long>(std::llround(seconds));
  const long long h = s / 3600, m = (s / 60) % 60;
  s %= 60;
  char buf[64];
  if (h > 0) {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm%02llds", h, m, s);
  } else if (m > 0) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", m, s);
  } else {
    std::snprintf(buf, sizeof buf, "%llds", s);
  }
  return buf;
}

std::string ProgressMeter::update(std::int64_t step, double loss, double seconds, bool skipped) {
  total_seconds_ += seconds;
  ++steps_seen_;
  const double mean = total_seconds_ / static_cast<double>(steps_seen_);
  const double left = static_cast<double>(std::max<std::int64_t>(0, total_steps_ - step - 1));
  const double tps = seconds > 0 ? static_cast<double>(tokens_per_step_) / seconds : 0.0;
  char buf[160];
  std::snprintf(buf, sizeof buf, "step %lld/%lld loss %.4f tokens/s %.0f ETA %s%s",
                static_cast<long long>(step + 1), static_cast<long long>(total_steps_), loss, tps,
                format_duration(mean * left).c_str(), skipped ? " (skipped: non-finite)" : "");
  return buf;
}

}  // namespace pipetrain::runtime
