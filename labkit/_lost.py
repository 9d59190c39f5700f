"""The lab going away in the middle of a command: turn a connection error into one paragraph.

A notebook cell or ``labkit stage N`` talks to the API server (kubernetes client, urllib3), Vault (hvac,
requests) and PostgreSQL (psycopg). When one of them stops answering, the error is recognised by its type and
the port it was talking to (never by its message text), and named after the lab component on that port.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING

import requests
import urllib3
import urllib3.connection
import urllib3.connectionpool

from ._state import listening
from .errors import LostConnection

if TYPE_CHECKING:
    from ._state import State
    from .backends.contract import Lab

#: component names as ``labkit status`` shows them, by the port name in state.json
_COMPONENTS = {"apiserver": "the Kubernetes API server (kube-apiserver)", "openbao": "Vault (OpenBao)",
               "postgres": "PostgreSQL", "etcd": "etcd", "agent": "the node agent",
               "operator_probe": "the VSO manager (the operator's pod)"}


def _psycopg_errors() -> tuple[type[BaseException], ...]:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return ()
    return (psycopg.OperationalError,)


#: exception types that can mean "a part of the lab stopped answering" (refined by :func:`explain`)
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    urllib3.exceptions.HTTPError, requests.exceptions.RequestException, ConnectionError, *_psycopg_errors(),
)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _port(exc: BaseException) -> int | None:
    """The port a connection error was about, from the exception's attributes."""
    pool = getattr(exc, "pool", None)
    if pool is not None and getattr(pool, "port", None):
        return int(pool.port)
    conn = getattr(exc, "conn", None)
    if conn is not None and getattr(conn, "port", None):
        return int(conn.port)
    request = getattr(exc, "request", None)
    url = getattr(request, "url", None)
    if isinstance(url, str):
        return urllib.parse.urlsplit(url).port
    # A connection dropped mid-response (ProtocolError) carries no address: the connection it was read from,
    # a local of the frames it was raised through, does.
    tb = exc.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, (urllib3.connectionpool.HTTPConnectionPool, urllib3.connection.HTTPConnection)) and value.port:
                return int(value.port)
        tb = tb.tb_next
    return None


def _connection_error(exc: BaseException) -> tuple[bool, int | None]:
    """(is it the lab not answering, the port) for one exception of a chain."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        psycopg = None  # type: ignore[assignment]
    if isinstance(exc, (urllib3.exceptions.MaxRetryError, urllib3.exceptions.NewConnectionError,
                        urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError,
                        requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                        ConnectionRefusedError, ConnectionResetError)):
        return True, _port(exc)
    if psycopg is not None and isinstance(exc, psycopg.OperationalError) and getattr(exc, "sqlstate", None) is None:
        # No SQLSTATE: the connection failed. libpq gives none for a refused login either, so explain() asks the
        # socket whether PostgreSQL still listens before calling it gone.
        return True, None
    return False, None


def explain(exc: BaseException, lab: Lab | None, command: str) -> LostConnection | None:
    """A :class:`LostConnection` for ``exc`` when it is the lab not answering, else None."""
    if isinstance(exc, LostConnection):
        return exc
    port = None
    found = False
    for e in _chain(exc):
        hit, p = _connection_error(e)
        if hit:
            found, port = True, port or p
        if found and port:
            break
    if not found:
        return None
    state = lab.state if lab is not None else None
    ports: dict[str, int] = {}
    if state is not None:
        try:
            ports = state.recorded_ports()
        except Exception:  # a damaged state.json must not hide the real problem
            ports = {}
    name = next((n for n, p in ports.items() if p == port), None)
    if name is None and port is None and type(exc).__module__.startswith("psycopg"):
        name, port = "postgres", ports.get("postgres")
        if port and listening(port):
            return None  # PostgreSQL answers: it refused this connection (a login), it did not go away
    what = _COMPONENTS.get(name or "", "a part of the lab") + (f" at 127.0.0.1:{port}" if port else "")
    return LostConnection(f"Checked the lab while running {command}: {what} stopped answering "
                          f"({type(exc).__name__}).", _fixes(name, state, command))


def _fixes(name: str | None, state: State | None, command: str) -> list[str]:
    """What to do when the lab's component ``name`` (None: not known) stopped answering during ``command``."""
    fixes = ["Run `labkit status` to see which part of the lab is down.",
             f"Run `labkit up` to start it again (data is kept), then run {command} again."]
    if name == "operator_probe":
        fixes.append("If it stops again, read its log: `kubectl logs -n vault-secrets-operator "
                     "deploy/vault-secrets-operator-controller-manager -c manager --previous`")
    elif state is not None and name:
        fixes.append(f"If it stops again, read its log: {state.path('logs', f'{name}.log')}")
    else:
        fixes.append("Run `labkit doctor` if `labkit up` fails.")
    return fixes


def not_answering(lab: Lab | None, command: str, after: str) -> LostConnection | None:
    """A :class:`LostConnection` naming the first core component whose port no longer listens, else None.

    Used after a shell step failed (``labkit stage``): the step's exit status says only that it failed, so the lab's
    own ports are asked which part went away (by socket, never by reading the command's message)."""
    if lab is None:
        return None
    state = lab.state
    try:
        ports = state.recorded_ports()
    except Exception:  # a damaged state.json is reported by the next `labkit status`
        return None
    for name in ("apiserver", "etcd", "openbao", "postgres"):
        port = ports.get(name)
        if port and not listening(port):
            return LostConnection(
                f"Checked the lab after {after} failed: {_COMPONENTS[name]} at 127.0.0.1:{port} stopped answering.",
                _fixes(name, state, command))
    return None
