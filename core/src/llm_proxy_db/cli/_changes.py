"""Data changes with their audit event, written in the same transaction.

A change that succeeds commits together with a ``success`` event. A change the store refuses
(``DatabaseError``) is rolled back; then a ``failure`` event, with the reason, is written in a
transaction of its own and the error propagates. Anything else (a usage error found while
resolving a name, say) rolls back and writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeVar

import attrs

from .. import AuditEvent, DatabaseError, Stores
from ._state import State

__all__ = ["Trail", "audited_change"]

_R = TypeVar("_R")


@attrs.define
class Trail:
    """What the event will say; the change fills in ids as it learns them."""

    project_id: str | None = None
    token_id: str | None = None
    """Always the masked token."""
    metadata: dict[str, Any] = attrs.field(factory=dict)

    def event(self, action: str, actor: str, *, reason: str | None = None) -> AuditEvent:
        return AuditEvent(
            action=action,
            actor=actor,
            outcome="success" if reason is None else "failure",
            project_id=self.project_id,
            token_id=self.token_id,
            reason=reason,
            metadata=self.metadata or None,
        )


def audited_change(
    state: State,
    action: str,
    change: Callable[[Stores, Trail], _R],
    *,
    trail: Trail | None = None,
) -> _R:
    """Run ``change`` and its ``action`` event in one transaction (see the module doc)."""
    trail = trail or Trail()
    db = state.db()
    try:
        with db.transaction() as tx:
            result = change(tx, trail)
            tx.create_audit_event(trail.event(action, state.actor))
    except DatabaseError as exc:
        # The refusal is what the operator must see; a database too broken to take the
        # failure event will have said so through ``exc`` already.
        with suppress(DatabaseError), db.transaction() as tx:
            tx.create_audit_event(trail.event(action, state.actor, reason=str(exc)))
        raise
    return result
