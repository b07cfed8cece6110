"""A ``DATABASE_URL`` password with an unescaped ``@`` (or ``/``) never reaches any output:
the error line on stderr, the ``--json`` document, the ``--debug`` traceback."""

from __future__ import annotations

import getpass
from urllib.parse import quote

import pytest

from .conftest import Cli

pytestmark = pytest.mark.server_smoke

TAIL = "Tail-SECRET-9f3c"
"""What follows the password's ``@``: libpq used to read it as the host and quote it."""


@pytest.fixture
def server_params(cli_env: dict[str, str]) -> dict[str, str]:
    """The parts of the PostgreSQL URL the CLI tests use (PostgreSQL runs only)."""
    if cli_env.get("DB_DRIVER") != "postgres":
        pytest.skip("a PostgreSQL URL test: runs with DB_DRIVER=postgres")
    conninfo = pytest.importorskip("psycopg.conninfo")
    params = {k: str(v) for k, v in conninfo.conninfo_to_dict(cli_env["DATABASE_URL"]).items()}
    params.setdefault("user", getpass.getuser())
    return params


def _url(params: dict[str, str], password: str, *, port: str | None = None) -> str:
    options = quote(params.get("options", ""), safe="")
    return (
        f"postgresql://{params['user']}:{password}@{params.get('host', '127.0.0.1')}:"
        f"{port or params.get('port', '5432')}/{params['dbname']}?options={options}"
    )


def _runs(cli: Cli, url: str, code: int) -> list[str]:
    """stderr, stdout of ``--json`` and stderr of ``--debug`` for a read and ``health``."""
    env = {"DATABASE_URL": url}
    outputs: list[str] = []
    for command in (("project", "list"), ("health",)):
        outputs.append(cli(*command, env=env, code=code).err)
        json_run = cli("--json", *command, env=env, code=code)
        outputs += [json_run.out, json_run.err]
        outputs.append(cli("--debug", *command, env=env, code=code).err)
    return outputs


def test_a_password_with_an_at_sign_connects_and_leaks_nowhere(
    cli: Cli, server_params: dict[str, str]
) -> None:
    # Read as Go's net/url reads it (the user part ends at the last '@'): trust auth on the
    # test server accepts any password, so the command works.
    url = _url(server_params, f"p@ss@{TAIL}")
    for output in _runs(cli, url, code=0):
        assert TAIL not in output and "p@ss" not in output


@pytest.mark.parametrize(
    "password", [f"p@ss@{TAIL}", f"@{TAIL}", f"p@{TAIL}@x", quote(f"p@{TAIL}", safe="")]
)
def test_a_failing_connection_never_quotes_the_password(
    cli: Cli, server_params: dict[str, str], password: str
) -> None:
    # Port 1: nothing listens there; the error names the target, never the password.
    url = _url(server_params, password, port="1")
    outputs = _runs(cli, url, code=1)
    for output in outputs:
        assert TAIL not in output, output
    assert "127.0.0.1:1/" in outputs[0] and "Traceback" in outputs[3]


@pytest.mark.parametrize("password", [f"pa/ss@{TAIL}", f"p/x@{TAIL}@y"])
def test_a_password_libpq_would_misparse_is_refused_before_connecting(
    cli: Cli, server_params: dict[str, str], password: str
) -> None:
    outputs = _runs(cli, _url(server_params, password), code=2)
    for output in outputs:
        assert TAIL not in output, output
    assert "percent-encode" in outputs[0]


def test_key_value_and_query_passwords_never_appear(
    cli: Cli, server_params: dict[str, str]
) -> None:
    host, dbname = server_params.get("host", "127.0.0.1"), server_params["dbname"]
    urls = [
        f"host={host} port=1 user={server_params['user']} password=p@{TAIL} dbname={dbname}",
        f"postgresql://{server_params['user']}@{host}:1/{dbname}?password=p@{TAIL}",
    ]
    for url in urls:
        for output in _runs(cli, url, code=1):
            assert TAIL not in output, output
