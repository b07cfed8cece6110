"""The asyncio API: ``AsyncDB``, the ``DB`` contract on an event loop.

    db = await aio.new_from_full_config(FullConfig(driver="postgres", database_url=url))
    async with db:
        token = await db.increment_token_usage(value)
        async with db.transaction() as tx:
            await tx.revoke_token(value)

Every store method of ``DB`` is a coroutine of ``AsyncDB`` with the same name, parameters,
result and errors. Backends with an ``async_factory`` (PostgreSQL, SQLite, memory) run
natively; any other runs in worker threads of the ``AsyncDB``'s own.
"""

from __future__ import annotations

from ._aio import AsyncDB, AsyncStoreFacade, new, new_from_full_config
from ._aio_audit_writer import AsyncAuditWriter
from ._lifespan import Lifespan, lifespan

__all__ = [
    "AsyncAuditWriter",
    "AsyncDB",
    "AsyncStoreFacade",
    "Lifespan",
    "lifespan",
    "new",
    "new_from_full_config",
]
