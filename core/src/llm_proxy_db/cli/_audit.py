"""``audit``: read the append-only audit log (list, show, count)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, TypeVar

import click

from .. import AuditEventFilter, DatabaseError, ProjectNotFoundError
from ._output import echo_document, event_document, fields, table, when
from ._params import json_option, moment_option
from ._resolve import resolve_project
from ._state import State, pass_state

__all__ = ["audit"]

_F = TypeVar("_F", bound=Callable[..., Any])

DEFAULT_LIMIT = 50


@click.group()
def audit() -> None:
    """Read the audit log.

    Who changed what, when, and whether it worked.

    Times (--since, --until) are a duration ago (24h, 7d) or an ISO 8601 time; a time
    without an offset is UTC. --since is inclusive, --until exclusive.
    """


def _filter_options(command: _F) -> _F:
    options = [
        click.option("--action", help="Exactly this action, e.g. token.use."),
        click.option("--actor", help="Exactly this actor, e.g. cli:alice."),
        click.option(
            "--project",
            "project_ref",
            metavar="PROJECT",
            help="This project (id or name; the id of a deleted project works too).",
        ),
        click.option("--outcome", type=click.Choice(["success", "failure"])),
        moment_option("--since", help="From this time on, e.g. 24h or 2024-05-01."),
        moment_option("--until", help="Before this time."),
        click.option("--search", help="Case-insensitive text in action, actor, reason..."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _event_filter(
    state: State,
    *,
    action: str | None,
    actor: str | None,
    project_ref: str | None,
    outcome: Literal["success", "failure"] | None,
    since: datetime | None,
    until: datetime | None,
    search: str | None,
    limit: int | None = None,
    offset: int = 0,
    before_id: str | None = None,
) -> AuditEventFilter:
    project_id = None
    if project_ref is not None:
        try:
            project_id = resolve_project(state.db(), project_ref).id
        except ProjectNotFoundError:
            project_id = project_ref  # a deleted project's events keep its id
    return AuditEventFilter(
        action=action,
        actor=actor,
        project_id=project_id,
        outcome=outcome,
        start_time=since,
        end_time=until,
        search=search,
        limit=limit,
        offset=offset,
        before_id=before_id,
    )


@audit.command("list")
@_filter_options
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="At most this many events.",
)
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many first.")
@click.option(
    "--before",
    "before_id",
    metavar="ID",
    help="Only events after event ID in this order: the next page after ID (as fast as the first).",
)
@click.option(
    "--paged",
    is_flag=True,
    help='With --json: print {"events": [...], "next_before": ID or null} instead of the list.',
)
@json_option
@pass_state
def list_(
    state: State,
    action: str | None,
    actor: str | None,
    project_ref: str | None,
    outcome: Literal["success", "failure"] | None,
    since: datetime | None,
    until: datetime | None,
    search: str | None,
    limit: int,
    offset: int,
    before_id: str | None,
    paged: bool,
) -> None:
    """List matching events, newest first (PROJECT shows the name while the project exists).

    Page through many events with --before: pass the last ID of one page to get the next
    (unlike --offset, a deep page costs no more than the first). With --json --paged the
    document is {"events": [...], "next_before": ID}: next_before is the last event's id
    when the page is full (there may be more), null when it is not (the last page).
    """
    event_filter = _event_filter(
        state,
        action=action,
        actor=actor,
        project_ref=project_ref,
        outcome=outcome,
        since=since,
        until=until,
        search=search,
        limit=limit,
        offset=offset,
        before_id=before_id,
    )
    events = state.db().list_audit_events(event_filter)
    if state.json:
        documents = [event_document(event) for event in events]
        if paged:
            next_before = events[-1].id if len(events) == limit else None
            echo_document({"events": documents, "next_before": next_before})
        else:
            echo_document(documents)
        return
    if not events:
        click.echo("No matching audit events.")
        return
    try:
        names = {p.id: p.name for p in state.db().list_projects()}
    except DatabaseError:  # an unreadable project row (not UTF-8, say): show the ids
        names = {}
    rows = [
        (
            when(e.timestamp),
            e.action,
            e.outcome,
            e.actor,
            names.get(e.project_id, e.project_id) if e.project_id else "-",
            e.token_id or "-",
            e.reason or "",
            e.id,
        )
        for e in events
    ]
    headers = ("TIME", "ACTION", "OUTCOME", "ACTOR", "PROJECT", "TOKEN", "REASON", "ID")
    click.echo(table(headers, rows))


@audit.command("show")
@click.argument("event_id", metavar="ID")
@json_option
@pass_state
def show(state: State, event_id: str) -> None:
    """Show one event, metadata included."""
    event = state.db().get_audit_event_by_id(event_id)
    if state.json:
        echo_document(event_document(event))
        return
    pairs = [
        ("id", event.id),
        ("timestamp", when(event.timestamp)),
        ("action", event.action),
        ("actor", event.actor),
        ("outcome", event.outcome),
    ]
    optional = [
        ("project_id", event.project_id),
        ("token_id", event.token_id),
        ("reason", event.reason),
        ("request_id", event.request_id),
        ("correlation_id", event.correlation_id),
        ("client_ip", event.client_ip),
        ("method", event.method),
        ("path", event.path),
        ("user_agent", event.user_agent),
    ]
    pairs += [(key, value) for key, value in optional if value is not None]
    if event.metadata is not None:
        pairs.append(("metadata", json.dumps(event.metadata, sort_keys=True)))
    click.echo(fields(pairs))


@audit.command("count")
@_filter_options
@json_option
@pass_state
def count(
    state: State,
    action: str | None,
    actor: str | None,
    project_ref: str | None,
    outcome: Literal["success", "failure"] | None,
    since: datetime | None,
    until: datetime | None,
    search: str | None,
) -> None:
    """Count matching events. JSON: {"count": N}."""
    event_filter = _event_filter(
        state,
        action=action,
        actor=actor,
        project_ref=project_ref,
        outcome=outcome,
        since=since,
        until=until,
        search=search,
    )
    total = state.db().count_audit_events(event_filter)
    if state.json:
        echo_document({"count": total})
    else:
        click.echo(str(total))
