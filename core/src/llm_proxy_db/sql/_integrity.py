"""``IntegrityViolation`` and ``Translate``: how a backend reports a driver's exception."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeAlias

from .._errors import DatabaseError

__all__ = ["IntegrityViolation", "Translate", "ViolationKind"]

ViolationKind: TypeAlias = Literal["unique", "foreign_key", "other"]


class IntegrityViolation(DatabaseError):
    """A constraint the database refused, as a backend's ``translate`` reports it.

    The store logic turns it into the store's error (``ProjectExistsError``,
    ``ProjectNotFoundError`` ...) by ``kind``; one it has no meaning for is raised as is.
    The message must not quote the driver's detail (it may contain a key value: a token).
    """

    def __init__(
        self,
        message: str = "",
        *,
        kind: ViolationKind | None = None,
        constraint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: ViolationKind | None = kind
        """``"unique"``, ``"foreign_key"`` or ``"other"`` (None: not known, as ``"other"``)."""
        self.constraint = constraint
        """The constraint or column the driver names (``projects_name_key``,
        ``projects.name``), never a value; lets the store tell a taken id from a taken
        name. None when the driver does not say."""


Translate: TypeAlias = Callable[[Exception], DatabaseError]
"""Maps a driver exception onto the error tree: ``IntegrityViolation`` for constraints,
``TransientError`` for what a retry may cure, ``DatabaseError`` otherwise. Only the
primary message may be kept: never a detail that quotes values."""
