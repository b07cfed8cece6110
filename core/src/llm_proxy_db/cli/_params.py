"""Options for durations and points in time, and the shared ``--json`` option."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

from .. import parse_duration
from .._clock import utcnow
from ._state import State
from ._usage import HintedBadParameter

__all__ = ["duration_option", "json_option", "moment_option"]

_F = TypeVar("_F", bound=Callable[..., Any])
_LONGEST = timedelta(days=36525)
_DURATIONS = "use e.g. 30d, 12h, 1h30m"


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    """A positive duration such as ``30d``, ``12h`` or ``1h30m``."""
    if value is None:
        return None
    try:
        duration = parse_duration(value)
    except ValueError:
        raise HintedBadParameter(
            f"{value!r} is not a duration", hint=_DURATIONS, ctx=ctx, param=param
        ) from None
    if duration <= timedelta(0):
        raise HintedBadParameter(
            f"{value!r} is not positive", hint=_DURATIONS, ctx=ctx, param=param
        )
    if duration > _LONGEST:
        raise click.BadParameter(f"{value!r} is longer than 100 years", ctx, param)
    return duration


def _moment(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """A point in time: a duration ago (``24h``) or an ISO 8601 time (UTC unless it says)."""
    if value is None:
        return None
    text = value.strip()
    try:
        ago = parse_duration(text)
    except ValueError:
        pass
    else:
        if abs(ago) > _LONGEST:
            raise click.BadParameter(f"{text!r} is more than 100 years", ctx, param)
        return utcnow() - ago
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise HintedBadParameter(
            f"{text!r} is neither a duration nor an ISO 8601 time",
            hint="use e.g. 24h, 2024-05-01 or 2024-05-01T12:00:00+02:00",
            ctx=ctx,
            param=param,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # before year 1 or after 9999 in UTC
        pass
    raise click.BadParameter(f"{text!r} is out of range: years 1000 to 9999 (in UTC)", ctx, param)


def duration_option(*names: str, **kwargs: Any) -> Callable[[_F], _F]:
    """An option taking a positive duration (``30d``, ``1h30m``) as a ``timedelta``."""
    return click.option(*names, callback=_duration, metavar="DURATION", **kwargs)


def moment_option(*names: str, **kwargs: Any) -> Callable[[_F], _F]:
    """An option taking ``24h`` (that long ago) or an ISO 8601 time, as an aware datetime."""
    return click.option(*names, callback=_moment, metavar="TIME", **kwargs)


def _set_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.ensure_object(State).json = True
    return value


def json_option(command: _F) -> _F:
    """``--json`` after the command too (``backends --json``), same as the global one."""
    return click.option(
        "--json",
        "json_output",
        is_flag=True,
        expose_value=False,
        callback=_set_json,
        help="Print one JSON document instead of text.",
    )(command)
