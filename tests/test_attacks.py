"""Attacks on a lab run by root, by a second, unprivileged local user (issue 11).

A shared machine is the normal case: every local user reaches every lab's 127.0.0.1 ports. Here root
runs one lab (at the start of notebook 04: the example app runs with dynamic credentials) and the user
``vsolab-attacker`` (created when missing) tries what any local user can: talk to every port the lab
opens without the lab's credentials, and reach the files of its pods.

Reusable pieces for other attack tests: the ``attacker`` fixture (skips unless root), ``as_attacker(cmd)``
(runs a command as that user and returns the CompletedProcess), ``attacker_http(...)`` (one HTTP(S)
request made by that user), and ``lab_fixture(..., requires=("attacker",))`` (tests/_labs.py: a root-run lab in a
temporary state directory of its own, purged at the end).
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psutil
import pytest
from _labs import lab_fixture
from _params import ci_params
from _users import ensure_user

from labkit import _procs, app, dynamic, k8s
from labkit.backends.local import LocalLab

pytestmark = pytest.mark.lab
ATTACKER = "vsolab-attacker"
ATTACKER_PATH = "/usr/local/bin:/usr/bin:/bin"
PARAMS = ci_params()


# -- the attacker ----------------------------------------------------------------------------------------------------
@functools.cache
def _ensure_attacker() -> str:
    ensure_user(ATTACKER)
    return ATTACKER


@pytest.fixture(scope="session")
def attacker() -> str:
    """The unprivileged local user the attacks run as (created when missing); skips unless the tests run as root."""
    if os.geteuid() != 0:
        pytest.skip("attack tests run a lab as root and attack it as a second local user: run them as root")
    if not shutil.which("runuser") or not shutil.which("useradd"):
        pytest.skip("attack tests need runuser and useradd (util-linux, passwd)")
    return _ensure_attacker()


def as_attacker(cmd: list[str], *, timeout: float = 60, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as the attacker (or ``user``), with a clean environment, from ``/``."""
    who = user or _ensure_attacker()
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return subprocess.run([runuser, "-u", who, "--", *cmd], capture_output=True, text=True, timeout=timeout,
                          cwd="/", env={"PATH": ATTACKER_PATH, "LANG": "C.UTF-8"})


def attacker_python() -> str:
    """A Python any local user can run (not one under root's 0700 home)."""
    for cand in ("/usr/local/bin/python3", "/usr/bin/python3"):
        if os.access(cand, os.X_OK) and as_attacker([cand, "-c", "pass"]).returncode == 0:
            return cand
    pytest.skip("no Python that an unprivileged user can run in /usr/local/bin or /usr/bin")


#: One HTTP(S) request, standard library only; prints {"status", "body"} or {"error"} as JSON.
_HTTP = r"""
import http.client, json, ssl, sys
req = json.loads(sys.argv[1])
try:
    if req["tls"]:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", req["port"], timeout=5, context=ctx)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", req["port"], timeout=5)
    conn.request(req["method"], req["path"], body=req.get("body"), headers=req.get("headers", {}))
    r = conn.getresponse()
    print(json.dumps({"status": r.status, "body": r.read(4000).decode(errors="replace")}))
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
"""


def attacker_http(port: int, path: str, *, tls: bool = False, method: str = "GET", body: str | None = None,
                  headers: dict[str, str] | None = None) -> dict[str, Any]:
    """What the attacker gets for one request to 127.0.0.1:``port``: ``{"status", "body"}`` or ``{"error"}``."""
    req = {"port": port, "path": path, "tls": tls, "method": method, "body": body, "headers": headers or {}}
    out = as_attacker([attacker_python(), "-c", _HTTP, json.dumps(req)])
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


# -- the lab -----------------------------------------------------------------------------------------------------------
#: The lab run by root at the start of notebook 04 (the example app runs with dynamic PostgreSQL credentials), in a
#: temporary state directory; purged at the end of the module. Skips unless the tests run as root (``attacker``).
lab = lab_fixture(4, params=PARAMS, name="attacks", requires=("attacker",))


def pod_processes(lab: LocalLab) -> list[psutil.Process]:
    return _procs.tagged(f"{lab.state.lab_id}:pod:")


def api_healthy(lab: LocalLab) -> bool:
    return lab.components["apiserver"].check() and lab.components["etcd"].check()


