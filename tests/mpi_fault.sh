#!/usr/bin/env bash
# mpi_fault.sh [--kill RANK | --stop RANK] [--after REGEX] --within SECONDS REGEX... -- COMMAND...
#
# Runs COMMAND (an mpirun/mpiexec line) and passes when it exits non-zero within SECONDS, its
# output (stdout and stderr together) matches every extended regular expression REGEX, and shows
# no segmentation fault. Prints the output.
#   --kill RANK   once the output matches --after, sends SIGKILL to the process of MPI rank RANK
#   --stop RANK   same with SIGSTOP (the process is killed when the test ends)
#   --after REGEX what the output must show before the signal (default: "step 1/"); waited for
#                 at most 120 s
#   --within S    seconds allowed from the signal (or from the start, without one) to the end
#                 of COMMAND; a job still running then is killed and the test FAILS as a hang
# Exit status: 0 passed, 1 wrong result (exit status or output), 2 usage, 3 hang, 4 segfault.
# The rank's process is found among COMMAND's descendants by OMPI_COMM_WORLD_RANK (or PMI_RANK)
# in its environment.
set -u
signal=""
target=-1
after="step 1/"
within=""
regexes=()
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
  case "$1" in
    --kill) signal=KILL; target=$2; shift 2 ;;
    --stop) signal=STOP; target=$2; shift 2 ;;
    --after) after=$2; shift 2 ;;
    --within) within=$2; shift 2 ;;
    *) regexes+=("$1"); shift ;;
  esac
done
if [ "$#" -lt 2 ] || [ -z "$within" ]; then
  echo "usage: mpi_fault.sh [--kill RANK | --stop RANK] [--after REGEX] --within SECONDS REGEX... -- COMMAND..." >&2
  exit 2
fi
shift
log=$(mktemp)
"$@" >"$log" 2>&1 &
job=$!

# Every descendant of a process, depth first.
descendants() {
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do
    echo "$child"
    descendants "$child"
  done
}
# The pid of MPI rank $1 among the job's descendants, empty when not (yet) found.
rank_pid() {
  local pid
  for pid in $(descendants "$job"); do
    if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null |
        grep -Eqx "(OMPI_COMM_WORLD_RANK|PMI_RANK)=$1"; then
      echo "$pid"
      return
    fi
  done
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# True when more than $2 seconds passed since $1 (milliseconds).
past() { [ $(($(now_ms) - $1)) -gt $(($2 * 1000)) ]; }

victim=""
verdict=""
start=$(now_ms)
if [ -n "$signal" ]; then
  while ! grep -Eq -- "$after" "$log"; do
    if ! kill -0 "$job" 2>/dev/null; then
      verdict="the job ended before its output matched '$after'"
      break
    fi
    if past "$start" 120; then
      verdict="the output did not match '$after' within 120 s"
      break
    fi
    sleep 0.05
  done
  if [ -z "$verdict" ]; then
    victim=$(rank_pid "$target")
    if [ -z "$victim" ]; then
      verdict="found no process of rank $target"
    else
      kill -"$signal" "$victim"
      echo "mpi_fault: sent SIG$signal to rank $target (pid $victim)"
      start=$(now_ms)
    fi
  fi
fi
# Wait for the job, at most $within seconds from now on (from the signal).
hung=0
if [ -z "$verdict" ]; then
  while kill -0 "$job" 2>/dev/null; do
    if past "$start" "$within"; then
      hung=1
      break
    fi
    sleep 0.05
  done
fi
took=$(($(now_ms) - start))
if kill -0 "$job" 2>/dev/null; then
  pids="$(descendants "$job") $job"
  kill -KILL $pids 2>/dev/null
fi
wait "$job"
status=$?
# A stopped rank may outlive mpirun: end it.
if [ -n "$victim" ] && kill -0 "$victim" 2>/dev/null; then
  kill -KILL "$victim" 2>/dev/null
fi
cat "$log"
output=$(cat "$log")
rm -f "$log"
if [ -n "$verdict" ]; then
  echo "mpi_fault: $verdict" >&2
  exit 1
fi
if [ "$hung" -eq 1 ]; then
  echo "mpi_fault: HANG: the job was still running ${within} s after ${signal:+SIG$signal to rank $target}${signal:-its start}; killed it" >&2
  exit 3
fi
if printf '%s\n' "$output" | grep -Eq "Segmentation fault|signal 11|SIGSEGV"; then
  echo "mpi_fault: SEGFAULT in the output (exit status $status)" >&2
  exit 4
fi
if [ "$status" -eq 0 ]; then
  echo "mpi_fault: the job succeeded, expected a failure" >&2
  exit 1
fi
for regex in "${regexes[@]}"; do
  if ! printf '%s\n' "$output" | grep -Eq -- "$regex"; then
    echo "mpi_fault: exit status $status, but the output does not match: $regex" >&2
    exit 1
  fi
done
printf 'mpi_fault: failed as expected (exit status %s, %d ms after %s)\n' "$status" "$took" \
  "${signal:+SIG$signal to rank $target}${signal:-the start}"
