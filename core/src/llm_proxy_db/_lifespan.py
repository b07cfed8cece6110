"""``aio.lifespan()``: an ``AsyncDB`` for the life of an ASGI application."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from ._aio import AsyncDB, new_from_full_config
from ._config import FullConfig

__all__ = ["Lifespan", "lifespan"]


class Lifespan:
    """Opens an ``AsyncDB`` on entry and closes it on exit, yielding ``{state_key: db}``.

    Works both ways: as Starlette's or FastAPI's ``lifespan=`` (which calls it with the
    app; the database is then ``request.state.<state_key>`` in handlers), and directly as
    ``async with aio.lifespan(config) as state:``.
    """

    def __init__(self, config: FullConfig | None, state_key: str) -> None:
        self._config = config
        self._state_key = state_key
        self._db: AsyncDB | None = None

    def __call__(self, app: Any) -> Lifespan:
        """A fresh context for one run of ``app`` (the ASGI lifespan protocol)."""
        return Lifespan(self._config, self._state_key)

    async def __aenter__(self) -> dict[str, AsyncDB]:
        if self._db is not None:
            raise RuntimeError("this lifespan is already open; call it for another one")
        self._db = await new_from_full_config(self._config)
        return {self._state_key: self._db}

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()


def lifespan(config: FullConfig | None = None, *, state_key: str = "db") -> Lifespan:
    """An ASGI lifespan (and async context manager) holding an ``AsyncDB`` opened from
    ``config`` (default: the environment) under ``state_key``."""
    return Lifespan(config, state_key)
