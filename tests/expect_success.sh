#!/usr/bin/env bash
# expect_success.sh REGEX... -- COMMAND...: passes when COMMAND exits 0 and its output (stdout and
# stderr together, taken as one text: "." also matches a newline) matches every extended regular
# expression REGEX. Prints the output. (CTest's PASS_REGULAR_EXPRESSION alone would ignore the
# exit status: a program that prints the right table and then crashes would pass.)
set -u
regexes=()
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
  regexes+=("$1")
  shift
done
if [ "$#" -lt 2 ]; then
  echo "usage: expect_success.sh REGEX... -- COMMAND..." >&2
  exit 2
fi
shift
output=$("$@" 2>&1)
status=$?
printf '%s\n' "$output"
if [ "$status" -ne 0 ]; then
  echo "expect_success: exit status $status, expected 0" >&2
  exit 1
fi
for regex in "${regexes[@]}"; do
  if ! printf '%s' "$output" | grep -Ezq -- "$regex"; then
    echo "expect_success: the output does not match: $regex" >&2
    exit 1
  fi
done
echo "expect_success: succeeded as expected"
