"""The jsonfile backend: one JSON document holding every project, token and audit event.

Every call is a small unit of work: take the thread lock and an exclusive ``flock`` on the
sidecar ``<path>.lock`` file, read the document, apply the call, write the document to a
temporary file and ``os.replace`` it over the old one, release the locks. A transaction
holds the locks for the whole block and writes once at the end, or not at all when the
block raises. Readers never see a half-written file, and processes sharing the file are
serialised by the lock, so the design is persistent and safe across processes; it is
slow for large stores (every call reads the whole file).

Fork-safe: an ``flock`` belongs to the open file, which a child of ``os.fork()`` shares
with its parent, so a child's first call opens its own lock file (a pid check).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Final, TypeVar

import attrs

from llm_proxy_db import (
    MAX_COUNT,
    AlreadyExistsError,
    AuditEvent,
    AuditEventFilter,
    AuditEventNotFoundError,
    Authorization,
    ConfigError,
    DatabaseError,
    FullConfig,
    Project,
    ProjectExistsError,
    ProjectNotFoundError,
    Stats,
    Token,
    TokenExistsError,
    TokenNotFoundError,
    TransientError,
    converter,
    mask_token,
    utcnow,
)

__all__ = ["JsonFileBackend"]


def _counter_overflow(token: str, counter: str) -> DatabaseError:
    return DatabaseError(
        f"token {mask_token(token)}: {counter} would pass its maximum {MAX_COUNT}; "
        "nothing was counted"
    )


FORMAT: Final = "llm-proxy-db-jsonfile"
FORMAT_VERSION: Final = 1
LOCK_TIMEOUT_S: Final = 30.0
"""How long a call waits for another process's unit of work before giving up."""

_R = TypeVar("_R")


# Every "now" comes from the library's clock, so the conformance suite can pin it.
_now = utcnow
_token_not_found = TokenNotFoundError.for_token
_project_not_found = ProjectNotFoundError.for_id


