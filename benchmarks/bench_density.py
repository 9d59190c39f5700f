"""Workshop density: N attendees' labs side by side on one host, each its own Unix user and state directory, each
running the notebook series at CI parameters at the same time.

Run as root (it creates the users ``vsolab-att1`` … and shares the binary cache read-only, as docs/instructor.md
asks of an administrator); the labs themselves run as the attendees, with nothing privileged::

    sudo python3 benchmarks/bench_density.py --attendees 1 2 4 --output benchmarks/density.md

For every N it reports, in one run: the series time per attendee and its ratio to N = 1, failures, memory per
attendee (PSS of all the attendee's processes: peak while the series ran, and idle after a new `labkit up`),
and idle CPU per attendee. The sizing rule at the end is computed from the table, not written by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import _shared_kit  # noqa: E402
from _users import ensure_user  # noqa: E402
from test_unprivileged import SYSTEM_PATH, _runuser, _share_cache  # noqa: E402

WORK = Path("/var/tmp/vsolab-density")  # root-owned, world-readable: the shared kit, venv and cache
#: a series slower than this many times N = 1's is where the host stops holding N attendees
SLOWDOWN_LIMIT = 1.5
#: seconds an idle lab is left alone after `labkit up` before it is measured
IDLE_SETTLE = 20


@dataclass
class Attendee:
    name: str
    home: Path
    env: dict[str, str]
    uid: int
    seconds: float = 0.0
    ok: bool = False
    detail: str = ""
    peak_pss: int = 0
    samples: list[int] = field(default_factory=list)

    def run(self, cmd: list[str] | str, timeout: float) -> subprocess.CompletedProcess[str]:
        return _runuser(self.name, cmd, self.env, timeout=timeout, cwd=str(self.home))


def _pss_of(uid: int) -> int:
    total = 0
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.uids().real == uid:
                total += getattr(proc.memory_full_info(), "pss", 0)
    return total


def _cpu_of(uids: list[int], seconds: float = 10) -> dict[int, float]:
    """Per uid, the CPU its processes used over ``seconds``, in % of one core."""
    procs = [p for p in psutil.process_iter() if _uid(p) in uids]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(seconds)
    used = dict.fromkeys(uids, 0.0)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            used[p.uids().real] += p.cpu_percent(None)
    return used


def _uid(proc: psutil.Process) -> int:
    try:
        return proc.uids().real
    except psutil.Error:
        return -1


def prepare_shared() -> None:
    """The shared kit: a root-owned, world-readable copy of this checkout, a venv with it installed, the cache."""
    WORK.mkdir(parents=True, exist_ok=True)
    os.chmod(WORK, 0o755)
    cache, src, venv = WORK / "cache", WORK / "src", WORK / "venv"
    if not cache.exists():
        _share_cache(cache)
    _shared_kit.copy_repo(src)
    _shared_kit.venv(venv, src)

def attendees(n: int) -> list[Attendee]:
    """``n`` attendees' accounts (made when missing), each with a state directory in their own home."""
    cache, venv = WORK / "cache", WORK / "venv"
    people = []
    for i in range(1, n + 1):
        user = ensure_user(f"vsolab-att{i}", home=True)
        home = Path(user.pw_dir)
        env = {"HOME": str(home), "USER": user.pw_name, "LOGNAME": user.pw_name, "LANG": "C.UTF-8",
               "PATH": f"{venv}/bin:{SYSTEM_PATH}", "VSOLAB_CACHE": str(cache),
               "VSOLAB_STATE": str(home / ".local/state/vsolab/density")}
        people.append(Attendee(user.pw_name, home, env, user.pw_uid))
    return people


