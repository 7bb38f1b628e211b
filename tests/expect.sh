#!/usr/bin/env bash
# expect.sh failure|success [--whole] REGEX... -- COMMAND...: runs COMMAND and passes when it
# exited non-zero (failure) or 0 (success) and its output (stdout and stderr together) matches
# every extended regular expression REGEX. Each REGEX must match within one line; with --whole
# the output is taken as one text, so "." also matches a newline and a REGEX can span lines.
# Prints the output. (CTest's PASS_REGULAR_EXPRESSION alone would ignore the exit status.)
set -u
usage() {
  echo "usage: expect.sh failure|success [--whole] REGEX... -- COMMAND..." >&2
  exit 2
}
[ "$#" -ge 1 ] || usage
expected=$1
shift
case "$expected" in failure|success) ;; *) usage ;; esac
whole=()
if [ "${1:-}" = "--whole" ]; then
  whole=(-z)
  shift
fi
regexes=()
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
  regexes+=("$1")
  shift
done
[ "$#" -ge 2 ] || usage
shift
output=$("$@" 2>&1)
status=$?
printf '%s\n' "$output"
if [ "$expected" = failure ] && [ "$status" -eq 0 ]; then
  echo "expect: the command succeeded, expected a failure" >&2
  exit 1
fi
if [ "$expected" = success ] && [ "$status" -ne 0 ]; then
  echo "expect: exit status $status, expected 0" >&2
  exit 1
fi
for regex in "${regexes[@]}"; do
  if ! printf '%s\n' "$output" | grep -Eq "${whole[@]}" -- "$regex"; then
    echo "expect: exit status $status, but the output does not match: $regex" >&2
    exit 1
  fi
done
echo "expect: ${expected} as expected (exit status $status)"
