#!/usr/bin/env python3
"""A Helm post-renderer: set command-line flags in the rendered manifests (the local lab's loopback ports).

Helm pipes every rendered manifest of a release through a post-renderer before it sends them to the cluster.
This one reads them on stdin and writes them to stdout unchanged, except:

* a container argument line ``- --flag=value`` whose flag is given as ``--flag=new`` gets the new value;
* an argument given as ``+--flag=value`` is added after the last line changed that way (so: to the containers
  whose flags were set).

::

    helm install ... --post-renderer labkit/helm_postrender.py \\
        --post-renderer-args --secure-listen-address=127.0.0.1:41234 \\
        --post-renderer-args --upstream=http://127.0.0.1:41235/ \\
        --post-renderer-args '+--kubeconfig=$(KUBECONFIG)'

Why the local lab needs it: every pod of the local lab runs as processes on this machine, in the machine's own
network namespace, so an address a chart fixes (the VSO chart's kube-rbac-proxy listens on ``0.0.0.0:8443`` and
proxies ``127.0.0.1:8080``; the chart has no value to change either) would be reachable from the network and would
collide with a second lab on the same host. The lab moves them to its own recorded ports on 127.0.0.1. And
kube-rbac-proxy finds the API server only through ``--kubeconfig`` or the in-cluster files under
``/var/run/secrets``, which local processes cannot have; the node agent gives each container its service
account's kubeconfig as ``KUBECONFIG`` and, like a kubelet, expands ``$(VAR)`` in arguments. The manager's own
addresses need no post-renderer: the chart's ``controller.manager.extraArgs`` come after its fixed flags, and the
last flag wins; and it reads ``KUBECONFIG`` itself.

Only the Python standard library: any ``python3`` runs it.
"""

from __future__ import annotations

import re
import sys

_ARG = re.compile(r"""^(?P<lead>\s*-\s+)(?P<q>["']?)(?P<flag>--[A-Za-z0-9][A-Za-z0-9-]*)=(?P<value>.*?)(?P=q)\s*$""")


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """``--flag=value`` arguments → {flag: value}, and the ``+--flag=value`` ones to add; anything else is refused."""
    sets, adds = {}, []
    for a in argv:
        if a.startswith("+--") and "=" in a:
            adds.append(a[1:])
        elif a.startswith("--") and "=" in a:
            flag, value = a.split("=", 1)
            sets[flag] = value
        else:
            raise SystemExit(f"helm_postrender: expected --flag=value or +--flag=value arguments, got {a!r}")
    return sets, adds


def render(text: str, flags: dict[str, str], add: list[str] | None = None) -> tuple[str, int]:
    """The manifests with the flags replaced (and ``add`` after the last replaced line of each container), and how
    many lines changed."""
    lines: list[str] = []
    changed = 0
    pending: tuple[int, str, str] | None = None  # where to add: index after the last changed line, its lead, end

    def flush() -> None:
        nonlocal pending
        if pending is not None and add:
            at, lead, end = pending
            lines[at:at] = [f"{lead}{a}{end or chr(10)}" for a in add]
        pending = None

    for line in text.splitlines(keepends=True):
        m = _ARG.match(line.rstrip("\n"))
        if m is None and pending is not None:
            flush()
        if m and m.group("flag") in flags:
            end = "\n" if line.endswith("\n") else ""
            line = f"{m.group('lead')}{m.group('q')}{m.group('flag')}={flags[m.group('flag')]}{m.group('q')}{end}"
            changed += 1
            lines.append(line)
            pending = (len(lines), m.group("lead"), end)
            continue
        lines.append(line)  # another argument of the same list keeps `pending`: adds go after the last changed one
    flush()
    return "".join(lines), changed


def main(argv: list[str] | None = None) -> int:
    flags, add = parse(sys.argv[1:] if argv is None else argv)
    out, changed = render(sys.stdin.read(), flags, add)
    if flags and not changed:
        print(f"helm_postrender: none of {', '.join(flags)} is in the rendered manifests", file=sys.stderr)
        return 1
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
