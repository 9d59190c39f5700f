"""The ``labkit`` command line: install, up, status, down, doctor, env, stage, run-notebooks."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import LabkitError, ParameterError

if TYPE_CHECKING:
    from .backends.contract import Lab


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def cmd_install(args: argparse.Namespace) -> int:
    from . import install

    t0 = time.monotonic()
    paths = install.install(args.products or None, force=args.force, source=args.source)
    for name, p in sorted(paths.items()):
        print(f"{name:<24} {p}")
    print(f"install: done in {time.monotonic() - t0:.0f}s")
    return 0


def _lab(args: argparse.Namespace) -> Lab:
    from .backends import get_backend

    return get_backend(args.backend, state=args.state)


def _lab_or_none(args: argparse.Namespace) -> Lab | None:
    try:
        return _lab(args)
    except Exception:  # only used to name the component in an error message
        return None


def cmd_up(args: argparse.Namespace) -> int:
    lab = _lab(args)
    t0 = time.monotonic()
    actions = lab.up(operator=not getattr(args, "no_operator", False))
    changed = {k: v for k, v in actions.items() if v != "reused"}
    print(f"up: lab ready in {time.monotonic() - t0:.1f}s" + ("" if changed else " (everything was already running)"))
    print(_status_text(lab))
    print("\nNext: `eval \"$(labkit env)\"` to point vault/bao/kubectl at the lab.")
    return 0


def _status_text(lab: Lab) -> str:
    rows = [[h.component, str(h.pid or "-"), h.address,
             (f"healthy ({h.detail})" if h.detail else "healthy") if h.healthy else f"DOWN {h.detail}".strip(), h.version]
            for h in lab.status()]
    return _table(rows, ["component", "pid", "address", "health", "version"])


def cmd_status(args: argparse.Namespace) -> int:
    lab = _lab(args)
    print(_status_text(lab))
    return 0 if lab.healthy() else 1


def cmd_down(args: argparse.Namespace) -> int:
    lab = _lab(args)
    if args.delete_profile and lab.backend != "minikube":
        from .errors import ParameterError

        raise ParameterError(f"Checked --delete-profile against the {lab.backend} backend: only minikube has a profile.",
                             ["Use `labkit down --backend minikube --delete-profile`.", "Drop --delete-profile.",
                              "See `labkit down --help`."])
    stopped = lab.down(purge=args.purge, **({"delete_profile": True} if args.delete_profile else {}))
    print("down: stopped " + (", ".join(stopped) if stopped else "nothing (the lab was not running)"))
    if args.purge:
        print("down: state wiped; the next `labkit up` starts a fresh lab")
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    """`labkit operator install|uninstall`: VSO's Helm release on the local lab (the notebook's command, run by labkit)."""
    lab = _lab(args)
    from .backends.contract import OperatorRelease

    if lab.backend != "local" or not isinstance(lab, OperatorRelease):
        raise ParameterError(f"Checked the {lab.backend} backend for `labkit operator`: only the local lab has it.",
                             ["Use the local backend (VSOLAB_BACKEND=local).",
                              "On minikube, run `helm install` as the tutorial shows."])
    if args.action == "install":
        lab.install_operator(client_cache_persistence_model=args.client_cache_persistence_model)
        print("operator: VSO runs as the pod of the Helm release vault-secrets-operator "
              "(kubectl get pods -n vault-secrets-operator)")
    else:
        for step in lab.uninstall_operator():
            print(f"operator: {step}")
        print("operator: the Helm release is uninstalled; no operator runs (`labkit operator install` brings it back)")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    lab = _lab(args)
    for k, v in lab.env().items():
        if k == "PATH":  # only the lab's own tools go in front; the shell keeps its PATH
            print(f'export PATH={shlex.quote(v.split(os.pathsep, 1)[0])}:"$PATH"')
        else:
            print(f"export {k}={shlex.quote(v)}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import doctor

    results = doctor(args.backend)
    rows = [[r.name, "ok" if r.ok else "MISSING", r.detail if r.ok else r.fix] for r in results]
    print(_table(rows, ["check", "result", "detail / how to fix"]))
    return 0 if all(r.ok for r in results) else 1


def cmd_stage(args: argparse.Namespace) -> int:
    from ._cells import PARAM_ENV
    from .notebook import SPEC
    from .stages import prepare_stage

    lab = _lab(args)
    # From a notebook's cell (`labkit stage N`), the notebook's parameters are in the environment: use them.
    params = {k: d for k, (_, d) in SPEC.items()}
    for k in PARAM_ENV:
        value = os.environ.get(k)
        if value:
            params[k] = int(value) if isinstance(SPEC[k][1], int) and value.lstrip("-").isdigit() else value
    done = prepare_stage(lab, args.n, params)
    print(f"stage {args.n}: the lab is at the start of notebook {args.n:02d} ({', '.join(done) or 'nothing to do'})")
    return 0


def cmd_run_notebooks(args: argparse.Namespace) -> int:
    from .runner import run_notebooks

    ok = run_notebooks(args.output, backend=args.backend, ci=args.ci, only=args.only, solutions=args.solutions)
    return 0 if ok else 1


def jupyterlab_argv(*, no_browser: bool = False, port: int | None = None) -> list[str]:
    """``labkit lab``'s JupyterLab: on 127.0.0.1 only, on the notebooks, its kernels over Unix sockets only their
    user can open (labkit/_kernels.py)."""
    from ._kernels import SERVER_ARGS

    nb = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
    return [sys.executable, "-m", "jupyterlab", "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={nb}", *SERVER_ARGS,
            *(["--no-browser"] if no_browser else []),
            *([f"--ServerApp.port={port}", "--ServerApp.port_retries=0"] if port else [])]


def cmd_lab(args: argparse.Namespace) -> int:
    """Start the lab, then JupyterLab on the notebooks (on 127.0.0.1 only)."""
    cmd_up(args)
    argv = jupyterlab_argv(no_browser=args.no_browser, port=args.port)
    if os.geteuid() == 0:
        # JupyterLab refuses root without --allow-root; containers, cloud VMs and CI run as root.
        print("labkit lab: running as root, so JupyterLab gets --allow-root. On a shared machine, run the lab as an "
              "ordinary user instead: every lab is private to the user who starts it.", file=sys.stderr)
        argv.append("--allow-root")
    print("labkit lab: when you stop JupyterLab (Ctrl-C twice), the lab keeps running; `labkit down` stops it.",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execvp(sys.executable, argv)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labkit", description="VSO Lab: Vault + Vault Secrets Operator, hands-on.")
    p.add_argument("--state", default=os.environ.get("VSOLAB_STATE"), help="lab state directory (VSOLAB_STATE)")
    p.add_argument("--backend", default=os.environ.get("VSOLAB_BACKEND", "local"),
                   help="local (default), minikube or external (VSOLAB_BACKEND)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("install", help="build or download, and cache, the lab's binaries")
    s.add_argument("products", nargs="*", metavar="PRODUCT",
                   help="only these: etcd, kube, vso, helm, kube-rbac-proxy (default: all)")
    s.add_argument("--force", action="store_true", help="rebuild (or download again) even when cached")
    s.add_argument("--source", choices=["auto", "build", "prebuilt"], default="auto",
                   help="build: from the Go module proxy; prebuilt: official release binaries, checksums verified; "
                        "auto (default): prebuilt (build as fallback) when the release hosts answer, "
                        "else build (docs/install.md)")
    s.set_defaults(func=cmd_install)
    s = sub.add_parser("up", help="start the lab, or repair it (idempotent)")
    s.add_argument("--no-operator", action="store_true",
                   help="local lab: do not install VSO's Helm release when it is missing (notebook 01 installs it)")
    s.set_defaults(func=cmd_up)
    sub.add_parser("status", help="a table of components and their health").set_defaults(func=cmd_status)
    s = sub.add_parser("down", help="stop the lab (state kept)")
    s.add_argument("--purge", action="store_true", help="also wipe the state: Vault data, leases, database")
    s.add_argument("--delete-profile", action="store_true", help="minikube backend: also delete the minikube profile")
    s.set_defaults(func=cmd_down)
    sub.add_parser("env", help="print export lines for VAULT_ADDR, VAULT_TOKEN, KUBECONFIG, PG*").set_defaults(func=cmd_env)
    sub.add_parser("doctor", help="check prerequisites and say how to fix them").set_defaults(func=cmd_doctor)
    s = sub.add_parser("operator", help="local lab: helm upgrade --install (install) or helm uninstall VSO's release")
    s.add_argument("action", choices=["install", "uninstall"])
    s.add_argument("--client-cache-persistence-model", default=None, choices=["none", "direct-unencrypted", "direct-encrypted"])
    s.set_defaults(func=cmd_operator)
    s = sub.add_parser("stage", help="bring the lab to the start of notebook N")
    s.add_argument("n", type=int)
    s.set_defaults(func=cmd_stage)
    s = sub.add_parser("run-notebooks", help="run every notebook in order with papermill")
    s.add_argument("--output", default="executed", help="folder for executed notebooks")
    s.add_argument("--ci", action="store_true", help="short TTLs and live views (CI parameters), with the exercises' solutions typed in")
    s.add_argument("--only", nargs="*", help="notebook numbers to run")
    s.add_argument("--solutions", action="store_true", help="type each exercise's solution (notebooks/solutions/) into its cell first; "
                   "checks must pass (--ci implies it)")
    s.set_defaults(func=cmd_run_notebooks)
    s = sub.add_parser("lab", help="start the lab and open JupyterLab on the notebooks")
    s.add_argument("--no-browser", action="store_true")
    s.add_argument("--port", type=int, default=None, help="JupyterLab's port on 127.0.0.1 (default: 8888, or the next free one)")
    s.set_defaults(func=cmd_lab)
    # Also accept --backend/--state after the command (`labkit doctor --backend minikube`).
    for s in sub.choices.values():
        s.add_argument("--backend", default=argparse.SUPPRESS, help="local, minikube or external")
        s.add_argument("--state", default=argparse.SUPPRESS, help="lab state directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LabkitError as exc:
        print(f"labkit {args.cmd}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # The lab stopped answering mid-command (API server, Vault or PostgreSQL gone): one paragraph, no traceback.
        from ._lost import explain

        lost = explain(exc, _lab_or_none(args), f"`labkit {args.cmd}`")
        if lost is None:
            raise
        print(f"labkit {args.cmd}: {lost}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"labkit {args.cmd}: interrupted", file=sys.stderr)
        return 130
