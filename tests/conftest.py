"""Shared fixtures: one local lab per test session, in a state directory of its own (made by tests/_labs.py's
``lab_fixture``, the factory every module uses for a lab of its own), and the external backend's attendees."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _labs import lab_fixture

#: A local lab started once per session (per xdist worker) and purged at its end; skipped when prerequisites are missing.
local_lab = lab_fixture(scope="session", name="test")

#: A local lab of its own whose VSO is the Helm release's pod: the cluster, Vault and database that the external
#: backend's attendees share (tests/_external_on_local.py).
external_host = lab_fixture(scope="session", name="ext-host", prepare=lambda lab: lab.install_operator())


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
