"""The shared store logic without ``UPDATE ... RETURNING`` and with "changed rows" row
counts, on SQLite: the path a MySQL/MariaDB backend takes, through the whole conformance
suite.

The variant is registered in code, so the suite's spawned processes (which find backends
by entry point only) cannot open it: its ``multi_process`` race runs here instead, with
children that register the variant themselves.
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections import Counter
from importlib.resources import files
from pathlib import Path
from typing import Any

import attrs
import pytest

from llm_proxy_db import (
    BackendSpec,
    Capabilities,
    FullConfig,
    Project,
    Token,
    TokenLimitReachedError,
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
            capabilities=Capabilities(persistent=True, migrations=True),
            description="SQLite through the portable statements (no RETURNING)",
            migrations=files("llm_proxy_db_sqlite") / "migrations",
        ),
        replace=True,
    )


register()


class TestPortableDialect(StoreConformance):
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


_PROCESSES = 4
_ATTEMPTS = 30
_LIMIT = 50


def _race(path: str, token: str, barrier: Any, results: Any) -> None:
    register()
    outcomes: Counter[str] = Counter()
    try:
        with new_from_full_config(FullConfig(driver=NAME, path=path)) as db:
            barrier.wait(timeout=60)
            for _ in range(_ATTEMPTS):
                try:
                    db.increment_token_usage(token)
                    outcomes["ok"] += 1
                except TokenLimitReachedError:
                    outcomes["limit"] += 1
    except BaseException as exc:
        outcomes[f"error {type(exc).__name__}: {exc}"] += 1
    results.put(dict(outcomes))


def test_exact_limit_with_racing_processes(tmp_path: Path) -> None:
    """Two statements per increment (UPDATE, then SELECT), atomic across processes."""
    path = str(tmp_path / "race.sqlite")
    with new_from_full_config(FullConfig(driver=NAME, path=path)) as db:
        project = db.create_project(Project(name="race", openai_api_key="sk-upstream"))
        token = db.create_token(Token(project_id=project.id, max_requests=_LIMIT))
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(_PROCESSES)
        results = context.Queue()
        children = [
            context.Process(target=_race, args=(path, token.token, barrier, results))
            for _ in range(_PROCESSES)
        ]
        for child in children:
            child.start()
        totals: Counter[str] = Counter()
        for _ in children:
            totals.update(results.get(timeout=120))
        for child in children:
            child.join(timeout=30)
        assert dict(totals) == {"ok": _LIMIT, "limit": _PROCESSES * _ATTEMPTS - _LIMIT}
        assert db.get_token_by_id(token.token).request_count == _LIMIT
