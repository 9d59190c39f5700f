#!/usr/bin/env bash
# The main job: set everything up, start the local lab, and open JupyterLab on the notebooks.
#   scripts/lab.sh              interactive: JupyterLab on http://127.0.0.1:8888 (extra arguments go to `labkit lab`,
#                               e.g. --port 9999); as root it says so once and passes JupyterLab --allow-root
#   scripts/lab.sh --headless   run every notebook with papermill into executed/ instead
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [ "${1:-}" = "--headless" ]; then
  python3 -m labkit up
  exec python3 -m labkit run-notebooks --output "${VSOLAB_OUTPUT:-executed}"
fi
exec python3 -m labkit lab --no-browser "$@"
