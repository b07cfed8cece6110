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

from ._encryption import decode_key
from ._errors import ConfigError

__all__ = ["Config", "DriverType", "FullConfig", "config_from_env", "parse_duration"]

DEFAULT_PATH = "data/llm-proxy.db"
DEFAULT_MAX_OPEN_CONNS = 10
DEFAULT_MAX_IDLE_CONNS = 5
"""The default idle count, lowered to ``max_open_conns`` when that is smaller."""
DEFAULT_POOL_TIMEOUT = timedelta(seconds=5)
"""How long a call waits for a free pooled connection (``DATABASE_POOL_TIMEOUT``)."""
DEFAULT_BUSY_TIMEOUT = timedelta(seconds=5)
"""How long a statement waits for a lock another connection holds (``DATABASE_BUSY_TIMEOUT``:
SQLite's ``busy_timeout``, PostgreSQL's ``lock_timeout``)."""
DEFAULT_STATEMENT_TIMEOUT = timedelta(seconds=10)
"""How long one statement may run, its lock wait included (``DATABASE_STATEMENT_TIMEOUT``)."""
DEFAULT_CONNECT_TIMEOUT = timedelta(seconds=5)
"""How long opening a server connection may take (``DATABASE_CONNECT_TIMEOUT``)."""


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


