"""A ``DATABASE_URL`` password holding an unescaped ``@`` (or ``/``): read as Go's net/url
reads it, or refused before psycopg sees it; never in an error, its chain, or psycopg's
DEBUG log."""

from __future__ import annotations

import getpass
import logging
import traceback
from typing import TYPE_CHECKING

import pytest
from psycopg import conninfo

from llm_proxy_db import ConfigError, DatabaseError, FullConfig, new_from_full_config
from llm_proxy_db_postgres._backend import describe_target, encode_userinfo

if TYPE_CHECKING:
    from tests.fixtures.postgres import PostgresServer

TAIL = "Tail-SECRET-41ab"


def _everything(exc: BaseException) -> str:
    """What a logger or ``--debug`` could print of ``exc``, its chain included."""
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    current = exc.__cause__ or exc.__context__
    while current is not None:
        parts += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@ss@h:5432/db", "postgresql://u:p%40ss@h:5432/db"),
        ("postgres://u:a@b@c@h/db?x=1", "postgres://u:a%40b%40c@h/db?x=1"),
        ("POSTGRESQL://u@x:p@h1:1,h2:2/db", "POSTGRESQL://u%40x:p@h1:1,h2:2/db"),
        ("postgresql://u:p%40ss@h/db", "postgresql://u:p%40ss@h/db"),
        ("postgresql://u:pw@h/db?password=a@b", "postgresql://u:pw@h/db?password=a@b"),
        ("host=h password=a@b@c", "host=h password=a@b@c"),
    ],
)
def test_encode_userinfo_reads_the_url_as_go_does(url: str, expected: str) -> None:
    assert encode_userinfo(url) == expected


def test_the_encoded_url_gives_the_whole_password() -> None:
    params = conninfo.conninfo_to_dict(encode_userinfo(f"postgresql://u:p@ss@{TAIL}@h:5/db"))
    assert params == {
        "user": "u",
        "password": f"p@ss@{TAIL}",
        "host": "h",
        "port": "5",
        "dbname": "db",
    }


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:p@{TAIL}@h:5432/db",
        f"postgresql://u:pa/{TAIL}@h:5432/db",
        f"postgresql://u:pa/x@{TAIL}@h/db",
        f"host=h@{TAIL} dbname=db",
    ],
)
def test_describe_target_never_quotes_a_password(url: str) -> None:
    assert TAIL not in describe_target(url)


@pytest.mark.parametrize(
    "url", [f"postgresql://u:pa/{TAIL}@127.0.0.1/db", f"postgresql://u:p/x@{TAIL}@127.0.0.1/db"]
)
def test_a_url_libpq_would_misparse_is_refused_before_connecting(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError) as raised:
        new_from_full_config(FullConfig(driver="postgres", database_url=url))
    assert "percent-encode" in str(raised.value)
    assert TAIL not in _everything(raised.value)
    assert not any(r.name.startswith("psycopg") for r in caplog.records)  # never connected
    assert TAIL not in caplog.text


def test_connection_errors_and_psycopg_debug_log_never_quote_the_password(
    postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    params = conninfo.conninfo_to_dict(postgres_server.url)
    dbname = params["dbname"]
    urls = [
        f"postgresql://nobody:p@ss@{TAIL}@127.0.0.1:5432/{dbname}",  # a login refused
        f"postgresql://nobody:p@{TAIL}@127.0.0.1:1/{dbname}",  # nothing listens
        f"host=127.0.0.1 port=1 user=nobody password=p@{TAIL} dbname={dbname}",
        f"postgresql://nobody@127.0.0.1:1/{dbname}?password=p@{TAIL}",
    ]
    for url in urls:
        with pytest.raises(DatabaseError) as raised:
            new_from_full_config(FullConfig(driver="postgres", database_url=url))
        text = _everything(raised.value)
        assert TAIL not in text, text
        assert "127.0.0.1" in str(raised.value)
    assert any(r.name.startswith("psycopg") for r in caplog.records)  # it did log, at DEBUG
    assert TAIL not in caplog.text


def test_a_password_with_an_at_sign_works(
    postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    params = conninfo.conninfo_to_dict(postgres_server.url)
    user = params.get("user") or getpass.getuser()
    url = f"postgresql://{user}:p@ss@{TAIL}@127.0.0.1:5432/{params['dbname']}"
    with new_from_full_config(FullConfig(driver="postgres", database_url=url)) as db:
        db.health_check()
    assert TAIL not in caplog.text
