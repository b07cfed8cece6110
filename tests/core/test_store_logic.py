"""The store logic is free of I/O: its operations can be driven by hand.

A scripted driver plays the database: it records each statement the logic asks for and
answers with the rows or row count the test gives. This pins down *which* statements each
dialect variant runs; the conformance suite checks the behaviour on real databases.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest

from llm_proxy_db import (
    AuditEvent,
    AuditEventFilter,
    AuditEventNotFoundError,
    Project,
    ProjectExistsError,
    Token,
    TokenInactiveError,
    TokenNotFoundError,
    mask_token,
)
from llm_proxy_db.sql import (
    Dialect,
    Flow,
    IntegrityViolation,
    Operation,
    Statements,
    Step,
    StoreLogic,
    decode_text_timestamp,
    encode_text_timestamp,
)

DIALECT = Dialect(
    name="scripted",
    paramstyle="qmark",
    encode_time=encode_text_timestamp,
    decode_time=decode_text_timestamp,
    begin_write="BEGIN",
    version_table_ddl="",
    size_query="SELECT 0",
)
NO_RETURNING = attrs.evolve(DIALECT, update_returning=False, rowcount="changed")
TOKEN = "sk-" + "A" * 43
PROJECT = "p-1"
STAMP = "2024-05-01 12:00:00+00:00"


def token_row(*, active: bool = True) -> tuple[Any, ...]:
    return (PROJECT, TOKEN, None, active, None, 0, None, STAMP, None, 0)


def drive(operation: Operation[Any], answers: Iterator[Any], log: list[str]) -> Any:
    """Run ``operation`` as an executor would, answering each statement from ``answers``
    (a value, or an exception to raise at that statement)."""
    while True:
        if isinstance(operation, Step):
            log.append(operation.sql.split()[0])
            answer = next(answers)
            if isinstance(answer, IntegrityViolation):
                violation = operation.on_violation
                raise violation(answer, operation.subject) if violation else answer
            value = operation.decode(answer, operation.subject)
        else:
            value = drive_flow(operation, answers, log)
        if not isinstance(value, Step | Flow):
            return value
        operation = value


def drive_flow(flow: Flow[Any], answers: Iterator[Any], log: list[str]) -> Any:
    steps = flow.steps()
    sent: Any = None
    while True:
        try:
            step = steps.send(sent)
        except StopIteration as done:
            return done.value
        sent = drive(step, answers, log)


def test_a_counted_increment_is_one_statement() -> None:
    logic = StoreLogic(Statements(DIALECT))
    log: list[str] = []
    token = drive(logic.increment_token_usage(TOKEN), iter([[token_row()]]), log)
    assert isinstance(token, Token) and token.token == TOKEN
    assert log == ["UPDATE"]


def test_a_refused_increment_reads_why() -> None:
    logic = StoreLogic(Statements(DIALECT))
    log: list[str] = []
    answers = iter([[], [(*token_row(active=False), True)]])
    with pytest.raises(TokenInactiveError) as refused:
        drive(logic.increment_token_usage(TOKEN), answers, log)
    assert log == ["UPDATE", "SELECT"]
    assert refused.value.masked_token == mask_token(TOKEN)
    assert refused.value.project_id == PROJECT


def test_a_refusal_that_is_gone_retries_the_increment() -> None:
    logic = StoreLogic(Statements(DIALECT))
    log: list[str] = []
    answers = iter([[], [(*token_row(), True)], [token_row()]])
    assert drive(logic.increment_token_usage(TOKEN), answers, log).token == TOKEN
    assert log == ["UPDATE", "SELECT", "UPDATE"]


def test_without_returning_an_increment_updates_then_reads_atomically() -> None:
    logic = StoreLogic(Statements(NO_RETURNING))
    operation = logic.increment_token_usage(TOKEN)
    assert isinstance(operation, Flow) and operation.atomic
    log: list[str] = []
    assert drive(operation, iter([1, [token_row()]]), log).token == TOKEN
    assert log == ["UPDATE", "SELECT"]


def test_without_returning_an_unknown_token_is_found_missing_by_the_read() -> None:
    logic = StoreLogic(Statements(NO_RETURNING))
    log: list[str] = []
    with pytest.raises(TokenNotFoundError) as missing:
        drive(logic.reset_token_usage(TOKEN), iter([0, []]), log)
    assert log == ["UPDATE", "SELECT"]
    assert missing.value.key == mask_token(TOKEN)


@pytest.mark.parametrize(
    ("dialect", "answers", "statements"),
    [
        (DIALECT, [1], ["UPDATE"]),
        (NO_RETURNING, [1], ["UPDATE"]),
        # "changed" row counts: 0 for an already revoked token, so existence is read.
        (NO_RETURNING, [0, [(1,)]], ["UPDATE", "SELECT"]),
    ],
)
def test_revoking_counts_rows_as_the_dialect_does(
    dialect: Dialect, answers: list[Any], statements: list[str]
) -> None:
    log: list[str] = []
    assert drive(StoreLogic(Statements(dialect)).revoke_token(TOKEN), iter(answers), log) is None
    assert log == statements


def test_revoking_an_unknown_token_with_matched_row_counts_needs_no_read() -> None:
    log: list[str] = []
    with pytest.raises(TokenNotFoundError):
        drive(StoreLogic(Statements(DIALECT)).revoke_token(TOKEN), iter([0]), log)
    assert log == ["UPDATE"]


@pytest.mark.parametrize(
    ("constraint", "key"),
    [
        ("projects.name", "acme"),  # SQLite names the columns
        ("projects_name_key", "acme"),  # PostgreSQL the constraint
        ("projects.id", "p-acme"),
        ("projects_pkey", "p-acme"),
        (None, None),  # the driver did not say: the message names both, the key neither
    ],
)
def test_a_unique_violation_names_what_is_taken(constraint: str | None, key: str | None) -> None:
    logic = StoreLogic(Statements(DIALECT))
    project = Project(
        id="p-acme", name="acme", openai_api_key="sk-upstream", created_at=datetime.now(UTC)
    )
    violation = IntegrityViolation(kind="unique", constraint=constraint)
    with pytest.raises(ProjectExistsError) as taken:
        drive(logic.create_project(project), iter([violation]), [])
    assert taken.value.key == key


def test_search_escapes_with_the_dialects_character() -> None:
    statements = Statements(attrs.evolve(DIALECT, like_escape="#"))
    where, params = statements.codec.audit_where(AuditEventFilter(search="50%_#x"))
    assert "ESCAPE '#'" in where and "\\" not in where
    assert params[0] == "%50#%#_##x%"


def audit_row(event_id: str) -> tuple[Any, ...]:
    return ("token.use", "proxy", "success", event_id, STAMP, *([None] * 10))


def test_a_keyset_page_is_one_statement_and_only_an_empty_one_checks_the_id() -> None:
    logic = StoreLogic(Statements(attrs.evolve(DIALECT, binary_collation=' COLLATE "C"')))
    flt = AuditEventFilter(before_id="ev-9", limit=2)
    log: list[str] = []
    page = drive(logic.list_audit_events(flt), iter([[audit_row("ev-8")]]), log)
    assert [e.id for e in page] == ["ev-8"] and log == ["SELECT"]
    assert drive(logic.count_audit_events(flt), iter([[(3,)]]), log) == 3
    assert log == ["SELECT", "SELECT"]
    assert drive(logic.list_audit_events(flt), iter([[], [(1,)]]), []) == []
    assert drive(logic.count_audit_events(flt), iter([[(0,)], [(1,)]]), []) == 0
    for operation, empty in (
        (logic.list_audit_events(flt), []),
        (logic.count_audit_events(flt), [(0,)]),
    ):
        with pytest.raises(AuditEventNotFoundError) as missing:
            drive(operation, iter([empty, []]), [])
        assert missing.value.key == "ev-9"
    where, params = logic.statements.codec.audit_where(flt)
    assert 'id COLLATE "C" < ?' in where and params == ["ev-9"] * 3


def test_matches_needs_the_before_id_event() -> None:
    anchor = AuditEvent(id="ev-9", action="a", actor="b", outcome="success")
    older = AuditEvent(
        id="ev-1", action="a", actor="b", outcome="success", timestamp=anchor.timestamp
    )
    flt = AuditEventFilter(before_id="ev-9")
    assert flt.matches(older, anchor) and not flt.matches(anchor, anchor)
    for wrong in (None, older):
        with pytest.raises(ValueError, match="before_id"):
            flt.matches(older, wrong)
    with pytest.raises(AuditEventNotFoundError):
        flt.select([older])
    assert flt.count([older, anchor]) == 1


def test_steps_never_show_their_parameters() -> None:
    step = StoreLogic(Statements(DIALECT)).get_token_by_id(TOKEN)
    assert TOKEN not in repr(step)


def test_a_flow_runs_again_from_the_start() -> None:
    logic = StoreLogic(Statements(NO_RETURNING))
    operation = logic.reset_token_usage(TOKEN)
    for _ in range(2):  # a retry runs the same operation again
        log: list[str] = []
        assert drive(operation, iter([1, [token_row()]]), log).token == TOKEN
        assert log == ["UPDATE", "SELECT"]


def test_insert_or_ignore_templates_take_a_source_and_the_older_form_still_works() -> None:
    older = attrs.evolve(
        DIALECT, insert_or_ignore="INSERT OR IGNORE INTO {table} ({columns}) VALUES ({values})"
    )
    for dialect in (DIALECT, older):
        assert dialect.insert_rows_ignoring_duplicates("t", "a, b", 2).endswith(
            "INTO t (a, b) VALUES (?, ?), (?, ?)"
            + ("" if dialect is older else " ON CONFLICT DO NOTHING")
        )
    select = older.insert_select_ignoring_duplicates("t", "a, b", "SELECT x, y FROM s")
    assert select == "INSERT OR IGNORE INTO t (a, b) SELECT x, y FROM s"


def test_a_json_batch_is_one_statement_with_the_events_as_one_parameter() -> None:
    dialect = attrs.evolve(DIALECT, json_rows="json_each(?) AS r")
    events = [
        AuditEvent(action="a", actor="b", outcome="success", metadata={"n": i}) for i in range(3)
    ]
    step = StoreLogic(Statements(dialect)).create_audit_events(events)
    assert isinstance(step, Step) and not step.rows
    assert step.sql.count("?") == 1 and "FROM json_each(?) AS r" in step.sql
    (payload,) = step.params
    codec = Statements(dialect).codec
    assert json.loads(payload) == [list(codec.audit_params(e)) for e in events]
