"""Cross-process races of the ``multi_process`` tests: spawned children and what they do.

Every child is a fresh *spawned* interpreter (no state inherited from the test process):
it imports the modules of ``StoreConformance.spawn_imports`` (where a backend registered
in code gets registered), opens ``new_from_full_config(config)``, waits at a barrier so
that the children start their work together, runs one ``body`` function of this module
and puts a JSON-like report on a queue. Bodies are module-level functions, so the spawn
machinery pickles them by name; they bound their loops by time or count, and every wait
has a timeout, so a hung or broken backend fails the test instead of stalling it.
"""

from __future__ import annotations

import importlib
import multiprocessing
import queue as queue_module
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import attrs
import pytest

from .._config import FullConfig
from .._db import DB, new_from_full_config
from .._errors import (
    ProjectExistsError,
    ProjectNotFoundError,
    TokenInactiveError,
    TokenLimitReachedError,
)
from .._models import Project, Token

__all__ = [
    "Sync",
    "create_same_names",
    "create_tokens_until_deleted",
    "delete_projects",
    "increment_until_revoked",
    "race",
    "race_increments",
    "revoke_until_updates_stop",
    "update_admin_fields",
]

WAIT_S: Final = 60.0
"""Longest wait at a barrier or for an event: spawn is slow on a loaded machine."""

RESULT_TIMEOUT_S: Final = 120.0
"""Longest wait, in the test process, for all the children's reports."""

Report = dict[str, Any]
Body = Callable[..., Report]


@attrs.frozen
class Sync:
    """What the children of one race share: a barrier for all of them, named events."""

    barrier: Any
    events: Mapping[str, Any]


def _child(
    body: Body,
    config: FullConfig,
    imports: tuple[str, ...],
    sync: Sync,
    args: tuple[Any, ...],
    results: Any,
    index: int,
) -> None:
    """A child process: open the database, run ``body``, report (errors included)."""
    try:
        for module in imports:
            importlib.import_module(module)
        db = new_from_full_config(config)
        try:
            report = body(db, sync, *args)
        finally:
            db.close()
    except BaseException as exc:  # reported to the test process
        sync.barrier.abort()  # the others stop waiting for this one
        for event in sync.events.values():
            event.set()
        lines = traceback.format_exception(exc)
        report = {"error": f"{type(exc).__name__}: {exc}", "traceback": "".join(lines[-6:])}
    results.put((index, report))


def race(
    config: FullConfig,
    imports: tuple[str, ...],
    children: Sequence[tuple[Body, tuple[Any, ...]]],
    *,
    events: Sequence[str] = (),
) -> list[Report]:
    """Run one spawned process per ``(body, args)``; their reports, in that order.

    Fails the test when a child reports an error or gives no report in time.
    """
    context = multiprocessing.get_context("spawn")
    sync = Sync(
        barrier=context.Barrier(len(children), timeout=WAIT_S),
        events={name: context.Event() for name in events},
    )
    results = context.Queue()
    processes = [
        context.Process(
            target=_child,
            args=(body, config, imports, sync, args, results, index),
            daemon=True,
        )
        for index, (body, args) in enumerate(children)
    ]
    for process in processes:
        process.start()
    reports: dict[int, Report] = {}
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    dead_since: float | None = None
    try:
        while len(reports) < len(processes):
            try:
                index, report = results.get(timeout=0.5)
            except queue_module.Empty:
                now = time.monotonic()
                silent = [i for i, p in enumerate(processes) if i not in reports]
                if any(processes[i].exitcode is not None for i in silent):
                    dead_since = dead_since or now  # its report may still be in the pipe
                if now > deadline or (dead_since is not None and now - dead_since > 5):
                    codes = {i: processes[i].exitcode for i in silent}
                    pytest.fail(
                        f"child processes {silent} gave no report (exit codes {codes}); "
                        f"the others reported {reports}",
                        pytrace=False,
                    )
                continue
            reports[index] = report
    finally:
        complete = len(reports) == len(processes)
        if not complete:  # release the children still waiting for the missing ones
            sync.barrier.abort()
            for event in sync.events.values():
                event.set()
        for process in processes:
            process.join(timeout=30 if complete else 5)
            if process.is_alive():  # pragma: no cover
                process.kill()
    ordered = [reports[index] for index in range(len(processes))]
    errors = [
        f"child {index} ({children[index][0].__name__}): {report['error']}\n"
        f"{report.get('traceback', '')}"
        for index, report in enumerate(ordered)
        if "error" in report
    ]
    if errors:
        pytest.fail("a child process failed:\n" + "\n".join(errors), pytrace=False)
    return ordered


