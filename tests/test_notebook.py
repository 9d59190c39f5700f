import pytest

from labkit.errors import ParameterError
from labkit.notebook import CI, SPEC, duration_seconds, validate


def defaults():
    return {k: d for k, (_, d) in SPEC.items()}


def test_defaults_are_valid():
    assert validate(defaults()) == defaults()


@pytest.mark.parametrize("name,value", [("LIVE_SECONDS", "60"), ("INTERACTIVE", "yes"), ("RENEWAL_PERCENT", 6.7),
                                        ("LIVE_SECONDS", True), ("BACKEND", 3)])
def test_wrong_type_is_refused_with_a_fix(name, value):
    p = defaults() | {name: value}
    with pytest.raises(ParameterError) as info:
        validate(p)
    assert name in str(info.value) and "parameters" in str(info.value)


def test_bad_durations_and_ranges():
    with pytest.raises(ParameterError):
        validate(defaults() | {"DEFAULT_TTL": "10 minutes"})
    with pytest.raises(ParameterError, match="MAX_TTL"):
        validate(defaults() | {"DEFAULT_TTL": "5m", "MAX_TTL": "1m"})
    with pytest.raises(ParameterError, match="0 to 90"):
        validate(defaults() | {"RENEWAL_PERCENT": 95})


def test_duration_seconds():
    assert duration_seconds("15s") == 15
    assert duration_seconds("2m") == 120
    assert duration_seconds("1.5h") == 5400


def test_ci_environment_applies_ci_values(monkeypatch):
    monkeypatch.setenv("VSOLAB_CI", "1")
    out = validate(defaults())
    assert out["LIVE_SECONDS"] == CI["LIVE_SECONDS"] and out["SOLUTIONS"] is True and out["INTERACTIVE"] is False
