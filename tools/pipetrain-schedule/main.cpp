// pipetrain-schedule: build, load, validate, lower, simulate, draw and convert pipeline schedules.
//
//   pipetrain-schedule --schedule zb-v --ranks 4 --microbatches 8 --svg zbv.svg --trace zbv.json
//   pipetrain-schedule --load schedule.csv --simulate
//   pipetrain-schedule --list
//   pipetrain-schedule --search -p 8 -m 32 --costs 1,3,2,1 --activation-bytes 1G --memory-cap 6G
//
// Exit status: 0 on success, 1 when the schedule is invalid or cannot be built (or, with
// --search, when no schedule fits the memory cap), 2 on bad usage.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <exception>
#include <new>
#include <optional>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "pipetrain/error.h"
#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/io.h"
#include "pipetrain/schedule/passes.h"
#include "pipetrain/schedule/search.h"
#include "pipetrain/schedule/simulate.h"
#include "pipetrain/schedule/validate.h"

namespace {

using namespace pipetrain;

struct Options {
  std::string schedule = "1f1b";
  int ranks = 4;
  int microbatches = 8;
  int stages_per_rank = 1;
  std::string load;
  bool list = false;
  bool lower = false;
  bool merge = false;
  bool print = false;
  bool simulate = false;
  bool quiet = false;
  bool table = false;
  std::vector<double> costs;  // F B I W
  double latency = 0.0;
  std::optional<double> overlap_overhead;  // set: overlapped slots cost max(F, B or I) + it
  std::string csv;
  std::string svg;
  std::string trace;
  bool search = false;
  std::string activation_bytes = "1G";
  std::string w_bytes;
  double w_fraction = 1.0;
  std::string memory_cap = "0";
  bool named_only = false;
};

// "512M", "2G", "1.5GiB", "4096", "100B": a number (decimals allowed) and an optional binary
// suffix K, M, G, T (powers of 1024; case-insensitive; "B", "iB" after it allowed). Whole bytes
// result, rounded to nearest.
std::int64_t parse_bytes(const std::string& option, const std::string& text) {
  const auto fail = [&] {
    return InvalidArgument(detail::message(
        "pipetrain-schedule", option, "=", text,
        " must be a byte count >= 0: a number with an optional suffix K, M, G or T "
        "(powers of 1024), e.g. 512M, 2G, 1.5GiB"));
  };
  std::size_t end = 0;
  while (end < text.size() &&
         (std::isdigit(static_cast<unsigned char>(text[end])) || text[end] == '.'))
    ++end;
  if (end == 0 || std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(end), '.') > 1)
    throw fail();
  const double number = std::stod(text.substr(0, end));
  std::string suffix = text.substr(end);
  for (char& c : suffix) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  double scale = 1.0;
  if (!suffix.empty() && suffix != "B") {
    const std::string units = "KMGT";
    const std::size_t power = units.find(suffix[0]);
    const std::string rest = suffix.substr(1);
    if (power == std::string::npos || !(rest.empty() || rest == "B" || rest == "IB"))
      throw fail();
    scale = std::ldexp(1.0, 10 * static_cast<int>(power + 1));
  }
  const double bytes = std::round(number * scale);
  if (!std::isfinite(bytes) || bytes > 9.0e18) throw fail();
  return static_cast<std::int64_t>(bytes);
}

// 4294967296 -> "4 GiB", 4831838208 -> "4.5 GiB", 1000 -> "1000 B".
std::string human_bytes(std::int64_t bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 6) {
    value /= 1024.0;
    ++unit;
  }
  std::ostringstream out;
  out << std::setprecision(unit == 0 ? 20 : 4) << value << ' ' << kUnits[unit];
  return out.str();
}

