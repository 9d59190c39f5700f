"""VSO Lab benchmark: one run, one table, ratios measured side by side.

    python benchmarks/bench_lab.py            # lab figures (about 3 minutes)
    python benchmarks/bench_lab.py --series   # also the whole notebook series with CI parameters
    python benchmarks/bench_lab.py --cold     # also a cold rebuild of every Go binary into a scratch cache (~10 min)
    python benchmarks/bench_lab.py --series --output benchmarks/RESULTS.md   # also write the table, with machine and date

Every lab here runs in its own temporary state directory and is purged at the end.

Memory is proportional set size (PSS): a page shared by several processes (PostgreSQL's shared buffers, the
Python interpreter of the agent and the app) is split between them instead of counted in each, so the
components add up to what the lab really occupies; resident set size (RSS) double-counts those pages.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import requests

from labkit import _procs, app, dynamic, helm, install, rotation, stages, static, vault, vso
from labkit.backends.local import LocalLab
from labkit.notebook import SPEC

ROWS: list[tuple[str, str, str, str]] = []


def row(metric: str, value: str, reference: str = "", verdict: str = "") -> None:
    ROWS.append((metric, value, reference, verdict))
    print(f"  {metric}: {value} {reference} {verdict}", flush=True)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def _first_200(url: str, stop: threading.Event, first: list[float]) -> None:
    """Record the first moment ``url`` answers 200 (polled every 50 ms until ``stop``)."""
    while not stop.is_set() and not first:
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=0.5).ok:
                first.append(time.monotonic())
        time.sleep(0.05)


def _readiness_delay(lab: LocalLab) -> int:
    """The manager container's readinessProbe.initialDelaySeconds, from the release's Deployment."""
    from kubernetes import client as kclient

    dep: Any = kclient.AppsV1Api(lab.kube).read_namespaced_deployment(helm.DEPLOYMENT, "vault-secrets-operator")
    manager = next(c for c in dep.spec.template.spec.containers if c.name == "manager")
    return int(manager.readiness_probe.initial_delay_seconds or 0)


def apiserver_alone(root: Path) -> float:
    """kube-apiserver's own time from exec to /readyz (etcd already up), in a scratch state."""
    lab = LocalLab(root)
    lab.state.ensure()
    from labkit.backends.local.pki import ensure_etcd_pki, ensure_kubelet_pki, ensure_pki

    ensure_pki(lab.state)
    ensure_etcd_pki(lab.state)
    ensure_kubelet_pki(lab.state)  # the API server's kubelet client certificate (kubectl logs)
    lab._write_admin_kubeconfig()
    lab.components["etcd"].ensure()
    times = []
    for _ in range(3):
        t0 = time.monotonic()
        lab.components["apiserver"].ensure()
        times.append(time.monotonic() - t0)
        lab.components["apiserver"].stop()
    lab.down(purge=True)
    return statistics.median(times)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def _pss(procs: list[psutil.Process]) -> tuple[int, int]:
    """(PSS, RSS) in bytes, summed over ``procs``."""
    pss = rss = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            pss += info.pss
            rss += info.rss
    return pss, rss


def memory(lab: LocalLab) -> dict[str, tuple[int, int]]:
    """Component (with its children, e.g. PostgreSQL's backends) → (PSS, RSS); the pods (the operator's, the app's)
    apart from the agent."""
    pods = _procs.tagged(lab.state.lab_id + ":pod:")
    pod_pids = {p.pid for p in pods}
    operator = {f"{lab.state.lab_id}:pod:{p['metadata']['uid']}" for p in lab._operator_pods()}
    out = {}
    for h in lab.status():
        if h.pid and h.component != "operator":
            out[h.component] = _pss([p for p in _tree(h.pid) if p.pid not in pod_pids])

    def of_operator(proc: psutil.Process) -> bool:
        with contextlib.suppress(psutil.Error):
            return _procs.tag_of(proc) in operator
        return False

    out["pods (operator: manager, kube-rbac-proxy)"] = _pss([q for p in pods if of_operator(p) for q in _tree(p.pid)])
    out["pods (app)"] = _pss([q for p in pods if not of_operator(p) for q in _tree(p.pid)])
    return out


