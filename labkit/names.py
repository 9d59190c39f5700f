"""Every name the lab creates, as the tutorial spells it.

On a shared cluster and Vault (the ``external`` backend) each attendee gets a
prefix, so nothing one attendee creates touches another's or the team's own.
With an empty prefix the names are exactly the tutorial's.

Two places where the tutorial contradicts itself, and what the kit uses:

* it enables the KV v2 engine at ``static`` but points the VaultStaticSecret at
  ``secret``: the kit uses ``static`` everywhere (the policy, the later update
  to ``static/exampleapp/creds`` and the instant-update step all say ``static``);
* it reuses the service account ``vso-static-exampleapp-sa`` in the dynamic
  namespace: the kit names it ``vso-dynamic-exampleapp-sa``, matching the
  namespace it lives in, and binds the dynamic auth role to that name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Made:
    """What a stage makes, by kind, as this lab spells the names (:meth:`Names.made_by`).

    Stages 04 and 06 make nothing of their own (they change what 03 and 02 made); notebook 07 removes. VSO's Helm
    release (notebook 01, on the local lab) and the Secrets VSO writes are not listed: the backend owns them.
    """

    namespaces: tuple[str, ...] = ()
    cluster_role_bindings: tuple[str, ...] = ()
    #: Vault auth methods (their mount paths)
    auth_methods: tuple[str, ...] = ()
    #: roles of the kubernetes auth method (``auth/<k8s_auth_mount>/role/<name>``)
    auth_roles: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()
    #: Vault secrets engines (their mount paths)
    secrets_engines: tuple[str, ...] = ()
    #: where Vault keeps the leases of the credentials it issues (``sys/leases/lookup/<prefix>``)
    lease_prefixes: tuple[str, ...] = ()
    #: PostgreSQL users a notebook's steps create as a DBA would (not Vault's dynamic ``v-`` roles)
    database_users: tuple[str, ...] = ()

    def __add__(self, other: Made) -> Made:
        return Made(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True)
class Names:
    prefix: str = ""

    def _p(self, name: str) -> str:
        return f"{self.prefix}{name}"

    # stage 1 (notebook 01): connection and the token reviewer
    @property
    def vault_ns(self) -> str:
        return self._p("vault")

    @property
    def vault_connection(self) -> str:
        return "vault-connection"

    @property
    def connection_ref(self) -> str:
        """How a VaultAuth (or VSO's client-cache settings) names the VaultConnection: ``<namespace>/<name>``."""
        return f"{self.vault_ns}/{self.vault_connection}"

    @property
    def reviewer_sa(self) -> str:
        return "vault-to-k8s-sa"

    @property
    def reviewer_secret(self) -> str:
        return "vault-auth-secret"

    @property
    def reviewer_binding(self) -> str:
        return self._p("vault-to-k8s-sa-auth-delegator")

    @property
    def k8s_auth_mount(self) -> str:
        return self._p("kubernetes")

    # stage 2 (notebook 02): static secrets
    @property
    def kv_mount(self) -> str:
        return self._p("static")

    kv_path = "exampleapp/creds"

    @property
    def kv_policy(self) -> str:
        return self._p("exampleapp-kv-read")

    @property
    def static_role(self) -> str:
        return "vault-role-static-exampleapp"

    @property
    def static_ns(self) -> str:
        return self._p("static-exampleapp")

    static_sa = "vso-static-exampleapp-sa"
    static_auth = "static-auth"
    static_vss = "vault-static-secret"
    static_secret = "vso-static-creds-from-vault"

    # stage 3 (notebook 03): dynamic secrets
    @property
    def db_mount(self) -> str:
        return self._p("database")

    db_connection = "postgresql"
    db_role = "vault-role-dynamic-exampleapp"

    @property
    def db_policy(self) -> str:
        return self._p("exampleapp-database-read")

    dynamic_role = "vault-role-dynamic-exampleapp"

    @property
    def dynamic_ns(self) -> str:
        return self._p("dynamic-exampleapp")

    @property
    def vso_db_users(self) -> str:
        """How the PostgreSQL roles Vault creates for VSO begin, so attendees sharing a database tell theirs apart.

        Vault's default username template starts ``v-`` and the first 8 characters of the token's display name,
        which for a login is the auth mount's path and a dash first: ``v-kubernet…`` in the tutorial,
        ``v-alice-ku…`` under the prefix ``alice-``.
        """
        return "v-" + f"{self.k8s_auth_mount}-"[:8]

    dynamic_sa = "vso-dynamic-exampleapp-sa"
    dynamic_auth = "dynamic-auth"
    dynamic_vds = "vault-dynamic-secret"
    dynamic_secret = "vso-dynamic-creds-from-vault"

    app = "hashicups-exampleapp"

    # stage 5 (notebook 05): client cache
    @property
    def transit_mount(self) -> str:
        return self._p("demo-transit")

    transit_key = "vso-client-cache"

    @property
    def transit_policy(self) -> str:
        return self._p("vso-transit-policy")

    @property
    def transit_role(self) -> str:
        return self._p("auth-role-operator")

    # stage 13 (notebook 13): the drill restart-every-refresh's web app, its KV path, policy and role
    web_kv_path = "web/admin"
    web_role = "web"
    web = "web"
    web_secret = "web-htpasswd"

    @property
    def web_policy(self) -> str:
        return self._p("web-kv-read")

    # stage 13: the drill static-rotation-no-restart's reports app, on stage 3's database mount
    reports = "reports"  # the app, its service account, auth role, connection config and static role
    reports_secret = "reports-creds"

    @property
    def reports_policy(self) -> str:
        return self._p("reports-creds-read")

    @property
    def reports_pg_user(self) -> str:
        return self._p("reports-app")

    operator_ns = "vault-secrets-operator"
    operator_sa = "vault-secrets-operator-controller-manager"
    transit_auth = "vault-secrets-operator-default-transit-auth"

    # stage 11 (notebook 11): VaultAuthGlobal, one login recipe shared by the teams' VaultAuths
    @property
    def platform_ns(self) -> str:
        return self._p("vso-platform")

    auth_global = "team-login"

    @property
    def team_a_ns(self) -> str:
        return self._p("team-a")

    @property
    def team_b_ns(self) -> str:
        return self._p("team-b")

    @property
    def teams_mount(self) -> str:
        return self._p("teams")

    @property
    def team_a_policy(self) -> str:
        return self._p("team-a-read")

    @property
    def team_b_policy(self) -> str:
        """Not made by the steps; a learner letting team B read secrets may write it (the undo removes it)."""
        return self._p("team-b-read")

    team_a_role = "team-a"
    team_b_role = "team-b"
    team_a_sa = "team-a-sa"
    team_b_sa = "team-b-sa"
    team_auth = "team-auth"
    team_a_path = "team-a/config"
    team_a_vss = "team-a-config"
    team_a_secret = "team-a-config"
    # stage 9 (notebook 09, beyond the tutorial): secret templates
    @property
    def templates_mount(self) -> str:
        return self._p("templates")

    templates_path = "exampleapp/db"

    @property
    def templates_policy(self) -> str:
        return self._p("exampleapp-templates-read")

    templates_role = "vault-role-templates-exampleapp"

    @property
    def templates_ns(self) -> str:
        return self._p("templates-exampleapp")

    templates_sa = "vso-templates-exampleapp-sa"
    templates_auth = "templates-auth"
    templates_vss = "vault-static-secret-db"
    templates_secret = "vso-templates-db"
    #: the SecretTransformation the VaultStaticSecret refers to (in the same namespace)
    templates_transformation = "database-url"
    # stage 8 (notebook 08): certificates from the PKI engine
    @property
    def pki_mount(self) -> str:
        return self._p("pki")

    pki_role = "exampleapp"
    pki_ca_name = "vsolab-exampleapp CA"

    @property
    def pki_policy(self) -> str:
        return self._p("exampleapp-pki-issue")

    pki_auth_role = "vault-role-pki-exampleapp"

    @property
    def pki_ns(self) -> str:
        return self._p("pki-exampleapp")

    pki_sa = "vso-pki-exampleapp-sa"
    pki_auth = "pki-auth"
    pki_vps = "vault-pki-secret"
    pki_vds = "vault-cert"
    pki_secret = "exampleapp-tls"

    @property
    def pki_common_name(self) -> str:
        """The app's name as its clients would call it: its Service's DNS name in its namespace."""
        return f"{self.app}.{self.pki_ns}.svc"
    # stage 12 (notebook 12): the access drills, one namespace of teams
    @property
    def drills_ns(self) -> str:
        return self._p("drills-access")

    drills_sa = "drills-sa"
    drills_kv_path = "drills/config"

    @property
    def drills_policy(self) -> str:
        return self._p("drills-kv-read")

    drills_role = "vault-role-drills"
    drills_auth = "drills-auth"

    @property
    def billing_policy(self) -> str:
        return self._p("billing-kv-read")

    billing_role = "vault-role-billing"
    search_role = "vault-role-search"
    # stage 10 (notebook 10): a database static role
    @property
    def staticrole_mount(self) -> str:
        return self._p("database-static")

    staticrole_connection = "postgresql"
    #: the Vault static role (its mount is the attendee's own, so the name needs no prefix)
    staticrole_db_role = "exampleapp-static"

    @property
    def staticrole_db_user(self) -> str:
        """The PostgreSQL user the static role owns; the database may be shared, so it carries the prefix."""
        return self._p("exampleapp-static")

    @property
    def staticrole_policy(self) -> str:
        return self._p("exampleapp-static-creds-read")

    staticrole_auth_role = "vault-role-static-role-exampleapp"

    @property
    def staticrole_ns(self) -> str:
        return self._p("static-role-exampleapp")

    staticrole_sa = "vso-static-role-exampleapp-sa"
    staticrole_auth = "static-role-auth"
    staticrole_vds = "vault-static-role-secret"
    staticrole_secret = "vso-static-role-creds-from-vault"

    # -- the inventory: what each stage makes --------------------------------------------------------------------

    def inventory(self) -> dict[int, Made]:
        """Stage number → what its notebook's steps make; a stage that makes nothing of its own is left out."""
        return {
            1: Made(namespaces=(self.vault_ns,), cluster_role_bindings=(self.reviewer_binding,),
                    auth_methods=(self.k8s_auth_mount,)),
            2: Made(namespaces=(self.static_ns,), auth_roles=(self.static_role,), policies=(self.kv_policy,),
                    secrets_engines=(self.kv_mount,)),
            3: Made(namespaces=(self.dynamic_ns,), auth_roles=(self.dynamic_role,), policies=(self.db_policy,),
                    secrets_engines=(self.db_mount,), lease_prefixes=(f"{self.db_mount}/creds/{self.db_role}",)),
            5: Made(auth_roles=(self.transit_role,), policies=(self.transit_policy,),
                    secrets_engines=(self.transit_mount,)),
            8: Made(namespaces=(self.pki_ns,), auth_roles=(self.pki_auth_role,), policies=(self.pki_policy,),
                    secrets_engines=(self.pki_mount,)),
            9: Made(namespaces=(self.templates_ns,), auth_roles=(self.templates_role,),
                    policies=(self.templates_policy,), secrets_engines=(self.templates_mount,)),
            10: Made(namespaces=(self.staticrole_ns,), auth_roles=(self.staticrole_auth_role,),
                     policies=(self.staticrole_policy,), secrets_engines=(self.staticrole_mount,),
                     database_users=(self.staticrole_db_user,)),
            11: Made(namespaces=(self.team_b_ns, self.team_a_ns, self.platform_ns), auth_roles=(self.team_a_role,),
                     policies=(self.team_a_policy,), secrets_engines=(self.teams_mount,)),
            12: Made(namespaces=(self.drills_ns,), auth_roles=(self.drills_role, self.billing_role, self.search_role),
                     policies=(self.drills_policy, self.billing_policy)),
            # the drills' own objects (their break cells make them; the rest lives in stages 2 and 3's namespaces)
            13: Made(auth_roles=(self.web_role, self.reports), policies=(self.web_policy, self.reports_policy),
                     database_users=(self.reports_pg_user,)),
        }

    def made_by(self, stage: int) -> Made:
        """What notebook ``stage``'s steps make (empty for a stage that makes nothing of its own)."""
        return self.inventory().get(stage, Made())

    @property
    def made(self) -> Made:
        """Everything the stages make, the latest stage's first (the order clean-up removes them in)."""
        out = Made()
        for _, made in sorted(self.inventory().items(), reverse=True):
            out += made
        return out
