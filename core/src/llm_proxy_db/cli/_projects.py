"""``project``: create, list, show, update, deactivate, activate and delete projects."""

from __future__ import annotations

from typing import Any

import attrs
import click

from .. import DatabaseError, Project, ProjectExistsError, Stores
from .._clock import utcnow
from ._changes import Trail, audited_change
from ._output import echo_document, fields, printable, project_document, table, when
from ._params import json_option
from ._resolve import read_secret, resolve_project
from ._state import State, pass_state
from ._usage import HintedBadParameter, HintedUsageError

__all__ = ["project"]

_KEY = "upstream API key"
_NAME_IT = "give the project a name"
_CHANGED_NAMES = {"openai_api_key": "api_key"}
"""How the audit metadata names a changed field (never the key itself, of course)."""


@click.group()
def project() -> None:
    """Manage projects (tenants holding an upstream API key).

    Wherever a project is named, its id or its name works. Exit codes: 0 done, 1 the store
    refused (unknown project, name taken) or failed, 2 bad input (nothing changed).
    """


def _print_project(state: State, item: Project, message: str | None = None) -> None:
    if state.json:
        echo_document(project_document(item))
        return
    if message:
        click.echo(printable(message))
    click.echo(
        fields(
            [
                ("id", item.id),
                ("name", item.name),
                ("api_key", project_document(item)["api_key_masked"]),
                ("status", "active" if item.is_active else "inactive"),
                ("deactivated_at", when(item.deactivated_at)),
                ("created_at", when(item.created_at)),
                ("updated_at", when(item.updated_at)),
            ]
        )
    )


def _key_options(command: click.decorators.FC) -> click.decorators.FC:
    command = click.option(
        "--api-key-env",
        metavar="VAR",
        help=f"Read the {_KEY} from the environment variable VAR.",
    )(command)
    return click.option(
        "--api-key-stdin",
        is_flag=True,
        help=f"Read the {_KEY} from stdin (prompted, hidden, on a terminal).",
    )(command)


def _project_named(state: State, name: str) -> Project | None:
    return next((p for p in state.db().list_projects() if p.name == name), None)


@project.command("create")
@click.argument("name")
@_key_options
@click.option(
    "--exist-ok",
    is_flag=True,
    help="If a project NAME exists (created by anyone, even meanwhile), print it and exit 0; "
    "it is left unchanged and its key is not compared.",
)
@json_option
@pass_state
def create(
    state: State, name: str, api_key_stdin: bool, api_key_env: str | None, exist_ok: bool
) -> None:
    """Create the project NAME with its upstream API key.

    Give the key with exactly one of --api-key-stdin or --api-key-env VAR, never on the
    command line (it would land in the shell history). --exist-ok makes a script safe to
    run twice.
    """
    if api_key_stdin == (api_key_env is not None):
        raise click.UsageError(
            "give the upstream API key with exactly one of --api-key-stdin or --api-key-env VAR"
        )
    if not name.strip():
        raise HintedBadParameter("the name is empty", hint=_NAME_IT, param_hint="NAME")
    key = read_secret(_KEY, from_stdin=api_key_stdin, env_var=api_key_env)
    new = Project(name=name.strip(), openai_api_key=key)
    # --exist-ok means "a project named NAME exists afterwards", whoever created it and
    # with whatever key: the key is never compared (an existing project is left unchanged).
    existing = _project_named(state, new.name) if exist_ok else None
    if existing is not None:
        _print_project(state, existing, f"Project {existing.name!r} exists; left unchanged.")
        return

    def change(tx: Stores, trail: Trail) -> Project:
        created = tx.create_project(new)
        trail.project_id = created.id
        return created

    meanwhile: list[Project] = []

    def created_meanwhile(exc: DatabaseError) -> bool:
        """Whether the refusal is another process creating NAME since the check above."""
        found = _project_named(state, new.name) if isinstance(exc, ProjectExistsError) else None
        meanwhile[:] = [found] if found is not None else []
        return bool(meanwhile)

    trail = Trail(metadata={"name": new.name})
    settled = created_meanwhile if exist_ok else None
    try:
        created = audited_change(state, "project.create", change, trail=trail, settled=settled)
    except ProjectExistsError:
        if not meanwhile:
            raise
        # exists-ok, and no failure event: nothing failed, another process was first.
        _print_project(state, meanwhile[0], f"Project {new.name!r} exists; left unchanged.")
        return
    _print_project(state, created, f"Created project {created.name!r}.")


@project.command("list")
@json_option
@pass_state
def list_(state: State) -> None:
    """List every project, by name."""
    projects = state.db().list_projects()
    if state.json:
        echo_document([project_document(item) for item in projects])
    elif not projects:
        click.echo("No projects; create one with 'llm-proxy-db project create NAME'.")
    else:
        rows = [
            (p.id, p.name, "active" if p.is_active else "inactive", when(p.created_at))
            for p in projects
        ]
        click.echo(table(("ID", "NAME", "STATUS", "CREATED"), rows))


