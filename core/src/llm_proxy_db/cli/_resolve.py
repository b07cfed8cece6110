"""Finding the record an operator names: a project by id or name, a token by value,
prefix or masked form, and secrets read from stdin or the environment."""

from __future__ import annotations

import os
import sys

import click

from .. import (
    Project,
    ProjectNotFoundError,
    Stores,
    Token,
    TokenNotFoundError,
    mask_token,
)
from ._usage import HintedUsageError

__all__ = [
    "MIN_PREFIX",
    "display_token",
    "read_secret",
    "resolve_project",
    "resolve_token",
    "token_argument",
]

MIN_PREFIX = 5
"""The shortest prefix accepted for a token: as long as the one ``token list`` shows."""

_MASK = "..."
_SHOWN_AS_IS = 16


def read_secret(what: str, *, from_stdin: bool, env_var: str | None) -> str:
    """A secret from stdin (prompted, hidden, on a terminal) or from ``env_var``.

    Raises ``click.UsageError`` when it is empty or the variable is unset.
    """
    if from_stdin:
        if sys.stdin.isatty():
            value: str = click.prompt(what, hide_input=True, err=True)
        else:
            value = sys.stdin.read()
        source = "stdin"
    else:
        assert env_var is not None
        value = os.environ.get(env_var, "")
        source = f"the environment variable {env_var}"
    value = value.strip()
    if not value:
        raise HintedUsageError(
            f"the {what} from {source} is empty", hint="provide a non-empty value"
        )
    return value


def token_argument(value: str) -> str:
    """The TOKEN argument as given, or the line read from stdin for ``-``."""
    if value == "-":
        value = sys.stdin.readline().strip()
        if not value:
            raise HintedUsageError(
                "no token on stdin", hint='pipe the token in, e.g. echo "$TOKEN" |'
            )
    return value


def display_token(value: str) -> str:
    """How a TOKEN argument may be printed or logged: masked forms and short prefixes as
    they are (no real token is that short), anything longer masked."""
    return value if _MASK in value or len(value) < _SHOWN_AS_IS else mask_token(value)


def resolve_project(store: Stores, ref: str) -> Project:
    """The project whose id, or else whose name, is ``ref``; ``ProjectNotFoundError``."""
    try:
        return store.get_project_by_id(ref)
    except ProjectNotFoundError:
        pass
    for project in store.list_projects():
        if project.name == ref:
            return project
    raise ProjectNotFoundError(f"no project has the id or name {ref!r}", key=ref)


def resolve_token(store: Stores, ref: str, *, partial: bool = True) -> Token:
    """The token ``ref`` names: the whole value, or (``partial``) a unique prefix or the
    masked form ``sk-Ab...xyz9`` that ``token list`` prints.

    ``TokenNotFoundError`` when nothing matches; ``click.UsageError`` when several do.
    """
    try:
        return store.get_token_by_id(ref)
    except TokenNotFoundError:
        if not partial:
            raise
    if _MASK in ref:
        prefix, _, suffix = ref.partition(_MASK)
    else:
        prefix, suffix = ref, ""
    if len(prefix) < MIN_PREFIX:
        raise HintedUsageError(
            f"token prefix {display_token(ref)!r} is too short",
            hint=f"give at least {MIN_PREFIX} characters, as 'llm-proxy-db token list' shows them",
        )
    matches = [
        token
        for token in store.list_tokens()
        if token.token.startswith(prefix)
        and token.token.endswith(suffix)
        and len(token.token) >= len(prefix) + len(suffix)
    ]
    if not matches:
        shown = display_token(ref)
        raise TokenNotFoundError(f"no token matches {shown!r}", key=shown)
    if len(matches) > 1:
        raise HintedUsageError(
            f"{display_token(ref)!r} matches {len(matches)} tokens",
            hint="give more characters or the whole token",
        )
    return matches[0]
