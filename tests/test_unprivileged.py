"""The unprivileged path: a learner's account, as on Binder and every JupyterHub.

The test's setup (root) does what an administrator does once: it creates the user ``vsolab-learner`` (idempotent),
copies this checkout into their home (theirs, so /work stays private), and shares the lab's binaries read-only: the
product folders of the binary cache, hard-linked into a root-owned, world-readable folder (root's own home stays
0700; docs/instructor.md puts the shared cache in /opt/vsolab/cache the same way). Everything after that runs as the
learner through ``runuser`` with a clean environment, and nothing of it may need root: their own venv
(``python3 -m venv --system-site-packages``, the OS's Python), ``pip install -e`` of their copy, ``labkit up``, the
notebook series at CI parameters (``labkit run-notebooks --ci``), the CLIs the notebooks' ``%%bash`` cells use
(``vault``, ``kubectl``, ``helm`` from ``<state>/bin``), and ``labkit down --purge``.

A second user, ``vsolab-attacker`` (created if missing), checks that the learner's state directory is private (0700).
The times of ``labkit up`` and of the series are printed and, under scripts/test.sh, written to
``$VSOLAB_ARTIFACTS/unprivileged-times.json``; nothing asserts on them.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from _users import ensure_user

from labkit import _procs, install
from labkit._state import State

pytestmark = [pytest.mark.lab, pytest.mark.unprivileged]
ROOT = Path(__file__).resolve().parents[1]
LEARNER = "vsolab-learner"
ATTACKER = "vsolab-attacker"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
PYTHON = "/usr/bin/python3"  # the OS's Python: root's (pyenv, conda) often lives in root's 0700 home


def _runuser(user: str, cmd: list[str] | str, env: dict[str, str], *, timeout: float, cwd: str = "/") -> subprocess.CompletedProcess[str]:
    argv = ["bash", "-c", cmd] if isinstance(cmd, str) else cmd
    return subprocess.run(["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def _ensure_user(name: str, *, home: bool) -> pwd.struct_passwd:
    return ensure_user(name, home=home)


def _share_cache(dest: Path) -> None:
    """The built product folders of the binary cache, hard-linked (copied across file systems) under ``dest``,
    readable by everyone and writable by root only."""
    real = install.cache_root()
    for product in [*install.PRODUCTS.values(), *install.TOOLS.values()]:
        if not product.built():
            pytest.skip(f"the unprivileged run shares the built binaries: run `labkit install` first ({product.dir} is missing)")
        try:
            shutil.copytree(product.dir, dest / product.dir.name, copy_function=os.link)
        except OSError:
            shutil.rmtree(dest / product.dir.name, ignore_errors=True)
            shutil.copytree(product.dir, dest / product.dir.name)
    assert real != dest
    for d, _dirs, files in os.walk(dest):
        os.chown(d, 0, 0)
        os.chmod(d, 0o755)
        for f in files:  # a hard link shares its mode with the cache's file: made readable there too, as asked of an admin
            p = os.path.join(d, f)
            os.chmod(p, os.stat(p).st_mode & 0o777 | 0o444)


def _copy_repo(dest: Path, uid: int, gid: int) -> None:
    """This checkout's files (tracked ones when git knows them) into ``dest``, owned by the learner."""
    shutil.rmtree(dest, ignore_errors=True)
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True)
    if listed.returncode == 0:
        for rel in filter(None, listed.stdout.decode().split("\0")):
            src = ROOT / rel
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
    else:
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", "artifacts", "__pycache__", "*.egg-info", ".venv"))
    for d, _dirs, files in os.walk(dest):
        os.chown(d, uid, gid)
        for f in files:
            os.chown(os.path.join(d, f), uid, gid)


