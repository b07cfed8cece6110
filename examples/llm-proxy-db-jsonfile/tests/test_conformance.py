"""The conformance suite on the jsonfile backend, selected by name through its entry point."""

import itertools
from pathlib import Path

import pytest

from llm_proxy_db import DB, FullConfig, new_from_full_config
from llm_proxy_db.testing import BackendFactory, StoreConformance


class TestJsonFile(StoreConformance):
    @pytest.fixture
    def backend_factory(self, tmp_path: Path) -> BackendFactory:
        files = (str(tmp_path / f"store-{n}.json") for n in itertools.count())

        def factory(*, reopen: DB | None = None) -> DB:
            config = reopen.config if reopen else FullConfig(driver="jsonfile", path=next(files))
            return new_from_full_config(config)

        return factory
