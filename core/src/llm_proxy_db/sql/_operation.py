"""Store operations as data: what to run and how to read it, with no I/O.

This is the sans-I/O half of the SQL layer (the design psycopg's cursor once used with
``_execute_gen``): the store logic (:mod:`._logic`) describes each store call as an
*operation*, and an executor (:mod:`._execute`, blocking or awaiting) runs it on a
connection. The logic is written once; an execution model is a new executor.

* A :class:`Step` is one statement as plain data: SQL, parameters, whether rows or the row
  count come back, a decoder and what to make of a constraint violation. Most store calls
  are a single step, which costs no more than calling the driver directly.
* A :class:`Flow` is a generator function (with its arguments) whose generator yields
  steps and receives their decoded results (``token = yield step``); errors of a step are
  raised at the ``yield``. Flows serve
  the calls that take several statements (the refused-increment explanation, update then
  read where ``UPDATE ... RETURNING`` is missing). ``atomic=True`` asks the executor to
  run the whole flow in one transaction.
* A decoder may return another operation instead of a value: the executor then runs that
  on the same connection (a cheap single step that only sometimes needs a second one, as
  the increment does when it is refused).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Generic, TypeAlias, TypeVar, final

from .._errors import DatabaseError
from ._integrity import IntegrityViolation

__all__ = ["Decoder", "Flow", "Operation", "Step", "Steps", "ViolationMapper"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

Decoder: TypeAlias = Callable[[Any, Any], Any]
"""``decode(result, subject)``: ``result`` is the list of rows (``rows=True``), the row
count, or ``(rowcount, lastrowid)`` (``last_id=True``) or the summed row count (``many=True``);
``subject`` is the step's.
Returns the value, an operation to run next, or raises."""

ViolationMapper: TypeAlias = Callable[[IntegrityViolation, Any], DatabaseError]
"""``on_violation(violation, subject)``: the store's error for a refused constraint."""

Steps: TypeAlias = Generator["Step[Any] | Flow[Any]", Any, T]
"""The generator a :class:`Flow` runs: yields steps (or nested flows), receives their
results, returns the flow's value."""


def _rows(result: Any, subject: Any) -> Any:
    return result


@final
class Step(Generic[T_co]):
    """One statement and how to read its result (executors dispatch on the exact class:
    not for subclassing)."""

    __slots__ = (
        "decode",
        "in_doubt",
        "last_id",
        "many",
        "on_violation",
        "params",
        "rows",
        "sql",
        "subject",
    )

    def __init__(
        self,
        sql: str,
        params: tuple[Any, ...] | list[Any] = (),
        *,
        rows: bool = True,
        decode: Decoder = _rows,
        subject: Any = None,
        on_violation: ViolationMapper | None = None,
        in_doubt: str | None = None,
        last_id: bool = False,
        many: bool = False,
    ) -> None:
        self.sql = sql
        """The statement, in the dialect's placeholder style."""
        self.params = params
        self.rows = rows
        """True: the decoder gets every row (a list of sequences); False: the row count."""
        self.decode = decode
        self.subject = subject
        """What the step is about (an id, a token, a record), handed to the decoder and
        to ``on_violation`` so that neither needs a closure."""
        self.on_violation = on_violation
        self.in_doubt = in_doubt
        """For a write whose effect a lost connection or a timeout leaves unknown (a
        counted request): what the executor appends to such a ``TransientError``, e.g.
        ``"the request may or may not have been counted"``."""
        self.last_id = last_id
        """With ``rows=False``: the decoder gets ``(rowcount, lastrowid)``, the value an
        ``UPDATE ... SET c = LAST_INSERT_ID(expr)`` sent back in its OK packet (MySQL:
        the updated value without a second statement)."""
        self.many = many
        """``params`` is a list of parameter tuples, run as one ``executemany``; the
        decoder gets the summed row count (``rows`` must be False)."""

    def __repr__(self) -> str:  # never the parameters: they may hold secrets
        return f"<Step {self.sql.split(None, 1)[0]} rows={self.rows}>"


@final
class Flow(Generic[T_co]):
    """Several steps on one connection, driven by a generator.

    It holds the generator *function* and its arguments, not a running generator, so the
    same operation may run again (a retry after a ``TransientError``).
    """

    __slots__ = ("args", "atomic", "start")

    def __init__(self, start: Callable[..., Steps[T_co]], *args: Any, atomic: bool = False) -> None:
        self.start = start
        self.args = args
        self.atomic = atomic
        """Run every step in one transaction (nothing of it is kept if one fails)."""

    def steps(self) -> Steps[T_co]:
        """A new run of the flow's generator."""
        return self.start(*self.args)

    def __repr__(self) -> str:
        return f"<Flow {getattr(self.start, '__name__', '?')} atomic={self.atomic}>"


Operation: TypeAlias = Step[T] | Flow[T]
"""What a store-logic method returns and an executor runs."""

OPERATION_TYPES: frozenset[type] = frozenset({Step, Flow})
"""For the executors' check whether a decoded value is an operation to run next."""
