"""The two JupyterHub setups in jupyterhub/, read without a hub: the single-host config loads and says what the
instructor's guide says, and the Zero to JupyterHub values size each attendee's pod from the measured figures.

The figures are parsed from benchmarks/RESULTS.md (its newest run, at the top: the whole lab's PSS and idle CPU) and
docs/instructor.md (the kernel's memory, "Sizing"), so a re-measurement that the values file does not follow fails
here: the guarantee must hold the lab and one kernel, the limit the lab and several, and the values file's comment
must quote the figures it was sized from.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "jupyterhub" / "jupyterhub_config.py"
VALUES = ROOT / "jupyterhub" / "z2jh-values.yaml"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
INSTRUCTOR = ROOT / "docs" / "instructor.md"
MIB = 1024 * 1024
#: KubeSpawner's byte suffixes (jupyterhub.traitlets.ByteSpecification): powers of 1024
UNITS = {"K": 1024, "M": MIB, "G": 1024 * MIB, "T": 1024 * 1024 * MIB}
#: kernels the limit must hold beside the lab (a learner with a few notebooks open)
KERNELS_IN_LIMIT = 4


def _bytes(spec: str | int) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", str(spec).strip())
    assert m, f"{spec!r} is not a KubeSpawner byte specification"
    return int(float(m.group(1)) * UNITS.get(m.group(2), 1))


def _newest_table_row(metric: str) -> str:
    """The value column of ``metric`` in the newest run's table (the first table in RESULTS.md)."""
    for line in RESULTS.read_text().splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cols) >= 2 and cols[0] == metric:
            return cols[1]
    raise AssertionError(f"benchmarks/RESULTS.md has no row {metric!r}")


def figures() -> dict[str, float]:
    lab = re.fullmatch(r"(\d+) MiB", _newest_table_row("memory: whole lab (PSS)"))
    cpu = re.fullmatch(r"(\d+)% of one core", _newest_table_row("CPU: whole lab, idle with the app running (5 s)"))
    kernel = re.search(r"^\| Plus one notebook kernel \| about (\d+) MiB", INSTRUCTOR.read_text(), re.M)
    assert lab and cpu and kernel, (lab, cpu, kernel)
    return {"lab_mib": int(lab.group(1)), "idle_cpu": int(cpu.group(1)) / 100, "kernel_mib": int(kernel.group(1))}


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


def test_the_figures_parse() -> None:
    f = figures()
    assert 100 < f["lab_mib"] < 4096 and 10 < f["kernel_mib"] < 1024 and 0 < f["idle_cpu"] < 1, f


def test_memory_guarantee_holds_the_lab_and_a_kernel(values: dict[str, Any]) -> None:
    f, mem = figures(), values["singleuser"]["memory"]
    guarantee, limit = _bytes(mem["guarantee"]), _bytes(mem["limit"])
    assert guarantee >= (f["lab_mib"] + f["kernel_mib"]) * MIB, (mem, f)
    assert limit >= (f["lab_mib"] + KERNELS_IN_LIMIT * f["kernel_mib"]) * MIB, (mem, f)
    assert limit >= guarantee


def test_the_values_quote_the_figures_they_were_sized_from() -> None:
    f, text = figures(), VALUES.read_text()
    lab, kernel = f["lab_mib"], f["kernel_mib"]
    for quoted in (f"{lab} MiB", f"{kernel} MiB", f"{lab} + {kernel} = {lab + kernel} MiB",
                   f"{lab} + {KERNELS_IN_LIMIT} x {kernel} = {lab + KERNELS_IN_LIMIT * kernel} MiB",
                   f"{round(f['idle_cpu'] * 100)} % of one core"):
        assert quoted in text, f"jupyterhub/z2jh-values.yaml should say {quoted!r} (the figures changed: size it again)"


def density() -> dict[str, int]:
    """The workshop density tables of the newest "workshop density" section of RESULTS.md (benchmarks/bench_density.py):
    the largest per-attendee PSS at the series' peak (lab and kernel) and the largest idle CPU per attendee, over
    every N measured, and the largest N that ran with no failure."""
    text = RESULTS.read_text()
    start = text.find("workshop density")
    assert start >= 0, "benchmarks/RESULTS.md has no workshop density section (benchmarks/bench_density.py)"
    end = text.find("\n## ", start)
    peaks, idle_cpu, held = [], [], []
    for line in text[start:end if end >= 0 else None].splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cols) != 8 or not cols[0].isdigit():
            continue
        peak, cpu = re.fullmatch(r"(\d+) MiB", cols[4]), re.fullmatch(r"(\d+)%", cols[6])
        if peak:
            peaks.append(int(peak.group(1)))
        if cpu:
            idle_cpu.append(int(cpu.group(1)))
        if cols[3] == "0":
            held.append(int(cols[0]))
    assert peaks and idle_cpu and held, "the density tables have no rows"
    return {"peak_mib": max(peaks), "idle_cpu_pct": max(idle_cpu), "held": max(held)}


def test_memory_guarantee_holds_an_attendee_at_the_series_peak(values: dict[str, Any]) -> None:
    """The guarantee holds the most one attendee used (lab + kernel) while the series ran, at any N measured; the
    limit that plus the further kernels a learner may open."""
    d, f, mem = density(), figures(), values["singleuser"]["memory"]
    assert _bytes(mem["guarantee"]) >= d["peak_mib"] * MIB, (mem, d)
    assert _bytes(mem["limit"]) >= (d["peak_mib"] + (KERNELS_IN_LIMIT - 1) * f["kernel_mib"]) * MIB, (mem, d, f)
    assert f"{d['peak_mib']} MiB" in VALUES.read_text(), "jupyterhub/z2jh-values.yaml should quote the density peak"


