"""Self-checks of the conformance suite: it catches broken backends and skips what is optional.

Each check writes a small test module, ``test_broken.py``, that registers backends in code
(subclasses of the memory backend, most broken on purpose: the *mutants*) and runs
``StoreConformance`` against one of them in a nested pytest run, selecting with ``-k`` the
tests that must catch the bug (the full suite runs only for the correct controls).

Every mutant plants one bug the suite must catch; :data:`MUTANTS` says which tests must
fail for it. The controls (:func:`test_correct_backends_pass`) run the unbroken versions
on the same tests, so a failure is the mutation's and not the fixture's.

Backends of three kinds:

* memory mutants: small subclasses of ``llm_proxy_db_memory.MemoryBackend``;
* ``Unpluggable`` and its mutants: a memory backend whose ``unplugged()`` context manager
  makes every call fail, for the ``failing_storage`` tests (the inner class overrides that
  fixture);
* ``FileBackend`` and its mutants: the memory backend's dicts kept in a JSON file under an
  exclusive ``fcntl.flock``, so that it is correct across processes and declares
  ``multi_process``; each racy mutant splits one call into two locked steps with a pause
  between them (a read-modify-write, or a check-then-act, without the lock held).

The ``multi_process`` tests run *spawned* processes, which find backends by entry point
only: a backend registered in code does not exist there. Rather than packaging the
mutants, the inner class sets ``StoreConformance.spawn_imports = ("test_broken",)``: every
child imports the inner module first (spawned children inherit ``sys.path``, which holds
pytester's folder), and importing it registers the backends, exactly as in this process.
That hook is part of the suite's public surface, for any backend registered in code.
"""

from __future__ import annotations

import multiprocessing.connection
import multiprocessing.queues
import multiprocessing.resource_tracker
import multiprocessing.synchronize
import re
from collections.abc import Iterator

import attrs
import pytest

from llm_proxy_db import AuditEventFilter, unregister_backend
from llm_proxy_db.testing import StoreConformance
from llm_proxy_db.testing._base import required_capabilities
from llm_proxy_db.testing._stateful import FILTER_CHOICES

pytest_plugins = ["pytester"]

# Imported here, not first inside an inner run: pytester drops the modules a run imported,
# and multiprocessing keeps references to its own functions (pickling reducers, the
# resource tracker), which a fresh import of the module would no longer match.
_MULTIPROCESSING = (
    multiprocessing.connection,
    multiprocessing.queues,
    multiprocessing.resource_tracker,
    multiprocessing.synchronize,
)

_INNER_OPTIONS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:benchmark")

