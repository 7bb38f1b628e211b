#!/usr/bin/env bash
# bench/inprocess_vs_mpi.sh [PAIRS] [BUILD_DIR]: train_gpt's tokens/s at P=2 with the
# in-process transport (threads of one process) against the MPI transport (2 processes), in
# interleaved runs so that both see the same machine load; also the in-process run with
# PIPETRAIN_CPU_THREADS=<cores>, i.e. every rank asking OpenBLAS for every core (what pipetrain
# did before the transports divided the cores). Prints one row per run and the median ratios.
# A run's tokens/s is that of steps first+1 .. last, from the timestamps of rank 0's log lines
# at steps `first` and `last` (each line is written when its step is done): one step's own
# figure (the log line's) moved by a quarter between runs of the same build here, and the last
# step's line also waits for the final validation, so the run goes one step beyond `last`.
set -euo pipefail
pairs=${1:-3}
build=${2:-build}
exe=$build/examples/train_gpt
cores=$(nproc)
first=10 last=30
seq_len=64 batch=16
args=(--schedule 1f1b --layers 4 --pipeline 2 --microbatches 4 --steps $((last + 1))
      --log-every "$first" --channels 128 --seq "$seq_len" --batch "$batch" --eval-every 1000
      --sample-len 0)
(( last % first == 0 )) || { echo "inprocess_vs_mpi.sh: last=$last must be a multiple of first=$first" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
unset OPENBLAS_NUM_THREADS OMP_NUM_THREADS PIPETRAIN_CPU_THREADS
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# measure NAME COMMAND...: runs COMMAND and prints its tokens/s over steps first+1 .. last, read
# from lines "[hh:mm:ss.mmm] [info] [rank 0] step N/M ..."; on failure, says which run and shows
# the end of its output.
measure() {
  local name=$1
  shift
  if ! "$@" > "$log" 2>&1; then
    echo "inprocess_vs_mpi.sh: the $name run failed; the end of its output:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
  python3 - "$log" "$first" "$last" "$((seq_len * batch))" "$name" <<'PY' || { tail -n 20 "$log" >&2; exit 1; }
import re, sys
first, last, tokens_per_step = (int(x) for x in sys.argv[2:5])
t = {}
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"\[(\d+):(\d+):(\d+\.\d+)\] .*\[rank 0\] step (\d+)/", line)
    if m:
        h, mi, s, step = m.groups()
        t[int(step)] = int(h) * 3600 + int(mi) * 60 + float(s)
if first not in t or last not in t:
    sys.exit(f"inprocess_vs_mpi.sh: the {sys.argv[5]} run logged no line for step {first} or {last}")
seconds = (t[last] - t[first]) % 86400  # a run across midnight
print(round((last - first) * tokens_per_step / seconds))
PY
}

printf '%-5s %14s %14s %22s\n' run inprocess mpi "inprocess all-cores"
ins=() mpis=() olds=()
for i in $(seq "$pairs"); do
  a=$(measure inprocess "$exe" "${args[@]}")
  b=$(measure mpi mpirun --oversubscribe -n 2 "$exe" --transport mpi "${args[@]}")
  c=$(measure "inprocess all-cores" env PIPETRAIN_CPU_THREADS="$cores" "$exe" "${args[@]}")
  printf '%-5s %14s %14s %22s\n' "$i" "$a" "$b" "$c"
  ins+=("$a") mpis+=("$b") olds+=("$c")
done
python3 - "${ins[*]}" "${mpis[*]}" "${olds[*]}" <<'PY'
import statistics, sys
ins, mpis, olds = ([float(x) for x in a.split()] for a in sys.argv[1:4])
r1 = statistics.median(i / m for i, m in zip(ins, mpis))
r2 = statistics.median(i / o for i, o in zip(ins, olds))
print(f"median of paired ratios: inprocess / mpi = {r1:.3f}, inprocess / inprocess-all-cores = {r2:.3f}")
PY
