"""VSO installed the tutorial's way on the local lab: `helm install` from the lab's chart repository gives the
manager as a pod on the node agent, `helm upgrade` replaces it, `helm uninstall` removes it (issue 14)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from labkit import _procs, cache, connect, helm, install, k8s, static
from labkit.helm_postrender import render
from labkit.local import LocalLab

SELECTOR = "control-plane=controller-manager"
RENDERED = """---
# Source: vault-secrets-operator/templates/deployment.yaml
      containers:
      - name: kube-rbac-proxy
        args:
        - --secure-listen-address=0.0.0.0:8443
        - --upstream=http://127.0.0.1:8080/
        - --logtostderr=true
"""


# -- the post-renderer (pure) --------------------------------------------------------------------
def test_post_renderer_sets_only_the_given_flags() -> None:
    out, changed = render(RENDERED, {"--secure-listen-address": "127.0.0.1:4000",
                                     "--upstream": "http://127.0.0.1:4001/"})
    assert changed == 2
    assert "- --secure-listen-address=127.0.0.1:4000\n" in out and "- --upstream=http://127.0.0.1:4001/\n" in out
    assert "0.0.0.0" not in out and "8080" not in out
    assert out.replace("127.0.0.1:4000", "0.0.0.0:8443").replace("4001", "8080") == RENDERED  # nothing else moved


def test_post_renderer_adds_arguments_after_the_last_flag_it_set() -> None:
    out, _ = render(RENDERED, {"--upstream": "http://127.0.0.1:4001/"}, ["--kubeconfig=$(KUBECONFIG)"])
    assert "- --upstream=http://127.0.0.1:4001/\n        - --kubeconfig=$(KUBECONFIG)\n        - --logtostderr" in out
    assert out.count("--kubeconfig") == 1


def test_post_renderer_runs_as_helm_runs_it_and_refuses_a_flag_it_cannot_find() -> None:
    ok = subprocess.run([str(helm.POST_RENDERER), "--upstream=http://127.0.0.1:1/"], input=RENDERED,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "--upstream=http://127.0.0.1:1/" in ok.stdout
    bad = subprocess.run([str(helm.POST_RENDERER), "--no-such-flag=1"], input=RENDERED, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stdout == "" and "--no-such-flag" in bad.stderr


# -- the real thing ------------------------------------------------------------------------------
needs_tools = pytest.mark.skipif(not all(p.built() for p in install.TOOLS.values()),
                                 reason="helm and kube-rbac-proxy are not built: run `labkit install`")


@pytest.fixture(scope="module")
def lab():
    """A lab of its own: the release replaces (and gives back) the session lab's host-process VSO otherwise."""
    lab = LocalLab(tempfile.mkdtemp(prefix="vsolab-helm-"))
    try:
        lab.up(progress=lambda m: None)
        connect.create_vault_namespace(lab)
        connect.create_vault_connection(lab)
        connect.create_token_reviewer(lab)
        connect.enable_kubernetes_auth(lab)
        static.enable_kv(lab)
        static.write_creds(lab, password="before-helm")
        static.write_policy(lab)
        static.create_role(lab)
        static.create_namespace(lab)
        static.create_vault_auth(lab)
        yield lab
    finally:
        lab.down(purge=True)


def _pods(lab: LocalLab) -> list:
    return [p for p in k8s.pods(lab.kube, helm.NAMESPACE, SELECTOR) if not p.metadata.deletion_timestamp]


def _ready_pod(lab: LocalLab, not_uid: str = ""):
    def probe():
        ready = [p for p in k8s.ready_pods(lab.kube, helm.NAMESPACE, SELECTOR) if p.metadata.uid != not_uid]
        return ready[0] if len(ready) == 1 and len(_pods(lab)) == 1 else None
    return k8s.wait_for("one Ready operator pod", probe, 180, interval=1)


def _processes(lab: LocalLab, pod_uid: str) -> list[list[str]]:
    return [p.cmdline() for p in _procs.tagged(f"{lab.state.lab_id}:pod:{pod_uid}")]


def _kubectl(lab: LocalLab, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(install.kubectl_binary()), *args], env={**os.environ, **lab.env()},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.lab
@needs_tools
def test_the_chart_repository_serves_the_built_managers_chart(lab: LocalLab) -> None:
    with urllib.request.urlopen(f"{helm.repo_url(lab)}/index.yaml", timeout=5) as resp:
        index = resp.read().decode()
    assert f"version: {install.VSO_VERSION}" in index and f"vault-secrets-operator-{install.VSO_VERSION}.tgz" in index
    assert lab.components["charts"].status().healthy
    assert (lab.tools_dir / "helm").exists()


