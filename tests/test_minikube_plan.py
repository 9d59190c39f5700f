"""The minikube backend's plan, without Docker, minikube or Helm: container specs, network wiring,
Helm values and command lines; and ``labkit doctor --backend minikube`` on a machine without them.

Also the pure parts it shares with the external backend (``labkit/backends/cluster_plan.py``: kubeconfigs, the
manager's flags) and the external backend's own (``labkit/backends/external.py``: prefixes, addresses).
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from docker.models.containers import _create_container_args

from labkit import install
from labkit.backends import cluster, cluster_plan, external, get_backend
from labkit.backends.cluster_plan import cache_model_from_args, kubeconfig_cluster, vso_values
from labkit.backends.external import ExternalLab, validate_prefix
from labkit.backends.minikube import MinikubeLab
from labkit.backends.minikube import doctor as mkdoctor
from labkit.backends.minikube import lab as mklab
from labkit.backends.minikube import plan as mkplan
from labkit.backends.minikube.plan import Settings, plan, wiring
from labkit.errors import LabkitError, MissingTool, NotRunning, ParameterError
from labkit.names import Names

REPO = Path(__file__).resolve().parent.parent
SUBNET, NODE_IP = "192.168.49.0/24", "192.168.49.2"
LICENSE = "02MV4UU43BK5HGYYTOJZWFQMTMNNEWU33JJ"  # a made-up license string


def make_plan(environ: dict[str, str] | None = None, model: str = "none", **options: object):
    settings = Settings.from_env(environ or {}, **options)
    return plan(settings, subnet=SUBNET, node_ip=NODE_IP, vault_port=18200, pg_port=15432, root_token="tok-123",
                pg_password="pw-456", kubeconfig="/state/kube/minikube.kubeconfig", values_file="/state/helm/vso-values.yaml",
                model=model)


def all_words(p: mkplan.Plan) -> list[str]:
    """Every string of the plan: command lines, container specs and Helm values."""
    words: list[str] = [w for cmd in p.commands() for w in cmd]
    for spec in (p.vault, p.postgres):
        words += [spec.image, *spec.command, *spec.environment.values(), spec.network, spec.ipv4_address]
    words.append(yaml.safe_dump(p.vso_values))
    return words


# -- the Vault edition -------------------------------------------------------------------------------------------
def test_with_license_vault_is_enterprise_with_the_license_in_its_env() -> None:
    p = make_plan({"VAULT_LICENSE": LICENSE})
    assert p.settings.enterprise
    assert p.vault.image.startswith("hashicorp/vault-enterprise:") and p.vault.image.endswith("-ent")
    assert p.vault.environment["VAULT_LICENSE"] == LICENSE
    assert p.vault.command == ("server", "-dev")
    assert p.vault.environment["VAULT_DEV_ROOT_TOKEN_ID"] == "tok-123"
    assert p.vault.environment["VAULT_DEV_LISTEN_ADDRESS"] == "0.0.0.0:8200"
    assert "IPC_LOCK" in p.vault.cap_add


def test_without_license_vault_is_community_and_says_what_that_loses() -> None:
    p = make_plan({})
    assert not p.settings.enterprise
    assert p.vault.image.startswith("hashicorp/vault:")
    assert "VAULT_LICENSE" not in p.vault.environment
    assert "instant updates" in mkplan.COMMUNITY_LOSES and "event notifications" in mkplan.COMMUNITY_LOSES
    assert "Enterprise" in mkplan.COMMUNITY_LOSES


def test_a_blank_license_counts_as_none_and_an_image_override_wins() -> None:
    assert not make_plan({"VAULT_LICENSE": "  "}).settings.enterprise
    p = make_plan({"VAULT_LICENSE": LICENSE, "VSOLAB_VAULT_IMAGE": "registry.example/vault-enterprise:1.19.5-ent"})
    assert p.vault.image == "registry.example/vault-enterprise:1.19.5-ent"
    assert p.vault.environment["VAULT_LICENSE"] == LICENSE


def test_secrets_are_masked_when_a_spec_is_shown() -> None:
    p = make_plan({"VAULT_LICENSE": LICENSE})
    shown = json.dumps([p.vault.describe(), p.postgres.describe()])
    for secret in (LICENSE, "tok-123", "pw-456"):
        assert secret not in shown
    assert LICENSE not in repr(p.settings)


def test_adding_a_license_changes_the_vault_fingerprint_so_up_recreates_it() -> None:
    assert make_plan({}).vault.fingerprint() == make_plan({}).vault.fingerprint()
    assert make_plan({}).vault.fingerprint() != make_plan({"VAULT_LICENSE": LICENSE}).vault.fingerprint()
    assert make_plan({}).postgres.fingerprint() == make_plan({"VAULT_LICENSE": LICENSE}).postgres.fingerprint()


def test_postgres_has_the_tutorials_admin_role() -> None:
    p = make_plan({})
    assert p.postgres.image == mkplan.PG_IMAGE
    assert p.postgres.environment == {"POSTGRES_USER": "root", "POSTGRES_PASSWORD": "pw-456"}


# -- network wiring -------------------------------------------------------------------------------------------------
def test_vault_and_postgres_are_attached_to_the_minikube_network_named_after_the_profile() -> None:
    p = make_plan({}, profile="lab-x")
    assert p.settings.network == "lab-x"
    for spec in (p.vault, p.postgres):
        assert spec.network == "lab-x"
        kwargs = spec.docker_run_kwargs("1.44")
        assert kwargs["network"] == "lab-x"
        # What the Docker SDK sends to the engine: it accepts every argument, and the endpoint has the fixed address.
        create = _create_container_args({**kwargs, "version": "1.44"})
        assert create["host_config"]["NetworkMode"] == "lab-x"
        endpoint = create["networking_config"]["EndpointsConfig"]["lab-x"]
        assert endpoint["IPAMConfig"]["IPv4Address"] == spec.ipv4_address
        assert endpoint["Aliases"] == [spec.role]
        bindings = create["host_config"]["PortBindings"]
        assert all(b["HostIp"] == "127.0.0.1" for bs in bindings.values() for b in bs), "published on loopback only"
    assert p.vault.docker_run_kwargs("1.44")["ports"] == {"8200/tcp": ("127.0.0.1", 18200)}
    assert p.postgres.docker_run_kwargs("1.44")["ports"] == {"5432/tcp": ("127.0.0.1", 15432)}


def test_addresses_on_the_network_are_fixed_distinct_and_inside_the_subnet() -> None:
    import ipaddress

    w = wiring("vsolab", SUBNET, NODE_IP)
    net = ipaddress.ip_network(SUBNET)
    addrs = {w.node_ip, w.vault_ip, w.pg_ip, str(net[1])}  # node, Vault, PostgreSQL, the gateway
    assert len(addrs) == 4
    assert all(ipaddress.ip_address(a) in net for a in addrs)
    assert (w.vault_ip, w.pg_ip) == ("192.168.49.250", "192.168.49.251")
    assert wiring("vsolab", SUBNET, NODE_IP) == w, "the same on every up, so VaultConnections stay valid"


def test_vault_reaches_the_kubernetes_api_directly_at_the_minikube_node_over_tls() -> None:
    p = make_plan({})
    assert p.wiring.kube_api_for_vault == f"https://{NODE_IP}:8443"
    assert p.wiring.vault_addr_for_cluster == "http://192.168.49.250:8200"
    assert p.wiring.pg_address_for_vault == ("192.168.49.251", 5432)
    assert p.wiring.pg_address_for_pods == ("192.168.49.251", 5432)
    assert "--apiserver-port=8443" in p.minikube_start


def test_no_tunnel_and_no_plain_http_proxy_anywhere_in_the_plan() -> None:
    for environ in ({}, {"VAULT_LICENSE": LICENSE}):
        for model in ("none", "direct-encrypted"):
            p = make_plan(environ, model)
            words = all_words(p)
            text = " ".join(words).lower()
            for banned in ("ngrok", "tunnel", "--scheme", "8001", "localtunnel", "host.docker.internal"):
                assert banned not in text
            for cmd in p.commands():
                assert "proxy" not in cmd, cmd
                assert not (cmd[0].endswith("kubectl") and "proxy" in cmd)
            assert p.wiring.kube_api_for_vault.startswith("https://")


def test_wiring_refuses_a_node_outside_the_subnet_a_tiny_subnet_and_ipv6() -> None:
    with pytest.raises(ParameterError, match="not in its network"):
        wiring("vsolab", SUBNET, "10.0.0.2")
    with pytest.raises(ParameterError, match="/28 or larger"):
        wiring("vsolab", "192.168.49.0/30", "192.168.49.2")
    with pytest.raises(ParameterError, match="IPv4"):
        wiring("vsolab", "fd00::/64", "fd00::2")


# -- minikube -------------------------------------------------------------------------------------------------------------
def test_minikube_start_uses_the_profile_docker_driver_and_embedded_certs() -> None:
    p = make_plan({"VSOLAB_MINIKUBE_PROFILE": "lab-y", "VSOLAB_KUBERNETES_VERSION": "v1.34.0"})
    cmd = p.minikube_start
    assert cmd[:4] == ["minikube", "start", "-p", "lab-y"]
    assert "--driver=docker" in cmd and "--embed-certs" in cmd and "--kubernetes-version=v1.34.0" in cmd
    assert mkplan.minikube_command("status", "lab-y") == ["minikube", "status", "-p", "lab-y", "-o", "json"]
    assert mkplan.minikube_command("delete", "lab-y") == ["minikube", "delete", "-p", "lab-y"]


def test_settings_refuse_a_bad_profile_and_unknown_options() -> None:
    with pytest.raises(ParameterError, match="profile name"):
        Settings.from_env({}, profile="Bad_Name")
    with pytest.raises(ParameterError, match="unknown"):
        Settings.from_env({}, colour="blue")


# -- Helm ----------------------------------------------------------------------------------------------------------------
def test_helm_installs_vso_at_the_pinned_chart_version_into_the_operator_namespace() -> None:
    cmd = make_plan({}).helm_install
    assert cmd[:5] == ["helm", "upgrade", "--install", "vault-secrets-operator", "vault-secrets-operator"]
    assert cmd[cmd.index("--repo") + 1] == "https://helm.releases.hashicorp.com"
    assert cmd[cmd.index("--version") + 1] == install.VSO_VERSION == cluster_plan.CHART_VERSION
    assert cmd[cmd.index("--namespace") + 1] == "vault-secrets-operator" and "--create-namespace" in cmd
    assert cmd[cmd.index("--values") + 1] == "/state/helm/vso-values.yaml"
    assert cmd[cmd.index("--kubeconfig") + 1] == "/state/kube/minikube.kubeconfig"
    assert cmd[cmd.index("--kube-context") + 1] == "vsolab"
    assert "--wait" in cmd and "--reuse-values" not in cmd, "the lab owns this release: it sends the full values"


def test_helm_values_for_the_default_install() -> None:
    assert make_plan({}).vso_values == {"controller": {"manager": {"clientCache": {"persistenceModel": "none"}}}}


def test_helm_values_for_the_client_cache_stage_wire_transit_storage_encryption() -> None:
    n = Names()
    values = make_plan({}, model="direct-encrypted").vso_values
    cache = values["controller"]["manager"]["clientCache"]
    assert cache["persistenceModel"] == "direct-encrypted"
    enc = cache["storageEncryption"]
    assert enc == {
        "enabled": True, "vaultConnectionRef": "vault/vault-connection", "keyName": n.transit_key,
        "transitMount": n.transit_mount, "method": "kubernetes", "mount": n.k8s_auth_mount,
        "kubernetes": {"role": n.transit_role, "serviceAccount": n.operator_sa},
    }
    assert (n.transit_key, n.transit_mount, n.transit_role) == ("vso-client-cache", "demo-transit", "auth-role-operator")
    # The chart names its transit VaultAuth <release>-default-transit-auth: the name the cache stage looks for.
    assert f"{cluster_plan.RELEASE}-default-transit-auth" == n.transit_auth


def test_the_cache_stage_shows_the_same_values_the_backend_sends() -> None:
    from labkit import cache

    shown = yaml.safe_load(cache.helm_values(SimpleNamespace(names=Names())))
    assert shown == make_plan({}, model="direct-encrypted").vso_values


def test_helm_values_refuse_an_unknown_cache_model() -> None:
    with pytest.raises(ParameterError, match="direct-encrypted"):
        vso_values("encrypted", Names(), "vault/vault-connection")


def test_upgrade_through_the_lab_runs_the_planned_command(tmp_path: Path) -> None:
    lab = MinikubeLab(tmp_path / "state")
    lab.state.ensure()
    lab.state.update(minikube={"subnet": SUBNET, "node_ip": NODE_IP})
    p = lab.plan(model="direct-encrypted")
    assert lab.helm_command(cluster_plan.RELEASE, "vault-secrets-operator", cluster_plan.CHART_VERSION, reuse=False) == p.helm_install
    assert lab.values_file == tmp_path / "state" / "helm" / "vso-values.yaml"
    assert p.vso_values["controller"]["manager"]["clientCache"]["persistenceModel"] == "direct-encrypted"
    # The lab's addresses come from the same wiring.
    assert lab.kube_api_for_vault == f"https://{NODE_IP}:8443"
    assert lab.vault_addr_for_cluster == p.wiring.vault_addr_for_cluster
    assert lab.pg_address_for_vault == p.wiring.pg_address_for_vault
    assert lab.vault_addr == f"http://127.0.0.1:{p.vault.ports[8200]}"
    assert p.vault.environment["VAULT_DEV_ROOT_TOKEN_ID"] == lab.vault_token
    assert p.postgres.environment["POSTGRES_PASSWORD"] == lab.pg_admin_password
    assert (tmp_path / "state" / "secrets.json").stat().st_mode & 0o077 == 0, "secrets are private to the owner"
    assert lab.kube_context == "vsolab" and lab.kubeconfig == tmp_path / "state" / "kube" / "minikube.kubeconfig"


def test_the_running_managers_cache_model_is_read_from_its_flags_and_env() -> None:
    assert cache_model_from_args(["--health-probe-bind-address=:8081", "--leader-elect"]) == "none"
    assert cache_model_from_args(["--client-cache-persistence-model=direct-encrypted"]) == "direct-encrypted"
    assert cache_model_from_args(["--client-cache-persistence-model=none"],
                                 {"VSO_CLIENT_CACHE_PERSISTENCE_MODEL": "direct-unencrypted"}) == "direct-unencrypted"


# -- the lab object before up ---------------------------------------------------------------------------------------------
def test_get_backend_builds_a_minikube_lab_whose_addresses_explain_they_need_up(tmp_path: Path) -> None:
    lab = get_backend("minikube", state=tmp_path / "s", profile="lab-z")
    assert isinstance(lab, MinikubeLab) and lab.backend == "minikube" and lab.settings.profile == "lab-z"
    assert lab.names == Names()
    with pytest.raises(NotRunning, match="labkit up --backend minikube"):
        _ = lab.kube_api_for_vault


def test_a_cluster_backend_never_shares_a_local_labs_state_directory(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_text("a local lab's CA")
    assert cluster.cluster_state(tmp_path, "minikube").root == tmp_path / "minikube"
    assert cluster.cluster_state(tmp_path / "fresh", "minikube").root == tmp_path / "fresh"
    used = MinikubeLab(tmp_path / "mk")
    used.state.ensure()
    assert MinikubeLab(tmp_path / "mk").state.root == tmp_path / "mk", "its own state directory is reused as is"


def test_up_without_the_tools_names_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(MissingTool) as exc:
        MinikubeLab(tmp_path / "state").up(progress=lambda m: None)
    text = str(exc.value)
    for name in ("docker", "minikube", "helm", "docker engine"):
        assert name in text


# -- labkit doctor --backend minikube ---------------------------------------------------------------------------------------
def _doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labkit", "doctor", "--backend", "minikube"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def _rows(out: str) -> dict[str, str]:
    rows = {}
    for line in out.splitlines()[2:]:
        name, _, rest = line.partition("  ")
        rows[name.strip()] = rest.strip()
    return rows


def _stub(bindir: Path, name: str, output: str) -> None:
    path = bindir / name
    path.write_text(f"#!/bin/sh\necho '{output}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _base_env(tmp_path: Path, path: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VAULT_LICENSE", "DOCKER_HOST", "DOCKER_CONTEXT")}
    env.update(PATH=path, DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock", PYTHONPATH=str(REPO))
    return env


def test_doctor_without_docker_names_each_missing_tool_and_how_to_get_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    res = _doctor(_base_env(tmp_path, str(empty)))
    assert res.returncode == 1, res.stdout + res.stderr
    rows = _rows(res.stdout)
    assert rows["docker"].startswith("MISSING") and "docs.docker.com" in rows["docker"]
    assert rows["docker engine"].startswith("MISSING") and "docker info" in rows["docker engine"]
    assert rows["minikube"].startswith("MISSING") and "minikube.sigs.k8s.io" in rows["minikube"]
    assert rows["helm"].startswith("MISSING") and "helm.sh" in rows["helm"]
    assert rows["VAULT_LICENSE"].startswith("ok") and "instant updates" in rows["VAULT_LICENSE"]


def test_doctor_with_tools_but_no_docker_engine_names_the_engine(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _stub(bindir, "docker", "28.2.2")
    _stub(bindir, "minikube", "v1.36.0")
    _stub(bindir, "helm", "v3.18.4+gb5a5b6f")
    _stub(bindir, "kubectl", "Client Version: v1.34.1")
    res = _doctor(_base_env(tmp_path, f"{bindir}:/usr/bin:/bin"))
    assert res.returncode == 1
    rows = _rows(res.stdout)
    assert rows["docker"] == "ok       28.2.2"
    assert rows["minikube"].startswith("ok") and "v1.36.0" in rows["minikube"]
    assert rows["helm"].startswith("ok") and "v3.18.4" in rows["helm"]
    assert rows["docker engine"].startswith("MISSING")


def test_doctor_flags_a_tool_older_than_needed(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _stub(bindir, "helm", "v3.2.4+g0ad800e")
    res = _doctor(_base_env(tmp_path, f"{bindir}:/usr/bin:/bin"))
    assert "older than 3.8" in _rows(res.stdout)["helm"]


def test_doctor_passes_when_every_tool_and_the_engine_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from labkit import cli

    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, out in (("docker", "28.2.2"), ("minikube", "v1.36.0"), ("helm", "v3.18.4"), ("kubectl", "Client Version: v1.34.1")):
        _stub(bindir, name, out)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.setenv("VAULT_LICENSE", LICENSE)
    monkeypatch.setattr(mkdoctor, "docker_client", lambda timeout=10: SimpleNamespace(version=lambda: {"Version": "28.2.2"}))
    assert cli.main(["doctor", "--backend", "minikube"]) == 0


# -- external: prefixes, kubeconfigs, environment ---------------------------------------------------------------------------
def test_attendee_prefixes_are_name_safe() -> None:
    assert validate_prefix("alice") == "alice-"
    assert validate_prefix("Team-7-") == "team-7-"
    assert validate_prefix("") == ""
    for bad in ("al ice", "-x", "ä", "a" * 30):
        with pytest.raises(ParameterError, match="VSOLAB_PREFIX"):
            validate_prefix(bad)
    n = Names(validate_prefix("alice"))
    assert (n.static_ns, n.k8s_auth_mount, n.kv_mount, n.reviewer_binding) == (
        "alice-static-exampleapp", "alice-kubernetes", "alice-static", "alice-vault-to-k8s-sa-auth-delegator")


def test_external_lab_reads_its_addresses_from_the_environment(tmp_path: Path) -> None:
    ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    kc = tmp_path / "kubeconfig"
    kc.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "team",
        "clusters": [{"name": "team-cluster", "cluster": {"server": "https://k8s.example:6443",
                                                           "certificate-authority-data": base64.b64encode(ca.encode()).decode()}}],
        "contexts": [{"name": "team", "context": {"cluster": "team-cluster", "user": "me"}}],
        "users": [{"name": "me", "user": {"token": "x"}}],
    }))
    env = {"VAULT_ADDR": "https://vault.example:8200/", "VAULT_TOKEN": "hvs.x", "KUBECONFIG": str(kc),
           "VSOLAB_PG_ADDR": "db.example:6432", "VSOLAB_PG_PASSWORD": "pw", "VSOLAB_PG_ADDR_FOR_VAULT": "10.0.0.5:5432",
           "VSOLAB_PREFIX": "bob"}
    lab = ExternalLab(tmp_path / "state", environ=env)
    assert lab.backend == "external" and lab.names == Names("bob-")
    assert lab.vault_addr == lab.vault_addr_for_cluster == "https://vault.example:8200"
    assert lab.kube_api_for_vault == "https://k8s.example:6443" and lab.kube_ca() == ca
    assert lab.pg_address == ("db.example", 6432)
    assert lab.pg_address_for_vault == lab.pg_address_for_pods == ("10.0.0.5", 5432)
    assert lab.pg_dsn() == "host=db.example port=6432 user=root password=pw dbname=postgres"
    assert lab.env()["VSOLAB_PREFIX"] == "bob-"
    del env["VSOLAB_PG_PASSWORD"]
    with pytest.raises(ParameterError, match="VSOLAB_PG_PASSWORD"):
        _ = ExternalLab(tmp_path / "state", environ=env).pg_admin_password
    with pytest.raises(ParameterError, match="host:port"):
        external.parse_hostport("postgresql://db:x", "PostgreSQL", "VSOLAB_PG_ADDR")


#: what a %%bash cell may rely on, on every backend (labkit/_env.py)
SHELL_ENV = ("VAULT_ADDR", "BAO_ADDR", "VAULT_TOKEN", "BAO_TOKEN", "KUBECONFIG", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE",
             "PGPASSWORD", "PATH", "PREFIX", "HELM_CONFIG_HOME", "HELM_CACHE_HOME", "HELM_DATA_HOME", "VSO_CHART_REPO",
             "LAB_HELM_VALUES", "LAB_HELM_POSTRENDERER", "VSOLAB_BACKEND", "VSOLAB_STATE", "VAULT_ADDR_FOR_CLUSTER",
             "KUBE_API_FOR_VAULT", "PG_ADDR_FOR_VAULT", "PG_HOST_FOR_PODS", "PG_PORT_FOR_PODS")


def check_shell_env(env: dict[str, str], state: Path) -> None:
    missing = [k for k in SHELL_ENV if k not in env]
    assert not missing, f"env() lacks {missing}"
    assert env["BAO_ADDR"] == env["VAULT_ADDR"] and env["BAO_TOKEN"] == env["VAULT_TOKEN"]
    bindir = Path(env["PATH"].split(os.pathsep)[0])
    assert bindir == state / "bin" and (bindir / "vault").exists() and (bindir / "kubectl").exists()
    assert env["PATH"].split(os.pathsep).count(str(bindir)) == 1
    for key in ("HELM_CONFIG_HOME", "HELM_CACHE_HOME", "HELM_DATA_HOME", "LAB_HELM_VALUES", "LAB_HELM_POSTRENDERER"):
        assert Path(env[key]).is_relative_to(state), key
    assert yaml.safe_load(Path(env["LAB_HELM_VALUES"]).read_text()) == {}
    # The post-renderer passes the chart's manifests through unchanged, as Helm calls it (stdin → stdout).
    manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"
    out = subprocess.run([env["LAB_HELM_POSTRENDERER"]], input=manifest, capture_output=True, text=True, check=True)
    assert out.stdout == manifest


def test_minikube_env_gives_shells_what_every_backend_gives(tmp_path: Path) -> None:
    lab = MinikubeLab(tmp_path / "mk")
    with pytest.raises(NotRunning, match="network addresses"):
        lab.env()  # before `up` there are no addresses as the cluster reaches them: said so, nothing guessed
    lab.state.update(minikube={"subnet": SUBNET, "node_ip": NODE_IP})
    env = lab.env()
    check_shell_env(env, tmp_path / "mk")
    w = lab.wiring
    assert (env["VAULT_ADDR_FOR_CLUSTER"], env["KUBE_API_FOR_VAULT"]) == (w.vault_addr_for_cluster, w.kube_api_for_vault)
    assert env["PG_ADDR_FOR_VAULT"] == "{}:{}".format(*w.pg_address_for_vault)
    assert (env["PG_HOST_FOR_PODS"], env["PG_PORT_FOR_PODS"]) == (w.pg_address_for_pods[0], str(w.pg_address_for_pods[1]))
    assert env["PREFIX"] == "" and "VSOLAB_SHARED_OPERATOR" not in env, "minikube's VSO is the lab's own"
    assert env["VSO_CHART_REPO"] == "https://helm.releases.hashicorp.com"
    assert env["PGPASSWORD"] == lab.pg_admin_password and env["PGPORT"] == str(lab.pg_address[1])
    again = lab.env()
    assert again == env, "env() is stable: the same ports, secrets and files the second time"


def test_external_env_carries_the_prefix_and_says_whose_operator_it_is(tmp_path: Path) -> None:
    base = {"VAULT_ADDR": "https://vault.example:8200", "VAULT_TOKEN": "hvs.x", "KUBECONFIG": str(tmp_path / "kc"),
            "VSOLAB_PG_ADDR": "db.example:6432", "VSOLAB_PG_PASSWORD": "pw", "VSOLAB_PG_USER": "admin",
            "VSOLAB_PREFIX": "alice", "VSOLAB_CHART_REPO": "https://charts.example/mirror",
            "VSOLAB_PG_ADDR_FOR_VAULT": "10.0.0.5:5432"}
    (tmp_path / "kc").write_text(yaml.safe_dump({"current-context": "m", "clusters": [{"name": "c", "cluster": {
        "server": "https://k8s.example:6443", "certificate-authority-data": ""}}],
        "contexts": [{"name": "m", "context": {"cluster": "c"}}]}))
    lab = ExternalLab(tmp_path / "alice", environ=base)
    env = lab.env()
    check_shell_env(env, tmp_path / "alice")
    # the addresses as the other side reaches them: the given ones, else the kubeconfig's server and VAULT_ADDR
    assert (env["VAULT_ADDR_FOR_CLUSTER"], env["KUBE_API_FOR_VAULT"]) == ("https://vault.example:8200", "https://k8s.example:6443")
    assert (env["PG_ADDR_FOR_VAULT"], env["PG_HOST_FOR_PODS"], env["PG_PORT_FOR_PODS"]) == ("10.0.0.5:5432", "10.0.0.5", "5432")
    assert (env["PREFIX"], env["VSOLAB_PREFIX"]) == ("alice-", "alice-")
    assert (env["PGHOST"], env["PGPORT"], env["PGUSER"], env["PGPASSWORD"]) == ("db.example", "6432", "admin", "pw")
    assert env["VSO_CHART_REPO"] == "https://charts.example/mirror"
    assert env["VSOLAB_SHARED_OPERATOR"] == "1", "VSO this lab did not install is the team's"
    lab.state.update(installed_vso=True)
    assert "VSOLAB_SHARED_OPERATOR" not in lab.env(), "a VSO the lab installed is the attendee's own"
    assert ExternalLab(tmp_path / "alice", environ={**base, "VSOLAB_SHARED_OPERATOR": "1"}).shared_operator
    with pytest.raises(cluster.SharedOperator, match="the team does"):
        ExternalLab(tmp_path / "bob", environ={**base, "VSOLAB_PREFIX": "bob"}).restart_operator()


def test_kubeconfig_ca_may_be_a_file_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("PEM")
    kc = tmp_path / "config"
    kc.write_text(yaml.safe_dump({"current-context": "m", "clusters": [{"name": "c", "cluster": {
        "server": "https://192.168.49.2:8443", "certificate-authority": "ca.crt"}}],
        "contexts": [{"name": "m", "context": {"cluster": "c"}}]}))
    assert kubeconfig_cluster(kc) == {"server": "https://192.168.49.2:8443", "ca": "PEM", "context": "m"}
    with pytest.raises(LabkitError, match="context 'nope'"):
        kubeconfig_cluster(kc, "nope")


def test_doctor_external_names_each_missing_setting(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("VAULT_ADDR", "VAULT_TOKEN", "VSOLAB_PG_ADDR", "VSOLAB_PG_PASSWORD", "VSOLAB_PREFIX")}
    env.update(KUBECONFIG=str(tmp_path / "missing"), PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-m", "labkit", "doctor", "--backend", "external"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    rows = _rows(res.stdout)
    for key in ("VAULT_ADDR", "VAULT_TOKEN", "VSOLAB_PG_ADDR", "VSOLAB_PG_PASSWORD", "KUBECONFIG"):
        assert rows[key].startswith("MISSING") and "export" in rows[key]


# -- the execution glue, with a fake Docker engine and a fake minikube ------------------------------------------------------
class FakeContainer:
    def __init__(self, kwargs: dict) -> None:
        self.name, self.labels, self.status = kwargs["name"], kwargs["labels"], "running"
        self.image = SimpleNamespace(tags=[kwargs["image"]])
        self.removed = False

    def start(self) -> None:
        self.status = "running"

    def remove(self, force: bool = False) -> None:
        self.removed = True


class FakeDocker:
    """What MinikubeLab uses of the Docker SDK, recording each call."""

    def __init__(self, subnet: str = SUBNET) -> None:
        import docker

        self.errors = docker.errors
        self.api = SimpleNamespace(api_version="1.44")
        self.by_name: dict[str, FakeContainer] = {}
        self.calls: list[str] = []
        self.runs: list[dict] = []
        self.pulled: list[str] = []
        self.subnet = subnet
        self.containers = SimpleNamespace(get=self._get, run=self._run, list=self._list)
        self.images = SimpleNamespace(get=self._image, pull=self.pulled.append)
        self.networks = SimpleNamespace(get=self._network)

    def _get(self, name: str) -> FakeContainer:
        c = self.by_name.get(name)
        if c is None or c.removed:
            raise self.errors.NotFound(f"no container {name}")
        return c

    def _run(self, **kwargs: object) -> FakeContainer:
        self.calls.append(f"run {kwargs['name']}")
        self.runs.append(dict(kwargs))
        c = self.by_name[kwargs["name"]] = FakeContainer(kwargs)  # type: ignore[arg-type]
        return c

    def _list(self, all: bool = False, filters: dict | None = None) -> list[FakeContainer]:
        key, _, value = (filters or {})["label"].partition("=")
        return [c for c in self.by_name.values() if not c.removed and c.labels.get(key) == value]

    def _image(self, name: str) -> object:
        if name not in self.pulled:
            raise self.errors.ImageNotFound(name)
        return object()

    def _network(self, name: str) -> object:
        if name != "vsolab":
            raise self.errors.NotFound(name)
        return SimpleNamespace(attrs={"IPAM": {"Config": [{"Subnet": self.subnet, "Gateway": "192.168.49.1"}]}})


FAKE_MINIKUBE = """#!/bin/sh
echo "$@" >> "$FAKE_MK/log"
case "$1" in
  status) if [ -f "$FAKE_MK/running" ]; then
            echo '{"Name":"vsolab","Host":"Running","Kubelet":"Running","APIServer":"Running","Kubeconfig":"Configured"}'
          else echo '* Profile "vsolab" not found.'; exit 85; fi ;;
  start) touch "$FAKE_MK/running"
         printf '%s\n' 'apiVersion: v1' 'kind: Config' 'current-context: vsolab' \
           'clusters: [{name: vsolab, cluster: {server: "https://192.168.49.2:8443"}}]' \
           'contexts: [{name: vsolab, context: {cluster: vsolab, user: vsolab}}]' \
           'users: [{name: vsolab, user: {token: fake}}]' > "$KUBECONFIG" ;;
  ip) echo 192.168.49.2 ;;
  stop|delete) rm -f "$FAKE_MK/running" ;;
