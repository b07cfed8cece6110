"""The shared store logic without ``UPDATE ... RETURNING`` and with "changed rows" row
counts, on SQLite: the path a MySQL/MariaDB backend takes, through the whole conformance
suite.

The variant is registered in code when this module is imported; the suite's spawned
processes import it too (``spawn_imports``), so its ``multi_process`` races run as well:
two statements per increment (UPDATE, then SELECT) must still count exactly.
"""

from __future__ import annotations

import itertools
from importlib.resources import files
from pathlib import Path
from typing import Any

import attrs
import pytest

from llm_proxy_db import (
    BackendSpec,
    Capabilities,
    FullConfig,
    new_from_full_config,
    register_backend,
)
from llm_proxy_db.testing import BackendFactory, StoreConformance
from llm_proxy_db_sqlite import SQLITE, SQLiteBackend

NAME = "sqlite-portable"
PORTABLE = attrs.evolve(SQLITE, update_returning=False, rowcount="changed")


def register() -> None:
    register_backend(
        BackendSpec(
            name=NAME,
            api_version=2,
            factory=lambda config: SQLiteBackend(config, dialect=PORTABLE),
            capabilities=Capabilities(persistent=True, multi_process=True, migrations=True),
            description="SQLite through the portable statements (no RETURNING)",
            migrations=files("llm_proxy_db_sqlite") / "migrations",
        ),
        replace=True,
    )


register()


class TestPortableDialect(StoreConformance):
    spawn_imports = (__name__,)

    @pytest.fixture
    def backend_factory(self, tmp_path: Path) -> BackendFactory:
        paths = (tmp_path / f"db{n}.sqlite" for n in itertools.count())

        def factory(*, reopen: Any = None) -> Any:
            if reopen is not None:
                return new_from_full_config(reopen.config)
            return new_from_full_config(FullConfig(driver=NAME, path=str(next(paths))))

        return factory


def test_the_portable_statements_have_no_returning() -> None:
    from llm_proxy_db.sql import Statements

    statements = Statements(PORTABLE)
    for name in ("update_project", "update_token", "increment_usage", "reset_usage"):
        assert "RETURNING" not in getattr(statements, name), name
    assert "RETURNING" in Statements(SQLITE).increment_usage


def test_the_dialects_insert_or_ignore_skips_an_existing_key(tmp_path: Path) -> None:
    import sqlite3

    new_from_full_config(FullConfig(driver="sqlite", path=str(tmp_path / "db.sqlite"))).close()
    statement = SQLITE.insert_ignoring_duplicates("projects", "id, name, openai_api_key")
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    try:
        first = conn.execute(statement, ("p-1", "one", "sk-a")).rowcount
        again = conn.execute(statement, ("p-1", "other", "sk-b")).rowcount
        rows = conn.execute("SELECT id, name FROM projects").fetchall()
    finally:
        conn.close()
    assert (first, again, rows) == (1, 0, [("p-1", "one")])