def refused_by_tls(answer: dict[str, Any]) -> bool:
    """A plain-HTTP request met a TLS listener: no answer, or Go's "HTTP request to an HTTPS server"."""
    return "error" in answer or (answer["status"] == 400 and "HTTPS server" in answer["body"])


# -- etcd's peer port -------------------------------------------------------------------------------------------------
def test_etcd_peer_port_refuses_a_stranger(lab: LocalLab) -> None:
    peer = lab.ports["etcd_peer"]
    members = attacker_http(peer, "/members")
    raft = attacker_http(peer, "/raft", method="POST", body="\x00" * 16,
                         headers={"Content-Type": "application/protobuf", "X-Etcd-Cluster-ID": "1"})
    assert refused_by_tls(members), f"etcd's peer port answered a stranger's GET /members: {members}"
    assert refused_by_tls(raft), f"etcd's peer port answered a stranger's POST /raft: {raft}"
    # Over TLS, without a client certificate from the lab's CA: the handshake (or the first read) fails.
    tls_members = attacker_http(peer, "/members", tls=True)
    tls_raft = attacker_http(peer, "/raft", tls=True, method="POST", body="\x00" * 16)
    assert "error" in tls_members, f"etcd's peer port answered over TLS without a client certificate: {tls_members}"
    assert "error" in tls_raft, f"etcd's peer port took a raft POST without a client certificate: {tls_raft}"
    assert api_healthy(lab)
    assert lab.components["etcd"].advertised_peer_urls() == [f"https://127.0.0.1:{peer}"]


def test_etcd_peer_port_takes_only_the_peer_certificate(lab: LocalLab) -> None:
    """Even a certificate from the lab's own CA is refused on the peer port unless it is the peer's."""
    import requests

    pki = lab.state.path("pki")

    def members(name: str) -> str:
        try:
            r = requests.get(f"https://127.0.0.1:{lab.ports['etcd_peer']}/members", timeout=5, verify=str(pki / "ca.crt"),
                             cert=(str(pki / f"{name}.crt"), str(pki / f"{name}.key")))
            return f"{r.status_code} {r.text}"
        except requests.exceptions.SSLError:
            return "refused"

    assert members("etcd-peer").startswith("200 ") and "peerURLs" in members("etcd-peer")
    assert members("etcd-client") == "refused" and members("admin") == "refused"


def test_etcd_client_port_refuses_a_stranger(lab: LocalLab) -> None:
    answer = attacker_http(lab.ports["etcd"], "/v3/kv/range", tls=True, method="POST", body='{"key": "AA==", "range_end": "AA=="}')
    assert "error" in answer, f"etcd's client port answered without a client certificate: {answer}"


# -- the other listeners: what a stranger gets without the lab's credentials ------------------------------------------
def test_api_server_and_controller_manager_give_a_stranger_no_data(lab: LocalLab) -> None:
    secrets = attacker_http(lab.ports["apiserver"], "/api/v1/secrets", tls=True)
    assert secrets.get("status") in (401, 403), f"the API server listed Secrets for a stranger: {secrets}"
    metrics = attacker_http(lab.ports["kcm"], "/metrics", tls=True)
    assert metrics.get("status") in (401, 403), f"the controller manager served /metrics to a stranger: {metrics}"


def test_the_agents_kubelet_api_refuses_a_stranger(lab: LocalLab) -> None:
    """Container logs, which the API server fetches for `kubectl logs`: only the API server's certificate opens them."""
    pod = pod_processes(lab)[0]
    ns, name = lab.names.dynamic_ns, next(p.metadata.name for p in k8s.pods(lab.kube, lab.names.dynamic_ns, f"app={lab.names.app}"))
    answer = attacker_http(lab.ports["kubelet"], f"/containerLogs/{ns}/{name}/exampleapp", tls=True)
    assert "error" in answer, f"the node agent's kubelet API served logs without a client certificate: {answer}"
    assert pod.is_running()


