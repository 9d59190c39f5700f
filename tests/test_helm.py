"""VSO installed the tutorial's way on the local lab: `helm install` from the lab's chart repository gives the
manager as a pod on the node agent, `helm upgrade` replaces it, `helm uninstall` removes it (issue 14)."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import psutil
import pytest
from _labs import lab_fixture

from labkit import _cells, _procs, cache, connect, helm, install, k8s, static
from labkit.backends.local import LocalLab
from labkit.helm_postrender import render, set_probe_fields
from labkit.notebook import SPEC

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


PROBES = """      containers:
      - name: manager
        livenessProbe:
          httpGet:
            path: /healthz
            port: 8081
          initialDelaySeconds: 15
          periodSeconds: 20
        readinessProbe:
          httpGet:
            path: /readyz
            port: 8081
          initialDelaySeconds: 5
          periodSeconds: 10
        resources: {}
"""


def test_post_renderer_sets_a_probes_own_fields_and_nothing_else() -> None:
    out, used = set_probe_fields(PROBES, {"readinessProbe.initialDelaySeconds": "1", "readinessProbe.periodSeconds": "1",
                                          "readinessProbe.port": "9"})
    assert used == {"readinessProbe.initialDelaySeconds", "readinessProbe.periodSeconds"}  # port is httpGet's
    assert "          initialDelaySeconds: 1\n          periodSeconds: 1\n        resources" in out
    assert "initialDelaySeconds: 15\n          periodSeconds: 20" in out and "port: 8081" in out  # liveness kept
    assert out.replace("Seconds: 1\n", "Seconds: X\n", 2) == PROBES.replace(
        "initialDelaySeconds: 5", "initialDelaySeconds: X").replace("periodSeconds: 10", "periodSeconds: X")


def test_post_renderer_refuses_a_probe_field_the_manifests_do_not_set() -> None:
    ok = subprocess.run([str(helm.POST_RENDERER), "readinessProbe.periodSeconds=1"], input=PROBES,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "periodSeconds: 1\n" in ok.stdout
    bad = subprocess.run([str(helm.POST_RENDERER), "startupProbe.periodSeconds=1"], input=PROBES,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stdout == "" and "startupProbe.periodSeconds" in bad.stderr
    wrong = subprocess.run([str(helm.POST_RENDERER), "readinessProbe.periodSeconds=soon"], input=PROBES,
                           capture_output=True, text=True)
    assert wrong.returncode == 1 and "<probe>.<field>=<integer>" in wrong.stderr


def test_the_release_is_upgraded_only_when_the_renderers_arguments_change() -> None:
    a = "#!/bin/sh\nexec /usr/bin/python3 /a/labkit/helm_postrender.py --upstream=http://127.0.0.1:1/ x.y=1\n"
    assert helm._renderer_args(a) == ["--upstream=http://127.0.0.1:1/", "x.y=1"]
    assert helm._renderer_args(a.replace("/usr/bin/python3", "/opt/venv/bin/python3.11").replace("/a/", "/b/")) \
        == helm._renderer_args(a)  # another spelling of the interpreter, a moved checkout: the same manifests
    assert helm._renderer_args(a.replace(":1/", ":2/")) != helm._renderer_args(a)
    assert helm._renderer_args("") is None


# -- the notebook's files ---------------------------------------------------------------------------
def test_other_backends_export_hashicorps_repo_an_empty_values_file_and_a_pass_through_renderer(tmp_path) -> None:
    from labkit._state import State

    env = helm.passthrough_env(State(tmp_path / "state"), "http://192.168.49.250:8200")
    assert env["VSO_CHART_REPO"] == "https://helm.releases.hashicorp.com"
    assert env["VAULT_ADDR_FOR_CLUSTER"] == "http://192.168.49.250:8200"
    import yaml

    assert yaml.safe_load(Path(env["LAB_HELM_VALUES"]).read_text()) == {}
    out = subprocess.run([env["LAB_HELM_POSTRENDERER"]], input=RENDERED, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == RENDERED
    # again: the same files, nothing rewritten
    mtime = Path(env["LAB_HELM_POSTRENDERER"]).stat().st_mtime_ns
    assert helm.passthrough_env(State(tmp_path / "state"), "http://x") ["LAB_HELM_POSTRENDERER"] == env["LAB_HELM_POSTRENDERER"]
    assert Path(env["LAB_HELM_POSTRENDERER"]).stat().st_mtime_ns == mtime


def test_the_release_values_less_the_labs_own_are_the_tutorials() -> None:
    got = {"controller": {"strategy": {"type": "Recreate"}, "manager": {"extraArgs": ["--x"], "clientCache": {
        "persistenceModel": "direct-encrypted"}}}, "defaultVaultConnection": {"enabled": True}}
    lab_own = {"controller": {"strategy": {"type": "Recreate"}, "manager": {"extraArgs": ["--y"]}}}
    assert helm._strip(got, lab_own) == {"controller": {"manager": {"clientCache": {"persistenceModel": "direct-encrypted"}}},
                                         "defaultVaultConnection": {"enabled": True}}
    assert helm.persistence_model(helm._strip(got, lab_own)) == "direct-encrypted"
    assert helm.persistence_model({}) == "none"


# -- the real thing ------------------------------------------------------------------------------
needs_tools = pytest.mark.skipif(not all(p.built() for p in install.TOOLS.values()),
                                 reason="helm and kube-rbac-proxy are not built: run `labkit install`")


#: A lab of its own, started as notebook 00 starts it: without the operator (notebook 01 installs it).
lab = lab_fixture(operator=False, name="helm")


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


def _revision(lab: LocalLab) -> int:
    return int(json.loads(helm.run(lab, "list", "-n", helm.NAMESPACE, "-o", "json"))[0]["revision"])


def _operator_row(lab: LocalLab):
    return next(h for h in lab.status() if h.component == "operator")


@pytest.mark.lab
@needs_tools
def test_up_without_the_operator_is_healthy_and_says_notebook_01_installs_it(lab: LocalLab) -> None:
    row = _operator_row(lab)
    assert row.healthy and row.detail == "not installed (notebook 01 installs it)" and row.pid is None
    assert lab.healthy()
    assert not helm.installed(lab) and not lab.operator_installed()
    assert lab.operator_settings() == {"client_cache_persistence_model": "none"}
    assert "operator" not in lab.up(progress=lambda m: None, operator=False)  # a warm up leaves it so
    assert not helm.installed(lab)
    with urllib.request.urlopen(f"{helm.repo_url(lab)}/index.yaml", timeout=5) as resp:
        index = resp.read().decode()
    assert f"version: {install.VSO_VERSION}" in index and f"vault-secrets-operator-{install.VSO_VERSION}.tgz" in index
    assert lab.components["charts"].status().healthy
    assert (lab.tools_dir / "helm").exists()


@pytest.mark.lab
@needs_tools
def test_the_notebooks_helm_cell_installs_a_ready_manager_pod_that_syncs(lab: LocalLab) -> None:
    env = lab.env()
    assert Path(env["LAB_HELM_VALUES"]).is_file() and os.access(env["LAB_HELM_POSTRENDERER"], os.X_OK)
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", helm.INSTALL_COMMAND], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    pod = _ready_pod(lab)
    assert pod.status.phase == "Running" and {c.name for c in pod.spec.containers} == {"manager", "kube-rbac-proxy"}
    assert pod.metadata.labels.get("app.kubernetes.io/instance") == helm.RELEASE
    # the tutorial's values came in by the second -f (stdin), the lab's by $LAB_HELM_VALUES
    values = json.loads(helm.run(lab, "get", "values", helm.RELEASE, "-n", helm.NAMESPACE, "-o", "json"))
    assert values["defaultVaultConnection"] == {"enabled": True, "address": lab.vault_addr, "skipTLSVerify": False}
    assert values["controller"]["strategy"] == {"type": "Recreate"}
    row = _operator_row(lab)
    assert row.healthy and row.detail == "Running, Ready, restarts 0" and row.address.endswith(pod.metadata.name)
    # the post-renderer's readiness probe is in the pod's spec, where the agent reads it (the chart says 5 s, 10 s)
    manager_spec = next(c for c in pod.spec.containers if c.name == "manager")
    probe = manager_spec.readiness_probe
    assert (probe.initial_delay_seconds, probe.period_seconds) == tuple(helm.READINESS_PROBE.values()) == (1, 1)
    assert manager_spec.liveness_probe.initial_delay_seconds == 15  # the chart's: the post-renderer left it
    cmdlines = _processes(lab, pod.metadata.uid)
    # the built manager (under root, the pods' user runs a read-only mirror of it: labkit.backends.local.runas.PodHost.runnable)
    manager = next(c for c in cmdlines if Path(c[0]).name == install.PRODUCTS["vso"].paths()["vso-manager"].name)
    assert "--leader-elect" in manager and row.pid in {p.pid for p in _procs.tagged(f"{lab.state.lab_id}:pod:")}
    # Everything the release listens on is on 127.0.0.1 only.
    pids = {p.pid for p in _procs.tagged(f"{lab.state.lab_id}:pod:{pod.metadata.uid}")}
    listening = [c.laddr for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert {a.ip for a in listening} == {"127.0.0.1"}, listening
    assert {lab.ports[n] for n in ("operator_probe", "operator_metrics", "operator_https")} <= {a.port for a in listening}
    # notebook 01 and 02: connect, then a VaultStaticSecret
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
    static.create_static_secret(lab, "2s")
    k8s.wait_for("the release's VSO to sync the VaultStaticSecret",
                 lambda: static.read_secret(lab).get("password") == "before-helm" or None, 120, interval=1)


@pytest.mark.lab
@needs_tools
def test_a_warm_up_does_not_run_helm_again(lab: LocalLab) -> None:
    rev = _revision(lab)
    actions = lab.up(progress=lambda m: None)
    assert actions["operator"] == "reused" and _revision(lab) == rev
    lab.down()
    actions = lab.up(progress=lambda m: None)
    assert actions["operator"] == "reused" and _revision(lab) == rev  # the agent brought the pod back
    assert _operator_row(lab).healthy
    static.write_creds(lab, password="after-warm-up")
    k8s.wait_for("VSO to sync after the warm up", lambda: static.read_secret(lab).get("password") == "after-warm-up"
                 or None, 120, interval=1)


@pytest.mark.lab
@needs_tools
def test_kubectl_logs_prints_the_managers_log_and_the_previous_one_after_a_kill(lab: LocalLab) -> None:
    res = _kubectl(lab, "logs", "-n", helm.NAMESPACE, f"deploy/{helm.DEPLOYMENT}", "-c", "manager")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert any("VaultStaticSecret" in json.dumps(entry) for entry in lines), res.stdout[-2000:]
    before = _ready_pod(lab)
    restarts = {s.name: s.restart_count for s in before.status.container_statuses}
    lab.kill("operator")
    k8s.wait_for("the agent to restart the manager", lambda: any(
        s.name == "manager" and s.restart_count == restarts["manager"] + 1 and s.ready
        for s in k8s.pods(lab.kube, helm.NAMESPACE, SELECTOR)[0].status.container_statuses) or None, 120, interval=0.5)
    assert _ready_pod(lab).metadata.uid == before.metadata.uid  # the container restarted, not the pod
    assert _operator_row(lab).detail.endswith(f"restarts {sum(restarts.values()) + 1}")
    prev = _kubectl(lab, "logs", "-n", helm.NAMESPACE, f"deploy/{helm.DEPLOYMENT}", "-c", "manager", "--previous")
    assert prev.returncode == 0, prev.stderr
    assert any(line.startswith("{") for line in prev.stdout.splitlines()), prev.stdout[-1000:]
    described = _kubectl(lab, "describe", "pod", "-n", helm.NAMESPACE, before.metadata.name)
    assert described.returncode == 0 and "spec.containers{manager}" in described.stdout, described.stdout[-2000:]
    static.write_creds(lab, password="after-kill")
    k8s.wait_for("the restarted manager to sync", lambda: static.read_secret(lab).get("password") == "after-kill"
                 or None, 120, interval=1)


@pytest.mark.lab
@needs_tools
def test_helm_upgrade_with_the_cache_values_replaces_the_pod_with_the_new_flag(lab: LocalLab) -> None:
    old = _ready_pod(lab)
    # notebook 05's own cells: transit engine, key, policy, the operator's role, and its helm upgrade
    _cells.run_steps(lab, 5, {k: d for k, (_, d) in SPEC.items()})
    new = _ready_pod(lab, not_uid=old.metadata.uid)
    assert new.metadata.uid != old.metadata.uid
    manager = next(c for c in new.spec.containers if c.name == "manager")
    assert "--client-cache-persistence-model=direct-encrypted" in manager.args
    running = [c for c in _processes(lab, new.metadata.uid) if c[0].endswith("vso-manager")]
    assert running and "--client-cache-persistence-model=direct-encrypted" in running[0]
    assert not _processes(lab, old.metadata.uid)
    assert lab.operator_settings() == {"client_cache_persistence_model": "direct-encrypted"}
    values = helm.release_values(lab)  # the learner's values are kept
    assert values["defaultVaultConnection"]["address"] == lab.vault_addr
    cache.wait_for_cache(lab)


@pytest.mark.lab
@needs_tools
def test_helm_uninstall_leaves_no_operator_pod_and_no_stuck_object(lab: LocalLab) -> None:
    from kubernetes import client as kclient

    assert [o["metadata"]["name"] for o in helm._release_objects(lab, "vaultauths")], "the chart's transit VaultAuth"
    done = lab.uninstall_operator()
    assert not any("finalizer" in step for step in done), done  # deleted while the manager ran: nothing stuck
    assert not k8s.pods(lab.kube, helm.NAMESPACE, SELECTOR)
    assert _kubectl(lab, "get", "deploy", "-n", helm.NAMESPACE, helm.DEPLOYMENT).returncode != 0
    assert not helm.installed(lab)
    custom = kclient.CustomObjectsApi(lab.kube)
    for plural in ("vaultauths", "vaultconnections"):
        assert not custom.list_namespaced_custom_object("secrets.hashicorp.com", "v1beta1", helm.NAMESPACE, plural)["items"]
    # The pre-delete hook Job ran as a pod and was removed after it succeeded.
    assert not [j for j in k8s.pods(lab.kube, helm.NAMESPACE, "job-name") if j.metadata.name.startswith("pdcc-")]
    row = _operator_row(lab)
    assert row.healthy and row.detail.startswith("not installed")
    assert lab.uninstall_operator() == []  # again: nothing to do


def test_chart_repository_serves_only_repository_files(tmp_path) -> None:
    import http.server
    import threading
    import urllib.error

    from labkit.backends.local.chartrepo import EMPTY_INDEX, handler

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
    from labkit.backends.local.containers import expand_vars

    env = {"KUBECONFIG": "/pods/a/serviceaccount/kubeconfig"}
    assert expand_vars("--kubeconfig=$(KUBECONFIG)", env) == "--kubeconfig=/pods/a/serviceaccount/kubeconfig"
    assert expand_vars("--x=$(UNSET)", env) == "--x=$(UNSET)"
    assert expand_vars("--x=$$(KUBECONFIG) $$5", env) == "--x=$(KUBECONFIG) $5"
