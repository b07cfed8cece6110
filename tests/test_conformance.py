"""Run the shared conformance suite against the backend named by ``DB_DRIVER``.

``DB_DRIVER`` defaults to ``memory``. To test another backend, add a config builder to
``CONFIG_BUILDERS``: it gets a fresh folder and the fixture request (for finalizers) and
returns the ``FullConfig`` of a new, empty, isolated database; reopening a database opens
the same config again. A builder may name a variant rather than a driver
(``postgres-coalesced``: PostgreSQL with ``coalesce_increments``); ``SERVER_FIXTURES``
names the server fixture a builder needs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

from llm_proxy_db import DB, FullConfig, new_from_full_config
from llm_proxy_db.testing import BackendFactory, StoreConformance
from tests.fixtures.mysql import MySQLServer
from tests.fixtures.postgres import PostgresServer

pytest_plugins = ["pytester"]

ConfigBuilder = Callable[[Path, pytest.FixtureRequest], FullConfig]


def _memory_config(tmp_path: Path, request: pytest.FixtureRequest) -> FullConfig:
    return FullConfig(driver="memory")


def _sqlite_config(tmp_path: Path, request: pytest.FixtureRequest) -> FullConfig:
    return FullConfig(driver="sqlite", path=str(tmp_path / "db.sqlite"))


def _postgres_config(tmp_path: Path, request: pytest.FixtureRequest) -> FullConfig:
    # A fresh schema of the session's scratch database (tests/fixtures/postgres.py); the
    # database, with every schema, is dropped at the end of the session.
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return FullConfig(driver="postgres", database_url=server.new_schema_url(), max_idle_conns=1)


def _postgres_coalesced_config(tmp_path: Path, request: pytest.FixtureRequest) -> FullConfig:
    # As postgres, with concurrent increments and authorizations combined (sql/_coalesce.py).
    return attrs.evolve(_postgres_config(tmp_path, request), coalesce_increments=True)


def _mysql_config(tmp_path: Path, request: pytest.FixtureRequest) -> FullConfig:
    # A fresh database on the test server (tests/fixtures/mysql.py); every database of the
    # session is dropped at its end.
    server: MySQLServer = request.getfixturevalue("mysql_server")
    return FullConfig(driver="mysql", database_url=server.new_database_url(), max_idle_conns=1)


CONFIG_BUILDERS: dict[str, ConfigBuilder] = {
    "memory": _memory_config,
    "sqlite": _sqlite_config,
    "postgres": _postgres_config,
    "postgres-coalesced": _postgres_coalesced_config,
    "mysql": _mysql_config,
}

SERVER_FIXTURES: dict[str, str] = {
    "postgres": "postgres_server",
    "postgres-coalesced": "postgres_server",
    "mysql": "mysql_server",
}
"""The session fixture of the server a builder's databases live on, by builder name."""

DRIVER = os.environ.get("DB_DRIVER", "").strip().lower() or "memory"


class TestConformance(StoreConformance):
    @pytest.fixture
    def backend_factory(self, tmp_path: Path, request: pytest.FixtureRequest) -> BackendFactory:
        if DRIVER not in CONFIG_BUILDERS:
            pytest.fail(f"no config builder for DB_DRIVER={DRIVER!r} in {__file__}")
        build = CONFIG_BUILDERS[DRIVER]
        made = 0

        def factory(*, reopen: DB | None = None) -> DB:
            nonlocal made
            if reopen is not None:
                return new_from_full_config(reopen.config)
            made += 1
            folder = tmp_path / f"db{made}"
            folder.mkdir()
            return new_from_full_config(build(folder, request))

        return factory


# -- the suite's own machinery: strict expected failures, capability skips, the override --

# A real (memory) backend claiming a passing test broken; and a fake that is not a database.
_CLAIMS_BROKEN = """
import pytest
from llm_proxy_db import FullConfig, new_from_full_config
from llm_proxy_db.testing import StoreConformance

class TestClaims(StoreConformance):
    expected_failures = {"test_health_check_when_open": "claimed broken"}

    @pytest.fixture
    def backend_factory(self):
        return lambda *, reopen=None: new_from_full_config(FullConfig(driver="memory"))
"""

_FAKE_BACKEND = """
import types
import pytest
from llm_proxy_db.testing import StoreConformance

class TestFake(StoreConformance):
    expected_failures = {"test_data_survives_reopen": "claimed broken"}

    @pytest.fixture
    def backend_factory(self):
        spec = types.SimpleNamespace(name="fake")
        return lambda *, reopen=None: types.SimpleNamespace(
            capabilities=frozenset({'persistent'}), backend_spec=spec, close=lambda: None
        )
"""


def _run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run a pytester file in process, without the plugins that only slow it down."""
    plugins = ("no:cacheprovider", "no:hypothesispytest", "no:benchmark")
    return pytester.runpytest_inprocess(*(arg for p in plugins for arg in ("-p", p)), *args)


def test_expected_failure_that_passes_fails_the_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_claims=_CLAIMS_BROKEN)
    result = _run_inner(pytester, "-rs", "-k", "test_health_check_when_open or survives")
    # The claimed-broken test passes: a strict xfail turns that into a failure. The
    # capability tests skip with a reason naming the backend and the capability.
    result.assert_outcomes(failed=1, skipped=2)
    result.stdout.fnmatch_lines(["*XPASS(strict)*claimed broken*"])
    result.stdout.fnmatch_lines(["*backend 'memory' lacks the capability 'persistent'*"])


def test_expected_failure_that_fails_is_xfailed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_fake=_FAKE_BACKEND)
    result = _run_inner(pytester, "-k", "data_survives_reopen")
    result.assert_outcomes(xfailed=1)


def test_base_class_collects_nothing_and_demands_override(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="from llm_proxy_db.testing import StoreConformance\n",
        test_lazy=(
            "from llm_proxy_db.testing import StoreConformance\n"
            "class TestLazy(StoreConformance):\n"
            "    pass\n"
        ),
    )
    result = _run_inner(pytester, "-k", "test_health_check_when_open")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*must override the `backend_factory` fixture*"])
