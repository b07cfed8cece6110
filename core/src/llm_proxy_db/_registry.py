"""Backend discovery: the pluggy hook, ``BackendSpec``, ``Capabilities`` and the registry.

A backend distribution declares an entry point in the group ``llm_proxy_db.backends`` that
names a small module of hook implementations; the driver itself is imported only when the
backend's factory runs. Backends are chosen by explicit name, never by priority.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING, Any, Final

import attrs
import pluggy

from ._errors import BackendNotFoundError, ConfigError

if TYPE_CHECKING:
    from ._config import FullConfig
    from ._protocols import AsyncBackend, Backend

__all__ = [
    "MIN_STORAGE_API_VERSION",
    "STORAGE_API_VERSION",
    "BackendInfo",
    "BackendSpec",
    "Capabilities",
    "hookimpl",
    "list_backends",
    "register_backend",
    "unregister_backend",
]

PROJECT_NAME: Final = "llm_proxy_db"
ENTRY_POINT_GROUP: Final = "llm_proxy_db.backends"
STORAGE_API_VERSION: Final = 3
"""The newest storage API this core implements: the version of the backend-author interface
(``BackendSpec``, the ``Backend`` protocol, the error classes, ``llm_proxy_db.sql``), bumped
whenever that interface changes. A backend written for a newer one is refused; one written
for an older one (down to :data:`MIN_STORAGE_API_VERSION`) gets what was added served by
the core. Version 3: ``AuditEventFilter.before_id`` (keyset paging),
``DbApiExecutor(connections)`` (``acquire``/``release``/``give_back``; a version-2
``checkout`` callable is still taken), and the store methods ``authorize`` and
``create_audit_events`` (with ``Step(many=True)``, ``DbApiExecutor.statement_many`` and
the dialect fields ``update_from_returns_joined``, ``executemany_inserts`` and
``max_parameters``)."""
MIN_STORAGE_API_VERSION: Final = 2
"""The oldest storage API this core still implements; a backend written for an older one is
refused. Backends declare the version they were written for in ``BackendSpec.api_version``."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Decorator for a plugin's ``llm_proxy_db_backends`` implementation."""

_CAPABILITY_NAMES: Final = ("persistent", "multi_process", "migrations")


@attrs.frozen(kw_only=True)
class Capabilities:
    """Optional abilities a backend declares; the conformance suite checks they hold.

    ``persistent``: data survives closing and reopening. ``multi_process``: several
    processes may share the storage safely. ``migrations``: the schema is versioned by
    goose files run through ``db.migrations``.
    """

    persistent: bool = False
    multi_process: bool = False
    migrations: bool = False

    def __contains__(self, name: object) -> bool:
        return name in _CAPABILITY_NAMES and bool(getattr(self, str(name)))

    def __iter__(self) -> Iterator[str]:
        return (name for name in _CAPABILITY_NAMES if getattr(self, name))


@attrs.frozen(kw_only=True)
class BackendSpec:
    """What a plugin's hook yields to describe one backend.

    ``factory(config)`` opens the backend; ``migrations`` is the folder of goose files of a
    SQL backend (an ``importlib.resources`` traversable), or None.
    """

    name: str
    api_version: int
    """The storage API version the backend was written for: a literal, not a constant read
    from the core; it must lie in ``MIN_STORAGE_API_VERSION..STORAGE_API_VERSION``."""
    factory: Callable[[FullConfig], Backend] = attrs.field(repr=False)
    capabilities: Capabilities = Capabilities()
    description: str = ""
    migrations: Traversable | None = attrs.field(default=None, repr=False)
    async_factory: Callable[[FullConfig], Awaitable[AsyncBackend]] | None = attrs.field(
        default=None, repr=False
    )
    """Opens the backend natively on the running event loop, for ``llm_proxy_db.aio``
    (migrations have run by then). Without one, ``AsyncDB`` runs the blocking backend
    in worker threads of its own."""

    @property
    def native_async(self) -> bool:
        """Whether the backend has its own asyncio implementation."""
        return self.async_factory is not None


