"""The README's story: a project, a token with a small limit used until it says no, the trail."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from .conftest import API_KEY, Cli


@pytest.mark.server_smoke
def test_quick_start(cli: Cli, name: str) -> None:
    created = cli(
        "project",
        "create",
        name,
        "--api-key-env",
        "OPENAI_API_KEY",
        env={"OPENAI_API_KEY": API_KEY},
    )
    assert f"Created project {name!r}" in created.out
    again = cli(
        "project",
        "create",
        name,
        "--api-key-env",
        "OPENAI_API_KEY",
        "--exist-ok",
        env={"OPENAI_API_KEY": "sk-another-key"},
    )
    assert f"Project {name!r} exists; left unchanged" in again.out

    issued = cli("token", "create", "--project", name, "--max-requests", "3", "--quiet")
    token = issued.out.strip()
    assert issued.out == token + "\n"
    assert token.startswith("sk-") and len(token) > 40

    for used in (1, 2, 3):
        counted = cli("token", "use", token)
        assert counted.out.strip() == f"ok: {used} of 3 requests used; remaining: {3 - used}"

    refused = cli("token", "use", token, code=1)
    assert refused.out == ""
    assert "has used all of its 3 requests" in refused.err
    assert "token reset-usage" in refused.err  # what to do

    trail = cli("audit", "list", "--project", name)
    lines = trail.out.splitlines()
    assert lines[0].split()[:3] == ["TIME", "ACTION", "OUTCOME"]
    assert [line.split()[1:3] for line in lines[1:]] == [
        ["token.use", "failure"],
        ["token.use", "success"],
        ["token.use", "success"],
        ["token.use", "success"],
        ["token.create", "success"],
        ["project.create", "success"],
    ]
    events = cli("--json", "audit", "list", "--project", name).json()
    assert {e["actor"] for e in events} == {events[0]["actor"]}
    assert events[0]["actor"].startswith("cli:")
    assert events[0]["reason"] and "3 requests" in events[0]["reason"]
    assert all(token not in str(e) and API_KEY not in str(e) for e in events)


def _console_script() -> str:
    beside = Path(sys.executable).with_name("llm-proxy-db")
    found = str(beside) if beside.exists() else shutil.which("llm-proxy-db")
    assert found, "the llm-proxy-db console script is not installed"
    return found


def test_console_script_on_path(cli: Cli) -> None:
    result = cli("health", command=[_console_script()])
    assert "status:  ok" in result.out
    version = cli("--version", command=[_console_script()])
    assert version.out.startswith("llm-proxy-db, version ")


def test_help_lists_every_command(cli: Cli) -> None:
    text = cli("--help").out
    for command in ("project", "token", "audit", "migrate", "backends", "health", "stats"):
        assert f"  {command} " in text or f"  {command}\n" in text
    for option in ("--driver", "--database-path", "--database-url", "--json", "--debug"):
        assert option in text
    assert "Exit codes" in text
