"""Vault Secrets Operator resources: build, apply, read status and events.

Group ``secrets.hashicorp.com/v1beta1``. Builders return plain dicts, so a
notebook can print the YAML a learner would ``kubectl apply``.
"""

from __future__ import annotations

from typing import Any

import yaml

from . import _vsoerrors, k8s
from .backends.contract import Lab
from .display import Done

GROUP = "secrets.hashicorp.com"
API_VERSION = f"{GROUP}/v1beta1"


def _obj(kind: str, name: str, namespace: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": meta, "spec": spec}


def vault_connection(name: str, namespace: str, address: str, skip_tls_verify: bool = False) -> dict:
    return _obj("VaultConnection", name, namespace, {"address": address, "skipTLSVerify": skip_tls_verify})


def vault_auth(name: str, namespace: str, *, role: str, service_account: str, connection_ref: str,
               mount: str = "kubernetes", audiences: list[str] | None = None,
               storage_encryption: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> dict:
    spec: dict[str, Any] = {
        "vaultConnectionRef": connection_ref, "method": "kubernetes", "mount": mount,
        "kubernetes": {"role": role, "serviceAccount": service_account, "tokenExpirationSeconds": 600},
    }
    if audiences:
        spec["kubernetes"]["audiences"] = audiences
    if storage_encryption:
        spec["storageEncryption"] = storage_encryption
    return _obj("VaultAuth", name, namespace, spec, labels)


def vault_static_secret(name: str, namespace: str, *, mount: str, path: str, vault_auth_ref: str, destination: str,
                        refresh_after: str = "30s", instant_updates: bool = False,
                        rollout_restart_targets: list[dict[str, str]] | None = None) -> dict:
    spec: dict[str, Any] = {
        "type": "kv-v2", "mount": mount, "path": path, "vaultAuthRef": vault_auth_ref, "refreshAfter": refresh_after,
        "destination": {"name": destination, "create": True},
    }
    if instant_updates:
        spec["syncConfig"] = {"instantUpdates": True}
    if rollout_restart_targets:
        spec["rolloutRestartTargets"] = rollout_restart_targets
    return _obj("VaultStaticSecret", name, namespace, spec)


def vault_dynamic_secret(name: str, namespace: str, *, mount: str, path: str, vault_auth_ref: str, destination: str,
                         renewal_percent: int = 67, revoke: bool = True,
                         rollout_restart_targets: list[dict[str, str]] | None = None,
                         destination_labels: dict[str, str] | None = None) -> dict:
    spec: dict[str, Any] = {
        "mount": mount, "path": path, "vaultAuthRef": vault_auth_ref, "renewalPercent": renewal_percent,
        # transformation: {} because VSO's first update (its finalizer) writes it: without it the spec changes,
        # the generation goes to 2 and VSO fetches a second lease at once (sync reason ResourceUpdated)
        "revoke": revoke, "destination": {"name": destination, "create": True, "transformation": {}},
    }
    if destination_labels:
        spec["destination"]["labels"] = destination_labels
    if rollout_restart_targets:
        spec["rolloutRestartTargets"] = rollout_restart_targets
    return _obj("VaultDynamicSecret", name, namespace, spec)


def to_yaml(obj: dict) -> str:
    return yaml.safe_dump(obj, sort_keys=False)


def apply(lab: Lab, obj: dict) -> Done:
    """Server-side apply a VSO resource (``kubectl apply -f``)."""
    k8s.apply(lab.kube, obj)
    m = obj["metadata"]
    return Done(f"applied {obj['kind']} {m['namespace']}/{m['name']}", f"kubectl apply -f - <<EOF\n{to_yaml(obj).strip()}\nEOF")


def get(lab: Lab, kind: str, name: str, namespace: str) -> dict | None:
    return k8s.get(lab.kube, API_VERSION, kind, name, namespace)


def delete(lab: Lab, kind: str, name: str, namespace: str) -> bool:
    return k8s.delete(lab.kube, API_VERSION, kind, name, namespace)


def conditions(obj: dict | None) -> dict[str, dict[str, Any]]:
    """Conditions by type, e.g. ``{"Ready": {"status": "True", "reason": ...}}``."""
    if not obj:
        return {}
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def is_synced(obj: dict | None) -> bool:
    """VSO's latest reconcile of the *current spec* succeeded.

    Right after an apply, the conditions still describe the previous generation until VSO
    reconciles the new one; a condition whose ``observedGeneration`` is older does not count.

    SecretSynced alone is not enough: after a transient error (Vault sealed, a refused read) VSO sets
    SecretSynced=False, and when the next read succeeds with unchanged data it skips the write and adds no new
    SecretSynced condition (``vaultstaticsecret_controller.go``: ``doSync = !macsEqual``), so the stale False stays.
    That successful reconcile still sets Healthy and Ready to True, later than the stale failure.
    """
    c = conditions(obj)
    if not c or obj is None or (obj.get("metadata") or {}).get("deletionTimestamp"):
        return False  # nothing reported yet, or being deleted
    generation = (obj.get("metadata") or {}).get("generation")

    def true_now(t: str) -> bool:
        cond = c.get(t) or {}
        seen = cond.get("observedGeneration")
        return cond.get("status") == "True" and (generation is None or seen is None or seen == generation)

    if not true_now("Ready"):
        return False
    if true_now("SecretSynced"):
        return True
    synced, healthy = c.get("SecretSynced") or {}, c.get("Healthy") or {}
    return (bool(synced) and true_now("Healthy")
            and str(healthy.get("lastTransitionTime", "")) >= str(synced.get("lastTransitionTime", "~")))


def events(lab: Lab, kind: str, name: str, namespace: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the events about a VSO resource, oldest first."""
    return [(e.type, e.reason, e.message) for e in k8s.events_for(lab.kube, namespace, name, kind)]


def hint_from_events(lab: Lab, kind: str, name: str, namespace: str) -> str:
    """Turn VSO's latest warning into a hint a learner can act on."""
    obj = get(lab, kind, name, namespace)
    if obj is None:  # events outlive their object: a deleted resource's old warnings are not the cause
        return f"the {kind} {namespace}/{name} does not exist: apply it first"
    synced = conditions(obj).get("SecretSynced", {})
    evs = events(lab, kind, name, namespace)
    if synced.get("status") == "False" and synced.get("message"):
        # The resource's own condition is current; events may arrive late or out of order.
        evs = [*evs, ("Warning", str(synced.get("reason") or "SecretSynced"), str(synced["message"]))]
    # VSO records a refused VaultAuth as a Warning with the reason Accepted too (vaultauth_controller.go): only a
    # Normal event is a success
    last_ok = max((i for i, e in enumerate(evs) if e[0] == "Normal" and e[1] in ("SecretSynced", "SecretRotated",
                                                                                    "Accepted")), default=-1)
    # StatusUpdateError is VSO losing an optimistic-concurrency race on its own status: it retries, and it says
    # nothing about the learner's setup, so it never hides the warning that does.
    warns = [e for e in evs[last_ok + 1:] if e[0] == "Warning" and e[1] != "StatusUpdateError"]
    if not warns:
        return f"no warning events yet; check `kubectl describe {kind.lower()} {name} -n {namespace}`"
    _, reason, raw = warns[-1]
    msg = " ".join(raw.split())  # one paragraph: VSO's messages carry Vault's multi-line errors
    cause = _vsoerrors.classify(reason, raw) or "see the message"
    return f"VSO reported {reason}: {msg[:300]} — likely cause: {cause}"


def wait_synced(lab: Lab, kind: str, name: str, namespace: str, timeout: float = 60) -> dict:
    """Wait until the resource reports SecretSynced and Ready."""

    def probe() -> dict | None:
        obj = get(lab, kind, name, namespace)
        return obj if is_synced(obj) else None

    return k8s.wait_for(f"{kind} {namespace}/{name} to be synced", probe, timeout,
                        hint=lambda: hint_from_events(lab, kind, name, namespace))
