"""Every command once, in text and in JSON: what it prints, and that no secret leaks.

No output (stdout or stderr) ever holds an upstream API key; only ``token create`` prints
the whole token; with ``--json`` every stdout is exactly one JSON document.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_proxy_db import mask_token

from .conftest import API_KEY, Cli, Result

NEW_KEY = "sk-upstream-ROTATED-fedcba9876543210"


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
def test_every_command(cli: Cli, name: str, as_json: bool) -> None:
    results: list[Result] = []

    def run(*args: str, **kwargs: Any) -> Any:
        """Run the command; in JSON mode return its one document, else its text."""
        result = cli(*(["--json"] if as_json else []), *args, **kwargs)
        results.append(result)
        return json.loads(result.out) if as_json else result.out

    renamed = name + "-renamed"

    out = run("project", "create", name, "--api-key-stdin", input=API_KEY + "\n")
    if as_json:
        assert out["name"] == name and out["is_active"] is True
        assert "openai_api_key" not in out and out["api_key_masked"] == mask_token(API_KEY)
        assert out["created_at"].endswith("+00:00")
        project_id = out["id"]
    else:
        assert f"name:           {name}\n" in out and "api_key:        sk-up..." in out
        project_id = out.split("id:", 1)[1].split()[0]

    out = run("project", "list")
    if as_json:
        assert [p["id"] for p in out] == [project_id]
    else:
        assert out.splitlines()[0].split() == ["ID", "NAME", "STATUS", "CREATED"]
        assert out.splitlines()[1].split()[:3] == [project_id, name, "active"]

    out = run("project", "show", name)
    assert (out["id"] if as_json else out.split()[1]) == project_id

    out = run("project", "update", project_id, "--name", renamed, "--api-key-stdin", input=NEW_KEY)
    if as_json:
        assert out["name"] == renamed and out["api_key_masked"] == mask_token(NEW_KEY)
    else:
        assert f"Updated project {renamed!r}" in out

    out = run("token", "create", "--project", renamed, "--max-requests", "5", "--expires-in", "30d")
    if as_json:
        token = out["token"]
        assert out["max_requests"] == 5 and out["project_id"] == project_id
        assert out["expires_at"] is not None and out["request_count"] == 0
    else:
        assert "shown once" in out
        token = next(line.strip() for line in out.splitlines() if line.startswith("    sk-"))
        assert f"masked:       {mask_token(token)}" in out
    create_output = results[-1]
    masked = mask_token(token)

    out = run("token", "list", "--project", renamed)
    if as_json:
        assert [t["token"] for t in out] == [masked]
    else:
        header, row = out.splitlines()
        assert header.split()[:4] == ["TOKEN", "PROJECT", "STATUS", "REQUESTS"]
        assert row.split()[:4] == [masked, renamed, "active", "0/5"]

    out = run("token", "show", token)
    assert (out["token"] if as_json else out.split()[1]) == masked

    out = run("token", "use", token)
    if as_json:
        assert out["remaining"] == 4 and out["request_count"] == 1 and out["token"] == masked
    else:
        assert out == "ok: 1 of 5 requests used; remaining: 4\n"

    out = run("token", "reset-usage", masked)
    assert (out["request_count"] == 0) if as_json else ("requests:       0/5" in out)

    out = run("token", "revoke", token[:12])
    assert (out["is_active"] is False) if as_json else ("status:         revoked" in out)

    out = run("token", "revoke-expired")
    assert out == ({"revoked": 0} if as_json else "Revoked 0 expired tokens.\n")

    out = run("project", "deactivate", renamed, "--revoke-tokens")
    if as_json:
        assert out["project"]["is_active"] is False and out["revoked_tokens"] == 0
        assert out["project"]["deactivated_at"] is not None
    else:
        assert out == f"Deactivated project {renamed!r} ({project_id}).\nRevoked 0 tokens.\n"

    out = run("project", "activate", project_id)
    if as_json:
        assert out["is_active"] is True and out["deactivated_at"] is None
    else:
        assert "status:         active" in out

    out = run("audit", "list", "--project", renamed)
    actions = [
        "project.activate",
        "project.deactivate",
        "token.revoke",
        "token.reset_usage",
        "token.use",
        "token.create",
        "project.update",
        "project.create",
    ]
    if as_json:
        assert [e["action"] for e in out] == actions
        assert {e["outcome"] for e in out} == {"success"}
        assert {e["token_id"] for e in out if e["action"].startswith("token.")} == {masked}
        event_id = out[-1]["id"]
    else:
        assert [line.split()[1] for line in out.splitlines()[1:]] == actions
        event_id = out.splitlines()[-1].split()[-1]

    out = run("audit", "show", event_id)
    if as_json:
        assert out["action"] == "project.create" and out["metadata"] == {"name": name}
    else:
        assert "action:     project.create" in out and f'{{"name": "{name}"}}' in out

    out = run("audit", "count", "--action", "token.use", "--project", project_id)
    assert out == ({"count": 1} if as_json else "1\n")

    out = run("stats")
    if as_json:
        assert out["backend"] == "sqlite" and out["projects"] >= 1
        assert out["total_requests"] >= 0 and out["size_bytes"] > 0
    else:
        assert "tokens:" in out and "size:" in out and "bytes" in out

    out = run("health")
    assert (
        out == {"ok": True, "backend": "sqlite", "schema_version": 100, "latest": 100}
        if as_json
        else "status:  ok" in out
    )

    out = run("backends")
    if as_json:
        sqlite = next(b for b in out if b["name"] == "sqlite")
        assert sqlite["distribution"] == "llm-proxy-db-sqlite" and sqlite["error"] is None
        assert sqlite["capabilities"] == ["persistent", "multi_process", "migrations"]
        assert sqlite["async"] in ("native", "threads")
    else:
        assert out.splitlines()[0].split()[:3] == ["NAME", "DISTRIBUTION", "VERSION"]
        assert "ASYNC" in out.splitlines()[0].split()

    out = run("migrate", "status")
    if as_json:
        assert [(m["version"], m["applied"]) for m in out] == [(v, True) for v in (1, 2, 3, 100)]
    else:
        assert out.splitlines()[0].split() == ["VERSION", "NAME", "STATUS", "APPLIED", "AT"]

    out = run("migrate", "version")
    assert out == ({"version": 100, "latest": 100} if as_json else "100 (latest shipped: 100)\n")

    out = run("migrate", "down")
    assert out == (
        {"rolled_back": 100, "version": 3} if as_json else "Rolled back 100; now at version 3.\n"
    )

    out = run("migrate", "up")
    assert out == (
        {"applied": [100], "version": 100} if as_json else "Applied 100; now at version 100.\n"
    )

    out = run("token", "delete", "-", "--yes", input=token + "\n")
    assert out == (
        {"token": masked, "project_id": project_id, "deleted": True}
        if as_json
        else f"Deleted token {masked}.\n"
    )

    out = run("project", "delete", renamed, "--yes")
    if as_json:
        assert out == {"id": project_id, "name": renamed, "deleted": True, "deleted_tokens": 0}
    else:
        assert out == f"Deleted project {renamed!r} ({project_id}) and 0 tokens.\n"

    for result in results:
        text = result.out + result.err
        assert API_KEY not in text and NEW_KEY not in text, result.args
        assert "openai_api_key" not in text, result.args
        assert (token in text) == (result is create_output), result.args
