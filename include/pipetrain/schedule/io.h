// pipetrain/schedule/io.h: schedules to and from text, and pictures of simulated runs.
#pragma once

#include <string>
#include <string_view>

#include "pipetrain/schedule/schedule.h"
#include "pipetrain/schedule/simulate.h"

namespace pipetrain {

/// The CSV form of PyTorch's torch.distributed.pipelining (_dump_csv / _load_csv): one row per
/// rank, one cell per slot holding the action's text ("0F0", "1SEND_F2"), an empty cell where the
/// rank idles. Works for compute-only and lowered schedules.
std::string to_csv(const Schedule& schedule);

/// Reads the CSV form. The shape is inferred: num_ranks from the rows, num_stages from the
/// largest stage, num_microbatches from the largest microbatch, and the placement from which
/// rank holds which stage (loop, or V when rank r holds r and 2P-1-r).
/// Throws ParseError naming the row and cell for a bad cell, or a stage layout that is neither.
Schedule from_csv(std::string_view text, std::string name = "csv");

/// Chrome trace JSON ("traceEvents", one process per rank, one complete event per action,
/// microseconds = time units * time_scale): opens in Perfetto and chrome://tracing.
std::string to_chrome_trace(const Schedule& schedule, const SimulationResult& result,
                            double time_scale = 1.0);

struct SvgOptions {
  double pixels_per_time_unit = 24.0;
  double row_height = 28.0;
  bool show_legend = true;
  std::string title;  ///< defaults to the schedule name and its bubble fraction
};

/// An SVG picture of a simulated run: ranks as rows, actions as boxes coloured by kind and
/// labelled with the microbatch (and the stage for multi-stage ranks), idle time left blank.
std::string to_svg(const Schedule& schedule, const SimulationResult& result,
                   const SvgOptions& options = {});

/// Reads or writes a whole file. Throws Error naming the path when it cannot.
std::string read_file(const std::string& path);
void write_file(const std::string& path, std::string_view contents);

}  // namespace pipetrain
