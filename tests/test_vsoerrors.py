"""VSO's warnings are classified by their structure, never by digits or words anywhere in the text.

The messages are VSO v1.5.0's own, captured from the lab (events and SecretSynced conditions), with durations
and lease ids chosen to hold 403, 404 and "role ... not".
"""

from __future__ import annotations

import pytest

from labkit._vsoerrors import VaultAPIError, classify, parse_vault_error

ADDR = "http://127.0.0.1:23743"
LOGIN_400 = (f"Error making API request.\n\nURL: PUT {ADDR}/v1/auth/kubernetes/login\nCode: 400. Errors:\n\n"
             '* invalid role name "no-such-role"')
READ_403 = (f"Error making API request.\n\nURL: GET {ADDR}/v1/static/data/exampleapp/cred\nCode: 403. Errors:\n\n"
            "* 1 error occurred:\n\t* permission denied\n\n")
REVOKE_403 = (f"Error making API request.\n\nURL: PUT {ADDR}/v1/sys/leases/revoke\nCode: 403. Errors:\n\n"
              "* 1 error occurred:\n\t* permission denied\n\n")
LOGIN_403 = (f"Error making API request.\n\nURL: PUT {ADDR}/v1/auth/kubernetes/login\nCode: 403. Errors:\n\n"
             "* permission denied")


def condition(err: str, horizon: str) -> str:
    return f"Failed to sync the secret, horizon={horizon}, err={err}"


def test_parse_reads_code_method_path_and_errors() -> None:
    assert parse_vault_error("Failed to read Vault secret: " + READ_403) == VaultAPIError(
        403, "GET", "static/data/exampleapp/cred", ("permission denied",))
    assert parse_vault_error(LOGIN_400) == VaultAPIError(400, "PUT", "auth/kubernetes/login", ('invalid role name "no-such-role"',))
    assert parse_vault_error("Failed to sync the secret, horizon=4.04s, err=context deadline exceeded") is None


@pytest.mark.parametrize("horizon", ["4.155103404s", "4.913268162s", "1.404404404s", "403.403ms", "4.0404s"])
def test_wrong_role_is_named_whatever_the_horizon(horizon: str) -> None:
    """The CI flake: "404" inside the horizon once made this "the Vault path does not exist"."""
    cause = classify("Synced", condition(LOGIN_400, horizon))
    assert "role does not exist" in cause and "spec.kubernetes.role" in cause, cause


@pytest.mark.parametrize("horizon", ["4.155103404s", "0.404s", "2.9999s"])
def test_refused_read_is_a_policy_or_path_problem_whatever_the_horizon(horizon: str) -> None:
    cause = classify("VaultClientError", condition(READ_403, horizon))
    assert "path does not exist" in cause and "spec.path" in cause and "policy" in cause, cause


def test_digits_outside_the_error_structure_classify_nothing() -> None:
    for reason, msg in [
        ("SecretLeaseRenewalError", "lease database/creds/dev-postgres/Xy404AbC403 renewal failed: context canceled"),
        ("VaultClientError", "Failed to sync, horizon=4.04s, err=rpc error 404 403 (the role is not ready)"),
    ]:
        assert classify(reason, msg) == "", (reason, msg)


def test_refused_login_names_the_bindings_not_the_path() -> None:
    cause = classify("VaultClientConfigError", "Failed to get Vault auth login: " + LOGIN_403)
    assert "bound_service_account" in cause and "path does not exist" not in cause, cause


def test_refused_revoke_names_the_missing_policy_path() -> None:
    cause = classify("SecretLeaseRevoke", "Failed to revoke lease database/creds/dev-postgres/a404b403: " + REVOKE_403)
    assert "sys/leases/revoke" in cause and '"update"' in cause, cause


def test_empty_response_from_a_kv_v2_read_is_a_missing_path() -> None:
    cause = classify("VaultClientError", 'Failed to read Vault secret: empty response from Vault, path="static/data/x"')
    assert "path does not exist" in cause, cause


def test_rollout_restart_reasons() -> None:
    assert "deploy the app" in classify("RolloutRestartFailed", 'deployments.apps "vso-db-demo" not found')


def test_a_missing_reference_is_named_by_reason() -> None:
    assert "VaultAuth or VaultConnection" in classify("InvalidResourceRef", "some text")
