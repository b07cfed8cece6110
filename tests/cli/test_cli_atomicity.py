"""A change and its audit event share one transaction: neither is stored without the other.

These two tests run the command line in-process, to make the store fail on purpose.
"""

from __future__ import annotations

from typing import Any

import pytest

from llm_proxy_db import DB, AuditEvent, DatabaseError, Project, Token
from llm_proxy_db._db import StoreFacade
from llm_proxy_db.cli._app import run

from .conftest import API_KEY


@pytest.fixture(autouse=True)
def _database_from_cli_env(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in cli_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("UPSTREAM_KEY", API_KEY)


def test_no_change_without_its_event(
    db: DB, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    original = StoreFacade.create_audit_event

    def refuse_success(self: StoreFacade, event: AuditEvent) -> AuditEvent:
        if event.outcome == "success":
            raise DatabaseError("disk full")
        return original(self, event)

    monkeypatch.setattr(StoreFacade, "create_audit_event", refuse_success)
    assert run(["project", "create", "demo", "--api-key-env", "UPSTREAM_KEY"]) == 1
    assert capsys.readouterr().err.startswith("error: disk full; check that the database is")
    assert db.list_projects() == []
    [event] = db.list_audit_events()
    assert (event.action, event.outcome, event.reason) == ("project.create", "failure", "disk full")


def test_a_failure_midway_rolls_back_the_whole_change(
    db: DB, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    project = db.create_project(Project(name="demo", openai_api_key=API_KEY))
    db.create_token(Token(project_id=project.id))

    def broken(self: StoreFacade, project_id: str) -> Any:
        raise DatabaseError("connection lost")

    monkeypatch.setattr(StoreFacade, "revoke_project_tokens", broken)
    assert run(["project", "deactivate", "demo", "--revoke-tokens"]) == 1
    assert "connection lost" in capsys.readouterr().err
    assert db.get_project_by_id(project.id).is_active is True  # the update was rolled back
    [event] = db.list_audit_events()
    assert (event.action, event.outcome, event.project_id) == (
        "project.deactivate",
        "failure",
        project.id,
    )
