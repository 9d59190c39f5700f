"""Record every credential the lab generates while the notebooks run (CI only).

Watches the lab's Kubernetes Secrets (the KV values VSO syncs, the dynamic
PostgreSQL credentials) and reads the lab's root token and PostgreSQL admin
password, so tests/test_executed.py can scan outputs for the real values.
Writes a 0600 JSON file outside the repository. Stops on SIGTERM.
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
             Names().staticrole_ns: {"password"}}  # the static role's user is fixed; its password rotates


def main(out: str) -> None:
    state = State()
    values: set[str] = set()
    stop = False

    def handle(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handle)

    def flush() -> None:
        tmp = out + ".tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            json.dump(sorted(values), fh)
        os.replace(tmp, out)

    while not stop:
        sec = state.secrets()
        values.update(str(sec[k]) for k in ("vault_root_token", "postgres_password") if sec.get(k))
        try:
            core = kclient.CoreV1Api(api_client(state.path("kube", "admin.kubeconfig")))
            for s in core.list_secret_for_all_namespaces(_request_timeout=5).items:
                # the tutorial's namespaces, and the same under an attendee's prefix (the external backend's runs)
                keys = next((ks for ns, ks in GENERATED.items() if s.metadata.namespace.endswith(ns)), set())
                if keys:
                    for k, v in (s.data or {}).items():
                        if k in keys:
                            values.add(base64.b64decode(v).decode(errors="replace"))
        except Exception:  # the lab restarts between notebooks; keep polling
            pass
        flush()
        time.sleep(0.5)
    flush()


if __name__ == "__main__":
    main(sys.argv[1])
