"""Configuration from the environment and the duration parser."""

from __future__ import annotations

from datetime import timedelta

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
    ],
)
def test_parse_duration_accepts_go_durations_and_days(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "10", "h", "1x", "1h 30m", "1hh", "abc", "1.2.3s"])
def test_parse_duration_rejects_everything_else(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
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
    assert config.driver == DriverType.POSTGRES == "postgres"
    assert config.path == "/tmp/x.db" and config.database_url == "postgresql://u:p@h/db"
    assert (config.max_open_conns, config.max_idle_conns) == (20, 7)
    assert config.conn_max_lifetime == timedelta(minutes=90)


def test_empty_values_count_as_unset() -> None:
    assert config_from_env({"DB_DRIVER": "", "DATABASE_POOL_SIZE": " "}) == FullConfig()


def test_small_pool_caps_the_default_idle_count() -> None:
    assert config_from_env({"DATABASE_POOL_SIZE": "2"}).max_idle_conns == 2


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
