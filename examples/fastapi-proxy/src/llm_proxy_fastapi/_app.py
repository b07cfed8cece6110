"""The proxy: ``POST /v1/chat/completions`` on ``aio.lifespan()`` and an audit writer.

Each request: the bearer token is counted with ``authorize`` (one call that validates,
counts or refuses it and returns its project with the upstream key), the upstream is
called, and one audit event recording the outcome is submitted to the app's
``AsyncAuditWriter``, which stores events in batches off the request's path. Refusals
become HTTP statuses from the error classes alone, never from their messages.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from llm_proxy_db import (
    AuditEvent,
    DatabaseError,
    FullConfig,
    ProjectInactiveError,
    ProjectNotFoundError,
    TokenExpiredError,
    TokenInactiveError,
    TokenLimitReachedError,
    TokenNotFoundError,
    TokenUsageError,
    TransientError,
    aio,
    mask_token,
)

__all__ = ["AUDIT_ACTION", "AUDIT_WRITER", "Upstream", "canned_upstream", "create_app"]

logger = logging.getLogger("llm_proxy_fastapi")

AUDIT_ACTION = "proxy.request"
"""The ``action`` of the audit event written for every request."""

AUDIT_WRITER = "audit_writer"
"""Where the app's ``AsyncAuditWriter`` is: ``request.state.audit_writer`` (the lifespan
state, next to ``db``) and ``app.state.audit_writer`` while the app runs."""

AUDIT_SUBMIT_TIMEOUT = 1.0
"""Seconds a request waits for room in a full audit backlog (the database down or slow)
before its event is logged as not stored."""

Upstream = Callable[[dict[str, Any], str], Awaitable[dict[str, Any]]]
"""The upstream call: ``(request body, upstream API key) -> chat completion``."""

_BEARER = re.compile(r"Bearer +(\S+) *", re.IGNORECASE)
_MAX_TEXT = 1024  # path and user agent, as stored in the audit event (the limit is 16,383)
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,191}")  # printable ASCII, an AuditEvent id's limit


async def canned_upstream(body: dict[str, Any], api_key: str) -> dict[str, Any]:
    """A stand-in for OpenAI: an OpenAI-shaped chat completion echoing the last message.

    A real upstream would POST ``body`` with ``Authorization: Bearer <api_key>``.
    """
    messages = body.get("messages") or [{}]
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    content = f"echo: {last.get('content', '')}"
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


class _Refusal(Exception):
    """An answer other than 200: the HTTP status and the OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.kind = status, code, message, kind
        self.headers = headers or {}

    def response(self, request_id: str) -> JSONResponse:
        body = {
            "error": {"message": self.message, "type": self.kind, "param": None, "code": self.code}
        }
        return JSONResponse(
            body, status_code=self.status, headers={**self.headers, "X-Request-ID": request_id}
        )


_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def _refusal(exc: DatabaseError) -> _Refusal:
    """The HTTP answer to a store error, chosen by its class (messages are masked)."""
    if isinstance(exc, TokenNotFoundError):
        return _Refusal(401, "invalid_api_key", "Incorrect API key provided", headers=_UNAUTHORIZED)
    if isinstance(exc, TokenInactiveError):
        return _Refusal(401, "token_inactive", "This API key was revoked", headers=_UNAUTHORIZED)
    if isinstance(exc, TokenExpiredError):
        return _Refusal(401, "token_expired", "This API key has expired", headers=_UNAUTHORIZED)
    if isinstance(exc, ProjectInactiveError | ProjectNotFoundError):
        return _Refusal(403, "project_inactive", "This API key's project is not active")
    if isinstance(exc, TokenLimitReachedError):
        limit = exc.max_requests
        used = f"all of its {limit} requests" if limit is not None else "all of its requests"
        return _Refusal(
            429, "insufficient_quota", f"This API key has used {used}", kind="insufficient_quota"
        )
    headers = {"Retry-After": "1"} if isinstance(exc, TransientError) else {}
    return _Refusal(
        503,
        "storage_unavailable",
        "The token store is unavailable",
        kind="server_error",
        headers=headers,
    )


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def _bearer(request: Request) -> str:
    match = _BEARER.fullmatch(request.headers.get("authorization", ""))
    if match is None:
        raise _Refusal(
            401,
            "missing_api_key",
            "Send the API key as Authorization: Bearer <key>",
            headers=_UNAUTHORIZED,
        )
    return match[1]


