#!/usr/bin/env bash
# Set everything up and run every test: lint, unit, the local lab with real processes, the backend contract,
# the browser, the README's main command (scripts/lab.sh) in a browser, the learner's path (every notebook in
# JupyterLab in headless Chromium at its defaults, solutions typed; in the background, beside what follows), then the
# tutorial's notebook series (00-07) twice (papermill, then nbval) and, beside it on a lab of its own, the notebooks
# beyond the tutorial (08-13: features and troubleshooting drills, papermill then nbval), then the tutorial on
# the external backend for two attendees side by side, and a leak scan of every run. Whatever happens, the labs this
# script started are stopped on exit.
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS=0
./scripts/setup.sh || exit 1
ART="${VSOLAB_ARTIFACTS:-$PWD/artifacts}"; mkdir -p "$ART"; export VSOLAB_ARTIFACTS="$ART"
export VSOLAB_STATE="${VSOLAB_STATE:-$(mktemp -d /tmp/vsolab-ci.XXXXXX)/state}"
status=0
recorder=""
learner=""
learner_beyond=""
unprivileged=""
hub=""
beyond=""
BEYOND_STATE="$(dirname "$VSOLAB_STATE")/beyond"
TUTORIAL=(00 01 02 03 04 05 06 07)
BEYOND=(08 09 10 11 12 13)
ext_pids=()
cleanup() {  # on any exit, Ctrl-C included: no lab, no recorder and no notebook run left behind
  [ -n "$recorder" ] && kill "$recorder" 2>/dev/null
  [ -n "$learner" ] && kill "$learner" 2>/dev/null
  [ -n "$learner_beyond" ] && kill "$learner_beyond" 2>/dev/null
  [ -n "$unprivileged" ] && kill "$unprivileged" 2>/dev/null
  [ -n "$hub" ] && kill "$hub" 2>/dev/null
  [ -n "$beyond" ] && kill "$beyond" 2>/dev/null
  python3 -m labkit --state "$BEYOND_STATE" down --purge >/dev/null 2>&1
  for p in "${ext_pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
  python3 -m labkit down --purge >/dev/null 2>&1
}
trap cleanup EXIT
trap 'exit 130' INT TERM
pytest_step() {  # pytest exit 5 means "no tests collected": not a failure here
  python3 -m pytest "$@"; local rc=$?
  [ $rc -eq 5 ] && rc=0
  [ $rc -ne 0 ] && status=1
  return 0
}
step() { printf '\n== %s  [%s, %dm%02ds since the start]\n' "$*" "$(date +%T)" $((SECONDS / 60)) $((SECONDS % 60)); }

step "lint"; python3 -m ruff check labkit tests benchmarks || status=1
step "type check (mypy over labkit/ and benchmarks/)"; python3 -m mypy && MYPYPATH=tests python3 -m mypy benchmarks || status=1
step "the unprivileged path, started in the background: a learner's account with its own venv and the shared cache read-only runs up, the CI series and down (log: $ART/unprivileged.log)"
# Its own user, lab and venv; mostly waiting on the series' TTLs, so it runs beside the unit tests (collected after them).
python3 -m pytest -q -p no:cacheprovider -m unprivileged tests/test_unprivileged.py --junitxml="$ART/junit-unprivileged.xml" \
  > "$ART/unprivileged.log" 2>&1 & unprivileged=$!
step "unit and integration tests (two workers; a test module, or a test class, is one unit of work)"
pytest_step -q -p no:cacheprovider -n 2 --dist loadscope tests -m "not learner" --ignore=tests/test_executed.py --ignore=tests/test_main_command.py \
  --ignore=tests/test_install_mirror.py --ignore=tests/test_unprivileged.py --ignore=tests/test_jupyterhub.py --durations=25 --junitxml="$ART/junit.xml"
step "labkit install from a local release mirror (loopback HTTP, made from the built binaries): prebuilt, a corrupted archive refused, a missing one built"
pytest_step -q -p no:cacheprovider tests/test_install_mirror.py --junitxml="$ART/junit-install-mirror.xml"
step "the unprivileged path (started above): its result"
wait "$unprivileged"; rc=$?; unprivileged=""
[ $rc -ne 0 ] && [ $rc -ne 5 ] && status=1
tail -n 25 "$ART/unprivileged.log"
step "JupyterHub, started in the background: jupyterhub/jupyterhub_config.py as root on loopback, two attendees log in in headless Chromium, each runs notebook 00 as their own Unix user in a lab of their own, neither can read the other's (log: $ART/jupyterhub-test.log; the hub's: $ART/jupyterhub.log)"
# Two labs of its own, mostly waiting on them: beside the steps below, collected before the leak scan.
python3 -m pytest -q -s -p no:cacheprovider -m hub tests/test_jupyterhub.py --junitxml="$ART/junit-jupyterhub.xml" \
  > "$ART/jupyterhub-test.log" 2>&1 & hub=$!
