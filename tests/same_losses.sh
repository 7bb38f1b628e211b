#!/usr/bin/env bash
# Usage: same_losses.sh TOLERANCE -- CMD_A... -- CMD_B...
# Runs both commands, takes every "loss <number>" they print (stdout and stderr, in order), and
# fails unless both
# print the same count (at least one) and each pair differs by at most TOLERANCE (relative).
set -euo pipefail
tol=$1; shift; [[ $1 == -- ]] && shift
a=(); while [[ $# -gt 0 && $1 != -- ]]; do a+=("$1"); shift; done; shift
b=("$@")
out_a=$("${a[@]}" 2>&1) || { echo "command A failed:"; echo "$out_a"; exit 1; }
out_b=$("${b[@]}" 2>&1) || { echo "command B failed:"; echo "$out_b"; exit 1; }
echo "--- A: ${a[*]}"; echo "$out_a"; echo "--- B: ${b[*]}"; echo "$out_b"
losses() { grep -oE 'loss [-+0-9.eE]+' <<< "$1" | awk '{print $2}'; }
paste <(losses "$out_a") <(losses "$out_b") | awk -v tol="$tol" '
  NF != 2 { print "different number of losses"; bad = 1; next }
  { n++; d = $1 - $2; if (d < 0) d = -d; s = $2 < 0 ? -$2 : $2; if (s < 1) s = 1
    if (d > tol * s) { printf "loss %d differs: %s vs %s\n", n, $1, $2; bad = 1 } }
  END { if (n == 0) { print "no losses printed"; bad = 1 } if (bad) exit 1; print n " losses agree" }'