@dataclass
class Learner:
    user: pwd.struct_passwd
    env: dict[str, str]
    src: Path
    cache: Path
    state: Path
    times: dict[str, float]

    def run(self, cmd: list[str] | str, *, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return _runuser(self.user.pw_name, cmd, self.env, timeout=timeout, cwd=self.user.pw_dir)

    def timed(self, what: str, cmd: list[str] | str, *, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        t0 = time.monotonic()
        res = self.run(cmd, timeout=timeout)
        self.times[what] = round(time.monotonic() - t0, 1)
        print(f"as {self.user.pw_name}: {what} took {self.times[what]}s (exit {res.returncode})")
        return res


@pytest.fixture(scope="module")
def learner() -> Iterator[Learner]:
    if os.geteuid() != 0:
        pytest.skip("the setup creates a user and shares the binary cache: run as root (the lab itself then runs unprivileged)")
    if not shutil.which("runuser") or not shutil.which("useradd") or not os.access(PYTHON, os.X_OK):
        pytest.skip(f"needs runuser, useradd and {PYTHON}")
    user = _ensure_user(LEARNER, home=True)
    home = Path(user.pw_dir)
    cache = Path(tempfile.mkdtemp(prefix="vsolab-shared-cache.", dir="/var/tmp"))
    _share_cache(cache)
    src = home / "vsolab-src"
    _copy_repo(src, user.pw_uid, user.pw_gid)
    venv = home / "venv"
    env = {"HOME": str(home), "USER": LEARNER, "LOGNAME": LEARNER, "LANG": "C.UTF-8", "PATH": f"{venv}/bin:{SYSTEM_PATH}",
           "VSOLAB_CACHE": str(cache), "VSOLAB_STATE": str(home / ".local/state/vsolab/ci")}
    times: dict[str, float] = {}
    lrn = Learner(user, env, src, cache, Path(env["VSOLAB_STATE"]), times)
    # their own venv (kept between runs: pip's cache and the packages stay, the kit is reinstalled from the copy)
    if not (venv / "bin" / "python").exists():
        made = lrn.run([PYTHON, "-m", "venv", "--system-site-packages", str(venv)], timeout=300)
        assert made.returncode == 0, made.stderr
    pip = lrn.timed("pip install -e (their copy of the repository)",
                    [f"{venv}/bin/pip", "install", "-q", "--disable-pip-version-check", "-e", str(src)], timeout=1200)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    try:
        yield lrn
    finally:
        lrn.run(["labkit", "down", "--purge"], timeout=300)
        shutil.rmtree(cache, ignore_errors=True)
        out = os.environ.get("VSOLAB_ARTIFACTS")
        if out and times:
            Path(out, "unprivileged-times.json").write_text(json.dumps(times, indent=2) + "\n")


def _lab_processes(state: Path) -> list[psutil.Process]:
    """Every running process tagged with this lab's id (its components, pods and helpers)."""
    lab_id = State(state).lab_id
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if _procs.tag_of(proc).startswith(f"{lab_id}:"):
                found.append(proc)
    return found


def test_the_kit_is_the_learners_own_copy(learner: Learner) -> None:
    res = learner.run(["python", "-c", "import labkit, sys; print(labkit.__file__); print(sys.prefix)"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(learner.src / "labkit" / "__init__.py"), str(Path(learner.user.pw_dir) / "venv")]
    assert learner.run(["id", "-u"]).stdout.strip() == str(learner.user.pw_uid) != "0"
    # the shared cache is read-only for them
    wrote = learner.run(["touch", str(learner.cache / f"kube-{install.KUBE_VERSION}" / "x")])
    assert wrote.returncode != 0 and "Permission denied" in wrote.stderr


def test_up_series_and_down_as_an_unprivileged_user(learner: Learner) -> None:
    up = learner.timed("labkit up", ["labkit", "up"], timeout=600)
    assert up.returncode == 0, up.stdout + up.stderr
    # every lab process runs as the learner: nothing was started with privileges
    procs = _lab_processes(learner.state)
    assert len(procs) >= 8
    assert {p.uids().real for p in procs} == {learner.user.pw_uid}
    # the state directory is theirs and private
    st = learner.state.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (learner.user.pw_uid, 0o700)
    _ensure_user(ATTACKER, home=False)
    for cmd in (["ls", str(learner.state)], ["cat", str(learner.state / "secrets.json")], ["ls", str(learner.state / "bin")]):
        peek = _runuser(ATTACKER, cmd, {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}, timeout=30)
        assert peek.returncode != 0 and "Permission denied" in peek.stderr, (cmd, peek.stdout)
    # the CLIs the notebooks' %%bash cells use: <state>/bin links into the root-owned cache and the venv, and they run
    tools = learner.run('eval "$(labkit env)" && vault version && kubectl version --client && helm version --short '
                        '&& ls -l "$VSOLAB_STATE/bin" && kubectl get nodes -o name')
    assert tools.returncode == 0, tools.stdout + tools.stderr
    assert "OpenBao" in tools.stdout and "Client Version" in tools.stdout and f"v{install.HELM_VERSION}" in tools.stdout
    assert f"helm -> {learner.cache}/helm-{install.HELM_VERSION}/helm" in tools.stdout
    assert "node/" in tools.stdout

    out = Path(learner.user.pw_dir) / "executed"
    shutil.rmtree(out, ignore_errors=True)  # no summary of an earlier run
    series = learner.timed("labkit run-notebooks --ci", ["labkit", "run-notebooks", "--ci", "--output", str(out)], timeout=1800)
    assert series.returncode == 0, series.stdout[-4000:] + series.stderr[-4000:]
    assert "| **total** | passed |" in (out / "summary.md").read_text()

    down = learner.timed("labkit down --purge", ["labkit", "down", "--purge"], timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    deadline = time.monotonic() + 30
    while _lab_processes(learner.state) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _lab_processes(learner.state) == []