def test_openbao_gives_a_stranger_no_secret_and_no_control(lab: LocalLab) -> None:
    mounts = attacker_http(lab.ports["openbao"], "/v1/sys/mounts")
    assert mounts.get("status") == 403, f"OpenBao listed its mounts without a token: {mounts}"
    seal = attacker_http(lab.ports["openbao"], "/v1/sys/seal", method="PUT")
    assert seal.get("status") == 403, f"OpenBao took a seal request without a token: {seal}"
    for path in ("/v1/sys/generate-root/attempt", "/v1/sys/rekey/init"):
        started = attacker_http(lab.ports["openbao"], path, method="PUT", body='{"secret_shares": 1, "secret_threshold": 1}')
        assert started.get("status", 0) >= 400, f"OpenBao started {path} for a stranger: {started}"
    cluster = attacker_http(lab.ports["openbao_cluster"], "/", tls=True)
    assert "error" in cluster, f"OpenBao's cluster port answered over TLS without its cluster certificate: {cluster}"
    assert lab.components["openbao"].check()


#: A PostgreSQL StartupMessage for user root, database postgres; prints the server's first message type and code.
_PG_STARTUP = r"""
import socket, struct, sys
params = b"user\x00root\x00database\x00postgres\x00\x00"
msg = struct.pack("!ii", 8 + len(params), 196608) + params
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(msg)
head = s.recv(9)
print(chr(head[0]), struct.unpack("!i", head[5:9])[0] if head[:1] == b"R" else "")
"""


def test_postgres_asks_a_stranger_for_a_password(lab: LocalLab) -> None:
    out = as_attacker([attacker_python(), "-c", _PG_STARTUP, str(lab.ports["postgres"])])
    assert out.returncode == 0, out.stderr
    kind, code = out.stdout.split()
    assert (kind, code) == ("R", "10"), f"PostgreSQL did not ask for a SCRAM password (message {kind} {code})"


def test_operator_and_agent_ports_give_a_stranger_no_credential(lab: LocalLab) -> None:
    sec = lab.state.secrets()
    app_creds = dynamic.read_secret(lab)
    values = [sec["vault_root_token"], sec["vault_unseal_key"], sec["postgres_password"], app_creds["password"]]
    for port, path in ((lab.ports["operator_metrics"], "/metrics"), (lab.ports["operator_probe"], "/readyz"),
                       (lab.ports["agent"], "/healthz")):
        answer = attacker_http(port, path)
        assert answer.get("status") == 200, (port, path, answer)
        assert not [v for v in values if v in answer["body"]], f"{path} on port {port} shows a credential"


# -- pods -----------------------------------------------------------------------------------------------------------------
def test_pod_processes_do_not_run_as_root_and_the_app_still_works(lab: LocalLab) -> None:
    procs = pod_processes(lab)
    assert procs, "the example app runs, so there is a pod process to check"
    ids = {p.pid: (p.uids().real, p.uids().effective, p.gids().real, p.gids().effective) for p in procs}
    assert all(0 not in v for v in ids.values()), f"pod processes run as root (pid: uid, euid, gid, egid): {ids}"
    code, body = app.call(lab, lab.names.dynamic_ns, "/status")
    assert code == 200 and body["connected_as"] == dynamic.read_secret(lab)["username"], body


def test_another_user_cannot_read_or_change_a_pods_files(lab: LocalLab) -> None:
    # The app's pod (its directory is <namespace>_<pod>), not the operator's, which mounts no ConfigMap.
    proc = next(p for p in pod_processes(lab) if Path(p.cwd()).parent.name.startswith(f"{lab.names.dynamic_ns}_"))
    home = Path(proc.cwd())
    pod_user = pwd.getpwuid(proc.uids().real).pw_name
    code = home.parent / "volumes" / "code" / "app.py"
    assert code.is_file(), f"the pod's ConfigMap volume is not beside its home {home}"
    # Another local user: nothing of the pod's directory can be listed, read or written.
    for cmd in (["ls", str(home)], ["cat", str(code)], ["touch", str(home / "planted")],
                ["ln", "-s", "/etc/shadow", str(code.parent / "planted")]):
        out = as_attacker(cmd)
        assert out.returncode != 0, f"{ATTACKER} could run {cmd}: {out.stdout}"
    # The pod's own user reads its volumes but cannot change them (the agent, as root, writes there).
    assert as_attacker(["cat", str(code)], user=pod_user).returncode == 0
    for cmd in (["touch", str(code)], ["ln", "-s", "/etc/shadow", str(code.parent / "planted")],
                ["rm", "-f", str(code)]):
        out = as_attacker(cmd, user=pod_user)
        assert out.returncode != 0, f"the pod's user {pod_user} could run {cmd} on its read-only volume"
    assert code.is_file()


