"""Reading the audit log: filters, paging, times, one event, counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from llm_proxy_db import DB, AuditEvent

from .conftest import Cli


def _ids(cli: Cli, *args: str) -> list[str]:
    events: list[dict[str, Any]] = cli("--json", "audit", "list", *args).json()
    return [e["id"] for e in events]


def test_audit_filters(cli: Cli, db: DB, project: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    old = db.create_audit_event(
        AuditEvent(
            action="token.use",
            actor="proxy",
            outcome="failure",
            reason="Limit reached",
            timestamp=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
            project_id=project["id"],
        )
    )
    recent = db.create_audit_event(
        AuditEvent(
            action="token.use",
            actor="proxy",
            outcome="success",
            timestamp=now - timedelta(hours=1),
            metadata={"model": "gpt-4o-mini"},
        )
    )
    created = _ids(cli, "--action", "project.create")
    assert len(created) == 1

    assert _ids(cli, "--actor", "proxy") == [recent.id, old.id]
    assert _ids(cli, "--outcome", "failure") == [old.id]
    assert _ids(cli, "--project", project["name"]) == [created[0], old.id]
    assert _ids(cli, "--since", "2h") == [created[0], recent.id]
    # An ISO time without an offset is UTC; --until is exclusive.
    assert _ids(cli, "--until", "2024-05-01T12:00:00") == []
    assert _ids(cli, "--since", "2024-05-01T14:00:00+02:00", "--until", "2024-05-02") == [old.id]
    assert _ids(cli, "--search", "limit REACHED") == [old.id]
    assert _ids(cli, "--limit", "1", "--offset", "1") == [recent.id]

    count = cli("audit", "count", "--actor", "proxy", "--since", "2024-05-01")
    assert count.out == "2\n"

    shown = cli("audit", "show", old.id).out
    assert "reason:     Limit reached" in shown and "outcome:    failure" in shown
    cli("audit", "show", "no-such-event", code=1)
    cli("audit", "list", "--since", "yesterday", code=2)
