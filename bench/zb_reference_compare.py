#!/usr/bin/env python3
"""pipetrain's schedules against the zero-bubble authors' own schedulers, at the same memory.

A benchmark, never run in CI. It needs a checkout of sail-sg/zero-bubble-pipeline-parallelism
(passed as an argument, read at run time, never copied here) and a built pipetrain-schedule:

    python3 bench/zb_reference_compare.py --repo /path/to/zero-bubble-pipeline-parallelism \
        --tool build-minimal/tools/pipetrain-schedule

For every P, M and set of costs it runs the repository's V-Half and V-Min (zbv_greedy.py), its
ZB-V (zbv.py) and its ZB-H1/ZB-H2 heuristic (zb.py's initial_solution), turns their per-rank orders
into pipetrain's CSV form and has pipetrain-schedule simulate them, so that every makespan and
peak below comes from one simulator. It cross-checks each makespan with the one the repository
computes for its own schedule. Then it runs `pipetrain-schedule --search` with a memory cap equal
to the repository schedule's peak and prints, per row, pipetrain's best schedule at that memory
and its named and cost-aware schedule of the same family.

Units: times are those of one rank's share of the model (F = 1 for uniform costs); a V stage is
half a share and costs half. Memory is the peak over ranks of what a rank holds from F until W
(the papers' accounting: +1 at F, -1 at W), in shares' activations for one microbatch, the unit
in which 1F1B's peak is P. Transfers are free unless --latency is given.

Standard library only on this side; the repository's scheduler files import a few names from
megatron, torch and pulp, which are stubbed (the functions used here do not need them).
"""

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import types

SCHED_DIR = "megatron/core/pipeline_parallel/zerobubble/scheduler"
PKG = "megatron.core.pipeline_parallel.zerobubble.scheduler"

# Per-share times F, B, I, W (B: the full backward, used by the schedules without a split).
COSTS = {
    "uniform 1:1:1": (1.0, 2.0, 1.0, 1.0),
    "1:2:1": (1.0, 3.0, 2.0, 1.0),
    "H100 1.6:2.72:1.26": (1.60, 3.98, 2.72, 1.26),
    "CPU 1:1.184:0.42": (1.0, 1.608, 1.184, 0.420),
}

GIB = 1 << 30


# ---------------------------------------------------------------- the repository's schedulers


