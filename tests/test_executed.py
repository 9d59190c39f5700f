"""Scan what a notebook run leaves behind for the real credentials the lab generated.

Run after the notebook series (scripts/test.sh does): VSOLAB_EXECUTED names the folder of
executed notebooks, VSOLAB_RECORDED the values tests/record_secrets.py saw during the run.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

EXECUTED = Path(os.environ.get("VSOLAB_EXECUTED", "artifacts/executed"))
RECORDED = Path(os.environ.get("VSOLAB_RECORDED", "artifacts/recorded-secrets.json"))
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not RECORDED.exists() or not EXECUTED.exists(),
                                reason="run after the notebook series (scripts/test.sh records the values)")


def secrets() -> list[str]:
    values = [v for v in json.loads(RECORDED.read_text()) if len(v) >= 8]
    assert values, "the recorder saw no credentials: the scan would prove nothing"
    return values


def test_recorder_saw_every_kind_of_credential():
    values = secrets()
    ran = {p.name[:2] for p in EXECUTED.glob("[0-9]*.ipynb")}
    if ran & {"03", "13"}:  # the notebooks that make dynamic PostgreSQL credentials
        assert any(v.startswith("v-kubernet") for v in values), "no dynamic PostgreSQL username was recorded"
    if "08" in ran:  # VaultPKISecret: the certificate's private key, whole and line by line
        assert any("PRIVATE KEY-----" in v for v in values), "no PKI private key was recorded"
    assert len(values) >= 5


@pytest.mark.parametrize("nb", sorted(EXECUTED.glob("[0-9]*.ipynb")) or [None], ids=lambda p: getattr(p, "name", "none"))
def test_no_credential_in_executed_notebook_or_widget_state(nb):
    assert nb is not None, f"no executed notebooks in {EXECUTED}"
    text = nb.read_text()
    doc = json.loads(text)
    widget_state = json.dumps(doc.get("metadata", {}).get("widgets", {}))
    for value in secrets():
        assert value not in text, f"{nb.name} contains a generated credential"
        assert value not in widget_state


def _log_files() -> list[Path]:
    """The lab's own logs (every component's, and every container's that the node agent kept: the operator's, the
    app's), from its state directory (VSOLAB_STATE) or as copied beside the executed notebooks (``lab-logs/``: the
    learner's path purges its lab), and this run's logs beside them (papermill's and pytest's output of each track)."""
    state = os.environ.get("VSOLAB_STATE")
    dirs = [Path(state) / "logs"] if state else []
    files = [p for d in [*dirs, EXECUTED / "lab-logs"] if d.is_dir() for p in d.rglob("*") if p.is_file()]
    return sorted(files) + sorted(EXECUTED.parent.glob("*.log"))


def test_no_credential_in_the_labs_logs_or_the_runs_logs():
    """Secrets never reach a log. Database usernames are left out: PostgreSQL logs a failed login by its user's
    name, as it does on any server, and a username alone opens nothing."""
    usernames = RECORDED.with_name(RECORDED.stem + "-usernames.json")
    names = set(json.loads(usernames.read_text())) if usernames.exists() else set()
    values = [v for v in secrets() if v not in names]
    files = _log_files()
    assert files, "no log to scan: the lab's state directory and the run's logs are both missing"
    leaked = []
    for path in files:
        if path.stat().st_size < 50_000_000:
            text = path.read_text(errors="ignore")
            leaked += [f"{path.name}: {v[:4]}… ({len(v)} chars)" for v in values if v in text]
    assert not leaked, f"generated credentials found in logs: {leaked}"


def test_status_output_has_no_credential(tmp_path):
    out = subprocess.run(["python3", "-m", "labkit", "status"], capture_output=True, text=True).stdout
    status_file = EXECUTED.parent / "status.txt"
    text = out + (status_file.read_text() if status_file.exists() else "")
    for value in secrets():
        assert value not in text


def test_no_credential_in_files_the_kit_wrote_into_the_repository():
    tracked_or_new = subprocess.run(["git", "ls-files", "--others", "--cached", "--exclude-standard"], cwd=REPO,
                                    capture_output=True, text=True).stdout.split()
    values = secrets()
    for rel in tracked_or_new:
        p = REPO / rel
        if p.is_file() and p.stat().st_size < 5_000_000:
            text = p.read_text(errors="ignore")
            for value in values:
                assert value not in text, f"{rel} contains a generated credential"
