"""``token``: issue, list, show, revoke, use, reset and delete client tokens."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from datetime import timedelta

import click

from .. import DatabaseError, Project, Stores, Token, TokenUsageError, mask_token
from .._clock import utcnow
from ._changes import Trail, audited_change
from ._output import (
    echo_document,
    fields,
    printable,
    table,
    token_document,
    token_status,
    when,
)
from ._params import duration_option, json_option
from ._resolve import MIN_PREFIX, display_token, resolve_project, resolve_token, token_argument
from ._state import State, pass_state
from ._usage import HintedUsageError

__all__ = ["token"]

_Apply = Callable[[Stores, Token], Token]
"""A change to one resolved token, returning the token as it now is."""

_TOKEN_HELP = (
    "TOKEN is the whole token, '-' to read it from stdin, a unique prefix of at least "
    f"{MIN_PREFIX} characters, or the masked form 'token list' prints (sk-Ab...xyz9). "
    "An ambiguous prefix is a usage error (exit 2); no match is 'not found' (exit 1)."
)


@click.group()
def token() -> None:
    """Manage client tokens: quotas, usage counters, revocation.

    Tokens are printed masked (sk-Ab...xyz9) everywhere except once, by 'token create'.
    Exit codes: 0 done, 1 the store refused (unknown token, limit reached...) or failed,
    2 bad input (nothing changed).
    """


def _remaining(item: Token) -> int | None:
    if item.max_requests is None:
        return None
    return max(item.max_requests - item.request_count, 0)


def _limit(item: Token) -> str:
    return "unlimited" if item.max_requests is None else str(item.max_requests)


def _usage(item: Token) -> str:
    return f"{item.request_count}/{_limit(item)}"


def _print_token(state: State, item: Token, message: str | None = None) -> None:
    if state.json:
        echo_document(token_document(item))
        return
    if message:
        click.echo(printable(message))
    click.echo(
        fields(
            [
                ("token", mask_token(item.token)),
                ("project_id", item.project_id),
                ("status", token_status(item)),
                ("requests", _usage(item)),
                ("cache_hits", str(item.cache_hit_count)),
                ("expires_at", when(item.expires_at)),
                ("deactivated_at", when(item.deactivated_at)),
                ("last_used_at", when(item.last_used_at)),
                ("created_at", when(item.created_at)),
            ]
        )
    )


@token.command("create")
@click.option(
    "--project",
    "project_ref",
    required=True,
    metavar="PROJECT",
    help="The project (id or name) the token is for.",
)
@duration_option("--expires-in", help="Expire after this long: 30d, 12h, 1h30m (default: never).")
@click.option(
    "--max-requests",
    type=click.IntRange(min=1),
    metavar="N",
    help="Refuse requests after N (default: unlimited).",
)
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="Print only the token, for scripts: TOKEN=$(llm-proxy-db token create ... -q).",
)
@json_option
@pass_state
def create(
    state: State,
    project_ref: str,
    expires_in: timedelta | None,
    max_requests: int | None,
    quiet: bool,
) -> None:
    """Issue a token; print it ONCE.

    The whole token is never shown again.

    JSON: the token record with the whole token in "token". --quiet (only the token, for
    scripts) and --json do not combine.
    """
    if quiet and state.json:
        raise HintedUsageError("--quiet and --json do not combine", hint="choose one")
    expires_at = None if expires_in is None else utcnow() + expires_in

    def change(tx: Stores, trail: Trail) -> tuple[Token, Project]:
        owner = resolve_project(tx, project_ref)
        trail.project_id = owner.id
        created = tx.create_token(
            Token(project_id=owner.id, expires_at=expires_at, max_requests=max_requests)
        )
        trail.token_id = mask_token(created.token)
        return created, owner

    trail = Trail(
        metadata={
            "project": project_ref,
            "max_requests": max_requests,
            "expires_at": None if expires_at is None else expires_at.isoformat(),
        }
    )
    created, owner = audited_change(state, "token.create", change, trail=trail)
    if quiet:
        click.echo(created.token)
    elif state.json:
        echo_document(token_document(created, reveal=True))
    else:
        click.echo(f"Created a token for project {owner.name!r}; copy it now, it is shown once:")
        click.echo(f"\n    {created.token}\n")
        click.echo(
            fields(
                [
                    ("masked", mask_token(created.token)),
                    ("max_requests", _limit(created)),
                    ("expires_at", when(created.expires_at)),
                ]
            )
        )


@token.command("list")
@click.option("--project", "project_ref", metavar="PROJECT", help="Only this project's tokens.")
@json_option
@pass_state
def list_(state: State, project_ref: str | None) -> None:
    """List tokens (masked), newest first."""
    db = state.db()
    project_id = None if project_ref is None else resolve_project(db, project_ref).id
    tokens = db.list_tokens(project_id)
    if state.json:
        echo_document([token_document(item) for item in tokens])
        return
    if not tokens:
        click.echo("No tokens; issue one with 'llm-proxy-db token create --project PROJECT'.")
        return
    projects = {p.id: p for p in db.list_projects()}
    rows = []
    for item in tokens:
        owner = projects.get(item.project_id)
        rows.append(
            (
                mask_token(item.token),
                owner.name if owner else item.project_id,
                token_status(item, project_active=owner.is_active if owner else True),
                _usage(item),
                when(item.expires_at),
                when(item.last_used_at),
                when(item.created_at),
            )
        )
    headers = ("TOKEN", "PROJECT", "STATUS", "REQUESTS", "EXPIRES", "LAST USED", "CREATED")
    click.echo(table(headers, rows))


def _token_ref(command: click.decorators.FC) -> click.decorators.FC:
    return click.argument("token_ref", metavar="TOKEN")(command)


@token.command("show", epilog=_TOKEN_HELP)
@_token_ref
@json_option
@pass_state
def show(state: State, token_ref: str) -> None:
    """Show one token (masked) and its usage."""
    ref = token_argument(token_ref)
    _print_token(state, resolve_token(state.db(), ref))


def _change_token(state: State, action: str, ref: str, apply: _Apply) -> Token:
    """Resolve ``ref`` and ``apply`` the change to it, audited as ``action``."""

    def change(tx: Stores, trail: Trail) -> Token:
        found = resolve_token(tx, ref)
        trail.project_id = found.project_id
        trail.token_id = mask_token(found.token)
        return apply(tx, found)

    return audited_change(state, action, change, trail=Trail(token_id=display_token(ref)))


@token.command("revoke", epilog=_TOKEN_HELP)
@_token_ref
@json_option
@pass_state
def revoke(state: State, token_ref: str) -> None:
    """Revoke a token: every later request with it is refused. Idempotent."""
    ref = token_argument(token_ref)

    def apply(tx: Stores, found: Token) -> Token:
        tx.revoke_token(found.token)
        return tx.get_token_by_id(found.token)

    item = _change_token(state, "token.revoke", ref, apply)
    _print_token(state, item, f"Revoked token {mask_token(item.token)}.")


@token.command("reset-usage", epilog=_TOKEN_HELP)
@_token_ref
@json_option
@pass_state
def reset_usage(state: State, token_ref: str) -> None:
    """Set a token's request count back to 0."""
    ref = token_argument(token_ref)
    item = _change_token(
        state, "token.reset_usage", ref, lambda tx, found: tx.reset_token_usage(found.token)
    )
    _print_token(state, item, f"Reset the request count of token {mask_token(item.token)}.")