# The inner module: every backend, registered on import (here and in spawned children).
_HEADER = r'''
import fcntl
import itertools
import json
import os
import re
import time
import types
from contextlib import contextmanager
from datetime import timedelta

import attrs
import pytest
from hypothesis import Phase, settings

from llm_proxy_db import (
    STORAGE_API_VERSION, AuditEvent, BackendSpec, Capabilities, DatabaseError, FullConfig,
    Project, ProjectExistsError, Stores, Token, TokenExistsError, TokenLimitReachedError,
    TokenNotFoundError, converter, new_from_full_config, register_backend, utcnow,
)
from llm_proxy_db._clock import set_clock
from llm_proxy_db._delegation import protocol_methods
from llm_proxy_db._models import SEARCHED_FIELDS, metadata_text
from llm_proxy_db.testing import StoreConformance
from llm_proxy_db.testing._base import _raw_backend
from llm_proxy_db_memory import MemoryBackend

# Most mutants use the memory backend's public methods only; a few (and the file
# backend) reach into its lock and three dicts: fail loudly here if those change.
assert {"_lock", "_projects", "_tokens", "_events"} <= set(vars(MemoryBackend()))

TICK = timedelta(microseconds=1)
RACE_WINDOW = 0.003  # seconds a racy mutant pauses between its two locked steps
STORE_METHODS = tuple(protocol_methods(Stores))


class Bare(MemoryBackend):
    """The memory backend as it is (the control; declares no capability)."""


# -- what only the backend object can get wrong -------------------------------------------

class CloseTwiceRaises(MemoryBackend):
    """close() raises on its second call."""

    def close(self):
        if getattr(self, "closed_once", False):
            raise DatabaseError("the backend is already closed")
        self.closed_once = True
        super().close()


class AnswersAfterClose(MemoryBackend):
    """health_check() answers after close()."""

    def health_check(self):
        pass


class FourMethodTransaction(MemoryBackend):
    """transaction() yields an object with 4 of the store methods."""

    @contextmanager
    def transaction(self):
        with super().transaction() as stores:
            names = ("create_project", "get_project_by_id", "list_projects", "stats")
            yield types.SimpleNamespace(**{name: getattr(stores, name) for name in names})


class DetachedTransaction(MemoryBackend):
    """transaction() yields the stores of a scratch database: the block's work is lost."""

    @contextmanager
    def transaction(self):
        yield MemoryBackend()


class NoRollback(MemoryBackend):
    """transaction() keeps what the block did when it raises."""

    @contextmanager
    def transaction(self):
        with self._lock:
            yield self


# -- a failing storage --------------------------------------------------------------------

class Unpluggable(MemoryBackend):
    """Inside unplugged(), every store call and health_check() raise DatabaseError."""

    def __init__(self):
        super().__init__()
        self.unplugged_now = False

    @contextmanager
    def unplugged(self):
        self.unplugged_now = True
        try:
            yield
        finally:
            self.unplugged_now = False

    def fail(self, method):
        raise DatabaseError(f"{method}(): the storage is unplugged")

    def health_check(self):
        if self.unplugged_now:
            self.fail("health_check")
        super().health_check()


def _pluggable(name):
    def call(self, *args, **kwargs):
        if self.unplugged_now:
            self.fail(name)
        return getattr(MemoryBackend, name)(self, *args, **kwargs)

    return call


for _method in STORE_METHODS:
    setattr(Unpluggable, _method, _pluggable(_method))


class LeaksDriverError(Unpluggable):
    """While the storage fails, list_tokens() lets the driver's KeyError out."""

    def fail(self, method):
        if method == "list_tokens":
            raise KeyError("tokens")
        super().fail(method)


class HealthCheckLeaksOSError(Unpluggable):
    """While the storage fails, health_check() lets an OSError out."""

    def fail(self, method):
        if method == "health_check":
            raise ConnectionRefusedError(111, "Connection refused")
        super().fail(method)


class SwallowsWrites(Unpluggable):
    """While the storage fails, create_audit_event() returns as if it had written."""

    def create_audit_event(self, event):
        if self.unplugged_now:
            return event
        return super().create_audit_event(event)


class NeverRecovers(Unpluggable):
    """Once the storage failed, the backend stays broken (a poisoned connection)."""

    @contextmanager
    def unplugged(self):
        self.unplugged_now = True
        yield


# -- time -------------------------------------------------------------------------------

class ExpiryBlind(MemoryBackend):
    """Counts requests of expired tokens: increment_token_usage ignores expires_at."""

    def increment_token_usage(self, token):
        stored = self.get_token_by_id(token)
        if stored.expires_at is None:
            return super().increment_token_usage(token)
        self.update_token(attrs.evolve(stored, expires_at=None))
        try:
            updated = super().increment_token_usage(token)
        finally:
            now = self.get_token_by_id(token)
            self.update_token(attrs.evolve(now, expires_at=stored.expires_at))
        return attrs.evolve(updated, expires_at=stored.expires_at)


class ExpiresAfterNow(MemoryBackend):
    """increment_token_usage() tests expires_at < now instead of <= now."""

    def increment_token_usage(self, token):
        stored = self.get_token_by_id(token)
        if stored.expires_at != utcnow():
            return super().increment_token_usage(token)
        self.update_token(attrs.evolve(stored, expires_at=None))  # expiring now still counts
        try:
            used = super().increment_token_usage(token)
        finally:
            back = attrs.evolve(self.get_token_by_id(token), expires_at=stored.expires_at)
            self.update_token(back)
        return attrs.evolve(used, expires_at=stored.expires_at)


class SystemClock(MemoryBackend):
    """increment_token_usage() reads the system clock, not llm_proxy_db.utcnow()."""

    def increment_token_usage(self, token):
        library_clock = set_clock(None)
        try:
            return super().increment_token_usage(token)
        finally:
            set_clock(library_clock)


class StatsExpiresAfterNow(MemoryBackend):
    """stats() counts a token expiring at now as active (< instead of <=)."""

    def stats(self):
        stats, now = super().stats(), utcnow()
        due = [t for t in self.list_tokens() if t.expires_at == now]
        return attrs.evolve(
            stats,
            expired_tokens=stats.expired_tokens - len(due),
            active_tokens=stats.active_tokens + sum(t.is_active for t in due),
        )


class RevokeExpiredAfterNow(MemoryBackend):
    """revoke_expired_tokens() skips tokens expiring at now (< instead of <=)."""

    def revoke_expired_tokens(self):
        now = utcnow()
        due = [t for t in self.list_tokens() if t.is_active and t.expires_at == now]
        for token in due:
            self.update_token(attrs.evolve(token, expires_at=now + TICK))
        try:
            return super().revoke_expired_tokens()
        finally:
            for token in due:
                self.update_token(
                    attrs.evolve(self.get_token_by_id(token.token), expires_at=now)
                )


# -- orders -------------------------------------------------------------------------------

class Unordered(MemoryBackend):
    """list_projects in reverse name order instead of by name."""

    def list_projects(self):
        return list(reversed(super().list_projects()))


class TokensOldestFirst(MemoryBackend):
    """list_tokens() oldest first."""

    def list_tokens(self, project_id=None):
        return list(reversed(super().list_tokens(project_id)))


class TokenTiesAscending(MemoryBackend):
    """list_tokens() breaks ties of created_at by token ascending."""

    def list_tokens(self, project_id=None):
        tokens = sorted(super().list_tokens(project_id), key=lambda t: t.token)
        return sorted(tokens, key=lambda t: t.created_at, reverse=True)


class AuditTiesAscending(MemoryBackend):
    """list_audit_events() breaks ties of timestamp by id ascending."""

    def list_audit_events(self, filter=None):
        events = sorted(super().list_audit_events(filter), key=lambda e: e.id)
        return sorted(events, key=lambda e: e.timestamp, reverse=True)


# -- counters and revocation --------------------------------------------------------------

class UpdateTokenWritesCounters(MemoryBackend):
    """update_token() writes the whole token: counters and last_used_at included."""

    def update_token(self, token):
        stored = self.get_token_by_id(token.token)
        self.delete_token(token.token)
        return self.create_token(
            attrs.evolve(token, project_id=stored.project_id, created_at=stored.created_at)
        )


class RevokeRestamps(MemoryBackend):
    """revoke_token() replaces an existing deactivated_at with now."""

    def revoke_token(self, token):
        super().revoke_token(token)
        self.update_token(attrs.evolve(self.get_token_by_id(token), deactivated_at=utcnow()))


class RevokeProjectCountsInactive(MemoryBackend):
    """revoke_project_tokens() counts the project's already inactive tokens too."""

    def revoke_project_tokens(self, project_id):
        inactive = sum(not t.is_active for t in self.list_tokens(project_id))
        return super().revoke_project_tokens(project_id) + inactive


class ResetZeroesCacheHits(MemoryBackend):
    """reset_token_usage() also zeroes cache_hit_count."""

    def reset_token_usage(self, token):
        reset = attrs.evolve(super().reset_token_usage(token), cache_hit_count=0)
        self.delete_token(token)
        return self.create_token(reset)


class ResetClearsLastUsed(MemoryBackend):
    """reset_token_usage() also clears last_used_at."""

    def reset_token_usage(self, token):
        reset = attrs.evolve(super().reset_token_usage(token), last_used_at=None)
        self.delete_token(token)
        return self.create_token(reset)


class IncrementKeepsLastUsed(MemoryBackend):
    """increment_token_usage() counts but leaves last_used_at as it was."""

    def increment_token_usage(self, token):
        before = self.get_token_by_id(token).last_used_at
        used = attrs.evolve(super().increment_token_usage(token), last_used_at=before)
        self.delete_token(token)
        return self.create_token(used)


class CacheHitIgnoresDelta(MemoryBackend):
    """increment_cache_hit_count() adds 1 whatever the delta."""

    def increment_cache_hit_count(self, token, delta=1):
        super().increment_cache_hit_count(token, 1)


class LimitBeforeInactive(MemoryBackend):
    """increment_token_usage() checks the limit before activity, expiry and the project."""

    def increment_token_usage(self, token):
        stored = self.get_token_by_id(token)
        if stored.max_requests is not None and stored.request_count >= stored.max_requests:
            raise TokenLimitReachedError("the token has used all of its requests")
        return super().increment_token_usage(token)


class UnlockedIncrement(MemoryBackend):
    """increment_token_usage() reads, checks and writes without holding its lock."""

    def increment_token_usage(self, token):
        stored = self.get_token_by_id(token)
        project = self.get_project_by_id(stored.project_id)
        now = utcnow()
        stored.check_usable(project_active=project.is_active, now=now)
        time.sleep(0.0005)
        used = attrs.evolve(stored, request_count=stored.request_count + 1, last_used_at=now)
        self._tokens[token] = used
        return used


# -- projects -----------------------------------------------------------------------------

class NoCascade(MemoryBackend):
    """delete_project() leaves the project's tokens behind."""

    def delete_project(self, project_id):
        with self._lock:
            orphans = {t.token: t for t in self.list_tokens(project_id)}
            super().delete_project(project_id)
            self._tokens.update(orphans)


class CascadeDeletesAudit(MemoryBackend):
    """delete_project() deletes the project's audit events too."""

    def delete_project(self, project_id):
        with self._lock:
            super().delete_project(project_id)
            self._events = {k: e for k, e in self._events.items() if e.project_id != project_id}


class DuplicateNames(MemoryBackend):
    """create_project() refuses a taken id, not a taken name."""

    def create_project(self, project):
        with self._lock:
            if project.id in self._projects:
                return super().create_project(project)
            self._projects[project.id] = project
            return project


class TokenOfUnknownProject(MemoryBackend):
    """create_token() does not check that the project exists."""

    def create_token(self, token):
        with self._lock:
            if token.token in self._tokens:
                return super().create_token(token)
            self._tokens[token.token] = token
            return token


class UpdateProjectKeepsUpdatedAt(MemoryBackend):
    """update_project() leaves updated_at as it was."""

    def update_project(self, project):
        with self._lock:
            before = self.get_project_by_id(project.id).updated_at
            updated = attrs.evolve(super().update_project(project), updated_at=before)
            self._projects[project.id] = updated
            return updated


class UpdateProjectWritesCreatedAt(MemoryBackend):
    """update_project() takes created_at from its argument."""

    def update_project(self, project):
        with self._lock:
            updated = attrs.evolve(super().update_project(project), created_at=project.created_at)
            self._projects[project.id] = updated
            return updated


# -- audit --------------------------------------------------------------------------------

def _texts(event):
    texts = [getattr(event, name) for name in SEARCHED_FIELDS if name != "metadata"]
    return [text for text in (*texts, metadata_text(event.metadata)) if text is not None]


class _SearchVariant(MemoryBackend):
    """Audit search through matches(needle, texts); the filter and paging otherwise."""

    def _found(self, flt):
        wide = attrs.evolve(flt, search=None, limit=None, offset=0)
        return [e for e in super().list_audit_events(wide) if self.matches(flt.search, e)]

    def list_audit_events(self, filter=None):
        if filter is None or filter.search is None:
            return super().list_audit_events(filter)
        end = None if filter.limit is None else filter.offset + filter.limit
        return self._found(filter)[filter.offset : end]

    def count_audit_events(self, filter=None):
        if filter is None or filter.search is None:
            return super().count_audit_events(filter)
        return len(self._found(filter))


class SearchLikePattern(_SearchVariant):
    """search is a LIKE pattern: % and _ are wildcards."""

    def matches(self, needle, event):
        parts = (".".join(map(re.escape, part.split("_"))) for part in needle.split("%"))
        pattern = ".*".join(parts)
        return any(re.search(pattern, text, re.IGNORECASE) for text in _texts(event))


class SearchCaseSensitive(_SearchVariant):
    """search is case-sensitive."""

    def matches(self, needle, event):
        return any(needle in text for text in _texts(event))


class SearchSkipsMetadata(_SearchVariant):
    """search ignores the metadata."""

    def matches(self, needle, event):
        texts = [getattr(event, name) for name in SEARCHED_FIELDS if name != "metadata"]
        return any(text and needle.lower() in text.lower() for text in texts)


class _TimeVariant(MemoryBackend):
    def list_audit_events(self, filter=None):
        return super().list_audit_events(self.changed(filter))

    def count_audit_events(self, filter=None):
        return super().count_audit_events(self.changed(filter))


class EndTimeInclusive(_TimeVariant):
    """end_time is inclusive."""

    def changed(self, flt):
        if flt is None or flt.end_time is None:
            return flt
        return attrs.evolve(flt, end_time=flt.end_time + TICK)


class StartTimeExclusive(_TimeVariant):
    """start_time is exclusive."""

    def changed(self, flt):
        if flt is None or flt.start_time is None:
            return flt
        return attrs.evolve(flt, start_time=flt.start_time + TICK)


class CountHonorsPaging(MemoryBackend):
    """count_audit_events() applies limit and offset."""

    def count_audit_events(self, filter=None):
        return len(self.list_audit_events(filter))


# -- secrets ------------------------------------------------------------------------------

class SecretInMessage(MemoryBackend):
    """get_token_by_id() names the unknown token in full."""

    def get_token_by_id(self, token):
        try:
            return super().get_token_by_id(token)
        except TokenNotFoundError:
            raise TokenNotFoundError(f"no token {token}") from None


class SecretInCause(MemoryBackend):
    """delete_token() chains a KeyError quoting the token to its TokenNotFoundError."""

    def delete_token(self, token):
        try:
            super().delete_token(token)
        except TokenNotFoundError:
            raise TokenNotFoundError.for_token(token) from KeyError(token)


# -- several processes: a file under a lock, and racy versions of it ------------------------

class FileBackend(MemoryBackend):
    """Correct across processes: each call takes an exclusive flock on <path>.lock, reads
    the JSON file into the memory backend's dicts, runs, and writes the file back."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.held = False
        with self.file_lock():
            pass

    @contextmanager
    def file_lock(self):
        with self._lock:
            if self.held:  # inside a transaction, or a call made by another one
                yield
                return
            with open(self.path + ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self.load()
                self.held = True
                try:
                    yield
                finally:
                    self.held = False
                self.save()

    def load(self):
        data = {"projects": [], "tokens": [], "events": []}
        if os.path.exists(self.path):
            with open(self.path) as file:
                data = json.load(file)
        self._projects = {p.id: p for p in converter.structure(data["projects"], list[Project])}
        self._tokens = {t.token: t for t in converter.structure(data["tokens"], list[Token])}
        self._events = {e.id: e for e in converter.structure(data["events"], list[AuditEvent])}

    def save(self):
        data = {
            "projects": converter.unstructure(list(self._projects.values())),
            "tokens": converter.unstructure(list(self._tokens.values())),
            "events": converter.unstructure(list(self._events.values())),
        }
        scratch = f"{self.path}.{os.getpid()}.tmp"
        with open(scratch, "w") as file:
            json.dump(data, file)
        os.replace(scratch, self.path)

    @contextmanager
    def transaction(self):
        with self.file_lock(), super().transaction() as stores:
            yield stores


def _file_locked(name):
    def call(self, *args, **kwargs):
        with self.file_lock():
            return getattr(MemoryBackend, name)(self, *args, **kwargs)

    return call


for _method in STORE_METHODS:
    setattr(FileBackend, _method, _file_locked(_method))


class NameRace(FileBackend):
    """create_project() checks id and name in one locked step, inserts in another."""

    def create_project(self, project):
        with self.file_lock():
            for other in MemoryBackend.list_projects(self):
                if project.id == other.id or project.name == other.name:
                    raise ProjectExistsError("the project exists")
        time.sleep(RACE_WINDOW)
        with self.file_lock():
            self._projects[project.id] = project
        return project


class TokenCheckThenInsert(FileBackend):
    """create_token() checks the project in one locked step, inserts in another."""

    def create_token(self, token):
        with self.file_lock():
            MemoryBackend.get_project_by_id(self, token.project_id)
            if token.token in self._tokens:
                raise TokenExistsError.for_token(token.token)
        time.sleep(RACE_WINDOW)
        with self.file_lock():
            self._tokens[token.token] = token
        return token


class StaleDelete(FileBackend):
    """delete_project() writes back the whole state it read before its pause."""

    def delete_project(self, project_id):
        with self.file_lock():
            MemoryBackend.get_project_by_id(self, project_id)
            stale = (dict(self._projects), dict(self._tokens), dict(self._events))
        time.sleep(RACE_WINDOW)
        with self.file_lock():
            self._projects, self._tokens, self._events = stale
            MemoryBackend.delete_project(self, project_id)


class StaleUpdateToken(FileBackend):
    """update_token() reads the token, pauses, writes it whole: counts are lost."""

    def update_token(self, token):
        with self.file_lock():
            stored = MemoryBackend.get_token_by_id(self, token.token)
        time.sleep(RACE_WINDOW)
        updated = attrs.evolve(
            stored,
            expires_at=token.expires_at,
            is_active=token.is_active,
            deactivated_at=token.deactivated_at,
            max_requests=token.max_requests,
        )
        with self.file_lock():
            self._tokens[token.token] = updated
        return updated


class StaleRevoke(FileBackend):
    """revoke_token() reads the token, pauses, writes it whole (revoked)."""

    def revoke_token(self, token):
        with self.file_lock():
            stored = MemoryBackend.get_token_by_id(self, token)
        time.sleep(RACE_WINDOW)
        revoked = attrs.evolve(
            stored, is_active=False, deactivated_at=stored.deactivated_at or utcnow()
        )
        with self.file_lock():
            self._tokens[token] = revoked


class StaleIncrement(FileBackend):
    """increment_token_usage() checks in one locked step, counts in another."""

    def increment_token_usage(self, token):
        with self.file_lock():
            stored = MemoryBackend.get_token_by_id(self, token)
            project = MemoryBackend.get_project_by_id(self, stored.project_id)
            now = utcnow()
            stored.check_usable(project_active=project.is_active, now=now)
        time.sleep(RACE_WINDOW)
        used = attrs.evolve(stored, request_count=stored.request_count + 1, last_used_at=now)
        with self.file_lock():
            self._tokens[token] = used
        return used


# -- registration -------------------------------------------------------------------------

def _open(cls):
    if issubclass(cls, FileBackend):
        return lambda config: cls(config.path)
    return lambda config: cls()


for _cls in [
    value
    for value in list(globals().values())
    if isinstance(value, type) and issubclass(value, MemoryBackend) and value.__module__ == __name__
]:
    _file_based = issubclass(_cls, FileBackend)
    register_backend(
        BackendSpec(
            name="selfcheck-" + _cls.__name__.lower(),
            api_version=STORAGE_API_VERSION,
            factory=_open(_cls),
            capabilities=Capabilities(persistent=_file_based, multi_process=_file_based),
            description="conformance suite self-check",
        ),
        replace=True,
    )


def factory_for(name, folder):
    files = (str(folder / f"db{n}.json") for n in itertools.count())

    def factory(*, reopen=None):
        if reopen is not None:
            return new_from_full_config(reopen.config)
        return new_from_full_config(FullConfig(driver=name, path=next(files)))

    return factory
'''

