"""The one clock of the library: every "now" the stores use comes from :func:`utcnow`.

Backends take "now" from it too (expiry checks, ``last_used_at``, ``deactivated_at``), so
the conformance suite can pin it (``llm_proxy_db.testing.pinned_clock``) and check the
boundaries exactly: a token whose ``expires_at`` *is* now must be refused.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["set_clock", "utcnow"]


def _system_now() -> datetime:
    return datetime.now(UTC)


_now: Callable[[], datetime] = _system_now


def utcnow() -> datetime:
    """The current time as an aware UTC datetime, from the library's clock."""
    return _now()


def set_clock(now: Callable[[], datetime] | None) -> Callable[[], datetime]:
    """Make ``now()`` the library's clock (``None``: the system clock); the previous one.

    For tests: the clock is process-wide, so pin it only where nothing else runs.
    """
    global _now
    previous, _now = _now, (now or _system_now)
    return previous
