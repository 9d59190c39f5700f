"""VSO Lab benchmark: one run, one table, ratios measured side by side.

    python benchmarks/bench_lab.py            # lab figures (about 3 minutes)
    python benchmarks/bench_lab.py --series   # also the whole notebook series with CI parameters
    python benchmarks/bench_lab.py --cold     # also a cold rebuild of every Go binary into a scratch cache (~10 min)

Every lab here runs in its own temporary state directory and is purged at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

from labkit import _procs, app, dynamic, install, rotation, stages, static, vault
from labkit.local import LocalLab
from labkit.notebook import SPEC

ROWS: list[tuple[str, str, str, str]] = []


def row(metric: str, value: str, reference: str = "", verdict: str = "") -> None:
    ROWS.append((metric, value, reference, verdict))
    print(f"  {metric}: {value} {reference} {verdict}", flush=True)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def apiserver_alone(root: Path) -> float:
    """kube-apiserver's own time from exec to /readyz (etcd already up), in a scratch state."""
    lab = LocalLab(root)
    lab.state.ensure()
    from labkit._pki import ensure_etcd_pki, ensure_pki

    ensure_pki(lab.state)
    ensure_etcd_pki(lab.state)
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


def memory(lab: LocalLab) -> dict[str, int]:
    out = {h.component: _procs.rss(h.pid) for h in lab.status() if h.pid}
    pods = [p for p in _procs.tagged(lab.state.lab_id + ":pod:")]
    out["pods (app)"] = sum(p.memory_info().rss for p in pods)
    return out


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
    out = []
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
                except Exception:  # noqa: BLE001 - pods rolling
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
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vsolab-bench-"))
    print(f"machine: {platform.node()} · {os.cpu_count()} cores · {psutil.virtual_memory().total / 2**30:.0f} GiB · "
          f"{platform.platform()}", flush=True)

    metrics = cold_build() if args.cold else install.build_metrics()
    label = "cold build, this run" if args.cold else "recorded at the cache's cold build"
    for m in metrics:
        row(f"install {m['product']} {m['version']} ({label})", f"{m['seconds']:.0f} s",
            f"download {int(m.get('download_bytes', 0)) / 2**20:.0f} MiB · peak RSS {int(m.get('peak_rss_bytes', 0)) / 2**20:.0f} MiB")

    api_alone = apiserver_alone(tmp / "apiserver-alone")
    row("kube-apiserver alone: exec → /readyz", f"{api_alone:.2f} s", "(median of 3)")

    lab = LocalLab(tmp / "lab")
    t0 = time.monotonic()
    lab.up(progress=lambda m: None)
    row("first up (fresh state: PKI, initdb, OpenBao init)", f"{time.monotonic() - t0:.1f} s")
    warm = []
    for _ in range(2):
        lab.down()
        t0 = time.monotonic()
        lab.up(progress=lambda m: None)
        warm.append(time.monotonic() - t0)
    w = statistics.median(warm)
    row("warm up (all stopped, state kept)", f"{w:.1f} s", f"ratio to apiserver alone {w / api_alone:.1f}×",
        "ok (≤15 s, ratio ≤2)" if w <= 15 and w / api_alone <= 2 else "MISSES target (≤15 s, ratio ≤2)")

    p = {k: d for k, (_, d) in SPEC.items()} | {"REFRESH_AFTER": "3s"}
    t0 = time.monotonic()
    stages.apply_connect(lab, p)
    stages.apply_static(lab, p)
    row("lab ready → first synced Secret (connect + static steps)", f"{time.monotonic() - t0:.1f} s")

    times = propagation(lab, args.samples, "3s")
    p50, p95 = statistics.median(times), pct(times, 95)
    row(f"propagation by polling, {len(times)} KV writes (refreshAfter 3 s)", f"p50 {p50:.2f} s · p95 {p95:.2f} s",
        f"p95/refreshAfter {p95 / 3:.2f}", "ok (p95 ≤ refreshAfter + 1 s)" if p95 <= 4 else "MISSES target")

    stages.apply_dynamic(lab, p)
    rot = rotation_to_ready(lab, 3)
    row(f"rotation: new Secret → Ready pod with new credentials ({len(rot)} rotations)",
        f"median {statistics.median(rot):.2f} s · worst {max(rot):.2f} s", "", "ok (≤5 s)" if max(rot) <= 5 else "MISSES target")

    mem = memory(lab)
    total = sum(mem.values())
    for k, v in sorted(mem.items(), key=lambda kv: -kv[1]):
        row(f"memory: {k}", f"{v / 2**20:.0f} MiB", f"{100 * v / total:.0f}% of the lab")
    row("memory: whole lab (RSS)", f"{total / 2**20:.0f} MiB", "", "ok (≤1.5 GB)" if total <= 1.5e9 else "MISSES target")
    cpu = sum(psutil.Process(h.pid).cpu_percent(interval=None) for h in lab.status() if h.pid)
    time.sleep(5)
    cpu = sum(psutil.Process(h.pid).cpu_percent(interval=None) for h in lab.status() if h.pid)
    row("CPU: whole lab, idle with the app running (5 s)", f"{cpu:.0f}% of one core")
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
        row("series: all notebooks, CI parameters", f"{total_s:.0f} s", "passed" if ok else "FAILED",
            "ok (≤6 min)" if total_s <= 360 else "MISSES target")
        LocalLab(tmp / "series").down(purge=True)
        if env_state is None:
            os.environ.pop("VSOLAB_STATE", None)

    print("\n| metric | value | reference / ratio | target |\n|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")
    requests.Session().close()


if __name__ == "__main__":
    main()
