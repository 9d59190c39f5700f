"""Unit tests of the node agent's pure parts; a fake CoreV1Api stands in at the API boundary."""
import base64

import pytest
from kubernetes import client as k
from kubernetes.client.exceptions import ApiException

from labkit.backends.local.containers import ConfigMissing, _rewrite, image_repo, resolve_env


class FakeCore:
    def __init__(self, secrets=None, configmaps=None):
        self.secrets, self.configmaps, self.calls = secrets or {}, configmaps or {}, 0

    def read_namespaced_secret(self, name, ns):
        self.calls += 1
        if name not in self.secrets:
            raise ApiException(status=404)
        return k.V1Secret(data={kk: base64.b64encode(v.encode()).decode() for kk, v in self.secrets[name].items()})

    def read_namespaced_config_map(self, name, ns):
        self.calls += 1
        if name not in self.configmaps:
            raise ApiException(status=404)
        return k.V1ConfigMap(data=self.configmaps[name])


def container(env=None, env_from=None):
    return k.V1Container(name="c", image="python:3.12-slim", env=env, env_from=env_from)


def test_resolves_literal_secret_configmap_and_envfrom():
    core = FakeCore({"creds": {"username": "u1", "password": "p1"}}, {"db": {"DB_HOST": "h", "DB_PORT": "5432"}})
    c = container(
        env=[k.V1EnvVar(name="A", value="lit"),
             k.V1EnvVar(name="DB_USERNAME",
                        value_from=k.V1EnvVarSource(secret_key_ref=k.V1SecretKeySelector(name="creds", key="username"))),
             k.V1EnvVar(name="HOST", value_from=k.V1EnvVarSource(config_map_key_ref=k.V1ConfigMapKeySelector(name="db", key="DB_HOST"))),
             k.V1EnvVar(name="B", value="$(A)-x")],
        env_from=[k.V1EnvFromSource(config_map_ref=k.V1ConfigMapEnvSource(name="db")),
                  k.V1EnvFromSource(secret_ref=k.V1SecretEnvSource(name="creds"), prefix="S_")],
    )
    env = resolve_env(core, "ns", c)
    assert env == {"DB_HOST": "h", "DB_PORT": "5432", "S_username": "u1", "S_password": "p1", "A": "lit",
                   "DB_USERNAME": "u1", "HOST": "h", "B": "lit-x"}
    assert core.calls == 2  # each source read once


def test_missing_secret_is_a_config_error_unless_optional():
    core = FakeCore()
    ref = k.V1SecretKeySelector(name="nope", key="x")
    with pytest.raises(ConfigMissing, match='secret "nope" not found'):
        resolve_env(core, "ns", container(env=[k.V1EnvVar(name="X", value_from=k.V1EnvVarSource(secret_key_ref=ref))]))
    ref.optional = True
    assert resolve_env(core, "ns", container(env=[k.V1EnvVar(name="X", value_from=k.V1EnvVarSource(secret_key_ref=ref))])) == {}


def test_missing_key_is_named():
    core = FakeCore({"creds": {"username": "u"}})
    ref = k.V1SecretKeySelector(name="creds", key="password")
    with pytest.raises(ConfigMissing, match='key "password"'):
        resolve_env(core, "ns", container(env=[k.V1EnvVar(name="X", value_from=k.V1EnvVarSource(secret_key_ref=ref))]))


@pytest.mark.parametrize("image,repo", [("python:3.12-slim", "python"), ("docker.io/library/python:3.12", "python"),
                                        ("ghcr.io/x/app@sha256:abc", "app"), ("nginx", "nginx")])
def test_image_repo(image, repo):
    assert image_repo(image) == repo


def test_mount_paths_are_rewritten():
    mounts = {"/app": "/state/pods/p/volumes/code"}
    assert _rewrite("/app/app.py", mounts) == "/state/pods/p/volumes/code/app.py"
    assert _rewrite("/application", mounts) == "/application"
    assert _rewrite("python /app/app.py", mounts) == "python /state/pods/p/volumes/code/app.py"