def test_cpu_guarantee_and_limit(values: dict[str, Any]) -> None:
    cpu = values["singleuser"]["cpu"]
    assert figures()["idle_cpu"] <= float(cpu["guarantee"]) <= float(cpu["limit"])
    assert density()["idle_cpu_pct"] / 100 <= float(cpu["guarantee"])
    assert float(cpu["limit"]) >= 1  # notebook 00's `labkit up` is a burst of about one core


def test_no_privilege_no_docker_and_culling(values: dict[str, Any]) -> None:
    single = values["singleuser"]
    assert single["allowPrivilegeEscalation"] is False
    assert single["uid"] != 0
    assert single["cloudMetadata"]["blockWithIptables"] is False  # else a privileged init container per pod
    assert single["image"]["name"] and "VSOLAB_STATE" in single["extraEnv"]
    walked = list(_walk(values))  # the settings, not the comments
    assert not [kv for kv in walked if kv[0] in ("hostPath", "privileged", "extraVolumes") or "docker" in str(kv[1]).lower()], walked
    assert values["cull"]["enabled"] is True and values["cull"]["timeout"] > 0
    assert "chart 4.4.0" in VALUES.read_text()  # the chart version it was written for


def _walk(node: Any, key: str = "") -> Any:
    """Every (key, leaf value) in a parsed YAML document."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield (k, v) if not isinstance(v, (dict, list)) else (k, "")
            yield from _walk(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)


def _load_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    from traitlets.config import Config

    monkeypatch.setenv("VSOLAB_HUB_DATA", str(tmp_path / "hub"))
    monkeypatch.setenv("VSOLAB_HUB_ENV", "/opt/example/venv")
    monkeypatch.setenv("VSOLAB_CACHE", "/opt/example/cache")
    c = Config()
    code = compile(CONFIG.read_text(), str(CONFIG), "exec")
    exec(code, {"c": c, "get_config": lambda: c, "__file__": str(CONFIG), "__name__": "jupyterhub_config"})
    return c


def test_the_single_host_config_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("jupyterhub")
    c = _load_config(monkeypatch, tmp_path)
    assert c.JupyterHub.bind_url.startswith("http://127.0.0.1:")
    assert c.JupyterHub.hub_ip == "127.0.0.1" and c.Spawner.ip == "127.0.0.1"
    assert c.ConfigurableHTTPProxy.api_url.startswith("http://127.0.0.1:")
    assert c.JupyterHub.db_url == f"sqlite:///{tmp_path}/hub/jupyterhub.sqlite"
    assert (tmp_path / "hub").stat().st_mode & 0o777 == 0o700
    from jupyterhub.spawner import LocalProcessSpawner

    assert issubclass(c.JupyterHub.spawner_class, LocalProcessSpawner)
    assert c.Spawner.cmd == ["/opt/example/venv/bin/jupyterhub-singleuser"]
    from labkit._kernels import SERVER_ARGS

    assert c.Spawner.args == SERVER_ARGS  # kernels over private Unix sockets, as `labkit lab` runs them
    env = c.Spawner.environment
    assert env["VSOLAB_CACHE"] == "/opt/example/cache" and env["PATH"].startswith("/opt/example/venv/bin:")
    assert callable(env["VSOLAB_STATE"])
    assert c.Spawner.disable_user_config is True
    assert callable(c.Spawner.pre_spawn_hook) and callable(c.Spawner.post_stop_hook)
    # memory and CPU are set (passed as MEM_LIMIT/CPU_LIMIT; LocalProcessSpawner does not enforce them)
    assert _bytes(c.Spawner.mem_limit) >= (figures()["lab_mib"] + figures()["kernel_mib"]) * MIB
    assert _bytes(c.Spawner.mem_limit) >= density()["peak_mib"] * MIB  # one attendee's peak is under the shown limit
    text = CONFIG.read_text()
    assert "does NOT enforce" in text
    for quoted in (f"{figures()['lab_mib']} MiB", f"{density()['peak_mib']} MiB"):  # the sizing comment follows them
        assert quoted in text, f"jupyterhub/jupyterhub_config.py should say {quoted!r} (the figures changed)"
    # the idle culler runs as a hub service, from the hub's own Python, with the scopes it needs
    (culler,) = c.JupyterHub.services
    assert culler["command"][:3] == [sys.executable, "-m", "jupyterhub_idle_culler"]
    assert any(a.startswith("--timeout=") for a in culler["command"])
    (role,) = c.JupyterHub.load_roles
    assert role["services"] == [culler["name"]]
    assert {"list:users", "read:users:activity", "read:servers", "delete:servers"} <= set(role["scopes"])


def test_the_spawner_sets_no_new_privs_after_becoming_the_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The preexec function runs the user switch first, then no_new_privs: run it in a child (as the current user,
    so the switch is a no-op) and read the flag back from /proc."""
    pytest.importorskip("jupyterhub")
    import getpass
    import subprocess

    c = _load_config(monkeypatch, tmp_path)
    spawner_class = c.JupyterHub.spawner_class
    preexec = spawner_class.make_preexec_fn(spawner_class.__new__(spawner_class), getpass.getuser())
    out = subprocess.run(["grep", "NoNewPrivs", "/proc/self/status"], preexec_fn=preexec, capture_output=True, text=True)
    assert out.stdout.split() == ["NoNewPrivs:", "1"], out
