"""The proxy over httpx's ASGI transport, on SQLite and PostgreSQL.

httpx's ``ASGITransport`` does not run the ASGI lifespan, so :func:`serve` does what a
server (uvicorn) does: it runs the lifespan protocol against the app with a state dict,
and hands each request a copy of that state, where the app's lifespan put the ``AsyncDB``
and its ``AsyncAuditWriter``. Audit events are stored in batches after the answer: a test
reading them flushes the writer first.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from fastapi import FastAPI
from llm_proxy_fastapi import AUDIT_ACTION, AUDIT_WRITER, Upstream, canned_upstream, create_app

from llm_proxy_db import AuditEventFilter, FullConfig, Project, Token, aio, mask_token

pytestmark = pytest.mark.anyio

Message = dict[str, Any]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgres"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> FullConfig:
    if request.param == "sqlite":
        return FullConfig(driver="sqlite", path=str(tmp_path / "proxy.db"))
    url: str = request.getfixturevalue("postgres_url")
    return FullConfig(driver="postgres", database_url=url)


class Proxy:
    """The running app: an httpx client on it, the app's own ``AsyncDB`` and audit writer."""

    def __init__(
        self, client: httpx.AsyncClient, db: aio.AsyncDB, audit: aio.AsyncAuditWriter
    ) -> None:
        self.client, self.db, self.audit = client, db, audit

    async def chat(self, token: str | None, **headers: str) -> httpx.Response:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        return await self.client.post("/v1/chat/completions", json=body, headers=headers)


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[Proxy]:
    """Start ``app`` through the ASGI lifespan protocol; shut it down on exit."""
    state: dict[str, Any] = {}
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}
    running = asyncio.create_task(app(scope, inbox.get, outbox.put))  # type: ignore[arg-type]

    async def step(kind: str) -> None:
        await inbox.put({"type": f"lifespan.{kind}"})
        answer = await outbox.get()
        assert answer["type"] == f"lifespan.{kind}.complete", answer

    await step("startup")
    try:

        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            await app({**scope, "state": dict(state)}, receive, send)

        transport = httpx.ASGITransport(app=with_state, client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            assert app.state.audit_writer is state[AUDIT_WRITER]
            yield Proxy(client, state["db"], state[AUDIT_WRITER])
    finally:
        await step("shutdown")
        await running


@asynccontextmanager
async def running(config: FullConfig, upstream: Upstream = canned_upstream) -> AsyncIterator[Proxy]:
    async with serve(create_app(config, upstream=upstream)) as proxy:
        yield proxy


def secret_key() -> str:
    """An upstream key in the form the session's log guard looks for (tests/fixtures)."""
    return f"sk-proj-{secrets.token_hex(24)}"


async def new_token(proxy: Proxy, **changes: Any) -> tuple[Project, Token]:
    project = await proxy.db.create_project(Project(name="acme", openai_api_key=secret_key()))
    token = await proxy.db.create_token(Token(project_id=project.id, **changes))
    return project, token


def assert_no_secret(response: httpx.Response, *hidden: str) -> None:
    shown = response.text + repr(response.headers)
    for secret in hidden:
        assert secret not in shown


async def events(proxy: Proxy, **filters: Any) -> list[Any]:
    """The proxy's audit events, once the writer has stored every one submitted."""
    await proxy.audit.flush()
    return await proxy.db.list_audit_events(AuditEventFilter(action=AUDIT_ACTION, **filters))


async def count_events(proxy: Proxy, **filters: Any) -> int:
    await proxy.audit.flush()
    return await proxy.db.count_audit_events(AuditEventFilter(action=AUDIT_ACTION, **filters))


async def test_a_counted_request_gets_the_completion_and_is_audited(config: FullConfig) -> None:
    seen: list[str] = []

    async def upstream(body: dict[str, Any], api_key: str) -> dict[str, Any]:
        seen.append(api_key)
        return await canned_upstream(body, api_key)

    async with running(config, upstream) as proxy:
        project, token = await new_token(proxy, max_requests=5)
        response = await proxy.chat(token.token, **{"X-Request-ID": "req-1", "User-Agent": "t/1"})
        assert response.status_code == 200, response.text
        completion = response.json()
        assert completion["object"] == "chat.completion"
        assert completion["choices"][0]["message"] == {"role": "assistant", "content": "echo: hi"}
        assert response.headers["X-Request-ID"] == "req-1"
        assert seen == [project.openai_api_key]
        assert_no_secret(response, token.token, project.openai_api_key)
        assert (await proxy.db.get_token_by_id(token.token)).request_count == 1
        (event,) = await events(proxy)
        assert (event.outcome, event.reason, event.request_id) == ("success", None, "req-1")
        assert (event.project_id, event.token_id, event.actor) == (
            project.id,
            mask_token(token.token),
            mask_token(token.token),
        )
        assert (event.method, event.path, event.client_ip) == (
            "POST",
            "/v1/chat/completions",
            "203.0.113.7",
        )
        assert event.user_agent == "t/1" and event.metadata == {"status": 200}


async def _refused(proxy: Proxy, token: str | None, status: int, code: str) -> httpx.Response:
    response = await proxy.chat(token)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and set(error) == {"message", "type", "param", "code"}
    (event, *_) = await events(proxy, limit=1)
    assert event.outcome == "failure" and event.reason == code
    assert event.metadata == {"status": status}
    assert event.request_id == response.headers["X-Request-ID"]
    return response


async def test_refusals_map_to_http_statuses(config: FullConfig) -> None:
    past = datetime.now(UTC) - timedelta(minutes=1)
    async with running(config) as proxy:
        project, token = await new_token(proxy, max_requests=1)
        expired = await proxy.db.create_token(Token(project_id=project.id, expires_at=past))
        revoked = await proxy.db.create_token(Token(project_id=project.id))
        await proxy.db.revoke_token(revoked.token)
        hidden = (token.token, expired.token, revoked.token, project.openai_api_key)

        for response in [
            await _refused(proxy, None, 401, "missing_api_key"),
            await _refused(proxy, "sk-unknown", 401, "invalid_api_key"),
            await _refused(proxy, revoked.token, 401, "token_inactive"),
            await _refused(proxy, expired.token, 401, "token_expired"),
        ]:
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert_no_secret(response, *hidden)

        assert (await proxy.chat(token.token)).status_code == 200
        response = await _refused(proxy, token.token, 429, "insufficient_quota")
        assert "all of its 1 requests" in response.json()["error"]["message"]
        assert_no_secret(response, *hidden)

        await proxy.db.update_project(attrs.evolve(project, is_active=False))
        fresh = await proxy.db.create_token(Token(project_id=project.id))
        response = await _refused(proxy, fresh.token, 403, "project_inactive")
        assert_no_secret(response, *hidden, fresh.token)
        (event, *_) = await events(proxy, limit=1)
        assert event.project_id == project.id  # from the error's attributes
        assert await count_events(proxy) == 7


async def test_a_bad_body_is_refused_before_counting(config: FullConfig) -> None:
    async with running(config) as proxy:
        _, token = await new_token(proxy)
        headers = {"Authorization": f"Bearer {token.token}"}
        response = await proxy.client.post("/v1/chat/completions", content=b"{", headers=headers)
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_body"
        assert (await proxy.db.get_token_by_id(token.token)).request_count == 0


async def test_a_failing_upstream_is_a_502_that_hides_its_message(config: FullConfig) -> None:
    async def upstream(body: dict[str, Any], api_key: str) -> dict[str, Any]:
        raise RuntimeError(f"refused key {api_key}")

    async with running(config, upstream) as proxy:
        project, token = await new_token(proxy)
        response = await proxy.chat(token.token)
        assert response.status_code == 502
        assert_no_secret(response, token.token, project.openai_api_key)
        (event,) = await events(proxy)
        assert event.reason == "upstream_error: RuntimeError"


async def test_a_closed_store_is_a_503(config: FullConfig) -> None:
    async with running(config) as proxy:
        _, token = await new_token(proxy)
        assert (await proxy.client.get("/healthz")).status_code == 200
        await proxy.db.close()
        response = await proxy.chat(token.token)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "storage_unavailable"
        assert "Retry-After" not in response.headers  # closed: not transient
        assert (await proxy.client.get("/healthz")).status_code == 503


async def test_a_busy_sqlite_store_is_a_503_with_retry_after(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    config = FullConfig(driver="sqlite", path=str(path), busy_timeout=timedelta(milliseconds=50))
    async with running(config) as proxy:
        _, token = await new_token(proxy)
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # holds the write lock
            response = await proxy.chat(token.token)
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "1"
        assert (await proxy.db.get_token_by_id(token.token)).request_count == 0


async def test_no_secret_is_logged(config: FullConfig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running(config) as proxy:
        project, token = await new_token(proxy, max_requests=1)
        for _ in range(2):
            await proxy.chat(token.token)
        await proxy.db.revoke_token(token.token)
        await proxy.chat(token.token)
        await proxy.chat("sk-" + "x" * 43)
    assert any(r.name == "llm_proxy_fastapi" for r in caplog.records)
    for secret in (token.token, project.openai_api_key, "sk-" + "x" * 43):
        assert secret not in caplog.text


async def test_a_limit_of_50_holds_under_200_concurrent_requests(config: FullConfig) -> None:
    async with running(config) as proxy:
        _, token = await new_token(proxy, max_requests=50)
        responses = await asyncio.gather(*(proxy.chat(token.token) for _ in range(200)))
        statuses = [r.status_code for r in responses]
        assert (statuses.count(200), statuses.count(429)) == (50, 150)
        assert (await proxy.db.get_token_by_id(token.token)).request_count == 50
        assert await count_events(proxy) == 200
        assert await count_events(proxy, outcome="success") == 50
        assert proxy.audit.written == 200 and proxy.audit.rejected == 0
        request_ids = {r.headers["X-Request-ID"] for r in responses}
        assert len(request_ids) == 200


async def test_shutdown_stores_every_submitted_audit_event(config: FullConfig) -> None:
    async with running(config) as proxy:
        _, token = await new_token(proxy)
        for _ in range(20):
            assert (await proxy.chat(token.token)).status_code == 200
        writer = proxy.audit
    assert writer.closed and writer.pending == 0 and writer.written == 20
    async with await aio.new_from_full_config(config) as db:
        stored = await db.count_audit_events(AuditEventFilter(action=AUDIT_ACTION))
        assert stored == 20


async def test_a_closed_writer_loses_no_answer(
    config: FullConfig, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(config) as proxy:
        _, token = await new_token(proxy)
        await proxy.audit.close()
        response = await proxy.chat(token.token)
        assert response.status_code == 200, response.text
        assert any("not stored" in r.getMessage() for r in caplog.records)
        assert await proxy.db.count_audit_events(AuditEventFilter(action=AUDIT_ACTION)) == 0
