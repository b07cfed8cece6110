"""``backends``, ``health`` and ``stats``: what is installed, whether it answers, how big."""

from __future__ import annotations

from typing import Any

import click

from .. import BackendInfo, DatabaseError, MigrationError, list_backends
from ._output import echo_document, fields, table
from ._params import json_option
from ._state import State, pass_state

__all__ = ["backends", "health", "stats"]


def _backend_document(info: BackendInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "distribution": info.distribution,
        "version": info.version,
        "description": info.spec.description if info.spec else None,
        "capabilities": list(info.capabilities),
        "async": _async_mode(info),
        "error": info.error,
        "skipped": info.skipped,
    }


@click.command()
@json_option
@pass_state
def backends(state: State) -> None:
    """List the installed backends.

    Each with its distribution, version, capabilities, how ``llm_proxy_db.aio`` runs it
    (native, or in worker threads), and load error if any. Needs no database, so it works
    even when the configuration is broken.
    """
    infos = list_backends()
    if state.json:
        echo_document([_backend_document(info) for info in infos])
        return
    if not infos:
        click.echo("No backends installed; install e.g. llm-proxy-db-sqlite.")
        return
    rows = []
    for info in infos:
        if info.error:
            state_text = f"error: {info.error}"
        elif info.skipped:
            state_text = f"skipped: {info.skipped}"
        else:
            state_text = "ok"
        rows.append(
            (
                info.name,
                info.distribution or "-",
                info.version or "-",
                ",".join(info.capabilities) or "-",
                _async_mode(info) or "-",
                state_text,
            )
        )
    header = ("NAME", "DISTRIBUTION", "VERSION", "CAPABILITIES", "ASYNC", "STATUS")
    click.echo(table(header, rows))


def _async_mode(info: BackendInfo) -> str | None:
    """How ``llm_proxy_db.aio`` runs the backend: ``native``, ``threads`` (the offload
    adapter), or None when it did not load."""
    if info.spec is None:
        return None
    return "native" if info.native_async else "threads"


@click.command()
@click.option(
    "--deep",
    is_flag=True,
    help="Also run the backend's integrity check (SQLite: PRAGMA quick_check; PostgreSQL: "
    "a full read of each table). Slow on a large database.",
)
@json_option
@pass_state
def health(state: State, deep: bool) -> None:
    """Check that the database answers: a bounded read of each table.

    Exit 1 when it does not. Applies no migration; reports the schema version. With
    --deep, also the backend's integrity check ("integrity": "ok", or "unavailable" for a
    backend without one).

    JSON: {"ok": true, "backend": ..., "schema_version": N or null, "latest": N or null}
    (and "integrity" with --deep).
    """
    db = state.db(auto_migrate=False)
    current: int | None = None
    latest: int | None = None
    try:
        runner = db.migrations
    except MigrationError:  # a backend without migrations
        pass
    else:
        current, latest = runner.version(), runner.latest
    try:
        db.health_check()
    except DatabaseError:
        if current != 0:
            raise
        # No migration applied: no tables to read yet; the pending note below says so.
    integrity: str | None = None
    if deep and current != 0:
        integrity = "ok" if db.check_integrity() else "unavailable"
    if state.json:
        document: dict[str, Any] = {
            "ok": True,
            "backend": db.backend_spec.name,
            "schema_version": current,
            "latest": latest,
        }
        if integrity is not None:
            document["integrity"] = integrity
        echo_document(document)
        return
    pairs = [("status", "ok"), ("backend", db.backend_spec.name)]
    if current is not None and latest is not None:
        note = "" if current >= latest else "  (pending: run 'llm-proxy-db migrate up')"
        pairs.append(("schema", f"version {current} of {latest}{note}"))
    if integrity is not None:
        pairs.append(("integrity", integrity))
    click.echo(fields(pairs))


@click.command()
@json_option
@pass_state
def stats(state: State) -> None:
    """Show counts of projects, tokens, requests; the size.

    JSON: {"backend", "projects", "active_projects", "tokens", "active_tokens",
    "expired_tokens", "total_requests", "size_bytes" (null when unknown)}.
    """
    db = state.db()
    numbers = db.stats()
    if state.json:
        echo_document(
            {
                "backend": db.backend_spec.name,
                "projects": numbers.projects,
                "active_projects": numbers.active_projects,
                "tokens": numbers.tokens,
                "active_tokens": numbers.active_tokens,
                "expired_tokens": numbers.expired_tokens,
                "total_requests": numbers.total_requests,
                "size_bytes": numbers.size_bytes,
            }
        )
        return
    size = "unknown" if numbers.size_bytes is None else f"{numbers.size_bytes} bytes"
    click.echo(
        fields(
            [
                ("backend", db.backend_spec.name),
                ("projects", f"{numbers.projects} ({numbers.active_projects} active)"),
                ("tokens", str(numbers.tokens)),
                ("active_tokens", str(numbers.active_tokens)),
                ("expired_tokens", str(numbers.expired_tokens)),
                ("total_requests", str(numbers.total_requests)),
                ("size", size),
            ]
        )
    )
