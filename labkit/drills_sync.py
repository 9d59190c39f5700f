"""Stage 13 (notebook 13, beyond the tutorial): Troubleshooting, part 2: syncs, restarts and rotations.

Four drills (:mod:`labkit.drills`), each a diagnosis question and a fix checker that reads real state:

* ``sealed`` — Vault is sealed; after the unseal, VSO's VaultStaticSecret stays at "Vault is sealed" until its spec
  changes (VSO issue #840, measured on this lab);
* ``restart-every-refresh`` — a template that renders differently on every sync (sprig's ``htpasswd``, a random
  bcrypt salt) changes the Secret's HMAC at every ``refreshAfter``, so VSO restarts the app each time (#582);
* ``static-rotation-no-restart`` — a database static role rotates the password; VSO writes it to the Secret, but the
  app, which read it at start, keeps the old one: the VaultDynamicSecret has no rolloutRestartTargets (#466, #1002);
* ``operator-down`` — VSO scaled to zero for longer than the lease's TTL: the credentials expire, the app's login
  fails; VSO, back, logs in anew and syncs new credentials (#734, #959).

The stage's record, :data:`STAGE` (at the end), names its notebook, undo, check, exercises and diagnoses.
"""

from __future__ import annotations

import os
import time
from typing import Any

import hvac
from hvac import exceptions as hvexc
from kubernetes import client as kclient
from kubernetes.client.exceptions import ApiException

from . import app, dynamic, k8s, pg, static, vault, vso
from ._duration import duration_seconds
from ._stage import Diagnosis, Stage, exercise, own_lab
from ._teardown import vault_quiet
from .backends.contract import Lab
from .display import Check

RESTARTED_AT = "vso.secrets.hashicorp.com/restartedAt"  # VSO's pod-template annotation (helpers/rollout_restart.go)
OPERATOR_DEPLOYMENT = "vault-secrets-operator-controller-manager"




def _skipped(lab: Lab) -> list[tuple[str, bool, str]] | None:
    return None if own_lab(lab) else [("skipped: this drill needs a lab of your own (it would stop shared things)",
                                       True, "")]


def _unauthenticated(lab: Lab) -> hvac.Client:
    """A client without a token: ``sys/seal-status`` and ``sys/unseal`` answer while sealed (vault.client refuses)."""
    return hvac.Client(url=lab.vault_addr, timeout=10)


def sealed(lab: Lab) -> bool:
    return bool(_unauthenticated(lab).sys.read_seal_status()["sealed"])


def _seconds(ns: dict[str, Any], key: str, default: str) -> float:
    return duration_seconds(str(ns.get(key) or os.environ.get(key) or default))


# -- drill sealed (VSO #840) ------------------------------------------------------------------------------------------

SEALED = Diagnosis(
    "sealed",
    "A password changed in Vault an hour ago never reached the Secret vso-static-creds-from-vault; the "
    "VaultStaticSecret shows SYNCED False, and a teammate says Vault is up and answering again.",
    {"a": "The policy exampleapp-kv-read lost its read rule on static/data/exampleapp/creds.",
     "b": "Vault was sealed: it answered 503 to VSO's reads, and after the unseal VSO did not try again.",
     "c": "refreshAfter is too long: VSO has simply not reached its next sync yet.",
     "d": "VSO's token for static-auth expired, so every login fails."},
    "b",
    "the event VaultClientError carries Vault's answer `Code: 503 … Vault is sealed` (not 403, not a login path), "
    "and `vault status` said Sealed true",
    {"a": "a missing rule makes Vault answer 403 permission denied; the events show 503 Vault is sealed",
     "c": "a due refresh is no failure: SYNCED would stay True; the condition is False with a 503",
     "d": "a failed login shows an error on auth/kubernetes/login; the failing request is GET static/data/…"},
    own_lab_only=True,
)


