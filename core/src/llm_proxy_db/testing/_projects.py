"""Projects: create, read, update, delete, list, and the cascade to tokens."""

from __future__ import annotations

import attrs
import pytest

from .._db import DB
from .._errors import (
    AuditEventNotFoundError,
    ProjectExistsError,
    ProjectNotFoundError,
    TokenNotFoundError,
)
from ._base import ConformanceBase, at, secret_key, unique


class ProjectTests(ConformanceBase):
    def test_new_database_is_empty(self, db: DB) -> None:
        assert db.list_projects() == []
        assert db.list_tokens() == []
        assert db.list_audit_events() == []
        assert db.count_audit_events() == 0

    def test_create_project_round_trips_every_field(self, db: DB) -> None:
        project = self.new_project(
            is_active=False,
            deactivated_at=at(30.123456),
            created_at=at(10.000001),
            updated_at=at(20.999999),
        )
        assert db.create_project(project) == project
        assert db.get_project_by_id(project.id) == project

    def test_create_project_with_defaults_round_trips(self, db: DB) -> None:
        project = self.new_project()
        assert db.create_project(project) == project
        stored = db.get_project_by_id(project.id)
        assert stored == project
        assert stored.deactivated_at is None
        assert stored.is_active is True

    def test_create_project_duplicate_id(self, db: DB) -> None:
        project = self.given_project(db)
        with pytest.raises(ProjectExistsError):
            db.create_project(self.new_project(id=project.id))
        assert db.list_projects() == [project]

    def test_create_project_duplicate_name(self, db: DB) -> None:
        project = self.given_project(db)
        with pytest.raises(ProjectExistsError):
            db.create_project(self.new_project(name=project.name))
        assert db.list_projects() == [project]

    def test_get_unknown_project(self, db: DB) -> None:
        with pytest.raises(ProjectNotFoundError):
            db.get_project_by_id(unique("missing"))

    def test_update_unknown_project(self, db: DB) -> None:
        with pytest.raises(ProjectNotFoundError):
            db.update_project(self.new_project())
        assert db.list_projects() == []

    def test_delete_unknown_project(self, db: DB) -> None:
        with pytest.raises(ProjectNotFoundError):
            db.delete_project(unique("missing"))

    def test_list_projects_orders_by_name(self, db: DB) -> None:
        tag = unique("p")
        for name in ("charlie", "alpha", "delta", "bravo"):
            self.given_project(db, name=f"{tag}-{name}")
        names = [p.name for p in db.list_projects()]
        expected = [f"{tag}-{n}" for n in ("alpha", "bravo", "charlie", "delta")]
        assert names == expected, "list_projects() must order by name"

    def test_list_projects_returns_stored_values(self, db: DB) -> None:
        first = self.given_project(db, name="a-project", is_active=False, deactivated_at=at(5))
        second = self.given_project(db, name="b-project")
        assert db.list_projects() == [first, second]

    def test_update_project_stores_administrative_fields(self, db: DB) -> None:
        original = self.given_project(db, created_at=at(0), updated_at=at(0))
        changed = attrs.evolve(
            original,
            name=unique("renamed"),
            openai_api_key=secret_key(),
            is_active=False,
            deactivated_at=at(100.5),
        )
        before = self.now()
        returned = db.update_project(changed)
        after = self.now()
        stored = db.get_project_by_id(original.id)
        assert returned == stored
        assert stored.name == changed.name
        assert stored.openai_api_key == changed.openai_api_key
        assert stored.is_active is False
        assert stored.deactivated_at == at(100.5)
        assert stored.created_at == original.created_at
        self.assert_within(before, stored.updated_at, after, what="update_project() updated_at")

    def test_update_project_can_reactivate(self, db: DB) -> None:
        original = self.given_project(db, is_active=False, deactivated_at=at(1))
        db.update_project(attrs.evolve(original, is_active=True, deactivated_at=None))
        stored = db.get_project_by_id(original.id)
        assert stored.is_active is True
        assert stored.deactivated_at is None

    def test_update_project_never_changes_created_at(self, db: DB) -> None:
        original = self.given_project(db, created_at=at(0))
        db.update_project(attrs.evolve(original, created_at=at(999), updated_at=at(999)))
        stored = db.get_project_by_id(original.id)
        assert stored.created_at == at(0), "update_project() wrote created_at"
        assert stored.updated_at != at(999), "update_project() took updated_at from its argument"

    def test_update_project_to_taken_name(self, db: DB) -> None:
        taken = self.given_project(db)
        other = self.given_project(db)
        with pytest.raises(ProjectExistsError):
            db.update_project(attrs.evolve(other, name=taken.name))
        assert db.get_project_by_id(other.id) == other
        assert db.get_project_by_id(taken.id) == taken

    def test_update_project_keeping_its_own_name(self, db: DB) -> None:
        project = self.given_project(db)
        updated = db.update_project(attrs.evolve(project, openai_api_key=secret_key()))
        assert updated.name == project.name
        assert db.get_project_by_id(project.id) == updated

    def test_delete_project(self, db: DB) -> None:
        keep = self.given_project(db)
        gone = self.given_project(db)
        db.delete_project(gone.id)
        with pytest.raises(ProjectNotFoundError):
            db.get_project_by_id(gone.id)
        with pytest.raises(ProjectNotFoundError):
            db.delete_project(gone.id)
        assert db.list_projects() == [keep]

    def test_delete_project_cascades_to_tokens_but_not_audit_events(self, db: DB) -> None:
        gone = self.given_project(db)
        keep = self.given_project(db)
        doomed = [self.given_token(db, gone) for _ in range(3)]
        kept = self.given_token(db, keep)
        event = db.create_audit_event(
            self.new_event(project_id=gone.id, token_id=doomed[0].token[:8])
        )
        db.delete_project(gone.id)
        for token in doomed:
            with pytest.raises(TokenNotFoundError):
                db.get_token_by_id(token.token)
                pytest.fail("delete_project() left a token of the project behind")
        assert db.list_tokens(gone.id) == [], "list_tokens(deleted project)"
        assert db.list_tokens() == [kept], "delete_project() touched another project's tokens"
        try:
            assert db.get_audit_event_by_id(event.id) == event
        except AuditEventNotFoundError:  # pragma: no cover - the failure we look for
            pytest.fail("deleting a project must not delete its audit events")
        assert db.count_audit_events() == 1
