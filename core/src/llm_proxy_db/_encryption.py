"""Upstream keys at rest: AES-256-GCM, in the Go llm-proxy's format and a rotating one.

Two formats, both read whenever a key is configured:

* ``enc:v1:`` + base64(12-byte nonce || ciphertext and tag): the Go llm-proxy's format
  (``aesgcm.Seal(nonce, nonce, plaintext, nil)``, standard base64 with padding), no
  associated data. Written when only ``ENCRYPTION_KEY`` is set, so the Go program reads
  what this package writes.
* ``enc:v2:<key id>:`` + base64(nonce || ciphertext and tag), the project id as associated
  data (a ciphertext moved to another row does not decrypt). Written with the first of
  ``ENCRYPTION_KEYS``; the key id (the first 8 hex digits of the key's SHA-256) names the
  key that opens it, so older keys can stay configured for reading while values are
  rotated.

A value without an ``enc:v<N>:`` prefix is plaintext and reads as itself; an empty value is
never encrypted. No key, nonce or plaintext ever appears in a message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, NoReturn

from ._errors import ConfigError, DatabaseError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from ._config import FullConfig

__all__ = [
    "EMPTY",
    "PLAINTEXT",
    "V1",
    "V2",
    "Cipher",
    "decode_key",
    "key_id",
    "value_state",
]

V1: Final = "enc:v1:"
V2: Final = "enc:v2:"
PLAINTEXT: Final = "plaintext"
EMPTY: Final = "empty"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
_VERSIONED = re.compile(r"enc:v[0-9]+:")
_KEY_ID = re.compile(r"[0-9a-f]{8}")


def key_id(key: bytes) -> str:
    """The id that names ``key`` in ``enc:v2`` values: 8 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:8]