def load_repository(repo):
    """Imports graph.py, zb.py, zbv.py and zbv_greedy.py from the checkout under their own
    module names, with empty parent packages and stand-ins for torch and pulp."""
    for name in ("megatron", "megatron.core", "megatron.core.pipeline_parallel",
                 "megatron.core.pipeline_parallel.zerobubble", PKG):
        module = types.ModuleType(name)
        module.__path__ = []
        sys.modules.setdefault(name, module)
    if "torch" not in sys.modules:
        torch = types.ModuleType("torch")
        torch.Tensor = object
        sys.modules["torch"] = torch
    if "pulp" not in sys.modules:
        pulp = types.ModuleType("pulp")
        pulp.value = lambda x: x
        sys.modules["pulp"] = pulp
    loaded = {}
    for name in ("graph", "zb", "zbv", "zbv_greedy"):
        path = os.path.join(repo, SCHED_DIR, name + ".py")
        if not os.path.isfile(path):
            sys.exit(f"zb_reference_compare: {path} not found: --repo must be a checkout of "
                     "sail-sg/zero-bubble-pipeline-parallelism")
        spec = importlib.util.spec_from_file_location(f"{PKG}.{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        loaded[name] = module
    return loaded


def v_stage(p, rank, chunk):
    """pipetrain's V placement: rank r holds stage r (chunk 0) and 2P-1-r (chunk 1)."""
    return rank if chunk == 0 else 2 * p - 1 - rank


def repo_v_greedy(mods, p, m, stage_cost, latency, mode):
    """V-Half ('half') or V-Min ('min') from zbv_greedy.py. Its reorder works on the unit grid
    whatever the costs (the repository's runtime also calls it with costs 1000:1000:1000), so
    the order is cost-independent; the costs only time it. Returns (rows, repo_time)."""
    f, i, w = stage_cost
    graph = mods["zbv_greedy"].PipelineGraph(p, m, mode, f, i, w, latency)
    pattern = {"min": graph.stable_pattern_v_min, "half": graph.stable_pattern_v_half}[mode](p)
    repo_time, _, stage_order = graph.schedule_from_pattern(
        pattern, m, [f, f, i, i, w, w], do_reorder=True)
    # Types: 0 F chunk 0, 1 F chunk 1, 2 I chunk 1, 3 I chunk 0, 4 W chunk 1, 5 W chunk 0.
    kinds = "FFIIWW"
    chunks = [0, 1, 1, 0, 1, 0]
    rows = [[f"{v_stage(p, r, chunks[t])}{kinds[t]}{mb}" for t, mb in stage_order[r]]
            for r in range(p)]
    return rows, repo_time


def repo_zbv(mods, p, m, stage_cost, latency, max_shares):
    """ZB-V from zbv.py (the four fill_b/fill_f variants of its create_schedule, best kept),
    memory +1 at F, -1 at W, limit max_shares shares (its default is P). Returns (rows,
    repo_time): its time is the work of a rank plus the largest bubble inside a rank's span."""
    f, i, w = stage_cost
    graph = mods["zbv"].PipelineGraph(p, m, f, i, w, latency, f_mem=1, b_mem=0, w_mem=-1,
                                      max_mem=2 * max_shares)
    best = None
    for fill_b in (True, False):
        for fill_f in (True, False):
            schedule, _, bubble = graph.try_v_schedule(fill_b=fill_b, fill_f=fill_f)
            if best is None or bubble < best[1]:
                best = (schedule, bubble)
    schedule, bubble = best
    rows = []
    for r in range(p):
        row = []
        for cat, chunk, mb in schedule[r]:
            # In zbv.py the backward's chunk 0 is the one that runs first, the model's chunk 1.
            model_chunk = chunk if cat == 0 else 1 - chunk
            row.append(f"{v_stage(p, r, model_chunk)}{'FIW'[cat]}{mb}")
        rows.append(row)
    return rows, 2 * m * (f + i + w) + bubble


def repo_zb(mods, p, m, stage_cost, latency, max_shares):
    """ZB-H1 (max_shares = P) or ZB-H2 (2P) from zb.py's heuristic initial_solution, which is
    all its create_schedule runs. Returns (rows, repo_time)."""
    f, i, w = stage_cost
    zb = mods["zb"]
    config = mods["graph"].GraphConfig(
        cost_f=[float(f)] * p, cost_b=[float(i)] * p, cost_w=[float(w)] * p, cost_comm=float(latency),
        mem_f=[1.0] * p, mem_b=[0.0] * p, mem_w=[-1.0] * p, max_mem=[float(max_shares)] * p,
        n_stages=p, n_micro=m)
    graph = zb.Graph.build_graph(p, m, config)
    repo_time, order, _ = zb.initial_solution(graph, print_result=False)
    rows = []
    for s in range(p):
        nodes = [(order[graph.get_id(t, s, mb)], t, mb) for t in range(3) for mb in range(m)]
        rows.append([f"{s}{'FIW'[t]}{mb}" for _, t, mb in sorted(nodes)])
    return rows, repo_time


# ---------------------------------------------------------------- pipetrain-schedule


def fmt(x):
    return f"{x:.10g}"


def simulate_rows(tool, rows, costs, v, latency, workdir):
    """Simulates a compute-only schedule given as CSV rows. Returns makespan, the longest
    rank span (first start to last end, the repository's measure) and the peak held in
    shares."""
    csv_path = os.path.join(workdir, "repo.csv")
    trace_path = os.path.join(workdir, "repo.json")
    with open(csv_path, "w") as out:
        out.write("".join(",".join(row) + "\n" for row in rows))
    f, b, i, w = (c / v for c in costs)
    run = subprocess.run(
        [tool, "--load", csv_path, "--simulate", "--costs", ",".join(map(fmt, (f, b, i, w))),
         "--latency", fmt(latency), "--trace", trace_path],
        capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"pipetrain-schedule refused the repository's schedule:\n"
                           f"{run.stderr}{run.stdout}")
    makespan = float(re.search(r"^makespan\s+(\S+)", run.stdout, re.M).group(1))
    held = re.search(r"^peak held incl\. pending W per rank:\s+(.*)$", run.stdout, re.M)
    peak_held = max(int(x) for x in held.group(1).split())
    with open(trace_path) as trace:
        events = json.load(trace)["traceEvents"]
    spans = {}
    for e in events:
        if e.get("ph") == "X":
            lo, hi = spans.get(e["pid"], (float("inf"), 0.0))
            spans[e["pid"]] = (min(lo, e["ts"]), max(hi, e["ts"] + e["dur"]))
    longest_span = max(hi - lo for lo, hi in spans.values())
    return makespan, longest_span, peak_held / v


def search(tool, p, m, costs, latency, cap_shares):
    """`pipetrain-schedule --search` with 1 GiB per share and microbatch (so a peak in GiB is
    a number of shares) and the cap in bytes. Returns the rows of its table as dicts."""
    run = subprocess.run(
        [tool, "--search", "-p", str(p), "-m", str(m), "--costs", ",".join(map(fmt, costs)),
         "--latency", fmt(latency), "--activation-bytes", str(GIB),
         "--memory-cap", str(round(cap_shares * GIB))],
        capture_output=True, text=True)
    results = []
    for line in run.stdout.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) != 7 or not cells[0].isdigit() or not cells[3]:
            continue
        peak = re.match(r"([\d.]+) (B|KiB|MiB|GiB|TiB)", cells[5])
        scale = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": GIB, "TiB": 1 << 40}
        results.append({
            "name": cells[1] + (f" ({cells[2]})" if cells[2] else ""),
            "schedule": cells[1], "knobs": cells[2], "makespan": float(cells[3]),
            "peak": float(peak.group(1)) * scale[peak.group(2)] / GIB,
            "feasible": cells[6] == "yes"})
    if not results:
        raise RuntimeError(f"pipetrain-schedule --search printed no table:\n{run.stderr}")
    return results


