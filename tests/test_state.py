import json
import os
import socket
import stat

import pytest

from labkit._state import State
from labkit.errors import PortTaken, StateError


def test_ensure_makes_private_tree(tmp_path):
    st = State(tmp_path / "lab")
    st.ensure()
    assert stat.S_IMODE(os.stat(st.root).st_mode) == 0o700
    for sub in ("pki", "kube", "data", "logs", "run", "pods"):
        assert stat.S_IMODE(os.stat(st.root / sub).st_mode) == 0o700
    st.update_secrets(token="abc")
    assert stat.S_IMODE(os.stat(st.root / "secrets.json").st_mode) == 0o600
    assert json.loads((st.root / "secrets.json").read_text()) == {"token": "abc"}


def test_ports_are_chosen_once_distinct_and_recorded(tmp_path):
    st = State(tmp_path / "lab")
    st.ensure()
    first = st.ports()
    assert set(first) == set(State.PORT_NAMES)
    assert len(set(first.values())) == len(first)
    assert State(tmp_path / "lab").ports() == first


def test_two_state_dirs_get_different_ids_and_ports(tmp_path):
    a, b = State(tmp_path / "a"), State(tmp_path / "b")
    a.ensure(), b.ensure()
    assert a.lab_id != b.lab_id and a.lab_id.isalpha()
    assert not set(a.ports().values()) & set(b.ports().values())


def test_port_taken_message(tmp_path):
    st = State(tmp_path / "lab")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortTaken) as info:
            st.check_port_free("openbao", port, "")
    assert str(port) in str(info.value) and "ss -ltnp" in str(info.value)


def test_unwritable_state_dir_is_explained(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "lab").write_text("a file where a directory should be")
    with pytest.raises(StateError) as info:
        State(ro / "lab").ensure()
    assert "VSOLAB_STATE" in str(info.value)


def test_corrupt_state_json_is_explained(tmp_path):
    st = State(tmp_path / "lab")
    st.ensure()
    (st.root / "state.json").write_text("{not json")
    with pytest.raises(StateError, match="labkit down --purge"):
        st.read()
