#!/usr/bin/env python3
"""A Helm post-renderer: set command-line flags and probe timings in the rendered manifests (the local lab's
loopback ports, and how soon its node agent first probes a pod's readiness).

Helm pipes every rendered manifest of a release through a post-renderer before it sends them to the cluster.
This one reads them on stdin and writes them to stdout unchanged, except:

* a container argument line ``- --flag=value`` whose flag is given as ``--flag=new`` gets the new value;
* an argument given as ``+--flag=value`` is added after the last line changed that way (so: to the containers
  whose flags were set);
* a field given as ``readinessProbe.initialDelaySeconds=1`` (``<probe>.<field>=<value>``) gets the new value in
  every container's probe of that kind that sets the field.

::

    helm install ... --post-renderer labkit/helm_postrender.py \\
        --post-renderer-args --secure-listen-address=127.0.0.1:41234 \\
        --post-renderer-args --upstream=http://127.0.0.1:41235/ \\
        --post-renderer-args '+--kubeconfig=$(KUBECONFIG)' \\
        --post-renderer-args readinessProbe.initialDelaySeconds=1

Why the local lab needs it: every pod of the local lab runs as processes on this machine, in the machine's own
network namespace, so an address a chart fixes (the VSO chart's kube-rbac-proxy listens on ``0.0.0.0:8443`` and
proxies ``127.0.0.1:8080``; the chart has no value to change either) would be reachable from the network and would
collide with a second lab on the same host. The lab moves them to its own recorded ports on 127.0.0.1. And
kube-rbac-proxy finds the API server only through ``--kubeconfig`` or the in-cluster files under
``/var/run/secrets``, which local processes cannot have; the node agent gives each container its service
account's kubeconfig as ``KUBECONFIG`` and, like a kubelet, expands ``$(VAR)`` in arguments. The manager's own
addresses need no post-renderer: the chart's ``controller.manager.extraArgs`` come after its fixed flags, and the
last flag wins; and it reads ``KUBECONFIG`` itself.

The probe timings: the chart's manager container is first probed for readiness 5 s after it starts, then every
10 s, values sized for a cluster that pulls images and schedules over a network. On the local lab the manager
answers its ``/readyz`` within about a second of starting, and ``helm --wait``, ``labkit up`` and a rollout all
wait for the pod to be Ready; the lab probes it after 1 s and then every second, so they wait about 1 s instead
of 5-15 s. The node agent follows whatever the pod's spec says, as a kubelet does: ``kubectl get deploy -o yaml``
shows these values, and a cluster without the post-renderer keeps the chart's.

Only the Python standard library: any ``python3`` runs it.
"""

from __future__ import annotations

import re
import sys

_ARG = re.compile(r"""^(?P<lead>\s*-\s+)(?P<q>["']?)(?P<flag>--[A-Za-z0-9][A-Za-z0-9-]*)=(?P<value>.*?)(?P=q)\s*$""")
_PROBE = re.compile(r"^(?P<indent>\s*)(?P<kind>readinessProbe|livenessProbe|startupProbe):\s*$")
_FIELD = re.compile(r"^(?P<indent>\s*)(?P<field>[A-Za-z]+):(?P<value>\s*\S.*)$")
_SETTING = re.compile(r"^(?P<kind>readinessProbe|livenessProbe|startupProbe)\.(?P<field>[A-Za-z]+)=(?P<value>\d+)$")


def parse(argv: list[str]) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """``--flag=value`` arguments → {flag: value}, the ``+--flag=value`` ones to add, and the
    ``<probe>.<field>=<integer>`` ones → {"<probe>.<field>": value}; anything else is refused."""
    sets, adds, probes = {}, [], {}
    for a in argv:
        m = _SETTING.match(a)
        if m:
            probes[f"{m.group('kind')}.{m.group('field')}"] = m.group("value")
        elif a.startswith("+--") and "=" in a:
            adds.append(a[1:])
        elif a.startswith("--") and "=" in a:
            flag, value = a.split("=", 1)
            sets[flag] = value
        else:
            raise SystemExit("helm_postrender: expected --flag=value, +--flag=value or <probe>.<field>=<integer> "
                             f"(e.g. readinessProbe.periodSeconds=1) arguments, got {a!r}")
    return sets, adds, probes


def set_probe_fields(text: str, settings: dict[str, str]) -> tuple[str, set[str]]:
    """The manifests with each ``<probe>.<field>`` setting applied to every probe of that kind that has the field
    (a line-by-line edit: the YAML keeps its layout), and the settings that changed at least one line."""
    out: list[str] = []
    used: set[str] = set()
    probe: list = []  # while inside a probe's mapping: [kind, its indent, its fields' indent (None: not seen)]
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        indent = len(body) - len(body.lstrip())
        if probe and body.strip() and indent <= probe[1]:
            probe = []  # a line at the probe's own indent or less ends its mapping
        m = _PROBE.match(body)
        if m:
            probe = [m.group("kind"), indent, None]
        elif probe and body.strip():
            probe[2] = indent if probe[2] is None else probe[2]
            f = _FIELD.match(body) if indent == probe[2] else None  # the probe's own fields, not httpGet's
            key = f"{probe[0]}.{f.group('field')}" if f else ""
            if f and key in settings:
                line = f"{f.group('indent')}{f.group('field')}: {settings[key]}" + ("\n" if line.endswith("\n") else "")
                used.add(key)
        out.append(line)
    return "".join(out), used


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
    flags, add, probes = parse(sys.argv[1:] if argv is None else argv)
    out, changed = render(sys.stdin.read(), flags, add)
    if flags and not changed:
        print(f"helm_postrender: none of {', '.join(flags)} is in the rendered manifests", file=sys.stderr)
        return 1
    out, used = set_probe_fields(out, probes)
    if set(probes) - used:
        print(f"helm_postrender: no probe in the rendered manifests sets {', '.join(sorted(set(probes) - used))}",
              file=sys.stderr)
        return 1
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
