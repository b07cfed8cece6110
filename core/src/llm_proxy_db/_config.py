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
from typing import Any

import attrs

from ._errors import ConfigError

__all__ = ["Config", "DriverType", "FullConfig", "config_from_env", "parse_duration"]

DEFAULT_PATH = "data/llm-proxy.db"


class DriverType(enum.StrEnum):
    """The built-in backends' names; ``FullConfig.driver`` accepts any installed name."""

    SQLITE = "sqlite"
    POSTGRES = "postgres"
    MEMORY = "memory"

    def __str__(self) -> str:
        return self.value


_UNITS = {
    "ns": timedelta(microseconds=0.001),
    "us": timedelta(microseconds=1),
    "µs": timedelta(microseconds=1),
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration (``1h30m``, ``500ms``, ``90s``) plus ``d`` for days.

    Raises ``ValueError`` for anything else, including a bare number without a unit.
    A leading ``-`` gives a negative duration.
    """
    value = text.strip()
    sign = 1
    if value[:1] in "+-" and value:
        sign = -1 if value[0] == "-" else 1
        value = value[1:]
    if value == "0":
        return timedelta(0)
    pos, total = 0, timedelta(0)
    while pos < len(value):
        match = _PART.match(value, pos)
        if match is None:
            raise ValueError(
                f"invalid duration {text!r}: use a number and a unit (ns, us, ms, s, m, h, d), "
                "e.g. 30m, 1h30m, 7d"
            )
        try:
            total += float(match.group(1)) * _UNITS[match.group(2)]
        except OverflowError:
            raise ValueError(f"invalid duration {text!r}: it is too long") from None
        pos = match.end()
    if not value:
        raise ValueError(f"invalid duration {text!r}: it is empty")
    return sign * total


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
    max_open_conns: int = attrs.field(default=10, validator=_int_at_least(1, ""))
    max_idle_conns: int = attrs.field(
        default=5, validator=[_int_at_least(0, ""), _idle_within_pool]
    )
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
    max_open_conns: int = attrs.field(default=10, validator=_int_at_least(1, ""))
    max_idle_conns: int = attrs.field(
        default=5, validator=[_int_at_least(0, ""), _idle_within_pool]
    )
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
    if "max_idle_conns" not in settings and "max_open_conns" in settings:
        settings["max_idle_conns"] = min(5, settings["max_open_conns"])
    if lifetime := env.get("DATABASE_CONN_MAX_LIFETIME", "").strip():
        try:
            settings["conn_max_lifetime"] = parse_duration(lifetime)
        except ValueError as exc:
            raise ConfigError(f"DATABASE_CONN_MAX_LIFETIME={lifetime!r}: {exc}") from None
        if settings["conn_max_lifetime"] <= timedelta(0):
            raise ConfigError(f"DATABASE_CONN_MAX_LIFETIME={lifetime!r} must be positive")
    try:
        return FullConfig(**settings)
    except ConfigError as exc:
        if "max_idle_conns" in str(exc):
            raise ConfigError(
                f"DATABASE_MAX_IDLE_CONNS={env.get('DATABASE_MAX_IDLE_CONNS')!r}: {exc}"
            ) from None
        raise
