#!/usr/bin/env bash
# Run the suites that once failed at random, N times in a row on one machine, and count the passes.
#   scripts/repeat-suites.sh [N] [pytest files...]     (default: 5 × test_bad_input, test_faults, test_security)
set -uo pipefail
cd "$(dirname "$0")/.."
n="${1:-5}"; shift || true
files=("$@"); [ ${#files[@]} -eq 0 ] && files=(tests/test_bad_input.py tests/test_faults.py tests/test_security.py)
passed=0
for i in $(seq 1 "$n"); do
  start=$(date +%s)
  if python3 -m pytest -q -p no:cacheprovider "${files[@]}" > "/tmp/repeat-suites.$i.log" 2>&1; then
    passed=$((passed + 1)); result=passed
  else
    result="FAILED (log: /tmp/repeat-suites.$i.log)"
  fi
  echo "run $i/$n: $result in $(( $(date +%s) - start ))s — $(tail -1 "/tmp/repeat-suites.$i.log")"
done
echo "$passed passed, $((n - passed)) failed"
[ "$passed" -eq "$n" ]
