"""Shared fixtures: one local lab per test session, in a state directory of its own."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def local_lab() -> Iterator[object]:
    """A local lab started once for the session and purged at its end; skipped when prerequisites are missing."""
    from labkit.doctor import local_checks
    from labkit.local import LocalLab

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