@attrs.frozen(kw_only=True)
class BackendInfo:
    """One entry of ``list_backends()``: an installed backend, or one that failed to load."""

    name: str
    distribution: str | None
    version: str | None
    spec: BackendSpec | None
    error: str | None = None
    skipped: str | None = None

    @property
    def capabilities(self) -> Capabilities:
        return self.spec.capabilities if self.spec else Capabilities()

    @property
    def native_async(self) -> bool:
        """Whether ``llm_proxy_db.aio`` runs the backend natively (else in threads)."""
        return self.spec is not None and self.spec.native_async


class _Hooks:
    @hookspec
    def llm_proxy_db_backends(self) -> Iterable[BackendSpec]:  # type: ignore[empty-body]
        """Yield the ``BackendSpec`` of each backend this plugin provides."""


def _name_list(env_var: str) -> frozenset[str]:
    raw = os.environ.get(env_var, "")
    return frozenset(part.strip().lower() for part in raw.split(",") if part.strip())


def _skip_reason(name: str) -> str | None:
    disabled = _name_list("LLM_PROXY_DB_DISABLE_PLUGINS")
    allowed = _name_list("LLM_PROXY_DB_LOAD_PLUGINS")
    if name in disabled:
        return "disabled by LLM_PROXY_DB_DISABLE_PLUGINS"
    if allowed and name not in allowed:
        return "not listed in LLM_PROXY_DB_LOAD_PLUGINS"
    return None


