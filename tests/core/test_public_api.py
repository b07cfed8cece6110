"""The public surface: ``__all__`` is complete and sorted, models behave as documented, and
the README's Python tour runs as written."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest

import llm_proxy_db
import llm_proxy_db.sql
import llm_proxy_db.testing
from llm_proxy_db import AuditEvent, Project, Token, converter, generate_token, mask_token

README = Path(__file__).resolve().parents[2] / "README.md"


def _isort_style(name: str) -> tuple[int, str]:
    # ruff's RUF022 order: CONSTANTS, then Classes, then everything else.
    group = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return group, name


@pytest.mark.parametrize("module", [llm_proxy_db, llm_proxy_db.sql, llm_proxy_db.testing])
def test_all_is_sorted_and_complete(module: object) -> None:
    names = module.__all__  # type: ignore[attr-defined]
    assert names == sorted(names, key=_isort_style)
    public = {n for n in vars(module) if not n.startswith("_") and n != "annotations"}
    public -= {name for name, value in vars(module).items() if type(value).__name__ == "module"}
    assert public <= set(names) | {"TYPE_CHECKING"}
    for name in names:
        assert hasattr(module, name), name


def test_version_comes_from_the_distribution() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", llm_proxy_db.__version__)


def test_generated_tokens_are_long_random_secrets() -> None:
    tokens = {generate_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(t.startswith("sk-") and len(t) >= 3 + 22 for t in tokens)  # >= 128 bits


def test_masks_hide_secrets() -> None:
    token = "sk-AbCdEfGhIjKlMnOpQrStUvWxyz9"
    assert mask_token(token) == "sk-Ab...xyz9"
    assert mask_token("short") == "sho..."
    project = Project(name="p", openai_api_key="sk-upstream-secret")
    assert "sk-upstream-secret" not in repr(project)
    assert token not in repr(Token(project_id="p", token=token))


def test_models_are_frozen_and_keyword_only() -> None:
    project = Project(name="p", openai_api_key="k")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        project.name = "q"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Project("p", "k")  # type: ignore[call-arg]
    renamed = attrs.evolve(project, name="q")
    assert renamed.name == "q" and renamed.id == project.id
    with pytest.raises(ValueError, match="name"):
        attrs.evolve(project, name=" ")


def test_converter_round_trips_records_as_json_ready_dicts() -> None:
    event = AuditEvent(
        action="a",
        actor="b",
        outcome="failure",
        timestamp=datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
        metadata={"k": [1, 2]},
    )
    data = converter.unstructure(event)
    assert data["timestamp"] == "2024-05-01T12:00:00+00:00"
    assert converter.structure(data, AuditEvent) == event
    token = Token(project_id="p", expires_at=datetime(2030, 1, 1, tzinfo=UTC))
    assert converter.structure(converter.unstructure(token), Token) == token
    with pytest.raises(Exception, match="naive"):
        converter.structure(
            {**converter.unstructure(token), "created_at": "2024-01-01T00:00:00"}, Token
        )
    with pytest.raises(Exception, match="surprise"):
        converter.structure({**converter.unstructure(token), "surprise": 1}, Token)


def test_readme_tour_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("llm_proxy_db_sqlite")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has no Python tour"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    for number, block in enumerate(blocks):  # in order, sharing one namespace
        exec(compile(block, f"README python block {number}", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "data" / "llm-proxy.db").is_file()
    # The error-mapping example answers as a proxy should.
    from llm_proxy_db import Config, Project, Token, new

    http_status = namespace["http_status"]
    with new(Config(path=str(tmp_path / "statuses.db"))) as db:
        project = db.create_project(Project(name="p", openai_api_key="sk-upstream"))
        token = db.create_token(Token(project_id=project.id, max_requests=1))
        assert [http_status(db, token.token) for _ in range(2)] == [200, 429]
        assert http_status(db, "sk-unknown") == 401
        db.revoke_token(token.token)
        assert http_status(db, token.token) == 401
        other = db.create_token(Token(project_id=project.id))
        db.update_project(attrs.evolve(project, is_active=False))
        assert http_status(db, other.token) == 403


GUIDE = README.parent / "docs" / "writing-a-backend.md"


@pytest.mark.parametrize(
    ("module", "documents"),
    [
        (llm_proxy_db, (README,)),
        (llm_proxy_db.sql, (GUIDE,)),
        (llm_proxy_db.testing, (README,)),
        (llm_proxy_db.testing, (GUIDE,)),
    ],
)
def test_every_public_name_is_documented(module: object, documents: tuple[Path, ...]) -> None:
    text = "\n".join(document.read_text() for document in documents)
    missing = [
        name
        for name in module.__all__  # type: ignore[attr-defined]
        if name != "__version__" and not re.search(rf"\b{re.escape(name)}\b", text)
    ]
    assert not missing, f"not mentioned in {', '.join(d.name for d in documents)}: {missing}"
