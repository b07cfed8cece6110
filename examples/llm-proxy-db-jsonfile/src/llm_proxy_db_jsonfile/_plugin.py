"""Entry point of the jsonfile backend: cheap to import, opens nothing."""

from __future__ import annotations

from collections.abc import Iterator

from llm_proxy_db import Backend, BackendSpec, Capabilities, FullConfig, hookimpl


def _open(config: FullConfig) -> Backend:
    from ._backend import JsonFileBackend

    return JsonFileBackend(config)


@hookimpl
def llm_proxy_db_backends() -> Iterator[BackendSpec]:
    yield BackendSpec(
        name="jsonfile",
        api_version=3,  # the storage API this backend is written for (not the core's)
        factory=_open,
        capabilities=Capabilities(persistent=True, multi_process=True),
        description="One JSON file (DATABASE_PATH) behind a file lock; small installs, POSIX",
    )
