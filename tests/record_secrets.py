"""Record every credential the lab generates while the notebooks run (CI only).

Watches the lab's Kubernetes Secrets (the KV values VSO syncs, the dynamic
PostgreSQL credentials) and reads the lab's root token and PostgreSQL admin
password, so tests/test_executed.py can scan outputs for the real values.
Writes a 0600 JSON file outside the repository (the values), and beside it ``<name>-usernames.json`` (those
values that are database usernames: a database server logs them by design, so the log scan leaves them out).
Stops on SIGTERM.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import time

from kubernetes import client as kclient

from labkit._state import State
from labkit.k8s import api_client
from labkit.names import Names

#: namespace → the keys whose values the lab generates (the static username is the tutorial's fixed "static-user")
GENERATED = {Names().static_ns: {"password", "api_key"}, Names().dynamic_ns: {"username", "password"},
             Names().vault_ns: {"token"},  # the token reviewer's JWT
             Names().team_a_ns: {"api_key"},  # notebook 11: team A's secret
             # notebook 09: the rendered keys hold the password (URL-encoded in the URLs)
             Names().templates_ns: {"password", "DATABASE_URL", "JDBC_URL", "pgpass"},
             Names().pki_ns: {"tls.key", "private_key", "_raw"},  # notebook 08: the certificate's private key
             Names().staticrole_ns: {"password"}}  # notebook 10: the static role's rotated password
#: Secrets of a static role (notebook 13's drill): the username is the DBA's fixed name, shown in the notebook's
#: text; only the password is generated
FIXED_USERNAME = {Names().reports_secret}
#: KV v2 secrets whose generated values no Kubernetes Secret holds as they are: names → (mount, path, keys), for
#: the tutorial's names and every attendee prefix seen. Notebook 09's Secret carries its password only rendered into
#: URLs (URL-encoded) and excludes the raw field.
VAULT_KV = (lambda n: (n.templates_mount, n.templates_path, {"password"}),)


def prefixes(namespaces: set[str]) -> set[str]:
    """The attendee prefixes (and ``""``) of the lab's namespaces: ``carol-`` from ``carol-`` + a tutorial namespace."""
    tutorial = set(GENERATED)
    return {""} | {ns[: -len(t)] for ns in namespaces for t in tutorial if ns.endswith(t) and ns != t}


def vault_values(state: State, namespaces: set[str]) -> set[str]:
    """The generated values of :data:`VAULT_KV` as Vault holds them now, for the tutorial's names and every attendee
    prefix in ``namespaces`` (none while a notebook has not written them)."""
    from labkit import vault
    from labkit.backends.local import LocalLab

    c = vault.client(LocalLab(state.root))
    out: set[str] = set()
    for mount, path, keys in (where(Names(prefix=p)) for p in prefixes(namespaces) for where in VAULT_KV):
        try:
            data = c.secrets.kv.v2.read_secret_version(path, mount_point=mount, raise_on_deleted_version=True)
        except Exception:  # not written yet, or the mount is gone
            continue
        out.update(str(v) for k, v in ((data or {}).get("data", {}).get("data") or {}).items() if k in keys)
    return out


def usernames_file(out: str) -> str:
    """Where :func:`main` writes the recorded values that are database usernames."""
    return out[: -len(".json")] + "-usernames.json" if out.endswith(".json") else out + "-usernames"


def pieces(value: str) -> set[str]:
    """The value, and for a PEM private key also each line of its body: an output that shows one line of a key leaks
    it as surely as one that shows all of it."""
    out = {value}
    if "PRIVATE KEY-----" in value:
        out.update(line.strip() for line in value.splitlines() if len(line.strip()) >= 40 and "-----" not in line)
    return out


def main(out: str) -> None:
    state = State()
    values: set[str] = set()
    usernames: set[str] = set()
    stop = False

    def handle(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handle)

    def flush() -> None:
        for path, what in ((out, values), (usernames_file(out), usernames)):
            tmp = path + ".tmp"
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
                json.dump(sorted(what), fh)
            os.replace(tmp, path)

    while not stop:
        sec = state.secrets()
        values.update(str(sec[k]) for k in ("vault_root_token", "postgres_password") if sec.get(k))
        try:
            core = kclient.CoreV1Api(api_client(state.path("kube", "admin.kubeconfig")))
            secrets = core.list_secret_for_all_namespaces(_request_timeout=5).items
            for s in secrets:
                # the tutorial's namespaces, and the same under an attendee's prefix (the external backend's runs)
                keys = next((ks for ns, ks in GENERATED.items() if s.metadata.namespace.endswith(ns)), set())
                if s.metadata.name in FIXED_USERNAME:  # a static role's username is chosen, not generated
                    keys = keys - {"username"}
                if keys:
                    for k, v in (s.data or {}).items():
                        if k in keys:
                            value = base64.b64decode(v).decode(errors="replace")
                            values.update(pieces(value))
                            if k == "username":
                                usernames.add(value)
            values.update(vault_values(state, {s.metadata.namespace for s in secrets}))
        except Exception:  # the lab restarts between notebooks; keep polling
            pass
        flush()
        time.sleep(0.5)
    flush()


if __name__ == "__main__":
    main(sys.argv[1])