CostModel cost_model(const Options& options) {
  CostModel costs = CostModel::uniform();
  if (!options.costs.empty()) {
    if (options.costs.size() != 4)
      throw InvalidArgument(detail::message(
          "pipetrain-schedule", "--costs takes 4 numbers F,B,I,W; got ", options.costs.size()));
    for (std::size_t i = 0; i < 4; ++i)
      PIPETRAIN_CHECK_ARG(std::isfinite(options.costs[i]) && options.costs[i] >= 0.0,
                          "pipetrain-schedule", "--costs ", "FBIW"[i], "=", options.costs[i],
                          " must be finite and >= 0");
    costs.forward = options.costs[0];
    costs.backward = options.costs[1];
    costs.backward_input = options.costs[2];
    costs.backward_weight = options.costs[3];
  }
  PIPETRAIN_CHECK_ARG(std::isfinite(options.latency) && options.latency >= 0.0,
                      "pipetrain-schedule", "--latency=", options.latency,
                      " must be finite and >= 0");
  costs.latency = options.latency;
  const double overhead = options.overlap_overhead.value_or(0.0);
  PIPETRAIN_CHECK_ARG(std::isfinite(overhead) && overhead >= 0.0, "pipetrain-schedule",
                      "--overlap-overhead=", overhead, " must be finite and >= 0");
  costs.overlap_overhead = overhead;
  return costs;
}

std::string join(const std::vector<int>& values) {
  std::ostringstream out;
  for (std::size_t i = 0; i < values.size(); ++i) out << (i ? " " : "") << values[i];
  return out.str();
}

void print_summary(const Schedule& schedule, const SimulationResult& result,
                   const MemoryProfile& memory, const CostModel& costs) {
  std::cout << std::fixed << std::setprecision(4);
  std::cout << "schedule        " << schedule.name() << " (" << schedule.num_ranks() << " ranks, "
            << schedule.num_stages() << " stages, " << to_string(schedule.placement())
            << " placement, " << schedule.num_microbatches() << " microbatches)\n";
  std::cout << "makespan        " << result.makespan << "\n";
  std::cout << "bubble fraction " << result.bubble_fraction
            << "   (inside each rank's span: " << result.span_bubble_fraction << ")\n";
  std::cout << "idle per rank  ";
  for (double idle : result.idle) std::cout << ' ' << idle;
  std::cout << "\npeak activations per rank (stage-microbatch units): "
            << join(memory.peak_activations)
            << "\npeak held incl. pending W per rank:                 " << join(memory.peak_held)
            << "\n";
  if (!schedule.has_overlap()) return;
  std::size_t pairs = 0;
  for (int r = 0; r < schedule.num_ranks(); ++r) pairs += schedule.rank_overlaps(r).size();
  std::cout << "overlapped slots " << pairs << ", each max(F, B or I) + " << costs.overlap_overhead
            << " (--overlap-overhead): needs an executor that runs the two together\n"
            << "run in sequence  makespan " << simulate(expand_overlap(schedule), costs).makespan
            << "   (expand_overlap(): what pipetrain's executor runs)\n";
}

int max_of(const std::vector<int>& values) {
  int best = 0;
  for (int v : values) best = std::max(best, v);
  return best;
}

// One markdown row per schedule at (P, M, v), as docs/schedules.md shows them. Times are in
// units of one rank's forward (the --costs per rank share of the model).
void print_table(const Options& options) {
  const CostModel costs = cost_model(options);
  std::cout << "| schedule | P | M | v | makespan | bubble | bubble inside spans | peak "
               "activations (max rank) | "
               "peak held incl. W (max rank) | per rank share (held / v) |\n"
            << "|---|---|---|---|---|---|---|---|---|---|\n";
  for (const std::string& name : schedule_names()) {
    const int v = takes_stages_per_rank(name) ? options.stages_per_rank : 1;
    std::cout << "| " << name << " | " << options.ranks << " | " << options.microbatches << " | ";
    try {
      const Schedule schedule = make_schedule(name, options.ranks, options.microbatches, v);
      // A rank's share of the model is split into v stages, so each stage costs 1/v of the
      // times given: makespans then compare across schedules for the same model.
      CostModel scaled = costs;
      const double share = 1.0 / schedule.stages_per_rank();
      scaled.forward *= share;
      scaled.backward *= share;
      scaled.backward_input *= share;
      scaled.backward_weight *= share;
      const SimulationResult result = simulate(lower(schedule), scaled);
      const MemoryProfile memory = analyze_memory(schedule);
      const int held = max_of(memory.peak_held);
      std::cout << schedule.stages_per_rank() << " | " << result.makespan << " | "
                << result.bubble_fraction << " | " << result.span_bubble_fraction << " | "
                << max_of(memory.peak_activations) << " | " << held << " | "
                << static_cast<double>(held) / schedule.stages_per_rank() << " |\n";
    } catch (const Error& e) {
      std::cout << v << " | rejected: " << e.what() << " ||||||\n";
    }
  }
}

