// pipetrain/schedule/generators.h: the schedules pipetrain knows, as pure functions.
//
// Each generator computes every rank's compute actions (F, B, I, W; no communication) for
// P = num_ranks ranks and M = num_microbatches microbatches, and lays them on a common
// step grid. Lower the result with lower() (passes.h) before running it.
//
// Each generator throws InvalidArgument for a spec it cannot build, with a message that
// names the function, the value and what is expected, e.g.
//   [interleaved_1f1b] num_microbatches=3 must be >= num_ranks=4
// docs/schedules.md lists every schedule with its bubble and memory formulas and sources.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "pipetrain/schedule/schedule.h"

namespace pipetrain {

/// GPipe (Huang et al. 2019): all M forwards, then all M backwards (B), stage order.
/// Needs P >= 1, M >= 1.
Schedule gpipe(int num_ranks, int num_microbatches);

/// 1F1B (PipeDream-Flush, Narayanan et al. 2021): rank r runs min(P-r, M) warm-up forwards... then
/// alternates one backward and one forward. Needs P >= 1, M >= 1.
Schedule one_f_one_b(int num_ranks, int num_microbatches);

/// Interleaved 1F1B (Narayanan et al. 2021, Megatron-LM) with v = stages_per_rank model chunks per
/// rank (loop placement). Microbatches go through the chunks in groups of P as in Megatron-Core,
/// so M need not be a multiple of P. Needs v >= 1 and M >= P (when v > 1).
Schedule interleaved_1f1b(int num_ranks, int num_microbatches, int stages_per_rank);

/// Looped BFS (Lamy-Poirier 2023, "Breadth-First Pipeline Parallelism"): loop placement with v
/// stages per rank, each rank runs all microbatches through one local stage before the next,
/// forwards then backwards (B). Needs v >= 1.
Schedule looped_bfs(int num_ranks, int num_microbatches, int stages_per_rank);

/// ZB-H1 (Qi et al. 2024, "Zero Bubble Pipeline Parallelism"): 1F1B with the backward split into
/// I and W; W is delayed to fill the cool-down bubble. Peak memory no more than 1F1B's.
Schedule zb_h1(int num_ranks, int num_microbatches);

/// ZB-H2 (Qi et al. 2024): extra warm-up forwards fill the start bubble and W fills the rest;
/// zero bubble under uniform costs once M is large enough, at most 2P-1 microbatches in flight.
Schedule zb_h2(int num_ranks, int num_microbatches);

/// ZB-V (Qi et al. 2024): V placement (v = 2, rank r holds stages r and 2P-1-r), split backward,
/// peak memory within 1F1B's, zero bubble under uniform costs once M is large enough.
Schedule zb_v(int num_ranks, int num_microbatches);

/// DualPipeV (DeepSeek, "cut-in-half" DualPipe): V placement, the eight-phase order of
/// deepseek-ai/DualPipe's dualpipev.py, with F and B of the two chunks interleaved.
/// Needs M >= 2P.
Schedule dualpipe_v(int num_ranks, int num_microbatches);

/// Names accepted by make_schedule(), in presentation order:
/// "gpipe", "1f1b", "interleaved-1f1b", "looped-bfs", "zb-h1", "zb-h2", "zb-v", "dualpipe-v".
const std::vector<std::string>& schedule_names();

/// True for the schedules that take stages_per_rank (interleaved-1f1b, looped-bfs).
bool takes_stages_per_rank(std::string_view name);

/// Builds a schedule by name. stages_per_rank is used by interleaved-1f1b and looped-bfs and
/// must be 1 for the others (the V schedules fix it to 2).
/// Throws InvalidArgument for an unknown name, listing the known ones.
Schedule make_schedule(std::string_view name, int num_ranks, int num_microbatches,
                       int stages_per_rank = 1);

}  // namespace pipetrain
