"""The goose-compatible migration runner, shared by every SQL backend.

The runner reads and writes goose's own version table, ``goose_db_version``, so the goose
CLI (and the Go llm-proxy) and this runner read each other's databases:

* the table is created with goose's layout for the dialect (``Dialect.version_table_ddl``)
  together with goose's initial row ``(version_id 0, is_applied true)``;
* a version is applied when its newest row says ``is_applied``; applying inserts a row,
  rolling back deletes the version's rows (as goose v3 does);
* each file runs in its own transaction (unless it says ``-- +goose NO TRANSACTION``),
  and that transaction first re-reads the applied versions, so two processes running
  ``up`` at once never apply one version twice (SQLite: ``BEGIN IMMEDIATE`` serialises
  them; PostgreSQL: the target holds an advisory lock for the whole run);
* ``up`` first reads the applied versions without the exclusive connection (no lock):
  with nothing pending it returns at once, so opening an up-to-date database never
  waits for another process's migration run;
* errors are the backend's translated ones (primary message only, never a driver's
  detail, which may quote a token), and no driver exception is chained to them;
* a database with an applied version that no shipped file has is refused (before any
  change): versions 1-3 are the Go llm-proxy's, its later ones number on from 4, and this
  package's own number from 100, so a database the Go program migrated further is told
  apart from one this package migrated;
* where DDL is not transactional (``Dialect.transactional_ddl`` false: MySQL, MariaDB),
  a file that fails or is killed halfway has partly run, so the runner records its
  progress per statement (see :data:`PROGRESS_TABLE`): each statement commits together
  with its progress row (DDL commits by itself, so only a kill between a DDL statement's
  commit and that row's re-runs that one statement: this package's MySQL files are safe
  to repeat), a re-run resumes after the last completed statement, :meth:`Migrations.status`
  reports "version N stopped after statement k of m", ``up`` refuses to go past a half
  rolled back version, and ``down`` refuses to cross a partly applied one unless forced.

A backend supplies a :class:`MigrationTarget`; :class:`DbApiMigrationConnection` adapts
any DB-API connection in autocommit mode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import datetime
from importlib.resources.abc import Traversable
from typing import Any, Final, Literal, Protocol

import attrs

from .._clock import utcnow
from .._errors import DatabaseError, MigrationError
from ._dialect import Dialect
from ._goose import Migration, load_migrations
from ._integrity import Translate

__all__ = [
    "DbApiMigrationConnection",
    "MigrationConnection",
    "MigrationStatus",
    "MigrationTarget",
    "Migrations",
]

_VERSION_TABLE = "goose_db_version"
PROGRESS_TABLE = "llm_proxy_db_migration_progress"
"""This runner's own table, beside goose's (which stays exactly as goose writes it, so the
goose CLI and the Go llm-proxy still read the database): one row per file whose run has
begun and not finished, ``(version_id, direction, statements_done, statements_total)``.
Only on databases whose DDL is not transactional, created on the first ``up``/``down``."""
_PROGRESS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} (\n"
    "    version_id BIGINT NOT NULL PRIMARY KEY,\n"
    "    direction VARCHAR(4) NOT NULL,\n"
    "    statements_done INTEGER NOT NULL,\n"
    "    statements_total INTEGER NOT NULL\n"
    ")"
)
_UP: Final = "up"
_DOWN: Final = "down"
_log = logging.getLogger(__name__)


class MigrationConnection(Protocol):
    """One connection, used by one migration run and by nothing else meanwhile."""

    @property
    def dialect(self) -> Dialect:
        """The database's dialect (placeholders, timestamps, ``begin_write``, goose table)."""
        ...

    def execute(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; the rows it returns (``[]`` when it returns none).

        With ``params`` the statement's ``?`` placeholders are bound to them; without, the
        statement runs verbatim (migration files may contain ``?`` or ``%`` literally).
        Autocommit, unless inside :meth:`transaction`.
        """
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """``dialect.begin_write`` ... ``COMMIT``; ``ROLLBACK`` when the block raises."""
        ...


class MigrationTarget(Protocol):
    """What a backend hands the runner."""

    def migration_connection(
        self, *, exclusive: bool = True
    ) -> AbstractContextManager[MigrationConnection]:
        """A connection for one run of the runner.

        ``exclusive`` (``up``/``down``): no other run may change the schema meanwhile;
        PostgreSQL holds ``pg_advisory_lock`` on this one dedicated connection for the
        whole run (taken and released on it). Read-only calls (``status``, ``version``,
        ``check_schema``) pass ``exclusive=False`` and must not wait for a running
        migration. SQLite simply hands out one connection either way.
        """
        ...


class DbApiMigrationConnection:
    """:class:`MigrationConnection` over a DB-API connection already in autocommit mode.

    sqlite3 with ``isolation_level=None``; psycopg with ``autocommit=True``. Statements
    with parameters go through ``dialect.sql()`` for the driver's placeholder style.
    ``driver_error`` exceptions come out translated by ``translate`` (the backend's own
    mapping), with no driver exception attached.
    """

    def __init__(
        self,
        connection: Any,
        dialect: Dialect,
        *,
        driver_error: type[Exception],
        translate: Translate,
    ) -> None:
        self._connection = connection
        self._dialect = dialect
        self._driver_error = driver_error
        self._translate = translate
        self._in_transaction = False

    @property
    def dialect(self) -> Dialect:
        return self._dialect

    def execute(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._execute(statement, params)
        except self._driver_error as exc:
            error = self._translate(exc)
        raise error  # outside the except block: the driver's exception is not attached

    def _execute(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        cursor = self._connection.cursor()
        try:
            if params:
                cursor.execute(self._dialect.sql(statement), tuple(params))
            else:
                cursor.execute(statement)
            if cursor.description is None:
                return []
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        if self._in_transaction:
            raise MigrationError("nested migration transactions are not supported")
        self.execute(self._dialect.begin_write)
        self._in_transaction = True
        try:
            yield
        except BaseException:
            # The original error matters; a failed ROLLBACK (connection gone, or SQLite
            # already rolled back) leaves nothing committed either.
            with suppress(Exception):
                self.execute("ROLLBACK")
            raise
        else:
            self.execute("COMMIT")
        finally:
            self._in_transaction = False

    def transaction(self) -> AbstractContextManager[None]:
        return self._transaction()


@attrs.frozen(kw_only=True)
class MigrationStatus:
    """One version: shipped and/or applied, when it was applied, and whether a run of it
    stopped partway."""

    version: int
    name: str
    """The file's name part; empty for an applied version that no shipped file has."""
    applied: bool
    applied_at: datetime | None
    """When it was applied (aware UTC), ``None`` when pending or unknown."""
    stopped_in: Literal["up", "down"] | None = None
    """Which section of the file a run that failed or was killed partway was in (only
    where DDL is not transactional); ``None`` when no run of it is unfinished."""
    statements_done: int = 0
    """The statements of that section that completed (and stay applied)."""
    statements_total: int = 0
    """The statements of that section."""

    @property
    def progress(self) -> str | None:
        """``"version N stopped after statement k of m"`` (``" of its Down"`` added for a
        roll-back), or ``None`` when no run of this version is unfinished."""
        if self.stopped_in is None:
            return None
        return _stopped_after(
            self.version, self.stopped_in, self.statements_done, self.statements_total
        )


@attrs.frozen(kw_only=True)
class _Progress:
    """One row of :data:`PROGRESS_TABLE`."""

    version: int
    direction: Literal["up", "down"]
    done: int
    total: int

    def describe(self) -> str:
        return _stopped_after(self.version, self.direction, self.done, self.total)


def _stopped_after(version: int, direction: str, done: int, total: int) -> str:
    section = " of its Down" if direction == _DOWN else ""
    return f"version {version} stopped after statement {done} of {total}{section}"


def _backend(dialect: Dialect) -> str:
    return f"llm-proxy-db-{dialect.name}"


def _version_list(versions: Sequence[int], most: int = 8) -> str:
    """``4, 5, 6`` -- or, past ``most`` versions, the first few, ``...`` and the last."""
    if len(versions) <= most:
        return ", ".join(str(v) for v in versions)
    head = ", ".join(str(v) for v in versions[: most - 1])
    return f"{head}, ..., {versions[-1]} ({len(versions)} versions)"


def _reason(exc: BaseException) -> str:
    """What may be said of ``exc``: a library error's message (translated: primary message
    only); of anything else only its type, as its text may quote a secret."""
    if isinstance(exc, DatabaseError):
        return str(exc)
    return f"{type(exc).__name__} (untranslated driver error)"


def _describe(statement: str) -> str:
    first = next((line.strip() for line in statement.splitlines() if line.strip()), "")
    return first if len(first) <= 80 else first[:77] + "..."


class Migrations:
    """Apply, roll back and report the goose migrations in ``source`` on ``target``."""

    def __init__(self, source: Traversable, target: MigrationTarget) -> None:
        self._migrations = load_migrations(source)
        self._by_version = {migration.version: migration for migration in self._migrations}
        self._target = target

    @property
    def migrations(self) -> list[Migration]:
        """The shipped migrations, oldest first."""
        return list(self._migrations)

    @property
    def latest(self) -> int:
        """The newest shipped version (0 when none ship)."""
        return self._migrations[-1].version if self._migrations else 0

    # -- public operations -------------------------------------------------------------

    def up(self, target: int | None = None) -> list[int]:
        """Apply every pending version up to ``target`` (default: all); those it applied.

        Refuses (``MigrationError``) a database newer than this package, or one with an
        applied version it does not ship (see :meth:`check_schema`). A version that
        another process applied meanwhile is skipped. Where DDL is not transactional, a
        file whose last run stopped partway resumes after its last completed statement,
        and a version whose roll-back stopped partway is refused (run ``down`` again).
        """
        if target is not None and (target < 0 or target > self.latest):
            raise MigrationError(
                f"cannot migrate up to version {target}: the migrations shipped go from 1 "
                f"to {self.latest}"
            )
        limit = self.latest if target is None else target
        pending = self._pending(limit)
        if not pending:
            _log.debug("migrate up: nothing pending up to version %d", limit)
            return []
        applied_now: list[int] = []
        with self._target.migration_connection() as conn:
            self._ensure_version_table(conn)
            if self._tracks_progress(conn):
                self._ensure_progress_table(conn)
            self._check_schema(conn)
            applied = self._applied(conn)
            progress = self._unfinished(conn, applied, clean=True)
            half_down = [item for item in progress.values() if item.direction == _DOWN]
            if half_down:
                item = half_down[-1]
                raise MigrationError(
                    f"{item.describe()} (a roll-back failed or was killed there): run "
                    f"migrate down again to finish rolling it back before migrating up"
                )
            for migration in self._migrations:
                if migration.version > limit:
                    break
                if migration.version in applied:
                    if migration.version in pending:
                        _log.debug(
                            "skipped migration %s (version %d, up): another process applied "
                            "it meanwhile",
                            migration.source,
                            migration.version,
                        )
                    continue
                resume = progress.get(migration.version)
                if self._run(conn, migration, up=True, resume=resume):
                    applied_now.append(migration.version)
        return applied_now

    def down(self, *, force: bool = False) -> int | None:
        """Roll back the newest applied version; that version, or ``None`` if none is.

        Where DDL is not transactional: a roll-back that stopped partway resumes after its
        last completed statement; a newer file whose ``up`` stopped partway is not crossed
        (``MigrationError``: run ``up`` to finish it) unless ``force``, which rolls back
        the version below it anyway and leaves the partial file's progress recorded (its
        completed statements stay applied, and the next ``up`` resumes it).
        """
        with self._target.migration_connection() as conn:
            self._ensure_version_table(conn)
            if self._tracks_progress(conn):
                self._ensure_progress_table(conn)
            self._check_schema(conn)
            while True:
                applied = self._applied(conn)
                newest = max(applied, default=0)
                if newest == 0:
                    _log.debug("migrate down: no version is applied, nothing to roll back")
                    return None
                migration = self._by_version.get(newest)
                if migration is None:  # pragma: no cover - _check_schema covers the newest
                    raise MigrationError(f"no migration file for applied version {newest}")
                progress = self._unfinished(conn, applied, clean=True)
                self._refuse_crossing(progress, newest, force=force)
                resume = progress.get(newest)
                if self._run(conn, migration, up=False, resume=resume):
                    return newest

    def status(self) -> list[MigrationStatus]:
        """Every shipped version, and every applied one no file knows, by version."""
        with self._target.migration_connection(exclusive=False) as conn:
            applied = self._applied(conn) if self._has_version_table(conn) else {}
            progress = self._unfinished(conn, applied)
        versions = sorted(set(self._by_version) | (set(applied) - {0}))
        result = []
        for version in versions:
            migration = self._by_version.get(version)
            item = progress.get(version)
            result.append(
                MigrationStatus(
                    version=version,
                    name=migration.name if migration else "",
                    applied=version in applied,
                    applied_at=applied.get(version),
                    stopped_in=None if item is None else item.direction,
                    statements_done=0 if item is None else item.done,
                    statements_total=0 if item is None else item.total,
                )
            )
        return result

    def version(self) -> int:
        """The newest applied version; 0 when none is (or there is no version table)."""
        with self._target.migration_connection(exclusive=False) as conn:
            return self._version(conn)

    def on_open(self, *, auto_migrate: bool) -> None:
        """What opening a database does: :meth:`up` when ``auto_migrate``, else
        :meth:`check_schema`."""
        if auto_migrate:
            self.up()
        else:
            self.check_schema()

    def check_schema(self) -> None:
        """``MigrationError`` unless this package knows every version the database has.

        Refused: a version newer than any shipped file (upgrade this package), and any
        other applied version no shipped file has (another program, such as the Go
        llm-proxy, migrated the database: its schema is not the one this package expects).
        goose's initial version 0 is always known.
        """
        with self._target.migration_connection(exclusive=False) as conn:
            self._check_schema(conn)

    # -- internals ---------------------------------------------------------------------

    def _pending(self, limit: int) -> set[int]:
        """The unapplied versions up to ``limit``, read without the exclusive connection
        (no lock); also refuses an unknown schema as :meth:`up` would. A version whose
        roll-back stopped partway counts too: ``up`` then takes the exclusive connection
        and refuses it."""
        with self._target.migration_connection(exclusive=False) as conn:
            applied: dict[int, datetime | None] = {}
            half_down: set[int] = set()
            if self._has_version_table(conn):
                self._check_schema(conn)
                applied = self._applied(conn)
                unfinished = self._unfinished(conn, applied)
                half_down = {v for v, item in unfinished.items() if item.direction == _DOWN}
        return half_down | {
            m.version for m in self._migrations if m.version <= limit and m.version not in applied
        }

    def _version(self, conn: MigrationConnection) -> int:
        if not self._has_version_table(conn):
            return 0
        return max(self._applied(conn), default=0)

    def _check_schema(self, conn: MigrationConnection) -> None:
        if not self._has_version_table(conn):
            return
        applied = self._applied(conn)
        unknown = sorted(set(applied) - set(self._by_version) - {0})
        if not unknown:
            return
        if all(version > self.latest for version in unknown):
            # Only versions past the newest file: a newer release of this package ran.
            raise MigrationError(
                f"database schema version {unknown[-1]} is newer than the newest migration "
                f"this package ships ({self.latest}): upgrade {_backend(conn.dialect)}"
            )
        plural = "s" if len(unknown) > 1 else ""
        raise MigrationError(
            f"database has applied migration version{plural} {_version_list(unknown)} that "
            f"this package does not ship: it was migrated by another program (the Go "
            f"llm-proxy?) or by another build of {_backend(conn.dialect)}, whose schema "
            f"this package does not know (it ships versions "
            f"{_version_list(sorted(self._by_version))}); refusing to run on an unknown schema"
        )

    def _has_version_table(self, conn: MigrationConnection) -> bool:
        """Whether goose's table exists (call outside a transaction: a failed probe would
        abort a PostgreSQL transaction)."""
        try:
            conn.execute(f"SELECT 1 FROM {_VERSION_TABLE} WHERE 1 = 0")
            return True
        except Exception:  # noqa: S110 - the table is missing, or the connection broke
            pass
        try:
            conn.execute("SELECT 1")
            return False
        except Exception as exc:  # the connection itself is broken, not the table missing
            reason = _reason(exc)
        raise MigrationError(f"cannot read {_VERSION_TABLE}: {reason}")

    def _applied(self, conn: MigrationConnection) -> dict[int, datetime | None]:
        """Applied versions (including goose's 0) -> when; the newest row per version wins."""
        try:
            rows = conn.execute(
                f"SELECT version_id, is_applied, tstamp FROM {_VERSION_TABLE} ORDER BY id DESC"
            )
        except MigrationError:
            raise
        except Exception as exc:
            reason = _reason(exc)
        else:
            return self._newest_rows(conn, rows)
        raise MigrationError(f"cannot read {_VERSION_TABLE}: {reason}")

    def _newest_rows(
        self, conn: MigrationConnection, rows: list[tuple[Any, ...]]
    ) -> dict[int, datetime | None]:
        seen: set[int] = set()
        applied: dict[int, datetime | None] = {}
        for version_id, is_applied, tstamp in rows:
            version = int(version_id)
            if version in seen:
                continue
            seen.add(version)
            if is_applied:
                applied[version] = self._decode_time(conn.dialect, tstamp)
        return applied

    @staticmethod
    def _decode_time(dialect: Dialect, value: Any) -> datetime | None:
        if value is None:
            return None
        try:
            return dialect.decode_time(value)
        except (TypeError, ValueError):
            return None  # written by some other tool in a form we do not read

    def _ensure_version_table(self, conn: MigrationConnection) -> None:
        """goose's table and its initial version-0 row, created once (race-safe)."""
        try:
            if not self._has_version_table(conn):
                conn.execute(conn.dialect.version_table_ddl)
            with conn.transaction():
                if not conn.execute(f"SELECT 1 FROM {_VERSION_TABLE} LIMIT 1"):
                    self._insert_version(conn, 0)
            return
        except MigrationError:
            raise
        except Exception as exc:
            reason = _reason(exc)
        raise MigrationError(f"cannot create {_VERSION_TABLE}: {reason}")

    def _insert_version(self, conn: MigrationConnection, version: int) -> None:
        conn.execute(
            f"INSERT INTO {_VERSION_TABLE} (version_id, is_applied, tstamp) VALUES (?, ?, ?)",
            (version, True, conn.dialect.encode_time(utcnow())),
        )

    # -- per-statement progress (DDL not transactional) ------------------------------

    @staticmethod
    def _tracks_progress(conn: MigrationConnection) -> bool:
        return not conn.dialect.transactional_ddl

    def _read_progress(self, conn: MigrationConnection) -> list[_Progress]:
        """Every row of the progress table; none where it does not exist (call outside a
        transaction, as :meth:`_has_version_table`)."""
        if not self._tracks_progress(conn):
            return []
        query = (
            f"SELECT version_id, direction, statements_done, statements_total "
            f"FROM {PROGRESS_TABLE} ORDER BY version_id"
        )
        try:
            rows = conn.execute(query)
        except Exception:
            try:
                conn.execute("SELECT 1")
            except Exception as exc:  # the connection broke, not the table missing
                reason = _reason(exc)
            else:
                return []
            raise MigrationError(f"cannot read {PROGRESS_TABLE}: {reason}") from None
        result = []
        for version_id, direction, done, total in rows:
            way: Literal["up", "down"] = _DOWN if str(direction) == _DOWN else _UP
            result.append(
                _Progress(version=int(version_id), direction=way, done=int(done), total=int(total))
            )
        return result

    def _unfinished(
        self,
        conn: MigrationConnection,
        applied: dict[int, datetime | None],
        *,
        clean: bool = False,
    ) -> dict[int, _Progress]:
        """The runs that stopped partway, by version: an ``up`` of a version that is not
        applied, a ``down`` of one that still is. Other rows are left over from a run that
        was killed between recording the version and removing its row; ``clean`` (under
        the exclusive connection) deletes them."""
        unfinished: dict[int, _Progress] = {}
        for item in self._read_progress(conn):
            is_applied = item.version in applied
            if item.done > 0 and is_applied == (item.direction == _DOWN):
                unfinished[item.version] = item
            elif clean:
                _log.debug("removing a finished run's progress row (version %d)", item.version)
                self._forget_progress(conn, item.version)
        return unfinished

    def _ensure_progress_table(self, conn: MigrationConnection) -> None:
        try:
            conn.execute(_PROGRESS_DDL)
            return
        except MigrationError:
            raise
        except Exception as exc:
            reason = _reason(exc)
        raise MigrationError(f"cannot create {PROGRESS_TABLE}: {reason}")

    @staticmethod
    def _forget_progress(conn: MigrationConnection, version: int) -> None:
        conn.execute(f"DELETE FROM {PROGRESS_TABLE} WHERE version_id = ?", (version,))

    @staticmethod
    def _save_progress(conn: MigrationConnection, item: _Progress, *, update: bool) -> None:
        if update:
            conn.execute(
                f"UPDATE {PROGRESS_TABLE} SET direction = ?, statements_done = ?, "
                f"statements_total = ? WHERE version_id = ?",
                (item.direction, item.done, item.total, item.version),
            )
        else:
            conn.execute(
                f"INSERT INTO {PROGRESS_TABLE} "
                f"(version_id, direction, statements_done, statements_total) VALUES (?, ?, ?, ?)",
                (item.version, item.direction, item.done, item.total),
            )

    @staticmethod
    def _refuse_crossing(progress: dict[int, _Progress], newest: int, *, force: bool) -> None:
        """``down`` of ``newest`` would leave a partly applied newer file in place."""
        above = [
            item for item in progress.values() if item.direction == _UP and item.version > newest
        ]
        if not above:
            return
        item = above[-1]
        if force:
            _log.warning(
                "migrate down --force: rolling back version %d although %s; its completed "
                "statements stay applied and the next migrate up resumes it",
                newest,
                item.describe(),
            )
            return
        raise MigrationError(
            f"{item.describe()} (migrate up failed or was killed there): rolling back "
            f"version {newest} would cross it; run migrate up to finish it, or force the "
            f"roll-back (migrate down --force), which leaves its {item.done} completed "
            f"statement{'s' if item.done != 1 else ''} applied"
        )

    def _run(
        self,
        conn: MigrationConnection,
        migration: Migration,
        *,
        up: bool,
        resume: _Progress | None = None,
    ) -> bool:
        """Apply (``up``) or roll back one file; ``False`` when another process already did.

        Inside the file's transaction the applied versions are read again: up skips a
        version that is now applied; down skips unless the version is still the newest.
        Where DDL is not transactional each statement commits with its progress row
        instead, and ``resume`` (a run that stopped partway) skips the completed ones.
        """
        statements = migration.up if up else migration.down
        direction: Literal["up", "down"] = _UP if up else _DOWN
        where = f"migration {migration.source} (version {migration.version}, {direction})"
        tracked = self._tracks_progress(conn)
        if resume is not None and resume.total != len(statements):
            raise MigrationError(
                f"{where}: {resume.describe()}, but the file now has {len(statements)} "
                f"statements in that section: it changed since (a released migration file "
                f"must never change); restore the file that ran, or finish by hand"
            )
        first = resume.done if resume is not None else 0
        index = 0

        def still_needed() -> bool:
            applied = self._applied(conn)
            if up:
                return migration.version not in applied
            return max(applied, default=0) == migration.version

        def record() -> None:
            if up:
                self._insert_version(conn, migration.version)
            else:
                conn.execute(
                    f"DELETE FROM {_VERSION_TABLE} WHERE version_id = ?", (migration.version,)
                )

        def body() -> bool:
            nonlocal index
            if not still_needed():
                return False
            for number, statement in enumerate(statements, start=1):
                index = number
                conn.execute(statement)
            index = 0
            record()
            return True

        def tracked_body() -> bool:
            # One statement and its progress row per transaction (a DDL statement commits
            # by itself first); the exclusive connection keeps other runs out meanwhile.
            nonlocal index
            if not still_needed():
                return False
            if first:
                _log.info("resuming %s: %s", where, resume.describe() if resume else "")
            saved = resume is not None
            for number in range(first + 1, len(statements) + 1):
                index = number
                item = _Progress(
                    version=migration.version,
                    direction=direction,
                    done=number,
                    total=len(statements),
                )
                if migration.transactional:
                    with conn.transaction():
                        conn.execute(statements[number - 1])
                        self._save_progress(conn, item, update=saved)
                else:
                    conn.execute(statements[number - 1])
                    self._save_progress(conn, item, update=saved)
                saved = True
            index = 0
            with conn.transaction():
                record()
                self._forget_progress(conn, migration.version)
            return True

        started = time.perf_counter()
        try:
            if tracked:
                done = tracked_body()
            elif migration.transactional:
                with conn.transaction():
                    done = body()
            else:
                done = body()
        except MigrationError as exc:
            _log.error("%s failed: %s", where, exc)
            raise
        except Exception as exc:
            reason = _reason(exc)
        else:
            if done:
                _log.info(
                    "%s migration %s (version %d, %s) in %.0f ms",
                    "applied" if up else "rolled back",
                    migration.source,
                    migration.version,
                    direction,
                    (time.perf_counter() - started) * 1000,
                )
            else:
                _log.debug(
                    "skipped %s: another process %s it meanwhile",
                    where,
                    "applied" if up else "rolled back or superseded",
                )
            return done
        detail = ""
        if index:
            detail = (
                f" at statement {index} of {len(statements)} ({_describe(statements[index - 1])})"
            )
        if tracked:
            rolled_back = self._stopped(conn, migration.version, direction, index, up=up)
        elif not migration.transactional:
            rolled_back = "NOT rolled back (the file says NO TRANSACTION)"
        else:
            rolled_back = "rolled back"
        error = MigrationError(
            f"{where} failed{detail}: {reason}; {rolled_back}", version=migration.version
        )
        _log.error("%s", error)
        raise error

    def _stopped(
        self, conn: MigrationConnection, version: int, direction: str, index: int, *, up: bool
    ) -> str:
        """What a failed tracked run left, as the progress table now says."""
        done = max(index - 1, 0)
        try:
            rows = [item for item in self._read_progress(conn) if item.version == version]
        except MigrationError:
            rows = []
        else:
            done = rows[0].done if rows and rows[0].direction == direction else 0
        again = "migrate up" if up else "migrate down"
        if not done:
            return f"none of its statements stay applied; {again} runs it again from the start"
        plural = "s" if done > 1 else ""
        return (
            f"DDL is not transactional on {conn.dialect.name}: its first {done} statement"
            f"{plural} stay applied (version {version} stopped after statement {done}); "
            f"{again} resumes at statement {done + 1}"
        )
