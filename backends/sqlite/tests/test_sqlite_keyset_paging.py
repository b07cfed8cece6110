"""Keyset paging (``AuditEventFilter.before_id``) over rows another program wrote.

The list is ordered by the stored timestamp text; ``before_id`` compares with that stored
text in SQL, so a row written in another form (a ``T`` separator, ``Z``, no offset) pages
consistently with the list's own order, and no row is skipped or repeated.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlite_support import OpenDB, raw_rows

from llm_proxy_db import AuditEvent, AuditEventFilter
from llm_proxy_db.sql._statements import AUDIT_COLUMNS

_OTHER_FORMS = (
    ("go-T-Z", "2026-01-01T10:00:00Z"),
    ("go-T-offset", "2026-01-01T11:00:00+01:00"),
    ("plain", "2026-01-01 10:00:00"),
    ("plain-fraction", "2026-01-01 10:00:00.5"),
)


def test_rows_in_other_text_forms_page_like_the_list(open_db: OpenDB, db_path: Path) -> None:
    db = open_db()
    for index in range(2):  # ours: '2026-01-01 10:00:00+00:00' and '... 10:00:00.5+00:00'
        stamp = datetime(2026, 1, 1, 10, tzinfo=UTC) + timedelta(microseconds=500_000 * index)
        db.create_audit_event(
            AuditEvent(
                id=f"ours-{index}",
                action="token.use",
                actor="proxy",
                outcome="success",
                timestamp=stamp,
            )
        )
    placeholders = ", ".join("?" for _ in AUDIT_COLUMNS.split(","))
    conn = sqlite3.connect(db_path)
    with conn:
        conn.executemany(
            f"INSERT INTO audit_events ({AUDIT_COLUMNS}) VALUES ({placeholders})",
            [
                ("token.use", "go", "success", event_id, stamp, *([None] * 10))
                for event_id, stamp in _OTHER_FORMS
            ],
        )
    conn.close()
    stored_order = [
        row[0]
        for row in raw_rows(db_path, "SELECT id FROM audit_events ORDER BY timestamp DESC, id DESC")
    ]
    listed = db.list_audit_events()
    assert [e.id for e in listed] == stored_order
    for size in (1, 2, 4):
        pages: list[AuditEvent] = []
        page = db.list_audit_events(AuditEventFilter(limit=size))
        while page:
            pages.extend(page)
            page = db.list_audit_events(AuditEventFilter(limit=size, before_id=page[-1].id))
        assert pages == listed, f"keyset pages of {size}"
    for index, anchor in enumerate(listed):
        flt = AuditEventFilter(before_id=anchor.id)
        assert db.list_audit_events(flt) == listed[index + 1 :], anchor.id
        assert db.count_audit_events(flt) == len(listed) - index - 1, anchor.id
