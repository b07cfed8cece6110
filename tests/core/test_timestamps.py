"""The SQL timestamp codecs: the fast text encoder writes what the reference layout says."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

from llm_proxy_db.sql import decode_text_timestamp, encode_text_timestamp


def reference_encoding(value: datetime) -> str:
    """The Go driver's layout, written out field by field (the encoder before isoformat)."""
    value = value.astimezone(UTC)
    text = (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d} "
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    )
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "+00:00"


def test_the_encoder_is_byte_identical_to_the_reference_on_100_000_values() -> None:
    rng = random.Random(11)
    zones = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-9, minutes=-30))]
    start = datetime(1000, 1, 2, tzinfo=UTC)
    span = int((datetime(9999, 12, 30, tzinfo=UTC) - start).total_seconds())
    for i in range(100_000):
        value = start + timedelta(seconds=rng.randrange(span))
        kind = i % 4  # whole seconds, millis, micros with trailing zeros, any micros
        micros = (0, rng.randrange(1000) * 1000, rng.randrange(100) * 10, rng.randrange(10**6))
        value = value.replace(microsecond=micros[kind]).astimezone(zones[i % 3])
        text = encode_text_timestamp(value)
        assert text == reference_encoding(value), value
        assert decode_text_timestamp(text) == value
