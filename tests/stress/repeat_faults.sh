#!/usr/bin/env bash
# repeat_faults.sh [-n N] [CASE...]: runs each fault case of train_gpt under mpirun N times
# (default 50) through tests/mpi_fault.sh and prints, per case, how many runs were correct, hung,
# crashed (segmentation fault) or ended otherwise wrongly. Not run by CI (minutes per case).
#
# Cases (default: all): kill2 kill4 stop2 stop4 throw2 throw4 timeout2 timeout4 (the CI tests
# example.train_gpt.mpi_fault.*, same arguments) and the commands of issue 10:
#   killN    SIGKILL to rank 1 of N ranks during training (small model, --timeout-ms 2000)
#   stopN    SIGSTOP to rank 1 of N ranks (small model, --timeout-ms 2000)
#   throwN   --pipeline N --fail-rank 0 --fail-step 3
#   timeoutN --timeout-ms 1 (full-size model on the LICENSE text)
#   finding1 issue 10 finding 1: -n 2 --pipeline 2 --timeout-ms 5000, default model, SIGSTOP
#            to rank 1
#   finding2 issue 10 finding 2: -n 2 --pipeline 2 --timeout-ms 1, default model and data (KJV)
#   finding2b issue 10 finding 2: -n 4 --pipeline 4 --fail-rank 0 --fail-step 3, default model
# Environment: BUILD (default: build), MPIRUN (default: mpirun), KEEP=1 keeps the output of
# every run that was not correct under /tmp/repeat_faults.*.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "$here/.." && pwd)
build=${BUILD:-$root/build}
mpirun=${MPIRUN:-mpirun}
n=50
if [ "${1:-}" = "-n" ]; then
  n=$2
  shift 2
fi
cases=("$@")
[ "${#cases[@]}" -gt 0 ] || cases=(kill2 kill4 stop2 stop4 throw2 throw4 timeout2 timeout4)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
train=$build/examples/train_gpt
out=$(mktemp -d /tmp/repeat_faults.XXXXXX)
cd "$root" || exit 2  # the default data cache is build/data/kjv.txt, relative to here
small=(--data "$root/LICENSE" --layers 2 --channels 32 --heads 2 --seq 32 --batch 8
       --microbatches 4 --warmup 1 --log-every 1 --out "$out/run")

layout() {  # pipeline x data-parallel for N ranks, as the CI tests
  if [ "$1" -eq 2 ]; then echo "--pipeline 2"; else echo "--pipeline 2 --data-parallel 2"; fi
}

run_case() {
  local name=$1 np=${1: -1}
  local fault=$here/mpi_fault.sh
  local mpi=("$mpirun" -n "$np" --oversubscribe "$train" --transport mpi)
  case "$name" in
    kill[24]) "$fault" --kill 1 --within 10 "rank 1 .*(signal 9|Killed)" -- \
             "${mpi[@]}" $(layout "$np") "${small[@]}" --steps 100000 --timeout-ms 2000 ;;
    stop[24]) "$fault" --stop 1 --within 10 "rank [0-9]+ timed out after 2000 ms waiting for" \
             "rank [0-9]+: ending the job with MPI_Abort" -- \
             "${mpi[@]}" $(layout "$np") "${small[@]}" --steps 100000 --timeout-ms 2000 ;;
    throw[24]) "$fault" --within 20 "error: rank 0: .*injected failure on rank 0 at step 3" \
             "aborted by rank 0" -- \
             "${mpi[@]}" --pipeline "$np" "${small[@]}" --steps 10 --fail-rank 0 --fail-step 3 \
             --timeout-ms 10000 ;;
    timeout[24]) "$fault" --within 20 "rank [0-9]+ timed out after 1 ms waiting for" -- \
             "${mpi[@]}" $(layout "$np") --data "$root/LICENSE" --out "$out/run" --steps 20 \
             --timeout-ms 1 ;;
    finding1) "$fault" --stop 1 --within 15 "rank [0-9]+ timed out after 5000 ms waiting for" -- \
             "$mpirun" -n 2 --oversubscribe "$train" --transport mpi --pipeline 2 \
             --data "$root/LICENSE" --log-every 1 --out "$out/run" --timeout-ms 5000 ;;
    finding2) "$fault" --within 30 "timed out after 1 ms" -- \
             "$mpirun" -n 2 --oversubscribe "$train" --transport mpi --pipeline 2 \
             --out "$out/run" --timeout-ms 1 ;;
    finding2b) "$fault" --within 30 "injected failure on rank 0 at step 3" -- \
             "$mpirun" -n 4 --oversubscribe "$train" --transport mpi --pipeline 4 \
             --out "$out/run" --fail-rank 0 --fail-step 3 ;;
    *) echo "repeat_faults: unknown case '$name'" >&2; return 2 ;;
  esac
}

for name in "${cases[@]}"; do
  correct=0 hang=0 segv=0 wrong=0
  for ((i = 1; i <= n; ++i)); do
    run_case "$name" >"$out/last.txt" 2>&1
    case $? in
      0) correct=$((correct + 1)); continue ;;
      3) hang=$((hang + 1)) ;;
      4) segv=$((segv + 1)) ;;
      2) cat "$out/last.txt"; exit 2 ;;
      *) wrong=$((wrong + 1)) ;;
    esac
    [ "${KEEP:-0}" = 1 ] && cp "$out/last.txt" "$out/$name.$i.txt"
  done
  printf '%-9s runs %3d  correct %3d  hang %3d  segfault %3d  other %3d\n' \
    "$name" "$n" "$correct" "$hang" "$segv" "$wrong"
done
[ "${KEEP:-0}" = 1 ] && echo "outputs of the runs that were not correct: $out" || rm -rf "$out"
