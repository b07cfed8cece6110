"""Bad input on the command line: every value outside the models' limits is exit 2 with one
line (never a traceback, never "internal error ... this is a bug"), and nothing changes."""

from __future__ import annotations

from typing import Any

import pytest

from llm_proxy_db import DB, Project
from llm_proxy_db.cli._app import _describe

from .conftest import API_KEY, Cli

_SURROGATES = "x\udced\udca0\udc80y"  # bytes ED A0 80: a lone surrogate once decoded
_CASES: list[tuple[tuple[str, ...], str]] = [
    (("token", "create", "--project", "p", "--max-requests", str(2**31)), "max_requests"),
    (("token", "create", "--project", "p", "--max-requests", str(2**64)), "max_requests"),
    (("audit", "list", "--since", "0001-01-01T00:00:00+05:00"), "out of range"),
    (("audit", "list", "--until", "9999-12-31T23:00:00-05:00"), "out of range"),
    (("audit", "count", "--since", "0500-01-01"), "years 1000 to 9999"),
    (("audit", "list", "--search", "x" * 2000), "at most 1024"),
    (("audit", "list", "--actor", "a" * 300), "at most 255"),
    (("audit", "list", "--limit", str(2**64)), "limit"),
    (("audit", "list", "--offset", str(2**63)), "offset"),
    (("audit", "list", "--project", _SURROGATES), "surrogate"),
    (("audit", "list", "--action", _SURROGATES), "surrogate"),
    (("project", "create", "n" * 300, "--api-key-env", "UPSTREAM"), "at most 255"),
    (("project", "create", _SURROGATES, "--api-key-env", "UPSTREAM"), "surrogate"),
    (("project", "create", "   ", "--api-key-env", "UPSTREAM"), "empty"),
    (("project", "update", "p", "--name", "n" * 256), "at most 255"),
]


@pytest.mark.parametrize(("args", "said"), _CASES, ids=lambda v: str(v)[:40])
def test_bad_input_is_exit_2_with_one_line_and_changes_nothing(
    cli: Cli, db: DB, args: tuple[str, ...], said: str
) -> None:
    db.create_project(Project(name="p", openai_api_key=API_KEY))
    before = _contents(db)
    refused = cli(*args, code=2, env={"UPSTREAM": API_KEY})
    assert said in refused.err, refused.err
    assert "internal error" not in refused.err and "this is a bug" not in refused.err
    assert API_KEY not in refused.err
    assert _contents(db) == before, f"{args} changed the database"


def test_bad_input_in_json_mode_is_one_document(cli: Cli) -> None:
    document = cli("--json", "audit", "list", "--search", "x" * 2000, code=2).json()
    assert document["error"]["exit_code"] == 2
    assert document["error"]["type"] == "ValueError"


def test_presented_tokens_that_cannot_exist_are_not_found(cli: Cli, db: DB) -> None:
    db.create_project(Project(name="p", openai_api_key=API_KEY))
    for bearer in (" sk-abc", "sk-" + "a" * 300, "sk-\u0430bc"):
        refused = cli("token", "use", bearer, code=1)
        assert "no token" in refused.err, refused.err


def _contents(db: DB) -> tuple[Any, ...]:
    return (db.list_projects(), db.list_tokens(), db.list_audit_events())


def test_type_errors_of_the_models_are_bad_input() -> None:
    from llm_proxy_db import Token

    try:
        Token(project_id="p", max_requests="3")  # type: ignore[arg-type]
    except TypeError as exc:
        code, line = _describe(exc)
    assert code == 2 and "max_requests must be an int" in line
    code, line = _describe(TypeError("raised by the command line itself"))
    assert code == 1 and "this is a bug" in line
