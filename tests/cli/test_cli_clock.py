"""Every "now" of the command line comes from the library's clock (``llm_proxy_db.utcnow``).

These tests run the command line in-process, to pin that clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
import pytest
from click.testing import CliRunner

from llm_proxy_db import DB, Project
from llm_proxy_db.cli._app import run
from llm_proxy_db.cli._params import moment_option
from llm_proxy_db.testing import pinned_clock

from .conftest import API_KEY

NOW = datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)
"""Far from the system clock: a value taken from it would not match."""


@pytest.fixture(autouse=True)
def _database_from_cli_env(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in cli_env.items():
        monkeypatch.setenv(key, value)


def test_token_create_expires_in_counts_from_the_library_clock(db: DB) -> None:
    project = db.create_project(Project(name="demo", openai_api_key=API_KEY))
    with pinned_clock(NOW):
        assert run(["token", "create", "--project", "demo", "--expires-in", "1h", "-q"]) == 0
    [token] = db.list_tokens(project.id)
    assert token.expires_at == NOW + timedelta(hours=1)


def test_project_deactivate_stamps_the_library_clock(db: DB) -> None:
    project = db.create_project(Project(name="demo", openai_api_key=API_KEY))
    with pinned_clock(NOW):
        assert run(["project", "deactivate", "demo"]) == 0
    assert db.get_project_by_id(project.id).deactivated_at == NOW


def test_a_duration_ago_counts_from_the_library_clock() -> None:
    @click.command()
    @moment_option("--since")
    def show(since: datetime) -> None:
        click.echo(since.isoformat())

    with pinned_clock(NOW):
        result = CliRunner().invoke(show, ["--since", "24h"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (NOW - timedelta(hours=24)).isoformat()
