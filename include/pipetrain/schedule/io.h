// pipetrain/schedule/io.h: schedules to and from text, and pictures of simulated runs.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "pipetrain/schedule/schedule.h"
#include "pipetrain/schedule/simulate.h"

namespace pipetrain {

/// The CSV form of PyTorch's torch.distributed.pipelining (_dump_csv / _load_csv): one row per
/// rank, one cell per slot holding the action's text ("0F0", "1SEND_F2"), an empty cell where the
/// rank idles, cells joined by ",". Rows end with "\n", as PyTorch's checked-in artifacts do
/// (Python's csv.writer writes "\r\n"; from_csv reads both). As in Python's csv module, a row
/// made of a single idle slot is written as "" so that it differs from a rank with no slots (an
/// empty line). An overlapped slot (schedule.h) is one cell, its two actions in their order, in
/// PyTorch's spelling of its OVERLAP_F_B action: "(0F7;7B3)OVERLAP_F_B". Works for compute-only
/// and lowered schedules.
///   0F0,0F1,,0B0,0B1
///   ,1F0,1F1,1B0,1B1
std::string to_csv(const Schedule& schedule);

/// Reads the CSV form. The shape is inferred: num_ranks from the rows, num_stages from the
/// largest stage, num_microbatches from the largest microbatch, and the placement from which
/// rank holds which stage (loop when every stage s sits on row s % P; otherwise V when there are
/// 2P stages and row r holds only r and 2P-1-r). Cells may be surrounded by spaces or double
/// quotes; an empty cell is an idle slot; an empty line is a rank with no slots.
/// Two forms PyTorch writes are read too:
///   "(0F7;7B3)OVERLAP_F_B"  (DualPipeV's overlapped forward and backward) becomes one overlapped
///                           slot: its two actions in order, marked (Schedule::rank_overlaps());
///                           expand_overlap() (passes.h) gives the order pipetrain's runtime runs
///                           (the F first, whichever the cell names first).
///                           The cell must hold an F and a B or I of different microbatches.
///   "2BW0"                  releases before "I" existed wrote the input-gradient backward as "B"
///                           and the full backward as "BW": a text with any "NBWm" cell is read
///                           in that dialect ("B" as I, "BW" as B), inside overlapped cells too.
/// from_csv(to_csv(s), s.name()) == s, overlap marks included, for every schedule whose shape
/// these rules recover.
/// Bounded: the text may have at most ScheduleLimits::kMaxRanks rows and kMaxSlots cells and
/// slots (an overlapped cell is two slots), the inferred shape must pass the limits of
/// ScheduleLimits (stages, microbatches, stages x microbatches), and stages x microbatches may not exceed max(compute actions in the text, 4096):
/// a text whose numbers are far larger than its contents ("2147483646F0") is refused before
/// anything sized by them is built.
/// Throws ParseError, rows and cells numbered from 1:
///   "[from_csv] row 2 cell 5: [parse_action] 'X' is not an action: ..." for a bad cell,
///   "[from_csv] row 1 cell 2: '(0F1;0B1)OVERLAP_F_B' is not an overlapped slot: expected an F and
///   a B or I of different microbatches" (likewise for a cell of three or more actions),
///   "[from_csv] the text has no rows", or "... but no actions: the shape cannot be inferred",
///   "[from_csv] the largest stage 2 gives num_stages=3, which is not a multiple of num_ranks=2
///   (one row per rank)", or, for a layout that is neither loop nor V, a message naming the
///   first cell each placement rejects.
Schedule from_csv(std::string_view text, std::string name = "csv");

/// Chrome trace JSON: {"traceEvents":[...], "displayTimeUnit":"ms", "otherData":{schedule name,
/// shape, makespan, bubble_fraction}}. One process per rank (pid = rank, with process_name and
/// thread_name metadata "rank r" and a process_sort_index), one complete event ("ph":"X") per
/// simulated action: name = action text ("2F0"), cat = kind ("F"), ts and dur in microseconds =
/// time units * time_scale, args = stage, microbatch and step. The two actions of an overlapped
/// slot (schedule.h) both span the slot's time (as simulate() gives them) and their args add
/// "overlap":true and "partner" (the other action's text). Opens in Perfetto and
/// chrome://tracing. Throws InvalidArgument when time_scale is not finite and > 0, or when
/// `result` holds a rank that `schedule` does not have.
std::string to_chrome_trace(const Schedule& schedule, const SimulationResult& result,
                            double time_scale = 1.0);

struct SvgOptions {
  double pixels_per_time_unit = 24.0;
  double row_height = 28.0;
  bool show_legend = true;
  std::string title;  ///< first line of the heading; defaults to the schedule name
};

/// An SVG picture of a simulated run: ranks as rows, time on x with an axis, actions as boxes
/// coloured by kind (F blue, B green, I orange, W purple; on multi-stage ranks later local stages
/// are lighter shades) and labelled with the microbatch (the stage as a subscript for
/// multi-stage ranks; no label when the box is too narrow), idle time left blank. The heading
/// gives the title, then P, v and placement, M, the makespan and the bubble fraction; a legend
/// below names the kinds present. Each action is a <rect class="action kind-F"> with a <title>
/// tooltip. An overlapped slot (schedule.h) is drawn as what it is, one slot over the slot's
/// time holding two actions: two half-height boxes stacked in the rank's row (the slot's first
/// action on top), each <rect class="action kind-F overlapped"> labelled, its tooltip ending
/// ", overlapped with 3B1". Self-contained; the size grows with the makespan. Throws InvalidArgument when
/// pixels_per_time_unit is not finite and > 0, row_height < 8, or `result` holds a rank that
/// `schedule` does not have.
std::string to_svg(const Schedule& schedule, const SimulationResult& result,
                   const SvgOptions& options = {});

/// Reads or writes (truncating) a whole file, bytes as they are. Throws Error naming the path and
/// the system's reason: "[read_file] cannot open 'x.csv': No such file or directory".
/// read_file reads regular files only and at most max_bytes: it throws Error, before reading,
/// "[read_file] '/dev/zero' is not a regular file (a character device)" (likewise a directory, a
/// FIFO, a socket) and "[read_file] 'big.csv' has 70000000 bytes, more than the limit of
/// 67108864", and stops at the limit a file that grows while it is read.
std::string read_file(const std::string& path,
                      std::int64_t max_bytes = ScheduleLimits::kMaxFileBytes);
void write_file(const std::string& path, std::string_view contents);

}  // namespace pipetrain
