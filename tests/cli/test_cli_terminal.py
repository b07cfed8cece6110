"""Client-supplied audit fields never reach a terminal raw: control characters (C0, C1,
DEL) and bidi controls are escaped in all human output; ``--json`` stays exact.

The end-to-end test runs the CLI in a real terminal (tmux, on a socket of its own),
records every byte the program wrote to the pane and reads the screen back."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llm_proxy_db import DB, AuditEvent
from llm_proxy_db.cli._output import fields, printable, table

from .conftest import Cli

FORGED = "2026-01-01T00:00:00Z  project.delete  success  cli:root  FORGED-ROW"
MASKED = "sk-Ab...\x1b[5mxyz9"
"""A token_id as a client could have it logged: masked, with a blink sequence."""
HOSTILE: dict[str, Any] = {
    "action": "token.use\x1b[2J\x1b[H",  # clear the screen, cursor home
    "actor": "proxy\x1b]2;PWNED-TITLE\x07",  # OSC: set the window title, ended by BEL
    "reason": f"quota\n{FORGED}",  # a newline: a forged table row
    "user_agent": "\x1b[31mred\x1b[0m\x07",  # colour and BEL
    "path": "/v1/\u202egnp.exe\u2066x\u2069",  # bidi override and isolate
    "request_id": "req\x9b31m",  # C1 CSI
    "correlation_id": "c\x7f\x01d",  # DEL and SOH (NUL is refused on every backend)
    "client_ip": "10.0.0.1\r",  # carriage return: overwrite the line
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text, é, 日本, \\ and 'quotes'", "plain text, é, 日本, \\ and 'quotes'"),
        ("a\nb\r\tc", "a\\nb\\r\\tc"),
        ("\x1b[31mred\x07", "\\x1b[31mred\\x07"),
        ("\x00\x1f\x7f\x80\x85\x9b\x9f\xa0", "\\x00\\x1f\\x7f\\x80\\x85\\x9b\\x9f\xa0"),
        ("\u202a\u202b\u202c\u202d\u202e", "\\u202a\\u202b\\u202c\\u202d\\u202e"),
        ("\u2066\u2067\u2068\u2069\u2065\u206a", "\\u2066\\u2067\\u2068\\u2069\u2065\u206a"),
    ],
)
def test_printable_escapes_controls_only(text: str, expected: str) -> None:
    assert printable(text) == expected


def test_every_control_character_is_escaped() -> None:
    controls = [*range(0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
    for code in controls:
        escaped = printable(f"x{chr(code)}y")
        assert escaped.isprintable() and escaped.isascii(), hex(code)
        assert escaped != f"x{chr(code)}y"
    others = "".join(chr(c) for c in range(0x20, 0x3000) if c not in controls)
    assert printable(others) == others


def test_tables_and_fields_escape_every_cell() -> None:
    rendered = table(("A\x1b", "B"), [("x\ny", "\x07")])
    assert rendered.splitlines() == ["A\\x1b  B", "x\\ny   \\x07"]
    assert fields([("k\n", "v\x1b[2J")]) == "k\\n: v\\x1b[2J"


def _hostile_event(db: DB) -> AuditEvent:
    return db.create_audit_event(AuditEvent(outcome="failure", token_id=MASKED, **HOSTILE))


def test_json_stays_exact(cli: Cli, db: DB) -> None:
    event = _hostile_event(db)
    shown: dict[str, Any] = cli("--json", "audit", "show", event.id).json()
    listed: list[dict[str, Any]] = cli("--json", "audit", "list").json()
    for document in (shown, listed[0]):
        assert {key: document[key] for key in HOSTILE} == HOSTILE


def test_text_output_escapes_the_hostile_fields(cli: Cli, db: DB) -> None:
    event = _hostile_event(db)
    for args in (("audit", "show", event.id), ("audit", "list")):
        out = cli(*args).out
        assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out and "\r" not in out
        assert "\u202e" not in out and "\u2066" not in out
        assert not any(line.startswith(FORGED[:20]) for line in out.splitlines())
        assert "quota\\n2026-01-01" in out
    # An error line quoting the id given escapes it too.
    error = cli("audit", "show", "no-such\x1b[2J\x07id", code=1).err
    assert "\x1b" not in error and "\x07" not in error


class Terminal:
    """One tmux server on a socket of its own, one window running one command."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.socket = folder / "tmux.sock"
        self.raw = folder / "pane.raw"
        self.go = folder / "go"
        self.env = {**env, "TERM": "xterm-256color"}

    def tmux(self, *args: str) -> str:
        completed = subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=30,
            check=True,
        )
        return completed.stdout

    def run(self, argv: list[str], cwd: Path) -> tuple[bytes, str]:
        """Run ``argv`` in the pane: every byte it wrote, and the screen afterwards."""
        command = " ".join(f"'{arg}'" for arg in argv)
        script = (
            f"cd '{cwd}'; while [ ! -e '{self.go}' ]; do sleep 0.05; done; "
            f"{command}; echo; echo __DONE__; sleep 120"
        )
        self.tmux("new-session", "-d", "-s", "t", "-x", "400", "-y", "60", "sh", "-c", script)
        self.tmux("pipe-pane", "-o", "-t", "t", f"cat >> '{self.raw}'")
        self.go.touch()
        deadline = time.monotonic() + 30
        while "__DONE__" not in (screen := self.tmux("capture-pane", "-p", "-t", "t")):
            assert time.monotonic() < deadline, f"the command did not finish:\n{screen}"
            time.sleep(0.1)
        time.sleep(0.3)  # let pipe-pane's cat write the last bytes
        return self.raw.read_bytes(), screen

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-S", str(self.socket), "kill-server"], capture_output=True, timeout=30
        )


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt-get install tmux)")
@pytest.mark.parametrize("command", [["audit", "show"], ["audit", "list"]])
def test_no_control_character_reaches_a_real_terminal(
    cli: Cli, db: DB, tmp_path: Path, command: list[str]
) -> None:
    event = _hostile_event(db)
    argv = [sys.executable, "-m", "llm_proxy_db.cli", *command]
    if command[-1] == "show":
        argv.append(event.id)
    terminal = Terminal(tmp_path, cli.env)
    try:
        raw, screen = terminal.run(argv, tmp_path)
        title = terminal.tmux("display-message", "-p", "-t", "t", "#{pane_title}")
        bell = terminal.tmux("display-message", "-p", "-t", "t", "#{window_bell_flag}")
    finally:
        terminal.close()
    assert b"__DONE__" in raw
    for byte in (b"\x1b", b"\x07", b"\x00", b"\x7f", "\x9b".encode(), "\u202e".encode()):
        assert byte not in raw, f"{byte!r} reached the terminal"
    assert raw.count(b"\r") == raw.count(b"\r\n")  # only the pty's own newline translation
    assert "PWNED-TITLE" not in title and bell.strip() == "0"
    lines = screen.splitlines()
    assert not any(line.startswith(FORGED[:20]) for line in lines), screen
    assert any("quota\\n2026-01-01" in line for line in lines), screen
    assert any("proxy\\x1b]2;PWNED-TITLE\\x07" in line for line in lines), screen
