"""Every step of the tutorial is a real command, policy, manifest or Helm value in a notebook cell's source.

The table is the course map (step → notebook → the cell that does it); the test finds each step in a code cell of
that notebook (exercise cells do not count: a learner may leave them empty) and that cell is a `step` cell where the
step changes the lab, so `labkit stage N` runs the same text.
"""

from __future__ import annotations

import functools
import re

import pytest

from labkit import _cells

#: (tutorial step, notebook, pattern in one cell's source, the cell changes the lab → tagged `step`; "exercise": the
#: learner does the step in an exercise cell)
STEPS: list[tuple[str, int, str, bool | str]] = [
    ("add the HashiCorp Helm repository", 1, r"helm repo add hashicorp", True),
    ("install VSO with Helm in its own namespace", 1,
     r"helm upgrade --install vault-secrets-operator hashicorp/vault-secrets-operator[\s\S]*--create-namespace", True),
    ("the CRDs the chart installs", 1, r"kubectl get crd", False),
    ("create the vault namespace", 1, r"kind: Namespace[\s\S]*name: \$\{PREFIX\}vault\b", True),
    ("create the VaultConnection", 1, r"kind: VaultConnection[\s\S]*address:", True),
    ("the token reviewer's service account", 1, r"kind: ServiceAccount[\s\S]*name: vault-to-k8s-sa", True),
    ("its long-lived token Secret", 1, r"kubernetes.io/service-account-token[\s\S]*vault-to-k8s-sa|"
                                        r"vault-to-k8s-sa[\s\S]*kubernetes.io/service-account-token", True),
    ("the auth-delegator ClusterRoleBinding", 1, r"kind: ClusterRoleBinding[\s\S]*system:auth-delegator", True),
    ("enable Kubernetes auth", 1, r"vault auth enable[^\n]*kubernetes", True),
    ("configure it with the reviewer's JWT and the cluster CA", 1,
     r"vault write auth/\$\{PREFIX\}kubernetes/config[\s\S]*token_reviewer_jwt[\s\S]*kubernetes_ca_cert", True),
    ("enable KV v2 at static", 2, r"vault secrets enable[^\n]*\$\{PREFIX\}static[^\n]*kv-v2", True),
    ("write exampleapp/creds", 2, r"vault kv put[^\n]*\$\{PREFIX\}static/exampleapp/creds", True),
    ("the KV read policy", 2, r"vault policy write \$\{PREFIX\}exampleapp-kv-read[\s\S]*static/data/exampleapp/creds", True),
    ("the static auth role", 2, r"vault write auth/\$\{PREFIX\}kubernetes/role/vault-role-static-exampleapp", True),
    ("the app namespace and VSO's service account", 2, r"kind: ServiceAccount[\s\S]*name: vso-static-exampleapp-sa", True),
    ("the static VaultAuth", 2, r"kind: VaultAuth\b[\s\S]*vault-role-static-exampleapp", True),
    ("the VaultStaticSecret", 2, r"kind: VaultStaticSecret[\s\S]*refreshAfter", True),
    ("read the synced Secret", 2, r"kubectl get secret vso-static-creds-from-vault", False),
    ("deploy the app from the Secret", 2, r"kind: Deployment[\s\S]*secretKeyRef[\s\S]*vso-static-creds-from-vault", True),
    ("delete the app", 2, r"kubectl delete deployment", True),
    ("enable the database engine", 3, r"vault secrets enable[^\n]*\$\{PREFIX\}database", True),
    ("configure the PostgreSQL connection", 3,
     r"vault write \$\{PREFIX\}database/config/postgresql[\s\S]*postgresql-database-plugin", True),
    ("the dynamic database role", 3,
     r"vault write \$\{PREFIX\}database/roles/vault-role-dynamic-exampleapp[\s\S]*creation_statements", True),
    ("generate a credential by hand", 3, r"vault read[^\n]*\$\{PREFIX\}database/creds/vault-role-dynamic-exampleapp", False),
    ("the database read policy", 3, r"vault policy write \$\{PREFIX\}exampleapp-database-read", True),
    ("the dynamic auth role", 3, r"vault write auth/\$\{PREFIX\}kubernetes/role/vault-role-dynamic-exampleapp", True),
    ("the dynamic namespace and service account", 3, r"kind: ServiceAccount[\s\S]*name: vso-dynamic-exampleapp-sa", True),
    ("the dynamic VaultAuth", 3, r"kind: VaultAuth\b[\s\S]*vault-role-dynamic-exampleapp", True),
    ("the VaultDynamicSecret with rolloutRestartTargets", 3, r"kind: VaultDynamicSecret[\s\S]*rolloutRestartTargets", True),
    ("deploy the app on dynamic credentials", 3,
     r"kind: Deployment[\s\S]*secretKeyRef[\s\S]*vso-dynamic-creds-from-vault", True),
    ("enable transit", 5, r"vault secrets enable[^\n]*\$\{PREFIX\}demo-transit[^\n]*transit|"
                          r"vault secrets enable[^\n]*transit[^\n]*\$\{PREFIX\}demo-transit", True),
    ("the cache encryption key", 5, r"vault write[^\n]*\$\{PREFIX\}demo-transit/keys/vso-client-cache", True),
    ("the transit policy", 5, r"vault policy write \$\{PREFIX\}vso-transit-policy", True),
    ("the operator's auth role", 5, r"vault write auth/\$\{PREFIX\}kubernetes/role/\$\{PREFIX\}auth-role-operator", True),
    ("helm upgrade with the client cache values", 5,
     r"helm upgrade[\s\S]*persistenceModel: direct-encrypted", True),
    ("the encrypted cache Secrets", 5, r"kubectl get secrets? [^\n]*-n vault-secrets-operator", False),
    ("the events policy for instant updates", 6, r"vault policy write \$\{PREFIX\}exampleapp-kv-read[\s\S]*subscribe", True),
    ("instantUpdates on the VaultStaticSecret", 6, r"instantUpdates: true", True),
    # the learner's own exercise: the scaffold has blanks, so the typed solution (notebooks/solutions/) is checked
    ("update the secret in Vault", 6, r"vault kv (put|patch)[^\n]*\$\{PREFIX\}static/exampleapp/creds", "exercise"),
    ("remove the app namespaces", 7, r"kubectl delete (namespace|ns)", False),
    ("uninstall VSO", 7, r"helm uninstall vault-secrets-operator", False),
]