@token.command("delete", epilog=_TOKEN_HELP)
@_token_ref
@click.option("--yes", is_flag=True, help="Confirm: the token goes for good.")
@json_option
@pass_state
def delete(state: State, token_ref: str, yes: bool) -> None:
    """Delete a token for good. Needs --yes.

    Revoking it instead keeps its history.

    JSON: {"token": masked, "project_id": ..., "deleted": true}.
    """
    if not yes:
        raise HintedUsageError(
            "deleting a token cannot be undone", hint="add --yes (or revoke the token instead)"
        )
    ref = token_argument(token_ref)

    def apply(tx: Stores, found: Token) -> Token:
        tx.delete_token(found.token)
        return found

    item = _change_token(state, "token.delete", ref, apply)
    masked = mask_token(item.token)
    if state.json:
        echo_document({"token": masked, "project_id": item.project_id, "deleted": True})
    else:
        click.echo(f"Deleted token {masked}.")


@token.command("use")
@_token_ref
@json_option
@pass_state
def use(state: State, token_ref: str) -> None:
    """Count one request; print what remains.

    As the proxy does for each request. TOKEN must be the whole token, or '-' to read it
    from stdin. When the token is refused (unknown, revoked, expired, project inactive,
    limit reached) the reason goes to stderr and the exit code is 1.
    JSON: the token record (masked) plus "remaining" (null: unlimited).
    """
    ref = token_argument(token_ref)
    if "..." in ref:
        raise HintedUsageError(
            "'token use' needs the whole token, not its masked form",
            hint="pass it, or '-' to read it from stdin",
        )

    def change(tx: Stores, trail: Trail) -> Token:
        try:
            counted = tx.increment_token_usage(ref)
        except TokenUsageError as refused:  # refused, not unknown: say whose token it was
            trail.project_id = refused.project_id
            if trail.project_id is None:  # a backend that does not tell
                with suppress(DatabaseError):
                    trail.project_id = tx.get_token_by_id(ref).project_id
            raise
        trail.project_id = counted.project_id
        trail.metadata["request_count"] = counted.request_count
        return counted

    item = audited_change(state, "token.use", change, trail=Trail(token_id=display_token(ref)))
    remaining = _remaining(item)
    if state.json:
        echo_document({**token_document(item), "remaining": remaining})
    elif remaining is None:
        click.echo(f"ok: {item.request_count} requests used; remaining: unlimited")
    else:
        click.echo(
            f"ok: {item.request_count} of {item.max_requests} requests used; remaining: {remaining}"
        )


@token.command("revoke-expired")
@json_option
@pass_state
def revoke_expired(state: State) -> None:
    """Revoke every active token whose expiry has passed. JSON: {"revoked": N}."""

    def change(tx: Stores, trail: Trail) -> int:
        count = tx.revoke_expired_tokens()
        trail.metadata["revoked"] = count
        return count

    count = audited_change(state, "token.revoke_expired", change)
    if state.json:
        echo_document({"revoked": count})
    else:
        click.echo(f"Revoked {count} expired token{'' if count == 1 else 's'}.")