@pytest.mark.lab
@needs_tools
def test_helm_install_runs_the_manager_as_a_ready_pod_that_syncs(lab: LocalLab) -> None:
    assert lab.components["vso"].pid() is not None
    helm.install_release(lab)
    assert lab.components["vso"].pid() is None  # never two operators reconciling
    pod = _ready_pod(lab)
    assert pod.status.phase == "Running" and {c.name for c in pod.spec.containers} == {"manager", "kube-rbac-proxy"}
    assert pod.metadata.labels.get("app.kubernetes.io/instance") == helm.RELEASE
    cmdlines = _processes(lab, pod.metadata.uid)
    # the built manager (under root, the pods' user runs a read-only mirror of it: labkit._runas.PodHost.runnable)
    manager = next(c for c in cmdlines if Path(c[0]).name == install.PRODUCTS["vso"].paths()["vso-manager"].name)
    assert "--leader-elect" in manager  # the chart's own flags, as rendered
    # Everything the release listens on is on 127.0.0.1 only.
    pids = {p.pid for p in _procs.tagged(f"{lab.state.lab_id}:pod:{pod.metadata.uid}")}
    listening = [c.laddr for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert {a.ip for a in listening} == {"127.0.0.1"}, listening
    assert {lab.ports[n] for n in ("operator_probe", "operator_metrics", "operator_https")} <= {a.port for a in listening}
    static.create_static_secret(lab, "2s")
    k8s.wait_for("the release's VSO to sync the VaultStaticSecret",
                 lambda: static.read_secret(lab).get("password") == "before-helm" or None, 120, interval=1)
    static.write_creds(lab, password="after-helm")
    k8s.wait_for("the release's VSO to follow Vault", lambda: static.read_secret(lab).get("password") == "after-helm"
                 or None, 120, interval=1)


@pytest.mark.lab
@needs_tools
def test_kubectl_logs_prints_the_managers_log(lab: LocalLab) -> None:
    res = _kubectl(lab, "logs", "-n", helm.NAMESPACE, f"deploy/{helm.DEPLOYMENT}", "-c", "manager")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert any("VaultStaticSecret" in json.dumps(entry) for entry in lines), res.stdout[-2000:]


@pytest.mark.lab
@needs_tools
def test_helm_upgrade_replaces_the_pod_with_the_new_flag(lab: LocalLab) -> None:
    old = _ready_pod(lab)
    vals = helm.write_values(lab)
    # Stage 5's values: the transit key the chart's VaultAuth for the encrypted cache names (it requires them).
    enc = lab.state.write_private("helm/cache-values.yaml", cache.helm_values(lab))
    args = ["upgrade", helm.RELEASE, helm.CHART, "--version", install.VSO_VERSION, "-n", helm.NAMESPACE, "-f", str(vals),
            "-f", str(enc), "--set", "controller.manager.clientCache.persistenceModel=direct-encrypted",
            "--post-renderer", str(helm.POST_RENDERER), "--wait", "--timeout", "3m"]
    for a in helm.post_renderer_args(lab):
        args += ["--post-renderer-args", a]
    helm.run(lab, *args)
    new = _ready_pod(lab, not_uid=old.metadata.uid)
    assert new.metadata.uid != old.metadata.uid
    manager = next(c for c in new.spec.containers if c.name == "manager")
    assert "--client-cache-persistence-model=direct-encrypted" in manager.args
    running = [c for c in _processes(lab, new.metadata.uid) if c[0].endswith("vso-manager")]
    assert running and "--client-cache-persistence-model=direct-encrypted" in running[0]
    assert not _processes(lab, old.metadata.uid)


@pytest.mark.lab
@needs_tools
def test_helm_uninstall_leaves_no_operator_pod_and_gives_the_host_operator_back(lab: LocalLab) -> None:
    helm.uninstall_release(lab)
    k8s.wait_for("the operator pods to be gone", lambda: not k8s.pods(lab.kube, helm.NAMESPACE, SELECTOR) or None, 120,
                 interval=1)
    assert _kubectl(lab, "get", "deploy", "-n", helm.NAMESPACE, helm.DEPLOYMENT).returncode != 0
    assert not helm.installed(lab)
    # The pre-delete hook Job ran as a pod and was removed after it succeeded.
    assert not [j for j in k8s.pods(lab.kube, helm.NAMESPACE, "job-name") if j.metadata.name.startswith("pdcc-")]
    assert lab.components["vso"].status().healthy
    static.write_creds(lab, password="host-again-" + str(int(time.time())))
    want = static.read_secret  # the host-process VSO syncs again
    k8s.wait_for("the host-process VSO to sync again",
                 lambda: want(lab).get("password", "").startswith("host-again-") or None, 120, interval=1)


def test_chart_repository_serves_only_repository_files(tmp_path) -> None:
    import http.server
    import threading
    import urllib.error

    from labkit._chartrepo import EMPTY_INDEX, handler

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler(tmp_path))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        with urllib.request.urlopen(f"{base}/index.yaml", timeout=5) as r:
            assert r.read() == EMPTY_INDEX  # a valid, empty repository before `labkit install`
        (tmp_path / "index.yaml").write_text("apiVersion: v1\nentries: {x: []}\n")
        (tmp_path / "c-1.0.0.tgz").write_bytes(b"\x1f\x8b")
        (tmp_path / "secret.txt").write_text("no")
        with urllib.request.urlopen(f"{base}/index.yaml", timeout=5) as r:
            assert b"entries: {x: []}" in r.read()
        with urllib.request.urlopen(f"{base}/c-1.0.0.tgz", timeout=5) as r:
            assert r.read() == b"\x1f\x8b"
        for path in ("/secret.txt", "/../index.yaml", "/sub/c-1.0.0.tgz", "/"):
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(base + path, timeout=5)
            assert exc.value.code == 404
    finally:
        srv.shutdown()


def test_args_expand_the_containers_variables_as_a_kubelet_does() -> None:
    from labkit._containers import expand_vars

    env = {"KUBECONFIG": "/pods/a/serviceaccount/kubeconfig"}
    assert expand_vars("--kubeconfig=$(KUBECONFIG)", env) == "--kubeconfig=/pods/a/serviceaccount/kubeconfig"
    assert expand_vars("--x=$(UNSET)", env) == "--x=$(UNSET)"
    assert expand_vars("--x=$$(KUBECONFIG) $$5", env) == "--x=$(KUBECONFIG) $5"
