"""Configuration from the environment and the duration parser."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from llm_proxy_db import (
    Config,
    ConfigError,
    DriverType,
    FullConfig,
    config_from_env,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h", timedelta(hours=1)),
        ("30m", timedelta(minutes=30)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("500ms", timedelta(milliseconds=500)),
        ("90s", timedelta(seconds=90)),
        ("7d", timedelta(days=7)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        ("2h45m30s", timedelta(hours=2, minutes=45, seconds=30)),
        ("0", timedelta(0)),
        ("-5m", timedelta(minutes=-5)),
        ("+5m", timedelta(minutes=5)),
        (".5s", timedelta(milliseconds=500)),
        ("1.s", timedelta(seconds=1)),
        ("1.25ms", timedelta(microseconds=1250)),
        ("1\u00b5s", timedelta(microseconds=1)),  # MICRO SIGN
        ("1\u03bcs", timedelta(microseconds=1)),  # GREEK SMALL LETTER MU, Go's spelling
        ("1us", timedelta(microseconds=1)),
        ("0.1s0.2s", timedelta(milliseconds=300)),  # exact: no float rounding
    ],
)
def test_parse_duration_accepts_go_durations_and_days(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "microseconds"),
    [
        ("1ns", 0),
        ("999ns", 0),
        ("1000ns", 1),
        ("999999ns", 999),
        ("1500ns", 1),
        ("-1500ns", -1),  # toward zero, not toward minus infinity
        ("-1ns", 0),
        ("1.0000015s", 1_000_001),
        ("0.0000005ms", 0),  # half a nanosecond truncates to nothing, as in Go
        ("1us999ns", 1),
        ("1h0.000000001s", 3_600_000_000),
        ("0.3333333333333333333h", 1_199_999_999),  # exact: a float sum gives 1_200_000_000
    ],
)
def test_parse_duration_sums_nanoseconds_and_truncates_to_microseconds(
    text: str, microseconds: int
) -> None:
    assert parse_duration(text) == timedelta(microseconds=microseconds)


@pytest.mark.parametrize(
    "text",
    ["", "-", "10", "h", "1x", "1h 30m", "1hh", "abc", "1.2.3s", ".s", "--1s", "1\u0661s", "1M"],
)
def test_parse_duration_rejects_everything_else(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["9" * 20 + "d", "1" * 5000 + "s"])
def test_parse_duration_refuses_what_a_timedelta_cannot_hold(text: str) -> None:
    with pytest.raises(ValueError, match="too long"):
        parse_duration(text)


def test_defaults_without_environment() -> None:
    config = config_from_env({})
    assert config == FullConfig()
    assert (config.driver, config.path, config.database_url) == (
        "sqlite",
        "data/llm-proxy.db",
        None,
    )
    assert (config.max_open_conns, config.max_idle_conns) == (10, 5)
    assert config.conn_max_lifetime == timedelta(hours=1) and config.auto_migrate


def test_every_variable_is_read() -> None:
    config = config_from_env(
        {
            "DB_DRIVER": "PostgreS",
            "DATABASE_PATH": "/tmp/x.db",
            "DATABASE_URL": "postgresql://u:p@h/db",
            "DATABASE_POOL_SIZE": "20",
            "DATABASE_MAX_IDLE_CONNS": "7",
            "DATABASE_CONN_MAX_LIFETIME": "1h30m",
        }
    )
    assert config.driver == "postgres" == DriverType.POSTGRES.value
    assert config.path == "/tmp/x.db" and config.database_url == "postgresql://u:p@h/db"
    assert (config.max_open_conns, config.max_idle_conns) == (20, 7)
    assert config.conn_max_lifetime == timedelta(minutes=90)


def test_empty_values_count_as_unset() -> None:
    assert config_from_env({"DB_DRIVER": "", "DATABASE_POOL_SIZE": " "}) == FullConfig()


def test_small_pool_caps_the_default_idle_count() -> None:
    assert config_from_env({"DATABASE_POOL_SIZE": "2"}).max_idle_conns == 2
    assert config_from_env({"DATABASE_POOL_SIZE": "20"}).max_idle_conns == 5


@pytest.mark.parametrize("cls", [Config, FullConfig])
@pytest.mark.parametrize(("pool", "idle"), [(1, 1), (4, 4), (5, 5), (6, 5), (100, 5)])
def test_unset_idle_count_is_five_at_most_the_pool_size(
    cls: type[Config | FullConfig], pool: int, idle: int
) -> None:
    assert cls(max_open_conns=pool).max_idle_conns == idle
    assert cls(max_open_conns=pool, max_idle_conns=0).max_idle_conns == 0  # set: kept
    assert cls(max_open_conns=pool, max_idle_conns=pool).max_idle_conns == pool


def test_a_small_postgres_pool_needs_no_idle_setting() -> None:
    config = FullConfig(driver="postgres", database_url="postgresql://x/y", max_open_conns=4)
    assert (config.max_open_conns, config.max_idle_conns) == (4, 4)


def test_only_an_explicit_idle_count_above_the_pool_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"max_idle_conns \(5\).*max_open_conns \(4\)"):
        FullConfig(max_open_conns=4, max_idle_conns=5)
    with pytest.raises(ConfigError, match=r"DATABASE_MAX_IDLE_CONNS='11'.*DATABASE_POOL_SIZE"):
        config_from_env({"DATABASE_MAX_IDLE_CONNS": "11"})  # above the default pool of 10
    assert config_from_env({"DATABASE_MAX_IDLE_CONNS": "10"}).max_idle_conns == 10


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DATABASE_POOL_SIZE": "ten"}, "DATABASE_POOL_SIZE='ten'"),
        ({"DATABASE_POOL_SIZE": "0"}, "DATABASE_POOL_SIZE='0'"),
        ({"DATABASE_MAX_IDLE_CONNS": "-1"}, "DATABASE_MAX_IDLE_CONNS='-1'"),
        (
            {"DATABASE_POOL_SIZE": "3", "DATABASE_MAX_IDLE_CONNS": "4"},
            "DATABASE_MAX_IDLE_CONNS='4'",
        ),
        ({"DATABASE_CONN_MAX_LIFETIME": "forever"}, "DATABASE_CONN_MAX_LIFETIME='forever'"),
        ({"DATABASE_CONN_MAX_LIFETIME": "0s"}, "DATABASE_CONN_MAX_LIFETIME='0s'"),
        ({"DATABASE_CONN_MAX_LIFETIME": "-1h"}, "DATABASE_CONN_MAX_LIFETIME='-1h'"),
    ],
)
def test_invalid_values_name_the_variable_and_value(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        config_from_env(env)
    assert named in str(excinfo.value)


def test_database_url_is_hidden_in_repr() -> None:
    config = FullConfig(driver="postgres", database_url="postgresql://u:s3cret@h/db")
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_open_conns": 0},
        {"max_idle_conns": -1},
        {"max_open_conns": 2, "max_idle_conns": 3},
        {"conn_max_lifetime": timedelta(0)},
        {"path": ""},
    ],
)
def test_config_objects_validate(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Config(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        FullConfig(**kwargs)  # type: ignore[arg-type]


def test_full_config_from_sqlite_config() -> None:
    full = FullConfig.from_config(Config(path="x.db", max_open_conns=3, max_idle_conns=1))
    assert (full.driver, full.path, full.max_open_conns, full.max_idle_conns) == (
        "sqlite",
        "x.db",
        3,
        1,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"max_open_conns": 2},
        {"max_open_conns": 50, "max_idle_conns": 0},
        {"path": "y.db", "conn_max_lifetime": timedelta(minutes=5)},
    ],
)
def test_full_config_from_config_carries_every_value(kwargs: dict[str, object]) -> None:
    config = Config(**kwargs)  # type: ignore[arg-type]
    full = FullConfig.from_config(config)
    assert full == FullConfig(driver="sqlite", **kwargs)  # type: ignore[arg-type]
    shared = ("path", "max_open_conns", "max_idle_conns", "conn_max_lifetime")
    assert all(getattr(full, name) == getattr(config, name) for name in shared)


# -- timeouts -------------------------------------------------------------------------------


def test_timeouts_default_to_a_few_seconds() -> None:
    config = FullConfig()
    assert config.pool_timeout == timedelta(seconds=5)
    assert config.busy_timeout == timedelta(seconds=5)
    assert config.statement_timeout == timedelta(seconds=10)
    assert config.connect_timeout == timedelta(seconds=5)
    sqlite = FullConfig.from_config(Config(busy_timeout=timedelta(seconds=1)))
    assert sqlite.busy_timeout == timedelta(seconds=1)


def test_timeouts_come_from_go_durations_in_the_environment() -> None:
    config = config_from_env(
        {
            "DATABASE_POOL_TIMEOUT": "2s",
            "DATABASE_BUSY_TIMEOUT": "0",
            "DATABASE_STATEMENT_TIMEOUT": "1m30s",
            "DATABASE_CONNECT_TIMEOUT": "3s",
        }
    )
    assert config.pool_timeout == timedelta(seconds=2)
    assert config.busy_timeout == timedelta(0)
    assert config.statement_timeout == timedelta(seconds=90)
    assert config.connect_timeout == timedelta(seconds=3)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_POOL_TIMEOUT", "0"),
        ("DATABASE_POOL_TIMEOUT", "-1s"),
        ("DATABASE_CONNECT_TIMEOUT", "0"),
        ("DATABASE_STATEMENT_TIMEOUT", "-1s"),
        ("DATABASE_BUSY_TIMEOUT", "5"),
        ("DATABASE_STATEMENT_TIMEOUT", "soon"),
    ],
)
def test_bad_timeouts_in_the_environment_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        config_from_env({name: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pool_timeout", timedelta(0)),
        ("connect_timeout", timedelta(seconds=-1)),
        ("busy_timeout", timedelta(seconds=-1)),
        ("statement_timeout", 10),
    ],
)
def test_bad_timeouts_in_code_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        FullConfig(**{field: value})  # type: ignore[arg-type]


# -- coalesced increments -------------------------------------------------------------------


def test_coalesced_increments_are_off_unless_asked() -> None:
    assert FullConfig().coalesce_increments is False
    assert config_from_env({}).coalesce_increments is False
    assert FullConfig(coalesce_increments=True).coalesce_increments is True


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("1", True), ("TRUE", True), (" 0 ", False), ("false", False), ("", False)],
)
def test_coalesced_increments_come_from_the_environment(raw: str, expected: bool) -> None:
    assert config_from_env({"DATABASE_COALESCE_INCREMENTS": raw}).coalesce_increments is expected


@pytest.mark.parametrize("raw", ["yes", "on", "2", "enabled"])
def test_a_bad_coalesce_setting_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match=f"DATABASE_COALESCE_INCREMENTS={raw!r}"):
        config_from_env({"DATABASE_COALESCE_INCREMENTS": raw})


def test_coalesce_increments_in_code_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match="coalesce_increments must be a bool"):
        FullConfig(coalesce_increments="true")  # type: ignore[arg-type]


@pytest.mark.parametrize("driver", ["memory", "sqlite"])
def test_coalesce_increments_is_accepted_without_effect_elsewhere(
    driver: str, tmp_path: Path
) -> None:
    from llm_proxy_db import Project, Token, new_from_full_config

    pytest.importorskip(f"llm_proxy_db_{driver}")  # the memory env installs memory only
    config = FullConfig(driver=driver, path=str(tmp_path / "c.db"), coalesce_increments=True)
    with new_from_full_config(config) as db:
        project = db.create_project(Project(name="p", openai_api_key="sk-coalesce"))
        token = db.create_token(Token(project_id=project.id, max_requests=1)).token
        assert db.increment_token_usage(token).request_count == 1
