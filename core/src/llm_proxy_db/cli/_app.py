"""The root command: global options, the command groups, and turning errors into exit codes.

Every failure ends as ONE line on stderr, ``error: <what was wrong>; <what to do>`` (with
``--json``, also ``{"error": {...}}`` on stdout), and an exit code: 2 when the input was
rejected before the store was asked (usage, configuration, malformed values), 1 when the
store refused or failed. A traceback is printed only with ``--debug``.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

import click

from .. import (
    AuditEventNotFoundError,
    BackendNotFoundError,
    ConfigError,
    DatabaseError,
    MigrationError,
    ProjectExistsError,
    ProjectInactiveError,
    ProjectNotFoundError,
    TokenExpiredError,
    TokenInactiveError,
    TokenLimitReachedError,
    TokenNotFoundError,
    TransientError,
    __version__,
)
from ._admin import backends, health, stats
from ._audit import audit
from ._migrate import migrate
from ._output import echo_document
from ._projects import project
from ._state import State
from ._tokens import token

__all__ = ["cli", "main", "run"]

PROG = "llm-proxy-db"
USAGE_EXIT = 2
FAILURE_EXIT = 1

_CONFIG_HINT = (
    "check --driver/--database-path/--database-url (or DB_DRIVER, DATABASE_PATH, DATABASE_URL)"
)
_VALUE_HINT = f"check the values given; see '{PROG} --help'"
_HINTS: tuple[tuple[type[BaseException], str], ...] = (
    (ProjectNotFoundError, f"see the projects with '{PROG} project list'"),
    (TokenNotFoundError, f"see the tokens with '{PROG} token list'"),
    (AuditEventNotFoundError, f"see the events with '{PROG} audit list'"),
    (ProjectExistsError, f"choose another name, or see '{PROG} project list'"),
    (
        TokenLimitReachedError,
        f"reset it with '{PROG} token reset-usage' or issue a new token with '{PROG} token create'",
    ),
    (TokenExpiredError, f"issue a new token with '{PROG} token create'"),
    (TokenInactiveError, f"issue a new token with '{PROG} token create'"),
    (ProjectInactiveError, f"activate the project with '{PROG} project activate'"),
    (BackendNotFoundError, f"see what is installed with '{PROG} backends'"),
    (ConfigError, _CONFIG_HINT),
    (MigrationError, f"see '{PROG} migrate status'"),
    (TransientError, "try again"),
    (
        DatabaseError,
        "check that the database is reachable and --driver/--database-path/"
        "--database-url (or DB_DRIVER, DATABASE_PATH, DATABASE_URL) name it",
    ),
)

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


for _command in (project, token, audit, migrate, backends, health, stats):
    cli.add_command(_command)


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line[:-1] if line.endswith(".") and not line.endswith("...") else line


def _describe(exc: BaseException) -> tuple[int, str]:
    """The exit code and the error line (without ``error: ``) for ``exc``."""
    if isinstance(exc, click.UsageError):
        message = _one_line(exc.format_message()).replace(". Did you mean", "; did you mean")
        if "; " not in message:
            command = exc.ctx.command_path if exc.ctx else PROG
            message += f"; see '{command} --help'"
        return USAGE_EXIT, message
    if isinstance(exc, click.ClickException):
        return exc.exit_code, _one_line(exc.format_message())
    if isinstance(exc, ValueError):  # ConfigError and BackendNotFoundError included
        code = USAGE_EXIT
        hint = next((h for kind, h in _HINTS if isinstance(exc, kind)), _VALUE_HINT)
    elif isinstance(exc, DatabaseError):
        code = FAILURE_EXIT
        hint = next(h for kind, h in _HINTS if isinstance(exc, kind))
    elif isinstance(exc, OSError):
        code, hint = FAILURE_EXIT, "check the file or device named above"
    else:
        code = FAILURE_EXIT
        hint = f"this is a bug: rerun with '{PROG} --debug ...' and report the traceback"
        return code, f"internal error {type(exc).__name__}: {_one_line(str(exc))}; {hint}"
    message = _one_line(str(exc)) or type(exc).__name__
    if "; " not in message:
        message += f"; {hint}"
    return code, message


def _report(state: State, exc: BaseException) -> int:
    code, message = _describe(exc)
    if state.debug:
        traceback.print_exception(exc)
    if state.json:
        echo_document(
            {"error": {"type": type(exc).__name__, "message": message, "exit_code": code}}
        )
    click.echo(f"error: {message}", err=True)
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
