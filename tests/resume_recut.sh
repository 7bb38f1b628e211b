#!/usr/bin/env bash
# resume_recut.sh DIR -- TRAIN_GPT ARGS...: issue 10, finding 6. Trains with --pipeline 2,
# saving every step into DIR (and a stale staging folder is planted there); resumes from step-1
# with --pipeline 4 and the same --save-dir, so both runs save step 2 and 3. Passes when every
# saved step still resumes (step-3 and step-3-stages-4), `--resume latest` picks the P=4 save,
# a missing --resume says it does not exist, and no ".tmp" entry is left.
# ARGS must hold --steps 3.
set -u
if [ "$#" -lt 3 ] || [ "$2" != "--" ]; then
  echo "usage: resume_recut.sh DIR -- TRAIN_GPT ARGS..." >&2
  exit 2
fi
dir=$1
shift 2
rm -rf "$dir"
mkdir -p "$dir/step-2.tmp-2" && echo half > "$dir/step-2.tmp-2/stage-0-of-2.ckpt.tmp"
run() {
  out=$("$@" 2>&1) || { printf '%s\n' "$out"; echo "resume_recut: failed: $*" >&2; exit 1; }
  printf '%s\n' "$out"
}
expect() {
  printf '%s\n' "$out" | grep -Eq "$1" || { echo "resume_recut: no '$1' in the output" >&2; exit 1; }
}
run "$@" --pipeline 2 --schedule 1f1b --save-dir "$dir" --save-every 1
run "$@" --pipeline 4 --schedule zb-h1 --resume "$dir/step-1" --save-dir "$dir" --save-every 1
expect "saved .*step-3-stages-4 \(step-3 holds a checkpoint of another cut\)"
run "$@" --pipeline 2 --resume "$dir/step-3"
expect "resumed from .*step-3 at step 3$"
run "$@" --pipeline 2 --resume latest --save-dir "$dir"
expect "resumed from .*step-3-stages-4 at step 3, pipeline cut changed: 4 -> 2 stages"
if ls "$dir" "$dir"/* | grep -q '\.tmp'; then
  ls -R "$dir"
  echo "resume_recut: a .tmp entry was left" >&2
  exit 1
fi
out=$("$@" --pipeline 2 --resume "$dir/step-9" 2>&1) && { echo "resume_recut: step-9 resumed" >&2; exit 1; }
expect "'.*step-9': does not exist"
echo "resume_recut: every saved step resumes"