SearchOptions search_options(const Options& options) {
  SearchOptions search;
  search.activation_bytes = parse_bytes("--activation-bytes", options.activation_bytes);
  if (!options.w_bytes.empty()) search.pending_w_bytes = parse_bytes("--w-bytes", options.w_bytes);
  search.pending_w_fraction = options.w_fraction;
  search.memory_cap_bytes = parse_bytes("--memory-cap", options.memory_cap);
  search.cost_aware = !options.named_only;
  // Overlapped candidates only with a stated overhead: none is measured here, and their gain
  // needs an executor that overlaps (pipetrain's runs a slot in sequence).
  search.overlapped = options.overlap_overhead.has_value();
  search.squeeze = !options.named_only;
  return search;
}

// --csv, --svg and --trace of `schedule`, each when asked for.
void write_outputs(const Options& options, const Schedule& schedule,
                   const SimulationResult& result) {
  if (!options.csv.empty()) write_file(options.csv, to_csv(schedule));
  if (!options.svg.empty()) write_file(options.svg, to_svg(schedule, result));
  if (!options.trace.empty()) write_file(options.trace, to_chrome_trace(schedule, result));
  for (const std::string* path : {&options.csv, &options.svg, &options.trace})
    if (!path->empty() && !options.quiet) std::cout << "wrote " << *path << "\n";
}

// --search: a markdown table of every candidate, best first, then the winner's grid; --csv,
// --svg and --trace write the winner.
int run_search(const Options& options) {
  const CostModel costs = cost_model(options);
  const SearchOptions search = search_options(options);
  const std::vector<SearchResult> results =
      search_schedules(options.ranks, options.microbatches, costs, search);
  if (!options.quiet) {
    std::cout << std::setprecision(4);
    const std::int64_t w_bytes =
        search.pending_w_bytes
            ? *search.pending_w_bytes
            : std::llround(search.pending_w_fraction * static_cast<double>(search.activation_bytes));
    std::cout << "search: P=" << options.ranks << ", M=" << options.microbatches
              << "; per rank's share: F=" << costs.forward << " B=" << costs.backward
              << " I=" << costs.backward_input << " W=" << costs.backward_weight
              << ", latency " << costs.latency << "; activations "
              << human_bytes(search.activation_bytes) << ", pending W " << human_bytes(w_bytes)
              << " per microbatch; memory cap "
              << (search.memory_cap_bytes == 0 ? std::string("none")
                                               : human_bytes(search.memory_cap_bytes) + " per rank")
              << "\n\n";
    std::cout << "| # | schedule | knobs | makespan | bubble | peak bytes/rank (rank) | feasible |\n"
              << "|---|---|---|---|---|---|---|\n";
    int position = 0;
    for (const SearchResult& r : results) {
      ++position;
      std::cout << "| " << position << " | " << r.name << " | " << r.knobs << " | ";
      if (r.built)
        std::cout << std::setprecision(6) << r.makespan << std::setprecision(4) << " | "
                  << r.bubble_fraction << " | "
                  << human_bytes(r.peak_bytes) << " (" << r.peak_rank << ") | "
                  << (r.feasible ? "yes" : "no: over the cap") << " |\n";
      else
        std::cout << "| | | no: " << r.reason << " |\n";
    }
    if (search.overlapped)
      std::cout << "\noverlapped: each slot costs max(F, B or I) + " << costs.overlap_overhead
                << "; needs an executor that runs the two together (pipetrain's runs them in "
                   "sequence, as dualpipe-v)\n";
  }
  const SearchResult& best = results.front();
  if (!best.feasible) {
    std::cerr << "pipetrain-schedule: no schedule fits the memory cap of "
              << human_bytes(search.memory_cap_bytes) << " per rank (" << search.memory_cap_bytes
              << " bytes) at P=" << options.ranks << ", M=" << options.microbatches << "\n";
    return 1;
  }
  Schedule schedule =
      make_candidate(best, options.ranks, options.microbatches, costs, search);
  // Lowering is for a runtime, which runs the overlapped slots expanded.
  if (options.lower) schedule = lower(expand_overlap(schedule));
  const SimulationResult result = simulate(schedule, stage_costs(costs, schedule));
  if (!options.quiet) {
    std::cout << "\nwinner: " << best.name << (best.knobs.empty() ? "" : " ") << best.knobs
              << ", makespan " << std::setprecision(6) << best.makespan << std::setprecision(4)
              << ", bubble " << best.bubble_fraction
              << ", peak " << human_bytes(best.peak_bytes) << " on rank " << best.peak_rank
              << "\n";
    std::cout << schedule.to_grid();
  }
  write_outputs(options, schedule, result);
  return 0;
}

