"""The sqlite3 connections and their pool: the core's :class:`~llm_proxy_db.sql.DbApiPool`
(bounded, max idle, lifetime, fork-safe) with sqlite3's error class and rollback."""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable

from llm_proxy_db.sql import DbApiPool

__all__ = ["Connection", "ConnectionPool"]

_log = logging.getLogger(__name__)

_INHERITED: list[Connection] = []
"""Connections of the parent the async backend forgets in a forked child: kept referenced,
so that the garbage collector never closes them there."""


class Connection(sqlite3.Connection):
    """A sqlite3 connection that knows the deadline of its running statement."""

    deadline: float = math.inf
    """When the running statement passes ``statement_timeout`` (``inf``: no statement
    running under one)."""

    def past_deadline(self) -> bool:
        """The progress handler: a true value makes SQLite interrupt the statement."""
        return time.monotonic() > self.deadline


def _rolled_back(conn: Connection) -> bool:
    if conn.in_transaction:
        conn.rollback()
    return True


class ConnectionPool(DbApiPool[Connection]):
    """Hands out at most ``max_open`` sqlite3 connections, keeps at most ``max_idle`` idle
    ones (newest first), and retires connections older than ``max_lifetime`` seconds.

    ``shared``: ``connect()`` returns one connection (``:memory:``): it is kept across a
    fork (the child has its own copy of that database, and no file is shared).
    """

    def __init__(
        self,
        connect: Callable[[], Connection],
        *,
        max_open: int,
        max_idle: int,
        max_lifetime: float,
        timeout: float,
        shared: bool = False,
    ) -> None:
        super().__init__(
            connect,
            max_open=max_open,
            max_idle=max_idle,
            max_lifetime=max_lifetime,
            timeout=timeout,
            driver_error=sqlite3.Error,
            reset=_rolled_back,
            name="SQLite",
            shared=shared,
            log=_log,
        )
