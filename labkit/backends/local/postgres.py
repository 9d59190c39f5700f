"""PostgreSQL: initdb once (its password in secrets.json), then the server; under root as an unprivileged user."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import uuid
from pathlib import Path

from ...errors import ComponentError, StateError
from . import runas
from .component import Component


class Postgres(Component):
    name = "postgres"

    def _user(self) -> str | None:
        return runas.postgres_user()

    def user(self) -> str | None:
        return self._user()

    def prepare(self) -> None:
        data = self.state.pg_data_dir()
        user = self._user()
        if user:
            _safe_pg_dirs(self.state.pg_root(), data, pwd.getpwnam(user).pw_uid, create=False)
        if (data / "PG_VERSION").exists():
            return
        # Either record says a database was made: state.json, or its password in secrets.json (kept after initdb only).
        made = self.state.read().get("pg_initialised") or self.state.secrets().get("postgres_password")
        if made:
            # older labkit kept root's databases in /var/tmp/vsolab-pg, where any user could plant or move them
            old = Path("/var/tmp/vsolab-pg") / self.state.lab_id
            back = (f"Move it from where older labkit kept it, once you checked it is the lab's (owned by {user}): "
                    f"`mv {old} {data}`, then run `labkit up`." if user and (old / "PG_VERSION").exists() else
                    f"Put the data back in {data} (from where it was moved, or a backup), then run `labkit up`.")
            raise StateError(
                f"Checked PostgreSQL's data directory {data}: it has no database, but this lab initialised one "
                f"(its records in {self.state.root} say so), so its data was moved or deleted. Starting an empty "
                "database instead would leave Vault's roles and leases pointing at users that no longer exist.",
                [back,
                 "Or start a fresh lab: `labkit down --purge`, then `labkit up` (Vault data and leases are lost too).",
                 "Or use another state directory (VSOLAB_STATE)."],
            )
        if user:
            _safe_pg_dirs(self.state.pg_root(), data, pwd.getpwnam(user).pw_uid, create=True)
        data.parent.mkdir(parents=True, exist_ok=True)
        data.mkdir(mode=0o700, exist_ok=True)
        os.chmod(data, 0o700)
        password = uuid.uuid4().hex
        pwdir = Path(tempfile.mkdtemp(prefix="vsolab-initdb-"))
        pwfile = pwdir / "pw"
        pwfile.write_text(password)
        os.chmod(pwfile, 0o600)
        if user:
            pw = pwd.getpwnam(user)
            for p in (data, pwdir, pwfile):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        try:
            subprocess.run(
                [str(self.lab.bin["initdb"]), "-D", str(data), "-U", "root", f"--pwfile={pwfile}",
                 "--auth=scram-sha-256", "-E", "UTF8", "--locale=C"],
                check=True, capture_output=True, text=True, user=user, group=user, cwd="/",
            )
        except subprocess.CalledProcessError as exc:
            raise ComponentError(
                f"Ran initdb to create PostgreSQL's data directory {data}: it failed.",
                ["Check that the directory is empty and writable by the PostgreSQL user.",
                 "Run `labkit down --purge` and try again.", "Check disk space (`df -h`)."],
                detail=(exc.stderr or exc.stdout)[-1500:],
            ) from None
        finally:
            shutil.rmtree(pwdir, ignore_errors=True)
        self.state.update_secrets(postgres_password=password)
        self.state.update(pg_initialised=str(data))

    def command(self) -> list[str]:
        return [
            str(self.lab.bin["postgres"]), "-D", str(self.state.pg_data_dir()), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "fsync=off",
            "-c", "max_connections=50", "-c", "shared_buffers=32MB", "-c", "log_min_messages=warning",
            # A failed statement is logged without its text: Vault's CREATE ROLE carries the generated password.
            "-c", "log_min_error_statement=panic",
        ]

    def healthy(self) -> bool:
        import psycopg

        with psycopg.connect(self.lab.pg_dsn(), connect_timeout=2) as conn:
            return conn.execute("select 1").fetchone() == (1,)

    def version(self) -> str:
        import psycopg

        with psycopg.connect(self.lab.pg_dsn(), connect_timeout=2) as conn:
            return str(conn.execute("show server_version").fetchone()[0])  # type: ignore[index]


def _safe_pg_dirs(root: Path, data: Path, pg_uid: int, *, create: bool) -> None:
    """Make (or check) root's PostgreSQL tree: ``root`` is root's, mode 0711; ``data`` the PostgreSQL user's, 0700.

    Nothing on the way may be a symlink or owned by anyone else: a user who could create or rename entries
    there could point root's ``chown``/``chmod`` at any directory, or move the lab's database away.
    """
    from ..._state import _untrusted

    try:
        root.mkdir(mode=0o711, parents=True, exist_ok=True)
    except OSError as exc:
        raise ComponentError(
            f"Checked that PostgreSQL's data root {root} can be created: it cannot ({exc.strerror}).",
            ["Create it as root: `install -d -m 0711 -o root " + str(root) + "`.",
             "Or set VSOLAB_PG_ROOT to a directory root owns that no one else can write.", "Free disk space (`df -h`)."],
        ) from None
    st = os.lstat(root)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        why = ("it is a symlink" if stat.S_ISLNK(st.st_mode) else f"it is owned by uid {st.st_uid}" if st.st_uid
               else f"its mode {stat.S_IMODE(st.st_mode):04o} lets others write to it")
        raise _untrusted(root, why, what="PostgreSQL's data root")
    if stat.S_IMODE(st.st_mode) & 0o011 != 0o011:
        os.chmod(root, stat.S_IMODE(st.st_mode) | 0o011)  # traversable, so the PostgreSQL user reaches its directory
    try:
        st = os.lstat(data)
    except FileNotFoundError:
        if not create:
            return
        data.mkdir(mode=0o700)
        os.chown(data, pg_uid, -1)
        st = os.lstat(data)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid not in (0, pg_uid) or st.st_mode & 0o077:
        why = ("it is a symlink" if stat.S_ISLNK(st.st_mode) else f"it is owned by uid {st.st_uid}"
               if st.st_uid not in (0, pg_uid) else f"its mode is {stat.S_IMODE(st.st_mode):04o}, not 0700")
        raise _untrusted(data, why, what="PostgreSQL's data directory")
