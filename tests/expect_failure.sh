#!/usr/bin/env bash
# expect_failure.sh REGEX... -- COMMAND...: passes when COMMAND exits non-zero and its output
# (stdout and stderr together) matches every extended regular expression REGEX. Prints the output.
set -u
regexes=()
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
  regexes+=("$1")
  shift
done
if [ "$#" -lt 2 ]; then
  echo "usage: expect_failure.sh REGEX... -- COMMAND..." >&2
  exit 2
fi
shift
output=$("$@" 2>&1)
status=$?
printf '%s\n' "$output"
if [ "$status" -eq 0 ]; then
  echo "expect_failure: the command succeeded, expected a failure" >&2
  exit 1
fi
for regex in "${regexes[@]}"; do
  if ! printf '%s\n' "$output" | grep -Eq -- "$regex"; then
    echo "expect_failure: exit status $status, but the output does not match: $regex" >&2
    exit 1
  fi
done
echo "expect_failure: failed as expected (exit status $status)"
