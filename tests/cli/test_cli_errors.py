"""Bad configuration and input: one line on stderr, the right exit code, no traceback; and
the hint after each message, chosen by the error's class and attributes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest

import llm_proxy_db
from llm_proxy_db import (
    ConfigError,
    DatabaseError,
    MigrationError,
    ProjectInactiveError,
    ProjectNotFoundError,
    TokenExistsError,
    TokenExpiredError,
    TokenInactiveError,
    TokenLimitReachedError,
    TransientError,
)
from llm_proxy_db.cli._app import _describe, _public_type
from llm_proxy_db.cli._migrate import NoMigrationsError
from llm_proxy_db.cli._usage import HintedBadParameter, HintedUsageError

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


def _library_errors() -> list[type[DatabaseError]]:
    return [
        value
        for name in llm_proxy_db.__all__
        if isinstance(value := getattr(llm_proxy_db, name), type)
        and issubclass(value, DatabaseError)
    ]


@pytest.mark.parametrize("kind", _library_errors(), ids=lambda kind: kind.__name__)
def test_every_library_error_gets_its_message_then_a_hint(kind: type[DatabaseError]) -> None:
    code, line = _describe(kind("what happened; said by the library"))
    assert code == (2 if issubclass(kind, ConfigError) else 1)
    message, hint = line.split("; said by the library; ")
    assert message == "what happened" and hint  # the message as is, the hint always after it
    assert _public_type(kind("x")) == kind.__name__


PROJECT = "6f1c7c1e-0b7e-4a55-9d4f-2f1d9d6f1b2a"
MASKED = "sk-Ab...xyz9"


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            TokenLimitReachedError(
                "token sk-Ab...xyz9 has used all of its 3 requests",
                masked_token=MASKED,
                project_id=PROJECT,
                max_requests=3,
            ),
            "token sk-Ab...xyz9 has used all of its 3 requests; reset its count with "
            "'llm-proxy-db token reset-usage sk-Ab...xyz9' or issue a new token with "
            f"'llm-proxy-db token create --project {PROJECT}'",
        ),
        (
            TokenLimitReachedError("used up"),
            "used up; reset its count with 'llm-proxy-db token reset-usage' or issue a new "
            "token with 'llm-proxy-db token create'",
        ),
        (
            TokenExpiredError("expired", masked_token=MASKED, project_id=PROJECT),
            f"expired; issue a new token with 'llm-proxy-db token create --project {PROJECT}'",
        ),
        (
            TokenInactiveError("revoked"),
            "revoked; issue a new token with 'llm-proxy-db token create'",
        ),
        (
            ProjectInactiveError("inactive", project_id=PROJECT),
            f"inactive; activate the project with 'llm-proxy-db project activate {PROJECT}'",
        ),
        (
            ProjectInactiveError("inactive", project_id="my project"),
            "inactive; activate the project with 'llm-proxy-db project activate 'my project''",
        ),
        (
            # The class decides, not the text: a message naming a token changes nothing.
            ProjectNotFoundError("no token matches 'sk-Ab'", key="x"),
            "no token matches 'sk-Ab'; see the projects with 'llm-proxy-db project list'",
        ),
        (
            TokenExistsError("token sk-Ab...xyz9 already exists", key="sk-Ab...xyz9"),
            "token sk-Ab...xyz9 already exists; run 'llm-proxy-db token create' again: it "
            "draws a new token",
        ),
        (
            NoMigrationsError("the memory backend has no schema migrations"),
            "the memory backend has no schema migrations; only SQL backends have them: choose "
            "one with --driver (see 'llm-proxy-db backends')",
        ),
        (
            MigrationError("00100_x.sql failed", version=100),
            "00100_x.sql failed; see 'llm-proxy-db migrate status'",
        ),
        (TransientError("database is locked"), "database is locked; try again"),
    ],
)
def test_hints_follow_the_error_class_and_attributes(error: DatabaseError, line: str) -> None:
    assert _describe(error)[1] == line


def test_usage_errors_carry_their_own_hint_or_point_to_help() -> None:
    hinted = HintedUsageError("--quiet and --json do not combine", hint="choose one")
    assert _describe(hinted) == (2, "--quiet and --json do not combine; choose one")
    assert _public_type(hinted) == "UsageError"
    bare = click.UsageError("give at most one of --a or --b")
    assert _describe(bare) == (2, "give at most one of --a or --b; see 'llm-proxy-db --help'")
    value = HintedBadParameter("'5x' is not a duration", hint="use e.g. 30d", param_hint="'--in'")
    assert _describe(value) == (2, "Invalid value for '--in': '5x' is not a duration; use e.g. 30d")
    assert _public_type(value) == "BadParameter"
