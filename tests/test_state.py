import json
import os
import socket
import stat
from pathlib import Path

import pytest
from _labs import lab_fixture

from labkit._state import State
from labkit.errors import PortTaken, StateError


def _stopped(stdout: str) -> set[str]:
    """The components `labkit down` says it stopped ("down: stopped charts, vso, agent, …")."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith("down: stopped ")), "")
    return set(line.removeprefix("down: stopped ").split(", "))


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


# -- one lab per directory, whatever the path --------------------------------------------------------------
def test_a_symlink_and_dotdot_reach_the_same_lab(tmp_path):
    real = tmp_path / "lab"
    real.mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "link").symlink_to(real)
    ids = {State(p).lab_id for p in (real, tmp_path / "link", tmp_path / "other" / ".." / "lab")}
    roots = {State(p).root for p in (real, tmp_path / "link", tmp_path / "other" / ".." / "lab")}
    assert len(ids) == 1 and roots == {real}


# -- damaged records ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", ["", "[]", "null", "42", "{not json"])
@pytest.mark.parametrize("name", ["state.json", "secrets.json"])
def test_a_damaged_record_is_one_paragraph(tmp_path, name, content):
    from tests.test_bad_input import one_paragraph

    st = State(tmp_path / "lab")
    st.ensure()
    (st.root / name).write_text(content)
    with pytest.raises(StateError) as info:
        st.read() if name == "state.json" else st.secrets()
    one_paragraph(str(info.value))
    assert str(st.root / name) in str(info.value) and "labkit down --purge" in str(info.value)
    if name == "state.json":
        assert "mv " in str(info.value)  # the way back that keeps the lab's data


# -- what another user could have planted ------------------------------------------------------------------
def test_a_state_directory_others_can_write_is_refused(tmp_path):
    from labkit.errors import UntrustedPath

    root = tmp_path / "lab"
    root.mkdir()
    root.chmod(0o777)
    with pytest.raises(UntrustedPath) as info:
        State(root).ensure()
    assert "0777" in str(info.value) and "VSOLAB_STATE" in str(info.value)
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o777, "a refused directory is left as it was"


def test_a_symlink_in_pki_is_refused(tmp_path):
    from labkit.errors import UntrustedPath

    st = State(tmp_path / "lab")
    st.ensure()
    (st.root / "pki" / "ca.key").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UntrustedPath, match="symlink"):
        st.update(x=1)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file owned by another user needs root")
@pytest.mark.parametrize("rel", ["secrets.json", "pki", "pki/ca.crt", "."])
def test_a_record_owned_by_another_user_is_refused(tmp_path, rel):
    from labkit.errors import UntrustedPath

    st = State(tmp_path / "lab")
    st.ensure()
    target = st.root / rel
    if rel.endswith((".json", ".crt")):
        target.write_text("{}")
    os.chown(target, 65534, 65534)
    with pytest.raises(UntrustedPath, match="owned by"):
        st.ensure()


def test_a_directory_that_is_not_a_lab_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StateError, match="holds other files"):
        State(tmp_path).ensure()
    assert (tmp_path / "notes.txt").exists() and not (tmp_path / "lock").exists()


# -- read-only status ------------------------------------------------------------------------------------------
def test_status_writes_nothing(tmp_path):
    from labkit.backends.local import LocalLab

    fresh = tmp_path / "never-up"
    assert not any(h.healthy for h in LocalLab(fresh).status())
    assert not fresh.exists()
    st = State(tmp_path / "lab")
    st.ensure()
    before = {p: p.stat().st_mtime_ns for p in st.root.rglob("*")}
    rows = LocalLab(st.root).status()
    assert [h.detail for h in rows] == ["not set up (run `labkit up`)"] * len(rows)
    assert {p: p.stat().st_mtime_ns for p in st.root.rglob("*")} == before


# -- a real lab whose state is damaged or changed ----------------------------------------------------------------
def _lab_tools():
    import sys
    from pathlib import Path

    from tests.test_bad_input import cli, cli_error, lab_processes

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import lab_works

    return cli, cli_error, lab_processes, lab_works


#: A lab at the start of notebook 04: VaultConnection, kubernetes auth, static and dynamic secrets, the app (the
#: notebooks' learner defaults).
staged_lab = lab_fixture(4, name="state-lab")


def works(lab_works, root) -> None:
    from labkit import connect
    from labkit.backends.local import LocalLab

    lab = LocalLab(root)
    assert lab.healthy()
    assert connect.check(lab).passed, connect.check(lab)
    assert lab_works.static_follows(lab), "VSO no longer syncs the static secret"
    assert lab_works.dynamic_ok(lab), "the dynamic secret or its app is broken"


@pytest.mark.lab
def test_one_lab_through_a_symlink_and_through_dotdot(staged_lab, tmp_path):
    cli, _, lab_processes, _ = _lab_tools()
    root = staged_lab.state.root
    link = tmp_path / "link"
    link.symlink_to(root)
    dotdot = root.parent / "x" / ".." / root.name
    (root.parent / "x").mkdir(exist_ok=True)
    proc = cli("--state", str(link), "status")
    assert proc.returncode == 0 and "DOWN" not in proc.stdout, proc.stdout + proc.stderr
    proc = cli("--state", str(link), "up")
    assert proc.returncode == 0 and "everything was already running" in proc.stdout, proc.stdout + proc.stderr
    proc = cli("--state", str(dotdot), "down")
    assert proc.returncode == 0 and "charts" in _stopped(proc.stdout), proc.stdout + proc.stderr
    assert not lab_processes(root)
    proc = cli("--state", str(link), "up")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert staged_lab.healthy()


@pytest.mark.lab
@pytest.mark.parametrize("content", ["", "[]", "null"])
def test_a_damaged_state_json_is_explained_down_works_and_moving_it_aside_brings_the_lab_back(staged_lab, content):
    cli, cli_error, lab_processes, lab_works = _lab_tools()
    root = staged_lab.state.root
    (root / "state.json").write_text(content)
    cli_error(cli("--state", str(root), "status"), "status", str(root / "state.json"), "mv ")
    proc = cli("--state", str(root), "down")
    assert proc.returncode == 0 and "charts" in _stopped(proc.stdout), proc.stdout + proc.stderr
    assert not lab_processes(root)
    cli_error(cli("--state", str(root), "up"), "up", str(root / "state.json"))
    (root / "state.json").rename(root / "state.json.damaged")
    proc = cli("--state", str(root), "up")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    works(lab_works, root)


@pytest.mark.lab
def test_status_of_a_running_lab_writes_nothing(staged_lab):
    cli, _, _, _ = _lab_tools()
    root = staged_lab.state.root
    files = [p for p in root.rglob("*") if p.is_file() and "logs" not in p.parts and "data" not in p.parts]
    before = {p: p.stat().st_mtime_ns for p in files}
    assert cli("--state", str(root), "status").returncode == 0
    assert {p: p.stat().st_mtime_ns for p in files} == before


@pytest.mark.lab
def test_changed_ports_reach_vso_and_vault(staged_lab):
    import port_for

    cli, _, _, lab_works = _lab_tools()
    root = staged_lab.state.root
    assert cli("--state", str(root), "down").returncode == 0
    data = json.loads((root / "state.json").read_text())
    for name in ("openbao", "apiserver", "postgres"):
        data["ports"][name] = port_for.select_random()
    (root / "state.json").write_text(json.dumps(data))
    proc = cli("--state", str(root), "up")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "VaultConnection" in proc.stdout and "auth/kubernetes/config" in proc.stdout, proc.stdout
    works(lab_works, root)


@pytest.mark.lab
def test_a_lost_pki_is_made_again_and_the_lab_works(staged_lab):
    import shutil

    cli, _, _, lab_works = _lab_tools()
    root = staged_lab.state.root
    ca = (root / "pki" / "ca.crt").read_bytes()
    shutil.rmtree(root / "pki")
    proc = cli("--state", str(root), "up")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pki/ was lost" in proc.stdout and "service-account tokens issued before stop working" in proc.stdout
    assert (root / "pki" / "ca.crt").read_bytes() != ca
    staged_lab._kube = None  # this test process's client still holds the old certificates
    works(lab_works, root)


@pytest.mark.lab
def test_a_lost_secrets_json_is_named_at_once(staged_lab):
    cli, cli_error, lab_processes, lab_works = _lab_tools()
    root = staged_lab.state.root
    assert cli("--state", str(root), "down").returncode == 0
    (root / "secrets.json").rename(root / "secrets.json.bak")
    try:
        msg = cli_error(cli("--state", str(root), "up"), "up", str(root / "secrets.json"), "does not exist")
        assert "PostgreSQL" in msg and "OpenBao" in msg
        assert not lab_processes(root)
    finally:
        (root / "secrets.json.bak").rename(root / "secrets.json")
    assert cli("--state", str(root), "up").returncode == 0
    works(lab_works, root)


@pytest.mark.lab
def test_a_database_moved_away_is_not_replaced_by_an_empty_one(staged_lab):
    cli, cli_error, lab_processes, lab_works = _lab_tools()
    root = staged_lab.state.root
    data = staged_lab.state.pg_data_dir()
    assert cli("--state", str(root), "down").returncode == 0
    data.rename(data.with_name(data.name + ".moved"))
    try:
        cli_error(cli("--state", str(root), "up"), "up", str(data), "labkit down --purge")
        assert not data.exists(), "no new, empty database was made"
        assert not lab_processes(root)
    finally:
        data.with_name(data.name + ".moved").rename(data)
    assert cli("--state", str(root), "up").returncode == 0
    works(lab_works, root)


@pytest.mark.lab
def test_a_deleted_pods_log_goes_with_it(staged_lab):
    """Pod log files do not pile up: the node agent removes a pod's log when the pod is deleted."""
    import time

    from labkit import static

    logs = staged_lab.state.path("logs", "pods")
    static.deploy_app(staged_lab)
    ns = staged_lab.names.static_ns
    mine = {p for p in logs.iterdir() if p.name.startswith(f"{ns}_")}
    assert mine, "the app's pod has a log file"
    static.remove_app(staged_lab)
    deadline = time.monotonic() + 60
    while any(p.exists() for p in mine) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(p.exists() for p in mine), "a deleted pod's log file is left behind"


@pytest.mark.lab
def test_purge_through_a_symlink_with_a_damaged_state_json(tmp_path):
    import tempfile

    from labkit.backends.local import LocalLab

    cli, _, lab_processes, _ = _lab_tools()
    real = Path(tempfile.mkdtemp(prefix="vsolab-purge-"))
    link = tmp_path / "link"
    link.symlink_to(real)
    lab = LocalLab(link)
    try:
        lab.up(progress=lambda m: None)
        pg = lab.state.pg_data_dir()
        (real / "state.json").write_text("")
        proc = cli("--state", str(link), "down", "--purge")
        assert proc.returncode == 0 and "charts" in _stopped(proc.stdout), proc.stdout + proc.stderr
        assert not real.exists() and not pg.exists() and not lab_processes(real)
    finally:
        LocalLab(real).down(purge=True)
