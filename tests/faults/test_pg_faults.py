"""PostgreSQL under faults: connections killed by the server, pool exhaustion, migrations
failing halfway or killed mid-way. Against the real server, each test in a fresh schema.

The pool's connections are told apart from everything else on the server by an
``application_name`` set in the test's URL: the killer terminates exactly those, every
200 ms, from a connection of its own.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from llm_proxy_db import (
    DB,
    AuditEvent,
    DatabaseError,
    FullConfig,
    Project,
    Token,
    TransientError,
    new_from_full_config,
)
from tests.faults.fault_workers import pg_config, pg_increments
from tests.faults.migration_checks import (
    LATEST,
    POSTGRES_FILES,
    assert_the_next_up_completes,
    assert_up_fails_at_the_last_statement,
    each_version_once,
    filled_tables,
)
from tests.faults.migration_support import MIGRATION_FILES, big_migration_source, kill_during_up
from tests.fixtures.processes import started

psycopg = pytest.importorskip("psycopg")
from psycopg import conninfo  # noqa: E402 - after the skip when psycopg is missing

INCREMENTS = 10_000
WORKERS = 4
KILL_EVERY_S = 0.2
BLOCK_SECONDS = 4.0
"""How long the transaction-block test runs its writers under the killer."""
_JOIN_S = 120.0


def _named(url: str) -> tuple[str, str]:
    """``url`` with an ``application_name`` of its own, and that name."""
    name = f"llm-proxy-db-fault-{uuid.uuid4().hex[:10]}"
    return conninfo.make_conninfo(url, application_name=name), name


@attrs.define
class Killer:
    """Terminates every server connection named ``application_name``, every ``every_s``."""

    url: str
    application_name: str
    every_s: float = KILL_EVERY_S
    kills: int = 0
    rounds: int = 0
    errors: list[str] = attrs.Factory(list)
    _stop: threading.Event = attrs.Factory(threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            while not self._stop.wait(self.every_s):
                try:
                    rows = conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = %s AND pid <> pg_backend_pid()",
                        (self.application_name,),
                    ).fetchall()
                except psycopg.Error as exc:  # reported: the test asserts there is none
                    self.errors.append(repr(exc))
                    continue
                self.rounds += 1
                self.kills += sum(1 for (killed,) in rows if killed)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="killer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            assert not self._thread.is_alive(), "the killer did not stop"


@contextmanager
def killing(url: str, application_name: str) -> Iterator[Killer]:
    killer = Killer(url, application_name)
    killer.start()
    try:
        yield killer
    finally:
        killer.stop()


def _join_all(threads: list[threading.Thread], deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    hung = [thread.name for thread in threads if thread.is_alive()]
    assert not hung, f"threads still running after {deadline_s}s: {hung}"


def _keeps_working(db: DB, token: str) -> tuple[int, int]:
    """After the killer stopped: calls succeed again (a connection the last round killed
    may fail one call per pooled connection), then 100 in a row. (successes, failures)."""
    failures = 0
    deadline = time.monotonic() + 10
    while True:
        try:
            db.increment_token_usage(token)
            break
        except DatabaseError:
            failures += 1
            assert failures <= WORKERS + 1, "the store did not recover after the kills stopped"
            assert time.monotonic() < deadline
    for _ in range(100):
        db.increment_token_usage(token)  # raises (fails the test) if the store still breaks
    return 101, failures


def _counted(url: str, token: str) -> int:
    """The token's stored request count, read on a connection of its own."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT request_count FROM tokens WHERE token = %s", (token,)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def named_url(postgres_url: str) -> tuple[str, str]:
    """A fresh schema's URL with an ``application_name`` of its own, and that name."""
    return _named(postgres_url)


@pytest.fixture
def fault_db(named_url: tuple[str, str]) -> Iterator[DB]:
    with new_from_full_config(pg_config(named_url[0], pool=WORKERS, auto_migrate=True)) as db:
        yield db


Tally = tuple[int, int, dict[str, int], list[str]]
"""What a thread or process of increments reports: (acknowledged, failed, failure types,
failures that are not a library error)."""