def test_exec_probes_run_as_the_pod_user_too(lab: LocalLab) -> None:
    from kubernetes import client as kclient

    ns, name = lab.names.dynamic_ns, "vsolab-uid-probe"
    said = "import os, sys; print('uid', os.getuid(), 'gid', os.getgid()); sys.exit(1)"
    k8s.apply(lab.kube, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}, "spec": {
        "terminationGracePeriodSeconds": 1, "containers": [{
            "name": "c", "image": "python:3.12-slim", "command": ["python", "-c", "import time; time.sleep(600)"],
            "readinessProbe": {"exec": {"command": ["python", "-c", said]}, "periodSeconds": 1}}]}})
    core = kclient.CoreV1Api(lab.kube)

    def failed_probe() -> str | None:
        events = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
        return next((e.message for e in events if e.reason == "Unhealthy" and "uid" in (e.message or "")), None)

    try:
        message = k8s.wait_for("the exec probe to report its uid", failed_probe, 60)
        ids = message.split("uid", 1)[1].split()
        assert ids[0] != "0" and ids[2] != "0", f"the exec probe ran as root: {message}"
    finally:
        k8s.delete(lab.kube, "v1", "Pod", name, ns)
        k8s.wait_for("the probe pod to go", lambda: not [p for p in k8s.pods(lab.kube, ns, "") if p.metadata.name == name], 60)


# -- a lab made before peer TLS ---------------------------------------------------------------------------------------
def test_an_etcd_made_with_a_plain_http_peer_url_gains_tls_on_the_next_up(attacker: str) -> None:
    """State from an older labkit: no peer certificate, a server-only etcd certificate, a member advertised with an
    http peer URL, and that etcd still running. The next ``ensure`` replaces it and keeps its data."""
    from labkit.backends.local.pki import ensure_etcd_pki, ensure_pki

    lab = LocalLab(tempfile.mkdtemp(prefix="vsolab-attacks-old-"))
    etcd = lab.components["etcd"]
    try:
        lab.state.ensure()
        ensure_pki(lab.state)
        ensure_etcd_pki(lab.state)
        pki = lab.state.path("pki")
        for name in ("etcd-peer.crt", "etcd-peer.key"):
            (pki / name).unlink()
        old_ca = (pki / "ca.crt").read_bytes()
        peer = lab.ports["etcd_peer"]
        new = etcd.command()
        cut = new.index("--listen-peer-urls")  # the old command: the same client flags, raft over plain HTTP
        cmd = [*new[:cut], "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
               f"http://127.0.0.1:{peer}", "--initial-cluster", f"vsolab=http://127.0.0.1:{peer}", "--unsafe-no-fsync"]
        old = _procs.Daemon(cmd, check=etcd.check, tag=etcd.tag, log=etcd.log, timeout=60)
        _procs.start(old, etcd.pidfile)
        assert attacker_http(peer, "/members").get("status") == 200, "the old-style etcd serves raft over plain HTTP"
        etcd._post("/v3/kv/put", {"key": "a2VlcA==", "value": "b2xk"})  # "keep": "old"
        _server_only_etcd_cert(lab)  # as an older labkit issued it

        ensure_etcd_pki(lab.state)  # what `up` runs first
        assert etcd.ensure() == "restarted (its settings were outdated)"
        lab.components["etcd"].ensure()  # and again: reused, nothing to migrate
        assert etcd.advertised_peer_urls() == [f"https://127.0.0.1:{peer}"]
        assert (pki / "etcd-peer.crt").exists() and (pki / "ca.crt").read_bytes() == old_ca
        assert etcd._post("/v3/kv/range", {"key": "a2VlcA=="})["kvs"][0]["value"] == "b2xk"
        assert refused_by_tls(attacker_http(peer, "/members"))
        assert "error" in attacker_http(peer, "/members", tls=True)
    finally:
        etcd.stop()
        lab.state.purge()


def _server_only_etcd_cert(lab: LocalLab) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from labkit.backends.local.pki import _cert_pem, _issue, _key_pem, _name

    pki = lab.state.path("pki")
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key, cert = _issue(ca_key, ca_cert, _name("etcd"), ExtendedKeyUsageOID.SERVER_AUTH)  # type: ignore[arg-type]
    lab.state.write_private("pki/etcd.key", _key_pem(key))
    lab.state.write_private("pki/etcd.crt", _cert_pem(cert))
