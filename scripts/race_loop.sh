#!/usr/bin/env bash
# The concurrency tests 10 times in a row (CI runs VSOLAB_RACE_ROUNDS=2): two `up` on a fresh and on a running
# lab, `up` racing `down`, two processes updating the state. Usage: scripts/race_loop.sh [rounds]
set -uo pipefail
cd "$(dirname "$0")/.."
export VSOLAB_RACE_ROUNDS="${1:-10}" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python3 -m pytest -q -p no:cacheprovider -W ignore tests/test_concurrency.py
