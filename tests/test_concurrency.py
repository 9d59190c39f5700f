"""Concurrent labkit commands on one state directory, as real processes: no lost update, no corrupted lab.

The lab-level races (two ``up`` on a fresh or a running lab, ``up`` racing ``down``) run ``VSOLAB_RACE_ROUNDS``
rounds each (default 2 here, to keep CI short); ``scripts/race_loop.sh`` runs them 10 times in a row by hand.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _labs import lab_fixture

from labkit import _procs, vault
from labkit._state import State
from labkit.backends.local import LocalLab
from labkit.errors import LabBusy

REPO = Path(__file__).resolve().parent.parent
ROUNDS = int(os.environ.get("VSOLAB_RACE_ROUNDS", "2"))
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
ENV.pop("VSOLAB_STATE", None)

UPDATER = """
import sys
from labkit._state import State
st = State(sys.argv[1])
for i in range(int(sys.argv[3])):
    st.update(**{f"{sys.argv[2]}-{i}": i})
    st.update_secrets(**{f"{sys.argv[2]}-{i}": i})
"""

HOLDER = """
import sys, time
from labkit._state import State
with State(sys.argv[1]).lock("a test holding the lock"):
    print("held", flush=True)
    time.sleep(600)
"""


def labkit(*args: str, state: Path, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "labkit", "--state", str(state), *args], env=ENV, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)  # type: ignore[call-overload]


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


# -- state updates ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("round_", range(10))
def test_two_processes_updating_the_state_lose_no_update(tmp_path: Path, round_: int) -> None:
    root = tmp_path / "lab"
    State(root).ensure()
    procs = [subprocess.Popen([sys.executable, "-c", UPDATER, str(root), who, "100"], env=ENV) for who in "ab"]
    assert [p.wait(120) for p in procs] == [0, 0]
    st = State(root)
    want = {f"{who}-{i}" for who in "ab" for i in range(100)}
    assert want <= set(st.read()) and want <= set(st.secrets())
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "no temporary file is left"


def test_a_second_caller_waits_then_names_the_holder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "lab"
    State(root).ensure()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("VSOLAB_LOCK_TIMEOUT", "1")
        with pytest.raises(LabBusy) as info:
            State(root).update(x=1)
        assert f"process {holder.pid} a test holding the lock" in str(info.value)
        assert f"kill {holder.pid}" in str(info.value)
        # The kernel drops the lock of a killed holder: nothing is left locked.
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        assert State(root).update(x=2)["x"] == 2
    finally:
        holder.kill()
        holder.wait(10)


def test_the_lock_is_reentrant_across_threads_of_one_process(tmp_path: Path) -> None:
    """``up`` holds the lock while its start-up threads update the state (a notebook kernel does the same)."""
    st = State(tmp_path / "lab")
    st.ensure()
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(20):
                st.update(**{f"t{i}-{j}": j})
        except BaseException as exc:
            errors.append(exc)

    with st.lock("outer"):
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors and len([k for k in st.read() if k.startswith("t")]) == 80


# -- the lab ------------------------------------------------------------------------------------------------
def lab_pids(root: Path) -> dict[str, int | None]:
    return {h.component: h.pid for h in LocalLab(root).status()}


def assert_one_healthy_lab(root: Path) -> None:
    lab = LocalLab(root)
    rows = lab.status()
    assert all(h.healthy for h in rows), rows
    # exactly one process per component carries the lab's component tags (no second lab beside the first)
    tags = [p.environ().get(_procs.TAG_ENV) for p in _procs.tagged(lab.state.lab_id + ":")]
    for comp in lab.components:
        assert tags.count(f"{lab.state.lab_id}:{comp}") == 1, tags


@pytest.fixture
def fresh_state() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="vsolab-race-"))
    try:
        yield base / "state"
    finally:
        LocalLab(base / "state").down(purge=True)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _race_data(lab: LocalLab) -> None:
    """A KV secret that every race below must leave intact (``kept``)."""
    vault.client(lab).sys.enable_secrets_engine("kv", path="race", options={"version": "2"})
    vault.client(lab).secrets.kv.v2.create_or_update_secret("keep", {"v": "1"}, mount_point="race")


#: A lab of its own, up, holding the ``race`` KV secret.
running = lab_fixture(name="race-lab", prepare=_race_data)


def kept(lab: LocalLab) -> bool:
    kv = vault.client(lab).secrets.kv.v2
    return kv.read_secret_version("keep", mount_point="race", raise_on_deleted_version=True)["data"]["data"] == {"v": "1"}


@pytest.mark.lab
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_two_up_on_a_fresh_state_directory_make_one_lab(fresh_state: Path, round_: int) -> None:
    a, b = labkit("up", state=fresh_state), labkit("up", state=fresh_state)
    (ra, oa), (rb, ob) = finish(a), finish(b)
    assert (ra, rb) == (0, 0), oa + ob
    assert_one_healthy_lab(fresh_state)
    assert "everything was already running" in oa + ob, "the second up waited, then reused the first one's lab"


@pytest.mark.lab
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_two_up_on_a_running_lab_change_nothing(running: LocalLab, round_: int) -> None:
    pids = lab_pids(running.state.root)
    ca = running.state.path("pki", "ca.crt").read_bytes()
    results = [finish(p) for p in (labkit("up", state=running.state.root), labkit("up", state=running.state.root))]
    assert [r for r, _ in results] == [0, 0], results
    assert lab_pids(running.state.root) == pids and running.state.path("pki", "ca.crt").read_bytes() == ca
    assert_one_healthy_lab(running.state.root)


@pytest.mark.lab
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_up_racing_down_leaves_a_lab_that_is_either_up_or_down_and_intact(running: LocalLab, round_: int) -> None:
    root = running.state.root
    up, down = labkit("up", state=root), labkit("down", state=root)
    (ru, ou), (rd, od) = finish(up), finish(down)
    assert (ru, rd) == (0, 0), ou + od
    rows = LocalLab(root).status()
    assert all(h.healthy for h in rows) or not any(h.pid for h in rows), rows  # never half a lab
    rc, out = finish(labkit("up", state=root))
    assert rc == 0, out
    assert_one_healthy_lab(root)
    assert kept(LocalLab(root)), "Vault's data survived"


def test_a_waiting_up_reports_the_holder(tmp_path: Path) -> None:
    """``labkit up`` while another command holds the lock: it waits, then names it (here after 1s)."""
    root = tmp_path / "lab"
    State(root).ensure()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "labkit", "--state", str(root), "up"], capture_output=True,
                              text=True, env={**ENV, "VSOLAB_LOCK_TIMEOUT": "1"}, cwd=str(REPO), timeout=120)
        assert time.monotonic() - t0 >= 1
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"process {holder.pid} a test holding the lock" in proc.stderr
    finally:
        holder.kill()
        holder.wait(10)
