import pytest

from labkit.errors import ParameterError
from labkit.notebook import CI, SPEC, duration_seconds, validate


def defaults():
    return {k: d for k, (_, d) in SPEC.items()}


def test_defaults_are_valid():
    assert validate(defaults()) == defaults()


@pytest.mark.parametrize("name,value", [("LIVE_SECONDS", "60"), ("INTERACTIVE", "yes"), ("RENEWAL_PERCENT", 6.7),
                                        ("LIVE_SECONDS", True), ("BACKEND", 3)])
def test_wrong_type_is_refused_with_a_fix(name, value):
    p = defaults() | {name: value}
    with pytest.raises(ParameterError) as info:
        validate(p)
    assert name in str(info.value) and "parameters" in str(info.value)


def test_bad_durations_and_ranges():
    with pytest.raises(ParameterError):
        validate(defaults() | {"DEFAULT_TTL": "10 minutes"})
    with pytest.raises(ParameterError, match="MAX_TTL"):
        validate(defaults() | {"DEFAULT_TTL": "5m", "MAX_TTL": "1m"})
    with pytest.raises(ParameterError, match="0 to 90"):
        validate(defaults() | {"RENEWAL_PERCENT": 95})


def test_duration_seconds():
    assert duration_seconds("15s") == 15
    assert duration_seconds("2m") == 120
    assert duration_seconds("1.5h") == 5400


def test_ci_environment_applies_ci_values(monkeypatch):
    monkeypatch.setenv("VSOLAB_CI", "1")
    out = validate(defaults())
    assert out["LIVE_SECONDS"] == CI["LIVE_SECONDS"] and out["EXERCISES_SOLVED"] is True and out["INTERACTIVE"] is False


@pytest.mark.lab
def test_setup_puts_the_lab_env_in_the_kernel_so_vault_and_kubectl_cells_run(local_lab, monkeypatch):
    """A learner's `!vault …` cell: once a notebook's setup ran, `vault` (OpenBao's CLI) reaches this lab."""
    import os
    import subprocess

    from labkit import notebook

    for k in ("VAULT_ADDR", "VAULT_TOKEN", "KUBECONFIG", "PATH"):
        monkeypatch.setenv(k, os.environ.get(k, "") if k == "PATH" else "")
    params = defaults() | {"STATE_DIR": str(local_lab.state.root)}
    notebook.setup(params, stage=1)
    assert os.environ["VAULT_ADDR"] == local_lab.vault_addr
    out = subprocess.run(["vault", "token", "lookup", "-format=json"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    out = subprocess.run(["kubectl", "get", "namespace", "default", "-o", "name"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "namespace/default", out.stderr


@pytest.mark.lab
def test_labkit_env_puts_only_the_lab_tools_in_front_of_path(local_lab):
    import subprocess
    import sys

    root = local_lab.state.root
    out = subprocess.run([sys.executable, "-m", "labkit", "--state", str(root), "env"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("export PATH=")]
    assert lines == [f'export PATH={root / "bin"}:"$PATH"'], out.stdout
    shell = subprocess.run(["bash", "-c", f'eval "$({sys.executable} -m labkit --state {root} env)"; vault version'],
                           capture_output=True, text=True, timeout=30)
    assert shell.returncode == 0 and "OpenBao" in shell.stdout, shell.stdout + shell.stderr
