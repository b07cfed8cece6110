"""Usage errors the command line finds itself, with what to do kept apart from what happened.

The message says what was wrong; ``hint`` what to do instead. The root command prints them
as ``error: <message>; <hint>``, as it does for the library's errors, whose hints it chooses
by class (see ``_app``). Usage errors without a hint (click's own among them) get
``see '<command> --help'``.
"""

from __future__ import annotations

import click

__all__ = ["HintedBadParameter", "HintedUsageError"]


class HintedUsageError(click.UsageError):
    """A usage error (exit 2) and what to do about it."""

    def __init__(self, message: str, *, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


class HintedBadParameter(click.BadParameter):
    """A bad option or argument value (exit 2) and what to do about it."""

    def __init__(
        self,
        message: str,
        *,
        hint: str,
        ctx: click.Context | None = None,
        param: click.Parameter | None = None,
        param_hint: str | None = None,
    ) -> None:
        super().__init__(message, ctx, param, param_hint)
        self.hint = hint
