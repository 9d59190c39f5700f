"""binder/: repo2docker files that build an image with the lab's binaries, through `labkit install`."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from labkit import cli

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
SCRIPTS = ["postBuild", "start"]


def commands(path: Path) -> list[str]:
    """The script's command lines: no comments, no blank lines."""
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]


def entry_point() -> str:
    """The console script pyproject declares for labkit's CLI (`labkit = labkit.cli:main`)."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (name,) = [n for n, target in scripts.items() if target == "labkit.cli:main"]
    return name


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_is_executable(name: str) -> None:
    path = BINDER / name
    assert path.read_text().startswith("#!/bin/bash\n")
    assert os.access(path, os.X_OK), f"binder/{name} is not executable on disk"
    if shutil.which("git") and (ROOT / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-s", f"binder/{name}"], cwd=ROOT, capture_output=True, text=True).stdout
        if out:  # tracked: git must record it executable, or a clone gets a 644 file repo2docker will not run
            assert out.split()[0] == "100755", f"git records binder/{name} as {out.split()[0]}, not 100755"


def test_postbuild_stops_on_the_first_error() -> None:
    cmds = commands(BINDER / "postBuild")
    assert cmds[0].startswith("set -e") or cmds[0].startswith("set -euo"), "postBuild must `set -e` before anything else"


def test_postbuild_calls_the_install_entry_point() -> None:
    """One line runs `labkit install`, parsed by labkit's own CLI parser, so a renamed flag fails here."""
    name = entry_point()
    calls = []
    for line in commands(BINDER / "postBuild"):
        words = shlex.split(line)
        while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefixes
            words.pop(0)
        if words[:2] == [name, "install"]:
            calls.append(words)
    assert len(calls) == 1, f"postBuild must call `{name} install` once, found {calls}"
    args = cli.build_parser().parse_args(calls[0][1:])
    assert args.func is cli.cmd_install


def test_postbuild_holds_no_install_logic_of_its_own() -> None:
    text = "\n".join(commands(BINDER / "postBuild"))
    for word in ("curl", "wget", "go build", "go install", "tar ", "unzip", "sha256sum", "pip install"):
        assert word not in text, f"postBuild runs {word!r}: that belongs in labkit install"


def test_postbuild_asks_for_release_binaries() -> None:
    """Binder's build pod cannot compile kube-apiserver: prebuilt first (build stays the fallback)."""
    line = next(ln for ln in commands(BINDER / "postBuild") if f"{entry_point()} install" in ln)
    assert "VSOLAB_INSTALL_SOURCE=prebuilt" in line or "--source prebuilt" in line


def test_start_ends_with_exec() -> None:
    assert commands(BINDER / "start")[-1] == 'exec "$@"'


def test_start_is_quick_and_passes_the_command_through(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "NB_PYTHON_PREFIX": str(tmp_path / "env")}
    t0 = time.monotonic()
    out = subprocess.run([str(BINDER / "start"), "sh", "-c", 'echo "$VSOLAB_CACHE|$0|$1"', "a b", "c"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - t0 < 5
    assert out.stdout.strip() == f"{tmp_path}/env/share/vsolab|a b|c"


def test_start_keeps_a_cache_the_user_chose(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "NB_PYTHON_PREFIX": "/srv/conda/envs/notebook", "VSOLAB_CACHE": str(tmp_path)}
    out = subprocess.run([str(BINDER / "start"), "sh", "-c", 'echo "$VSOLAB_CACHE"'], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(tmp_path)


def test_binder_environment_matches_the_root_one() -> None:
    """A copy of ../environment.yml; the only difference is the pip path, which conda reads relative to the file."""
    root, binder = (ROOT / "environment.yml"), (BINDER / "environment.yml")
    a, b = yaml.safe_load(root.read_text()), yaml.safe_load(binder.read_text())
    assert a["channels"] == b["channels"]
    assert kit_install(root) == kit_install(binder) == (ROOT, "[test]"), "both must install this repository's kit, same extras"
    for env in (a, b):  # with that one path set aside, the two files must say the same
        for dep in env["dependencies"]:
            if isinstance(dep, dict):
                dep["pip"] = ["<the kit>"]
    assert a == b


def kit_install(env_file: Path) -> tuple[Path, str]:
    """The directory (relative to the file, as conda resolves it) and extras of the one pip line."""
    (pip,) = [d["pip"] for d in yaml.safe_load(env_file.read_text())["dependencies"] if isinstance(d, dict)]
    (line,) = pip
    target = line.removeprefix("-e").strip()
    path, _, extras = target.partition("[")
    return (env_file.parent / path).resolve(), f"[{extras}" if extras else ""


def test_no_root_config_is_silently_ignored() -> None:
    """With binder/ present, repo2docker ignores root config files: none may exist that it would need."""
    for name in ("apt.txt", "postBuild", "start", "requirements.txt", "runtime.txt", "Dockerfile"):
        assert not (ROOT / name).exists(), f"{name} at the root is ignored by repo2docker because binder/ exists; move it"
