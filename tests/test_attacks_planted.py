"""Paths another local user planted before root's lab used them: refused, or harmless.

The attacker is a second, unprivileged user (``vsolab-attacker``, created if missing); its steps run with
``runuser -u vsolab-attacker -- ...``. Each attack worked on labkit before the state-integrity checks (the lab
followed a planted symlink into a root-owned directory, used a planted CA and password, or kept its database
in a directory the attacker could empty).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _users import ensure_user

from labkit._state import State
from labkit.backends.local import LocalLab
from labkit.errors import LabkitError

ATTACKER = "vsolab-attacker"
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="attacks by a second user need root to set them up")


def as_attacker(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", ATTACKER, "--", *cmd], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def attacker() -> str:
    try:
        ensure_user(ATTACKER)
    except RuntimeError as exc:
        pytest.skip(f"cannot create the user {ATTACKER}: {exc}")
    return ATTACKER


@pytest.fixture
def attacker_dir(attacker: str) -> Iterator[Path]:
    """A directory the attacker made in /tmp, as any user can."""
    made = as_attacker("mktemp", "-d", "/tmp/vsolab-attack.XXXXXX")
    assert made.returncode == 0, made.stderr
    path = Path(made.stdout.strip())
    as_attacker("chmod", "0755", str(path))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def victim() -> Iterator[Path]:
    """A root-owned 0755 directory with a file: what a planted symlink points root's lab at."""
    path = Path(tempfile.mkdtemp(prefix="vsolab-victim-", dir="/var/tmp"))
    path.chmod(0o755)
    (path / "precious").write_text("root's")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def unchanged(victim: Path) -> None:
    st = os.stat(victim)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755), "the victim directory was taken over"
    assert sorted(p.name for p in victim.iterdir()) == ["precious"]


@pytest.fixture
def state() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="vsolab-attacked-"))
    try:
        yield root
    finally:
        LocalLab(root).down(purge=True)
        shutil.rmtree(root, ignore_errors=True)


def prepare_postgres(root: Path) -> None:
    lab = LocalLab(root)
    lab.state.ensure()
    lab.components["postgres"].prepare()


# -- PostgreSQL's data -----------------------------------------------------------------------------------------
def test_a_planted_postgres_data_symlink_is_refused(attacker_dir: Path, victim: Path, state: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The attacker computes the lab id (a hash of the state path) and plants ``<pg root>/<id>`` → a root directory."""
    monkeypatch.setenv("VSOLAB_PG_ROOT", str(attacker_dir))
    planted = attacker_dir / State(state).lab_id
    assert as_attacker("ln", "-s", str(victim), str(planted)).returncode == 0
    try:
        with pytest.raises(LabkitError) as info:
            prepare_postgres(state)
        assert "vsolab-attacker" in str(info.value) or "uid" in str(info.value)
    finally:
        unchanged(victim)


def test_a_database_parent_the_attacker_made_is_refused(attacker_dir: Path, state: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Owning the parent lets the attacker move root's database away (the next `up` then starts an empty one)."""
    parent = attacker_dir / "pg"
    assert as_attacker("mkdir", str(parent)).returncode == 0
    monkeypatch.setenv("VSOLAB_PG_ROOT", str(parent))
    try:
        prepare_postgres(state)
    except LabkitError as exc:
        assert str(parent) in str(exc)
        return
    data = parent / State(state).lab_id
    moved = as_attacker("mv", str(data), str(parent / "stolen"))
    assert moved.returncode != 0, "the attacker moved root's database away"


def test_root_postgres_data_is_out_of_other_users_reach(attacker: str, state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where labkit keeps root's database by default, the attacker can neither plant, replace nor move anything."""
    monkeypatch.delenv("VSOLAB_PG_ROOT", raising=False)
    prepare_postgres(state)
    data = State(state).pg_data_dir()
    parent = data.parent
    st = os.lstat(parent)
    assert st.st_uid == 0 and not st.st_mode & 0o022, f"{parent} must be root's and not writable by others"
    assert not data.is_symlink() and (data / "PG_VERSION").exists()
    assert as_attacker("mv", str(data), str(parent / "stolen")).returncode != 0
    assert as_attacker("ln", "-s", "/etc", str(parent / "another-lab")).returncode != 0
    assert as_attacker("ls", str(data)).returncode != 0, "the database directory is private"


# -- the state directory ----------------------------------------------------------------------------------------
def test_a_planted_state_directory_is_refused(attacker_dir: Path) -> None:
    """The attacker pre-fills the shared state directory with its own CA and PostgreSQL password."""
    shared = attacker_dir / "shared"
    for cmd in (["mkdir", "-p", str(shared / "pki")],
                ["sh", "-c", f"echo planted > {shared}/pki/ca.key; echo planted > {shared}/pki/admin.crt; "
                             f"echo planted > {shared}/pki/sa.pub"],
                ["sh", "-c", f"echo '{{\"postgres_password\": \"attacker-knows\"}}' > {shared}/secrets.json"]):
        assert as_attacker(*cmd).returncode == 0
    with pytest.raises(LabkitError) as info:
        State(shared).ensure()
    assert "vsolab-attacker" in str(info.value)
    proc = subprocess.run([sys.executable, "-m", "labkit", "--state", str(shared), "up"], capture_output=True, text=True,
                          cwd=str(REPO), timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert "owned by vsolab-attacker" in proc.stderr
    assert not (shared / "lock").exists() and not (shared / "run").exists(), "nothing was started or written there"


def test_a_planted_symlink_to_the_state_directory_is_refused(attacker_dir: Path, victim: Path) -> None:
    """``VSOLAB_STATE=/tmp/…/shared`` where the attacker made ``shared`` a symlink to a root directory."""
    link = attacker_dir / "shared"
    assert as_attacker("ln", "-s", str(victim), str(link)).returncode == 0
    try:
        with pytest.raises(LabkitError) as info:
            State(link).ensure()
        assert "symlink" in str(info.value) and "vsolab-attacker" in str(info.value)
    finally:
        unchanged(victim)