class _Session:
    """The store methods on the in-memory document of one unit of work.

    What a transaction yields; every method checks before it changes anything, so a
    refused call leaves the document as it was.
    """

    def __init__(
        self,
        projects: dict[str, Project],
        tokens: dict[str, Token],
        events: dict[str, AuditEvent],
        size_bytes: int | None,
    ) -> None:
        self.projects = projects
        self.tokens = tokens
        self.events = events
        self.size_bytes = size_bytes
        self.changed = False
        self.open = True

    def _check_open(self) -> None:
        if not self.open:
            raise DatabaseError("this transaction has ended; start a new one")

    def _token(self, token: str) -> Token:
        self._check_open()
        found = self.tokens.get(token)
        if found is None:
            raise _token_not_found(token)
        return found

    def _project(self, project_id: str) -> Project:
        self._check_open()
        found = self.projects.get(project_id)
        if found is None:
            raise _project_not_found(project_id)
        return found

    def _store_token(self, token: Token) -> Token:
        self.tokens[token.token] = token
        self.changed = True
        return token

    # Projects
    def create_project(self, project: Project) -> Project:
        self._check_open()
        if project.id in self.projects:
            raise ProjectExistsError(
                f"a project with id {project.id!r} already exists", key=project.id
            )
        if any(p.name == project.name for p in self.projects.values()):
            raise ProjectExistsError(
                f"a project named {project.name!r} already exists", key=project.name
            )
        self.projects[project.id] = project
        self.changed = True
        return project

    def get_project_by_id(self, project_id: str) -> Project:
        return self._project(project_id)

    def update_project(self, project: Project) -> Project:
        stored = self._project(project.id)
        if any(p.name == project.name and p.id != project.id for p in self.projects.values()):
            raise ProjectExistsError(
                f"a project named {project.name!r} already exists", key=project.name
            )
        updated = attrs.evolve(
            stored,
            name=project.name,
            openai_api_key=project.openai_api_key,
            is_active=project.is_active,
            deactivated_at=project.deactivated_at,
            updated_at=_now(),
        )
        self.projects[project.id] = updated
        self.changed = True
        return updated

    def delete_project(self, project_id: str) -> None:
        self._project(project_id)
        del self.projects[project_id]
        self.tokens = {k: t for k, t in self.tokens.items() if t.project_id != project_id}
        self.changed = True

    def list_projects(self) -> list[Project]:
        self._check_open()
        return sorted(self.projects.values(), key=lambda p: p.name)

    # Tokens
    def create_token(self, token: Token) -> Token:
        self._project(token.project_id)
        if token.token in self.tokens:
            raise TokenExistsError.for_token(token.token)
        return self._store_token(token)

    def get_token_by_id(self, token: str) -> Token:
        return self._token(token)

    def update_token(self, token: Token) -> Token:
        stored = self._token(token.token)
        return self._store_token(
            attrs.evolve(
                stored,
                expires_at=token.expires_at,
                is_active=token.is_active,
                deactivated_at=token.deactivated_at,
                max_requests=token.max_requests,
            )
        )

    def delete_token(self, token: str) -> None:
        self._token(token)
        del self.tokens[token]
        self.changed = True

    def list_tokens(self, project_id: str | None = None) -> list[Token]:
        self._check_open()
        found = [t for t in self.tokens.values() if project_id in (None, t.project_id)]
        return sorted(found, key=lambda t: (t.created_at, t.token), reverse=True)

    def increment_token_usage(self, token: str) -> Token:
        now = _now()
        stored = self._token(token)
        project = self.projects.get(stored.project_id)
        stored.check_usable(project_active=project is not None and project.is_active, now=now)
        if stored.request_count >= MAX_COUNT:  # the counters' bound, as on every backend
            raise _counter_overflow(token, "request_count")
        return self._store_token(
            attrs.evolve(stored, request_count=stored.request_count + 1, last_used_at=now)
        )

    def authorize(self, token: str) -> Authorization:
        counted = self.increment_token_usage(token)
        return Authorization(token=counted, project=self._project(counted.project_id))

    def _revoke(self, token: Token, now: datetime) -> None:
        self._store_token(
            attrs.evolve(token, is_active=False, deactivated_at=token.deactivated_at or now)
        )

    def revoke_token(self, token: str) -> None:
        self._revoke(self._token(token), _now())

    def revoke_project_tokens(self, project_id: str) -> int:
        self._check_open()
        now = _now()
        doomed = [t for t in self.tokens.values() if t.project_id == project_id and t.is_active]
        for token in doomed:
            self._revoke(token, now)
        return len(doomed)

    def revoke_expired_tokens(self) -> int:
        self._check_open()
        now = _now()
        doomed = [t for t in self.tokens.values() if t.is_active and t.is_expired(now)]
        for token in doomed:
            self._revoke(token, now)
        return len(doomed)

    def increment_cache_hit_count(self, token: str, delta: int = 1) -> None:
        stored = self._token(token)
        if stored.cache_hit_count > MAX_COUNT - delta:
            raise _counter_overflow(token, "cache_hit_count")
        self._store_token(attrs.evolve(stored, cache_hit_count=stored.cache_hit_count + delta))

    def reset_token_usage(self, token: str) -> Token:
        return self._store_token(attrs.evolve(self._token(token), request_count=0))

    # Audit
    def create_audit_event(self, event: AuditEvent) -> AuditEvent:
        self._check_open()
        if event.id in self.events:
            raise AlreadyExistsError(
                f"an audit event with id {event.id!r} already exists", key=event.id
            )
        self.events[event.id] = event
        self.changed = True
        return event

    def create_audit_events(self, events: list[AuditEvent]) -> int:
        self._check_open()
        before = len(self.events)
        for event in events:
            self.events.setdefault(event.id, event)
        added = len(self.events) - before
        if added:
            self.changed = True
        return added

    def get_audit_event_by_id(self, event_id: str) -> AuditEvent:
        self._check_open()
        found = self.events.get(event_id)
        if found is None:
            raise AuditEventNotFoundError.for_id(event_id)
        return found

    def list_audit_events(self, filter: AuditEventFilter | None = None) -> list[AuditEvent]:
        self._check_open()
        return (filter or AuditEventFilter()).select(self.events.values())

    def count_audit_events(self, filter: AuditEventFilter | None = None) -> int:
        self._check_open()
        return (filter or AuditEventFilter()).count(self.events.values())

    # Operators
    def stats(self) -> Stats:
        self._check_open()
        now = _now()
        tokens = list(self.tokens.values())
        return Stats(
            projects=len(self.projects),
            active_projects=sum(1 for p in self.projects.values() if p.is_active),
            tokens=len(tokens),
            active_tokens=sum(1 for t in tokens if t.is_active and not t.is_expired(now)),
            expired_tokens=sum(1 for t in tokens if t.is_expired(now)),
            total_requests=sum(t.request_count for t in tokens),
            size_bytes=self.size_bytes,
        )


