"""``project create --exist-ok`` is idempotent under concurrency: processes racing to create
one name all exit 0, one project and one success event result, and no failure event."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from llm_proxy_db import AuditEventFilter, config_from_env, new_from_full_config

from .conftest import API_KEY, Cli

PROCESSES = 8
ROUNDS = 10


@pytest.mark.server_smoke
def test_racing_exist_ok_creates_all_succeed(cli: Cli, name: str) -> None:
    argv = [sys.executable, "-m", "llm_proxy_db.cli", "--json", "project", "create"]
    env = {**cli.env, "UPSTREAM_KEY": API_KEY}
    cli("project", "list")  # the schema exists first: the races are about the name only
    failed: list[str] = []
    for round_ in range(ROUNDS):
        project = f"{name}-{round_}"
        racers = [
            subprocess.Popen(
                [*argv, project, "--api-key-env", "UPSTREAM_KEY", "--exist-ok"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=cli.cwd,
            )
            for _ in range(PROCESSES)
        ]
        ids: set[str] = set()
        for racer in racers:
            out, err = racer.communicate(timeout=120)
            if racer.returncode != 0:
                failed.append(f"{project}: exit {racer.returncode}: {err.strip()}")
                continue
            document: dict[str, Any] = json.loads(out)
            ids.add(document["id"])
            assert document["name"] == project and "openai_api_key" not in document
        assert len(ids) <= 1, f"{project}: the racers saw different projects {ids}"
    assert not failed, f"{len(failed)}/{PROCESSES * ROUNDS} runs failed:\n" + "\n".join(failed)
    # Opened afterwards: on PostgreSQL the CLI's first run created the schema.
    with new_from_full_config(config_from_env(cli.env)) as db:
        ours = [p for p in db.list_projects() if p.name.startswith(f"{name}-")]
        events = db.list_audit_events(AuditEventFilter(action="project.create"))
    assert sorted(p.name for p in ours) == sorted(f"{name}-{r}" for r in range(ROUNDS))
    mine = [e for e in events if str((e.metadata or {}).get("name", "")).startswith(name)]
    assert [e for e in mine if e.outcome == "failure"] == []
    assert len(mine) == ROUNDS  # one success event per project, from the one that created it