def _outcome(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


# -- the exact request limit ------------------------------------------------------------


def race_increments(db: DB, sync: Sync, token: str, attempts: int) -> Report:
    """``attempts`` increments of ``token``: how many counted, how many hit the limit."""
    outcomes: Counter[str] = Counter()
    sync.barrier.wait()
    for _ in range(attempts):
        try:
            db.increment_token_usage(token)
            outcomes["ok"] += 1
        except TokenLimitReachedError:
            outcomes["limit"] += 1
        except Exception as exc:  # reported as an outcome
            outcomes[_outcome(exc)] += 1
    return dict(outcomes)


# -- project-name uniqueness ------------------------------------------------------------


def create_same_names(db: DB, sync: Sync, tag: str, rounds: int, child: int) -> Report:
    """Each round, at the barrier, create a project named ``{tag}-{round}`` (an id of this
    child's own): "ok", "exists" (``ProjectExistsError``) or the unexpected error."""
    outcomes: list[str] = []
    for round_ in range(rounds):
        project = Project(
            id=f"{tag}-{round_}-child-{child}",
            name=f"{tag}-{round_}",
            openai_api_key="sk-race-upstream-key",
        )
        sync.barrier.wait()
        try:
            db.create_project(project)
            outcomes.append("ok")
        except ProjectExistsError:
            outcomes.append("exists")
        except Exception as exc:  # reported as an outcome
            outcomes.append(_outcome(exc))
    return {"outcomes": outcomes}


# -- delete_project racing create_token -------------------------------------------------


def create_tokens_until_deleted(
    db: DB, sync: Sync, doomed: Sequence[str], keeper: str, seconds: float
) -> Report:
    """Each round, at the barrier, create tokens for the round's doomed project (and, in
    between, for the ``keeper`` project) until the project is gone."""
    outcomes: Counter[str] = Counter()
    kept: list[str] = []  # acknowledged tokens of the keeper project
    for project_id in doomed:
        sync.barrier.wait()
        deadline = time.monotonic() + seconds
        gone = False
        while not gone and time.monotonic() < deadline:
            try:
                db.create_token(Token(project_id=project_id))
                outcomes["ok"] += 1
            except ProjectNotFoundError:
                outcomes["gone"] += 1
                gone = True
            except Exception as exc:  # reported as an outcome
                outcomes[_outcome(exc)] += 1
                gone = True
            try:
                kept.append(db.create_token(Token(project_id=keeper)).token)
            except Exception as exc:  # reported as an outcome
                outcomes[f"keeper: {_outcome(exc)}"] += 1
    return {"outcomes": dict(outcomes), "kept": kept}


def delete_projects(db: DB, sync: Sync, doomed: Sequence[str], pause: float) -> Report:
    """Each round, at the barrier, wait until the creators are at work (the round's project
    has a token; at most 10 s), then ``pause`` seconds more, then delete the project: the
    delete always lands among creations, however slowly the other processes start."""
    outcomes: list[str] = []
    for project_id in doomed:
        sync.barrier.wait()
        deadline = time.monotonic() + 10.0
        while not db.list_tokens(project_id) and time.monotonic() < deadline:
            time.sleep(0.0005)
        time.sleep(pause)
        try:
            db.delete_project(project_id)
            outcomes.append("ok")
        except Exception as exc:  # reported as an outcome
            outcomes.append(_outcome(exc))
    return {"outcomes": outcomes}


# -- update_token racing revoke_token and increments ------------------------------------

#: Far in the future: the updater's expiries, one microsecond apart.
FAR_EXPIRY: Final = datetime(2999, 1, 1, tzinfo=UTC)
#: Far above what the race counts: the updater's limits.
HIGH_LIMIT: Final = 1_000_000


def update_admin_fields(db: DB, sync: Sync, token: str, seconds: float) -> Report:
    """For ``seconds``, update the token from one stale read (active, no counts), changing
    ``max_requests`` and ``expires_at`` on every call; then set ``updates_done``."""
    stale = db.get_token_by_id(token)
    sync.barrier.wait()
    deadline = time.monotonic() + seconds
    updates = 0
    last: tuple[int, datetime] | None = None
    while time.monotonic() < deadline:
        updates += 1
        limit, expiry = HIGH_LIMIT + updates, FAR_EXPIRY + timedelta(microseconds=updates)
        db.update_token(attrs.evolve(stale, max_requests=limit, expires_at=expiry))
        last = (limit, expiry)
    sync.events["updates_done"].set()
    assert last is not None
    return {"updates": updates, "max_requests": last[0], "expires_at": last[1].isoformat()}


def revoke_until_updates_stop(db: DB, sync: Sync, token: str) -> Report:
    """Revoke the token now and then while the updater runs; once it has stopped, revoke
    it a last time and set ``revoked``."""
    sync.barrier.wait()
    revokes = 0
    done = sync.events["updates_done"]
    deadline = time.monotonic() + WAIT_S
    while not done.wait(timeout=0.002) and time.monotonic() < deadline:
        db.revoke_token(token)
        revokes += 1
    db.revoke_token(token)  # the final revoke: no update_token call comes after it
    sync.events["revoked"].set()
    return {"revokes": revokes + 1}


def increment_until_revoked(db: DB, sync: Sync, token: str, after: int) -> Report:
    """Count requests and cache hits until the final revoke, then try ``after`` more
    requests: every acknowledged increment, and those made after the final revoke."""
    counts: Counter[str] = Counter()
    sync.barrier.wait()
    revoked = sync.events["revoked"]
    deadline = time.monotonic() + WAIT_S

    def request(key: str) -> None:
        try:
            db.increment_token_usage(token)
            counts[key] += 1
        except TokenInactiveError:
            counts["inactive"] += 1
        except Exception as exc:  # reported as an outcome
            counts[_outcome(exc)] += 1

    while not revoked.is_set() and time.monotonic() < deadline:
        request("requests")
        db.increment_cache_hit_count(token)
        counts["cache_hits"] += 1
    for _ in range(after):
        request("requests_after_final_revoke")
    return dict(counts)
