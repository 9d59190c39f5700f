"""The commands a step shows next to what it did run, as shown, on the local lab.

Each step returns a ``Done`` whose ``command`` is the `vault`/`kubectl`/`curl` a learner would type. Here each
shown command runs in bash with the lab's environment (`labkit env`: `vault` is OpenBao's CLI there) and must
succeed and leave the same state.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from _params import ci_params

from labkit import connect, dynamic, vault
from labkit.stages import prepare_stage

pytestmark = pytest.mark.lab
PARAMS = ci_params()


def run_shown(lab, command: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", command], env={**os.environ, **lab.env()},
                          capture_output=True, text=True, timeout=120)  # HOME: else kubectl caches in the cwd
    assert proc.returncode == 0, f"the shown command failed:\n{command[:2000]}\n--- stderr:\n{proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def lab(local_lab):
    prepare_stage(local_lab, 4, PARAMS)
    return local_lab


def test_database_role_command_writes_the_same_role(lab) -> None:
    n = lab.names
    before = vault.read_database_role(lab, n.db_role, mount=n.db_mount)
    done = dynamic.create_db_role(lab, "41s", "97s")
    assert "@" not in done.command, done.command  # no file the learner does not have
    vault.client(lab).delete(f"{n.db_mount}/roles/{n.db_role}")
    run_shown(lab, done.command)
    after = vault.read_database_role(lab, n.db_role, mount=n.db_mount)
    assert after["creation_statements"] == dynamic.CREATION and after["revocation_statements"] == dynamic.REVOCATION
    assert (after["default_ttl"], after["max_ttl"]) == (41, 97)
    dynamic.create_db_role(lab, str(before["default_ttl"]) + "s", str(before["max_ttl"]) + "s")


def test_app_deployment_command_applies_the_manifests(lab) -> None:
    done = dynamic.deploy_app(lab)
    assert "deployment.yaml" not in done.command
    out = run_shown(lab, done.command)
    assert "unchanged" in out.stdout or "configured" in out.stdout, out.stdout


def test_token_reviewer_secret_command_applies(lab) -> None:
    done = connect.create_token_reviewer(lab)
    lines = done.command.splitlines()
    # the Secret's heredoc alone (creating the service account and binding again would fail: they exist)
    start = next(i for i, ln in enumerate(lines) if ln.startswith("kubectl apply -f - <<'EOF'"))
    end = lines.index("EOF", start)
    run_shown(lab, "\n".join(lines[start:end + 1]))


def test_app_status_command_answers(lab) -> None:
    done = dynamic.app_status(lab)
    assert "port-forward" not in done.command, done.command
    out = run_shown(lab, done.command)
    assert '"connected_as"' in out.stdout
