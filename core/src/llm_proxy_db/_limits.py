"""The limits of every field, declared once, and the checks that enforce them.

Chosen so that every backend stores every value a record may hold, the Go llm-proxy's MySQL
schema included (utf8mb4, lengths in characters): ids are ``VARCHAR(191)``, names, actions
and actors ``VARCHAR(255)``, ``method`` ``VARCHAR(10)``, ``client_ip`` ``VARCHAR(45)``, the
other texts ``TEXT`` (65,535 bytes: 16,383 characters of up to 4 bytes each), times
``DATETIME`` (years 1000 to 9999), counters ``INTEGER`` (signed 32 bits). No text holds NUL
(PostgreSQL cannot store it) or a lone surrogate (UTF-8 cannot encode it), so every backend
answers alike. A value outside is a ``ValueError`` naming the field and the limit, never
quoting a secret (for ``token`` and ``openai_api_key`` only the length is given).

The models call these checks when a record or a filter is built; rows read back from a
database skip them (the trusted builders), so a row another program stored beyond a limit
still reads back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from ._errors import DatabaseError, TokenNotFoundError
from ._masking import mask_token

__all__ = [
    "MAX_COUNT",
    "MAX_ID",
    "MAX_KEY",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_NAME",
    "MAX_PAGE",
    "MAX_SEARCH",
    "MAX_TEXT",
    "MAX_YEAR",
    "MIN_YEAR",
    "TEXT_LIMITS",
    "check_count",
    "check_key",
    "check_metadata",
    "check_metadata_size",
    "check_text",
    "check_time",
    "check_token_format",
    "counter_overflow",
    "counter_overflow_for",
    "int_text",
    "lookup_token",
]

MAX_ID: Final = 191
"""Ids (project, token's project, audit event, request, correlation, token id) and token
values: MySQL's ``VARCHAR(191)``, the longest utf8mb4 column an index takes."""
MAX_NAME: Final = 255
"""Project names, audit actions and actors: ``VARCHAR(255)``."""
MAX_TEXT: Final = 16_383
"""``TEXT`` columns (path, user agent, reason): 65,535 bytes at 4 bytes per character."""
MAX_KEY: Final = 8_192
"""``openai_api_key``: ``TEXT``, with room left for an encrypted form (base64, a prefix)."""
MAX_SEARCH: Final = 1_024
"""``AuditEventFilter.search``: its LIKE pattern stays far below SQLite's 50,000 bytes."""
MAX_METADATA_BYTES: Final = 65_535
"""An audit event's metadata as stored: its JSON text, in UTF-8 bytes (MySQL ``TEXT``)."""
MAX_METADATA_DEPTH: Final = 32
"""How deeply metadata may nest dicts and lists (the top-level dict is depth 1)."""
MAX_COUNT: Final = 2**31 - 1
"""Counters and limits (``request_count``, ``max_requests``, ``cache_hit_count``, an
increment's ``delta``): the Go schema's ``INTEGER`` columns, signed 32 bits."""
MAX_PAGE: Final = 2**63 - 1
"""``AuditEventFilter.limit`` and ``offset``: a signed 64-bit SQL integer."""
MIN_YEAR: Final = 1000
MAX_YEAR: Final = 9999
"""Datetimes, after normalising to UTC: MySQL's ``DATETIME`` range."""

TEXT_LIMITS: Final[dict[str, int]] = {
    "id": MAX_ID,
    "project_id": MAX_ID,
    "token": MAX_ID,
    "request_id": MAX_ID,
    "correlation_id": MAX_ID,
    "token_id": MAX_ID,
    "name": MAX_NAME,
    "action": MAX_NAME,
    "actor": MAX_NAME,
    "method": 10,
    "client_ip": 45,
    "path": MAX_TEXT,
    "user_agent": MAX_TEXT,
    "reason": MAX_TEXT,
    "openai_api_key": MAX_KEY,
    "search": MAX_SEARCH,
    "before_id": MAX_ID,
}
"""The longest value of each text field, in characters (filters share their field's)."""

_SECRETS: Final = frozenset({"token", "openai_api_key"})
_SURROGATES: Final = range(0xD800, 0xE000)


def check_text(name: str, value: str) -> None:
    """Raise ``ValueError`` if ``value`` (of the text field ``name``) is too long or holds
    a NUL or a lone surrogate. ``value`` is a ``str``."""
    limit = TEXT_LIMITS[name]
    if len(value) > limit:
        shown = "" if name in _SECRETS else f" ({_preview(value)})"
        raise ValueError(
            f"{name} is {len(value)} characters long{shown}: at most {limit} are allowed"
        )
    if value.isascii():
        if "\x00" in value:
            raise ValueError(f"{name} must not contain a NUL character")
        return
    _check_unicode(name, value)


def _check_unicode(name: str, value: str) -> None:
    if "\x00" in value:
        raise ValueError(f"{name} must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"{name} must not contain a lone surrogate (it has no UTF-8 encoding)"
        ) from None


def _preview(value: str) -> str:
    return ascii(value[:20])[1:-1] + "..."


def check_token_format(value: str) -> None:
    """Raise ``ValueError`` unless ``value`` can be a token: 1 to 191 printable ASCII
    characters, no space (what ``generate_token()`` and the Go program make)."""
    if not (
        0 < len(value) <= MAX_ID and value.isascii() and value.isprintable() and " " not in value
    ):
        if not value.strip():
            raise ValueError("token must not be empty")
        raise ValueError(
            f"token must be 1 to {MAX_ID} printable ASCII characters without spaces "
            f"(got {len(value)} characters)"
        )


def lookup_token(value: str) -> None:
    """What the facade calls for every ``token`` a store method receives: a value that
    cannot be a stored token (too long, spaces, characters outside printable ASCII) is
    ``TokenNotFoundError`` at once, with nothing queried. The one place every token lookup
    goes through (a hashed-token lookup would change it here)."""
    if 0 < len(value) <= MAX_ID and value.isascii() and value.isprintable() and " " not in value:
        return
    raise _not_found(value)


def _not_found(value: str) -> TokenNotFoundError:
    if value.isascii() and value.isprintable():
        return TokenNotFoundError.for_token(value)
    # Control characters or non-ASCII: the masked form is shown escaped.
    if len(value) < 16:
        masked = ascii(value[:3])[1:-1] + "..."
    else:
        masked = f"{ascii(value[:5])[1:-1]}...{ascii(value[-4:])[1:-1]}"
    return TokenNotFoundError(f"no token {masked}", key=masked)


def check_key(name: str, value: str) -> None:
    """Raise ``ValueError`` if the id ``value`` holds a NUL or a lone surrogate (no backend
    stores one); its length is not checked (another program may have stored a longer id)."""
    if value.isascii():
        if "\x00" in value:
            raise ValueError(f"{name} must not contain a NUL character")
        return
    _check_unicode(name, value)


def check_count(name: str, value: int, minimum: int, maximum: int = MAX_COUNT) -> None:
    """Raise ``ValueError`` unless ``minimum <= value <= maximum``."""
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {int_text(value)}")


def int_text(value: int) -> str:
    """``value`` for a message: its digits, or its size when it has very many."""
    return str(value) if value.bit_length() < 200 else f"an integer of {value.bit_length()} bits"


def check_time(name: str, value: datetime) -> datetime:
    """``value`` (aware) normalised to UTC, or ``ValueError`` outside years 1000 to 9999."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not MIN_YEAR <= utc.year <= MAX_YEAR:
        raise ValueError(
            f"{name} {value.isoformat()} is out of range: years {MIN_YEAR} to {MAX_YEAR} "
            "(in UTC) are allowed"
        )
    return utc


def check_metadata(name: str, value: dict[str, Any]) -> None:
    """Raise ``ValueError`` if ``value`` nests deeper than :data:`MAX_METADATA_DEPTH` or
    a string in it (key or value) holds a NUL or a lone surrogate. Iterative, so a deeply
    nested (or cyclic) value never meets Python's recursion limit."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = list(item.values())
            for key in item:
                if isinstance(key, str):
                    _check_metadata_string(name, key)
        elif isinstance(item, list | tuple):
            children = item
        else:
            if isinstance(item, str):
                _check_metadata_string(name, item)
            continue
        if depth > MAX_METADATA_DEPTH:
            raise ValueError(
                f"{name} nests more than {MAX_METADATA_DEPTH} levels of dicts and lists"
            )
        stack.extend((child, depth + 1) for child in children)


def _check_metadata_string(name: str, text: str) -> None:
    if text.isascii():
        if "\x00" in text:
            raise ValueError(f"{name} must not contain a NUL character in any string")
        return
    if "\x00" in text or any(ord(c) in _SURROGATES for c in text):
        raise ValueError(f"{name} must not contain a NUL character or a lone surrogate")


def check_metadata_size(name: str, text: str) -> None:
    """Raise ``ValueError`` if the stored JSON text is over :data:`MAX_METADATA_BYTES`."""
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise ValueError(
            f"{name} is {size} bytes as JSON: at most {MAX_METADATA_BYTES} are allowed"
        )


def counter_overflow(masked_token: str, counter: str) -> DatabaseError:
    """The error of an increment that would take ``counter`` past :data:`MAX_COUNT`."""
    return DatabaseError(
        f"token {masked_token}: {counter} would pass its maximum {MAX_COUNT}; nothing was counted"
    )


def counter_overflow_for(token: str, counter: str) -> DatabaseError:
    """:func:`counter_overflow` for a token value (masked here)."""
    return counter_overflow(mask_token(token), counter)