_SUITE = """

class Test{cls}(StoreConformance):
    # No example database (nothing is replayed from earlier runs) and no shrinking: the
    # first failing sequence is enough here, and shrinking one takes minutes. More examples
    # than the default, so that a miss is out of the question; that costs little, as a
    # run stops at its first failure.
    stateful_settings = settings(
        StoreConformance.stateful_settings,
        database=None,
        max_examples=300,
        phases=[Phase.explicit, Phase.generate],
    )
    spawn_imports = ("test_broken",)  # children register the backends by importing this

    @pytest.fixture
    def backend_factory(self, tmp_path):
        return factory_for("selfcheck-{name}", tmp_path)
"""

_UNPLUGGABLE = """
    @pytest.fixture
    def failing_storage(self, db):
        return _raw_backend(db).unplugged()
"""

_BACKEND_CLASSES = re.findall(r"^class (\w+)\(", _HEADER, re.MULTILINE)


@attrs.frozen
class Mutant:
    """One planted bug: the inner class, and the tests that must fail for it."""

    cls: str
    caught_by: tuple[str, ...]
    #: Tests of the same run that must still pass (the bug is not everywhere).
    passes: tuple[str, ...] = ()
    #: (test, text): the failure report of that test must contain the text.
    says: tuple[tuple[str, str], ...] = ()

    @property
    def bug(self) -> str:
        """The docstring of the inner class."""
        found = re.search(rf'^class {self.cls}\(.*?\n\s+"""(.*?)"""', _HEADER, re.M | re.S)
        assert found, f"no class {self.cls} in the inner module"
        return " ".join(found.group(1).split())