async def _chat_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("model"), str)
        or not isinstance(body.get("messages"), list)
    ):
        raise _Refusal(
            400, "invalid_body", "The body must be a JSON object with model and messages"
        )
    return cast(dict[str, Any], body)


def _lifespan(
    config: FullConfig | None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]]:
    """``aio.lifespan(config)`` plus an audit writer on its database, closed (everything
    pending stored) before the database closes."""
    database = aio.lifespan(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with database(app) as state:
            writer = await state["db"].audit_writer()
            setattr(app.state, AUDIT_WRITER, writer)
            try:
                yield {**state, AUDIT_WRITER: writer}
            finally:
                await writer.close()
                setattr(app.state, AUDIT_WRITER, None)

    return lifespan


def create_app(config: FullConfig | None = None, upstream: Upstream = canned_upstream) -> FastAPI:
    """The proxy application on ``aio.lifespan(config)`` (default: the environment), with
    an ``AsyncAuditWriter`` for the audit events."""
    app = FastAPI(title="llm-proxy-fastapi", lifespan=_lifespan(config))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        db = cast(aio.AsyncDB, request.state.db)
        audit = cast(aio.AsyncAuditWriter, getattr(request.state, AUDIT_WRITER))
        request_id = _request_id(request)
        trail: dict[str, Any] = {"actor": "anonymous"}
        status, reason, response = 200, None, None
        try:
            token_value = _bearer(request)
            trail["actor"] = trail["token_id"] = mask_token(token_value)
            body = await _chat_body(request)
            try:
                authorized = await db.authorize(token_value)
            except TokenUsageError as exc:
                trail["project_id"] = exc.project_id
                raise _refusal(exc) from None
            except DatabaseError as exc:
                # The class only: a backend's message is masked, but the log needs no more.
                logger.warning("request %s: the store failed (%s)", request_id, type(exc).__name__)
                raise _refusal(exc) from None
            trail["project_id"] = authorized.project.id
            try:
                completion = await upstream(body, authorized.project.openai_api_key)
            except Exception as exc:
                # Only the class: an upstream's message may quote the request or the key.
                raise _Refusal(
                    502, "upstream_error", "The upstream call failed", kind="server_error"
                ) from exc
            response = JSONResponse(completion, headers={"X-Request-ID": request_id})
        except _Refusal as refusal:
            status, reason = refusal.status, refusal.code
            if refusal.__cause__ is not None:
                reason = f"{refusal.code}: {type(refusal.__cause__).__name__}"
            response = refusal.response(request_id)
        await _audit(audit, request, request_id, trail, status, reason)
        return response

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        db = cast(aio.AsyncDB, request.state.db)
        try:
            await db.health_check()
        except DatabaseError:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    return app


async def _audit(
    audit: aio.AsyncAuditWriter,
    request: Request,
    request_id: str,
    trail: dict[str, Any],
    status: int,
    reason: str | None,
) -> None:
    """One audit event for the request, submitted to the writer (stored in a batch soon
    after); a writer that cannot take it is logged, not raised (the client's answer is
    already decided)."""
    event = AuditEvent(
        action=AUDIT_ACTION,
        outcome="success" if status == 200 else "failure",
        request_id=request_id,
        client_ip=request.client.host if request.client else None,
        method=request.method,
        path=request.url.path[:_MAX_TEXT],
        user_agent=request.headers.get("user-agent", "")[:_MAX_TEXT] or None,
        reason=reason,
        metadata={"status": status},
        **trail,
    )
    logger.info(
        "%s %s %d request_id=%s token=%s",
        request.method,
        request.url.path,
        status,
        request_id,
        trail.get("token_id", "-"),
    )
    try:
        await audit.submit(event, timeout=AUDIT_SUBMIT_TIMEOUT)
    except DatabaseError as exc:
        logger.warning("audit event for request %s not stored: %s", request_id, exc)
