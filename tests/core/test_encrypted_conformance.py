"""The conformance suite with upstream keys encrypted at rest.

The encryption layer sits between the facade and any backend, so every behaviour the suite
pins must hold through it unchanged. The backend is ``DB_DRIVER``'s (SQLite by default;
``CI=true DB_DRIVER=postgres`` runs it on PostgreSQL), configured as in
``tests/test_conformance.py``, plus a key. The layer's code is the same for both formats
(only the cipher differs, tested in test_encryption.py), so the whole suite runs once, with
rotating ``enc:v2`` keys; ``ENCRYPTED_CONFORMANCE_FORMATS=v1,v2`` runs it for both. The
session's log guard (tests/fixtures/log_secrets.py) checks every log line of it at DEBUG.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import attrs
import pytest

from llm_proxy_db import DB, new_from_full_config
from llm_proxy_db._encrypting import EncryptingBackend
from llm_proxy_db.testing import BackendFactory, StoreConformance
from tests.test_conformance import CONFIG_BUILDERS

DRIVER = os.environ.get("DB_DRIVER", "").strip().lower() or "sqlite"
if DRIVER == "sqlite":
    pytest.importorskip("llm_proxy_db_sqlite")

_KEYS = [base64.b64encode(os.urandom(32)).decode() for _ in range(2)]
_SETTINGS: dict[str, dict[str, Any]] = {
    "v1": {"encryption_key": _KEYS[0]},
    "v2": {"encryption_keys": (_KEYS[0], _KEYS[1])},
}
_FORMATS = [
    name.strip()
    for name in os.environ.get("ENCRYPTED_CONFORMANCE_FORMATS", "v2").split(",")
    if name.strip() in _SETTINGS
]


class TestEncryptedConformance(StoreConformance):
    @pytest.fixture(params=_FORMATS)
    def backend_factory(self, tmp_path: Path, request: pytest.FixtureRequest) -> BackendFactory:
        if DRIVER not in CONFIG_BUILDERS:
            pytest.fail(f"no config builder for DB_DRIVER={DRIVER!r} in tests/test_conformance.py")
        build = CONFIG_BUILDERS[DRIVER]
        settings = _SETTINGS[request.param]
        made = 0

        def factory(*, reopen: DB | None = None) -> DB:
            nonlocal made
            if reopen is not None:
                return new_from_full_config(reopen.config)
            made += 1
            folder = tmp_path / f"db{made}"
            folder.mkdir()
            db = new_from_full_config(attrs.evolve(build(folder, request), **settings))
            assert isinstance(db._backend, EncryptingBackend)
            return db

        return factory