_STATEFUL = "test_random_operations_match_reference_model"

MUTANTS = (
    # What only the backend object can get wrong (the facade hides it from other tests).
    Mutant("CloseTwiceRaises", ("test_backend_close_is_idempotent",)),
    Mutant("AnswersAfterClose", ("test_backend_health_check_after_close_raises",)),
    Mutant(
        "FourMethodTransaction",
        ("test_backend_transaction_offers_every_store_method",),
        says=(
            ("test_backend_transaction_offers_every_store_method", "SimpleNamespace, which lacks"),
        ),
    ),
    Mutant(
        "DetachedTransaction",
        (
            "test_backend_transaction_offers_every_store_method",
            "test_transaction_commits_on_normal_exit",
        ),
    ),
    Mutant(
        "NoRollback",
        (
            "test_transaction_rolls_back_everything_on_exception",
            "test_transaction_rolls_back_deletes",
        ),
    ),
    # A failing storage.
    Mutant(
        "LeaksDriverError",
        ("test_failing_storage_raises_only_database_errors",),
        says=(("test_failing_storage_raises_only_database_errors", "list_tokens() raised"),),
    ),
    Mutant(
        "HealthCheckLeaksOSError",
        ("test_failing_storage_raises_only_database_errors",),
        says=(
            (
                "test_failing_storage_raises_only_database_errors",
                "health_check() raised builtins.ConnectionRefusedError",
            ),
        ),
    ),
    Mutant(
        "SwallowsWrites",
        ("test_failing_storage_raises_only_database_errors",),
        says=(
            (
                "test_failing_storage_raises_only_database_errors",
                "create_audit_event() returned as if it had written",
            ),
        ),
    ),
    Mutant(
        "NeverRecovers",
        ("test_database_recovers_after_storage_failure",),
        passes=("test_failing_storage_raises_only_database_errors",),
    ),
    # Time: the boundary expires_at == now, on the one library clock.
    Mutant(
        "ExpiryBlind",
        (
            "test_increment_expired_by_one_millisecond",
            "test_increment_expiring_now_is_expired",
            "test_increment_refusal_order",
            _STATEFUL,
        ),
        passes=("test_revoke_expired_tokens", "test_increment_not_yet_expired"),
        # the state machine meets it through increment_token_usage or authorize (which
        # counts through it), whichever its random walk tries first
        says=((_STATEFUL, ": expected TokenExpiredError, the backend "),),
    ),
    Mutant(
        "ExpiresAfterNow",
        ("test_increment_expiring_now_is_expired",),
        passes=("test_errors_never_contain_secrets", "test_increment_expired_by_one_millisecond"),
    ),
    Mutant(
        "SystemClock",
        ("test_increment_expiring_now_is_expired",),
        says=(("test_increment_expiring_now_is_expired", "last_used_at"),),
    ),
    Mutant("StatsExpiresAfterNow", ("test_stats_at_the_expiry_instant",)),
    Mutant(
        "RevokeExpiredAfterNow",
        ("test_revoke_expired_tokens_at_the_expiry_instant",),
        passes=("test_revoke_expired_tokens",),
    ),
    # Orders.
    Mutant(
        "Unordered",
        (
            "test_list_projects_orders_by_name",
            "test_list_projects_returns_stored_values",
            _STATEFUL,
        ),
        says=((_STATEFUL, "the model has"),),
    ),
    Mutant("TokensOldestFirst", ("test_list_tokens_newest_first",)),
    Mutant(
        "TokenTiesAscending",
        ("test_list_tokens_ties_broken_by_token_descending",),
        passes=("test_list_tokens_newest_first",),
    ),
    Mutant(
        "AuditTiesAscending",
        ("test_list_audit_events_ties_broken_by_id_descending",),
        passes=("test_list_audit_events_newest_first",),
    ),
    # Counters and revocation.
    Mutant(
        "UpdateTokenWritesCounters",
        (
            "test_update_token_never_overwrites_usage_counters",
            "test_update_token_ignores_counters_and_identity_fields",
        ),
        says=(("test_update_token_never_overwrites_usage_counters", "wrote request_count"),),
    ),
    Mutant(
        "RevokeRestamps",
        ("test_revoke_keeps_an_existing_deactivated_at",),
    ),
    Mutant(
        "RevokeProjectCountsInactive",
        ("test_revoke_project_tokens",),
        passes=("test_revoke_project_tokens_of_unknown_project",),
    ),
    Mutant(
        "ResetZeroesCacheHits",
        ("test_reset_token_usage",),
        says=(("test_reset_token_usage", "changed cache_hit_count"),),
    ),
    Mutant(
        "ResetClearsLastUsed",
        ("test_reset_token_usage",),
        says=(("test_reset_token_usage", "changed last_used_at"),),
    ),
    Mutant(
        "IncrementKeepsLastUsed",
        ("test_increment_counts_and_sets_last_used_at",),
        says=(("test_increment_counts_and_sets_last_used_at", "last_used_at"),),
    ),
    Mutant("CacheHitIgnoresDelta", ("test_increment_cache_hit_count",)),
    Mutant(
        "LimitBeforeInactive",
        ("test_increment_refusal_order",),
        says=(("test_increment_refusal_order", "asks for TokenInactiveError"),),
    ),
    Mutant("UnlockedIncrement", ("test_increment_exact_limit_with_racing_threads",)),
    # Projects.
    Mutant("NoCascade", ("test_delete_project_cascades_to_tokens_but_not_audit_events",)),
    Mutant(
        "CascadeDeletesAudit",
        ("test_delete_project_cascades_to_tokens_but_not_audit_events",),
        says=(
            (
                "test_delete_project_cascades_to_tokens_but_not_audit_events",
                "must not delete its audit events",
            ),
        ),
    ),
    Mutant("DuplicateNames", ("test_create_project_duplicate_name",)),
    Mutant("TokenOfUnknownProject", ("test_create_token_for_unknown_project",)),
    Mutant(
        "UpdateProjectKeepsUpdatedAt",
        ("test_update_project_stores_administrative_fields",),
        says=(("test_update_project_stores_administrative_fields", "update_project() updated_at"),),
    ),
    Mutant("UpdateProjectWritesCreatedAt", ("test_update_project_never_changes_created_at",)),
    # Audit.
    Mutant(
        "SearchLikePattern",
        ("test_search_matches_wildcards_literally",),
        passes=("test_search_matches_field_case_insensitively",),
    ),
    Mutant("SearchCaseSensitive", ("test_search_matches_field_case_insensitively",)),
    Mutant(
        "SearchSkipsMetadata",
        ("test_search_matches_field_case_insensitively[metadata]",),
        passes=("test_search_matches_field_case_insensitively[reason]",),
    ),
    Mutant(
        "EndTimeInclusive",
        ("test_time_range_start_inclusive_end_exclusive",),
        says=(("test_time_range_start_inclusive_end_exclusive", "end_time exclusive"),),
    ),
    Mutant("StartTimeExclusive", ("test_time_range_start_inclusive_end_exclusive",)),
    Mutant("CountHonorsPaging", ("test_count_ignores_limit_and_offset",)),
    # Secrets.
    Mutant("SecretInMessage", ("test_errors_never_contain_secrets",)),
    Mutant(
        "SecretInCause",
        ("test_errors_never_contain_secrets",),
        says=(("test_errors_never_contain_secrets", "delete unknown token"),),
    ),
    # Several processes on one file (multi_process).
    Mutant(
        "NameRace",
        ("test_project_name_is_unique_across_processes",),
        says=(("test_project_name_is_unique_across_processes", "'ok', 'ok'"),),
    ),
    Mutant(
        "TokenCheckThenInsert",
        ("test_delete_project_racing_token_creation",),
        says=(("test_delete_project_racing_token_creation", "after the project was deleted"),),
    ),
    Mutant(
        "StaleDelete",
        ("test_delete_project_racing_token_creation",),
        says=(("test_delete_project_racing_token_creation", "such tokens are gone"),),
    ),
    Mutant(
        "StaleUpdateToken",
        ("test_update_token_racing_revoke_and_increments",),
        says=(("test_update_token_racing_revoke_and_increments", "request_count is"),),
    ),
    Mutant(
        "StaleRevoke",
        ("test_update_token_racing_revoke_and_increments",),
        passes=("test_update_token_never_overwrites_usage_counters",),
        says=(("test_update_token_racing_revoke_and_increments", "overwrote the counter"),),
    ),
    Mutant(
        "StaleIncrement",
        ("test_exact_limit_with_racing_processes",),
        says=(("test_exact_limit_with_racing_processes", "max_requests=40"),),
    ),
)