class _Registry:
    """Loads entry points once, lazily; holds code-registered backends too."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entries: dict[str, BackendInfo] | None = None
        self._conflicts: dict[str, str] = {}
        self._manual: dict[str, BackendSpec] = {}

    def reset(self) -> None:
        """Forget what was loaded (tests; after installing a plugin at run time)."""
        with self._lock:
            self._entries = None
            self._conflicts = {}

    def register(self, spec: BackendSpec, replace: bool) -> None:
        _check_spec(spec, "register_backend()")
        with self._lock:
            if not replace and spec.name in self._manual:
                raise ConfigError(f"a backend named {spec.name!r} is already registered")
            self._manual[spec.name] = spec

    def unregister(self, name: str) -> None:
        with self._lock:
            self._manual.pop(name, None)

    def infos(self) -> list[BackendInfo]:
        with self._lock:
            entries = dict(self._load())
            manual = dict(self._manual)
        for name, spec in manual.items():
            skipped = _skip_reason(name)
            entries[name] = BackendInfo(
                name=name,
                distribution=None,
                version=None,
                spec=None if skipped else spec,
                skipped=skipped,
            )
        return sorted(entries.values(), key=lambda info: info.name)

    def get(self, name: str) -> BackendSpec:
        infos = {info.name: info for info in self.infos()}
        info = infos.get(name)
        if info is None:
            installed = sorted(n for n, i in infos.items() if i.spec is not None)
            close = difflib.get_close_matches(name, list(infos), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise BackendNotFoundError(
                f"no backend named {name!r} is installed{hint} "
                f"(installed: {', '.join(installed) or 'none'}; "
                f"install e.g. llm-proxy-db-{name})"
            )
        if name in self._conflicts and name not in self._manual:
            raise ConfigError(self._conflicts[name])
        if info.skipped:
            raise BackendNotFoundError(f"backend {name!r} is {info.skipped}")
        if info.spec is None:
            raise ConfigError(
                f"backend {name!r} from distribution {info.distribution} "
                f"failed to load: {info.error}"
            )
        return info.spec

    def _load(self) -> dict[str, BackendInfo]:
        with self._lock:
            if self._entries is None:
                self._entries = self._load_entry_points()
            return self._entries

    def _load_entry_points(self) -> dict[str, BackendInfo]:
        found: dict[str, BackendInfo] = {}
        seen: set[tuple[str, str, str]] = set()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist else None
            version = ep.dist.version if ep.dist else None
            key = (ep.name, ep.value, dist or "")
            if key in seen:  # the same distribution seen twice (lib64 -> lib symlinks)
                continue
            seen.add(key)
            name = ep.name.lower()
            if reason := _skip_reason(name):
                found.setdefault(
                    name,
                    BackendInfo(
                        name=name, distribution=dist, version=version, spec=None, skipped=reason
                    ),
                )
                continue
            for info in _load_plugin(ep, name, dist, version):
                self._add(found, info)
        return found

    def _add(self, found: dict[str, BackendInfo], info: BackendInfo) -> None:
        other = found.get(info.name)
        if other is None or other.skipped:
            found[info.name] = info
        elif other.distribution != info.distribution:
            self._conflicts[info.name] = (
                f"two distributions provide a backend named {info.name!r}: "
                f"{other.distribution} and {info.distribution}; uninstall one of them"
            )
            found[info.name] = attrs.evolve(other, spec=None, error=self._conflicts[info.name])


def _load_plugin(
    ep: importlib.metadata.EntryPoint, name: str, dist: str | None, version: str | None
) -> list[BackendInfo]:
    manager = pluggy.PluginManager(PROJECT_NAME)
    manager.add_hookspecs(_Hooks)
    try:
        module: Any = ep.load()
        manager.register(module, name=f"{dist}:{ep.name}")
        specs = [s for batch in manager.hook.llm_proxy_db_backends() for s in batch]
        for spec in specs:
            _check_spec(spec, f"distribution {dist}")
    except Exception as exc:  # a broken plugin must not take the others down
        error = f"{type(exc).__name__}: {exc}"
        return [BackendInfo(name=name, distribution=dist, version=version, spec=None, error=error)]
    infos = []
    for spec in specs:
        skipped = _skip_reason(spec.name)
        infos.append(
            BackendInfo(
                name=spec.name,
                distribution=dist,
                version=version,
                spec=None if skipped else spec,
                skipped=skipped,
            )
        )
    return infos


def _check_spec(spec: object, origin: str) -> None:
    if not isinstance(spec, BackendSpec):
        raise ConfigError(f"{origin} yielded {spec!r}, which is not a BackendSpec")
    if not spec.name or spec.name != spec.name.strip().lower():
        raise ConfigError(f"backend name {spec.name!r} ({origin}) must be non-empty lower case")
    if spec.capabilities.migrations != (spec.migrations is not None):
        raise ConfigError(
            f"backend {spec.name!r} ({origin}): the 'migrations' capability must be declared "
            "exactly when BackendSpec.migrations names the folder of goose files"
        )
    version = spec.api_version
    if not isinstance(version, int) or isinstance(version, bool):
        raise ConfigError(
            f"backend {spec.name!r} ({origin}): api_version must be an integer, got {version!r}"
        )
    if not MIN_STORAGE_API_VERSION <= version <= STORAGE_API_VERSION:
        upgrade = "the backend" if version < MIN_STORAGE_API_VERSION else "llm-proxy-db"
        raise ConfigError(
            f"backend {spec.name!r} ({origin}) is written for storage API version {version}, "
            "but this llm-proxy-db supports "
            f"{_supported_versions(MIN_STORAGE_API_VERSION, STORAGE_API_VERSION)}: "
            f"upgrade {upgrade}"
        )


def _supported_versions(low: int, high: int) -> str:
    """The storage API versions ``low`` to ``high``, in words: "version 2", "versions 2 to 3"."""
    return f"version {low}" if low == high else f"versions {low} to {high}"


_registry = _Registry()


def list_backends() -> list[BackendInfo]:
    """Every installed backend by name, with its distribution, version, capabilities,
    and the load error or the reason it was skipped, if any."""
    return _registry.infos()


def register_backend(spec: BackendSpec, *, replace: bool = False) -> None:
    """Make a backend available without packaging it (tests, applications)."""
    _registry.register(spec, replace)


def unregister_backend(name: str) -> None:
    """Remove a backend added with ``register_backend``; unknown names are ignored."""
    _registry.unregister(name)


def get_backend_spec(name: str) -> BackendSpec:
    """The spec of the installed backend ``name``; ``BackendNotFoundError`` otherwise."""
    return _registry.get(name)


def reset_registry() -> None:
    """Reload entry points on next use (after changing plugin environment variables)."""
    _registry.reset()
