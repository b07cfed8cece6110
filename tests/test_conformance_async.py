"""Run the async conformance suite against the ``AsyncDB`` of the backend named by
``DB_DRIVER`` (default ``memory``), with the config builders of ``test_conformance``.

A backend with an ``async_factory`` runs natively; any other runs through the core's
thread-offload adapter: the suite passes either way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_proxy_db import aio
from llm_proxy_db.aio import AsyncDB
from llm_proxy_db.testing import AsyncBackendFactory, AsyncStoreConformance
from tests.test_conformance import CONFIG_BUILDERS, DRIVER, SERVER_FIXTURES


class TestAsyncConformance(AsyncStoreConformance):
    @pytest.fixture
    def async_backend_factory(
        self, tmp_path: Path, request: pytest.FixtureRequest
    ) -> AsyncBackendFactory:
        if DRIVER not in CONFIG_BUILDERS:
            pytest.fail(f"no config builder for DB_DRIVER={DRIVER!r} in tests/test_conformance.py")
        build = CONFIG_BUILDERS[DRIVER]
        if DRIVER in SERVER_FIXTURES:
            # The server fixture is set up here, not on a portal's thread.
            request.getfixturevalue(SERVER_FIXTURES[DRIVER])
        made = 0

        async def factory(*, reopen: AsyncDB | None = None) -> AsyncDB:
            nonlocal made
            if reopen is not None:
                return await aio.new_from_full_config(reopen.config)
            made += 1
            folder = tmp_path / f"db{made}"
            folder.mkdir()
            return await aio.new_from_full_config(build(folder, request))

        return factory
