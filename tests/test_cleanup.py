"""Clean-up: VSO revokes its own lease when the VaultDynamicSecret is deleted, and the sweep reports leftovers.

VSO revokes with the VaultAuth's token (``PUT sys/leases/revoke``), so the policy must allow it; before that line
was in the policy, VSO's revoke was refused (403, a ``SecretLeaseRevoke`` warning) and a root-token sweep hid it.
"""

from __future__ import annotations

import time

import pytest
from _params import ci_params

from labkit import _teardown, cleanup, dynamic, vault, vso
from labkit.stages import prepare_stage

pytestmark = pytest.mark.lab
PARAMS = ci_params()


def test_the_dynamic_policy_allows_vso_to_revoke() -> None:
    policy = dynamic.DB_POLICY.format(mount="db", role="r")
    assert 'path "sys/leases/revoke"' in policy and '"update"' in policy.split('path "sys/leases/revoke"')[1]


def test_vso_revokes_its_own_lease_when_the_dynamic_secret_is_deleted(local_lab) -> None:
    lab = local_lab
    n = lab.names
    prepare_stage(lab, 4, PARAMS)
    vso.wait_synced(lab, "VaultDynamicSecret", n.dynamic_vds, n.dynamic_ns)
    lease = dynamic.lease(lab)["lease_id"]
    c = vault.client(lab)
    prefix = f"{n.db_mount}/creds/{n.db_role}/"
    assert lease.startswith(prefix) and lease in _teardown.leases(c, prefix)
    vso.delete(lab, "VaultDynamicSecret", n.dynamic_vds, n.dynamic_ns)
    deadline = time.monotonic() + 20
    while lease in _teardown.leases(c, prefix) and time.monotonic() < deadline:
        time.sleep(0.3)
    warnings = [(r, m) for k, r, m in vso.events(lab, "VaultDynamicSecret", n.dynamic_vds, n.dynamic_ns)
                if k == "Warning" and r == "SecretLeaseRevoke"]
    assert not warnings, warnings
    assert lease not in _teardown.leases(c, prefix), "VSO did not revoke its lease (the admin token was not used)"
    done = dynamic.undo(lab)
    assert "no VaultDynamicSecret to delete" in str(done) and "disabled" in str(done), done


def test_undo_dynamic_says_vso_revoked_and_counts_what_the_sweep_found(local_lab) -> None:
    lab = local_lab
    n = lab.names
    prepare_stage(lab, 4, PARAMS)
    vso.wait_synced(lab, "VaultDynamicSecret", n.dynamic_vds, n.dynamic_ns)
    c = vault.client(lab)
    prefix = f"{n.db_mount}/creds/{n.db_role}/"
    extra = c.secrets.database.generate_credentials(n.db_role, mount_point=n.db_mount)["lease_id"]
    held = dynamic.lease(lab)["lease_id"]
    others = [x for x in _teardown.leases(c, prefix) if x != held]
    assert extra in others
    done = str(dynamic.undo(lab))
    assert "VSO revoked its lease" in done, done
    assert f"the sweep revoked {len(others)} older lease" in done, done


def test_notebook_07_steps_leave_only_what_its_exercises_remove_and_the_sweep_names_it(local_lab) -> None:
    from labkit import _cells, k8s

    lab = local_lab
    n = lab.names
    prepare_stage(lab, 7, PARAMS)
    _cells.run_steps(lab, 7, PARAMS)  # the notebook's own cells: VDS, namespaces, helm uninstall, the Vault side
    assert all(k8s.namespace_gone(lab.kube, ns) for ns in (n.dynamic_ns, n.static_ns, n.vault_ns))
    assert not lab.operator_installed()
    swept = str(cleanup.sweep(lab))
    # exactly the two things notebook 07's exercises ask the learner to remove
    assert f"secrets engine {n.transit_mount}/" in swept and f"policy {n.transit_policy}" in swept, swept
    assert f"ClusterRoleBinding {n.reviewer_binding}" in swept, swept
    for done_by_the_steps in ("namespace", "Helm release", "cache Secret", f"secrets engine {n.db_mount}/",
                              f"secrets engine {n.kv_mount}/", "auth method", f"policy {n.kv_policy}",
                              f"policy {n.db_policy}", "lease", "PostgreSQL role"):
        assert done_by_the_steps not in swept, swept
    assert str(cleanup.sweep(lab)).startswith("✔ the sweep found nothing left over")
    assert cleanup.check(lab).passed
