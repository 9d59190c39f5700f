"""PostgreSQL: the roles Vault creates, and logging in with credentials."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from ._state import listening
from .backends.contract import Lab
from .errors import NotRunning


def _connect(lab: Lab, **kw: Any) -> psycopg.Connection:
    try:
        return psycopg.connect(lab.pg_dsn(**kw), connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as exc:
        if kw:  # a learner's or Vault's credentials: the caller reports PostgreSQL's answer
            raise
        host, port = lab.pg_address
        first = str(exc).strip().splitlines()[0]
        # libpq gives no SQLSTATE for a failed connection, so tell "nothing answers" from "refused" by the socket.
        if listening(port, host):
            raise NotRunning(
                f"Checked that PostgreSQL at {host}:{port} accepts the lab's admin login: it answers but refuses it ({first}).",
                ["On the local lab, the admin password lives in the state directory's secrets.json: if that file was "
                 "replaced or lost, `labkit down --purge` then `labkit up` starts a fresh database.",
                 "Run `labkit status` to check that this is the lab's own PostgreSQL.",
                 "For your own PostgreSQL, check the admin user and password you gave the lab."],
            ) from None
        raise NotRunning(
            f"Checked that PostgreSQL accepts the lab's admin login at {host}:{port}: nothing answers there ({first}).",
            ["Start or repair the lab: `labkit up`.", "Run `labkit status` to see whether postgres is up.",
             "For your own PostgreSQL, check the address and admin password you gave the lab."],
        ) from None


def dynamic_roles(lab: Lab, prefix: str = "v-") -> list[dict[str, Any]]:
    """Roles Vault created (name starts with ``v-``), with their expiry (``VALID UNTIL``)."""
    with _connect(lab) as conn:
        rows = conn.execute(
            "select rolname, rolvaliduntil, rolcanlogin from pg_roles where rolname like %s order by rolname",
            (prefix.replace("_", r"\_") + "%",),
        ).fetchall()
    return [{"role": r[0], "valid_until": r[1], "can_login": r[2]} for r in rows]


def lab_roles(lab: Lab) -> list[dict[str, Any]]:
    """The dynamic roles of this lab: every ``v-`` role on a lab of one's own; under an attendee prefix (a shared
    database) those Vault created for this attendee's VSO logins (:attr:`labkit.names.Names.vso_db_users`)."""
    return dynamic_roles(lab, lab.names.vso_db_users if lab.names.prefix else "v-")


def can_login(lab: Lab, username: str, password: str) -> tuple[bool, str]:
    """Try to log in as ``username``; return (ok, current_user or PostgreSQL's error)."""
    try:
        with _connect(lab, user=username, password=password) as conn:
            return True, str(conn.execute("select current_user").fetchone()[0])  # type: ignore[index]
    except psycopg.OperationalError as exc:
        return False, str(exc).strip().splitlines()[0]


def user_exists(lab: Lab, name: str) -> bool:
    with _connect(lab) as conn:
        return conn.execute("select 1 from pg_roles where rolname = %s", (name,)).fetchone() is not None


def drop_user(lab: Lab, name: str) -> bool:
    """Drop the PostgreSQL user ``name`` as a DBA would (what it owns goes to the admin, its grants go, then the user);
    return whether it existed."""
    with _connect(lab) as conn:
        if conn.execute("select 1 from pg_roles where rolname = %s", (name,)).fetchone() is None:
            return False
        conn.execute(sql.SQL("REASSIGN OWNED BY {u} TO CURRENT_USER; DROP OWNED BY {u}; DROP ROLE {u}")
                     .format(u=sql.Identifier(name)))
    return True
