"""Optional capabilities: a declared one must hold (persistence, migrations, processes)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import pytest

from .._db import DB
from .._errors import MigrationError, ProjectNotFoundError
from .._models import AuditEventFilter, Token
from . import _forking, _races
from ._base import KNOWN_CAPABILITIES, BackendFactory, ConformanceBase, at, requires, unique

_PROCESSES = 4
_ATTEMPTS_EACH = 25
_PROCESS_LIMIT = 40
_NAME_ROUNDS = 15
_DELETE_ROUNDS = 5
_CREATORS = 3
_UPDATE_SECONDS = 1.0


class CapabilityTests(ConformanceBase):
    def test_capabilities_are_declared(self, db: DB) -> None:
        assert isinstance(db.backend_spec.name, str) and db.backend_spec.name
        assert "no-such-capability" not in db.capabilities
        assert set(db.capabilities) <= set(KNOWN_CAPABILITIES), "unknown capability declared"
        # A backend without the migrations capability has no runner; one with it has one.
        if "migrations" in db.capabilities:
            assert isinstance(db.migrations.version(), int)
        else:
            with pytest.raises(MigrationError):
                db.migrations  # noqa: B018 - the property raises

    @requires("persistent")
    def test_data_survives_reopen(self, db: DB, backend_factory: BackendFactory) -> None:
        project = self.given_project(db, created_at=at(1.5), updated_at=at(2.25))
        token = self.given_token(db, project, max_requests=3)
        db.increment_token_usage(token.token)
        db.increment_cache_hit_count(token.token, 2)
        event = db.create_audit_event(
            self.new_event(project_id=project.id, timestamp=at(3), metadata={"k": [1, "v"]})
        )
        stored_token = db.get_token_by_id(token.token)
        db.close()
        reopened = backend_factory(reopen=db)
        try:
            assert reopened.list_projects() == [project]
            assert reopened.list_tokens() == [stored_token]
            assert reopened.list_audit_events() == [event]
            assert reopened.increment_token_usage(token.token).request_count == 2
        finally:
            reopened.close()

    @requires("persistent")
    def test_transaction_survives_reopen(self, db: DB, backend_factory: BackendFactory) -> None:
        project = self.new_project()
        with db.transaction() as tx:
            tx.create_project(project)
        db.close()
        with backend_factory(reopen=db) as reopened:
            assert reopened.get_project_by_id(project.id) == project

    @requires("migrations")
    def test_migrations_are_applied(self, db: DB) -> None:
        migrations = db.migrations
        version = migrations.version()
        assert version == migrations.latest, "a new database is migrated to the newest file"
        status = migrations.status()
        assert status, "no migrations listed"
        assert all(entry.applied for entry in status), status
        assert max(entry.version for entry in status) == version
        for entry in status:
            assert entry.applied_at is not None
            assert entry.applied_at.utcoffset() == timedelta(0)

    @requires("migrations")
    def test_migrations_down_then_up(self, db: DB) -> None:
        migrations = db.migrations
        top = migrations.version()
        migrations.down()
        assert migrations.version() < top
        assert [e.version for e in migrations.status() if not e.applied] == [top]
        migrations.up()
        assert migrations.version() == top
        assert all(entry.applied for entry in migrations.status())
        migrations.up()  # nothing pending: a no-op
        assert migrations.version() == top
        token = self.given_token(db, max_requests=1)
        assert db.increment_token_usage(token.token).request_count == 1
        event = db.create_audit_event(self.new_event(metadata={"after": "up"}))
        assert db.list_audit_events(AuditEventFilter(search="after")) == [event]

    # -- several processes on one storage -----------------------------------------------

    def race(
        self,
        db: DB,
        *children: tuple[_races.Body, tuple[object, ...]],
        events: tuple[str, ...] = (),
    ) -> list[_races.Report]:
        """Run each ``(body, args)`` of :mod:`._races` in its own spawned process on the
        storage of ``db``; their reports."""
        return _races.race(db.config, tuple(self.spawn_imports), children, events=events)

    @requires("multi_process")
    def test_forked_children_get_their_own_connections(self, db: DB) -> None:
        """A ``DB`` opened and used before ``os.fork()`` (gunicorn/uvicorn preload): each
        child's calls work on fresh connections and see only their own rows, none hangs,
        and the parent goes on working."""
        project = self.given_project(db)
        token = self.given_token(db, project)
        db.increment_token_usage(token.token)
        reports = _forking.fork_children(db, children=4, tokens_each=25)
        assert db.increment_token_usage(token.token).request_count == 2
        for report in reports:
            stored = {t.token for t in db.list_tokens(report["project"])}
            assert stored == set(report["tokens"]), "the parent does not see a child's tokens"
        db.health_check()

    @requires("multi_process")
    def test_exact_limit_with_racing_processes(self, db: DB) -> None:
        token = self.given_token(db, max_requests=_PROCESS_LIMIT)
        reports = self.race(
            db, *[(_races.race_increments, (token.token, _ATTEMPTS_EACH))] * _PROCESSES
        )
        totals: Counter[str] = Counter()
        for report in reports:
            totals.update(report)
        attempts = _PROCESSES * _ATTEMPTS_EACH
        assert dict(totals) == {"ok": _PROCESS_LIMIT, "limit": attempts - _PROCESS_LIMIT}, (
            f"increment_token_usage() from {_PROCESSES} processes on a token with "
            f"max_requests={_PROCESS_LIMIT}: outcomes {dict(totals)}"
        )
        stored = db.get_token_by_id(token.token).request_count
        assert stored == _PROCESS_LIMIT, f"request_count after the race: {stored}"

    @requires("multi_process")
    def test_project_name_is_unique_across_processes(self, db: DB) -> None:
        """Processes creating a project of the same name at once: exactly one wins."""
        tag = unique("race")
        reports = self.race(
            db,
            *[
                (_races.create_same_names, (tag, _NAME_ROUNDS, child))
                for child in range(_PROCESSES)
            ],
        )
        stored = db.list_projects()
        wrong: list[str] = []
        for round_ in range(_NAME_ROUNDS):
            name = f"{tag}-{round_}"
            outcomes = sorted(report["outcomes"][round_] for report in reports)
            if outcomes != ["exists"] * (_PROCESSES - 1) + ["ok"]:
                wrong.append(f"create_project(name={name!r}) in {_PROCESSES} processes: {outcomes}")
            named = [p.id for p in stored if p.name == name]
            if len(named) != 1:
                wrong.append(f"list_projects() has {len(named)} projects named {name!r}: {named}")
        assert not wrong, (
            "project names must be unique across processes (expected one 'ok' and "
            "ProjectExistsError ('exists') for the others):\n" + "\n".join(wrong)
        )

    @requires("multi_process")
    def test_delete_project_racing_token_creation(self, db: DB) -> None:
        """Processes creating tokens for a project while another deletes it: no token is
        left pointing at the deleted project, and no acknowledged token is lost."""
        doomed = [self.given_project(db).id for _ in range(_DELETE_ROUNDS)]
        keeper = self.given_project(db)
        creators = [(_races.create_tokens_until_deleted, (doomed, keeper.id, 10.0))] * _CREATORS
        reports = self.race(db, *creators, (_races.delete_projects, (doomed, 0.005)))
        *created, deleted = reports
        assert deleted["outcomes"] == ["ok"] * _DELETE_ROUNDS, (
            f"delete_project() racing create_token(): {deleted['outcomes']}"
        )
        outcomes: Counter[str] = Counter()
        for report in created:
            outcomes.update(report["outcomes"])
        unexpected = set(outcomes) - {"ok", "gone"}
        assert not unexpected, (
            "create_token() racing delete_project() must succeed or raise "
            f"ProjectNotFoundError ('gone'); outcomes: {dict(outcomes)}"
        )
        for project_id in doomed:
            with pytest.raises(ProjectNotFoundError):
                db.get_project_by_id(project_id)
                pytest.fail(f"delete_project({project_id!r}) succeeded, yet the project is back")
            left = db.list_tokens(project_id)
            assert left == [], (
                f"list_tokens({project_id!r}) after the project was deleted: {len(left)} tokens"
            )
        projects = {p.id for p in db.list_projects()}
        orphans = [t for t in db.list_tokens() if t.project_id not in projects]
        assert not orphans, f"list_tokens() has tokens of deleted projects: {orphans[:3]}"
        kept = {t.token for t in db.list_tokens(keeper.id)}
        acknowledged = [value for report in created for value in report["kept"]]
        lost = [Token(project_id=keeper.id, token=v) for v in acknowledged if v not in kept]
        assert not lost, (
            f"create_token() for a project nobody deleted returned, but {len(lost)} of "
            f"{len(acknowledged)} such tokens are gone after the race, e.g. {lost[:3]}"
        )

    @requires("multi_process")
    def test_update_token_racing_revoke_and_increments(self, db: DB) -> None:
        """``update_token`` (from a stale read), ``revoke_token`` and increments, each in
        its own process: no write overwrites what another wrote.

        ``update_token`` writes only its administrative fields, so no acknowledged
        increment is lost; ``revoke_token`` writes only ``is_active``/``deactivated_at``,
        so the last update's limit and expiry stay; and once the final revoke (made after
        the updater stopped) returns, nothing brings the token back to life.
        """
        token = self.given_token(db, max_requests=_races.HIGH_LIMIT)
        updater, revoker, incrementer = self.race(
            db,
            (_races.update_admin_fields, (token.token, _UPDATE_SECONDS)),
            (_races.revoke_until_updates_stop, (token.token,)),
            (_races.increment_until_revoked, (token.token, 10)),
            events=("updates_done", "revoked"),
        )
        stored = db.get_token_by_id(token.token)
        unexpected = set(incrementer) - {
            "requests",
            "cache_hits",
            "inactive",
            "requests_after_final_revoke",
        }
        assert not unexpected, f"increments racing update_token(): {incrementer}"
        counted = incrementer.get("requests", 0) + incrementer.get("requests_after_final_revoke", 0)
        story = (
            f"{updater['updates']} update_token(), {revoker['revokes']} revoke_token() and "
            f"{counted} acknowledged increment_token_usage() calls"
        )
        assert stored.request_count == counted, (
            f"request_count is {stored.request_count} after {story}: a write of "
            "update_token() or revoke_token() overwrote the counter with a stale value"
        )
        assert stored.cache_hit_count == incrementer["cache_hits"], (
            f"cache_hit_count is {stored.cache_hit_count} after {incrementer['cache_hits']} "
            f"acknowledged increment_cache_hit_count() calls during {story}"
        )
        last_update = (updater["max_requests"], datetime.fromisoformat(updater["expires_at"]))
        assert (stored.max_requests, stored.expires_at) == last_update, (
            f"max_requests/expires_at after {story} are not the last update_token()'s: "
            "revoke_token() or an increment wrote stale administrative fields"
        )
        assert stored.is_active is False and stored.deactivated_at is not None, (
            f"the token is active (is_active={stored.is_active}, deactivated_at="
            f"{stored.deactivated_at}) after its final revoke_token(), which no "
            f"update_token() followed ({story})"
        )
        assert incrementer.get("requests_after_final_revoke", 0) == 0, (
            f"increment_token_usage() counted {incrementer['requests_after_final_revoke']} "
            "requests after the final revoke_token() returned"
        )
