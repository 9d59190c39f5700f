"""Shared fixtures: one local lab per test session, in a state directory of its own."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def local_lab() -> Iterator[object]:
    """A local lab started once for the session and purged at its end; skipped when prerequisites are missing."""
    from labkit.backends.local import LocalLab
    from labkit.doctor import local_checks

    missing = [f"{r.name} ({r.fix})" for r in local_checks() if not r.ok]
    if missing:
        pytest.skip("the local lab's prerequisites are missing: " + "; ".join(missing) + " — run `labkit doctor`")
    # Not tmp_path_factory: its 0700 base directory would keep out the unprivileged user PostgreSQL
    # runs as under root (its data lives in /var/lib/vsolab-pg/<lab id>, see State.pg_data_dir).
    lab = LocalLab(tempfile.mkdtemp(prefix="vsolab-test-"))
    try:
        lab.up(progress=lambda m: None)
        yield lab
    finally:
        lab.down(purge=True)


@pytest.fixture(scope="session")
def external_host() -> Iterator[object]:
    """A local lab of its own whose VSO is the Helm release's pod: the cluster, Vault and database that the external
    backend's attendees share (tests/_external_on_local.py)."""
    from labkit.backends.local import LocalLab
    from labkit.doctor import local_checks

    missing = [f"{r.name} ({r.fix})" for r in local_checks() if not r.ok]
    if missing:
        pytest.skip("the local lab's prerequisites are missing: " + "; ".join(missing) + " — run `labkit doctor`")
    lab = LocalLab(tempfile.mkdtemp(prefix="vsolab-ext-host-"))
    try:
        lab.up(progress=lambda m: None)
        lab.install_operator()
        yield lab
    finally:
        lab.down(purge=True)


@pytest.fixture(scope="session")
def external_labs(external_host: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """Two attendees, ``alice-`` and ``bob-``, each an ExternalLab with its own state directory, sharing the
    external host's Vault, cluster, database and operator. Each is brought up, and purged at the end."""
    from _external_on_local import external_labs as make

    labs = make(external_host, tmp_path_factory.mktemp("attendees"))
    try:
        for lab in labs.values():
            lab.up(progress=lambda m: None)  # type: ignore[attr-defined]
        yield labs  # type: ignore[misc]
    finally:
        for lab in labs.values():
            lab.down(purge=True)  # type: ignore[attr-defined]
