"""Rows another program stored beyond the models' limits (long TEXT values, a year before
1000) still read back and can still be revoked; new values are checked before any statement."""

from __future__ import annotations

import psycopg
import pytest

from llm_proxy_db import (
    MAX_COUNT,
    DatabaseError,
    FullConfig,
    Project,
    generate_token,
    new_from_full_config,
)

_TOKEN = generate_token()
_PROJECT = "p" * 300
_NAME = "n" * 3000  # past PostgreSQL's btree row limit if it came through an insert of ours


def test_rows_beyond_the_limits_read_back_and_can_be_revoked(postgres_url: str) -> None:
    with new_from_full_config(FullConfig(driver="postgres", database_url=postgres_url)) as db:
        with psycopg.connect(postgres_url) as conn:
            conn.execute(
                "INSERT INTO projects (id, name, openai_api_key, created_at, updated_at) "
                "VALUES (%s, %s, %s, '0500-01-01', '2024-05-01')",
                (_PROJECT, "n" * 2000, "k" * 20_000),
            )
            conn.execute(
                "INSERT INTO tokens (token, project_id, request_count, created_at) "
                "VALUES (%s, %s, %s, '2024-05-01')",
                (_TOKEN, _PROJECT, MAX_COUNT),
            )
        project = db.get_project_by_id(_PROJECT)
        assert len(project.name) == 2000 and project.created_at.year == 500
        assert db.get_token_by_id(_TOKEN).request_count == MAX_COUNT
        with pytest.raises(DatabaseError, match="would pass its maximum"):
            db.increment_token_usage(_TOKEN)  # never PostgreSQL's "integer out of range"
        db.revoke_token(_TOKEN)
        assert not db.get_token_by_id(_TOKEN).is_active
        assert db.revoke_project_tokens(_PROJECT) == 0
        with pytest.raises(ValueError, match="at most 255"):
            db.create_project(Project(name=_NAME, openai_api_key="k"))  # no TransientError