def best_of(results, schedule=None, knobs=None):
    """The fastest feasible result, of one schedule (and knobs) if given."""
    pick = [r for r in results if r["feasible"]
            and (schedule is None or r["schedule"] == schedule)
            and (knobs is None or r["knobs"] == knobs)]
    return min(pick, key=lambda r: r["makespan"]) if pick else None


# ---------------------------------------------------------------- the table


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", required=True,
                        help="checkout of sail-sg/zero-bubble-pipeline-parallelism")
    parser.add_argument("--tool", required=True, help="the pipetrain-schedule binary")
    parser.add_argument("--ranks", default="4,8", help="P values, comma-separated")
    parser.add_argument("--per-rank", default="2,4", help="M / P values, comma-separated")
    parser.add_argument("--latency", type=float, default=0.0, help="transfer time between ranks (not scaled with v)")
    parser.add_argument("--only", default="", help="comma-separated repository schedules to run")
    args = parser.parse_args()
    mods = load_repository(args.repo)
    wanted = set(filter(None, args.only.split(",")))

    # name, family in pipetrain, stages per rank, builder
    repo_schedules = [
        ("V-Half", "v-half", 2, lambda p, m, c, l: repo_v_greedy(mods, p, m, c, l, "half")),
        ("V-Min", "v-min", 2, lambda p, m, c, l: repo_v_greedy(mods, p, m, c, l, "min")),
        ("ZB-V", "zb-v", 2, lambda p, m, c, l: repo_zbv(mods, p, m, c, l, p)),
        ("ZB-H1", "zb-h1", 1, lambda p, m, c, l: repo_zb(mods, p, m, c, l, p)),
        ("ZB-H2", "zb-h2", 1, lambda p, m, c, l: repo_zb(mods, p, m, c, l, 2 * p)),
    ]
    print("| P | M | F:I:W | repo schedule | repo makespan (its own figure) | peak | pipetrain same "
          "family: named / cost-aware | pipetrain best at that peak | its makespan | its peak "
          "| best / repo |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    mismatches = []
    worst = (0.0, None)
    with tempfile.TemporaryDirectory() as workdir:
        for p in map(int, args.ranks.split(",")):
            for m in (k * p for k in map(int, args.per_rank.split(","))):
                for cost_name, costs in COSTS.items():
                    f, _, i, w = costs
                    for name, family, v, build in repo_schedules:
                        if wanted and name not in wanted:
                            continue
                        try:
                            rows, repo_time = build(p, m, (f / v, i / v, w / v), args.latency)
                        except (AssertionError, ValueError) as e:
                            print(f"| {p} | {m} | {cost_name} | {name} | failed in the "
                                  f"repository: {type(e).__name__} {e} |||||||")
                            continue
                        makespan, span, peak = simulate_rows(
                            args.tool, rows, costs, v, args.latency, workdir)
                        if abs(span - repo_time) > 1e-6 * max(1, span):
                            mismatches.append(f"{name} P={p} M={m} {cost_name}: repository "
                                              f"{repo_time:.6g}, pipetrain's span {span:.6g}")
                        results = search(args.tool, p, m, costs, args.latency, peak)
                        best = best_of(results)
                        named = best_of(results, family, "")
                        aware = best_of(results, family, "costs")
                        same = " / ".join("-" if r is None else f"{r['makespan']:.6g}"
                                          for r in (named, aware))
                        own = "" if abs(makespan - repo_time) < 1e-9 else f" ({repo_time:.6g})"
                        if best is None:
                            tail = "none fits | | | |"
                        else:
                            ratio = best["makespan"] / makespan
                            if ratio > worst[0]:
                                worst = (ratio, f"{name} P={p} M={m} {cost_name}")
                            tail = (f"{best['name']} | {best['makespan']:.6g} | "
                                    f"{best['peak']:.6g} | {ratio:.3f} |")
                        print(f"| {p} | {m} | {cost_name} | {name} | {makespan:.6g}{own} | "
                              f"{peak:.6g} | {same} | {tail}", flush=True)
    print()
    print("repository's own time (longest rank span) vs pipetrain's simulation of the same "
          "order: " + ("all agree" if not mismatches else f"{len(mismatches)} differ"))
    for line in mismatches:
        print("  " + line)
    if worst[1]:
        print(f"largest best/repo ratio: {worst[0]:.3f} ({worst[1]})")


if __name__ == "__main__":
    main()
