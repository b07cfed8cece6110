"""Fixtures of the SQLite backend tests: real database files in ``tmp_path``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlite_support import OpenDB

from llm_proxy_db import DB, FullConfig, new_from_full_config


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the test's database file goes (not created yet)."""
    return tmp_path / "llm-proxy.db"


@pytest.fixture
def open_db(db_path: Path) -> Iterator[OpenDB]:
    """Open a ``DB`` on ``db_path`` (or ``path=...``) with ``FullConfig`` overrides; every
    database opened is closed after the test."""
    opened: list[DB] = []

    def open_(**overrides: Any) -> DB:
        settings: dict[str, Any] = {"driver": "sqlite", "path": str(db_path)}
        settings.update(overrides)
        if isinstance(settings.get("conn_max_lifetime"), int | float):
            settings["conn_max_lifetime"] = timedelta(seconds=settings["conn_max_lifetime"])
        db = new_from_full_config(FullConfig(**settings))
        opened.append(db)
        return db

    yield open_
    for db in opened:
        db.close()
