"""What an admin API may return: records as JSON-ready dicts with the secrets taken out."""

from __future__ import annotations

from typing import Any

from ._converter import converter
from ._masking import mask_token
from ._models import AuditEvent, AuditEventFilter, Project, Stats, Token

__all__ = ["public_dict"]

_RECORDS = (Project, Token, AuditEvent, AuditEventFilter, Stats)


def public_dict(record: Project | Token | AuditEvent | AuditEventFilter | Stats) -> dict[str, Any]:
    """``record`` as :data:`converter` unstructures it, minus what must not leave the server.

    A ``Project`` loses ``openai_api_key`` (the upstream key; not even masked); a
    ``Token``'s ``token`` is masked (``sk-Ab...xyz9``). Other records are unchanged (an
    audit event's ``token_id`` is masked by whoever wrote it). The result is for showing:
    ``converter`` is what round-trips records for storage.
    """
    if not isinstance(record, _RECORDS):
        raise TypeError(f"public_dict takes a record, got {type(record).__name__}")
    document: dict[str, Any] = converter.unstructure(record)
    if isinstance(record, Project):
        del document["openai_api_key"]
    elif isinstance(record, Token):
        document["token"] = mask_token(record.token)
    return document
