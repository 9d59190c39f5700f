"""PostgreSQL: the roles Vault creates, and logging in with credentials."""

from __future__ import annotations

from typing import Any

import psycopg

from .errors import NotRunning


def _connect(lab: Any, **kw: Any) -> psycopg.Connection:
    try:
        return psycopg.connect(lab.pg_dsn(**kw), connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as exc:
        if "password authentication failed" in str(exc) or kw:
            raise
        raise NotRunning(
            f"Checked that PostgreSQL accepts the lab's admin login at {lab.pg_address[0]}:{lab.pg_address[1]}: "
            f"it does not ({str(exc).strip().splitlines()[0]}).",
            ["Start or repair the lab: `labkit up`.", "Run `labkit status` to see whether postgres is up.",
             "For your own PostgreSQL, check the address and admin password you gave the lab."],
        ) from None


def dynamic_roles(lab: Any, prefix: str = "v-") -> list[dict[str, Any]]:
    """Roles Vault created (name starts with ``v-``), with their expiry (``VALID UNTIL``)."""
    with _connect(lab) as conn:
        rows = conn.execute(
            "select rolname, rolvaliduntil, rolcanlogin from pg_roles where rolname like %s order by rolname",
            (prefix.replace("_", r"\_") + "%",),
        ).fetchall()
    return [{"role": r[0], "valid_until": r[1], "can_login": r[2]} for r in rows]


def can_login(lab: Any, username: str, password: str) -> tuple[bool, str]:
    """Try to log in as ``username``; return (ok, current_user or PostgreSQL's error)."""
    try:
        with _connect(lab, user=username, password=password) as conn:
            return True, str(conn.execute("select current_user").fetchone()[0])  # type: ignore[index]
    except psycopg.OperationalError as exc:
        return False, str(exc).strip().splitlines()[0]
