"""Stage 6: instant updates through Vault event notifications (Vault Enterprise
1.16.3+), and what happens where Vault has none (OpenBao, Vault Community)."""

from __future__ import annotations

import secrets as _secrets
import statistics
import time
from typing import Any

from . import k8s, static, vault, vso
from .display import Check, Done

EVENTS_POLICY = """path "{mount}/data/{path}" {{
  capabilities = ["read", "list", "subscribe"]
  subscribe_event_types = ["kv*"]
}}
path "sys/events/subscribe/kv*" {{
  capabilities = ["read"]
}}
"""


NO_EVENTS_POLICY = """path "{mount}/data/{path}" {{
  capabilities = ["read", "list"]
}}
"""


def events_policy(lab: Any, with_events: bool = True) -> str:
    """The policy instant updates need; ``with_events=False`` drops what only Vault Enterprise parses."""
    n = lab.names
    return (EVENTS_POLICY if with_events else NO_EVENTS_POLICY).format(mount=n.kv_mount, path=n.kv_path)


def update_policy(lab: Any) -> Done:
    """Add ``subscribe`` and ``list`` on the secret, and read on the event stream, to exampleapp-kv-read.

    Vault without event notifications (OpenBao, Vault Community before 1.16) rejects the
    ``subscribe`` capability and ``subscribe_event_types``; there the lab writes the policy
    without them and says so.
    """
    supported, why = lab.events_supported()
    done = vault.write_policy(lab, lab.names.kv_policy, events_policy(lab, supported))
    if not supported:
        done.what += " without the subscribe lines: " + why
        done.command = (f"vault policy write {lab.names.kv_policy} - <<EOF\n{events_policy(lab).strip()}\nEOF"
                        "\n# (on Vault Enterprise 1.16.3+; this Vault rejects subscribe, so the lab wrote read+list only)")
    return done


def enable_instant_updates(lab: Any, refresh_after: str = "10s") -> Done:
    n = lab.names
    done = vso.apply(lab, static.static_secret(lab, refresh_after=refresh_after, instant_updates=True))
    done.what = f"VaultStaticSecret {n.static_ns}/{n.static_vss} now has syncConfig.instantUpdates=true"
    done.command = (f"kubectl patch vaultstaticsecret {n.static_vss} -n {n.static_ns} --type merge "
                    "-p '{\"spec\":{\"syncConfig\":{\"instantUpdates\":true}}}'")
    return done


def watcher_events(lab: Any) -> list[tuple[str, str, str]]:
    """VSO's EventWatcherStarted / EventWatcherError events for the static secret."""
    n = lab.names
    return [e for e in vso.events(lab, "VaultStaticSecret", n.static_vss, n.static_ns) if e[1].startswith("EventWatcher")]


def wait_for_watcher(lab: Any, timeout: float = 30) -> tuple[str, str, str]:
    return k8s.wait_for("VSO to report on its event watcher (EventWatcherStarted or EventWatcherError)",
                        lambda: (watcher_events(lab) or [None])[-1], timeout)


def measure_propagation(lab: Any, samples: int = 3, timeout: float = 60) -> list[float]:
    """Write a new password to Vault and time how long the Kubernetes Secret takes to follow."""
    n = lab.names
    out = []
    for _ in range(samples):
        password = _secrets.token_urlsafe(12)
        t0 = time.monotonic()
        vault.kv_put(lab, n.kv_mount, n.kv_path, {"username": "static-user", "password": password})
        k8s.wait_for("the Kubernetes Secret to follow the Vault update",
                     lambda pw=password: static.read_secret(lab).get("password") == pw, timeout, interval=0.05)
        out.append(round(time.monotonic() - t0, 2))
    return out


def describe(times: list[float], refresh_after_s: float | None = None) -> Done:
    """The measured propagation times; against ``refreshAfter`` when given.

    Without events VSO re-reads a VaultStaticSecret every ``refreshAfter`` minus 10–20 % jitter. Each write here
    follows the previous sync at once, so it waits about one whole poll: 0.8–0.9 × ``refreshAfter``.
    """
    what = f"{len(times)} updates: median {statistics.median(times):.2f}s, worst {max(times):.2f}s"
    if refresh_after_s:
        later = times[1:] or times
        what += (f"; after the first, median {statistics.median(later) / refresh_after_s:.2f} × refreshAfter "
                 f"({refresh_after_s:g}s; polling predicts 0.8–0.9×)")
    return Done(what,
                "vault kv put static/exampleapp/creds username=static-user password=<new>\n"
                "kubectl get secret vso-static-creds-from-vault -n static-exampleapp -o jsonpath='{.data.password}' | base64 -d",
                {"seconds": times})


def check(lab: Any, times: list[float], refresh_after_s: float) -> Check:
    supported, why = lab.events_supported()
    events = watcher_events(lab)
    reasons = {e[1] for e in events}
    vss = vso.get(lab, "VaultStaticSecret", lab.names.static_vss, lab.names.static_ns) or {}
    on = ((vss.get("spec") or {}).get("syncConfig") or {}).get("instantUpdates") is True
    rows = [("the VaultStaticSecret asks for instant updates", on, "run enable_instant_updates(lab)")]
    if supported:
        rows += [
            ("VSO started its event watcher", "EventWatcherStarted" in reasons,
             "check the policy grants subscribe on the secret and read on sys/events/subscribe/kv*"),
            ("updates arrive in under 2 s", bool(times) and max(times) < 2.0,
             "without events VSO falls back to refreshAfter polling"),
        ]
    else:
        rows += [
            (f"VSO reported EventWatcherError ({why.split(';')[0]})", "EventWatcherError" in reasons,
             "VSO tries the event stream first; give it a few seconds after enabling instant updates"),
            (f"polling still delivers updates within refreshAfter ({refresh_after_s:.0f}s) + 1 s",
             bool(times) and max(times) <= refresh_after_s + 1.0, "check refreshAfter on the VaultStaticSecret"),
        ]
    return Check("instant updates" + ("" if supported else " (fallback: polling)"), rows)
