"""The per-user lab state directory: paths, chosen ports, credentials.

Layout (all under one directory, mode 0700; key and credential files 0600)::

    state.json      ports, lab id, settings such as the VSO cache model
    secrets.json    OpenBao unseal key and root token, PostgreSQL password
    pki/            CA, serving and client certificates, service-account keys
    kube/           kubeconfigs (admin, VSO)
    data/           etcd, OpenBao and (when not root) PostgreSQL data
    logs/           one log file per component and per pod
    run/            pid files
    pods/           per-pod working directories of the node agent
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

import port_for

from .errors import PortTaken, StateError

DEFAULT_STATE = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "vsolab" / "default"


_LOCK = threading.RLock()  # `up` starts components in parallel; read-modify-write of the JSON files is serialised


def state_dir_from_env() -> Path:
    """Return the state directory chosen by ``VSOLAB_STATE`` or the default."""
    return Path(os.environ.get("VSOLAB_STATE", str(DEFAULT_STATE))).expanduser().absolute()


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing listens on ``port``, and a server can bind it the way servers do (with SO_REUSEADDR).

    ``port_for.is_available`` binds without SO_REUSEADDR, so it calls a port taken for about a minute
    after a server stopped (connections linger in TIME_WAIT); ``down`` then ``up`` must work at once.
    """
    with socket.socket() as probe:
        probe.settimeout(1)
        if probe.connect_ex((host, port)) == 0:
            return False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically to a file only the owner can read (a directory it creates is private too)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class State:
    """One lab's state directory."""

    PORT_NAMES = (
        "etcd", "etcd_peer", "apiserver", "kcm", "openbao", "openbao_cluster", "postgres", "vso_metrics", "vso_probe", "agent",
        "kubelet",
        # the Helm chart repository, and the Helm-installed operator pod's probe, metrics and kube-rbac-proxy ports
        "charts", "operator_probe", "operator_metrics", "operator_https",
    )

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser().absolute() if root else state_dir_from_env()

    # -- layout -----------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def lab_id(self) -> str:
        """A short id, letters only, unique to this state directory.

        Letters only, because process tags are matched by substring against pids.
        """
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return "".join(chr(ord("a") + int(c, 16)) for c in digest)

    def ensure(self) -> None:
        """Create the directory tree with private permissions, or explain why not."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
            for sub in ("pki", "kube", "data", "logs", "run", "pods"):
                d = self.root / sub
                d.mkdir(exist_ok=True)
                os.chmod(d, 0o700)
            probe = self.root / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise StateError(
                f"Checked that the lab state directory {self.root} can be created and written: it cannot ({exc.strerror}).",
                [
                    "Point VSOLAB_STATE (or --state) at a directory you own, e.g. VSOLAB_STATE=$HOME/vsolab-state.",
                    f"Fix the ownership or mode of {self.root} (it must be writable by {pwd.getpwuid(os.getuid()).pw_name}).",
                    "Free disk space if the disk is full (df -h).",
                ],
            ) from exc

    # -- JSON documents -----------------------------------------------------------------------
    def _read(self, name: str) -> dict[str, Any]:
        p = self.root / name
        if not p.exists():
            return {}
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise StateError(
                f"Checked {p}: it is not valid JSON ({exc}).",
                [
                    "Run `labkit down --purge` to start from a clean state (Vault data and leases are lost).",
                    f"Restore {p} from a backup if you have one.",
                    "Use another state directory with VSOLAB_STATE.",
                ],
            ) from exc

    def read(self) -> dict[str, Any]:
        return self._read("state.json")

    def update(self, **values: Any) -> dict[str, Any]:
        with _LOCK:
            return self._update(**values)

    def _update(self, **values: Any) -> dict[str, Any]:
        data = self.read()
        data.update(values)
        _write_private(self.root / "state.json", json.dumps(data, indent=2, sort_keys=True))
        return data

    def secrets(self) -> dict[str, Any]:
        return self._read("secrets.json")

    def update_secrets(self, **values: Any) -> dict[str, Any]:
        with _LOCK:
            return self._update_secrets(**values)

    def _update_secrets(self, **values: Any) -> dict[str, Any]:
        data = self.secrets()
        data.update(values)
        _write_private(self.root / "secrets.json", json.dumps(data, indent=2, sort_keys=True))
        return data

    def write_private(self, rel: str, text: str) -> Path:
        p = self.root / rel
        _write_private(p, text)
        return p

    # -- ports ------------------------------------------------------------------------------------
    def ports(self) -> dict[str, int]:
        """Return the lab's ports, choosing free ones the first time."""
        ports: dict[str, int] = dict(self.read().get("ports", {}))
        missing = [n for n in self.PORT_NAMES if n not in ports]
        if missing:
            taken = set(ports.values())
            for name in missing:
                while True:
                    port = port_for.select_random()
                    if port not in taken:
                        break
                ports[name] = port
                taken.add(port)
            self.update(ports=ports)
        return ports

    def check_port_free(self, name: str, port: int, owner_hint: str) -> None:
        """Raise :class:`PortTaken` when ``port`` is bound by someone other than the lab."""
        if port_free(port):
            return
        raise PortTaken(
            f"Checked that port {port} on 127.0.0.1 (for {name}) is free: another process is listening on it.",
            [
                f"Find and stop that process: `ss -ltnp 'sport = :{port}'`.",
                "Run `labkit down --purge` to let the lab choose new ports (the lab's data is reset).",
                f"Or edit the port of {name!r} in {self.root / 'state.json'} to a free port. {owner_hint}",
            ],
        )

    # -- clean-up ---------------------------------------------------------------------------------
    def purge(self) -> None:
        for p in (self.root, self.pg_data_dir()):
            if p.exists():
                shutil.rmtree(p)

    def pg_data_dir(self) -> Path:
        """PostgreSQL's data directory.

        PostgreSQL refuses to run as root, so when the lab runs as root the server runs as an
        unprivileged user, which cannot enter the 0700 state directory (nor, often, its parents).
        Its data then lives in ``/var/tmp/vsolab-pg/<lab id>`` (override: ``VSOLAB_PG_ROOT``), a
        directory owned by that user with mode 0700; ``down --purge`` removes it with the rest.
        """
        if os.getuid() == 0:
            return Path(os.environ.get("VSOLAB_PG_ROOT", "/var/tmp/vsolab-pg")) / self.lab_id
        return self.root / "data" / "postgres"
