"""The root command: global options, the command groups, and turning errors into exit codes.

Every failure ends as ONE line on stderr, ``error: <what was wrong>; <what to do>`` (with
``--json``, also ``{"error": {...}}`` on stdout), and an exit code: 2 when the input was
rejected before the store was asked (usage, configuration, malformed values), 1 when the
store refused or failed. A traceback is printed only with ``--debug``.

What was wrong is the error's message, never parsed; what to do is chosen here, from the
error's class and attributes (the library's messages only say what happened).
"""

from __future__ import annotations

import os
import shlex
import sys
import traceback
from collections.abc import Sequence
from typing import Final, NoReturn

import click

from .. import (
    AlreadyExistsError,
    AuditEventNotFoundError,
    BackendNotFoundError,
    ConfigError,
    DatabaseError,
    MigrationError,
    NotFoundError,
    ProjectExistsError,
    ProjectInactiveError,
    ProjectNotFoundError,
    TokenExistsError,
    TokenExpiredError,
    TokenInactiveError,
    TokenLimitReachedError,
    TokenNotFoundError,
    TokenUsageError,
    TransientError,
    __version__,
)
from ._admin import backends, health, stats
from ._audit import audit
from ._migrate import NoMigrationsError, migrate
from ._output import echo_document, printable
from ._projects import project
from ._secrets import secrets
from ._state import State
from ._tokens import token
from ._usage import HintedBadParameter, HintedUsageError

__all__ = ["cli", "main", "run"]

PROG = "llm-proxy-db"
_CLI_PACKAGE = __name__.rpartition(".")[0]
USAGE_EXIT = 2
FAILURE_EXIT = 1

_CONFIG_HINT = (
    "check --driver/--database-path/--database-url (or DB_DRIVER, DATABASE_PATH, DATABASE_URL)"
)
_VALUE_HINT = f"check the values given; see '{PROG} --help'"
_HINTS: tuple[tuple[type[DatabaseError], str], ...] = (
    (ProjectNotFoundError, f"see the projects with '{PROG} project list'"),
    (TokenNotFoundError, f"see the tokens with '{PROG} token list'"),
    (AuditEventNotFoundError, f"see the events with '{PROG} audit list'"),
    (NotFoundError, "check the id or name given"),
    (ProjectExistsError, f"choose another name, or see '{PROG} project list'"),
    (TokenExistsError, f"run '{PROG} token create' again: it draws a new token"),
    (AlreadyExistsError, "choose another id"),
    (TokenUsageError, f"see the token with '{PROG} token show'"),
    (BackendNotFoundError, f"see what is installed with '{PROG} backends'"),
    (ConfigError, _CONFIG_HINT),
    (
        NoMigrationsError,
        f"only SQL backends have them: choose one with --driver (see '{PROG} backends')",
    ),
    (MigrationError, f"see '{PROG} migrate status'"),
    (TransientError, "try again"),
    (
        DatabaseError,
        "check that the database is reachable and --driver/--database-path/"
        "--database-url (or DB_DRIVER, DATABASE_PATH, DATABASE_URL) name it",
    ),
)
"""The hint for each class of library error, most specific first (refined in ``_hint``)."""

_EPILOG = f"""\b
Exit codes: 0 done; 1 the store refused or failed (unknown id, name taken,
limit reached, database unreachable); 2 bad input, nothing changed (usage,
configuration, malformed values).
\b
Quick start:
  export OPENAI_API_KEY=sk-...
  {PROG} project create demo --api-key-env OPENAI_API_KEY
  TOKEN=$({PROG} token create --project demo --max-requests 3 --quiet)
  {PROG} token use "$TOKEN"
  {PROG} audit list
"""


@click.group(epilog=_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--driver",
    metavar="NAME",
    help="Backend name: sqlite, postgres, memory... [env: DB_DRIVER; default: sqlite]",
)
@click.option(
    "--database-path",
    metavar="PATH",
    help="SQLite file. [env: DATABASE_PATH; default: data/llm-proxy.db]",
)
@click.option(
    "--database-url", metavar="URL", help="Server database URL (postgres). [env: DATABASE_URL]"
)
@click.option(
    "--json",
    "json_output",
    is_flag=True,
    help="Print one JSON document instead of text (also accepted after the command).",
)
@click.option("--debug", is_flag=True, help="Show the Python traceback of an error.")
@click.version_option(__version__, "--version", prog_name=PROG)
@click.pass_context
def cli(
    ctx: click.Context,
    driver: str | None,
    database_path: str | None,
    database_url: str | None,
    json_output: bool,
    debug: bool,
) -> None:
    """Manage the projects, tokens and audit log of an LLM API proxy."""
    state = ctx.ensure_object(State)
    state.driver = driver
    state.database_path = database_path
    state.database_url = database_url
    state.json = state.json or json_output
    state.debug = debug


for _command in (project, token, audit, migrate, secrets, backends, health, stats):
    cli.add_command(_command)


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line[:-1] if line.endswith(".") and not line.endswith("...") else line


def _suggest(words: str, *args: str | None) -> str:
    """A command line to suggest: ``llm-proxy-db WORDS ARGS``, the known args quoted."""
    return " ".join([PROG, words, *(shlex.quote(arg) for arg in args if arg)])


