"""The layer that keeps upstream keys encrypted at rest, for every backend.

When a key is configured, :func:`~llm_proxy_db.new_from_full_config` puts an
:class:`EncryptingBackend` between the ``DB`` facade and the backend: a project's
``openai_api_key`` is encrypted on its way into ``create_project`` and ``update_project``
and decrypted in every project the store returns (``authorize``'s included), inside
transactions too. Every other
method (tokens, audit, stats: the hot path) is passed through unchanged by generated
forwarding (:mod:`._delegation`). Without a key nothing is installed and nothing is paid.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import attrs

from ._delegation import AsyncForwardedStores, ForwardedStores, forwarding
from ._encryption import Cipher
from ._layers import BackendLayer
from ._models import Authorization, Project, trusted_project
from ._protocols import AsyncStores, Stores

if TYPE_CHECKING:
    from ._db import DB
    from ._protocols import AsyncBackend, Backend

__all__ = [
    "AsyncEncryptingBackend",
    "AsyncEncryptingStores",
    "EncryptingBackend",
    "EncryptingStores",
    "unwrapped",
]

_PROJECT_FIELDS: Final = tuple(field.name for field in attrs.fields(Project))


def _with_key(project: Project, key: str) -> Project:
    """``project`` with another ``openai_api_key``; the record was validated already (a
    ciphertext is longer than the key it hides, so it is not validated again)."""
    values = {name: getattr(project, name) for name in _PROJECT_FIELDS}
    values["openai_api_key"] = key
    return trusted_project(**values)


@forwarding("self._inner.{name}({args})", protocol=Stores)
class _PassThrough(ForwardedStores):
    """Every store method handed on unchanged; :class:`EncryptingStores` overrides the
    project methods."""

    __slots__ = ("_cipher", "_inner")

    def __init__(self, inner: Stores, cipher: Cipher) -> None:
        self._inner = inner
        self._cipher = cipher


class _Keys:
    """Sealing and opening a project's key with ``self._cipher``."""

    __slots__ = ()

    _cipher: Cipher

    def _sealed(self, project: Project) -> Project:
        key = self._cipher.encrypt(project.openai_api_key, project_id=project.id)
        return _with_key(project, key)

    def _opened(self, project: Project) -> Project:
        key = self._cipher.decrypt(project.openai_api_key, project_id=project.id)
        return project if key is project.openai_api_key else _with_key(project, key)

    def _opened_in(self, authorization: Authorization) -> Authorization:
        project = self._opened(authorization.project)
        if project is authorization.project:
            return authorization
        return Authorization(token=authorization.token, project=project)


class EncryptingStores(_Keys, _PassThrough):
    """Stores whose projects' upstream keys are encrypted in ``inner`` and plain here."""

    __slots__ = ()

    def create_project(self, project: Project) -> Project:
        return self._opened(self._inner.create_project(self._sealed(project)))

    def get_project_by_id(self, project_id: str) -> Project:
        return self._opened(self._inner.get_project_by_id(project_id))

    def update_project(self, project: Project) -> Project:
        return self._opened(self._inner.update_project(self._sealed(project)))

    def list_projects(self) -> list[Project]:
        return [self._opened(project) for project in self._inner.list_projects()]

    def authorize(self, token: str) -> Authorization:
        return self._opened_in(self._inner.authorize(token))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._cipher!r} over {self._inner!r}>"


class EncryptingBackend(BackendLayer, EncryptingStores):
    """A backend wrapped by :class:`EncryptingStores`, its transactions' stores included.

    Anything else the backend offers (``migration_connection``, a test double's extras) is
    reached through this object unchanged.
    """

    __slots__ = ()

    _own = ("_inner", "_cipher")

    def __init__(self, inner: Backend, cipher: Cipher) -> None:
        super().__init__(inner, cipher)

    @property
    def cipher(self) -> Cipher:
        """The keys this layer encrypts and decrypts with."""
        return self._cipher

    def layered(self, stores: Stores) -> Stores:
        return EncryptingStores(stores, self._cipher)


def unwrapped(db: DB) -> Backend:
    """The backend behind ``db`` as it stores values (encrypted ones as stored)."""
    backend: Any = db._backend
    return backend.inner if isinstance(backend, EncryptingBackend) else backend


@forwarding("self._inner.{name}({args})", protocol=Stores, awaiting=True)
class _AsyncPassThrough(AsyncForwardedStores):
    __slots__ = ("_cipher", "_inner")

    def __init__(self, inner: AsyncStores, cipher: Cipher) -> None:
        self._inner = inner
        self._cipher = cipher


class AsyncEncryptingStores(_Keys, _AsyncPassThrough):
    """The awaiting twin of :class:`EncryptingStores`."""

    __slots__ = ()

    async def create_project(self, project: Project) -> Project:
        return self._opened(await self._inner.create_project(self._sealed(project)))

    async def get_project_by_id(self, project_id: str) -> Project:
        return self._opened(await self._inner.get_project_by_id(project_id))

    async def update_project(self, project: Project) -> Project:
        return self._opened(await self._inner.update_project(self._sealed(project)))

    async def list_projects(self) -> list[Project]:
        return [self._opened(project) for project in await self._inner.list_projects()]

    async def authorize(self, token: str) -> Authorization:
        return self._opened_in(await self._inner.authorize(token))


class AsyncEncryptingBackend(AsyncEncryptingStores):
    """A native async backend wrapped by :class:`AsyncEncryptingStores`, its
    transactions' stores included."""

    __slots__ = ()

    _inner: AsyncBackend

    def __init__(self, inner: AsyncBackend, cipher: Cipher) -> None:
        super().__init__(inner, cipher)

    @property
    def inner(self) -> AsyncBackend:
        """The backend this layer wraps."""
        return self._inner

    async def close(self) -> None:
        await self._inner.close()

    async def health_check(self) -> None:
        await self._inner.health_check()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncStores]:
        async with self._inner.transaction() as stores:
            yield AsyncEncryptingStores(stores, self._cipher)

    def __getattr__(self, name: str) -> Any:  # check_integrity, a backend's extras
        if name.startswith("__") or name in ("_inner", "_cipher"):
            raise AttributeError(name)
        return getattr(self._inner, name)
