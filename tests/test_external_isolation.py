"""Two attendees on one cluster, one Vault, one database and one operator: the external backend, run for real
over a local lab (tests/_external_on_local.py), with the prefixes ``alice-`` and ``bob-``.

What one attendee does, a stage or a clean-up, never touches what the other one has.
"""

from __future__ import annotations

from typing import Any

import pytest
from hvac import exceptions as hvexc

from labkit import connect, k8s, stages, static, vault, vso
from labkit.names import Names

pytestmark = pytest.mark.lab

#: every name that must differ between attendees (the rest live inside these namespaces and mounts)
PREFIXED = ("vault_ns", "reviewer_binding", "k8s_auth_mount", "kv_mount", "kv_policy", "static_ns", "db_mount",
            "db_policy", "dynamic_ns", "transit_mount", "transit_policy", "transit_role", "vso_db_users")


def footprint(lab: Any) -> dict[str, Any]:
    """What an attendee has after the connect and static stages: namespaces, Vault objects, the synced secret."""
    n, c = lab.names, vault.client(lab)
    mounts, auths = c.sys.list_mounted_secrets_engines()["data"], c.sys.list_auth_methods()["data"]
    vss = vso.get(lab, "VaultStaticSecret", n.static_vss, n.static_ns)
    return {
        "namespaces": {ns: not k8s.namespace_gone(lab.kube, ns) for ns in (n.vault_ns, n.static_ns)},
        "kv mount": f"{n.kv_mount}/" in mounts, "auth mount": f"{n.k8s_auth_mount}/" in auths,
        "policy": bool(vault.read_policy(lab, n.kv_policy)),
        "role": n.static_role in roles(c, n.k8s_auth_mount),
        "synced": vso.is_synced(vss),
        "secret": k8s.secret_data(lab.kube, n.static_secret, n.static_ns),
    }


def roles(c: Any, mount: str) -> list[str]:
    try:
        return list(((c.list(f"auth/{mount}/role") or {}).get("data") or {}).get("keys") or [])
    except hvexc.InvalidPath:
        return []


def present(fp: dict[str, Any]) -> bool:
    return all(fp["namespaces"].values()) and all(fp[k] for k in ("kv mount", "auth mount", "policy", "role", "synced"))


def gone(fp: dict[str, Any]) -> bool:
    return not any(fp["namespaces"].values()) and not any(fp[k] for k in ("kv mount", "auth mount", "policy", "role"))


def test_two_attendees_get_distinct_names_state_and_environments(external_labs: dict[str, Any]) -> None:
    alice, bob = external_labs["alice-"], external_labs["bob-"]
    for attr in PREFIXED:
        a, b, plain = getattr(alice.names, attr), getattr(bob.names, attr), getattr(Names(), attr)
        assert len({a, b, plain}) == 3, f"{attr}: {a!r}, {b!r} and the tutorial's {plain!r} must all differ"
    ea, eb = alice.env(), bob.env()
    assert (ea["PREFIX"], eb["PREFIX"]) == ("alice-", "bob-")
    for key in ("VSOLAB_STATE", "HELM_CONFIG_HOME", "HELM_CACHE_HOME", "HELM_DATA_HOME", "LAB_HELM_VALUES",
                "LAB_HELM_POSTRENDERER", "PATH"):
        assert ea[key] != eb[key], key
    assert ea["VAULT_ADDR"] == eb["VAULT_ADDR"] and ea["KUBECONFIG"] == eb["KUBECONFIG"], "one Vault, one cluster"
    assert ea["VSOLAB_SHARED_OPERATOR"] == eb["VSOLAB_SHARED_OPERATOR"] == "1"


def test_one_attendees_stages_and_clean_up_leave_the_other_intact(external_labs: dict[str, Any]) -> None:
    alice, bob = external_labs["alice-"], external_labs["bob-"]
    stages.prepare_stage(bob, 3)  # bob: connect and static secrets
    bob_before = footprint(bob)
    assert present(bob_before), bob_before
    assert gone(footprint(alice)), "alice has not started yet"

    stages.prepare_stage(alice, 3)
    assert present(footprint(alice))
    assert footprint(bob) == bob_before, "alice's stages changed bob's objects"

    static.undo(alice)
    connect.undo_connection(alice)
    assert gone(footprint(alice)), footprint(alice)
    assert footprint(bob) == bob_before, "alice's clean-up changed bob's objects"

    stages.prepare_stage(alice, 3)
    done = alice.down(purge=True)
    n = alice.names
    assert {f"namespace {n.vault_ns}", f"namespace {n.static_ns}", f"vault mount {n.kv_mount}/",
            f"vault auth {n.k8s_auth_mount}/", f"vault policy {n.kv_policy}"} <= set(done), done
    assert gone(footprint(alice)), footprint(alice)
    assert not any(bob.names.prefix in item for item in done), done
    assert footprint(bob) == bob_before, "alice's `down --purge` changed bob's objects"
    assert bob.healthy() and alice.operator().ready, "the team's operator is untouched"
    alice.up(progress=lambda m: None)
