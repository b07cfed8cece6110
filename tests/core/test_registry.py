"""The backend registry: entry-point discovery, selection by name, environment controls."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

import llm_proxy_db
from llm_proxy_db import (
    MIN_STORAGE_API_VERSION,
    STORAGE_API_VERSION,
    BackendNotFoundError,
    BackendSpec,
    Capabilities,
    ConfigError,
    FullConfig,
    list_backends,
    new_from_full_config,
    register_backend,
    unregister_backend,
)
from llm_proxy_db._registry import _supported_versions, reset_registry

ROOT = Path(__file__).resolve().parents[2]

PLUGIN = """
from llm_proxy_db import BackendSpec, hookimpl

def _open(config):
    from llm_proxy_db_memory import MemoryBackend
    return MemoryBackend()

@hookimpl
def llm_proxy_db_backends():
    yield BackendSpec(name={name!r}, api_version={api_version}, factory=_open)
"""


def install_fake(
    site: Path,
    dist: str,
    name: str,
    *,
    body: str | None = None,
    api_version: str = str(STORAGE_API_VERSION),
) -> None:
    """Lay out a distribution (dist-info + module) that declares a backend entry point."""
    module = f"{dist.replace('-', '_')}_plugin"
    (site / f"{module}.py").write_text(
        body if body is not None else PLUGIN.format(name=name, api_version=api_version)
    )
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[llm_proxy_db.backends]\n{name} = {module}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for fake distributions; the registry reloads around the test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("LLM_PROXY_DB_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("LLM_PROXY_DB_LOAD_PLUGINS", raising=False)
    reset_registry()
    yield tmp_path
    monkeypatch.undo()
    reset_registry()


def by_name() -> dict[str, llm_proxy_db.BackendInfo]:
    return {info.name: info for info in list_backends()}


def test_installed_backend_is_listed_with_its_distribution(site: Path) -> None:
    install_fake(site, "fake-backend", "fake")
    info = by_name()["fake"]
    assert (info.distribution, info.version, info.error) == ("fake-backend", "1.0", None)
    assert info.spec is not None and info.spec.api_version == STORAGE_API_VERSION
    with new_from_full_config(FullConfig(driver="FAKE")) as db:  # names are case-insensitive
        assert db.backend_spec.name == "fake"


def test_broken_plugin_does_not_break_the_others(site: Path) -> None:
    install_fake(site, "broken-backend", "broken", body="raise ImportError('no driver here')")
    install_fake(site, "fake-backend", "fake")
    infos = by_name()
    assert infos["broken"].spec is None
    assert "no driver here" in (infos["broken"].error or "")
    new_from_full_config(FullConfig(driver="fake")).close()
    with pytest.raises(ConfigError, match="broken-backend") as excinfo:
        new_from_full_config(FullConfig(driver="broken"))
    assert "no driver here" in str(excinfo.value)


def test_two_distributions_claiming_one_name_is_an_error_naming_both(site: Path) -> None:
    install_fake(site, "first-backend", "twin")
    install_fake(site, "second-backend", "twin")
    with pytest.raises(ConfigError) as excinfo:
        new_from_full_config(FullConfig(driver="twin"))
    assert "first-backend" in str(excinfo.value)
    assert "second-backend" in str(excinfo.value)
    assert "twin" in by_name() and by_name()["twin"].error


SUPPORTED = "supports " + (
    f"version {STORAGE_API_VERSION}"
    if int(MIN_STORAGE_API_VERSION) == int(STORAGE_API_VERSION)
    else f"versions {MIN_STORAGE_API_VERSION} to {STORAGE_API_VERSION}"
)


@pytest.mark.parametrize(
    ("low", "high", "words"),
    [(2, 2, "version 2"), (2, 3, "versions 2 to 3"), (1, 4, "versions 1 to 4")],
)
def test_the_supported_range_is_worded_for_one_version_or_several(
    low: int, high: int, words: str
) -> None:
    assert _supported_versions(low, high) == words


def test_backend_for_a_newer_api_is_refused(site: Path) -> None:
    install_fake(site, "future-backend", "future", api_version=str(STORAGE_API_VERSION + 1))
    info = by_name()["future"]
    assert info.spec is None and "upgrade llm-proxy-db" in (info.error or "")
    with pytest.raises(ConfigError, match="storage API version") as excinfo:
        new_from_full_config(FullConfig(driver="future"))
    message = str(excinfo.value)
    assert "'future' (distribution future-backend)" in message
    assert f"written for storage API version {STORAGE_API_VERSION + 1}" in message
    assert SUPPORTED in message and message.endswith("upgrade llm-proxy-db")


@pytest.mark.parametrize("old", [MIN_STORAGE_API_VERSION - 1, 0])
def test_backend_for_an_api_older_than_the_minimum_is_refused(site: Path, old: int) -> None:
    dist = f"ancient{old}-backend"  # a module name of its own: imported modules stay cached
    install_fake(site, dist, "ancient", api_version=str(old))
    info = by_name()["ancient"]
    assert info.spec is None and "upgrade the backend" in (info.error or "")
    assert by_name()["memory"].spec is not None  # the others still load
    with pytest.raises(ConfigError) as excinfo:
        new_from_full_config(FullConfig(driver="ancient"))
    message = str(excinfo.value)
    assert f"'ancient' (distribution {dist})" in message
    assert f"written for storage API version {old}," in message
    assert SUPPORTED in message and message.endswith("upgrade the backend")


def test_every_supported_api_version_is_accepted(site: Path) -> None:
    from llm_proxy_db_memory import MemoryBackend

    assert 1 <= MIN_STORAGE_API_VERSION <= STORAGE_API_VERSION
    for version in range(MIN_STORAGE_API_VERSION, STORAGE_API_VERSION + 1):
        spec = BackendSpec(
            name=f"v{version}", api_version=version, factory=lambda config: MemoryBackend()
        )
        register_backend(spec)
        try:
            assert by_name()[f"v{version}"].spec is spec
        finally:
            unregister_backend(spec.name)


def _api_version_arguments(path: Path) -> list[ast.expr]:
    return [
        keyword.value
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        for keyword in node.keywords
        if keyword.arg == "api_version"
    ]


PLUGIN_MODULES = sorted(
    [*ROOT.glob("backends/*/src/*/_plugin.py"), *ROOT.glob("examples/*/src/*/_plugin.py")]
)


@pytest.mark.parametrize("path", PLUGIN_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_in_repo_backends_declare_a_literal_supported_api_version(path: Path) -> None:
    # A backend states the version it was written for; reading the core's constant would
    # claim support for every future interface change.
    arguments = _api_version_arguments(path)
    assert arguments, f"{path} passes no api_version"
    for value in arguments:
        assert isinstance(value, ast.Constant) and isinstance(value.value, int), ast.dump(value)
        assert MIN_STORAGE_API_VERSION <= value.value <= STORAGE_API_VERSION


def test_in_repo_plugin_modules_are_all_found() -> None:
    names = {path.parts[-4] for path in PLUGIN_MODULES}
    assert names >= {"memory", "sqlite", "postgres", "llm-proxy-db-jsonfile"}


def test_unknown_driver_lists_installed_and_suggests_a_close_match(site: Path) -> None:
    with pytest.raises(BackendNotFoundError) as excinfo:
        new_from_full_config(FullConfig(driver="memroy"))
    message = str(excinfo.value)
    assert "'memroy'" in message and "did you mean 'memory'" in message
    assert "memory" in message.split("installed:")[1]
    assert isinstance(excinfo.value, ConfigError)


def test_disable_plugins_skips_listed_backends(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(site, "fake-backend", "fake")
    monkeypatch.setenv("LLM_PROXY_DB_DISABLE_PLUGINS", " fake , other")
    reset_registry()
    info = by_name()["fake"]
    assert info.spec is None and "LLM_PROXY_DB_DISABLE_PLUGINS" in (info.skipped or "")
    assert by_name()["memory"].spec is not None
    with pytest.raises(BackendNotFoundError, match="LLM_PROXY_DB_DISABLE_PLUGINS"):
        new_from_full_config(FullConfig(driver="fake"))


def test_load_plugins_is_an_allowlist_that_built_ins_obey(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_fake(site, "fake-backend", "fake")
    monkeypatch.setenv("LLM_PROXY_DB_LOAD_PLUGINS", "fake")
    reset_registry()
    infos = by_name()
    assert infos["fake"].spec is not None
    assert infos["memory"].spec is None
    assert "LLM_PROXY_DB_LOAD_PLUGINS" in (infos["memory"].skipped or "")
    with pytest.raises(BackendNotFoundError):
        new_from_full_config(FullConfig(driver="memory"))


def test_empty_controls_mean_no_restriction(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_PROXY_DB_LOAD_PLUGINS", "")
    monkeypatch.setenv("LLM_PROXY_DB_DISABLE_PLUGINS", " ")
    reset_registry()
    assert by_name()["memory"].spec is not None


def test_disabled_plugin_is_not_imported(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(site, "loud-backend", "loud", body="raise RuntimeError('imported!')")
    monkeypatch.setenv("LLM_PROXY_DB_DISABLE_PLUGINS", "loud")
    reset_registry()
    info = by_name()["loud"]
    assert info.error is None and info.skipped


def test_register_backend_in_code(site: Path) -> None:
    from llm_proxy_db_memory import MemoryBackend

    spec = BackendSpec(
        name="inline", api_version=STORAGE_API_VERSION, factory=lambda config: MemoryBackend()
    )
    register_backend(spec)
    try:
        with pytest.raises(ConfigError, match="already registered"):
            register_backend(spec)
        info = by_name()["inline"]
        assert info.distribution is None and info.spec is spec
        with new_from_full_config(FullConfig(driver="inline")) as db:
            assert db.capabilities == Capabilities()
    finally:
        unregister_backend("inline")
    assert "inline" not in by_name()


def test_register_backend_checks_the_spec(site: Path) -> None:
    with pytest.raises(ConfigError, match="not a BackendSpec"):
        register_backend("memory")  # type: ignore[arg-type]
    future = BackendSpec(
        name="f",
        api_version=STORAGE_API_VERSION + 1,
        factory=lambda config: None,  # type: ignore[arg-type,return-value]
    )
    with pytest.raises(ConfigError, match="storage API version"):
        register_backend(future)
    past = attrs.evolve(future, api_version=MIN_STORAGE_API_VERSION - 1)
    with pytest.raises(ConfigError, match=r"\(register_backend\(\)\).*upgrade the backend"):
        register_backend(past)
    for bad in ("2", 2.0, None, True):
        with pytest.raises(ConfigError, match="api_version must be an integer"):
            register_backend(attrs.evolve(future, api_version=bad))  # type: ignore[arg-type]
    assert {"f"}.isdisjoint(by_name())


def test_entry_point_modules_are_cheap_to_import() -> None:
    # Listing backends must not import a driver: psycopg loads only when postgres opens.
    code = textwrap.dedent(
        """
        import json, sys
        import llm_proxy_db
        llm_proxy_db.list_backends()
        drivers = ("psycopg", "psycopg_pool", "sqlite3")
        print(json.dumps(sorted(m for m in drivers if m in sys.modules)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []


def test_capabilities_are_a_small_frozen_set_of_flags() -> None:
    caps = Capabilities(persistent=True, migrations=True)
    assert "persistent" in caps and "multi_process" not in caps and "bogus" not in caps
    assert list(caps) == ["persistent", "migrations"]
    with pytest.raises(AttributeError):
        caps.persistent = False  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "Mine"}, "lower case"),
        ({"name": ""}, "lower case"),
        ({"capabilities": Capabilities(migrations=True)}, "'migrations' capability"),
    ],
)
def test_specs_are_checked_when_registered(changes: dict[str, object], message: str) -> None:
    from llm_proxy_db_memory import MemoryBackend

    fields: dict[str, object] = {
        "name": "mine",
        "api_version": STORAGE_API_VERSION,
        "factory": lambda config: MemoryBackend(),
        **changes,
    }
    with pytest.raises(ConfigError, match=message):
        register_backend(BackendSpec(**fields))  # type: ignore[arg-type]
