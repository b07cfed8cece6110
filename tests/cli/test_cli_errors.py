"""Bad configuration and input: one line on stderr, the right exit code, no traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .conftest import Cli


def test_bad_configuration_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    folder = cli("token", "list", env={"DATABASE_PATH": str(tmp_path)}, code=2)
    assert folder.err.startswith(f"error: DATABASE_PATH '{tmp_path}' is a directory")

    driver = cli("--driver", "nosuchdb", "project", "list", code=2)
    assert "no backend named 'nosuchdb'" in driver.err
    cli("stats", env={"DATABASE_POOL_SIZE": "many"}, code=2)

    document = cli("--json", "--database-path", str(tmp_path), "stats", code=2).json()
    assert document["error"]["type"] == "ConfigError" and document["error"]["exit_code"] == 2

    debug = cli("--debug", "--driver", "nosuchdb", "stats", code=2)
    assert "Traceback" in debug.err and debug.err.splitlines()[-1].startswith("error: ")


def test_backends_needs_no_database(cli: Cli) -> None:
    broken = {"DB_DRIVER": "nosuchdb", "DATABASE_POOL_SIZE": "many"}
    listed: list[dict[str, Any]] = cli("backends", "--json", env=broken).json()
    assert {b["name"] for b in listed} >= {"sqlite", "memory"}


def test_usage_errors_name_the_fix(cli: Cli) -> None:
    unknown = cli("tokens", code=2)
    assert unknown.err == "error: No such command 'tokens'; did you mean 'token'?\n"
    missing = cli("token", "create", code=2)
    assert "--project" in missing.err and "llm-proxy-db token create --help" in missing.err
