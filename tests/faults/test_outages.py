"""PostgreSQL outages: the server cut off by a TCP forwarder on loopback (never the real
server stopped). While it is unreachable every call fails fast with a ``TransientError``
naming the cause, nothing hangs, ``health_check()`` answers within the connect timeout,
and the first call after the cut succeeds within 3 s, with no acknowledged request lost.

The cut lasts ``LLM_PROXY_DB_OUTAGE_SECONDS`` (default 10); the file stays under 60 s.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import attrs
import pytest

from llm_proxy_db import (
    DB,
    FullConfig,
    Project,
    Token,
    TransientError,
    new_from_full_config,
)
from tests.faults.forwarder import Forwarder

psycopg = pytest.importorskip("psycopg")
from psycopg import conninfo  # noqa: E402 - after the skip when psycopg is missing

CUT_SECONDS = float(os.environ.get("LLM_PROXY_DB_OUTAGE_SECONDS", "") or 10)
POOL_TIMEOUT = timedelta(seconds=2)
CONNECT_TIMEOUT = timedelta(seconds=2)  # libpq's minimum
CLIENTS = 16
PAUSE_S = 0.005
"""Between two calls of one client: a proxy under load, not a busy loop."""
FAST_S = 0.1
RECOVERY_S = 3.0


@pytest.fixture
def forwarder() -> Iterator[Forwarder]:
    with Forwarder() as fw:
        yield fw


def _through(url: str, fw: Forwarder) -> str:
    return conninfo.make_conninfo(url, host="127.0.0.1", hostaddr="", port=str(fw.port))


def _config(url: str, **overrides: object) -> FullConfig:
    settings: dict[str, object] = {
        "driver": "postgres",
        "database_url": url,
        "max_open_conns": 10,
        "max_idle_conns": 5,
        "pool_timeout": POOL_TIMEOUT,
        "connect_timeout": CONNECT_TIMEOUT,
    }
    settings.update(overrides)
    return FullConfig(**settings)  # type: ignore[arg-type]


@attrs.define
class Call:
    started: float
    seconds: float
    error: BaseException | None


@attrs.define
class Load:
    """``CLIENTS`` threads counting requests on one token until stopped."""

    db: DB
    token: str
    calls: list[Call] = attrs.field(factory=list)
    stop: threading.Event = attrs.field(factory=threading.Event)
    threads: list[threading.Thread] = attrs.field(factory=list)

    def start(self) -> None:
        for _ in range(CLIENTS):
            thread = threading.Thread(target=self._client, daemon=True)
            thread.start()
            self.threads.append(thread)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=POOL_TIMEOUT.total_seconds() + 10)
        assert not any(thread.is_alive() for thread in self.threads), "a client hung"

    def _client(self) -> None:
        mine: list[Call] = []
        while not self.stop.is_set():
            started = time.monotonic()
            error: BaseException | None = None
            try:
                self.db.increment_token_usage(self.token)
            except BaseException as exc:
                error = exc
            mine.append(Call(started, time.monotonic() - started, error))
            time.sleep(PAUSE_S)
        self.calls.extend(mine)  # list.extend is atomic under the GIL


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def test_a_cut_fails_fast_with_transient_errors_and_recovers(
    postgres_url: str, forwarder: Forwarder
) -> None:
    with new_from_full_config(_config(_through(postgres_url, forwarder))) as db:
        project = db.create_project(Project(name="outage", openai_api_key="sk-upstream"))
        token = db.create_token(Token(project_id=project.id)).token
        load = Load(db, token)
        load.start()
        time.sleep(0.5)  # warm: every client succeeding

        cut_at = time.monotonic()
        forwarder.stop()
        time.sleep(min(1.0, CUT_SECONDS / 2))
        health_started = time.monotonic()
        with pytest.raises(TransientError) as health:
            db.health_check()
        health_seconds = time.monotonic() - health_started
        time.sleep(max(0.0, cut_at + CUT_SECONDS - time.monotonic()))
        restored_at = time.monotonic()
        forwarder.start()
        time.sleep(RECOVERY_S + 0.5)  # the clients keep calling: the first success is timed
        load.finish()
        counted = db.get_token_by_id(token).request_count

    calls = load.calls
    during = [c for c in calls if cut_at + 0.05 <= c.started < restored_at]
    failures = [c for c in calls if c.error is not None]
    assert during, "no call ran during the cut"
    not_transient = [c.error for c in failures if not isinstance(c.error, TransientError)]
    assert not_transient == [], not_transient[:3]
    failed_during = [c.seconds for c in during if c.error is not None]
    assert len(failed_during) >= 0.99 * len(during)
    p50 = _percentile(failed_during, 0.50)
    p95 = _percentile(failed_during, 0.95)
    p99 = _percentile(failed_during, 0.99)
    worst = max(failed_during)
    print(
        f"\ncut {CUT_SECONDS:g} s: {len(during)} calls, {len(failed_during)} failed; "
        f"latency p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {worst * 1000:.0f} ms; health_check {health_seconds * 1000:.0f} ms"
    )
    pool_s = POOL_TIMEOUT.total_seconds()
    assert p95 < FAST_S, "calls do not fail fast while the server is known to be down"
    assert p99 < pool_s
    assert worst < pool_s + 1, "a call waited longer than the pool timeout"
    assert health_seconds < CONNECT_TIMEOUT.total_seconds()
    assert "PostgreSQL at 127.0.0.1" in str(health.value)

    after = sorted(
        (c for c in calls if c.started >= restored_at and c.error is None),
        key=lambda c: c.started,
    )
    assert after, "nothing succeeded after the cut ended"
    first_ok = after[0].started + after[0].seconds - restored_at
    print(f"first success {first_ok * 1000:.0f} ms after the cut ended")
    assert first_ok < RECOVERY_S

    acknowledged = sum(1 for c in calls if c.error is None)
    in_doubt = sum(1 for c in failures if "may or may not have been counted" in str(c.error))
    assert acknowledged <= counted <= acknowledged + in_doubt
    for call in failures:
        message = str(call.error)
        assert "PostgreSQL at 127.0.0.1" in message, message
        assert "sk-upstream" not in message and token not in message


def test_messages_name_the_cause_refused_or_lost(postgres_url: str, forwarder: Forwarder) -> None:
    url = _through(postgres_url, forwarder)
    with new_from_full_config(_config(url, max_open_conns=2, max_idle_conns=2)) as db:
        db.list_projects()
        forwarder.stop()
        with pytest.raises(TransientError, match="connection was lost"):
            db.list_projects()  # the idle connection, cut
        started = time.monotonic()
        with pytest.raises(TransientError, match="refused the connection") as refused:
            for _ in range(50):  # the pool learns of the refusal within a few calls
                try:
                    db.list_projects()
                except TransientError as exc:
                    if "refused the connection" in str(exc):
                        raise
                    assert "Connection refused" in str(exc) or "lost" in str(exc), exc
                time.sleep(0.02)
        # At most one call waits out the pool timeout (it asked before the refusal was
        # known): the breaker then fails calls at once.
        assert time.monotonic() - started < POOL_TIMEOUT.total_seconds() + 1
        fast = time.monotonic()
        with pytest.raises(TransientError, match="refused the connection"):
            db.list_projects()
        assert time.monotonic() - fast < FAST_S
        assert f":{forwarder.port}/" in str(refused.value)
        forwarder.start()
        deadline = time.monotonic() + RECOVERY_S
        while True:
            try:
                assert db.list_projects() == []
                break
            except TransientError:
                assert time.monotonic() < deadline, "no recovery within 3 s"
                time.sleep(0.05)


def test_opening_while_the_server_refuses_is_a_transient_error(
    postgres_url: str, forwarder: Forwarder
) -> None:
    url = _through(postgres_url, forwarder)
    forwarder.stop()
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"cannot reach PostgreSQL at 127\.0\.0\.1"):
        new_from_full_config(_config(url))
    assert time.monotonic() - started < CONNECT_TIMEOUT.total_seconds() + 0.5