@functools.cache
def _cells_of(n: int) -> list:
    nb = _cells.read(_cells.notebook_path(n))
    return [c for c in nb.cells if c.cell_type == "code" and not str(c.get("id", "")).startswith("exercise-")]


@pytest.mark.parametrize(("step", "n", "pattern", "is_step"), STEPS, ids=[s[0] for s in STEPS])
def test_the_tutorial_step_is_a_real_cell(step: str, n: int, pattern: str, is_step: bool | str) -> None:
    if is_step == "exercise":
        typed = _cells.solutions(_cells.notebook_path(n))
        assert any(re.search(pattern, src) for src in typed.values()), f"notebook {n:02d}: no exercise solution for {step}"
        return
    hits = [c for c in _cells_of(n) if re.search(pattern, c.source)]
    assert hits, f"notebook {n:02d} has no code cell for: {step} (/{pattern}/)"
    if is_step:
        assert any("step" in _cells.tags(c) for c in hits), f"notebook {n:02d}: the cell for {step!r} is not tagged step"


def test_every_notebook_from_01_has_two_exercises_with_key_points() -> None:
    for n in range(1, 8):
        nb = _cells.read(_cells.notebook_path(n))
        assert len(_cells.exercise_cells(nb)) >= 2, f"notebook {n:02d} has fewer than two exercises"
        assert any(c.cell_type == "markdown" and re.search(r"^#+ Key points", c.source, re.M) for c in nb.cells), \
            f"notebook {n:02d} has no Key points section"