def _summed(tallies: list[Tally]) -> tuple[int, int, dict[str, int]]:
    """The tallies as one (acknowledged, failed, failure types); every failure must be a
    library error."""
    wrong = [w for *_, ws in tallies for w in ws]
    assert wrong == [], "failures that are not a DatabaseError"
    kinds: dict[str, int] = {}
    for *_, found, _ in tallies:
        for kind, number in found.items():
            kinds[kind] = kinds.get(kind, 0) + number
    return sum(t[0] for t in tallies), sum(t[1] for t in tallies), kinds


def _token(db: DB) -> str:
    project = db.create_project(Project(name=f"p-{uuid.uuid4().hex[:8]}", openai_api_key="sk-k"))
    return db.create_token(Token(project_id=project.id)).token


def test_increments_from_threads_while_connections_are_killed(
    fault_db: DB, named_url: tuple[str, str], postgres_url: str
) -> None:
    token = _token(fault_db)
    per_thread = INCREMENTS // WORKERS
    tallies: list[Tally] = []
    lock = threading.Lock()

    def work() -> None:
        acked = failed = 0
        kinds: dict[str, int] = {}
        wrong: list[str] = []
        for _ in range(per_thread):
            try:
                fault_db.increment_token_usage(token)
            except DatabaseError as exc:
                failed += 1
                kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
            except Exception as exc:  # not a library error: a defect
                failed += 1
                wrong.append(f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
            else:
                acked += 1
        with lock:
            tallies.append((acked, failed, kinds, wrong))

    threads = [threading.Thread(target=work, name=f"w{n}", daemon=True) for n in range(WORKERS)]
    started = time.perf_counter()
    with killing(postgres_url, named_url[1]) as killer:
        for thread in threads:
            thread.start()
        _join_all(threads, _JOIN_S)
    elapsed = time.perf_counter() - started

    acked, failed, kinds = _summed(tallies)
    assert acked + failed == INCREMENTS
    more, more_failed = _keeps_working(fault_db, token)
    counted = _counted(postgres_url, token)
    print(
        f"\nthreads: {INCREMENTS} increments in {elapsed:.1f}s: {acked} acknowledged, "
        f"{failed} failed {kinds}, {counted - more} counted "
        f"({counted - more - acked} in doubt counted); {killer.kills} connections killed "
        f"in {killer.rounds} rounds; afterwards {more_failed} failed before recovery"
    )
    assert killer.errors == []
    assert killer.kills > 0, "the killer never found a connection to kill"
    acked += more
    failed += more_failed
    assert acked <= counted <= acked + failed


def test_increments_from_processes_while_connections_are_killed(
    fault_db: DB, named_url: tuple[str, str], postgres_url: str
) -> None:
    token = _token(fault_db)
    per_process = INCREMENTS // WORKERS
    args = (named_url[0], token, per_process)
    with started(pg_increments, [args] * WORKERS, parent_meets=True) as children:
        children.barrier.wait(timeout=60)  # every child has opened its DB
        began = time.perf_counter()
        with killing(postgres_url, named_url[1]) as killer:
            collected: list[Tally] = children.collect(within_s=_JOIN_S)
        elapsed = time.perf_counter() - began

    acked, failed, kinds = _summed(collected)
    assert acked + failed == INCREMENTS
    counted = _counted(postgres_url, token)
    print(
        f"\nprocesses: {INCREMENTS} increments in {elapsed:.1f}s: {acked} acknowledged, "
        f"{failed} failed {kinds}, {counted} counted ({counted - acked} in doubt counted); "
        f"{killer.kills} connections killed in {killer.rounds} rounds"
    )
    assert killer.errors == []
    assert killer.kills > 0, "the killer never found a connection to kill"
    assert acked <= counted <= acked + failed
    # The parent's own idle connections (same application_name) were killed too.
    _, recovering = _keeps_working(fault_db, token)
    print(f"afterwards the parent's DB failed {recovering} call(s) before working again")


def test_kills_inside_transaction_blocks_leave_nothing_of_the_block(
    fault_db: DB, named_url: tuple[str, str], postgres_url: str
) -> None:
    outcomes: dict[str, str] = {}
    messages: dict[str, str] = {}
    wrong: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + BLOCK_SECONDS

    def work(worker: int) -> None:
        for number in range(100_000):  # bounded; the clock ends it first
            if time.monotonic() >= stop_at:
                return
            name = f"block-{worker}-{number}"
            try:
                with fault_db.transaction() as tx:
                    project = tx.create_project(Project(name=name, openai_api_key="sk-k"))
                    time.sleep(0.0005)  # work between calls, as an application does
                    tx.create_token(Token(project_id=project.id))
                    time.sleep(0.0005)
                    tx.create_audit_event(
                        AuditEvent(
                            action="project.create",
                            actor="fault",
                            outcome="success",
                            project_id=project.id,
                        )
                    )
            except DatabaseError as exc:
                outcome = "failed"
                with lock:
                    messages[name] = f"{type(exc).__name__}: {exc}"
            except Exception as exc:
                outcome = "failed"
                with lock:
                    wrong.append(f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
            else:
                outcome = "acked"
            with lock:
                outcomes[name] = outcome

    threads = [
        threading.Thread(target=work, args=(n,), name=f"w{n}", daemon=True) for n in range(WORKERS)
    ]
    with killing(postgres_url, named_url[1]) as killer:
        for thread in threads:
            thread.start()
        _join_all(threads, _JOIN_S)

    assert wrong == [], "failures that are not a DatabaseError"
    with psycopg.connect(named_url[0], autocommit=True) as conn:
        stored = conn.execute(
            "SELECT p.name, (SELECT COUNT(*) FROM tokens t WHERE t.project_id = p.id), "
            "(SELECT COUNT(*) FROM audit_events e WHERE e.project_id = p.id) FROM projects p "
            "WHERE p.name LIKE 'block-%'"
        ).fetchall()
        orphans = conn.execute(
            "SELECT COUNT(*) FROM audit_events e WHERE e.action = 'project.create' AND "
            "NOT EXISTS (SELECT 1 FROM projects p WHERE p.id = e.project_id)"
        ).fetchone()
    acked = {name for name, outcome in outcomes.items() if outcome == "acked"}
    failed = {name for name, outcome in outcomes.items() if outcome == "failed"}
    names = {name for name, _, _ in stored}
    print(
        f"\nblocks: {len(acked)} acknowledged, {len(failed)} failed, "
        f"{len(names & failed)} failed ones committed (in doubt); {killer.kills} connections "
        f"killed in {killer.rounds} rounds"
    )
    for name in sorted(names & failed)[:2]:
        print(f"  a failed block that was committed: {messages[name]}")
    assert killer.errors == []
    assert killer.kills > 0 and failed, "no block was interrupted"
    partial = [
        (name, tokens, events) for name, tokens, events in stored if (tokens, events) != (1, 1)
    ]
    assert partial == [], "blocks stored in part"
    assert orphans == (0,), "audit events of blocks whose project was not stored"
    assert acked <= names, f"acknowledged blocks lost: {sorted(acked - names)[:5]}"
    assert names <= acked | failed
    # The store keeps working once the kills stop.
    _keeps_working(fault_db, _token_after_recovery(fault_db))


def _token_after_recovery(db: DB) -> str:
    for _ in range(WORKERS + 1):
        try:
            return _token(db)
        except DatabaseError:
            continue
    return _token(db)


def _pool_timeout_setting() -> bool:
    """Whether ``FullConfig`` has the configurable pool wait (issue 10's outage work)."""
    return "pool_timeout" in attrs.fields_dict(FullConfig)


def test_pool_exhausted_by_a_long_held_transaction_fails_after_the_bounded_wait(
    postgres_url: str,
) -> None:
    from llm_proxy_db_postgres import _backend as pg_backend

    settings: dict[str, Any] = {}
    if _pool_timeout_setting():
        settings["pool_timeout"] = timedelta(seconds=1)
        bound = 1.0
    else:  # before the configurable wait: the backend's constant
        bound = float(getattr(pg_backend, "POOL_TIMEOUT_S", 10.0))
    config = attrs.evolve(pg_config(postgres_url, pool=1, auto_migrate=True), **settings)
    with new_from_full_config(config) as db:
        held = threading.Event()
        release = threading.Event()

        def hold() -> None:
            with db.transaction() as tx:
                tx.list_projects()
                held.set()
                release.wait(timeout=bound + 30)

        holder = threading.Thread(target=hold, name="holder", daemon=True)
        holder.start()
        try:
            assert held.wait(timeout=10)
            started = time.monotonic()
            with pytest.raises(DatabaseError) as info:
                db.list_projects()
            waited = time.monotonic() - started
        finally:
            release.set()
            holder.join(timeout=10)
        assert not holder.is_alive()
        print(
            f"\npool exhausted: {type(info.value).__name__} after {waited:.2f}s "
            f"(bound {bound:g}s): {info.value}"
        )
        assert bound * 0.9 <= waited <= bound + 2.0
        if _pool_timeout_setting():
            # The outage work has landed: a pool timeout is transient.
            assert isinstance(info.value, TransientError), type(info.value)
        assert db.list_projects() == []  # the connection is free again


# -- migrations ---------------------------------------------------------------------------


def _schema(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything of the schema a migration could change, and goose's rows."""
    queries = {
        "columns": "SELECT table_name, column_name, data_type, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema = current_schema() "
        "ORDER BY 1, 2",
        "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes "
        "WHERE schemaname = current_schema() ORDER BY 1, 2",
        "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
        "FROM pg_constraint WHERE connamespace = current_schema()::regnamespace ORDER BY 1, 2",
        "goose": "SELECT id, version_id, is_applied, tstamp FROM goose_db_version ORDER BY id",
        "projects": "SELECT id, name FROM projects ORDER BY id",
    }
    with psycopg.connect(url, autocommit=True) as conn:
        return {key: conn.execute(sql).fetchall() for key, sql in queries.items()}


def test_migration_failing_halfway_leaves_schema_and_version_as_before(
    postgres_url: str, tmp_path: Path
) -> None:
    from llm_proxy_db_postgres import PostgresBackend

    with new_from_full_config(pg_config(postgres_url, pool=2, auto_migrate=True)) as db:
        db.create_project(Project(name="kept", openai_api_key="sk-k"))
    before = _schema(postgres_url)
    backend = PostgresBackend(pg_config(postgres_url, pool=2))
    try:
        assert_up_fails_at_the_last_statement(backend, POSTGRES_FILES, tmp_path)
    finally:
        backend.close()
    assert _schema(postgres_url) == before


def test_sigkill_during_up_leaves_a_database_the_next_up_completes(
    postgres_url: str, tmp_path: Path
) -> None:
    from llm_proxy_db_postgres import PostgresBackend

    source = big_migration_source(tmp_path, MIGRATION_FILES, "postgres")

    def read_version() -> int:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            if conn.execute("SELECT to_regclass('goose_db_version')").fetchone() == (None,):
                return 0
            row = conn.execute("SELECT MAX(version_id) FROM goose_db_version").fetchone()
            return int(row[0] or 0) if row else 0

    at, _ = kill_during_up("postgres", postgres_url, source, read_version, LATEST)
    backend = PostgresBackend(pg_config(postgres_url, pool=2))
    try:
        started = time.monotonic()
        applied = assert_the_next_up_completes(backend, source, at)
        took = time.monotonic() - started
    finally:
        backend.close()
    print(
        f"\nkilled at version {at} of {LATEST}; the next up applied {len(applied)} in {took:.1f}s"
    )
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        versions = conn.execute(
            "SELECT version_id, COUNT(*) FROM goose_db_version GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert versions == each_version_once()
        for table in filled_tables(at):
            assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (2000,)
        locks = conn.execute(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
        assert locks == (0,)