step "the README's main command: scripts/lab.sh in the background, notebook 00 in headless Chromium, a clean stop"
pytest_step -q -p no:cacheprovider tests/test_main_command.py --junitxml="$ART/junit-main-command.xml"
step "the learner's path, started in the background: the tutorial's notebooks 00-07 in JupyterLab in headless Chromium at their defaults, each exercise's solution typed into its cell (a lab of its own; saved notebooks in $ART/browser; log: $ART/learner.log)"
# Most of its time is the defaults' TTLs and live views (minutes of waiting for a renewal and a rotation), so it runs
# beside the series below, on a lab of its own; its result is collected after them.
VSOLAB_LEARNER_NOTEBOOKS="${TUTORIAL[*]}" python3 -m pytest -q -s -p no:cacheprovider -m learner tests/test_learner_browser.py \
  --junitxml="$ART/junit-learner.xml" > "$ART/learner.log" 2>&1 & learner=$!
step "the learner's path beyond the tutorial, started in the background: notebooks 08-13 the same way, on a lab of their own (saved notebooks in $ART/learner-beyond/browser; log: $ART/learner-beyond.log)"
mkdir -p "$ART/learner-beyond"
VSOLAB_LEARNER_NOTEBOOKS="${BEYOND[*]}" VSOLAB_ARTIFACTS="$ART/learner-beyond" python3 -m pytest -q -s -p no:cacheprovider -m learner \
  tests/test_learner_browser.py --junitxml="$ART/junit-learner-beyond.xml" > "$ART/learner-beyond.log" 2>&1 & learner_beyond=$!

beyond_track() {  # notebooks 08-13 on a lab of their own, from nothing: papermill, then nbval; its own recorder
  export VSOLAB_STATE="$BEYOND_STATE"
  python3 -m labkit up >/dev/null || { echo "labkit up failed for the notebooks beyond the tutorial" >&2; return 1; }
  python3 tests/record_secrets.py "$ART/recorded-secrets-beyond.json" & local rec=$!
  python3 -m labkit run-notebooks --ci --only "${BEYOND[@]}" --output "$ART/executed-beyond"; local rc=$?
  if [ $rc -eq 0 ]; then
    echo "== nbval over the executed notebooks 08-13, on the same lab"
    VSOLAB_CI=1 python3 -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
      --nbval-sanitize-with tests/nbval-sanitize.cfg "$ART"/executed-beyond/[0-9]*.ipynb; rc=$?
  fi
  kill "$rec" 2>/dev/null; wait "$rec" 2>/dev/null
  python3 -m labkit status > "$ART/status-beyond.txt" 2>&1
  echo "== leak scan of this lab's logs, before it is purged"
  VSOLAB_EXECUTED="$ART/executed-beyond" VSOLAB_RECORDED="$ART/recorded-secrets-beyond.json" \
    python3 -m pytest -q -p no:cacheprovider tests/test_executed.py -k logs || rc=1
  python3 -m labkit down --purge >/dev/null 2>&1
  return $rc
}
step "the notebooks beyond the tutorial (08-13), started in the background on a lab of their own: papermill at CI parameters with a secret recorder, then nbval (log: $ART/beyond.log)"
( beyond_track ) > "$ART/beyond.log" 2>&1 & beyond=$!
step "the tutorial's notebooks (00-07), first run (papermill, CI parameters) with a secret recorder"
if ! python3 -m labkit up; then
  echo "labkit up failed: the notebooks are not run (see the paragraph above)" >&2
  exit 1
fi
python3 tests/record_secrets.py "$ART/recorded-secrets.json" & recorder=$!
python3 -m labkit run-notebooks --ci --only "${TUTORIAL[@]}" --output "$ART/executed" || status=1
step "the tutorial's notebooks, second run on the same lab (nbval --nbval-lax over the executed notebooks)"
VSOLAB_CI=1 pytest_step -q -p no:cacheprovider --nbval-lax --nbval-current-env \
  --nbval-sanitize-with tests/nbval-sanitize.cfg "$ART"/executed/[0-9]*.ipynb
