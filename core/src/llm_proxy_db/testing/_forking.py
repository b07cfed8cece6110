"""Fork safety: children of ``os.fork()`` using a ``DB`` their parent opened and used.

gunicorn and uvicorn with the app loaded before forking do exactly this. Each child
creates its own project and tokens on the inherited ``DB``, reads every one back and
reports over a pipe; the parent waits with a deadline (a child that shares the parent's
connections hangs or reads another child's rows) and keeps using its ``DB`` afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from typing import Any, Final

import pytest

from .._db import DB
from .._models import Project, Token

__all__ = ["CHILD_TIMEOUT_S", "fork_children"]

CHILD_TIMEOUT_S: Final = 60.0
"""Longest wait for all the children's reports."""


def _child_body(db: DB, tag: str, tokens_each: int) -> dict[str, Any]:
    project = db.create_project(Project(name=tag, openai_api_key="sk-fork-test"))
    created = [db.create_token(Token(project_id=project.id)).token for _ in range(tokens_each)]
    foreign = 0  # a row that is not what this child asked for
    for token in created:
        read = db.get_token_by_id(token)
        if read.token != token or read.project_id != project.id:
            foreign += 1
    listed = {token.token for token in db.list_tokens(project.id)}
    if db.get_project_by_id(project.id).name != tag:
        foreign += 1
    return {
        "project": project.id,
        "tokens": created,
        "foreign": foreign,
        "listed_ok": listed == set(created),
        "pid": os.getpid(),
    }


def _run_child(db: DB, tag: str, tokens_each: int, write_fd: int) -> None:
    code = 0
    try:
        report = _child_body(db, tag, tokens_each)
    except BaseException as exc:
        lines = traceback.format_exception(exc)
        report = {"error": f"{type(exc).__name__}: {exc}", "traceback": "".join(lines[-6:])}
        code = 1
    try:
        data = json.dumps(report).encode()
        while data:
            data = data[os.write(write_fd, data) :]
        os.close(write_fd)
    finally:
        os._exit(code)  # never the parent's atexit handlers, pytest's included


def fork_children(db: DB, *, children: int = 4, tokens_each: int = 100) -> list[dict[str, Any]]:
    """Fork ``children`` processes from this one, each creating and reading back its own
    project and ``tokens_each`` tokens through ``db``; their reports, in order.

    Fails the test when a child reports an error, reads a row it did not write, or gives
    no report within :data:`CHILD_TIMEOUT_S` (then it is killed). Skips where ``os.fork``
    is unavailable.
    """
    if not hasattr(os, "fork"):
        pytest.skip("os.fork is not available on this platform")
    tag = f"fork-{os.getpid()}-{time.monotonic_ns()}"
    started: list[tuple[int, int]] = []  # (pid, read end)
    for index in range(children):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            os.close(read_fd)
            _run_child(db, f"{tag}-{index}", tokens_each, write_fd)
        os.close(write_fd)
        started.append((pid, read_fd))
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    reports: list[dict[str, Any]] = []
    problems: list[str] = []
    for index, (pid, read_fd) in enumerate(started):
        chunks: list[bytes] = []
        os.set_blocking(read_fd, False)
        status: int | None = None
        while True:
            try:
                chunk = os.read(read_fd, 65536)
            except BlockingIOError:
                chunk = None
            if chunk:
                chunks.append(chunk)
                continue
            if status is None:
                done, status_ = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = status_
            if status is not None and chunk == b"":
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                problems.append(f"child {index} gave no report within {CHILD_TIMEOUT_S:g}s")
                break
            time.sleep(0.01)
        os.close(read_fd)
        if status is None:
            reports.append({})
            continue
        try:
            report = json.loads(b"".join(chunks) or b"{}")
        except ValueError:
            report = {"error": "an unreadable report"}
        if "error" in report:
            problems.append(f"child {index}: {report['error']}\n{report.get('traceback', '')}")
        elif report.get("foreign") or not report.get("listed_ok"):
            problems.append(
                f"child {index} read {report.get('foreign')} rows it did not write "
                f"(list_tokens() matched: {report.get('listed_ok')})"
            )
        reports.append(report)
    assert not problems, "children forked after the DB was opened:\n" + "\n".join(problems)
    everyone = [token for report in reports for token in report["tokens"]]
    assert len(set(everyone)) == children * tokens_each, "two children made the same token"
    return reports
