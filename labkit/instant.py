"""Stage 6: instant updates through Vault event notifications (Vault Enterprise
1.16.3+), and what happens where Vault has none (OpenBao, Vault Community).

The stage's record, :data:`STAGE` (at the end), names its notebook, undo, check and exercises."""

from __future__ import annotations

import secrets as _secrets
import statistics
import time
from typing import Any

from . import k8s, static, vault, vso
from ._stage import Stage, exercise
from .backends.contract import Lab
from .display import Check, Done


def watcher_events(lab: Lab) -> list[tuple[str, str, str]]:
    """VSO's EventWatcherStarted / EventWatcherError events for the static secret."""
    n = lab.names
    return [e for e in vso.events(lab, "VaultStaticSecret", n.static_vss, n.static_ns) if e[1].startswith("EventWatcher")]


def wait_for_watcher(lab: Lab, timeout: float = 30) -> tuple[str, str, str]:
    def latest() -> tuple[str, str, str] | None:
        events = watcher_events(lab)
        return events[-1] if events else None

    return k8s.wait_for("VSO to report on its event watcher (EventWatcherStarted or EventWatcherError)", latest, timeout)


def measure_propagation(lab: Lab, samples: int = 3, timeout: float = 60) -> list[float]:
    """Write a new password to Vault and time how long the Kubernetes Secret takes to follow."""
    n = lab.names
    out = []
    for _ in range(samples):
        password = _secrets.token_urlsafe(12)
        t0 = time.monotonic()
        # `vault kv patch`: only the password changes, every other key stays
        vault.client(lab).secrets.kv.v2.patch(n.kv_path, {"password": password}, mount_point=n.kv_mount)
        def followed(pw: str = password) -> bool:
            return static.read_secret(lab).get("password") == pw

        k8s.wait_for("the Kubernetes Secret to follow the Vault update", followed, timeout, interval=0.05)
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
                "vault kv patch ${PREFIX}static/exampleapp/creds password=<new>\n"
                "kubectl get secret vso-static-creds-from-vault -n ${PREFIX}static-exampleapp -o jsonpath='{.data.password}'",
                {"seconds": times})


def check(lab: Lab, times: list[float], refresh_after_s: float) -> Check:
    supported, why = lab.events_supported()
    events = watcher_events(lab)
    reasons = {e[1] for e in events}
    vss = vso.get(lab, "VaultStaticSecret", lab.names.static_vss, lab.names.static_ns) or {}
    on = ((vss.get("spec") or {}).get("syncConfig") or {}).get("instantUpdates") is True
    rows = [("the VaultStaticSecret asks for instant updates", on,
             "run the cell that applies the VaultStaticSecret with syncConfig.instantUpdates: true")]
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


def refresh_after(lab: Lab) -> str:
    """The VaultStaticSecret's ``spec.refreshAfter`` as it is now."""
    n = lab.names
    return str(((vso.get(lab, "VaultStaticSecret", n.static_vss, n.static_ns) or {}).get("spec") or {}).get("refreshAfter", ""))


def kv_version(lab: Lab) -> int:
    """The KV v2 secret's current version (``vault kv metadata get``)."""
    n = lab.names
    meta = vault.client(lab).secrets.kv.v2.read_secret_metadata(n.kv_path, mount_point=n.kv_mount)["data"]
    return int(meta.get("current_version") or 0)


def _synced_soon(lab: Lab, timeout: float = 20) -> bool:
    """The VaultStaticSecret reports its current spec synced within ``timeout`` (VSO reconciles a change at once)."""
    n = lab.names
    deadline = time.monotonic() + timeout
    while not vso.is_synced(vso.get(lab, "VaultStaticSecret", n.static_vss, n.static_ns)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


@exercise(
    "refresh-2s", "Make VSO poll Vault more often: set the VaultStaticSecret's refreshAfter to 2s.",
    ["Only spec.refreshAfter changes: `kubectl patch ... --type merge -p '{\"spec\":{...}}'`, or re-apply the manifest.",
     "kubectl patch vaultstaticsecret vault-static-secret -n ${PREFIX}static-exampleapp --type merge "
     "-p '{\"spec\":{\"refreshAfter\":\"2s\"}}'"])
def _refresh_2s(lab: Lab, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
    n = lab.names
    obj = vso.get(lab, "VaultStaticSecret", n.static_vss, n.static_ns) or {}
    return [("refreshAfter is 2s", (obj.get("spec") or {}).get("refreshAfter") == "2s",
             f"kubectl patch vaultstaticsecret {n.static_vss} -n {n.static_ns} --type merge "
             "-p '{\"spec\":{\"refreshAfter\":\"2s\"}}'"),
            ("the VaultStaticSecret is still synced", _synced_soon(lab),
             f"kubectl describe vaultstaticsecret {n.static_vss} -n {n.static_ns}")]


@exercise(
    "patch-password",
    "Give the KV secret a new password with vault kv patch (keeping username) and wait for the Kubernetes Secret.",
    ["`vault kv patch` changes only the keys you name; `vault kv put` would drop username.",
     "vault kv patch ${PREFIX}static/exampleapp/creds password=\"$(openssl rand -hex 12)\"",
     "Wait up to refreshAfter, then compare: `vault kv get -field=password ...` against the Secret's "
     "`.data.password` (base64 -d); print only whether they match."])
def _patch_password(lab: Lab, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
    n = lab.names
    before = ns.get("version_before")
    data = vault.kv_get(lab, n.kv_mount, n.kv_path).get("data") or {}
    synced = False
    deadline = time.monotonic() + 30  # at most one poll (refreshAfter) behind
    while data.get("password") and not synced and time.monotonic() < deadline:
        synced = static.read_secret(lab).get("password") == data["password"]
        if not synced:
            time.sleep(0.5)
    return [("the recording cell ran (version_before)", isinstance(before, int),
             "run the cell with `version_before = instant.kv_version(lab)` first"),
            ("Vault has a newer version of the secret", isinstance(before, int) and kv_version(lab) > before,
             f"vault kv patch {n.kv_mount}/{n.kv_path} password=..."),
            ("username is still there", "username" in data, "`vault kv put` replaces every key; use `vault kv patch`"),
            ("the Kubernetes Secret has Vault's password", bool(synced),
             "wait up to refreshAfter; check `kubectl describe vaultstaticsecret` for errors")]


def undo(lab: Lab) -> Done:
    """Back to a VaultStaticSecret without instant updates, and the plain read policy (stage 2's own)."""
    n = lab.names
    if vso.get(lab, "VaultStaticSecret", n.static_vss, n.static_ns):
        vso.apply(lab, static.static_secret(lab))
    if vault.read_policy(lab, n.kv_policy):
        static.write_policy(lab)
    return Done("instant updates turned off", "")


STAGE = Stage(6, "06-instant-updates", "Instant updates through Vault's event notifications", undo=undo,
              check=check, exercises=(_refresh_2s, _patch_password))
