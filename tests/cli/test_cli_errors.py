"""Bad configuration and input: one line on stderr, the right exit code, no traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .conftest import API_KEY, Cli


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


def test_out_of_range_values_are_usage_errors_that_change_nothing(cli: Cli) -> None:
    project = cli("--json", "project", "create", "p", "--api-key-stdin", input=API_KEY + "\n")
    assert project.json()["name"] == "p"
    too_long = cli("token", "create", "--project", "p", "--expires-in", "99999999d", code=2)
    assert "100 years" in too_long.err
    assert "100 years" in cli("audit", "list", "--since", "99999999d", code=2).err
    assert "--since" in cli("audit", "list", "--since", "999999999999d", code=2).err
    both = cli("--json", "token", "create", "--project", "p", "--quiet", code=2)
    assert "--quiet and --json" in both.err
    assert cli("--json", "token", "list").json() == []
    assert cli("--json", "audit", "count", "--action", "token.create").json() == {"count": 0}