@project.command("show")
@click.argument("project_ref", metavar="PROJECT")
@json_option
@pass_state
def show(state: State, project_ref: str) -> None:
    """Show one project (by id or name); its API key masked."""
    _print_project(state, resolve_project(state.db(), project_ref))


@project.command("update")
@click.argument("project_ref", metavar="PROJECT")
@click.option("--name", help="The new name.")
@_key_options
@json_option
@pass_state
def update(
    state: State,
    project_ref: str,
    name: str | None,
    api_key_stdin: bool,
    api_key_env: str | None,
) -> None:
    """Rename a project or replace its upstream API key."""
    if api_key_stdin and api_key_env is not None:
        raise click.UsageError("give at most one of --api-key-stdin or --api-key-env VAR")
    if name is None and not api_key_stdin and api_key_env is None:
        raise HintedUsageError(
            "nothing to update", hint="give --name and/or --api-key-stdin or --api-key-env VAR"
        )
    if name is not None and not name.strip():
        raise HintedBadParameter("the name is empty", hint=_NAME_IT, param_hint="--name")
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = name.strip()
    if api_key_stdin or api_key_env is not None:
        changes["openai_api_key"] = read_secret(_KEY, from_stdin=api_key_stdin, env_var=api_key_env)

    def change(tx: Stores, trail: Trail) -> Project:
        current = resolve_project(tx, project_ref)
        trail.project_id = current.id
        trail.metadata["changed"] = sorted(_CHANGED_NAMES.get(key, key) for key in changes)
        if "name" in changes:
            trail.metadata["name"] = changes["name"]
        return tx.update_project(attrs.evolve(current, **changes))

    trail = Trail(metadata={"project": project_ref})
    updated = audited_change(state, "project.update", change, trail=trail)
    _print_project(state, updated, f"Updated project {updated.name!r}.")


@project.command("deactivate")
@click.argument("project_ref", metavar="PROJECT")
@click.option("--revoke-tokens", is_flag=True, help="Also revoke every active token of it.")
@json_option
@pass_state
def deactivate(state: State, project_ref: str, revoke_tokens: bool) -> None:
    """Deactivate a project: its tokens are refused until it is activated again.

    JSON: {"project": {...}, "revoked_tokens": N or null}.
    """

    def change(tx: Stores, trail: Trail) -> tuple[Project, int | None]:
        current = resolve_project(tx, project_ref)
        trail.project_id = current.id
        if current.is_active:
            current = tx.update_project(
                attrs.evolve(current, is_active=False, deactivated_at=utcnow())
            )
        revoked = tx.revoke_project_tokens(current.id) if revoke_tokens else None
        if revoked is not None:
            trail.metadata["revoked_tokens"] = revoked
        return current, revoked

    trail = Trail(metadata={"project": project_ref})
    item, revoked = audited_change(state, "project.deactivate", change, trail=trail)
    if state.json:
        echo_document({"project": project_document(item), "revoked_tokens": revoked})
        return
    click.echo(f"Deactivated project {item.name!r} ({item.id}).")
    if revoked is not None:
        click.echo(f"Revoked {revoked} token{'' if revoked == 1 else 's'}.")


@project.command("activate")
@click.argument("project_ref", metavar="PROJECT")
@json_option
@pass_state
def activate(state: State, project_ref: str) -> None:
    """Activate a deactivated project (revoked tokens stay revoked)."""

    def change(tx: Stores, trail: Trail) -> Project:
        current = resolve_project(tx, project_ref)
        trail.project_id = current.id
        return tx.update_project(attrs.evolve(current, is_active=True, deactivated_at=None))

    trail = Trail(metadata={"project": project_ref})
    item = audited_change(state, "project.activate", change, trail=trail)
    _print_project(state, item, f"Activated project {item.name!r}.")


@project.command("delete")
@click.argument("project_ref", metavar="PROJECT")
@click.option("--yes", is_flag=True, help="Confirm: the project and its tokens go for good.")
@json_option
@pass_state
def delete(state: State, project_ref: str, yes: bool) -> None:
    """Delete a project and all of its tokens (its audit events stay). Needs --yes.

    JSON: {"id": ..., "name": ..., "deleted": true, "deleted_tokens": N}.
    """
    if not yes:
        raise HintedUsageError(
            "deleting a project also deletes its tokens and cannot be undone", hint="add --yes"
        )

    def change(tx: Stores, trail: Trail) -> tuple[Project, int]:
        current = resolve_project(tx, project_ref)
        trail.project_id = current.id
        tokens = len(tx.list_tokens(current.id))
        trail.metadata.update(name=current.name, deleted_tokens=tokens)
        tx.delete_project(current.id)
        return current, tokens

    trail = Trail(metadata={"project": project_ref})
    item, tokens = audited_change(state, "project.delete", change, trail=trail)
    if state.json:
        echo_document({"id": item.id, "name": item.name, "deleted": True, "deleted_tokens": tokens})
    else:
        click.echo(
            f"Deleted project {item.name!r} ({item.id}) and {tokens} "
            f"token{'' if tokens == 1 else 's'}."
        )
