"""Data changes with their audit event, written in the same transaction.

A change that succeeds commits together with a ``success`` event. A change the store refuses
(``DatabaseError``) is rolled back; then a ``failure`` event, with the reason, is written in a
transaction of its own and the error propagates. Anything else (a usage error found while
resolving a name, say) rolls back and writes nothing.

The failure event's reason is ``failure_reason(exc)``: the message of a library error (the
core's classes, whose messages name ids, never secrets), anything in it shaped like a key or
a token masked all the same (a backend may have passed a driver's text through); of an error
class a backend defined, only the name of the library class it refines.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeVar

import attrs

from .. import AuditEvent, DatabaseError, Stores, mask_token
from ._state import State

__all__ = ["Trail", "audited_change", "failure_reason"]

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


_LIBRARY = __name__.partition(".")[0]
_SECRET_SHAPED = re.compile(r"sk-[^\s'\"]{6,}")
"""An upstream key or a client token (``sk-...``), as a driver's message would quote it."""


def failure_reason(exc: DatabaseError) -> str:
    """What a failure event stores of ``exc`` (see the module doc): never a secret."""
    kind = type(exc)
    if kind.__module__.partition(".")[0] != _LIBRARY:
        library = next(c for c in kind.__mro__ if c.__module__.partition(".")[0] == _LIBRARY)
        return f"{library.__name__} (the backend's message is not stored)"
    return _SECRET_SHAPED.sub(lambda match: mask_token(match[0]), str(exc))


def audited_change(
    state: State,
    action: str,
    change: Callable[[Stores, Trail], _R],
    *,
    trail: Trail | None = None,
    settled: Callable[[DatabaseError], bool] | None = None,
) -> _R:
    """Run ``change`` and its ``action`` event in one transaction (see the module doc).

    ``settled(exc)``, when given, is asked about a refusal first: true means the caller
    treats it as done (``project create --exist-ok`` losing a race for the name), so no
    failure event is written; the error still propagates for the caller to handle.
    """
    trail = trail or Trail()
    db = state.db()
    try:
        with db.transaction() as tx:
            result = change(tx, trail)
            tx.create_audit_event(trail.event(action, state.actor))
    except DatabaseError as exc:
        if settled is not None and _settled(settled, exc):
            raise
        # The refusal is what the operator must see; a database too broken to take the
        # failure event will have said so through ``exc`` already.
        with suppress(DatabaseError), db.transaction() as tx:
            tx.create_audit_event(trail.event(action, state.actor, reason=failure_reason(exc)))
        raise
    return result


def _settled(settled: Callable[[DatabaseError], bool], exc: DatabaseError) -> bool:
    try:
        return settled(exc)
    except DatabaseError:  # could not tell: the refusal stands, and is audited
        return False