def one_round(people: list[Attendee]) -> None:
    """Every attendee: ``labkit up``, then the series at CI parameters, all at once; PSS sampled meanwhile."""
    def series(a: Attendee) -> None:
        out = a.home / "executed-density"
        a.run(f"rm -rf {out}", 60)
        t0 = time.monotonic()
        res = a.run(f"labkit up >/dev/null && labkit run-notebooks --ci --output {out}", 3600)
        a.seconds = time.monotonic() - t0
        summary = out / "summary.md"
        a.ok = res.returncode == 0 and summary.exists() and "| **total** | passed |" in summary.read_text()
        a.detail = "" if a.ok else (res.stdout[-600:] + res.stderr[-600:]).strip().replace("\n", " ")

    done = threading.Event()

    def sample() -> None:
        while not done.wait(5):
            for a in people:
                a.samples.append(_pss_of(a.uid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=series, args=(a,)) for a in people]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    sampler.join()
    for a in people:
        a.peak_pss = max(a.samples, default=0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--attendees", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--output", type=Path)
    ap.add_argument("--idle-only", action="store_true", help="only `labkit up` the N labs at once and measure them idle")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark creates the attendees' accounts (their labs run unprivileged)")
    cores, mem = os.cpu_count() or 1, psutil.virtual_memory().total
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = (f"{platform.node()} · {cores} cores · {mem / 2**30:.0f} GiB · {platform.platform()} · {started} · "
            f"load average at start {os.getloadavg()[0]:.2f}")
    print(head, flush=True)
    rows, base = [], None
    results: list[tuple[int, list[Attendee], dict[int, float], list[int]]] = []
    prepare_shared()
    for n in args.attendees:
        people = attendees(n)
        try:
            print(f"N = {n}: {', '.join(a.name for a in people)} …", flush=True)
            if not args.idle_only:
                one_round(people)
            # Notebook 07 ends with the lab cleaned up: each attendee's `labkit up` again (the operator installed),
            # all at once, then the idle labs are measured (no kernel, no app: what a room between notebooks costs).
            ups = [threading.Thread(target=a.run, args=("labkit up >/dev/null 2>&1", 900)) for a in people]
            for t in ups:
                t.start()
            for t in ups:
                t.join()
            time.sleep(IDLE_SETTLE)
            idle_pss = [_pss_of(a.uid) for a in people]
            cpu = _cpu_of([a.uid for a in people])
        finally:
            for a in people:
                a.run("labkit down --purge >/dev/null 2>&1", 300)
        results.append((n, people, cpu, idle_pss))
        if args.idle_only:
            rows.append(f"| {n} | — | — | — | — | {statistics.median(idle_pss) / 2**20:.0f} MiB | "
                        f"{statistics.median(cpu.values()):.0f}% | {os.getloadavg()[0]:.1f} |")
            print(rows[-1], flush=True)
            continue
        med = statistics.median(a.seconds for a in people)
        base = base or med
        fails = [a for a in people if not a.ok]
        rows.append(f"| {n} | {med:.0f} s (max {max(a.seconds for a in people):.0f} s) | {med / base:.2f}× | {len(fails)} | "
                    f"{statistics.median(a.peak_pss for a in people) / 2**20:.0f} MiB | "
                    f"{statistics.median(idle_pss) / 2**20:.0f} MiB | {statistics.median(cpu.values()):.0f}% | "
                    f"{os.getloadavg()[0]:.1f} |")
        print(rows[-1], flush=True)
        for a in fails:
            print(f"  {a.name} failed: {a.detail}", flush=True)
    # the sizing rule, from the table: the largest N with no failure and a series at most SLOWDOWN_LIMIT x N = 1's
    if args.idle_only:
        results = []
    held = [n for n, people, _c, _i in results if all(a.ok for a in people) and
            statistics.median(a.seconds for a in people) <= SLOWDOWN_LIMIT * (base or 1)]
    peak = max((statistics.median(a.peak_pss for a in people) for _n, people, _c, _i in results), default=0)
    best = max(held, default=0)
    rule = "Idle labs only (--idle-only): no series ran, so no sizing rule." if args.idle_only else (
            f"Sizing rule (from this run): up to {best / cores:.1f} attendees per core (N = {best} on {cores} cores kept the "
            f"series within {SLOWDOWN_LIMIT}× of one attendee's, with no failure), and {peak / 2**20:.0f} MiB per attendee at "
            f"the series' peak (lab and kernel): {2**30 / peak:.1f} attendees per GiB, i.e. plan "
            f"{(peak / 2**30) * 1.25:.2f} GiB per attendee with a quarter of headroom.")
    table = ("| attendees (N) | series time per attendee (median) | ratio to N = 1 | failures | PSS per attendee, peak "
             "(lab + kernel) | PSS per attendee, idle lab (a new `labkit up`) | idle CPU per attendee | load average after |\n"
             "|---:|---|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n")
    text = f"{head}\n\n{table}\n{rule}\n"
    print("\n" + text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
