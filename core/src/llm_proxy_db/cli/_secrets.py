"""``secrets``: encrypt the stored upstream keys in place, rotate them, count them by state.

The stored values are read as they are (``unwrapped``) to tell their state; the changes go
through the ``DB``, whose encryption layer decrypts with any configured key and encrypts
with the current one. Each batch is one transaction with its audit event, so an
interrupted run keeps what it finished and the next run does the rest; a run with nothing
left to do changes nothing.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click

from .. import DB, Project, Stores
from .._encrypting import unwrapped
from .._encryption import EMPTY, PLAINTEXT, Cipher, value_state
from ._changes import Trail, audited_change
from ._output import echo_document, table
from ._params import json_option
from ._state import State, pass_state
from ._usage import HintedUsageError

__all__ = ["secrets"]

DEFAULT_BATCH = 100
_WORDS = {"encrypt": ("Encrypting", "Encrypted"), "rotate": ("Rotating", "Rotated")}
_NO_KEY_HINT = (
    "set ENCRYPTION_KEY (the Go llm-proxy's enc:v1) or ENCRYPTION_KEYS (rotating enc:v2, the "
    "first key encrypts); generate a key with 'openssl rand -base64 32'"
)


@click.group()
def secrets() -> None:
    """Upstream keys at rest: encrypt them in place, rotate them, count them by state.

    The keys come from ENCRYPTION_KEY (writes the Go program's enc:v1) or ENCRYPTION_KEYS
    (comma-separated; the first writes enc:v2, every one reads). Exit codes: 0 done (also
    when nothing was left to do), 1 the store failed or a stored value did not decrypt, 2
    bad input or no key configured (nothing changed).
    """


def _cipher(db: DB) -> Cipher | None:
    backend: Any = db._backend
    found: Cipher | None = getattr(backend, "cipher", None)
    return found if isinstance(found, Cipher) else None


def _required_cipher(db: DB, command: str) -> Cipher:
    cipher = _cipher(db)
    if cipher is None:
        raise HintedUsageError(
            f"'secrets {command}' needs an encryption key and none is configured",
            hint=_NO_KEY_HINT,
        )
    return cipher


def _stored(db: DB) -> list[Project]:
    return unwrapped(db).list_projects()


def _status_document(projects: Sequence[Project], cipher: Cipher | None) -> dict[str, Any]:
    states = Counter(value_state(p.openai_api_key) for p in projects)
    current = cipher.current if cipher is not None else None
    return {
        "total": len(projects),
        "states": dict(sorted(states.items())),
        "current": current,
        "key_ids": list(cipher.key_ids) if cipher is not None else [],
        "to_encrypt": states[PLAINTEXT] if cipher is not None else 0,
        "to_rotate": (
            sum(n for state, n in states.items() if state not in (current, EMPTY))
            if cipher is not None
            else 0
        ),
    }


@secrets.command("status")
@json_option
@pass_state
def status(state: State) -> None:
    """Count the stored upstream keys by state: plaintext, enc:v1, enc:v2:<key id>.

    Needs no key. JSON: {"total", "states": {state: count}, "current" (what is written,
    null without a key), "key_ids", "to_encrypt", "to_rotate"}.
    """
    db = state.db()
    document = _status_document(_stored(db), _cipher(db))
    if state.json:
        echo_document(document)
        return
    rows = [
        (name, str(count), "current" if name == document["current"] else "")
        for name, count in document["states"].items()
    ]
    if rows:
        click.echo(table(("STATE", "PROJECTS", ""), rows))
    else:
        click.echo("No projects.")
    if document["current"] is None:
        click.echo("No encryption key configured: new upstream keys are stored in plaintext.")
    else:
        click.echo(
            f"Writing {document['current']} (keys: {', '.join(document['key_ids'])}); "
            f"{document['to_encrypt']} to encrypt, {document['to_rotate']} to rotate."
        )


def _batch_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--batch-size",
        type=click.IntRange(min=1, max=100_000),
        default=DEFAULT_BATCH,
        show_default=True,
        help="Projects changed per transaction.",
    )(command)


@contextmanager
def _progress(state: State, total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal (never with --json); elsewhere, nothing."""
    if state.json or total == 0 or not sys.stdout.isatty():
        yield lambda done: None
        return
    with click.progressbar(length=total, label=label) as bar:
        yield bar.update


def _convert(state: State, action: str, wanted: Callable[[str, Cipher], bool], size: int) -> None:
    db = state.db()
    cipher = _required_cipher(db, action)
    pending = [p for p in _stored(db) if wanted(p.openai_api_key, cipher)]
    unknown = sorted(
        {
            value_state(p.openai_api_key)[len("enc:v2:") :]
            for p in pending
            if value_state(p.openai_api_key).startswith("enc:v2:")
            and value_state(p.openai_api_key)[len("enc:v2:") :] not in cipher.key_ids
        }
    )
    if unknown:
        raise HintedUsageError(
            f"stored upstream keys were encrypted with keys that are not configured "
            f"({', '.join(unknown)})",
            hint="add those keys to ENCRYPTION_KEYS after the current one",
        )
    ids = [p.id for p in pending]
    batches = 0
    doing, done = _WORDS[action]
    with _progress(state, len(ids), f"{doing} upstream keys") as advance:
        for start in range(0, len(ids), size):
            chunk = ids[start : start + size]

            def change(tx: Stores, trail: Trail, chunk: list[str] = chunk) -> None:
                for project_id in chunk:
                    # Read decrypted (with any configured key), written in the current form.
                    tx.update_project(tx.get_project_by_id(project_id))

            trail = Trail(metadata={"projects": chunk, "count": len(chunk), "to": cipher.current})
            if len(chunk) == 1:
                trail.project_id = chunk[0]
            audited_change(state, f"secrets.{action}", change, trail=trail)
            batches += 1
            advance(len(chunk))
    after = _status_document(_stored(db), cipher)
    if state.json:
        echo_document(
            {
                "action": action,
                "converted": len(ids),
                "batches": batches,
                "format": cipher.current,
                "status": after,
            }
        )
        return
    if not ids:
        click.echo(f"Nothing to {action}: every upstream key is already {cipher.current}.")
        return
    noun = "key" if len(ids) == 1 else "keys"
    click.echo(
        f"{done} {len(ids)} upstream {noun} as {cipher.current} in {batches} "
        f"batch{'es' if batches != 1 else ''}; {after['to_encrypt']} left in plaintext."
    )


def _is_plaintext(value: str, cipher: Cipher) -> bool:
    return value_state(value) == PLAINTEXT


def _is_not_current(value: str, cipher: Cipher) -> bool:
    return not cipher.is_current(value)


@secrets.command("encrypt")
@_batch_option
@json_option
@pass_state
def encrypt(state: State, batch_size: int) -> None:
    """Encrypt every upstream key stored in plaintext, in place, with the current key.

    Batches of --batch-size projects, each one transaction with a 'secrets.encrypt' audit
    event; interrupted, run it again to finish. Values already encrypted are left alone
    (see 'secrets rotate'). Each changed project's updated_at becomes now.
    """
    _convert(state, "encrypt", _is_plaintext, batch_size)


@secrets.command("rotate")
@_batch_option
@json_option
@pass_state
def rotate(state: State, batch_size: int) -> None:
    """Re-encrypt every upstream key not in the current form with the current key.

    The current form is enc:v2 with the first of ENCRYPTION_KEYS (enc:v1 with
    ENCRYPTION_KEY); older keys must stay listed after it until this has run. Plaintext
    values are encrypted too. Batches, audit events and resuming as for 'secrets encrypt'.
    """
    _convert(state, "rotate", _is_not_current, batch_size)
