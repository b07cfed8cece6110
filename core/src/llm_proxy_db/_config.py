"""Configuration: ``Config`` (SQLite), ``FullConfig`` (any backend), ``config_from_env``.

Names mirror the Go llm-proxy's environment variables. Invalid values raise
``ConfigError`` naming the setting and the bad value; nothing falls back silently.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from fractions import Fraction
from typing import Any

import attrs

from ._errors import ConfigError

__all__ = ["Config", "DriverType", "FullConfig", "config_from_env", "parse_duration"]

DEFAULT_PATH = "data/llm-proxy.db"
DEFAULT_MAX_OPEN_CONNS = 10
DEFAULT_MAX_IDLE_CONNS = 5
"""The default idle count, lowered to ``max_open_conns`` when that is smaller."""


class DriverType(enum.StrEnum):
    """The built-in backends' names; ``FullConfig.driver`` accepts any installed name."""

    SQLITE = "sqlite"
    POSTGRES = "postgres"
    MEMORY = "memory"

    def __str__(self) -> str:
        return self.value


_NS_PER_UNIT: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # MICRO SIGN, as Go accepts
    "\u03bcs": 1_000,  # GREEK SMALL LETTER MU, as Go accepts
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3_600 * 1_000_000_000,
    "d": 86_400 * 1_000_000_000,
}
_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h|d)")


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration (``1h30m``, ``500ms``, ``1.5h``, ``90s``) plus ``d`` for days.

    As Go's ``time.ParseDuration``: each number (decimal fractions allowed) counts in whole
    nanoseconds, summed exactly; units are ``ns``, ``us`` (or ``\u00b5s``, ``\u03bcs``),
    ``ms``, ``s``, ``m``, ``h``, and ``d``. The sum is then truncated toward zero to whole
    microseconds, the resolution of ``timedelta`` (``1500ns`` is 1 microsecond). A leading
    ``-`` gives a negative duration; ``0`` needs no unit. Raises ``ValueError`` for anything
    else, including a bare number without a unit.
    """
    value = text.strip()
    sign = 1
    if value[:1] in "+-" and value:
        sign = -1 if value[0] == "-" else 1
        value = value[1:]
    if value == "0":
        return timedelta(0)
    if not value:
        raise ValueError(f"invalid duration {text!r}: it is empty")
    pos, nanoseconds = 0, 0
    while pos < len(value):
        match = _PART.match(value, pos)
        if match is None:
            raise ValueError(
                f"invalid duration {text!r}: use a number and a unit (ns, us, ms, s, m, h, d), "
                "e.g. 30m, 1h30m, 7d"
            )
        try:
            number = Fraction(match.group(1))  # exact, unlike a float
        except ValueError:  # more digits than int() converts
            raise ValueError(f"invalid duration {text!r}: it is too long") from None
        # Each part counts in whole nanoseconds (truncated, as Go does), summed exactly.
        nanoseconds += int(number * _NS_PER_UNIT[match.group(2)])
        pos = match.end()
    try:
        return timedelta(microseconds=sign * (nanoseconds // 1_000))
    except OverflowError:
        raise ValueError(f"invalid duration {text!r}: it is too long") from None


def _int_at_least(minimum: int, name: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(
                f"{name or attribute.name} must be an integer >= {minimum}, got {value!r}"
            )

    return check


def _positive_duration(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise ConfigError(f"{attribute.name} must be a positive duration, got {value!r}")


def _default_idle_conns(config: Config | FullConfig) -> int:
    # As Go's SetMaxIdleConns: the idle count never exceeds the open count. A bad
    # max_open_conns is left for its own validator to report.
    pool = config.max_open_conns
    if isinstance(pool, int) and not isinstance(pool, bool) and pool >= 1:
        return min(DEFAULT_MAX_IDLE_CONNS, pool)
    return DEFAULT_MAX_IDLE_CONNS


def _idle_within_pool(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if value > instance.max_open_conns:
        raise ConfigError(
            f"max_idle_conns ({value}) must not be above max_open_conns ({instance.max_open_conns})"
        )


def _non_empty_str(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{attribute.name} must be a non-empty string, got {value!r}")


def _driver_name(value: object) -> str:
    if isinstance(value, DriverType):
        return value.value
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"driver must be a backend name, got {value!r}")
    return value.strip().lower()


@attrs.frozen(kw_only=True)
class Config:
    """Settings for the default SQLite backend, as ``new()`` takes them."""

    path: str = attrs.field(default=DEFAULT_PATH, validator=_non_empty_str)
    max_open_conns: int = attrs.field(
        default=DEFAULT_MAX_OPEN_CONNS, validator=_int_at_least(1, "")
    )
    max_idle_conns: int = attrs.field(
        default=attrs.Factory(_default_idle_conns, takes_self=True),
        validator=[_int_at_least(0, ""), _idle_within_pool],
    )
    """Unset: ``min(5, max_open_conns)``; set above ``max_open_conns``: ``ConfigError``."""
    conn_max_lifetime: timedelta = attrs.field(
        default=timedelta(hours=1), validator=_positive_duration
    )


@attrs.frozen(kw_only=True)
class FullConfig:
    """Settings for any backend; ``driver`` names an installed backend (default ``sqlite``)."""

    driver: str = attrs.field(default=DriverType.SQLITE.value, converter=_driver_name)
    path: str = attrs.field(default=DEFAULT_PATH, validator=_non_empty_str)
    database_url: str | None = attrs.field(
        default=None, repr=lambda v: "None" if v is None else "'***'"
    )
    max_open_conns: int = attrs.field(
        default=DEFAULT_MAX_OPEN_CONNS, validator=_int_at_least(1, "")
    )
    max_idle_conns: int = attrs.field(
        default=attrs.Factory(_default_idle_conns, takes_self=True),
        validator=[_int_at_least(0, ""), _idle_within_pool],
    )
    """Unset: ``min(5, max_open_conns)``; set above ``max_open_conns``: ``ConfigError``."""
    conn_max_lifetime: timedelta = attrs.field(
        default=timedelta(hours=1), validator=_positive_duration
    )
    auto_migrate: bool = True

    @classmethod
    def from_config(cls, config: Config) -> FullConfig:
        """The SQLite ``FullConfig`` equivalent to ``config``."""
        return cls(
            driver=DriverType.SQLITE,
            path=config.path,
            max_open_conns=config.max_open_conns,
            max_idle_conns=config.max_idle_conns,
            conn_max_lifetime=config.conn_max_lifetime,
        )


def _env_int(env: Mapping[str, str], name: str, minimum: int) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be >= {minimum}")
    return value


def config_from_env(environ: Mapping[str, str] | None = None) -> FullConfig:
    """Build a ``FullConfig`` from ``DB_DRIVER``, ``DATABASE_PATH``, ``DATABASE_URL``,
    ``DATABASE_POOL_SIZE``, ``DATABASE_MAX_IDLE_CONNS`` and ``DATABASE_CONN_MAX_LIFETIME``.

    ``environ`` defaults to ``os.environ``; empty values count as unset.
    """
    env = os.environ if environ is None else environ
    settings: dict[str, Any] = {}
    if driver := env.get("DB_DRIVER", "").strip():
        settings["driver"] = driver.lower()
    if path := env.get("DATABASE_PATH", "").strip():
        settings["path"] = path
    if url := env.get("DATABASE_URL", "").strip():
        settings["database_url"] = url
    if (pool := _env_int(env, "DATABASE_POOL_SIZE", 1)) is not None:
        settings["max_open_conns"] = pool
    if (idle := _env_int(env, "DATABASE_MAX_IDLE_CONNS", 0)) is not None:
        settings["max_idle_conns"] = idle
        limit = DEFAULT_MAX_OPEN_CONNS if pool is None else pool
        if idle > limit:
            size = f"{limit}, its default" if pool is None else str(limit)
            raise ConfigError(
                f"DATABASE_MAX_IDLE_CONNS={env['DATABASE_MAX_IDLE_CONNS'].strip()!r} must not "
                f"be above DATABASE_POOL_SIZE ({size})"
            )
    if lifetime := env.get("DATABASE_CONN_MAX_LIFETIME", "").strip():
        try:
            settings["conn_max_lifetime"] = parse_duration(lifetime)
        except ValueError as exc:
            raise ConfigError(f"DATABASE_CONN_MAX_LIFETIME={lifetime!r}: {exc}") from None
        if settings["conn_max_lifetime"] <= timedelta(0):
            raise ConfigError(f"DATABASE_CONN_MAX_LIFETIME={lifetime!r} must be positive")
    return FullConfig(**settings)
