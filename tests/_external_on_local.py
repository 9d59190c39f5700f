"""The external backend, run for real: a running local lab stands in for "your own Vault, cluster and database".

The external backend gets only what a team would hand an attendee: the ``VAULT_ADDR``, ``VAULT_TOKEN`` and
``KUBECONFIG`` that ``labkit env`` prints for the local lab, and its PostgreSQL as ``VSOLAB_PG_ADDR`` /
``VSOLAB_PG_PASSWORD``. VSO must be what a shared cluster has: the Helm release's pod (``labkit operator install``),
which belongs to the team (``VSOLAB_SHARED_OPERATOR=1``): attendees never restart or reconfigure it.

Every address is the one the local lab itself uses: its pods are local processes and its Vault listens on
loopback, so Vault-for-cluster, the API-for-Vault and PostgreSQL-for-Vault/pods are the same loopback addresses
(the external backend's defaults when ``VSOLAB_*_FOR_*`` are unset), and the app is reached on the port the node
publishes for its pod (the node agent cannot port-forward).

Also a command for scripts/test.sh: ``python3 tests/_external_on_local.py <attendee> <state dir>`` prints the
``export`` lines for one attendee over the local lab at ``VSOLAB_STATE``.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labkit.backends.external import ExternalLab

PREFIXES = ("alice-", "bob-")


def external_environ(local: Any, prefix: str, state: Path | None = None) -> dict[str, str]:
    """The variables an attendee with ``prefix`` gets, taken from the local lab's ``env()`` (``labkit env``)."""
    env = local.env()
    out = {
        "VAULT_ADDR": env["VAULT_ADDR"], "VAULT_TOKEN": env["VAULT_TOKEN"], "KUBECONFIG": env["KUBECONFIG"],
        "VSOLAB_PG_ADDR": f"{env['PGHOST']}:{env['PGPORT']}", "VSOLAB_PG_USER": env["PGUSER"],
        "VSOLAB_PG_PASSWORD": env["PGPASSWORD"],
        "VSOLAB_PREFIX": prefix, "VSOLAB_INSTALL_VSO": "0", "VSOLAB_SHARED_OPERATOR": "1",
    }
    if state is not None:
        out["VSOLAB_STATE"] = str(state)
    return out


def external_lab(local: Any, prefix: str, state: Path) -> ExternalLab:
    """An ExternalLab for ``prefix`` over ``local``, with a state directory of its own."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "PG", "VSOLAB_"))}
    return ExternalLab(state, environ={**environ, **external_environ(local, prefix)})


def external_labs(local: Any, root: Path, prefixes: tuple[str, ...] = PREFIXES) -> dict[str, ExternalLab]:
    """One ExternalLab per prefix, each in ``root/<prefix>``, all over the same local lab."""
    return {p: external_lab(local, p, root / p.rstrip("-")) for p in prefixes}


def main(argv: list[str]) -> int:
    from labkit.backends.local import LocalLab

    if len(argv) != 2:
        print("usage: python3 tests/_external_on_local.py <attendee prefix> <state dir>", file=sys.stderr)
        return 2
    local = LocalLab(os.environ.get("VSOLAB_STATE"))
    for key, value in external_environ(local, argv[0], Path(argv[1]).absolute()).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
