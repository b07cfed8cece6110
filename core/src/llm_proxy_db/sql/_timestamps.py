"""Timestamp codecs for SQL columns.

SQLite keeps timestamps as TEXT in the Go driver's layout,
``YYYY-MM-DD HH:MM:SS[.ffffff]+00:00``: always UTC, the fraction trimmed of trailing zeros
(none when zero), so text order is time order. Reading accepts every form the Go driver
or SQLite writes (any offset, up to 9 fraction digits, ``T`` or space, ``Z``, no offset =
UTC). PostgreSQL ``TIMESTAMP`` columns hold naive UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["decode_naive_utc", "decode_text_timestamp", "encode_naive_utc", "encode_text_timestamp"]

_UTC = UTC


def encode_text_timestamp(value: datetime) -> str:
    """``value`` (aware) as UTC text in the Go driver's layout."""
    if value.tzinfo is not _UTC:
        value = value.astimezone(_UTC)
    if value.microsecond:  # isoformat writes six digits: trim the trailing zeros
        return value.isoformat(" ")[:-6].rstrip("0") + "+00:00"
    return value.isoformat(" ")


def decode_text_timestamp(text: str) -> datetime:
    """Parse a stored timestamp into an aware UTC datetime (microsecond precision)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = _parse_go_string(text)
    if value.tzinfo is None:
        return value.replace(tzinfo=_UTC)
    if value.utcoffset():
        return value.astimezone(_UTC)
    return value if value.tzinfo is _UTC else value.replace(tzinfo=_UTC)


def _parse_go_string(text: str) -> datetime:
    # Go's time.Time.String(): "2006-01-02 15:04:05.999999999 -0700 MST"
    parts = text.strip().split(" ")
    if len(parts) >= 3 and parts[2][:1] in "+-":
        date_time = f"{parts[0]} {parts[1]}"
        offset = parts[2]
        if "." in date_time:
            head, frac = date_time.split(".", 1)
            date_time = f"{head}.{frac[:6]}"
        return datetime.fromisoformat(f"{date_time}{offset[:3]}:{offset[3:5]}")
    raise ValueError(f"unrecognised timestamp {text!r}")


def encode_naive_utc(value: datetime) -> datetime:
    """``value`` (aware) as the naive UTC datetime a ``TIMESTAMP`` column holds."""
    return value.astimezone(_UTC).replace(tzinfo=None)


def decode_naive_utc(value: datetime) -> datetime:
    """A naive UTC datetime from a ``TIMESTAMP`` column, made aware."""
    if value.tzinfo is None:
        return value.replace(tzinfo=_UTC)
    return value.astimezone(_UTC)