int run(const Options& options) {
  if (options.search) return run_search(options);
  if (options.table) {
    std::cout << std::setprecision(4);
    print_table(options);
    return 0;
  }
  if (options.list) {
    for (const std::string& name : schedule_names())
      std::cout << name << (takes_stages_per_rank(name) ? "  (takes --stages-per-rank)" : "")
                << "\n";
    for (const std::string& name : overlapped_schedule_names())
      std::cout << name << "  (overlapped slots: validated, lowered and run expanded)\n";
    return 0;
  }
  // The costs are checked before anything is built or read.
  const CostModel costs = cost_model(options);
  Schedule schedule = options.load.empty()
                          ? make_schedule(options.schedule, options.ranks, options.microbatches,
                                          options.stages_per_rank)
                          : from_csv(read_file(options.load), options.load);
  if (options.merge) schedule = merge_backward(schedule);
  // A runtime runs overlapped slots in sequence: lowering (for a runtime) expands them, and
  // validation checks the expanded order; the rest keeps the slots.
  if (options.lower && !schedule.has_comm()) schedule = lower(expand_overlap(schedule));

  const ValidationReport report = validate(expand_overlap(schedule));
  if (!report.ok()) {
    std::cerr << "pipetrain-schedule: the schedule is invalid\n" << report.format(schedule);
    return 1;
  }
  const bool wants_outputs = !options.csv.empty() || !options.svg.empty() || !options.trace.empty();
  if (options.print || (!options.quiet && !options.simulate && !wants_outputs))
    std::cout << schedule.to_grid();

  const SimulationResult result = simulate(schedule, costs);
  if (!options.quiet) print_summary(schedule, result, analyze_memory(schedule), costs);
  write_outputs(options, schedule, result);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  CLI::App app{"Build, validate, simulate, draw and convert pipeline schedules.",
               "pipetrain-schedule"};
  app.add_option("-s,--schedule", options.schedule,
                 "Schedule to build: gpipe, 1f1b, interleaved-1f1b, looped-bfs, zb-h1, zb-h2, "
                 "zb-v, dualpipe-v, v-half, v-min, dualpipe-v-overlap")
      ->capture_default_str();
  app.add_option("-p,--ranks", options.ranks, "Pipeline ranks P")->capture_default_str();
  app.add_option("-m,--microbatches", options.microbatches, "Microbatches M per batch")
      ->capture_default_str();
  app.add_option("-v,--stages-per-rank", options.stages_per_rank,
                 "Model chunks per rank (interleaved-1f1b, looped-bfs)")
      ->capture_default_str();
  app.add_option("--load", options.load,
                 "Load a schedule from PyTorch pipelining CSV instead of building one")
      ->check(CLI::ExistingFile);
  app.add_flag("--list", options.list, "List the schedules and exit");
  app.add_flag("--table", options.table,
               "Print a markdown table of every schedule at "
               "--ranks/--microbatches/--stages-per-rank and exit");
  app.add_flag("--lower", options.lower, "Insert SEND/RECV actions (lower) before the other steps");
  app.add_flag("--merge-backward", options.merge, "Merge I+W into B");
  app.add_flag("--print", options.print,
               "Print the rank x step grid (the default when nothing else is asked)");
  app.add_flag("--simulate", options.simulate,
               "Print the simulated makespan, bubble and peak memory");
  app.add_flag("-q,--quiet", options.quiet, "Print nothing but errors");
  app.add_option("--costs", options.costs,
                 "Per-stage times F,B,I,W (default 1,2,1,1); with --table and --search, the "
                 "times of one rank's share of the model, each of v stages costing 1/v")
      ->delimiter(',');
  app.add_option("--latency", options.latency, "Per-transfer latency between ranks")
      ->capture_default_str();
  app.add_option("--overlap-overhead", options.overlap_overhead,
                 "Time an overlapped slot takes beyond max(F, B or I) (default 0, perfect "
                 "overlap); with --search, also try dualpipe-v-overlap, costed so (its gain "
                 "needs an executor that overlaps; pipetrain's runs a slot in sequence)");
  app.add_option("--csv", options.csv, "Write the schedule as PyTorch pipelining CSV");
  app.add_option("--svg", options.svg, "Write an SVG picture of the simulated timeline");
  app.add_option("--trace", options.trace,
                 "Write the simulated timeline as Chrome trace JSON (Perfetto)");
  app.add_flag("--search", options.search,
               "Try every schedule (interleaved-1f1b and looped-bfs with v = 2, 3, 4; the "
               "zero-bubble ones also cost-aware and under memory knobs, v-half and v-min also "
               "squeezed) at --ranks/--microbatches under --costs/--latency, print them ranked "
               "(fastest that fits --memory-cap first) and the winner's grid; "
               "--csv/--svg/--trace write the winner");
  app.add_option("--activation-bytes", options.activation_bytes,
                 "--search: bytes one rank's share keeps per microbatch from F to B/I "
                 "(suffixes K, M, G, T: powers of 1024; with the default 1G, a peak in GiB "
                 "reads as a number of shares' activations)")
      ->capture_default_str();
  app.add_option("--w-bytes", options.w_bytes,
                 "--search: bytes one rank's share keeps per microbatch from I to W "
                 "(default: --w-fraction x --activation-bytes)");
  app.add_option("--w-fraction", options.w_fraction,
                 "--search: fraction of --activation-bytes kept from I to W, in [0, 1]")
      ->capture_default_str();
  app.add_flag("--named-only", options.named_only,
               "--search: only the named schedules, not their cost-aware versions (planned for "
               "--costs/--latency/--memory-cap), memory knobs and squeezed versions");
  app.add_option("--memory-cap", options.memory_cap,
                 "--search: per-rank cap on those bytes, e.g. 512M, 2G; 0 = no cap")
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  try {
    return run(options);
  } catch (const pipetrain::InvalidArgument& e) {
    std::cerr << "pipetrain-schedule: " << e.what() << "\n";
    return 1;
  } catch (const pipetrain::Error& e) {
    std::cerr << "pipetrain-schedule: " << e.what() << "\n";
    return 1;
  } catch (const std::bad_alloc&) {
    // Sizes are checked before allocation (ScheduleLimits), so this means the machine itself
    // is short of memory.
    std::cerr << "pipetrain-schedule: out of memory (std::bad_alloc); the limits on sizes are in "
                 "ScheduleLimits (include/pipetrain/schedule/schedule.h)\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "pipetrain-schedule: unexpected error: " << e.what() << "\n";
    return 1;
  } catch (...) {
    std::cerr << "pipetrain-schedule: unexpected error of unknown type\n";
    return 1;
  }
}
