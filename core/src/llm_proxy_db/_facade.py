"""The bookkeeping ``DB`` and ``AsyncDB`` share: config and spec, the closed stand-ins, the
open audit writers, a transaction block's marking; each adds its blocking or awaiting calls."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NoReturn, TypeVar

from . import _transaction_rule
from ._config import FullConfig
from ._errors import DatabaseError
from ._registry import BackendSpec, Capabilities

__all__ = ["CHECKED_CALL", "Closed", "Ended", "FacadeState"]

CHECKED_CALL = "self._stores.{name}({args})"
"""The facades' call template (:func:`._delegation.forwarding`)."""

Writer = TypeVar("Writer")
_writers_lock = threading.Lock()


class Closed:
    """Stands in for the backend after ``close()``: every use raises ``DatabaseError``."""

    message = "the database is closed"

    def __getattr__(self, name: str) -> NoReturn:
        raise DatabaseError(self.message)


class Ended(Closed):
    """Stands in for a transaction's stores once its block has ended."""

    def __init__(self, facade: str) -> None:
        self.message = f"the transaction has ended; use the {facade}, or start a new transaction"


class FacadeState(Generic[Writer]):
    """What a facade keeps besides its stores; the facade class lists the slots."""

    if not TYPE_CHECKING:  # none here; mypy would take this empty tuple for the full list
        __slots__ = ()

    _kind: ClassVar[str]  # the facade's name in its repr and messages
    _blocking: ClassVar[bool]  # whether its transaction blocks also hold the thread
    _stores: Any
    _backend: Any
    _audit_writers: dict[Writer, None]  # open ones, in creation order
    config: FullConfig
    """The configuration this database was opened with."""
    backend_spec: BackendSpec
    """The spec of the backend behind this database."""

    def _opened(self, backend: object, config: FullConfig, backend_spec: BackendSpec) -> None:
        self._backend = backend
        self._audit_writers = {}
        self.config = config
        self.backend_spec = backend_spec

    @property
    def capabilities(self) -> Capabilities:
        """The optional abilities the backend declares."""
        return self.backend_spec.capabilities

    def _is_closed(self) -> bool:
        return isinstance(self._backend, Closed)

    def _refuse_closed(self) -> None:
        if self._is_closed():
            raise DatabaseError("the database is closed")

    def _track_writer(self, writer: Writer) -> Writer:
        with _writers_lock:
            self._audit_writers[writer] = None
        return writer

    def _forget_writer(self, writer: Writer) -> None:
        with _writers_lock:
            self._audit_writers.pop(writer, None)

    def _open_writers(self) -> list[Writer]:
        with _writers_lock:
            return list(self._audit_writers)

    def _stand_in_closed(self) -> Any:
        """Put the closed stand-in in place of the backend; the backend if it was open,
        else None."""
        backend, self._backend = self._backend, Closed()
        self._stores = self._backend
        return None if isinstance(backend, Closed) else backend

    @contextmanager
    def _block(self, facade: Any) -> Iterator[None]:
        """A transaction block of this facade yielding ``facade``, under the transaction
        rule; ``facade`` refuses every call once the block ends."""
        block = _transaction_rule.enter(self, blocking=self._blocking)
        try:
            yield
        finally:
            facade._stores = Ended(self._kind)
            _transaction_rule.leave(block)

    def __repr__(self) -> str:
        state = "closed" if self._is_closed() else "open"
        return f"<{self._kind} {self.backend_spec.name} {state}>"
