"""What every command shares: the global options, the lazily opened database, the actor."""

from __future__ import annotations

import getpass
from typing import Any

import attrs
import click

from .. import DB, FullConfig, config_from_env, new_from_full_config

__all__ = ["State", "pass_state"]


def _os_user() -> str:
    try:
        return getpass.getuser() or "unknown"
    except Exception:  # no USER/LOGNAME and no passwd entry (some containers)
        return "unknown"


class State:
    """The global options, and the database opened on first use (never for ``backends``)."""

    def __init__(self) -> None:
        self.driver: str | None = None
        self.database_path: str | None = None
        self.database_url: str | None = None
        self.json = False
        self.debug = False
        self.actor = f"cli:{_os_user()}"
        self._db: DB | None = None

    def config(self, *, auto_migrate: bool = True) -> FullConfig:
        """The environment's configuration (``config_from_env``) with the options on top."""
        overrides: dict[str, Any] = {"auto_migrate": auto_migrate}
        if self.driver is not None:
            overrides["driver"] = self.driver
        if self.database_path is not None:
            overrides["path"] = self.database_path
        if self.database_url is not None:
            overrides["database_url"] = self.database_url
        return attrs.evolve(config_from_env(), **overrides)

    def db(self, *, auto_migrate: bool = True) -> DB:
        """The open database; the first call opens it (migrating unless told not to)."""
        if self._db is None:
            self._db = new_from_full_config(self.config(auto_migrate=auto_migrate))
        return self._db

    def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.close()


pass_state = click.make_pass_decorator(State)
"""Hand a command the ``State`` that ``run`` put in the root context."""
