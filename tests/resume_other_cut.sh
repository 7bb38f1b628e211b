#!/usr/bin/env bash
# resume_other_cut.sh DIR -- TRAIN_GPT ARGS...: trains with --pipeline 2 (1F1B), saving a
# checkpoint after every step into DIR, then resumes from the step-1 checkpoint with
# --pipeline 4 --schedule zb-h1. Passes when the resumed run logs that the cut changed and ends
# with the same (printed) loss as the uninterrupted run. ARGS must hold --steps N with N >= 2.
set -u
if [ "$#" -lt 3 ] || [ "$2" != "--" ]; then
  echo "usage: resume_other_cut.sh DIR -- TRAIN_GPT ARGS..." >&2
  exit 2
fi
dir=$1
shift 2
rm -rf "$dir"
first=$("$@" --pipeline 2 --schedule 1f1b --save-dir "$dir" --save-every 1 2>&1) || {
  printf '%s\n' "$first"
  echo "resume_other_cut: the first run failed" >&2
  exit 1
}
printf '%s\n' "$first"
second=$("$@" --pipeline 4 --schedule zb-h1 --resume "$dir/step-1" 2>&1) || {
  printf '%s\n' "$second"
  echo "resume_other_cut: the resumed run failed" >&2
  exit 1
}
printf '%s\n' "$second"
if ! printf '%s\n' "$second" | grep -Eq "resumed from .*step-1 at step 1, pipeline cut changed: 2 -> 4 stages"; then
  echo "resume_other_cut: the resumed run does not say that the cut changed" >&2
  exit 1
fi
last_loss() { printf '%s\n' "$1" | grep -Eo 'step ([0-9]+)/\1 loss [0-9.]+' | tail -n 1; }
want=$(last_loss "$first")
got=$(last_loss "$second")
if [ -z "$want" ] || [ "$want" != "$got" ]; then
  echo "resume_other_cut: last step '$got' after the resume, '$want' without it" >&2
  exit 1
fi
echo "resume_other_cut: '$got' on both cuts"
