"""Entry point of the PostgreSQL backend: cheap to import; psycopg loads on open."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.resources import files

from llm_proxy_db import AsyncBackend, Backend, BackendSpec, Capabilities, FullConfig, hookimpl


def _open(config: FullConfig) -> Backend:
    from ._backend import PostgresBackend

    return PostgresBackend(config)


async def _open_async(config: FullConfig) -> AsyncBackend:
    from ._async_backend import AsyncPostgresBackend

    backend = AsyncPostgresBackend(config)
    await backend.open()
    return backend


@hookimpl
def llm_proxy_db_backends() -> Iterator[BackendSpec]:
    yield BackendSpec(
        name="postgres",
        api_version=3,  # the storage API this backend is written for (not the core's)
        factory=_open,
        async_factory=_open_async,
        capabilities=Capabilities(persistent=True, multi_process=True, migrations=True),
        description="PostgreSQL via psycopg 3 and psycopg_pool (DATABASE_URL)",
        migrations=files("llm_proxy_db_postgres") / "migrations",
    )
