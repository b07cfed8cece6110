"""A backend written for storage API 2 gets keyset paging (``before_id``), ``authorize``
and ``create_audit_events`` from the core."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest

from llm_proxy_db import (
    DB,
    AuditEvent,
    AuditEventFilter,
    AuditEventNotFoundError,
    BackendSpec,
    FullConfig,
    Project,
    Token,
    TokenLimitReachedError,
    new_from_full_config,
    register_backend,
    unregister_backend,
)
from llm_proxy_db_memory import MemoryBackend


class Version2Backend(MemoryBackend):
    """A backend as written for storage API 2: it knows nothing of ``before_id``."""

    def list_audit_events(self, filter: AuditEventFilter | None = None) -> list[AuditEvent]:
        return super().list_audit_events(_older(filter))

    def count_audit_events(self, filter: AuditEventFilter | None = None) -> int:
        return super().count_audit_events(_older(filter))

    def authorize(self, token: str) -> Any:
        raise AssertionError("storage API 2 has no authorize()")

    def create_audit_events(self, events: list[AuditEvent]) -> int:
        raise AssertionError("storage API 2 has no create_audit_events()")


def _older(flt: AuditEventFilter | None) -> AuditEventFilter | None:
    return None if flt is None else attrs.evolve(flt, before_id=None)


@pytest.fixture
def old_db() -> Iterator[DB]:
    register_backend(
        BackendSpec(name="version-2", api_version=2, factory=lambda config: Version2Backend())
    )
    try:
        with new_from_full_config(FullConfig(driver="version-2")) as db:
            yield db
    finally:
        unregister_backend("version-2")


def _events(db: DB) -> list[AuditEvent]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    created = []
    for i in range(12):
        stamp = start + timedelta(seconds=i // 3)  # ties: three events per second
        created.append(
            db.create_audit_event(
                AuditEvent(
                    id=f"ev-{i:02d}",
                    action="token.use",
                    actor="client",
                    outcome="success",
                    timestamp=stamp,
                    project_id="p1" if i % 2 else "p2",
                )
            )
        )
    return created


@pytest.mark.parametrize("project_id", [None, "p1"])
def test_keyset_pages_of_a_version_2_backend_match_the_model(
    old_db: DB, project_id: str | None
) -> None:
    events = _events(old_db)
    everything = AuditEventFilter(project_id=project_id).select(events)
    assert old_db.list_audit_events(AuditEventFilter(project_id=project_id)) == everything
    paged: list[AuditEvent] = []
    before: str | None = None
    while True:
        flt = AuditEventFilter(project_id=project_id, limit=4, before_id=before)
        page = old_db.list_audit_events(flt)
        assert page == flt.select(events)
        assert old_db.count_audit_events(flt) == flt.count(events)
        if not page:
            break
        paged += page
        before = page[-1].id
    assert paged == everything
    with old_db.transaction() as tx:  # the transaction's stores get it too
        flt = AuditEventFilter(project_id=project_id, before_id=everything[2].id, offset=1)
        assert tx.list_audit_events(flt) == flt.select(events)


def test_an_unknown_before_id_is_not_found_on_a_version_2_backend(old_db: DB) -> None:
    _events(old_db)
    with pytest.raises(AuditEventNotFoundError):
        old_db.list_audit_events(AuditEventFilter(before_id="no-such-event"))
    with pytest.raises(AuditEventNotFoundError):
        old_db.count_audit_events(AuditEventFilter(before_id="no-such-event"))


def test_authorize_is_served_for_a_version_2_backend(old_db: DB) -> None:
    project = old_db.create_project(Project(name="acme", openai_api_key="sk-upstream-key"))
    token = old_db.create_token(Token(project_id=project.id, max_requests=1))
    granted = old_db.authorize(token.token)
    assert granted.token == old_db.get_token_by_id(token.token)
    assert granted.token.request_count == 1
    assert granted.project == project
    with pytest.raises(TokenLimitReachedError):
        old_db.authorize(token.token)
    with old_db.transaction() as tx:
        assert tx.reset_token_usage(token.token).request_count == 0
        assert tx.authorize(token.token).project == project


def test_create_audit_events_is_served_for_a_version_2_backend(old_db: DB) -> None:
    events = [AuditEvent(action="a", actor="b", outcome="success") for _ in range(3)]
    assert old_db.create_audit_events(events[:1]) == 1
    assert old_db.create_audit_events([*events, events[2]]) == 2
    assert old_db.create_audit_events(events) == 0
    with old_db.transaction() as tx:
        assert tx.create_audit_events([AuditEvent(action="a", actor="b", outcome="success")]) == 1
    assert old_db.count_audit_events() == 4
