"""Rendering: records as JSON-ready dicts (secrets removed), aligned tables, key: value blocks.

JSON documents use the cattrs converter's field names and ISO 8601 UTC datetimes. A project
never carries its upstream key (only ``api_key_masked``); a token's ``token`` field is masked
unless the caller reveals it (``token create`` only).

Human output passes every value through ``printable``: audit fields come from HTTP clients,
and a terminal must never receive their control characters (escape sequences, BEL, a
newline forging a table row, bidi overrides reordering a line). JSON stays exact.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import click

from .. import AuditEvent, Project, Token, converter, mask_token

__all__ = [
    "echo_document",
    "event_document",
    "fields",
    "printable",
    "project_document",
    "table",
    "token_document",
    "token_status",
    "when",
]


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
"""C0 and C1 controls, DEL, and the bidi embeddings, overrides and isolates."""
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: str) -> str:
    """``text`` safe for a terminal: each control character (C0, C1, DEL) and bidi control
    (U+202A-U+202E, U+2066-U+2069) written as a Python-style escape (``\\x1b``, ``\\n``,
    ``\\u202e``); everything else unchanged. Every human-readable printer uses it."""
    return _UNPRINTABLE.sub(_escape, text)


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
    """Columns padded to their widest cell, two spaces apart; no trailing blanks (cells
    made ``printable``)."""
    lines = [[printable(cell) for cell in line] for line in (headers, *rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def fields(pairs: Sequence[tuple[str, str]]) -> str:
    """``key: value`` lines with the values aligned (both made ``printable``)."""
    pairs = [(printable(key), printable(value)) for key, value in pairs]
    width = max((len(key) for key, _ in pairs), default=0) + 1
    return "\n".join(f"{key + ':':<{width}} {value}" for key, value in pairs)
