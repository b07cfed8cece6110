"""What the core adds to a backend written for an older storage API version.

A backend declares the ``STORAGE_API_VERSION`` it was written for. When that is older
than the core's, :func:`~llm_proxy_db.new_from_full_config` puts an :class:`OlderBackend`
between the ``DB`` facade and the backend: it serves what the newer contract added from
what the older one has, inside transactions too, and hands everything else on unchanged.

Version 3 added keyset paging, ``AuditEventFilter.before_id``: a version-2 backend does
not know the field, so the layer reads the anchor event, lists every matching event up
to the anchor's time from the backend, and applies ``before_id`` and the paging itself
(correct, and as costly as listing those events: upgrade the backend for the fast path).
It also added ``authorize``, served by ``increment_token_usage`` then
``get_project_by_id`` in one transaction, and ``create_audit_events``, served by one
``create_audit_event`` per event, an ``AlreadyExistsError`` counted as skipped.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import attrs

from ._delegation import ForwardedStores, forwarding
from ._errors import AlreadyExistsError
from ._layers import BackendLayer
from ._models import AuditEvent, AuditEventFilter, Authorization
from ._protocols import Stores

if TYPE_CHECKING:
    from ._protocols import Backend

__all__ = ["OlderBackend", "OlderStores"]

_TICK = timedelta(microseconds=1)


@forwarding("self._inner.{name}({args})", protocol=Stores)
class _PassThrough(ForwardedStores):
    __slots__ = ("_inner",)

    def __init__(self, inner: Stores) -> None:
        self._inner = inner


class OlderStores(_PassThrough):
    """The stores of a storage-API-2 backend, with ``before_id``, ``authorize`` and
    ``create_audit_events`` served by the core."""

    __slots__ = ()

    def authorize(self, token: str) -> Authorization:
        # Inside the caller's transaction (or the one OlderBackend.authorize opens).
        counted = self._inner.increment_token_usage(token)
        return Authorization(
            token=counted, project=self._inner.get_project_by_id(counted.project_id)
        )

    def create_audit_events(self, events: list[AuditEvent]) -> int:
        added = 0
        for event in events:
            try:
                self._inner.create_audit_event(event)
            except AlreadyExistsError:
                continue
            added += 1
        return added

    def _older_than_anchor(self, filter: AuditEventFilter) -> list[AuditEvent]:
        assert filter.before_id is not None
        anchor = self._inner.get_audit_event_by_id(filter.before_id)
        until = anchor.timestamp + _TICK  # ties in time with the anchor included
        if filter.end_time is not None:
            until = min(until, filter.end_time)
        wide = attrs.evolve(filter, before_id=None, end_time=until, limit=None, offset=0)
        events = self._inner.list_audit_events(wide)
        return [event for event in events if filter.matches(event, before=anchor)]

    def list_audit_events(self, filter: AuditEventFilter | None = None) -> list[AuditEvent]:
        if filter is None or filter.before_id is None:
            return self._inner.list_audit_events(filter)
        found = self._older_than_anchor(filter)
        end = None if filter.limit is None else filter.offset + filter.limit
        return found[filter.offset : end]

    def count_audit_events(self, filter: AuditEventFilter | None = None) -> int:
        if filter is None or filter.before_id is None:
            return self._inner.count_audit_events(filter)
        return len(self._older_than_anchor(filter))


class OlderBackend(BackendLayer, OlderStores):
    """A backend of an older storage API wrapped by :class:`OlderStores`, its
    transactions' stores included."""

    __slots__ = ()

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)

    def authorize(self, token: str) -> Authorization:
        with self._inner.transaction() as stores:
            return OlderStores(stores).authorize(token)

    def layered(self, stores: Stores) -> Stores:
        return OlderStores(stores)