def _hint(exc: DatabaseError) -> str:
    """What to do about a library error: by its class, made precise by its attributes."""
    if isinstance(exc, TokenLimitReachedError):
        project = ["--project", exc.project_id] if exc.project_id else []
        return (
            f"reset its count with '{_suggest('token reset-usage', exc.masked_token)}' or issue "
            f"a new token with '{_suggest('token create', *project)}'"
        )
    if isinstance(exc, TokenExpiredError | TokenInactiveError):
        project = ["--project", exc.project_id] if exc.project_id else []
        return f"issue a new token with '{_suggest('token create', *project)}'"
    if isinstance(exc, ProjectInactiveError):
        return f"activate the project with '{_suggest('project activate', exc.project_id)}'"
    return next(hint for kind, hint in _HINTS if isinstance(exc, kind))


def _usage_message(exc: click.UsageError) -> str:
    """What was wrong in a usage error, and what to do: its own hint, a close match click
    found, or the command's ``--help``."""
    if isinstance(exc, HintedUsageError | HintedBadParameter):
        return f"{_one_line(exc.format_message())}; {exc.hint}"
    # click's NoSuchOption and NoSuchCommand suggest close matches; their ``message`` is
    # without the suggestion, which goes last as the hint.
    possibilities: list[str] = getattr(exc, "possibilities", None) or []
    if possibilities:
        matches = ", ".join(repr(p) for p in sorted(possibilities))
        one = len(possibilities) == 1
        return f"{_one_line(exc.message)}; did you mean {matches if one else 'one of ' + matches}?"
    command = exc.ctx.command_path if exc.ctx else PROG
    return f"{_one_line(exc.format_message())}; see '{command} --help'"


def _describe(exc: BaseException) -> tuple[int, str]:
    """The exit code and the error line (without ``error: ``) for ``exc``."""
    if isinstance(exc, click.UsageError):
        return USAGE_EXIT, _usage_message(exc)
    if isinstance(exc, click.ClickException):
        return exc.exit_code, _one_line(exc.format_message())
    if isinstance(exc, DatabaseError):  # ConfigError (a ValueError too) is bad input
        code = USAGE_EXIT if isinstance(exc, ValueError) else FAILURE_EXIT
        hint = _hint(exc)
    elif isinstance(exc, ValueError) or _from_models(exc):
        code, hint = USAGE_EXIT, _VALUE_HINT
    elif isinstance(exc, OSError):
        code, hint = FAILURE_EXIT, "check the file or device named above"
    else:
        code = FAILURE_EXIT
        hint = f"this is a bug: rerun with '{PROG} --debug ...' and report the traceback"
        return code, f"internal error {type(exc).__name__}: {_one_line(str(exc))}; {hint}"
    message = _one_line(str(exc)) or type(exc).__name__
    return code, f"{message}; {hint}"


def _from_models(exc: BaseException) -> bool:
    """Whether ``exc`` is a ``TypeError`` a record's or a store call's argument check
    raised (a value of the wrong type given, not a bug of the command line)."""
    if not isinstance(exc, TypeError):
        return False
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    if frame is None:
        return False
    module = frame.tb_frame.f_globals.get("__name__", "")
    return module in _CHECKING_MODULES or frame.tb_frame.f_code.co_filename.startswith(
        "<forwarded "
    )


_CHECKING_MODULES: Final = frozenset({"llm_proxy_db._models", "llm_proxy_db._limits"})


def _public_type(exc: BaseException) -> str:
    """The class name the JSON error document reports: that of ``exc``, or for the CLI's
    own subclasses (``NoMigrationsError``, ``HintedUsageError``...) of the nearest library
    or click class they refine."""
    return next(
        kind.__name__ for kind in type(exc).__mro__ if not kind.__module__.startswith(_CLI_PACKAGE)
    )


def _print_traceback(exc: BaseException) -> None:
    """The traceback of ``exc`` alone (``--debug``), then only the class names of the
    exceptions chained to it: a driver's exception may quote a ``DATABASE_URL``, a token or
    a key, and the library raises its own errors with none attached."""
    traceback.print_exception(exc, chain=False)
    chained: list[str] = []
    current = exc.__cause__ or exc.__context__
    while current is not None and len(chained) < 20:
        chained.append(f"{type(current).__module__}.{type(current).__qualname__}")
        current = current.__cause__ or current.__context__
    if chained:
        click.echo(f"(chained, their text withheld: {', '.join(chained)})", err=True)


def _report(state: State, exc: BaseException) -> int:
    code, message = _describe(exc)
    if state.debug:
        _print_traceback(exc)
    if state.json:
        echo_document({"error": {"type": _public_type(exc), "message": message, "exit_code": code}})
    click.echo(f"error: {printable(message)}", err=True)
    return code


def run(args: Sequence[str] | None = None) -> int:
    """Run the command line with ``args`` (default: ``sys.argv[1:]``); the exit code."""
    state = State()
    try:
        try:
            result = cli.main(args=args, prog_name=PROG, standalone_mode=False, obj=state)
        finally:
            state.close()
    except click.exceptions.Exit as done:  # --help, --version
        return done.exit_code
    except click.Abort:
        click.echo("error: aborted", err=True)
        return FAILURE_EXIT
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except BrokenPipeError:  # the reader went away (``| head``): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return FAILURE_EXIT
    except Exception as exc:
        return _report(state, exc)
    return result if isinstance(result, int) else 0


def main(args: Sequence[str] | None = None) -> NoReturn:
    """The ``llm-proxy-db`` console script."""
    sys.exit(run(args))