# The learner's defaults (the TTLs and live views a learner gets, each exercise's solution typed in) ran above, in
# JupyterLab in headless Chromium: the same series papermill would run at those parameters, and what a browser shows.
step "notebooks on the external backend over this lab (VSO as its Helm release, the team's): alice- and bob- take the tutorial, carol- the notebooks beyond it, side by side"
# Each attendee gets only what `labkit env` prints for this lab plus a prefix and a state directory of its own
# (tests/_external_on_local.py); both series run at once against the one cluster, Vault, database and operator.
if python3 -m labkit up >/dev/null; then  # up installs the release again (notebook 07 uninstalled it)
  for who in alice bob carol; do  # alice and bob take the tutorial, carol the notebooks beyond it, at once
    if [ "$who" = carol ]; then only=("${BEYOND[@]}"); else only=("${TUTORIAL[@]}"); fi
    ( exports="$(python3 tests/_external_on_local.py "$who" "$(dirname "$VSOLAB_STATE")/external-$who")" &&
      eval "$exports" &&
      python3 -m labkit run-notebooks --ci --backend external --only "${only[@]}" --output "$ART/executed-external-$who" ) \
      > "$ART/external-$who.log" 2>&1 &
    ext_pids+=("$!")
  done
  for p in "${ext_pids[@]}"; do wait "$p" || status=1; done
  ext_pids=()
  for who in alice bob carol; do printf -- '-- %s (log: %s)\n' "$who" "$ART/external-$who.log"; tail -n 12 "$ART/external-$who.log"; done
else
  echo "the lab did not come up with VSO as a Helm release: the external series did not run" >&2; status=1
fi
kill "$recorder" 2>/dev/null; wait "$recorder" 2>/dev/null; recorder=""
step "the notebooks beyond the tutorial (started above): their result"
wait "$beyond" || status=1; beyond=""
grep -E '^\| |passed|failed' "$ART/beyond.log" | tail -n 14
step "the learner's path (started above): its result"
wait "$learner"; rc=$?; learner=""
[ $rc -ne 0 ] && [ $rc -ne 5 ] && status=1
tail -n 40 "$ART/learner.log"
step "the learner's path beyond the tutorial (started above): its result"
wait "$learner_beyond"; rc=$?; learner_beyond=""
[ $rc -ne 0 ] && [ $rc -ne 5 ] && status=1
tail -n 30 "$ART/learner-beyond.log"
step "JupyterHub (started above): its result"
wait "$hub"; rc=$?; hub=""
[ $rc -ne 0 ] && [ $rc -ne 5 ] && status=1
tail -n 25 "$ART/jupyterhub-test.log"
step "leak scan of executed notebooks (both runs), widget state, status output and logs"
python3 -m labkit status > "$ART/status.txt" 2>&1
VSOLAB_EXECUTED="$ART/executed" VSOLAB_RECORDED="$ART/recorded-secrets.json" pytest_step -q -p no:cacheprovider tests/test_executed.py
for who in alice bob carol; do
  VSOLAB_EXECUTED="$ART/executed-external-$who" VSOLAB_RECORDED="$ART/recorded-secrets.json" pytest_step -q -p no:cacheprovider \
    tests/test_executed.py -k "executed_notebook"
done
VSOLAB_EXECUTED="$ART/executed-beyond" VSOLAB_RECORDED="$ART/recorded-secrets-beyond.json" pytest_step -q -p no:cacheprovider \
  tests/test_executed.py -k "executed_notebook or recorder or logs"
VSOLAB_EXECUTED="$ART/browser" VSOLAB_RECORDED="$ART/browser/recorded-secrets.json" pytest_step -q -p no:cacheprovider \
  tests/test_executed.py -k "executed_notebook or recorder or logs"
VSOLAB_EXECUTED="$ART/learner-beyond/browser" VSOLAB_RECORDED="$ART/learner-beyond/browser/recorded-secrets.json" \
  pytest_step -q -p no:cacheprovider tests/test_executed.py -k "executed_notebook or recorder or logs"
step "done: $([ $status -eq 0 ] && echo passed || echo FAILED)"
exit $status
