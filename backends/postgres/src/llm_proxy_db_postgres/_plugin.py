"""Entry point of the PostgreSQL backend: cheap to import; psycopg loads on open."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.resources import files

from llm_proxy_db import Backend, BackendSpec, Capabilities, FullConfig, hookimpl


def _open(config: FullConfig) -> Backend:
    from ._backend import PostgresBackend

    return PostgresBackend(config)


@hookimpl
def llm_proxy_db_backends() -> Iterator[BackendSpec]:
    yield BackendSpec(
        name="postgres",
        api_version=3,  # the storage API this backend is written for (not the core's)
        factory=_open,
        capabilities=Capabilities(persistent=True, multi_process=True, migrations=True),
        description="PostgreSQL via psycopg 3 and psycopg_pool (DATABASE_URL)",
        migrations=files("llm_proxy_db_postgres") / "migrations",
    )
