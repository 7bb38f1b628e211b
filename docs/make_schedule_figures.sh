#!/usr/bin/env bash
# Regenerates the pictures and the table of docs/schedules.md with the pipetrain-schedule tool.
#   docs/make_schedule_figures.sh [build-dir]     (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
tool="${1:-build}/tools/pipetrain-schedule"
out=docs/schedules
mkdir -p "$out"
for name in gpipe 1f1b zb-h1 zb-h2 zb-v dualpipe-v dualpipe-v-overlap v-half v-min; do
  "$tool" --schedule "$name" --ranks 4 --microbatches 8 --quiet --svg "$out/$name.svg"
done
for name in interleaved-1f1b looped-bfs; do
  "$tool" --schedule "$name" --ranks 4 --microbatches 8 --stages-per-rank 2 --quiet --svg "$out/$name.svg"
done
"$tool" --table --ranks 4 --microbatches 8 --stages-per-rank 2
"$tool" --table --ranks 8 --microbatches 32 --stages-per-rank 2
echo "wrote $out"
