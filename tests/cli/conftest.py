"""Fixtures for the command-line tests: the real console script, in a subprocess.

The database the subprocesses use comes from ONE fixture, ``cli_env``: SQLite in the test's
folder. The ``server_smoke`` tests also run on PostgreSQL and MySQL: with ``DB_DRIVER=postgres``
or ``DB_DRIVER=mysql`` in the run's environment, ``cli_env`` sets that driver and a
``DATABASE_URL`` (a fresh schema, or database, per test) instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

from llm_proxy_db import DB, config_from_env, new_from_full_config
from tests.fixtures.mysql import MySQLServer
from tests.fixtures.postgres import PostgresServer

API_KEY = "sk-upstream-SECRET-0123456789abcdef"
"""The upstream key every test project gets; no CLI output may ever contain it."""

_CONFIG_PREFIXES = ("DB_", "DATABASE_", "LLM_PROXY_DB_")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "server_smoke: CLI test that also runs against PostgreSQL and MySQL (cli_env switches"
        " backend)",
    )


@attrs.frozen
class Result:
    """What one run of the command line did."""

    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def cli_env(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment of every CLI subprocess: the database settings live here only.

    SQLite in the test's folder; with ``DB_DRIVER=postgres`` in the test run's own
    environment (the tox ``postgres`` env), a fresh schema on the test server instead; with
    ``DB_DRIVER=mysql`` (the tox ``mysql`` env), a fresh database on the MySQL test server.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CONFIG_PREFIXES)}
    env["PYTHONIOENCODING"] = "utf-8"
    driver = os.environ.get("DB_DRIVER", "").strip().lower()
    if driver == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        env.update(
            DB_DRIVER="postgres",
            DATABASE_URL=server.new_schema_url(),
            LLM_PROXY_DB_LOAD_PLUGINS="postgres,memory",
        )
        return env
    if driver == "mysql":
        mysql: MySQLServer = request.getfixturevalue("mysql_server")
        env.update(
            DB_DRIVER="mysql",
            DATABASE_URL=mysql.new_database_url(),
            LLM_PROXY_DB_LOAD_PLUGINS="mysql,memory",
        )
        return env
    env.update(
        DB_DRIVER="sqlite",
        DATABASE_PATH=str(tmp_path / "cli.db"),
        # Load only the backends these tests use.
        LLM_PROXY_DB_LOAD_PLUGINS="sqlite,memory",
    )
    return env


class Cli:
    """Runs ``python -m llm_proxy_db.cli ARGS`` and checks what every run must satisfy:
    the expected exit code, no traceback (without --debug), and on failure exactly one
    ``error: ...`` line on stderr."""

    def __init__(self, env: Mapping[str, str], cwd: Path) -> None:
        self.env = dict(env)
        self.cwd = cwd
        self.runs: list[Result] = []

    def __call__(
        self,
        *args: str,
        code: int = 0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        command: list[str] | None = None,
    ) -> Result:
        argv = command or [sys.executable, "-m", "llm_proxy_db.cli"]
        completed = subprocess.run(
            [*argv, *args],
            input=input or "",
            capture_output=True,
            text=True,
            encoding="utf-8",
            env={**self.env, **(env or {})},
            cwd=self.cwd,
            timeout=60,
        )
        result = Result(tuple(args), completed.returncode, completed.stdout, completed.stderr)
        self.runs.append(result)
        described = f"{args}: exit {result.code}\nstdout: {result.out}\nstderr: {result.err}"
        assert result.code == code, described
        if "--debug" not in args:
            assert "Traceback" not in result.err, described
        if code != 0 and "--debug" not in args:
            assert result.err.startswith("error: "), described
            assert result.err.count("\n") == 1, described
        return result


@pytest.fixture
def cli(cli_env: dict[str, str], tmp_path: Path) -> Cli:
    """The command line, run in a subprocess against ``cli_env``'s database."""
    return Cli(cli_env, tmp_path)


@pytest.fixture
def db(cli_env: dict[str, str]) -> Iterator[DB]:
    """The same database the subprocesses use, opened in-process (setup and checks)."""
    with new_from_full_config(config_from_env(cli_env)) as opened:
        yield opened


@pytest.fixture
def name() -> str:
    """A project name no other test uses (a shared PostgreSQL database stays tidy)."""
    return f"demo-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def project(cli: Cli, name: str) -> dict[str, Any]:
    """A project created through the CLI, as its JSON document."""
    document: dict[str, Any] = cli(
        "--json",
        "project",
        "create",
        name,
        "--api-key-env",
        "UPSTREAM_KEY",
        env={"UPSTREAM_KEY": API_KEY},
    ).json()
    return document
