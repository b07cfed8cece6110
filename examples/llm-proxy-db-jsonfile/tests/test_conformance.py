"""The conformance suites on the jsonfile backend, selected by name through its entry point:
the blocking one, and the async one (through the core's thread-offload adapter)."""

import itertools
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from llm_proxy_db import DB, FullConfig, aio, new_from_full_config
from llm_proxy_db.aio import AsyncDB
from llm_proxy_db.testing import (
    AsyncBackendFactory,
    AsyncStoreConformance,
    BackendFactory,
    StoreConformance,
)


class TestJsonFile(StoreConformance):
    @pytest.fixture
    def backend_factory(self, tmp_path: Path) -> BackendFactory:
        files = (str(tmp_path / f"store-{n}.json") for n in itertools.count())

        def factory(*, reopen: DB | None = None) -> DB:
            config = reopen.config if reopen else FullConfig(driver="jsonfile", path=next(files))
            return new_from_full_config(config)

        return factory

    @pytest.fixture
    def failing_storage(self, db: DB) -> AbstractContextManager[None]:
        """The store file replaced by a folder: every read and write of it fails."""

        @contextmanager
        def folder_in_place_of_the_file() -> Iterator[None]:
            path = Path(db.config.path)
            saved = path.read_bytes() if path.exists() else None
            path.unlink(missing_ok=True)
            path.mkdir()
            try:
                yield
            finally:
                path.rmdir()
                if saved is not None:
                    path.write_bytes(saved)

        return folder_in_place_of_the_file()


class TestJsonFileAsync(AsyncStoreConformance):
    """The same suite on ``AsyncDB``: jsonfile has no ``async_factory``, so the core runs
    it through its thread-offload adapter."""

    @pytest.fixture
    def async_backend_factory(self, tmp_path: Path) -> AsyncBackendFactory:
        files = (str(tmp_path / f"store-{n}.json") for n in itertools.count())

        async def factory(*, reopen: AsyncDB | None = None) -> AsyncDB:
            config = reopen.config if reopen else FullConfig(driver="jsonfile", path=next(files))
            return await aio.new_from_full_config(config)

        return factory

    failing_storage = TestJsonFile.failing_storage