def _non_negative_duration(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    if not isinstance(value, timedelta) or value < timedelta(0):
        raise ConfigError(f"{attribute.name} must be a duration >= 0, got {value!r}")


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


def _encryption_keys(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError("encryption_keys must be a list of base64 keys (the first encrypts)")
    if not all(isinstance(key, str) for key in value):
        raise ConfigError("encryption_keys must hold strings (base64 keys)")
    return tuple(value)


def _check_encryption_key(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ConfigError(f"encryption_key must be a base64 string, got {type(value).__name__}")
    decode_key(value, "encryption_key")


def _check_encryption_keys(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    keys: tuple[str, ...] = instance.encryption_keys
    for position, key in enumerate(keys, 1):
        decode_key(key, f"encryption_keys (key {position})")
    if keys and instance.encryption_key is not None:
        raise ConfigError(
            "set one of encryption_key (ENCRYPTION_KEY, the Go program's enc:v1) or "
            "encryption_keys (ENCRYPTION_KEYS, rotating enc:v2), not both"
        )


def _check_require_key(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"require_encryption_key must be a bool, got {type(value).__name__}")
    if value and instance.encryption_key is None and not instance.encryption_keys:
        raise ConfigError(
            "an encryption key is required (REQUIRE_ENCRYPTION_KEY) but none is set: set "
            "ENCRYPTION_KEY or ENCRYPTION_KEYS (generate one with 'openssl rand -base64 32')"
        )


def _bool(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{attribute.name} must be a bool, got {value!r}")


def _driver_name(value: object) -> str:
    if isinstance(value, DriverType):
        return value.value
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"driver must be a backend name, got {value!r}")
    return value.strip().lower()


@attrs.frozen(kw_only=True)
class _ConnectionSettings:
    """The settings ``Config`` and ``FullConfig`` share, declared once."""

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
    pool_timeout: timedelta = attrs.field(
        default=DEFAULT_POOL_TIMEOUT, validator=_positive_duration
    )
    """How long a call waits for a free pooled connection, then ``TransientError``."""
    busy_timeout: timedelta = attrs.field(
        default=DEFAULT_BUSY_TIMEOUT, validator=_non_negative_duration
    )
    """How long a statement waits for a lock held elsewhere (SQLite ``busy_timeout``,
    PostgreSQL ``lock_timeout``), then ``TransientError``."""
    statement_timeout: timedelta = attrs.field(
        default=DEFAULT_STATEMENT_TIMEOUT, validator=_non_negative_duration
    )
    """How long one statement may run (0: no limit); migrations run without it."""
    connect_timeout: timedelta = attrs.field(
        default=DEFAULT_CONNECT_TIMEOUT, validator=_positive_duration
    )
    """How long opening a server connection may take (PostgreSQL: whole seconds, at least
    2, libpq's rule); ``health_check()`` answers within it."""


@attrs.frozen(kw_only=True)
class Config(_ConnectionSettings):
    """Settings for the default SQLite backend, as ``new()`` takes them."""


@attrs.frozen(kw_only=True)
class FullConfig(_ConnectionSettings):
    """Settings for any backend; ``driver`` names an installed backend (default ``sqlite``)."""

    driver: str = attrs.field(default=DriverType.SQLITE.value, converter=_driver_name)
    database_url: str | None = attrs.field(
        default=None, repr=lambda v: "None" if v is None else "'***'"
    )
    auto_migrate: bool = True
    encryption_key: str | None = attrs.field(
        default=None,
        repr=lambda v: "None" if v is None else "'***'",
        validator=_check_encryption_key,
    )
    """Base64 of a 32-byte key (``ENCRYPTION_KEY``): upstream keys written as the Go
    program's ``enc:v1``; see the README's "Secrets at rest"."""
    encryption_keys: tuple[str, ...] = attrs.field(
        default=(),
        converter=_encryption_keys,
        repr=lambda v: f"<{len(v)} keys>" if v else "()",
        validator=_check_encryption_keys,
    )
    """Base64 keys (``ENCRYPTION_KEYS``): the first writes ``enc:v2``, all of them read."""
    require_encryption_key: bool = attrs.field(default=False, validator=_check_require_key)
    """Refuse to open without a key (``REQUIRE_ENCRYPTION_KEY``)."""
    coalesce_increments: bool = attrs.field(default=False, validator=_bool)
    """Combine ``increment_token_usage`` and ``authorize`` calls of concurrent threads
    into one statement per round trip (``DATABASE_COALESCE_INCREMENTS``): PostgreSQL only;
    accepted and without effect on other backends."""

    @classmethod
    def from_config(cls, config: Config) -> FullConfig:
        """The SQLite ``FullConfig`` equivalent to ``config``."""
        return cls(driver=DriverType.SQLITE, **attrs.asdict(config, recurse=False))


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


_TIMEOUTS = (
    ("DATABASE_POOL_TIMEOUT", "pool_timeout", False),
    ("DATABASE_BUSY_TIMEOUT", "busy_timeout", True),
    ("DATABASE_STATEMENT_TIMEOUT", "statement_timeout", True),
    ("DATABASE_CONNECT_TIMEOUT", "connect_timeout", False),
)


def _env_duration(name: str, raw: str, *, allow_zero: bool) -> timedelta:
    try:
        value = parse_duration(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: {exc}") from None
    if value < timedelta(0) or (value == timedelta(0) and not allow_zero):
        raise ConfigError(f"{name}={raw!r} must be {'>= 0' if allow_zero else 'positive'}")
    return value


def config_from_env(environ: Mapping[str, str] | None = None) -> FullConfig:
    """Build a ``FullConfig`` from ``DB_DRIVER``, ``DATABASE_PATH``, ``DATABASE_URL``,
    ``DATABASE_POOL_SIZE``, ``DATABASE_MAX_IDLE_CONNS``, ``DATABASE_CONN_MAX_LIFETIME`` and
    the timeouts ``DATABASE_POOL_TIMEOUT``, ``DATABASE_BUSY_TIMEOUT``,
    ``DATABASE_STATEMENT_TIMEOUT`` and ``DATABASE_CONNECT_TIMEOUT`` (Go-style durations),
    and ``DATABASE_COALESCE_INCREMENTS`` (``true``/``false``/``1``/``0``).

    ``environ`` defaults to ``os.environ``; empty values count as unset. The secrets at
    rest come from ``ENCRYPTION_KEY``, ``ENCRYPTION_KEYS`` and ``REQUIRE_ENCRYPTION_KEY``.
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
    for name, field, allow_zero in _TIMEOUTS:
        if raw := env.get(name, "").strip():
            settings[field] = _env_duration(name, raw, allow_zero=allow_zero)
    if coalesce := env.get("DATABASE_COALESCE_INCREMENTS", "").strip():
        if coalesce.lower() not in _SWITCH:
            raise ConfigError(
                f"DATABASE_COALESCE_INCREMENTS={coalesce!r} is not true, false, 1 or 0"
            )
        settings["coalesce_increments"] = _SWITCH[coalesce.lower()]
    settings.update(_encryption_from_env(env))
    return FullConfig(**settings)


_SWITCH = {"true": True, "1": True, "false": False, "0": False}


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _encryption_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """``ENCRYPTION_KEY``, ``ENCRYPTION_KEYS`` and ``REQUIRE_ENCRYPTION_KEY``, checked with
    the variables' names in the errors (the keys themselves never quoted)."""
    settings: dict[str, Any] = {}
    if key := env.get("ENCRYPTION_KEY", "").strip():
        decode_key(key, "ENCRYPTION_KEY")
        settings["encryption_key"] = key
    if listed := env.get("ENCRYPTION_KEYS", "").strip():
        keys = [part.strip() for part in listed.split(",")]
        for position, part in enumerate(keys, 1):
            if not part:
                raise ConfigError(f"ENCRYPTION_KEYS: key {position} is empty")
            decode_key(part, f"ENCRYPTION_KEYS (key {position})")
        if key:
            raise ConfigError(
                "set one of ENCRYPTION_KEY (the Go program's enc:v1) or ENCRYPTION_KEYS "
                "(rotating enc:v2, the first key encrypts), not both"
            )
        settings["encryption_keys"] = tuple(keys)
    if required := env.get("REQUIRE_ENCRYPTION_KEY", "").strip():
        if required.lower() not in _TRUE | _FALSE:
            raise ConfigError(f"REQUIRE_ENCRYPTION_KEY={required!r} is not true or false")
        settings["require_encryption_key"] = required.lower() in _TRUE
        if settings["require_encryption_key"] and not (key or listed):
            raise ConfigError(
                "REQUIRE_ENCRYPTION_KEY is true but neither ENCRYPTION_KEY nor ENCRYPTION_KEYS "
                "is set; generate a key with 'openssl rand -base64 32'"
            )
    return settings