def recovery(lab: LocalLab) -> tuple[float, float]:
    """SIGKILL every process of the lab; seconds for ``up`` to repair it, and until the app answers /status again."""
    n = lab.names
    for proc in _procs.tagged(lab.state.lab_id + ":"):
        with contextlib.suppress(psutil.Error):
            proc.kill()
    time.sleep(1)
    t0 = time.monotonic()
    lab.up(progress=lambda m: None)
    t_up = time.monotonic() - t0
    while True:
        try:
            code, body = app.call(lab, n.dynamic_ns, "/status", timeout=2)
            if code == 200 and body.get("connected_as") == dynamic.read_secret(lab).get("username"):
                break
        except Exception:  # pods restarting
            pass
        if time.monotonic() - t0 > 180:
            return t_up, float("nan")
        time.sleep(0.2)
    return t_up, time.monotonic() - t0


def propagation(lab: LocalLab, samples: int, refresh: str) -> list[float]:
    n = lab.names
    static.create_static_secret(lab, refresh)
    out = []
    for i in range(samples):
        pw = f"bench-{i}-{time.time_ns()}"
        t0 = time.monotonic()
        vault.kv_put(lab, n.kv_mount, n.kv_path, {"username": "static-user", "password": pw})
        while static.read_secret(lab).get("password") != pw:
            time.sleep(0.02)
        out.append(time.monotonic() - t0)
        time.sleep(0.37 * (i % 3))  # spread writes across the polling phase
    return out


def rotation_to_ready(lab: LocalLab, rotations: int) -> list[float]:
    """From the moment the Secret holds new credentials to a Ready pod serving them."""
    n = lab.names
    rotation.use_short_ttls(lab, "10s", "20s", 67)
    out: list[float] = []
    user = dynamic.read_secret(lab).get("username")
    while len(out) < rotations:
        new = dynamic.read_secret(lab).get("username")
        if new and new != user:
            t0 = time.monotonic()
            while True:
                try:
                    _, body = app.call(lab, n.dynamic_ns, "/secret", timeout=2)
                    if body.get("username") == new:
                        break
                except Exception:  # pods rolling
                    pass
                time.sleep(0.05)
            out.append(time.monotonic() - t0)
            user = new
        time.sleep(0.05)
    return out


def cold_build() -> list[dict]:
    scratch = Path(tempfile.mkdtemp(prefix="vsolab-cold-"))
    env = dict(os.environ, VSOLAB_CACHE=str(scratch / "cache"), GOMODCACHE=str(scratch / "gomod"),
               GOCACHE=str(scratch / "gocache"))
    subprocess.run([sys.executable, "-m", "labkit", "install", "--source", "build"], env=env, check=True)
    metrics = [json.loads((scratch / "cache" / f"{p.name}-{p.version}" / "build-metrics.json").read_text())
               for p in install.PRODUCTS.values()]
    subprocess.run(["rm", "-rf", str(scratch)], check=False)
    return metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", action="store_true")
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--output", type=Path, help="also write the table, with the machine and the date, to this file")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vsolab-bench-"))
    os.chmod(tmp, 0o755)  # as root, PostgreSQL runs as another user beside the state directory
    try:
        measure(args, tmp)
    finally:  # a crash must not leave a lab running
        for state in (tmp / "lab", tmp / "series"):
            if state.exists():
                with contextlib.suppress(Exception):
                    LocalLab(state).down(purge=True)


