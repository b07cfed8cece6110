"""The transaction rule: no call on a facade from inside its own ``transaction()`` block.

Inside its own block, a call on the ``DB`` itself would wait for the block's locks (a hang
on PostgreSQL, a lock timeout on SQLite) or silently join the block (memory). So such a
call raises ``DatabaseError`` at once and changes nothing. "Inside" is:

* the *context* of the code that opened the block (a ``ContextVar``): the block's own
  code, asyncio tasks it starts, work it hands to ``asyncio.to_thread`` or runs in a copy
  of its context;
* for a blocking facade, also the *thread* that holds the block: any code on it (an asyncio
  task started before the block included) would block the very thread the block needs.

Other threads are not affected. A block is a marker with an ``open`` flag, so the rule
never depends on entering and leaving in the same context (``ContextVar.reset`` would),
and a context that outlives the block (a task started inside it) is free again at once.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from typing import Final

from ._errors import DatabaseError

__all__ = ["Block", "enter", "leave", "open_blocks", "refuse", "thread_blocks"]


class Block:
    """One open ``transaction()`` block of one facade."""

    __slots__ = ("facade", "open", "thread")

    def __init__(self, facade: object, thread: int) -> None:
        self.facade = facade
        self.thread = thread
        self.open = True


open_blocks: ContextVar[tuple[Block, ...]] = ContextVar("llm_proxy_db_open_blocks", default=())
"""The blocks open in this context (closed ones are dropped when the next one opens)."""

thread_blocks: dict[int, list[Block]] = {}
"""Thread ident -> the blocking facades' blocks open on that thread (empty: none anywhere,
so the per-call check costs one falsy test)."""
_threads_lock: Final = threading.Lock()

_ADVICE: Final = {
    "transaction": "blocks do not nest: do the work with the open block's object",
    "close": "leave the block first",
    "health_check": "call it before or after the block",
    "migrations": "migrate before or after the block",
}


def enter(facade: object, *, blocking: bool) -> Block:
    """Open a block of ``facade`` in this context (and, ``blocking``, on this thread)."""
    block = Block(facade, threading.get_ident())
    open_blocks.set((*(b for b in open_blocks.get() if b.open), block))
    if blocking:
        with _threads_lock:
            thread_blocks.setdefault(block.thread, []).append(block)
    return block


def leave(block: Block) -> None:
    """Close ``block``: from now on it refuses nothing, in any context or thread."""
    block.open = False
    with _threads_lock:
        held = thread_blocks.get(block.thread)
        if held is not None and block in held:
            held.remove(block)
            if not held:
                del thread_blocks[block.thread]
    current = open_blocks.get()
    if block in current:
        open_blocks.set(tuple(b for b in current if b is not block))


def refuse(facade: object, call: str, *, blocking: bool = True) -> None:
    """Raise ``DatabaseError`` if ``facade`` has a block open in this context (or, for a
    ``blocking`` facade, on this thread); ``call`` names what was called."""
    inside = any(b.facade is facade and b.open for b in open_blocks.get())
    if not inside and blocking and thread_blocks:
        held = thread_blocks.get(threading.get_ident(), ())
        inside = any(b.facade is facade and b.open for b in held)
    if not inside:
        return
    advice = _ADVICE.get(call)
    if advice is None:
        advice = (
            f"use the object the block yields (with db.transaction() as tx: tx.{call}(...)), "
            "or call it after the block"
        )
    shown = call if call == "migrations" else f"{call}()"
    raise DatabaseError(
        f"{shown} was used on the database inside its own transaction() block: {advice}"
    )
