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


def test_audit_list_pages_with_before(cli: Cli, db: DB) -> None:
    same = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    for index, event_id in enumerate(["ev-a", "ev-B", "ev-b", "ev-c", "ev-0"]):
        db.create_audit_event(
            AuditEvent(
                id=event_id,
                action="token.use",
                actor="pager",
                outcome="success",
                timestamp=same - timedelta(seconds=index // 2),
            )
        )
    everything = _ids(cli, "--actor", "pager")
    assert everything == ["ev-a", "ev-B", "ev-c", "ev-b", "ev-0"]  # ties: id descending

    pages: list[list[str]] = []
    before: list[str] = []
    while True:
        args = ("--json", "audit", "list", "--actor", "pager", "--limit", "2", "--paged")
        document = cli(*args, *before).json()
        assert set(document) == {"events", "next_before"}
        pages.append([e["id"] for e in document["events"]])
        if document["next_before"] is None:
            break
        assert document["next_before"] == pages[-1][-1]
        before = ["--before", document["next_before"]]
    # The last page is short; a full last page is followed by one empty page.
    assert pages == [["ev-a", "ev-B"], ["ev-c", "ev-b"], ["ev-0"]]
    assert _ids(cli, "--actor", "pager", "--before", "ev-a", "--offset", "1") == [
        "ev-c",
        "ev-b",
        "ev-0",
    ]
    full_last = cli("--json", "audit", "list", "--before", "ev-B", "--limit", "1", "--paged")
    assert full_last.json()["next_before"] == "ev-c"
    empty = cli("--json", "audit", "list", "--before", "ev-0", "--limit", "1", "--paged")
    assert empty.json() == {"events": [], "next_before": None}

    text = cli("audit", "list", "--actor", "pager", "--before", "ev-c").out
    assert "ev-b" in text and "ev-0" in text and "ev-c" not in text and "ev-B" not in text
    assert "No matching audit events." in cli("audit", "list", "--before", "ev-0").out

    missing = cli("audit", "list", "--before", "no-such-event", code=1)
    assert "no-such-event" in missing.err
    cli("--json", "audit", "list", "--before", "no-such-event", "--paged", code=1)
