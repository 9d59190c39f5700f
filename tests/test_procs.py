"""Lab processes survive mirakuru's exit handler in every other process.

mirakuru registers an ``atexit`` handler in each process that imports it (a kernel, a CLI run, pytest). At
exit it SIGKILLs every process whose ``mirakuru_uuid`` *contains* the exiting pid as a substring. Lab tags
hold digits (the lab id, a pod UID, a prefix), so lab processes keep their tag in ``VSOLAB_TAG`` and carry a
digit-free ``mirakuru_uuid``. The regression test gives a process a pid that *is* a substring of a pod's and
a port-forward's tag (root can choose the next pid through ``/proc/sys/kernel/ns_last_pid``), lets it exit
normally, and checks that nothing of the lab died.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from kubernetes import client as kclient

from labkit import _procs, k8s

REPO = Path(__file__).resolve().parent.parent


def test_mirakuru_mark_is_digit_free_and_unique() -> None:
    tag = "0123456789ab:pod:5f0c1e2d-3a4b-4c5d-8e9f-001122334455"
    marks = {_procs.mirakuru_mark(tag) for _ in range(50)}
    assert len(marks) == 50
    assert all(not re.search(r"\d", m) for m in marks), marks


def test_daemon_env_keeps_the_tag_in_labkits_own_variable(tmp_path: Path) -> None:
    d = _procs.Daemon(["true"], check=lambda: True, tag="abc123:etcd", log=tmp_path / "x.log")
    d._log_fh.close()
    env = d.envvars
    assert env[_procs.TAG_ENV] == "abc123:etcd"
    assert not re.search(r"\d", env[_procs.MIRAKURU_ENV])


def _exit_as_pid(pid: int) -> subprocess.CompletedProcess[str]:
    """Run a Python that imports mirakuru and exits normally as process ``pid`` (root: ``ns_last_pid``)."""
    code = f"""
import os, sys
for attempt in range(100):
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str({pid} - 1))
    child = os.fork()
    if child == 0:
        if os.getpid() == {pid}:
            import mirakuru.base  # registers cleanup_subprocesses, which runs at this normal exit
            print("exiting as", os.getpid(), flush=True)
            sys.exit(0)
        os._exit(0)
    _, status = os.waitpid(child, 0)
    if child == {pid}:
        sys.exit(os.waitstatus_to_exitcode(status))
sys.exit(4)  # another process kept taking the pid
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def _free_pids_in(tag: str, limit: int) -> list[int]:
    """Pids that are substrings of ``tag``'s digit runs and free now (so a process can be given one)."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    found: list[int] = []
    for run in re.findall(r"\d+", tag):
        for i in range(len(run)):
            for j in range(i + 3, min(len(run), i + 7) + 1):
                n = int(run[i:j])
                if run[i] != "0" and 300 < n < pid_max and not psutil.pid_exists(n) and n not in found:
                    found.append(n)
    return found[:limit]


def _can_choose_pids() -> bool:
    try:
        with open("/proc/sys/kernel/ns_last_pid", "w"):
            return True
    except OSError:
        return False


@pytest.mark.lab
def test_exiting_process_whose_pid_is_in_a_lab_tag_kills_nothing(local_lab, tmp_path: Path) -> None:
    if not _can_choose_pids():
        pytest.skip("needs root, to give a process a chosen pid through /proc/sys/kernel/ns_last_pid")
    lab = local_lab
    ns = "procs-test"
    k8s.apply(lab.kube, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    core = kclient.CoreV1Api(lab.kube)
    name = f"sleeper-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_pod(ns, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": "python:3.11",
                                 "command": ["python", "-c", "import time; time.sleep(600)"]}]}})
    pf_tag = ""
    try:
        deadline = time.monotonic() + 60
        uid = core.read_namespaced_pod(name, ns).metadata.uid
        pod_tag = f"{lab.state.lab_id}:pod:{uid}"
        pod_procs: list[psutil.Process] = []
        while time.monotonic() < deadline and not pod_procs:
            pod_procs = _procs.tagged(pod_tag)
            time.sleep(0.2)
        assert pod_procs, f"the node agent never started pod {ns}/{name}"
        # A port-forward's tag, as the external backend makes it with a prefix that holds digits (a free pid).
        pf_target = next(n for n in range(31337, 4_000_000, 7919) if not psutil.pid_exists(n))
        pf_tag = f"{lab.state.lab_id}:pf:attendee-{pf_target}:exampleapp"
        ready = tmp_path / "pf.ready"
        pf = _procs.Daemon([sys.executable, "-c", f"import pathlib, time; pathlib.Path({str(ready)!r}).touch(); time.sleep(600)"],
                           check=ready.exists, tag=pf_tag, log=tmp_path / "pf.log")
        pf_pid = _procs.start(pf, tmp_path / "pf.pid")
        assert pf_pid
        # The lab's components, this test's pod and its port-forward. Other pods of the shared session lab are left
        # out: they come and go on their own (a rotation's rollout restart, the chart's upgrade-crds Job).
        lab_pids = set()
        for p in _procs.tagged(lab.state.lab_id + ":"):
            try:
                tag = _procs.tag_of(p)
            except psutil.Error:  # gone already, before anything here happened
                continue
            if ":pod:" not in tag or tag == pod_tag:
                lab_pids.add(p.pid)
        assert {pod_procs[0].pid, pf_pid} <= lab_pids
        targets = [*_free_pids_in(pod_tag, 2), pf_target]
        if len(targets) < 2:
            pytest.skip(f"no free pid is a substring of this pod's tag {pod_tag} (rare): run again")
        for target in targets:
            proc = _exit_as_pid(target)
            assert proc.returncode == 0 and f"exiting as {target}" in proc.stdout, proc.stdout + proc.stderr
        time.sleep(0.5)
        dead = [pid for pid in lab_pids if not psutil.pid_exists(pid)
                or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE]
        assert not dead, f"lab processes {dead} died when processes with pids {targets} exited (tags {pod_tag}, {pf_tag})"
        assert lab.healthy()
    finally:
        pid = _procs.read_pid(tmp_path / "pf.pid", pf_tag) if pf_tag else None
        if pid:
            _procs.stop_pid(pid, grace=2)
        core.delete_namespaced_pod(name, ns, grace_period_seconds=0)


_LEADER_EXITS_FIRST = r"""
import ctypes, socket, sys, threading, time
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen()
def hold():
    time.sleep(30)
threading.Thread(target=hold).start()
print(srv.getsockname()[1], flush=True)
ctypes.CDLL(None).pthread_exit(None)  # the main thread exits; the other one keeps the process and its socket
"""


def test_a_zombie_leader_whose_threads_still_run_is_not_gone() -> None:
    """Killing a multi-threaded component leaves its main thread a zombie while the other threads exit, and its
    listening socket open until the last one has: ``kill`` must wait for that, or ``up`` finds the port taken."""
    proc = subprocess.Popen([sys.executable, "-c", _LEADER_EXITS_FIRST], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        deadline = time.monotonic() + 10
        while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the main thread did not exit"
            time.sleep(0.05)
        from labkit._state import port_free

        assert not port_free(port)  # the other thread still holds the process's socket
        assert not _procs._gone(proc.pid)
    finally:
        proc.kill()
        proc.wait(10)
    assert _procs._gone(proc.pid)