esac
"""


@pytest.fixture
def fake_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    from labkit.errors import NotRunning as _NotRunning

    bindir, mk = tmp_path / "bin", tmp_path / "mk"
    bindir.mkdir()
    mk.mkdir()
    (bindir / "minikube").write_text(FAKE_MINIKUBE)
    (bindir / "minikube").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_MK", str(mk))
    monkeypatch.delenv("VAULT_LICENSE", raising=False)
    world = SimpleNamespace(docker=FakeDocker(), mk=mk, installed=[], helm=[], deleted=[], operator=None)
    monkeypatch.setattr(mklab, "doctor_checks", lambda environ=None: [])
    monkeypatch.setattr(mklab, "docker_client", lambda timeout=10: world.docker)

    def operator(self: MinikubeLab) -> object:
        if world.operator is None:
            raise _NotRunning("no VSO", [])
        return world.operator

    def install_operator(self: MinikubeLab, model: str = "none") -> str:
        world.installed.append(model)
        world.operator = cluster.Operator("vault-secrets-operator", "vault-secrets-operator-controller-manager", "1.5.0",
                                           model, RELEASE_NAME, cluster_plan.CHART_VERSION, True)
        return "installed"

    real_run = mklab.run

    def run(cmd: list[str], what: str, fixes: list[str], **kw: object) -> str:
        if cmd[0] != "helm":
            return real_run(cmd, what, fixes, **kw)  # type: ignore[arg-type]
        world.helm.append(cmd)
        world.docker.calls.append(" ".join(cmd[:2]))
        return ""

    def delete_lab_objects(self: MinikubeLab) -> list[str]:
        world.docker.calls.append("delete namespaces")
        return ["namespace vault"]

    monkeypatch.setattr(MinikubeLab, "operator", operator)
    monkeypatch.setattr(MinikubeLab, "install_operator", install_operator)
    monkeypatch.setattr(MinikubeLab, "wait_operator_ready", lambda self, timeout=300: world.operator)
    monkeypatch.setattr(MinikubeLab, "_vault_ok", lambda self: True)
    monkeypatch.setattr(MinikubeLab, "_pg_ok", lambda self: True)
    monkeypatch.setattr(MinikubeLab, "_delete_lab_objects", delete_lab_objects)
    monkeypatch.setattr(mklab, "run", run)
    monkeypatch.setattr(mklab.k8s, "delete", lambda *a, **kw: world.deleted.append(a[1:]) or True)
    return world


RELEASE_NAME = cluster_plan.RELEASE


def test_up_runs_the_plan_through_the_docker_sdk_and_reuses_it_the_second_time(tmp_path: Path, fake_world: SimpleNamespace) -> None:
    lab = MinikubeLab(tmp_path / "state")
    said: list[str] = []
    actions = lab.up(progress=said.append)
    assert actions == {"minikube": "started", "vault": "created", "postgres": "created", "vso": "installed"}
    assert any("community image" in m for m in said), "says what running without VAULT_LICENSE loses"
    log = (fake_world.mk / "log").read_text()
    assert "start -p vsolab --driver=docker" in log and "ip -p vsolab" in log
    p = lab.plan()
    runs = fake_world.docker.runs
    for got, spec in zip(runs, (p.vault, p.postgres), strict=True):
        want = spec.docker_run_kwargs("1.44")
        assert {k: v for k, v in got.items() if k != "networking_config"} == {k: v for k, v in want.items() if k != "networking_config"}
        endpoint = got["networking_config"]["vsolab"]
        assert endpoint["IPAMConfig"]["IPv4Address"] == spec.ipv4_address
    assert fake_world.docker.pulled == [p.vault.image, p.postgres.image]
    assert fake_world.installed == ["none"]
    assert lab.kube_api_for_vault == "https://192.168.49.2:8443" and lab.vault_addr_for_cluster == "http://192.168.49.250:8200"
    assert lab.state.read()["minikube"]["started_profile"] is True
    again = lab.up(progress=said.append)
    assert again == {"minikube": "reused", "vault": "reused", "postgres": "reused", "vso": "reused"}
    assert "update-context -p vsolab" in (fake_world.mk / "log").read_text()
    assert len(fake_world.docker.runs) == 2


def test_up_with_a_license_recreates_vault_as_enterprise(tmp_path: Path, fake_world: SimpleNamespace,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    MinikubeLab(tmp_path / "state").up(progress=lambda m: None)
    monkeypatch.setenv("VAULT_LICENSE", LICENSE)
    lab = MinikubeLab(tmp_path / "state")
    actions = lab.up(progress=lambda m: None)
    assert actions["vault"].startswith("recreated") and actions["postgres"] == "reused"
    last = fake_world.docker.runs[-1]
    assert last["image"] == mkplan.VAULT_ENTERPRISE_IMAGE and last["environment"]["VAULT_LICENSE"] == LICENSE


def test_down_deletes_namespaces_before_vso_and_vso_before_the_containers(tmp_path: Path, fake_world: SimpleNamespace) -> None:
    lab = MinikubeLab(tmp_path / "state")
    lab.up(progress=lambda m: None)
    fake_world.docker.calls.clear()
    done = lab.down()
    calls = fake_world.docker.calls
    assert calls[:2] == ["delete namespaces", "helm uninstall"], calls
    assert ("v1", "Namespace", "vault-secrets-operator") in fake_world.deleted
    assert {"container vsolab-vault", "container vsolab-postgres"} <= set(done)
    assert all(c.removed for c in fake_world.docker.by_name.values())
    assert "minikube profile vsolab (stopped)" in done, "the lab started the profile, so it stops it"
    assert "delete -p" not in (fake_world.mk / "log").read_text()
    assert lab.state.read()["vso"] == {}


def test_down_with_the_flag_deletes_the_profile_and_leaves_a_profile_it_did_not_start(tmp_path: Path,
                                                                                       fake_world: SimpleNamespace) -> None:
    (fake_world.mk / "running").touch()  # the user's own running profile
    lab = MinikubeLab(tmp_path / "state")
    lab.up(progress=lambda m: None)
    assert "started_profile" not in lab.state.read().get("minikube", {})
    assert "minikube profile vsolab (stopped)" not in lab.down()
    (fake_world.mk / "running").touch()
    done = lab.down(purge=True, delete_profile=True)
    assert "minikube profile vsolab (deleted)" in done and "delete -p vsolab" in (fake_world.mk / "log").read_text()
    assert not lab.state.root.exists()


def test_an_external_release_is_upgraded_with_reuse_values_in_its_own_context(tmp_path: Path) -> None:
    env = {"KUBECONFIG": str(tmp_path / "kc"), "VSOLAB_KUBE_CONTEXT": "workshop", "VSOLAB_PREFIX": "amy"}
    lab = ExternalLab(tmp_path / "state", environ=env)
    cmd = lab.helm_command("vso", "operators", "1.4.1", reuse=lab.reuse_helm_values)
    assert "--reuse-values" in cmd, "a team's own settings of its VSO release are kept"
    assert cmd[cmd.index("--namespace") + 1] == "operators" and cmd[cmd.index("--version") + 1] == "1.4.1"
    assert cmd[cmd.index("--kube-context") + 1] == "workshop"
    assert MinikubeLab.reuse_helm_values is False


def test_delete_profile_is_refused_for_a_backend_without_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from labkit import cli

    assert cli.main(["down", "--delete-profile", "--state", str(tmp_path / "s")]) == 2
    assert "only minikube has a profile" in capsys.readouterr().err