@pytest.fixture
def registered_cleanup() -> Iterator[None]:
    """The inner run registers its backends in this process's registry: remove them."""
    yield
    for cls in _BACKEND_CLASSES:
        unregister_backend(f"selfcheck-{cls.lower()}")


def _module(cls: str) -> str:
    suite = _SUITE.format(cls=cls, name=cls.lower())
    if cls == "Unpluggable" or re.search(rf"^class {cls}\(Unpluggable\)", _HEADER, re.M):
        suite += _UNPLUGGABLE
    return _HEADER + suite


def _name(report: pytest.TestReport) -> str:
    return report.nodeid.rsplit("::", 1)[-1]


def _base(name: str) -> str:
    return name.split("[", 1)[0]


@attrs.frozen
class _Outcomes:
    failed: dict[str, list[pytest.TestReport]]
    passed: set[str]
    skipped: list[pytest.TestReport]

    def did_fail(self, name: str) -> bool:
        """Whether ``name`` (``test_x``: any of its parameters; ``test_x[p]``: that one)
        failed, in its call, setup or teardown."""
        return any(name in (failed, _base(failed)) for failed in self.failed)

    def did_pass(self, name: str) -> bool:
        matching = [p for p in self.passed if name in (p, _base(p))]
        return bool(matching) and not self.did_fail(name)

    def report(self, name: str) -> str:
        return "\n".join(
            r.longreprtext
            for failed, reports in self.failed.items()
            if name in (failed, _base(failed))
            for r in reports
        )


