"""Bodies of the child processes of the fault tests (spawned or forkserver children).

They live here, not in a test module, so a child imports only this small module and the
package, never pytest's collection of a test file. Every loop is bounded; a child reports
through a queue or a pipe (one ``send_bytes`` per message: one ``write()`` under
``PIPE_BUF``, so what it wrote before a SIGKILL is in the pipe, whole).
"""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from llm_proxy_db import (
    AuditEvent,
    DatabaseError,
    FullConfig,
    Token,
    generate_token,
    new_from_full_config,
)
from llm_proxy_db.sql import Migrations

KILLED_WRITER_CAP = 100_000
"""Most calls a SIGKILL victim makes if nobody kills it (a guard, never reached)."""


def pg_config(url: str, *, pool: int, auto_migrate: bool = False) -> FullConfig:
    """A PostgreSQL ``FullConfig`` for the fault tests."""
    return FullConfig(
        driver="postgres",
        database_url=url,
        max_open_conns=pool,
        max_idle_conns=pool,
        conn_max_lifetime=timedelta(minutes=5),
        auto_migrate=auto_migrate,
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__name__}: {exc}"


# -- PostgreSQL ---------------------------------------------------------------------------


def pg_increments(url: str, token: str, count: int, barrier: Any, results: Any) -> None:
    """Spawned: open a DB, meet the others, make ``count`` increments under the killer.

    Reports ``(acknowledged, failed, failure types, non-library errors)``.
    """
    acked = failed = 0
    kinds: dict[str, int] = {}
    wrong: list[str] = []
    try:
        db = new_from_full_config(pg_config(url, pool=1))
        try:
            barrier.wait(timeout=60)
            for _ in range(count):
                try:
                    db.increment_token_usage(token)
                except DatabaseError as exc:
                    failed += 1
                    kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
                except Exception as exc:  # anything but the library's errors fails the test
                    failed += 1
                    wrong.append(_describe(exc))
                else:
                    acked += 1
        finally:
            db.close()
    except BaseException as exc:  # reported to the parent, which fails the test
        barrier.abort()
        wrong.append(_describe(exc))
    results.put((acked, failed, kinds, wrong))


# -- SQLite -------------------------------------------------------------------------------


def sqlite_mixed_writer(
    path: str, project_id: str, shared: str, rounds: int, barrier: Any, results: Any
) -> None:
    """Spawned: ``rounds`` of a token, an increment of ``shared``, an audit event and a
    transaction (token + event), racing the other writers; every error is reported."""
    errors: list[str] = []
    done = 0
    try:
        db = new_from_full_config(FullConfig(path=path, auto_migrate=False))
        try:
            barrier.wait(timeout=60)
            for number in range(rounds):
                try:
                    db.create_token(Token(project_id=project_id))
                    db.increment_token_usage(shared)
                    db.create_audit_event(
                        AuditEvent(
                            action="fault.write",
                            actor="fault",
                            outcome="success",
                            project_id=project_id,
                            request_id=str(number),
                        )
                    )
                    with db.transaction() as tx:
                        tx.create_token(Token(project_id=project_id))
                        tx.create_audit_event(
                            AuditEvent(
                                action="fault.block",
                                actor="fault",
                                outcome="success",
                                project_id=project_id,
                            )
                        )
                except Exception as exc:
                    errors.append(_describe(exc))
                else:
                    done += 1
        finally:
            db.close()
    except BaseException as exc:
        barrier.abort()
        errors.append(_describe(exc))
    results.put((done, errors))


def sqlite_killed_writer(path: str, project_id: str, shared: str, pipe: Any) -> None:
    """Forkserver child: write until SIGKILLed, reporting each call before and after.

    Messages: ``b <kind> <key>`` before a call, ``a <kind> <key>`` once it returned,
    ``e <kind> <key> <error>`` when it raised. Kinds: ``token`` (key: the token),
    ``inc`` (key: pid and counter), ``event`` (key: the event id), ``block`` (key:
    ``<token>,<event id>``, both written in one transaction).
    """
    db = new_from_full_config(FullConfig(path=path, auto_migrate=False))
    pipe.send_bytes(b"ready")
    for number in range(KILLED_WRITER_CAP):
        kind = ("token", "inc", "event", "block")[number % 4]
        token = generate_token()
        event_id = str(uuid.uuid4())
        key = {"token": token, "inc": f"{os.getpid()}-{number}", "event": event_id}.get(
            kind, f"{token},{event_id}"
        )
        pipe.send_bytes(f"b {kind} {key}".encode())
        try:
            if kind == "token":
                db.create_token(Token(project_id=project_id, token=token))
            elif kind == "inc":
                db.increment_token_usage(shared)
            elif kind == "event":
                db.create_audit_event(
                    AuditEvent(id=event_id, action="fault.kill", actor="fault", outcome="success")
                )
            else:
                with db.transaction() as tx:
                    tx.create_token(Token(project_id=project_id, token=token))
                    tx.create_audit_event(
                        AuditEvent(
                            id=event_id, action="fault.kill", actor="fault", outcome="success"
                        )
                    )
        except Exception as exc:
            pipe.send_bytes(f"e {kind} {key} {type(exc).__name__}: {exc}".encode()[:4000])
        else:
            pipe.send_bytes(f"a {kind} {key}".encode())
    db.close()


# -- migrations ---------------------------------------------------------------------------


def migrate_up(driver: str, where: str, source: str, results: Any) -> None:
    """Spawned: run ``up`` of the migrations in ``source`` on the real backend's target
    (``where``: the SQLite path or the PostgreSQL URL), until done or killed."""
    try:
        backend: Any
        if driver == "sqlite":
            from llm_proxy_db_sqlite import SQLiteBackend

            backend = SQLiteBackend(FullConfig(path=where, auto_migrate=False))
        else:
            from llm_proxy_db_postgres import PostgresBackend

            backend = PostgresBackend(pg_config(where, pool=1))
        try:
            results.put(("started", []))
            results.put(("ok", Migrations(Path(source), backend).up()))
        finally:
            backend.close()
    except BaseException as exc:
        results.put(("error", _describe(exc)))
