"""A stored value that is not UTF-8 (another writer can leave one): the error names the
column, never quotes the value (an upstream key or a token), and nothing is chained."""

from __future__ import annotations

import sqlite3
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlite_support import OpenDB

from llm_proxy_db import DB, DatabaseError, Project, Token, generate_token
from llm_proxy_db_sqlite._backend import translate_error

KEY = "sk-upstream-SECRET-5e1f9a0b2c3d"


def corrupt(path: Path, table: str, column: str, value: str, where: str) -> None:
    """Store ``value`` + one 0xFF byte in ``column``, as TEXT, as a foreign writer could."""
    raw = (value.encode() + b"\xff").hex()
    with sqlite3.connect(path) as conn:
        conn.execute(f"UPDATE {table} SET {column} = CAST(x'{raw}' AS TEXT) WHERE {where}")
    conn.close()


def _everything(exc: BaseException) -> str:
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc)), *map(repr, exc.args)]
    current = exc.__cause__ or exc.__context__
    while current is not None:
        parts += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def _refused(call: Callable[[], object], *secrets: str) -> DatabaseError:
    with pytest.raises(DatabaseError) as raised:
        call()
    text = _everything(raised.value)
    for secret in secrets:
        assert secret not in text and secret[:12] not in text, text
    assert "not valid UTF-8" in str(raised.value)
    assert raised.value.__context__ is None and raised.value.__cause__ is None
    return raised.value


def test_an_upstream_key_that_is_not_utf8_is_never_quoted(open_db: OpenDB, db_path: Path) -> None:
    db: DB = open_db()
    project = db.create_project(Project(name="p", openai_api_key=KEY))
    corrupt(db_path, "projects", "openai_api_key", KEY, f"id = '{project.id}'")
    for call in (lambda: db.get_project_by_id(project.id), db.list_projects):
        error = _refused(call, KEY)
        assert "'openai_api_key'" in str(error)


def test_a_token_that_is_not_utf8_is_never_quoted(open_db: OpenDB, db_path: Path) -> None:
    db: DB = open_db()
    project = db.create_project(Project(name="p", openai_api_key=KEY))
    token = db.create_token(Token(token=generate_token(), project_id=project.id))
    other = db.create_token(Token(token=generate_token(), project_id=project.id))
    corrupt(db_path, "tokens", "token", token.token, f"token = '{token.token}'")
    for call in (db.list_tokens, lambda: db.list_tokens(project.id)):
        assert "'token'" in str(_refused(call, token.token, other.token))
    # A row found by its token whose other text is not UTF-8: the token is not quoted either.
    corrupt(db_path, "tokens", "project_id", project.id, f"token = '{other.token}'")
    assert "'project_id'" in str(_refused(lambda: db.get_token_by_id(other.token), other.token))


def test_translate_error_names_the_column_only() -> None:
    raw = sqlite3.OperationalError(
        f"Could not decode to UTF-8 column 'openai_api_key' with text '{KEY}'"
    )
    assert str(translate_error(raw)) == (
        "SQLite: column 'openai_api_key' of a stored row holds text that is not valid UTF-8 "
        "(written by another program?); repair or delete that row"
    )
    odd = sqlite3.OperationalError(f"Could not decode to UTF-8 column 'a b' with text '{KEY}'")
    assert KEY not in str(translate_error(odd)) and "a column" in str(translate_error(odd))