@exercise("sealed",
          "Unseal Vault, then make VSO sync the VaultStaticSecret again so the Secret follows Vault.",
          ["`vault status` shows Sealed true. The local lab keeps the unseal key in $VSOLAB_STATE/secrets.json "
           "(vault_unseal_key): pass it to `vault operator unseal` through $(…) so it is never printed.",
           "After the unseal, VSO may not retry by itself (VSO issue #840). A change to the resource's spec makes it "
           "reconcile at once: patch spec.refreshAfter, e.g. to the value it had plus or minus a second.",
           "vault operator unseal \"$(python3 -c 'import json, os; print(json.load(open(os.environ[\"VSOLAB_STATE\"]"
           " + \"/secrets.json\"))[\"vault_unseal_key\"])')\" >/dev/null; then kubectl patch vaultstaticsecret "
           "vault-static-secret -n ${PREFIX}static-exampleapp --type merge -p '{\"spec\":{\"refreshAfter\":\"4s\"}}'"])
def _sealed(lab: Lab, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
    skip = _skipped(lab)
    if skip:
        return skip
    n = lab.names
    if sealed(lab):
        return [("Vault is unsealed", False, "`vault status` shows Sealed true: unseal it with the lab's key"),
                ("the VaultStaticSecret synced again", False, "unseal Vault first")]

    def synced() -> bool:
        return vso.is_synced(vso.get(lab, "VaultStaticSecret", n.static_vss, n.static_ns))

    ok = _poll(synced, 8)
    same = False
    if ok:
        held = static.read_secret(lab)
        same = bool(held) and held.get("password") == (vault.kv_get(lab, n.kv_mount, n.kv_path).get("data") or {}).get("password")
    return [("Vault is unsealed", True, ""),
            (f"the VaultStaticSecret {n.static_vss} synced again", ok,
             "VSO has not retried since the seal: change its spec (e.g. refreshAfter) so it reconciles now"),
            ("the Secret holds Vault's current password", same, "wait for the sync, then check again")]


# -- drill restart-every-refresh (VSO #582, #644, #1124) --------------------------------------------------------------

RESTART = Diagnosis(
    "restart-every-refresh",
    "The web Deployment in static-exampleapp restarts every few seconds, although nobody touches its secret in Vault; "
    "`kubectl get rs -l app=web` lists a new ReplicaSet at every refresh.",
    {"a": "Something writes static/web/admin again and again, so every read returns a new version.",
     "b": "rolloutRestartTargets makes VSO restart its targets at every refreshAfter, changed or not.",
     "c": "The template renders differently each time (htpasswd hashes with a random salt), so the Secret's data "
          "changes at every sync, and VSO restarts the targets of a changed Secret.",
     "d": "The pod crashes and Kubernetes restarts it."},
    "c",
    "the Secret's data and status.secretMAC change at every sync while `vault kv metadata get` shows the same "
    "version; VSO restarts targets only when the MAC changes (vaultstaticsecret_controller.go)",
    {"a": "`vault kv metadata get …/web/admin` keeps the same current_version: nobody writes the secret",
     "b": "VSO restarts only when the HMAC of the new data differs from status.secretMAC "
          "(vaultstaticsecret_controller.go); the MAC printed above changes at every sync, which a no-op sync would not do",
     "d": "the pods are replaced by new ReplicaSets (a rollout, with the restartedAt annotation), not restarted "
          "in place: RESTARTS stays 0"},
)


def web_state(lab: Lab) -> tuple[str, str, bool]:
    """(status.secretMAC, the Deployment's restartedAt, VSS synced for its current generation)."""
    n = lab.names
    vss = vso.get(lab, "VaultStaticSecret", n.web_secret, n.static_ns) or {}
    try:
        dep = kclient.AppsV1Api(lab.kube).read_namespaced_deployment(n.web, n.static_ns)
        ann = (dep.spec.template.metadata.annotations or {}) if dep.spec and dep.spec.template.metadata else {}
    except ApiException as exc:
        if exc.status != 404:
            raise
        ann = {}
    gen = (vss.get("metadata") or {}).get("generation")
    return (str((vss.get("status") or {}).get("secretMAC", "")), str(ann.get(RESTARTED_AT, "")),
            bool(vss) and (vss.get("status") or {}).get("lastGeneration") == gen)


@exercise("restart-every-refresh",
          "Make the web Secret's content the same at every sync, keeping an htpasswd line in it, so VSO restarts web "
          "only when the password really changes.",
          ["Compare two syncs: `kubectl get vaultstaticsecret web-htpasswd -o jsonpath='{.status.secretMAC}'` changes "
           "although Vault's version does not. Which part of the template is not a pure function of the data?",
           "sprig's htpasswd hashes with bcrypt and a fresh random salt each time. Hash once, when the password is "
           "set: store the htpasswd line in Vault next to the password, and let the template copy it.",
           "pw=$(vault kv get -field=password ${PREFIX}static/web/admin); vault kv patch ${PREFIX}static/web/admin "
           "htpasswd=\"admin:$(openssl passwd -6 -stdin <<<\"$pw\")\"; then patch the template's text to "
           "'{{ get .Secrets \"htpasswd\" }}'"])
def _restart(lab: Lab, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
    n = lab.names
    if vso.get(lab, "VaultStaticSecret", n.web_secret, n.static_ns) is None:
        return [("the VaultStaticSecret web-htpasswd exists", False, "run the drill's break cell first")]
    _poll(lambda: web_state(lab)[2], 10)
    _poll(lambda: k8s.ready_pods(lab.kube, n.static_ns, f"app={n.web}"), 10)
    before = web_state(lab)
    # VSO's next sync comes within refreshAfter: computeHorizonWithJitter (common.go) only shortens it
    time.sleep(_seconds(ns, "REFRESH_AFTER", "10s") + 1.5)
    after = web_state(lab)
    data = k8s.secret_data(lab.kube, n.web_secret, n.static_ns) or {}
    return [("the Secret's HMAC stayed the same across a refresh", bool(before[0]) and before[0] == after[0],
             "the data VSO writes changes at every sync: the template is not deterministic"),
            ("web was not restarted meanwhile", before[1] == after[1],
             "VSO restarts the targets whenever the HMAC changes"),
            ("the Secret still holds an htpasswd line for admin", data.get("htpasswd", "").startswith("admin:"),
             "keep the htpasswd key: the web server reads /etc/web/htpasswd")]


# -- drill static-rotation-no-restart (VSO #466, #1002) -------------------------------------------------------------

ROTATION = Diagnosis(
    "static-rotation-no-restart",
    "The reports app in dynamic-exampleapp worked after its deployment, then, within a rotation period, its /status "
    "failed the database login; the Secret reports-creds looks fine and VSO reports every sync as a success.",
    {"a": "VSO did not pick up the rotation: the Secret still holds the old password.",
     "b": "Vault rotated the password and VSO wrote it to the Secret, but the pod read its environment at start and "
          "nothing restarted it: the VaultDynamicSecret has no rolloutRestartTargets.",
     "c": "The static role's rotation failed in PostgreSQL, so Vault and PostgreSQL disagree on the password.",
     "d": "allowStaticCreds: true makes VSO treat the credentials as a lease that expired."},
    "b",
    "status.staticCredsMetaData.lastVaultRotation moved and VSO posted SecretRotated, yet the pod is as old as before "
    "and there is no RolloutRestartTriggered event; the Secret's own credentials log in (the check below tries them)",
    {"a": "lastVaultRotation in the resource's status changed with a SecretRotated event: VSO wrote the new password",
     "c": "Vault's rotation succeeded (`vault read …/static-creds/reports` shows a fresh last_vault_rotation), and "
          "the Secret's credentials log in",
     "d": "with allowStaticCreds VSO follows the rotation schedule (the ttl in staticCredsMetaData); there is no "
          "lease: lease_id is empty in the events"},
)


def reports_targets(lab: Lab) -> list[dict[str, Any]]:
    n = lab.names
    vds = vso.get(lab, "VaultDynamicSecret", n.reports_secret, n.dynamic_ns) or {}
    return list((vds.get("spec") or {}).get("rolloutRestartTargets") or [])


def reports_rotation(lab: Lab) -> int:
    n = lab.names
    vds = vso.get(lab, "VaultDynamicSecret", n.reports_secret, n.dynamic_ns) or {}
    return int(((vds.get("status") or {}).get("staticCredsMetaData") or {}).get("lastVaultRotation") or 0)


def reports_login(lab: Lab) -> bool:
    """The reports app's /status logs in with the credentials the Secret holds now."""
    n = lab.names
    try:
        code, body = app.call(lab, n.dynamic_ns, "/status", n.reports, timeout=3)
    except Exception:  # no pod answers (yet)
        return False
    sec = k8s.secret_data(lab.kube, n.reports_secret, n.dynamic_ns) or {}
    return code == 200 and bool(sec.get("username")) and body.get("connected_as") == sec.get("username")


def reports_answer(lab: Lab) -> str:
    """What the reports app's /status says (its user is not secret; its password never appears in the answer)."""
    n = lab.names
    try:
        code, body = app.call(lab, n.dynamic_ns, "/status", n.reports, timeout=5)
    except Exception:  # no pod answers
        return "/status: no answer"
    return f"/status answered {code}: { {k: v for k, v in body.items() if k in ('status', 'connected_as', 'error')} }"


@exercise("static-rotation-no-restart",
          "Make VSO restart the reports Deployment whenever the static role's password rotates; get the app working "
          "again now.",
          ["The pod reads DB_PASSWORD from the Secret once, at start. Which field of a VaultDynamicSecret makes VSO "
           "restart a Deployment after it writes new credentials?",
           "Add spec.rolloutRestartTargets with kind Deployment and name reports (kubectl patch … --type merge). For "
           "static credentials VSO restarts only when they changed since its last sync, so the patch alone waits for "
           "the next rotation: `kubectl rollout restart deployment/reports` gets the app working at once.",
           "kubectl patch vaultdynamicsecret reports-creds -n ${PREFIX}dynamic-exampleapp --type merge -p "
           "'{\"spec\":{\"rolloutRestartTargets\":[{\"kind\":\"Deployment\",\"name\":\"reports\"}]}}'; "
           "kubectl rollout restart deployment/reports -n ${PREFIX}dynamic-exampleapp"])
def _rotation(lab: Lab, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
    n = lab.names
    if vso.get(lab, "VaultDynamicSecret", n.reports_secret, n.dynamic_ns) is None:
        return [("the VaultDynamicSecret reports-creds exists", False, "run the drill's break cell first")]
    targets = reports_targets(lab)
    named = any(t.get("kind") == "Deployment" and t.get("name") == n.reports for t in targets)
    if not named:
        return [("rolloutRestartTargets names the Deployment reports", False,
                 "without it VSO writes the new password to the Secret and leaves the pods as they are"),
                ("the app logs in after a rotation", False, "add the target first")]
    period = _seconds(ns, "ROTATION_PERIOD", "1m")
    before = reports_rotation(lab)
    rotated = _poll(lambda: reports_rotation(lab) != before, period + 10)
    works = rotated and _poll(lambda: reports_login(lab), 20)
    return [("rolloutRestartTargets names the Deployment reports", True, ""),
            ("Vault rotated the password again, and VSO synced it", rotated,
             f"wait up to rotation_period ({period:.0f} s); check the VaultDynamicSecret's events"),
            ("after that rotation the app logs in with the Secret's credentials", works,
             "VSO restarts the targets when static credentials change: look for RolloutRestartTriggered")]


# -- drill operator-down (VSO #734, #959) -----------------------------------------------------------------------------

DOWN = Diagnosis(
    "operator-down",
    "The app in dynamic-exampleapp suddenly answers /status with a failed login to PostgreSQL; nobody changed the app, "
    "the VaultDynamicSecret or the database role.",
    {"a": "PostgreSQL lost the role's GRANT: the login works but reading fails.",
     "b": "VSO is not running, so nobody renewed the lease: it expired and Vault dropped the login.",
     "c": "The database role's max_ttl was reached, and VSO failed to fetch new credentials because of its policy.",
     "d": "The app cached an old password from before its last restart."},
    "b",
    "`kubectl get deploy -n vault-secrets-operator` shows 0/0 ready; the VaultDynamicSecret's status still names the "
    "old lease, and `vault lease lookup` no longer knows it",
    {"a": "the app's error is a failed login (password authentication), not a permission error on a table",
     "c": "no SecretSyncError or 403 event: VSO posted nothing at all since the lease expired, since it does not run",
     "d": "the pod still runs with the credentials VSO last wrote: they were right, until their lease expired"},
    own_lab_only=True,
)


def operator_ready(lab: Lab) -> int:
    try:
        dep = kclient.AppsV1Api(lab.kube).read_namespaced_deployment(OPERATOR_DEPLOYMENT, lab.names.operator_ns)
    except ApiException as exc:
        if exc.status == 404:
            return 0
        raise
    return int((dep.status.ready_replicas if dep.status else 0) or 0)


def app_login(lab: Lab) -> tuple[int, dict]:
    n = lab.names
    try:
        return app.call(lab, n.dynamic_ns, "/status", n.app, timeout=5)
    except Exception:  # no pod answers: the same as a failed login, for the learner
        return 0, {}


def app_answer(lab: Lab) -> str:
    """What the app's /status says, with the database username shortened wherever it appears (never in full)."""
    code, body = app_login(lab)
    user = dynamic.read_secret(lab).get("username", "")
    shown = {k: str(v).replace(user, dynamic.short_user(user)) if user else str(v)
             for k, v in body.items() if k in ("status", "connected_as", "error")}
    if "connected_as" in body:
        shown["connected_as"] = dynamic.short_user(str(body["connected_as"]))
    return f"/status answered {code or 'nothing'}: {shown}"


@exercise("operator-down",
          "Bring VSO back and get the app working again with fresh credentials.",
          ["`kubectl get deploy -n vault-secrets-operator` shows the operator at 0 replicas.",
           "Scale it back to 1 and wait for the rollout. On start VSO logs in anew: a new client means a sync "
           "(reason VaultTokenRotated), new credentials, and a rollout restart of hashicups-exampleapp.",
           "kubectl scale deployment vault-secrets-operator-controller-manager -n vault-secrets-operator --replicas=1; "
           "kubectl rollout status … ; then wait for the app's rollout in ${PREFIX}dynamic-exampleapp"])
def _down(lab: Lab, ns: dict[str, Any]) -> list[tuple[str, bool, str]]:
    skip = _skipped(lab)
    if skip:
        return skip
    if not operator_ready(lab):
        return [("VSO's controller manager runs", False, "scale the Deployment back to 1 replica"),
                ("the app logs in to PostgreSQL", False, "VSO must sync new credentials first")]

    def working() -> bool:
        code, body = app_login(lab)
        sec = dynamic.read_secret(lab)
        return code == 200 and bool(sec.get("username")) and body.get("connected_as") == sec.get("username")

    ok = _poll(working, 40)
    return [("VSO's controller manager runs", True, ""),
            ("the app logs in to PostgreSQL with the credentials in the Secret", ok,
             "wait for VSO's sync and the app's rollout: `kubectl describe vaultdynamicsecret vault-dynamic-secret`")]


# -- the stage ---------------------------------------------------------------------------------------------------------

def _poll(probe: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if probe():
                return True
        except (ApiException, hvexc.VaultError):
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def check(lab: Lab) -> Check:
    """After the drills: Vault unsealed, VSO running, stage 02's and 03's syncs healthy, web steady."""
    n = lab.names
    vss = vso.get(lab, "VaultStaticSecret", n.static_vss, n.static_ns)
    vds = vso.get(lab, "VaultDynamicSecret", n.dynamic_vds, n.dynamic_ns)
    code, _ = app_login(lab) if operator_ready(lab) else (0, {})
    return Check("Troubleshooting, part 2: the lab is healthy after the drills", [
        ("Vault is unsealed", not sealed(lab), "unseal it (drill sealed)"),
        ("VSO's controller manager runs", operator_ready(lab) > 0, "scale it back to 1 (drill operator-down)"),
        (f"VaultStaticSecret {n.static_ns}/{n.static_vss} is synced", vso.is_synced(vss),
         vso.hint_from_events(lab, "VaultStaticSecret", n.static_vss, n.static_ns)),
        (f"VaultDynamicSecret {n.dynamic_ns}/{n.dynamic_vds} is synced", vso.is_synced(vds),
         vso.hint_from_events(lab, "VaultDynamicSecret", n.dynamic_vds, n.dynamic_ns)),
        ("the app's /status logs in to PostgreSQL", code == 200, "drill operator-down: wait for the app's rollout"),
    ])


def undo(lab: Lab) -> None:
    """Restore the good state (Vault unsealed, VSO at one replica) and remove the drills' own objects."""
    n = lab.names
    if own_lab(lab):
        key = lab.state.secrets().get("vault_unseal_key") if lab.backend == "local" else None
        if key and sealed(lab):
            _unauthenticated(lab).sys.submit_unseal_key(key)
    c = vault.client(lab)
    if own_lab(lab) and not operator_ready(lab):
        try:
            kclient.AppsV1Api(lab.kube).patch_namespaced_deployment_scale(
                OPERATOR_DEPLOYMENT, n.operator_ns, {"spec": {"replicas": 1}})
            k8s.wait_for("VSO's controller manager to be ready again", lambda: operator_ready(lab), 90)
        except ApiException as exc:
            if exc.status != 404:  # no operator installed: nothing to scale
                raise
    if not k8s.namespace_gone(lab.kube, n.static_ns):
        vso.delete(lab, "VaultStaticSecret", n.web_secret, n.static_ns)
        k8s.wait_for("VSO to finalise web-htpasswd", lambda: vso.get(lab, "VaultStaticSecret", n.web_secret, n.static_ns)
                     is None, 60)
        vso.delete(lab, "VaultAuth", "web-auth", n.static_ns)
        for api_version, kind, name in (("apps/v1", "Deployment", n.web), ("v1", "Secret", n.web_secret),
                                        ("v1", "ServiceAccount", n.web)):
            k8s.delete(lab.kube, api_version, kind, name, n.static_ns)
    if not k8s.namespace_gone(lab.kube, n.dynamic_ns):
        if vso.get(lab, "VaultDynamicSecret", n.reports_secret, n.dynamic_ns) is not None:
            vso.delete(lab, "VaultDynamicSecret", n.reports_secret, n.dynamic_ns)
            k8s.wait_for("VSO to finalise reports-creds", lambda: vso.get(
                lab, "VaultDynamicSecret", n.reports_secret, n.dynamic_ns) is None, 60)
        vso.delete(lab, "VaultAuth", "reports-auth", n.dynamic_ns)
        for api_version, kind, name in (("apps/v1", "Deployment", n.reports), ("v1", "Secret", n.reports_secret),
                                        ("v1", "ServiceAccount", n.reports)):
            k8s.delete(lab.kube, api_version, kind, name, n.dynamic_ns)
    mounts = c.sys.list_mounted_secrets_engines()["data"]
    if f"{n.db_mount}/" in mounts:
        vault_quiet(c.secrets.database.delete_static_role, n.reports, mount_point=n.db_mount)
        vault_quiet(c.secrets.database.delete_connection, n.reports, mount_point=n.db_mount)
    pg.drop_user(lab, n.reports_pg_user)  # Vault never drops a static role's user: the drill made it, the undo drops it
    vault_quiet(c.sys.delete_policy, n.reports_policy)
    if f"{n.kv_mount}/" in mounts:
        vault_quiet(c.secrets.kv.v2.delete_metadata_and_all_versions, n.web_kv_path, mount_point=n.kv_mount)
    if f"{n.k8s_auth_mount}/" in c.sys.list_auth_methods()["data"]:
        vault_quiet(c.auth.kubernetes.delete_role, n.web_role, mount_point=n.k8s_auth_mount)
        vault_quiet(c.auth.kubernetes.delete_role, n.reports, mount_point=n.k8s_auth_mount)
    vault_quiet(c.sys.delete_policy, n.web_policy)


STAGE = Stage(13, "13-troubleshooting-sync", "Troubleshooting, part 2: syncs, restarts and rotations",
              undo=undo, check=check, exercises=(_sealed, _restart, _rotation, _down), requires=(1, 2, 3),
              diagnoses=(SEALED, RESTART, ROTATION, DOWN))
