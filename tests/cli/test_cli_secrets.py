"""``secrets encrypt|rotate|status``: in place, in batches, resumable, idempotent, audited."""

from __future__ import annotations

import base64
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from llm_proxy_db import DB, AuditEventFilter, Project, config_from_env
from llm_proxy_db import new_from_full_config as open_db
from llm_proxy_db._encrypting import unwrapped
from llm_proxy_db._encryption import Cipher, decode_key, key_id

from .conftest import API_KEY, Cli

OLD = base64.b64encode(os.urandom(32)).decode()
NEW = base64.b64encode(os.urandom(32)).decode()
NEW_ID = key_id(decode_key(NEW, "k"))


@pytest.fixture
def plain_cli(cli: Cli) -> Cli:
    """The CLI with no encryption setting inherited from the test run's environment."""
    for name in ("ENCRYPTION_KEY", "ENCRYPTION_KEYS", "REQUIRE_ENCRYPTION_KEY"):
        cli.env.pop(name, None)
    return cli


@pytest.fixture
def plain_db(cli_env: dict[str, str]) -> Iterator[DB]:
    """The CLI's database opened in-process without any key (stored values as they are)."""
    config = attrs.evolve(config_from_env(cli_env), encryption_key=None, encryption_keys=())
    with open_db(config) as opened:
        yield opened


def _projects(db: DB, count: int) -> list[Project]:
    return [
        db.create_project(Project(name=f"p-{i}-{os.urandom(3).hex()}", openai_api_key=API_KEY))
        for i in range(count)
    ]


def _stored(db: DB) -> dict[str, str]:
    return {p.id: p.openai_api_key for p in unwrapped(db).list_projects()}


def _no_secrets(cli: Cli) -> None:
    for run in cli.runs:
        for secret in (API_KEY, OLD, NEW):
            assert secret not in run.out and secret not in run.err, run


def test_encrypt_then_rotate(plain_cli: Cli, plain_db: DB, cli_env: dict[str, str]) -> None:
    cli = plain_cli
    projects = _projects(plain_db, 5)
    status = cli("--json", "secrets", "status").json()
    assert status["states"] == {"plaintext": 5} and status["current"] is None
    assert "No encryption key configured" in cli("secrets", "status").out

    refused = cli("secrets", "encrypt", code=2)
    assert "needs an encryption key" in refused.err
    assert set(_stored(plain_db).values()) == {API_KEY}

    v1 = {"ENCRYPTION_KEY": OLD}
    done = cli("--json", "secrets", "encrypt", "--batch-size", "2", env=v1).json()
    assert done["converted"] == 5 and done["batches"] == 3 and done["format"] == "enc:v1"
    assert done["status"]["states"] == {"enc:v1": 5} and done["status"]["to_encrypt"] == 0
    stored = _stored(plain_db)
    assert all(value.startswith("enc:v1:") for value in stored.values())
    # What the CLI wrote, the library reads back with the key.
    config = attrs.evolve(config_from_env(cli_env), encryption_key=OLD)
    with open_db(config) as keyed:
        assert {p.openai_api_key for p in keyed.list_projects()} == {API_KEY}

    again = cli("--json", "secrets", "encrypt", env=v1).json()
    assert again["converted"] == 0 and again["batches"] == 0
    assert _stored(plain_db) == stored  # idempotent: nothing rewritten
    assert "Nothing to encrypt" in cli("secrets", "encrypt", env=v1).out

    v2 = {"ENCRYPTION_KEYS": f"{NEW},{OLD}"}
    text = cli("secrets", "status", env=v2).out
    assert "enc:v1" in text and f"Writing enc:v2:{NEW_ID}" in text and "5 to rotate" in text
    rotated = cli("secrets", "rotate", env=v2).out
    assert f"Rotated 5 upstream keys as enc:v2:{NEW_ID} in 1 batch" in rotated
    assert "Rotating" not in rotated  # no progress bar when stdout is not a terminal
    after = cli("--json", "secrets", "status", env={"ENCRYPTION_KEYS": NEW}).json()
    assert after["states"] == {f"enc:v2:{NEW_ID}": 5} and after["to_rotate"] == 0
    shown = cli("--json", "project", "show", projects[0].id, env={"ENCRYPTION_KEYS": NEW}).json()
    assert "openai_api_key" not in shown

    events = plain_db.list_audit_events()
    actions = [e.action for e in events if e.action.startswith("secrets.")]
    assert actions == ["secrets.rotate", "secrets.encrypt", "secrets.encrypt", "secrets.encrypt"]
    rotate_event = events[0]
    assert rotate_event.outcome == "success" and rotate_event.metadata is not None
    assert rotate_event.metadata["count"] == 5
    assert rotate_event.metadata["to"] == f"enc:v2:{NEW_ID}"
    assert sorted(rotate_event.metadata["projects"]) == sorted(p.id for p in projects)
    _no_secrets(cli)


