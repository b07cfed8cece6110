"""``migrate``: apply, roll back and report the schema migrations.

The database is opened with ``auto_migrate=False`` so that ``down`` sticks and ``status``
shows pending versions; a schema newer than the shipped files still fails to open.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from .. import MigrationError
from ._output import echo_document, table, when
from ._params import json_option
from ._state import State, pass_state

if TYPE_CHECKING:
    from ..sql import Migrations

__all__ = ["NoMigrationsError", "migrate"]


class NoMigrationsError(MigrationError):
    """The selected backend has no schema migrations (only SQL backends have them)."""


@click.group()
def migrate() -> None:
    """Schema migrations (goose-compatible) of SQL backends.

    Other commands apply pending migrations on their own; these let an operator look first
    or step back. Backends without migrations (memory) exit 1.
    """


def _migrations(state: State) -> Migrations:
    db = state.db(auto_migrate=False)
    if db.backend_spec.migrations is None:
        raise NoMigrationsError(f"the {db.backend_spec.name} backend has no schema migrations")
    return db.migrations


@migrate.command("up")
@json_option
@pass_state
def up(state: State) -> None:
    """Apply every pending migration. JSON: {"applied": [versions], "version": N}."""
    runner = _migrations(state)
    applied = runner.up()
    version = runner.version()
    if state.json:
        echo_document({"applied": applied, "version": version})
    elif applied:
        click.echo(f"Applied {', '.join(map(str, applied))}; now at version {version}.")
    else:
        click.echo(f"Nothing to apply; at version {version}.")


@migrate.command("down")
@click.option(
    "--force",
    is_flag=True,
    help="Roll back even though a newer migration stopped partway (MySQL: DDL is not "
    "transactional); its completed statements stay applied.",
)
@json_option
@pass_state
def down(state: State, force: bool) -> None:
    """Roll back the newest applied migration (one step).

    JSON: {"rolled_back": N or null, "version": N}.
    """
    runner = _migrations(state)
    rolled_back = runner.down(force=force)
    version = runner.version()
    if state.json:
        echo_document({"rolled_back": rolled_back, "version": version})
    elif rolled_back is None:
        click.echo("Nothing to roll back; at version 0.")
    else:
        click.echo(f"Rolled back {rolled_back}; now at version {version}.")


@migrate.command("status")
@json_option
@pass_state
def status(state: State) -> None:
    """Every version, applied or pending, and when it was applied.

    A migration that stopped partway (MySQL: DDL is not transactional) is "partial", and a
    line after the table says "version N stopped after statement k of m". JSON adds
    "stopped_in" ("up", "down" or null), "statements_done" and "statements_total".
    """
    versions = _migrations(state).status()
    if state.json:
        echo_document(
            [
                {
                    "version": item.version,
                    "name": item.name,
                    "applied": item.applied,
                    "applied_at": None if item.applied_at is None else item.applied_at.isoformat(),
                    "stopped_in": item.stopped_in,
                    "statements_done": item.statements_done,
                    "statements_total": item.statements_total,
                }
                for item in versions
            ]
        )
        return
    rows = [
        (
            str(item.version),
            item.name or "(no file)",
            "partial" if item.progress else "applied" if item.applied else "pending",
            when(item.applied_at),
        )
        for item in versions
    ]
    click.echo(table(("VERSION", "NAME", "STATUS", "APPLIED AT"), rows))
    for item in versions:
        if item.progress is None:
            continue
        again = "migrate down" if item.stopped_in == "down" else "migrate up"
        click.echo(f"{item.progress}: {again} resumes it at statement {item.statements_done + 1}.")


@migrate.command("version")
@json_option
@pass_state
def version(state: State) -> None:
    """The newest applied version, and the newest shipped one.

    JSON: {"version": N, "latest": N}.
    """
    runner = _migrations(state)
    current, latest = runner.version(), runner.latest
    if state.json:
        echo_document({"version": current, "latest": latest})
    else:
        click.echo(f"{current} (latest shipped: {latest})")
