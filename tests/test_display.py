import pytest

from labkit.display import MASK, Check, Done, mask, mask_mapping
from labkit.errors import CheckFailed


def test_mask_hides_value_but_keeps_length():
    assert mask("s3cret-value") == f"{MASK} (12 chars)"
    assert "s3cret" not in mask("s3cret-value")
    assert mask("") == "(empty)"
    assert mask(None) == "(empty)"


def test_mask_reveal_shows_value():
    assert mask("s3cret", reveal=True) == "s3cret"


def test_mask_mapping_keeps_only_named_keys():
    out = mask_mapping({"username": "alice", "password": "pw123"}, keep=("username",))
    assert out == {"username": "alice", "password": f"{MASK} (5 chars)"}


def test_done_shows_command_lines():
    text = str(Done("enabled kv", "vault secrets enable kv\nsecond line", {"k": "v"}))
    assert text.splitlines() == ["✔ enabled kv", "    k: v", "  $ vault secrets enable kv", "  $ second line"]
    assert "<pre" in Done("x", "cmd")._repr_html_()


def test_check_require_raises_with_hints():
    ok = Check("fine", [("a", True, "")])
    assert ok.require() is ok
    bad = Check("broken", [("a", True, ""), ("b", False, "do the b thing")])
    assert not bad.passed
    with pytest.raises(CheckFailed) as info:
        bad.require()
    msg = str(info.value)
    assert "FAIL: broken" in msg and "hint: do the b thing" in msg and "[ ] b" in msg
