"""Who runs pods and PostgreSQL under root, and where pod files may live (no lab needed)."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit._state import State
from labkit.backends.local import runas
from labkit.errors import MissingTool, StateError

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="labkit switches users only when it runs as root")


@pytest.fixture
def trusted_base() -> Iterator[Path]:
    """A fresh directory on a path only root can change (not under /tmp, which everyone can write)."""
    base = Path(tempfile.mkdtemp(prefix="vsolab-test-runas-", dir="/var/lib"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@root_only
def test_pods_run_as_an_unprivileged_user_that_is_not_postgresqls(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("VSOLAB_POD_USER", "VSOLAB_PG_USER"):
        monkeypatch.delenv(var, raising=False)
    user = runas.pod_user()
    assert user and pwd.getpwnam(user).pw_uid != 0 and user != runas.postgres_user()
    monkeypatch.setenv("VSOLAB_PG_USER", user)  # PostgreSQL would own the files of the pods' only candidate
    with pytest.raises(MissingTool, match="also runs PostgreSQL"):
        runas.pod_user()
    monkeypatch.delenv("VSOLAB_PG_USER")
    monkeypatch.setenv("VSOLAB_POD_USER", "root")
    with pytest.raises(MissingTool, match="is root"):
        runas.pod_user()


def test_a_normal_user_keeps_its_pods_in_the_state_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    state = State(tmp_path / "lab")
    assert runas.pod_user() is None and runas.postgres_user() is None
    assert runas.pod_root(state) == state.path("pods")


@root_only
def test_the_pod_root_is_made_on_a_root_only_path(monkeypatch: pytest.MonkeyPatch, trusted_base: Path, tmp_path: Path) -> None:
    state = State(tmp_path / "lab")
    monkeypatch.setenv("VSOLAB_POD_ROOT", str(trusted_base / "pods"))
    made = runas.ensure_pod_root(state)
    assert made == trusted_base / "pods" / state.lab_id
    assert all(p.stat().st_uid == 0 and p.stat().st_mode & 0o777 == 0o711 for p in (made, made.parent))
    assert runas.ensure_pod_root(state) == made  # again: reused


@root_only
@pytest.mark.parametrize("plant", ["other user's directory", "symlink", "group-writable directory", "world-writable parent"])
def test_a_pod_root_another_user_could_change_is_refused(plant: str, monkeypatch: pytest.MonkeyPatch, trusted_base: Path,
                                                         tmp_path: Path) -> None:
    state = State(tmp_path / "lab")
    target = trusted_base / "pods"
    if plant == "other user's directory":
        target.mkdir()
        os.chown(target, pwd.getpwnam("nobody").pw_uid, -1)
    elif plant == "symlink":
        (tmp_path / "elsewhere").mkdir()
        target.symlink_to(tmp_path / "elsewhere")
        # VSOLAB_POD_ROOT is resolved once; a symlink planted inside the path afterwards is refused:
        target = trusted_base / "pods" / "x"
        monkeypatch.setattr(runas.os.path, "realpath", lambda p: str(p))
    elif plant == "group-writable directory":
        target.mkdir()
        os.chmod(target, 0o775)
    else:
        target = tmp_path / "pods"  # under /tmp: anyone can create names there
    monkeypatch.setenv("VSOLAB_POD_ROOT", str(target))
    with pytest.raises(StateError, match="no user but root can change"):
        runas.ensure_pod_root(state)
