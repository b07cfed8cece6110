"""Entry point of the MySQL backend: cheap to import; PyMySQL loads on open."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.resources import files

from llm_proxy_db import Backend, BackendSpec, Capabilities, FullConfig, hookimpl


def _open(config: FullConfig) -> Backend:
    from ._backend import MySQLBackend

    return MySQLBackend(config)


@hookimpl
def llm_proxy_db_backends() -> Iterator[BackendSpec]:
    # No async_factory: the async API runs this backend in the core's worker threads.
    yield BackendSpec(
        name="mysql",
        api_version=3,  # the storage API this backend is written for (not the core's)
        factory=_open,
        capabilities=Capabilities(persistent=True, multi_process=True, migrations=True),
        description="MySQL or MariaDB via PyMySQL (DATABASE_URL mysql://...)",
        migrations=files("llm_proxy_db_mysql") / "migrations",
    )
