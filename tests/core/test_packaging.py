"""Packaging: one version for every distribution of the repository, in-repo dependencies that
admit it, and the MIT license shipped with each."""

from __future__ import annotations

import configparser
import email.parser
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
VERSION_FILE = ROOT / "VERSION"
LICENSE_FILE = ROOT / "LICENSE"
DISTRIBUTIONS = {
    "llm-proxy-db": "core",
    "llm-proxy-db-memory": "backends/memory",
    "llm-proxy-db-sqlite": "backends/sqlite",
    "llm-proxy-db-postgres": "backends/postgres",
    "llm-proxy-db-mysql": "backends/mysql",
    "llm-proxy-db-jsonfile": "examples/llm-proxy-db-jsonfile",
    "llm-proxy-fastapi": "examples/fastapi-proxy",
}
_SKIPPED_FOLDERS = {"build", "dist", "node_modules", "__pycache__"}


def _pyprojects() -> dict[Path, dict[str, Any]]:
    """Every pyproject.toml of the repository (not of virtualenvs, caches or builds)."""
    found = {}
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [
            name for name in subfolders if not name.startswith(".") and name not in _SKIPPED_FOLDERS
        ]
        if "pyproject.toml" in files:
            path = Path(folder) / "pyproject.toml"
            found[path] = tomllib.loads(path.read_text())
    return found


PYPROJECTS = _pyprojects()
PROJECTS = {path: data for path, data in PYPROJECTS.items() if "project" in data}


def _version() -> Version:
    return Version(VERSION_FILE.read_text().strip())


def _where(path: Path) -> str:
    return str(path.parent.relative_to(ROOT))


def test_version_file_holds_one_version() -> None:
    text = VERSION_FILE.read_text()
    assert text == f"{text.strip()}\n" and "\n" not in text.strip(), repr(text)
    assert str(_version()) == text.strip()  # normalized, as in the wheels' names


def test_every_distribution_is_found() -> None:
    names = {data["project"]["name"]: _where(path) for path, data in PROJECTS.items()}
    assert names == DISTRIBUTIONS


@pytest.mark.parametrize("path", sorted(PROJECTS), ids=_where)
def test_version_comes_from_the_version_file(path: Path) -> None:
    project, hatch = PROJECTS[path]["project"], PROJECTS[path]["tool"]["hatch"]["version"]
    assert "version" not in project and "version" in project.get("dynamic", [])
    assert (path.parent / hatch["path"]).resolve() == VERSION_FILE
    # Hatchling's regex source: the named group ``version``, searched line by line.
    match = re.search(hatch["pattern"], VERSION_FILE.read_text(), re.MULTILINE)
    assert match is not None and Version(match.group("version")) == _version()


@pytest.mark.parametrize("path", sorted(PROJECTS), ids=_where)
def test_in_repo_dependencies_admit_the_version(path: Path) -> None:
    project = PROJECTS[path]["project"]
    requirements = [*project.get("dependencies", [])]
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(extra)
    version = _version()
    for text in requirements:
        requirement = Requirement(text)
        if canonicalize_name(requirement.name) not in DISTRIBUTIONS:
            continue
        assert str(requirement.specifier), f"{_where(path)}: {text!r} pins no version range"
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{_where(path)}: {text!r} does not admit {version} (the VERSION file)"
        )


def test_backends_depend_on_the_core() -> None:
    for path, data in PROJECTS.items():
        if data["project"]["name"] == "llm-proxy-db":
            continue
        names = {canonicalize_name(Requirement(r).name) for r in data["project"]["dependencies"]}
        assert "llm-proxy-db" in names, _where(path)


