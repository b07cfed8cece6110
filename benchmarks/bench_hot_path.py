"""The proxy's hot path through llm-proxy-db versus the raw driver, measured in one run.

    python benchmarks/bench_hot_path.py [--n 20000] [--postgres URL]

For each backend it times ``get_token_by_id`` and ``increment_token_usage`` through the
``DB`` facade, and the same statement through the bare driver (sqlite3 with the same
pragmas; psycopg on one connection), and prints per-operation times and the ratio
facade / raw; then, on SQLite, the same calls and the project reads with upstream keys
encrypted at rest (``ENCRYPTION_KEY``) against without. Numbers are machine-dependent;
the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from llm_proxy_db import DB, FullConfig, Project, Token, new_from_full_config
from llm_proxy_db.sql import encode_text_timestamp

INCREMENT_SQL = (
    "UPDATE tokens SET request_count = request_count + 1, last_used_at = ? "
    "WHERE token = ? AND is_active AND (expires_at IS NULL OR expires_at > ?) "
    "AND (max_requests IS NULL OR request_count < max_requests) "
    "AND EXISTS (SELECT 1 FROM projects p WHERE p.id = tokens.project_id AND p.is_active) "
    "RETURNING *"
)


def per_op(fn: Callable[[], object], n: int) -> float:
    """Best of three runs of ``n`` calls, in microseconds per call."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n * 1e6)
    return best


def seed(db: DB) -> str:
    project = db.create_project(Project(name="bench", openai_api_key="sk-upstream"))
    return db.create_token(Token(project_id=project.id)).token


def report(backend: str, rows: list[tuple[str, float, float]]) -> None:
    for name, ours, raw in rows:
        print(
            f"{backend:9} {name:24} facade {ours:8.1f} us   raw {raw:8.1f} us   "
            f"ratio {ours / raw:5.2f}x"
        )


def bench_sqlite(n: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "bench.db")
        db = new_from_full_config(FullConfig(driver="sqlite", path=path))
        token = seed(db)
        raw = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in ("busy_timeout = 10000", "foreign_keys = ON", "synchronous = NORMAL"):
            raw.execute(f"PRAGMA {pragma}")

        def raw_get() -> object:
            return raw.execute("SELECT * FROM tokens WHERE token = ?", (token,)).fetchall()

        def raw_increment() -> object:
            now = encode_text_timestamp(datetime.now(UTC))
            return raw.execute(INCREMENT_SQL, (now, token, now)).fetchall()

        rows = [
            ("get_token_by_id", per_op(lambda: db.get_token_by_id(token), n), per_op(raw_get, n)),
            (
                "increment_token_usage",
                per_op(lambda: db.increment_token_usage(token), n),
                per_op(raw_increment, n),
            ),
        ]
        raw.close()
        db.close()
    report("sqlite", rows)


def _encryption_timings(db: DB, token: str, project_id: str, n: int) -> dict[str, float]:
    return {
        "get_token_by_id": per_op(lambda: db.get_token_by_id(token), n),
        "increment_token_usage": per_op(lambda: db.increment_token_usage(token), n),
        "get_project_by_id": per_op(lambda: db.get_project_by_id(project_id), n),
        "list_projects (100)": per_op(db.list_projects, max(n // 100, 50)),
    }


def bench_encryption(n: int) -> None:
    """The cost of upstream keys encrypted at rest (SQLite): the same calls, key off and on."""
    import base64
    import os

    key = base64.b64encode(os.urandom(32)).decode()
    timings: dict[str, dict[str, float]] = {}
    for label, encryption_key in (("off", None), ("enc:v1", key)):
        with tempfile.TemporaryDirectory() as folder:
            path = str(Path(folder) / "bench.db")
            config = FullConfig(driver="sqlite", path=path, encryption_key=encryption_key)
            db = new_from_full_config(config)
            token = seed(db)
            project_id = db.get_token_by_id(token).project_id
            for i in range(99):
                db.create_project(Project(name=f"p{i:03}", openai_api_key=f"sk-upstream-{i}"))
            timings[label] = _encryption_timings(db, token, project_id, n)
            db.close()
    for name, off in timings["off"].items():
        on = timings["enc:v1"][name]
        print(
            f"{'sqlite':9} {name:24} key off {off:8.1f} us   key on {on:8.1f} us   "
            f"ratio {on / off:5.2f}x"
        )


def bench_postgres(url: str, n: int) -> None:
    import psycopg

    schema = f"bench_{int(time.time())}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        scoped = psycopg.conninfo.make_conninfo(url, options=f"-csearch_path={schema}")
        db = new_from_full_config(FullConfig(driver="postgres", database_url=scoped))
        token = seed(db)
        raw = psycopg.connect(scoped, autocommit=True)
        get_sql = "SELECT * FROM tokens WHERE token = %s"
        inc_sql = INCREMENT_SQL.replace("?", "%s")

        def raw_get() -> object:
            return raw.execute(get_sql, (token,), prepare=True).fetchall()

        def raw_increment() -> object:
            now = datetime.now(UTC).replace(tzinfo=None)
            return raw.execute(inc_sql, (now, token, now), prepare=True).fetchall()

        n = max(n // 10, 500)
        rows = [
            ("get_token_by_id", per_op(lambda: db.get_token_by_id(token), n), per_op(raw_get, n)),
            (
                "increment_token_usage",
                per_op(lambda: db.increment_token_usage(token), n),
                per_op(raw_increment, n),
            ),
        ]
        raw.close()
        db.close()
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
    report("postgres", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="calls per measurement")
    parser.add_argument("--postgres", metavar="URL", help="also measure PostgreSQL at URL")
    args = parser.parse_args()
    bench_sqlite(args.n)
    bench_encryption(args.n)
    if args.postgres:
        bench_postgres(args.postgres, args.n)


if __name__ == "__main__":
    main()
