"""Tokens: naming one by prefix or masked form, refusals, expiry, project deactivation."""

from __future__ import annotations

from typing import Any

import pytest

from llm_proxy_db import DB, AuditEventFilter, Token, mask_token

from .conftest import Cli

FIRST = "sk-SH" + "a" * 30 + "0001"
SECOND = "sk-SH" + "a" * 30 + "0002"
THIRD = "sk-SH" + "b" * 30 + "0001"  # masked like FIRST: sk-SH...0001


def _events(db: DB, **conditions: Any) -> list[tuple[str, str]]:
    events = db.list_audit_events(AuditEventFilter(**conditions))
    return [(e.action, e.outcome) for e in events]


@pytest.mark.server_smoke
def test_a_token_is_named_by_whole_value_prefix_or_masked_form(
    cli: Cli, db: DB, project: dict[str, Any]
) -> None:
    for value in (FIRST, SECOND, THIRD):
        db.create_token(Token(project_id=project["id"], token=value))
    before = db.count_audit_events()

    def shown(ref: str, **kwargs: Any) -> str:
        document: dict[str, Any] = cli("--json", "token", "show", ref, **kwargs).json()
        return str(document["token"])

    assert shown(FIRST) == mask_token(FIRST)
    assert shown("sk-SHb") == mask_token(THIRD)  # unique prefix
    assert shown("sk-SH...0002") == mask_token(SECOND)  # the form 'token list' prints
    assert shown("-", input=SECOND + "\n") == mask_token(SECOND)

    ambiguous = cli("token", "show", "sk-SHaaaa", code=2)
    assert "matches 2 tokens" in ambiguous.err and "give more characters" in ambiguous.err
    cli("token", "show", "sk-SH...0001", code=2)  # FIRST and THIRD
    cli("token", "revoke", "sk-SHa", code=2)
    short = cli("token", "show", "sk-S", code=2)
    assert "too short" in short.err
    unknown = cli("token", "show", "sk-NOPE", code=1)
    assert "no token matches 'sk-NOPE'" in unknown.err
    # 'token use' wants the whole token: a masked form is bad input, a prefix is unknown.
    cli("token", "use", mask_token(SECOND), code=2)
    assert db.count_audit_events() == before  # reads and bad input write nothing

    cli("token", "use", SECOND[:20], code=1)
    cli("token", "revoke", "sk-NOPE", code=1)
    assert _events(db)[:2] == [("token.revoke", "failure"), ("token.use", "failure")]
    assert db.count_audit_events() == before + 2
    assert all(t.is_active and t.request_count == 0 for t in db.list_tokens(project["id"]))


@pytest.mark.server_smoke
def test_a_refused_change_writes_only_a_failure_event(
    cli: Cli, db: DB, project: dict[str, Any]
) -> None:
    name = project["name"]
    token = cli("token", "create", "--project", name, "--max-requests", "1", "-q").out.strip()
    cli("token", "use", token)
    refused = cli("token", "use", token, code=1)
    assert "used all of its 1 requests" in refused.err
    assert db.get_token_by_id(token).request_count == 1

    taken = cli("project", "create", name, "--api-key-env", "K", env={"K": "sk-x"}, code=1)
    assert "choose another name" in taken.err
    assert [p.name for p in db.list_projects()].count(name) == 1

    failures = db.list_audit_events(AuditEventFilter(outcome="failure"))
    assert [(e.action, e.project_id, e.token_id) for e in failures] == [
        ("project.create", None, None),
        ("token.use", project["id"], mask_token(token)),
    ]
    assert all(e.reason for e in failures)
    assert _events(db, action="token.use") == [("token.use", "failure"), ("token.use", "success")]


def test_bad_input_changes_and_writes_nothing(cli: Cli, db: DB, project: dict[str, Any]) -> None:
    name = project["name"]
    token = db.create_token(Token(project_id=project["id"])).token
    before = db.count_audit_events()
    cli("project", "create", "other", code=2)  # no key given
    cli("project", "create", "other", "--api-key-env", "UNSET_VARIABLE_X", code=2)
    cli("project", "create", "other", "--api-key-stdin", input="  \n", code=2)
    cli("project", "update", name, code=2)  # nothing to update
    cli("project", "delete", name, code=2)  # no --yes
    cli("token", "delete", token, code=2)  # no --yes
    cli("token", "create", "--project", name, "--expires-in", "3x", code=2)
    assert db.count_audit_events() == before
    assert [p.name for p in db.list_projects()] == [name]
    assert [t.token for t in db.list_tokens()] == [token]


def test_expired_tokens_are_refused_and_revoked(cli: Cli, db: DB, project: dict[str, Any]) -> None:
    created = cli(
        "--json", "token", "create", "--project", project["id"], "--expires-in", "1ms"
    ).json()
    assert "has expired" in cli("token", "use", created["token"], code=1).err
    assert cli("--json", "token", "revoke-expired").json() == {"revoked": 1}
    assert db.get_token_by_id(created["token"]).is_active is False
    assert _events(db, action="token.revoke_expired") == [("token.revoke_expired", "success")]


def test_deactivating_a_project_refuses_its_tokens(
    cli: Cli, db: DB, project: dict[str, Any]
) -> None:
    name = project["name"]
    token = db.create_token(Token(project_id=project["id"])).token
    cli("project", "deactivate", name)
    refused = cli("token", "use", token, code=1)
    assert "is inactive" in refused.err and "project activate" in refused.err
    cli("project", "activate", name)
    assert "remaining: unlimited" in cli("token", "use", token).out

    document = cli("--json", "project", "deactivate", name, "--revoke-tokens").json()
    assert document["revoked_tokens"] == 1 and document["project"]["is_active"] is False
    assert db.get_token_by_id(token).is_active is False
    event = db.list_audit_events(AuditEventFilter(action="project.deactivate"))[0]
    assert event.metadata == {"project": name, "revoked_tokens": 1}

    cli("project", "show", "no-such-project", code=1)
    cli("token", "create", "--project", "no-such-project", code=1)
    assert _events(db, action="token.create") == [("token.create", "failure")]