def test_a_failed_batch_keeps_the_finished_ones_and_a_rerun_finishes(
    plain_cli: Cli, plain_db: DB
) -> None:
    cli = plain_cli
    projects = _projects(plain_db, 4)
    # One row written by another program with a key this run does not have (enc:v1 has no
    # key id, so only the attempt to decrypt finds out).
    foreign = Cipher([decode_key(OLD, "k")], version=1).encrypt(API_KEY, project_id="x")
    odd = sorted(projects, key=lambda p: p.name)[2]
    unwrapped(plain_db).update_project(attrs.evolve(odd, openai_api_key=foreign))

    failed = cli("secrets", "rotate", "--batch-size", "1", env={"ENCRYPTION_KEYS": NEW}, code=1)
    assert "cannot decrypt the upstream key of project" in failed.err
    states = _stored(plain_db)
    assert states[odd.id] == foreign  # the failed batch changed nothing
    assert sum(v.startswith(f"enc:v2:{NEW_ID}:") for v in states.values()) == 2  # kept
    failures = plain_db.list_audit_events(AuditEventFilter(outcome="failure"))
    assert [e.action for e in failures] == ["secrets.rotate"]
    assert failures[0].project_id == odd.id and API_KEY not in (failures[0].reason or "")

    done = cli("--json", "secrets", "rotate", env={"ENCRYPTION_KEYS": f"{NEW},{OLD}"}).json()
    assert done["converted"] == 2  # the rest: the odd one and the one after it
    assert set(done["status"]["states"]) == {f"enc:v2:{NEW_ID}"}
    _no_secrets(cli)


def test_rotate_refuses_values_of_keys_not_configured(plain_cli: Cli, plain_db: DB) -> None:
    (project,) = _projects(plain_db, 1)
    sealed = Cipher([decode_key(OLD, "k")], version=2).encrypt(API_KEY, project_id=project.id)
    unwrapped(plain_db).update_project(attrs.evolve(project, openai_api_key=sealed))
    result = plain_cli("--json", "secrets", "rotate", env={"ENCRYPTION_KEYS": NEW}, code=2)
    old_id = key_id(decode_key(OLD, "k"))
    assert old_id in result.json()["error"]["message"]
    assert _stored(plain_db) == {project.id: sealed}
    status = plain_cli("--json", "secrets", "status").json()  # no key needed to count
    assert status["states"] == {f"enc:v2:{old_id}": 1}
    _no_secrets(plain_cli)


@pytest.mark.parametrize(
    "env",
    [{"ENCRYPTION_KEY": "not base64"}, {"ENCRYPTION_KEYS": f"{NEW},{NEW[:20]}"}],
    ids=["key", "keys"],
)
def test_bad_keys_exit_2_without_quoting_them(plain_cli: Cli, env: dict[str, str]) -> None:
    result = plain_cli("secrets", "status", env=env, code=2)
    assert "ENCRYPTION_KEY" in result.err
    for value in env.values():
        for part in value.split(","):
            assert part not in result.err


def test_required_key_refuses_to_start(plain_cli: Cli) -> None:
    result = plain_cli("project", "list", env={"REQUIRE_ENCRYPTION_KEY": "true"}, code=2)
    assert "REQUIRE_ENCRYPTION_KEY" in result.err


def _run_on_terminal(cli: Cli, *args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI with stdout on a pseudo-terminal; its exit code and what it showed."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "llm_proxy_db.cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=subprocess.PIPE,
        env={**cli.env, **env, "COLUMNS": "100"},
        cwd=cli.cwd,
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    process.wait(timeout=60)
    assert process.stderr is not None
    assert process.stderr.read() == b""
    return process.returncode, shown.decode("utf-8", "replace")


def test_progress_bar_on_a_terminal(plain_cli: Cli, plain_db: DB) -> None:
    _projects(plain_db, 3)
    code, shown = _run_on_terminal(
        plain_cli, "secrets", "encrypt", "--batch-size", "1", env={"ENCRYPTION_KEY": OLD}
    )
    assert code == 0, shown
    assert "Encrypting upstream keys" in shown and "Encrypted 3 upstream keys" in shown
    assert API_KEY not in shown


def test_json_error_document(plain_cli: Cli) -> None:
    document: dict[str, Any] = plain_cli("--json", "secrets", "encrypt", code=2).json()
    assert document["error"]["exit_code"] == 2 and "ENCRYPTION_KEY" in document["error"]["message"]