def measure(args: argparse.Namespace, tmp: Path) -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    machine = (f"{platform.node()} · {cpu} · {os.cpu_count()} cores · {psutil.virtual_memory().total / 2**30:.0f} GiB · "
               f"{platform.platform()} · Python {platform.python_version()}")
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    print(f"machine: {machine}\ndate: {started} · load average at start {load:.2f}", flush=True)

    metrics = cold_build() if args.cold else install.build_metrics()
    label = "cold build, this run" if args.cold else "recorded at the cache's cold build"
    for m in metrics:
        row(f"install {m['product']} {m['version']} ({label})", f"{m['seconds']:.0f} s",
            f"download {int(str(m.get('download_bytes', 0))) / 2**20:.0f} MiB · "
            f"peak RSS {int(str(m.get('peak_rss_bytes', 0))) / 2**20:.0f} MiB")

    api_alone = apiserver_alone(tmp / "apiserver-alone")
    row("kube-apiserver alone: exec → /readyz", f"{api_alone:.2f} s", "(median of 3)")

    lab = LocalLab(tmp / "lab")
    t0 = time.monotonic()
    lab.up(progress=lambda m: None, operator=False)
    row("first up (fresh state: PKI, initdb, OpenBao init; no operator, as notebook 00)", f"{time.monotonic() - t0:.1f} s")

    # Notebook 01's Helm cell, run by bash as the learner runs it, then the connect and static steps.
    p = {k: d for k, (_, d) in SPEC.items()} | {"REFRESH_AFTER": "3s"}
    t0 = time.monotonic()
    subprocess.run(["bash", "-euo", "pipefail", "-c", helm.INSTALL_COMMAND], env={**os.environ, **lab.env()}, check=True,
                   capture_output=True, text=True)
    t_helm = time.monotonic() - t0
    stages.apply_stage(lab, 1, p)  # notebook 01's step cells (its Helm cell finds the release in place), then 02's
    stages.apply_stage(lab, 2, p)
    vso.wait_synced(lab, "VaultStaticSecret", lab.names.static_vss, lab.names.static_ns, timeout=120)
    row("`helm upgrade --install` (the notebook's cell, --wait) → Ready manager pod", f"{t_helm:.1f} s")
    row("`helm install` → first synced Secret (the Helm cell, then notebooks 01 and 02's step cells)",
        f"{time.monotonic() - t0:.1f} s")

    warm, answers = [], []
    port = lab.ports["operator_probe"]
    for _ in range(2):
        lab.down()
        stop, first = threading.Event(), list[float]()
        t0 = time.monotonic()
        watcher = threading.Thread(target=_first_200, args=(f"http://127.0.0.1:{port}/readyz", stop, first), daemon=True)
        watcher.start()
        actions = lab.up(progress=lambda m: None)
        warm.append(time.monotonic() - t0)
        stop.set()
        watcher.join()
        answers.append(first[0] - t0 if first else float("nan"))
        assert actions.get("operator") == "reused", actions  # the agent brought the pod back; helm did not run
    w, a = statistics.median(warm), statistics.median(answers)
    delay = _readiness_delay(lab)
    row("warm up: the manager process answers its own /readyz (container started)", f"{a:.1f} s",
        f"ratio to apiserver alone {a / api_alone:.1f}×")
    row("warm up (all stopped, state kept; until the operator pod is Ready)", f"{w:.1f} s",
        f"ratio to apiserver alone {w / api_alone:.1f}×; the manager's readinessProbe waits initialDelaySeconds: "
        f"{delay} after the container starts (the lab's post-renderer; the chart says 5), so Ready cannot come "
        f"before ≈ {a + delay:.1f} s",
        "ok (≤15 s, ratio ≤2)" if w <= 15 and w / api_alone <= 2 else "MISSES target (≤15 s, ratio ≤2)")

    times = propagation(lab, args.samples, "3s")
    p50, p95 = statistics.median(times), pct(times, 95)
    row(f"propagation by polling, {len(times)} KV writes (refreshAfter 3 s)", f"p50 {p50:.2f} s · p95 {p95:.2f} s",
        f"p95/refreshAfter {p95 / 3:.2f}", "ok (p95 ≤ refreshAfter + 1 s)" if p95 <= 4 else "MISSES target")

    stages.apply_stage(lab, 3, p)  # notebook 03's step cells
    rot = rotation_to_ready(lab, 3)
    row(f"rotation: new Secret → Ready pod with new credentials ({len(rot)} rotations)",
        f"median {statistics.median(rot):.2f} s · worst {max(rot):.2f} s", "", "ok (≤5 s)" if max(rot) <= 5 else "MISSES target")

    mem = memory(lab)
    total = sum(v[0] for v in mem.values())
    total_rss = sum(v[1] for v in mem.values())
    for k, (pss, rss) in sorted(mem.items(), key=lambda kv: -kv[1][0]):
        row(f"memory: {k}", f"{pss / 2**20:.0f} MiB", f"{100 * pss / total:.0f}% of the lab · RSS {rss / 2**20:.0f} MiB")
    row("memory: whole lab (PSS)", f"{total / 2**20:.0f} MiB", f"RSS summed {total_rss / 2**20:.0f} MiB (shared pages counted "
        "in each process)", "ok (≤1.5 GB)" if total <= 1.5e9 else "MISSES target")
    # the same Process objects twice: cpu_percent measures since the previous call on that object
    # (the pods' processes are the agent's children: in its tree)
    procs = [p for h in lab.status() if h.pid and h.component != "operator" for p in _tree(h.pid)]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.cpu_percent(interval=None)
    time.sleep(5)
    cpu_pct = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            cpu_pct += proc.cpu_percent(interval=None)
    row("CPU: whole lab, idle with the app running (5 s)", f"{cpu_pct:.0f}% of one core")

    t_up, t_app = recovery(lab)
    row("recovery: whole lab SIGKILLed → `up` repaired it", f"{t_up:.1f} s", f"ratio to warm up {t_up / w:.1f}×")
    row("recovery: whole lab SIGKILLed → app /status 200 again", f"{t_app:.1f} s",
        "includes new credentials when a lease expired meanwhile")
    lab.down(purge=True)

    if args.series:
        from labkit.runner import run_notebooks

        out = tmp / "executed"
        env_state = os.environ.get("VSOLAB_STATE")
        os.environ["VSOLAB_STATE"] = str(tmp / "series")
        t0 = time.monotonic()
        ok = run_notebooks(out, ci=True)
        total_s = time.monotonic() - t0
        for line in (out / "summary.md").read_text().splitlines()[2:-1]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            row(f"series: {cells[0]}", f"{cells[2]} s", f"{cells[3]} of the series")
        tutorial_s = sum(float(line.strip("|").split("|")[2]) for line in (out / "summary.md").read_text().splitlines()[2:-1]
                         if line.strip("| ")[:2].isdigit() and int(line.strip("| ")[:2]) < 8)
        row("series: the tutorial (00-07), CI parameters", f"{tutorial_s:.0f} s", f"{tutorial_s / total_s:.0%} of the series")
        row("series: all notebooks (00-13, the tutorial and beyond), CI parameters", f"{total_s:.0f} s",
            "passed" if ok else "FAILED (see executed/summary.md)",
            ("ok (≤10 min)" if total_s <= 600 else "MISSES target") if ok else "not measured: the series failed")
        LocalLab(tmp / "series").down(purge=True)
        if env_state is None:
            os.environ.pop("VSOLAB_STATE", None)

    table = "| metric | value | reference / ratio | target |\n|---|---|---|---|\n" + "".join(
        "| " + " | ".join(r) + " |\n" for r in ROWS)
    print("\n" + table, end="")
    if args.output:
        args.output.write_text(
            "# VSO Lab: measured figures\n\n"
            f"Printed by `python benchmarks/bench_lab.py{' --series' if args.series else ''}{' --cold' if args.cold else ''}` "
            "(one run; ratios are measured side by side in that run).\n\n"
            f"* machine: {machine}\n* date: {started}\n* load average when it started: {load:.2f} "
            "(other labs may have been running on the machine)\n\n" + table)
    requests.Session().close()


if __name__ == "__main__":
    main()
