#!/usr/bin/env bash
# bench/inprocess_vs_mpi.sh [PAIRS] [BUILD_DIR]: train_gpt's tokens/s at P=2 with the
# in-process transport (threads of one process) against the MPI transport (2 processes), in
# interleaved runs so that both see the same machine load; also the in-process run with
# PIPETRAIN_CPU_THREADS=<cores>, i.e. every rank asking OpenBLAS for every core (what pipetrain
# did before the transports divided the cores). Prints one row per run and the median ratios.
# A run's tokens/s is that of steps 11 to 30 (20 steps), from the timestamps of rank 0's log
# lines at steps 10 and 30: one step's own figure (the log line's) moved by a quarter between
# runs of the same build here, and step 40's line also waits for the final validation.
set -euo pipefail
pairs=${1:-3}
build=${2:-build}
exe=$build/examples/train_gpt
cores=$(nproc)
seq=64 batch=16
args=(--schedule 1f1b --layers 4 --pipeline 2 --microbatches 4 --steps 40 --log-every 10 --channels 128
      --seq "$seq" --batch "$batch" --eval-every 1000 --sample-len 0)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
unset OPENBLAS_NUM_THREADS OMP_NUM_THREADS PIPETRAIN_CPU_THREADS

# tokens/s over steps 11..30 from lines "[hh:mm:ss.mmm] [info] [rank 0] step N/40 ...".
tokens() {
  python3 -c '
import re, sys
t = {}
for line in sys.stdin:
    m = re.match(r"\[(\d+):(\d+):(\d+\.\d+)\] .*\[rank 0\] step (\d+)/", line)
    if m:
        h, mi, s, step = m.groups()
        t[int(step)] = int(h) * 3600 + int(mi) * 60 + float(s)
if 10 not in t or 30 not in t:
    sys.exit("inprocess_vs_mpi.sh: no log lines for steps 10 and 30 in train_gpt output")
dt = (t[30] - t[10]) % 86400
print(round(20 * int(sys.argv[1]) / dt))
' "$((seq * batch))"
}
printf '%-5s %14s %14s %22s\n' run inprocess mpi "inprocess all-cores"
ins=() mpis=() olds=()
for i in $(seq "$pairs"); do
  a=$("$exe" "${args[@]}" 2>&1 | tokens)
  b=$(mpirun --oversubscribe -n 2 "$exe" --transport mpi "${args[@]}" 2>&1 | tokens)
  c=$(PIPETRAIN_CPU_THREADS=$cores "$exe" "${args[@]}" 2>&1 | tokens)
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
