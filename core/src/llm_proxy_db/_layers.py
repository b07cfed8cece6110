"""A backend seen through a stores layer: what the encryption and compatibility layers share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from ._protocols import Stores

if TYPE_CHECKING:
    from ._protocols import Backend

__all__ = ["BackendLayer"]


class BackendLayer:
    """Mixed in before a stores layer over ``self._inner`` (a backend): the layer's stores
    for the backend's transactions too (:meth:`layered`), and anything else the backend
    offers (``migration_connection``, a test double's extras) reached unchanged."""

    __slots__ = ()

    _inner: Any  # the backend (Stores in the stores layer this is mixed with)
    _own: ClassVar[tuple[str, ...]] = ("_inner",)
    """The layer's own attributes: never looked up on the backend."""

    def layered(self, stores: Stores) -> Stores:
        """``stores`` (a transaction's) seen through this layer."""
        raise NotImplementedError

    @property
    def inner(self) -> Backend:
        """The backend this layer wraps."""
        backend: Backend = self._inner
        return backend

    def close(self) -> None:
        self._inner.close()

    def health_check(self, *args: Any, **kwargs: Any) -> None:
        # Any options a backend's check takes (a deep check, say) pass through unchanged.
        self._inner.health_check(*args, **kwargs)

    @contextmanager
    def transaction(self) -> Iterator[Stores]:
        with self._inner.transaction() as stores:
            yield self.layered(stores)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in self._own:
            raise AttributeError(name)
        return getattr(self._inner, name)