def _run(pytester: pytest.Pytester, *args: str) -> _Outcomes:
    """Run the inner suite: failed reports by test name, passed names, skipped reports."""
    recorder = pytester.inline_run(*_INNER_OPTIONS, *args)
    assert not recorder.getfailedcollections(), "the inner module failed to collect"
    failed: dict[str, list[pytest.TestReport]] = {}
    passed: set[str] = set()
    skipped: list[pytest.TestReport] = []
    for report in recorder.getreports("pytest_runtest_logreport"):
        if report.failed:
            failed.setdefault(_name(report), []).append(report)
        elif report.passed and report.when == "call":
            passed.add(_name(report))
        elif report.skipped:
            skipped.append(report)
    return _Outcomes(failed, passed, skipped)


def _selection(*names: str) -> str:
    return " or ".join(sorted({_base(name) for name in names}))


# -- the mutants --------------------------------------------------------------------------


def test_enough_distinct_mutants() -> None:
    classes = [m.cls for m in MUTANTS]
    assert len(set(classes)) == len(classes), "a mutant is listed twice"
    assert len(classes) >= 30
    assert set(classes) <= set(_BACKEND_CLASSES)


@pytest.mark.usefixtures("registered_cleanup")
@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.cls)
def test_mutant_is_caught(pytester: pytest.Pytester, mutant: Mutant) -> None:
    pytester.makepyfile(test_broken=_module(mutant.cls))
    outcomes = _run(pytester, "-k", _selection(*mutant.caught_by, *mutant.passes))
    missed = [name for name in mutant.caught_by if not outcomes.did_fail(name)]
    assert not missed, (
        f"the suite misses the bug of {mutant.cls} ({mutant.bug}): {missed} did not fail"
    )
    broken = [name for name in mutant.passes if not outcomes.did_pass(name)]
    assert not broken, f"{mutant.cls} ({mutant.bug}) should not fail {broken}"
    for test, text in mutant.says:
        report = outcomes.report(test)
        assert text in report, f"{test} on {mutant.cls} does not say {text!r}:\n{report}"