@pytest.mark.parametrize("path", sorted(PROJECTS), ids=_where)
def test_license_is_the_repository_one(path: Path) -> None:
    project = PROJECTS[path]["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    # A copy, not a link: hatchling takes no license file from outside the project folder,
    # and a link would reach outside an sdist (a wheel built from it would have no license).
    copy = path.parent / "LICENSE"
    assert copy.is_file() and not copy.is_symlink(), f"{_where(path)}/LICENSE: not a plain file"
    assert copy.read_bytes() == LICENSE_FILE.read_bytes(), (
        f"{_where(path)}/LICENSE differs from the repository's LICENSE: copy it again"
    )
    assert "Copyright (c) 2026 The llm-proxy-db authors" in LICENSE_FILE.read_text()


def _can_import(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@pytest.mark.skipif(not _can_import("build"), reason="needs `build` (pip install build)")
def test_a_wheel_built_from_the_sdist_has_the_version_and_the_license(tmp_path: Path) -> None:
    """What ``python -m build backends/memory`` does: an sdist, then a wheel from that sdist
    alone (no VERSION beside it: hatchling takes the version from the sdist's PKG-INFO)."""
    # With the env's hatchling (tox provides it), no build env: under a second. Without it,
    # build makes two envs with hatchling from the package index: a few seconds.
    isolation = ["--no-isolation"] if _can_import("hatchling") else []
    done = subprocess.run(
        [sys.executable, "-m", "build", *isolation, "--outdir", str(tmp_path), "backends/memory"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Building wheel from sdist" in done.stdout + done.stderr
    version, license_text = _version(), LICENSE_FILE.read_bytes()
    (sdist,) = tmp_path.glob("*.tar.gz")
    (wheel,) = tmp_path.glob("*.whl")
    assert sdist.name == f"llm_proxy_db_memory-{version}.tar.gz"
    assert wheel.name == f"llm_proxy_db_memory-{version}-py3-none-any.whl"
    with tarfile.open(sdist) as tar:
        member = tar.getmember(f"llm_proxy_db_memory-{version}/LICENSE")
        assert member.isfile(), "the sdist's LICENSE is a link"
        extracted = tar.extractfile(member)
        assert extracted is not None and extracted.read() == license_text
    with zipfile.ZipFile(wheel) as whl:
        info = f"llm_proxy_db_memory-{version}.dist-info"
        assert whl.read(f"{info}/licenses/LICENSE") == license_text
        metadata = email.parser.BytesParser().parsebytes(whl.read(f"{info}/METADATA"))
    assert Version(metadata["Version"]) == version
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]


def _installed(name: str) -> importlib.metadata.Distribution | None:
    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_installed_distributions_are_this_version_with_the_license(name: str) -> None:
    dist = _installed(name)
    if dist is None:
        pytest.skip(f"{name} is not installed")
    assert Version(dist.version) == _version(), f"{name} {dist.version}: reinstall it"
    assert dist.metadata["License-Expression"] == "MIT"
    licenses = [f for f in dist.files or [] if f.parts[-2:] == ("licenses", "LICENSE")]
    assert len(licenses) == 1, dist.files
    assert licenses[0].read_text() == LICENSE_FILE.read_text()


def _pins(deps: str) -> dict[str, str]:
    return dict(re.findall(r"^\s*([A-Za-z0-9_.-]+)==(\S+)\s*$", deps, re.MULTILINE))


def test_lint_and_type_tools_are_pinned_alike_in_tox_and_pre_commit() -> None:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    ruff = _pins(tox["testenv:lint"]["deps"])["ruff"]
    mypy = _pins(tox["testenv:type"]["deps"])["mypy"]
    hooks = (ROOT / ".pre-commit-config.yaml").read_text()
    revs = re.findall(r"repo: https://github.com/astral-sh/ruff-pre-commit\s+rev: v(\S+)", hooks)
    assert revs == [ruff]
    assert re.findall(r"- mypy==(\S+)", hooks) == [mypy]


def test_the_pre_commit_mypy_hook_runs_the_commands_of_tox_type() -> None:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    commands = [line.strip() for line in tox["testenv:type"]["commands"].splitlines()]
    hooks = (ROOT / ".pre-commit-config.yaml").read_text()
    match = re.search(r"- id: mypy\n.*?entry: >-\n(.*?)\n\s+language:", hooks, re.DOTALL)
    assert match is not None, "the mypy hook's entry is no longer a folded bash -c script"
    script = " ".join(match.group(1).split())
    runs = [part.strip().strip("'") for part in script.split(";")]
    assert [run for run in runs if run.startswith("mypy ")] == [c for c in commands if c]