def decode_key(text: str, name: str) -> bytes:
    """A 32-byte key from its standard base64 (as Go's ``base64.StdEncoding`` reads it).

    ``ConfigError`` naming ``name`` (the variable or field) otherwise; the value is never
    quoted.
    """
    cleaned = "".join(text.split())  # Go's decoder skips newlines; spaces are a paste slip
    failed = False
    try:
        key = base64.b64decode(cleaned.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        failed = True
    if failed:  # raised outside the except block: no decoder error (quoting it) attached
        raise ConfigError(
            f"{name} is not valid base64; generate a key with "
            "'openssl rand -base64 32' (32 random bytes, standard base64)"
        )
    if len(key) != KEY_BYTES:
        raise ConfigError(
            f"{name} decodes to {len(key)} bytes, not {KEY_BYTES}; generate a key with "
            "'openssl rand -base64 32'"
        )
    return key


def value_state(value: str) -> str:
    """What a stored upstream key is: ``plaintext``, ``empty``, ``enc:v1`` or
    ``enc:v2:<key id>`` (``enc:v<N>`` for a format this package does not know)."""
    if not value:
        return EMPTY
    if value.startswith(V2):
        ident, _, _ = value[len(V2) :].partition(":")
        return f"enc:v2:{ident}" if _KEY_ID.fullmatch(ident) else "enc:v2"
    if value.startswith(V1):
        return "enc:v1"
    if match := _VERSIONED.match(value):
        return match.group(0)[:-1]
    return PLAINTEXT


def _aesgcm(key: bytes) -> AESGCM:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


class Cipher:
    """Encrypts upstream keys with one key and decrypts with any configured one.

    ``keys`` are raw 32-byte keys, the first one encrypting; ``version`` is the format
    written (1: the Go program's ``enc:v1``, one key only; 2: ``enc:v2``).
    """

    __slots__ = ("_by_id", "_invalid_tag", "_primary", "_primary_id", "_v1_order", "version")

    def __init__(self, keys: Sequence[bytes], *, version: int) -> None:
        if not keys:
            raise ConfigError("encryption needs at least one key")
        if version not in (1, 2):
            raise ConfigError(f"unknown encryption format version {version!r}")
        if version == 1 and len(keys) != 1:
            raise ConfigError("the enc:v1 format (the Go program's) takes exactly one key")
        by_id: dict[str, AESGCM] = {}
        for position, key in enumerate(keys, 1):
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise ConfigError(f"encryption key {position} is not {KEY_BYTES} bytes")
            ident = key_id(key)
            if ident in by_id:
                raise ConfigError(f"encryption key {position} is listed twice")
            by_id[ident] = _aesgcm(key)
        from cryptography.exceptions import InvalidTag

        self._invalid_tag = InvalidTag
        self.version = version
        self._by_id = by_id
        self._primary_id = key_id(keys[0])
        self._primary = by_id[self._primary_id]
        self._v1_order = tuple(by_id.values())  # the primary first

    @classmethod
    def from_config(cls, config: FullConfig) -> Cipher | None:
        """The cipher ``config`` asks for, or None when it configures no key."""
        if config.encryption_keys:
            keys = [
                decode_key(k, f"ENCRYPTION_KEYS (key {i})")
                for i, k in enumerate(config.encryption_keys, 1)
            ]
            return cls(keys, version=2)
        if config.encryption_key:
            return cls([decode_key(config.encryption_key, "ENCRYPTION_KEY")], version=1)
        return None

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of the configured keys, the encrypting one first."""
        return tuple(self._by_id)

    @property
    def current(self) -> str:
        """The state :meth:`encrypt` writes: ``enc:v1`` or ``enc:v2:<key id>``."""
        return "enc:v1" if self.version == 1 else f"enc:v2:{self._primary_id}"

    def is_current(self, value: str) -> bool:
        """Whether ``value`` is already what :meth:`encrypt` would write (or empty)."""
        state = value_state(value)
        return state == EMPTY or state == self.current

    def encrypt(self, plaintext: str, *, project_id: str) -> str:
        """``plaintext`` in the configured format; an empty value stays empty."""
        if not plaintext:
            return plaintext
        nonce = os.urandom(NONCE_BYTES)
        data = plaintext.encode("utf-8", "surrogatepass")
        if self.version == 1:
            sealed = self._primary.encrypt(nonce, data, None)
            return V1 + base64.b64encode(nonce + sealed).decode("ascii")
        sealed = self._primary.encrypt(nonce, data, project_id.encode("utf-8", "surrogatepass"))
        return f"{V2}{self._primary_id}:" + base64.b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, value: str, *, project_id: str) -> str:
        """The plaintext of a stored value; plaintext and empty values read as themselves.

        ``DatabaseError`` naming the project (never the value) when no configured key
        opens it, it was made for another project (``enc:v2``), or it is malformed.
        """
        associated: bytes | None = None
        if value.startswith(V1):
            sealed = _unbase64(value[len(V1) :])
            candidates = self._v1_order
        elif value.startswith(V2):
            ident, _, body = value[len(V2) :].partition(":")
            found = self._by_id.get(ident)
            if found is None:
                self._refuse(value, project_id, self._unknown_key(ident))
            candidates = (found,)
            sealed = _unbase64(body)
            associated = project_id.encode("utf-8", "surrogatepass")
        elif value.startswith("enc:v") and _VERSIONED.match(value):
            self._refuse(value, project_id, "an unknown format")
        else:
            return value  # plaintext (or empty)
        if sealed is None or len(sealed) < NONCE_BYTES + TAG_BYTES:
            self._refuse(value, project_id, "the value is malformed")
        nonce, body_bytes = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
        for aead in candidates:
            try:
                data = aead.decrypt(nonce, body_bytes, associated)
            except self._invalid_tag:
                continue
            try:
                return data.decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                self._refuse(value, project_id, "it does not decrypt to UTF-8 text")
        self._refuse(
            value,
            project_id,
            "no configured key opens it"
            if associated is None
            else "it does not belong to this project or was altered",
        )

    def _unknown_key(self, ident: str) -> str:
        if not _KEY_ID.fullmatch(ident):
            return "the value is malformed"
        return (
            f"it was encrypted with key {ident}, which is not configured (configured: "
            f"{', '.join(self.key_ids)}); add it to ENCRYPTION_KEYS after the current key"
        )

    @staticmethod
    def _refuse(value: str, project_id: str, reason: str) -> NoReturn:
        state = value_state(value)
        raise DatabaseError(
            f"cannot decrypt the upstream key of project {project_id!r} ({state}): {reason}"
        )

    def __repr__(self) -> str:
        return f"<Cipher {self.current} keys={','.join(self.key_ids)}>"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a Cipher holds keys and is not pickled")


def _unbase64(text: str) -> bytes | None:
    """Standard base64 with its padding, nothing else (as Go's ``StdEncoding`` writes it)."""
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):  # ValueError: not ASCII
        return None