# -- the controls -------------------------------------------------------------------------


def _optional_tests() -> dict[str, tuple[str, ...]]:
    """The suite's tests that need a capability, and which."""
    found: dict[str, tuple[str, ...]] = {}
    for name in dir(StoreConformance):
        if name.startswith("test_"):
            needed = required_capabilities(getattr(StoreConformance, name))
            if needed:
                found[name] = needed
    return found


def _failing_storage_tests() -> set[str]:
    """The suite's tests that use the ``failing_storage`` fixture."""
    import inspect

    return {
        name
        for name in dir(StoreConformance)
        if name.startswith("test_")
        and "failing_storage" in inspect.signature(getattr(StoreConformance, name)).parameters
    }


@pytest.mark.usefixtures("registered_cleanup")
def test_backend_without_capabilities_skips_optional_tests(pytester: pytest.Pytester) -> None:
    optional = _optional_tests()
    failing = _failing_storage_tests()
    assert optional, "the suite has no capability-dependent tests to check"
    assert len(failing) == 2, failing
    pytester.makepyfile(test_broken=_module("Bare"))
    # Everything but the (slow, and separately checked) model-based test.
    outcomes = _run(pytester, "-k", "not random_operations")
    assert not outcomes.failed, "\n\n".join(outcomes.report(name) for name in outcomes.failed)
    assert len(outcomes.passed) >= 100, len(outcomes.passed)
    assert {_name(r) for r in outcomes.skipped} == set(optional) | failing
    for report in outcomes.skipped:
        reason = str(report.longrepr)
        if _name(report) in failing:
            assert "backend 'selfcheck-bare' has no 'migrations' capability" in reason, reason
            assert "override the failing_storage fixture" in reason, reason
            continue
        needed = optional[_name(report)]
        assert "backend 'selfcheck-bare' lacks the capability" in reason, reason
        assert all(repr(capability) in reason for capability in needed), reason