class JsonFileBackend:
    """A ``Backend`` on one JSON file (``FullConfig.path``) and its ``.lock`` sidecar."""

    def __init__(self, config: FullConfig) -> None:
        self._path = Path(config.path)
        self._lock_path = self._path.with_name(self._path.name + ".lock")
        if self._path.is_dir():
            raise ConfigError(f"DATABASE_PATH {config.path!r} is a directory; name a file")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd: int | None = os.open(
                self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot create the lock file {str(self._lock_path)!r}: {exc.strerror}"
            ) from None
        self._thread_lock = threading.Lock()
        self._pid = os.getpid()
        self._owner: int | None = None
        self._close_pending = False
        try:
            with self._session() as session:  # creates the file, or checks it is ours
                session.changed = not self._path.exists()
        except BaseException:
            self.close()
            raise

    # -- the unit of work ------------------------------------------------------------------

    def _after_fork(self) -> None:
        # In a forked child: the inherited lock fd shares the parent's flock; open our own.
        inherited, self._pid = self._lock_fd, os.getpid()
        self._thread_lock = threading.Lock()
        self._owner = None
        if inherited is None:
            return
        self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(inherited)  # the parent's copy keeps its lock: flock is released by LOCK_UN

    @contextmanager
    def _session(self) -> Iterator[_Session]:
        if self._pid != os.getpid():
            self._after_fork()
        if self._owner == threading.get_ident():
            raise DatabaseError(
                "a transaction is open on this thread: call the stores it yielded instead"
            )
        try:
            with self._thread_lock:
                fd = self._lock_fd
                if fd is None:
                    raise DatabaseError("the database is closed")
                self._owner = threading.get_ident()
                try:
                    self._flock(fd)
                    try:
                        session = self._read()
                        try:
                            yield session
                            if session.changed:
                                self._write(session)
                        finally:
                            session.open = False
                    finally:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                finally:
                    self._owner = None
        finally:
            if self._close_pending:
                self.close()

    def _run(self, call: Callable[[_Session], _R]) -> _R:
        with self._session() as session:
            return call(session)

    def _flock(self, fd: int) -> None:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        pause = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    raise DatabaseError(f"cannot lock {str(self._lock_path)!r}: {exc}") from None
            if time.monotonic() > deadline:
                raise TransientError(
                    f"{str(self._path)!r} stayed locked by another process for "
                    f"{LOCK_TIMEOUT_S:g}s; retry"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.01)

    def _read(self) -> _Session:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return _Session({}, {}, {}, 0)
        except OSError as exc:
            raise DatabaseError(f"cannot read {str(self._path)!r}: {exc.strerror}") from None
        try:
            document = json.loads(raw)
            if not isinstance(document, dict) or document.get("format") != FORMAT:
                raise ValueError("no jsonfile format marker")
            if document.get("version") != FORMAT_VERSION:
                raise ValueError(f"format version {document.get('version')!r} is not supported")
            projects = [converter.structure(p, Project) for p in document["projects"]]
            tokens = [converter.structure(t, Token) for t in document["tokens"]]
            events = [converter.structure(e, AuditEvent) for e in document["audit_events"]]
        except Exception as exc:  # never echo the content: it holds secrets
            raise ConfigError(
                f"{str(self._path)!r} is not a jsonfile store ({type(exc).__name__}); "
                "point DATABASE_PATH at a new file"
            ) from None
        return _Session(
            {p.id: p for p in projects},
            {t.token: t for t in tokens},
            {e.id: e for e in events},
            len(raw),
        )

    def _write(self, session: _Session) -> None:
        document = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "projects": [converter.unstructure(p) for p in session.projects.values()],
            "tokens": [converter.unstructure(t) for t in session.tokens.values()],
            "audit_events": [converter.unstructure(e) for e in session.events.values()],
        }
        data = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        temporary = self._path.with_name(f".{self._path.name}.{uuid.uuid4().hex}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            # The data is on disk before the rename, so a power cut never leaves a torn
            # file; the rename itself is not synced (like SQLite's synchronous=NORMAL, the
            # last commits may be lost in a power cut, never half of one).
            os.replace(temporary, self._path)
        except OSError as exc:
            with suppress(OSError):
                temporary.unlink()
            raise DatabaseError(f"cannot write {str(self._path)!r}: {exc.strerror}") from None

    # -- Backend ---------------------------------------------------------------------------

    def close(self) -> None:
        if self._owner == threading.get_ident():
            # Closed from inside this thread's transaction: finish it first.
            self._close_pending = True
            return
        with self._thread_lock:
            fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def health_check(self) -> None:
        with self._session():
            pass

    @contextmanager
    def transaction(self) -> Iterator[_Session]:
        with self._session() as session:
            yield session

    # -- the store methods, each one unit of work -----------------------------------------

    def create_project(self, project: Project) -> Project:
        return self._run(lambda s: s.create_project(project))

    def get_project_by_id(self, project_id: str) -> Project:
        return self._run(lambda s: s.get_project_by_id(project_id))

    def update_project(self, project: Project) -> Project:
        return self._run(lambda s: s.update_project(project))

    def delete_project(self, project_id: str) -> None:
        self._run(lambda s: s.delete_project(project_id))

    def list_projects(self) -> list[Project]:
        return self._run(lambda s: s.list_projects())

    def create_token(self, token: Token) -> Token:
        return self._run(lambda s: s.create_token(token))

    def get_token_by_id(self, token: str) -> Token:
        return self._run(lambda s: s.get_token_by_id(token))

    def update_token(self, token: Token) -> Token:
        return self._run(lambda s: s.update_token(token))

    def delete_token(self, token: str) -> None:
        self._run(lambda s: s.delete_token(token))

    def list_tokens(self, project_id: str | None = None) -> list[Token]:
        return self._run(lambda s: s.list_tokens(project_id))

    def increment_token_usage(self, token: str) -> Token:
        return self._run(lambda s: s.increment_token_usage(token))

    def authorize(self, token: str) -> Authorization:
        return self._run(lambda s: s.authorize(token))

    def revoke_token(self, token: str) -> None:
        self._run(lambda s: s.revoke_token(token))

    def revoke_project_tokens(self, project_id: str) -> int:
        return self._run(lambda s: s.revoke_project_tokens(project_id))

    def revoke_expired_tokens(self) -> int:
        return self._run(lambda s: s.revoke_expired_tokens())

    def increment_cache_hit_count(self, token: str, delta: int = 1) -> None:
        self._run(lambda s: s.increment_cache_hit_count(token, delta))

    def reset_token_usage(self, token: str) -> Token:
        return self._run(lambda s: s.reset_token_usage(token))

    def create_audit_event(self, event: AuditEvent) -> AuditEvent:
        return self._run(lambda s: s.create_audit_event(event))

    def create_audit_events(self, events: list[AuditEvent]) -> int:
        return self._run(lambda s: s.create_audit_events(events))

    def get_audit_event_by_id(self, event_id: str) -> AuditEvent:
        return self._run(lambda s: s.get_audit_event_by_id(event_id))

    def list_audit_events(self, filter: AuditEventFilter | None = None) -> list[AuditEvent]:
        return self._run(lambda s: s.list_audit_events(filter))

    def count_audit_events(self, filter: AuditEventFilter | None = None) -> int:
        return self._run(lambda s: s.count_audit_events(filter))

    def stats(self) -> Stats:
        return self._run(lambda s: s.stats())
