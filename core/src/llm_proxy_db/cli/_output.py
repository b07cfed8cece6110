"""Rendering: records as JSON-ready dicts (secrets removed), aligned tables, key: value blocks.

JSON documents use the cattrs converter's field names and ISO 8601 UTC datetimes. A project
never carries its upstream key (only ``api_key_masked``); a token's ``token`` field is masked
unless the caller reveals it (``token create`` only).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import click

from .. import AuditEvent, Project, Token, converter, mask_token

__all__ = [
    "echo_document",
    "event_document",
    "fields",
    "project_document",
    "table",
    "token_document",
    "token_status",
    "when",
]


def project_document(project: Project) -> dict[str, Any]:
    """The project as a dict, its ``openai_api_key`` replaced by ``api_key_masked``."""
    document: dict[str, Any] = converter.unstructure(project)
    del document["openai_api_key"]
    document["api_key_masked"] = mask_token(project.openai_api_key)
    return document


def token_document(token: Token, *, reveal: bool = False) -> dict[str, Any]:
    """The token as a dict; ``token`` masked unless ``reveal`` (the one-time print)."""
    document: dict[str, Any] = converter.unstructure(token)
    if not reveal:
        document["token"] = mask_token(token.token)
    return document


def event_document(event: AuditEvent) -> dict[str, Any]:
    """The audit event as a dict (its ``token_id`` is already masked by whoever wrote it)."""
    document: dict[str, Any] = converter.unstructure(event)
    return document


def echo_document(document: object) -> None:
    """Print one JSON document on stdout."""
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


def when(value: datetime | None) -> str:
    """A datetime for people: ISO 8601 UTC to the second, ``-`` for None."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def token_status(token: Token, *, project_active: bool = True) -> str:
    """One word for a token's state, in the order ``increment_token_usage`` checks it."""
    if not token.is_active:
        return "revoked"
    if token.is_expired():
        return "expired"
    if not project_active:
        return "project-inactive"
    if token.max_requests is not None and token.request_count >= token.max_requests:
        return "exhausted"
    return "active"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart; no trailing blanks."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def fields(pairs: Sequence[tuple[str, str]]) -> str:
    """``key: value`` lines with the values aligned."""
    width = max((len(key) for key, _ in pairs), default=0) + 1
    return "\n".join(f"{key + ':':<{width}} {value}" for key, value in pairs)