@pytest.mark.usefixtures("registered_cleanup")
def test_file_backend_passes_the_suite(pytester: pytest.Pytester) -> None:
    """The correct multi-process control: every test but the model-based one passes,
    the races and persistence included."""
    pytester.makepyfile(test_broken=_module("FileBackend"))
    outcomes = _run(pytester, "-k", "not random_operations")
    assert not outcomes.failed, "\n\n".join(outcomes.report(name) for name in outcomes.failed)
    multi = {name for name, needed in _optional_tests().items() if "multi_process" in needed}
    assert len(multi) == 5, multi  # four races and the fork test
    assert multi | {"test_data_survives_reopen"} <= outcomes.passed
    skipped = {_name(r) for r in outcomes.skipped}
    assert skipped == _failing_storage_tests() | {
        name for name, needed in _optional_tests().items() if "migrations" in needed
    }


@pytest.mark.usefixtures("registered_cleanup")
def test_unpluggable_backend_passes_the_failing_storage_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_broken=_module("Unpluggable"))
    outcomes = _run(pytester, "-k", _selection(*_failing_storage_tests()))
    assert not outcomes.failed, "\n\n".join(outcomes.report(name) for name in outcomes.failed)
    assert outcomes.passed == _failing_storage_tests()


def test_stateful_filters_cover_every_filter_field() -> None:
    """The model-based test filters on every field of AuditEventFilter (paging aside)."""
    fields = {field.name for field in attrs.fields(AuditEventFilter)} - {"limit", "offset"}
    assert set(FILTER_CHOICES) == fields
