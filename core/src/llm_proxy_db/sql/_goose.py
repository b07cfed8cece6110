"""A small parser for goose-format SQL migration files.

A file is named ``NNNNN_name.sql`` (the version is the integer prefix) and holds::

    -- +goose NO TRANSACTION          (optional, anywhere: run without a transaction)
    -- +goose Up
    CREATE TABLE t (x INTEGER);      a statement ends at a ';' that ends a line
    -- +goose StatementBegin
    DO $$ BEGIN ...; END $$;         kept whole, inner semicolons and all
    -- +goose StatementEnd
    -- +goose Down
    DROP TABLE t;

The splitting rules follow goose's own parser: a comment-only line (first non-blank
characters ``--``) and a blank line are dropped, except inside a
``StatementBegin``/``StatementEnd`` block, which is kept verbatim. Outside such a block a
statement ends on a line whose last word before any ``--`` comment ends with ``;``.
Anything goose would reject (or silently misread) is a :class:`MigrationError` naming the
file and the line.
"""

from __future__ import annotations

import re
from importlib.resources.abc import Traversable

import attrs

from .._errors import MigrationError

__all__ = ["Migration", "load_migrations", "parse_migration"]

_FILENAME = re.compile(r"^(?P<version>[0-9]+)_(?P<name>[^/\\]+)\.sql$")

_UP = "up"
_DOWN = "down"
_BEGIN = "statementbegin"
_END = "statementend"
_NO_TX = "no transaction"


@attrs.frozen(kw_only=True)
class Migration:
    """One parsed migration file."""

    version: int
    name: str
    """The file name between the version prefix and ``.sql``."""
    up: tuple[str, ...]
    down: tuple[str, ...]
    transactional: bool = True
    """``False`` when the file says ``-- +goose NO TRANSACTION``."""
    filename: str = attrs.field(default="", eq=False)
    """The file this migration was read from (for messages)."""

    @property
    def source(self) -> str:
        """The file name for messages: :attr:`filename`, else the canonical one."""
        return self.filename or f"{self.version:05d}_{self.name}.sql"


def _split_filename(filename: str) -> tuple[int, str]:
    match = _FILENAME.match(filename)
    if match is None:
        raise MigrationError(
            f"{filename}: not a goose migration file name (expected NNNNN_name.sql)"
        )
    version = int(match["version"])
    if version < 1:
        raise MigrationError(f"{filename}: migration versions start at 1, got {version}")
    return version, match["name"]


def _annotation(line: str) -> str | None:
    """The lower-cased annotation after ``-- +goose``, or ``None`` for any other line."""
    stripped = line.strip()
    if not stripped.startswith("--"):
        return None
    comment = stripped[2:].strip()
    if not comment.startswith("+goose"):
        return None
    rest = comment[len("+goose") :]
    if rest[:1].isspace():
        return " ".join(rest.split()).lower()
    return comment  # "+gooseUp", "+goose": not a known annotation


def _ends_statement(line: str) -> bool:
    """goose's rule: the last word before a ``--`` comment ends with ``;``."""
    last = ""
    for word in line.split():
        if word.startswith("--"):
            break
        last = word
    return last.endswith(";")


def parse_migration(text: str, filename: str) -> Migration:
    """Parse one goose file's ``text``; ``filename`` gives the version and the name."""
    version, name = _split_filename(filename)
    sections: dict[str, list[str]] = {_UP: [], _DOWN: []}
    seen: set[str] = set()
    section: str | None = None
    transactional = True
    buffer: list[str] = []
    buffer_start = 0
    block_start: int | None = None  # line of the open StatementBegin

    def fail(lineno: int, message: str) -> MigrationError:
        return MigrationError(f"{filename}, line {lineno}: {message}")

    def flush() -> None:
        assert section is not None
        sections[section].append("\n".join(buffer).rstrip())
        buffer.clear()

    lines = text.splitlines()
    for lineno, line in enumerate(lines, start=1):
        annotation = _annotation(line)
        if block_start is not None and annotation != _END:
            if annotation is not None:
                raise fail(
                    lineno,
                    f"{line.strip()!r} inside the StatementBegin block opened on line "
                    f"{block_start} (StatementBegin without StatementEnd?)",
                )
            buffer.append(line)
            continue
        if annotation is not None:
            if annotation in (_UP, _DOWN):
                if buffer:
                    raise fail(buffer_start, "statement does not end with ';'")
                if annotation in seen:
                    raise fail(lineno, f"a second {line.strip()!r}")
                if annotation == _UP and _DOWN in seen:
                    raise fail(lineno, "'-- +goose Up' after '-- +goose Down'")
                seen.add(annotation)
                section = annotation
            elif annotation == _BEGIN:
                if section is None:
                    raise fail(lineno, "StatementBegin before '-- +goose Up'")
                if buffer:
                    raise fail(buffer_start, "statement does not end with ';'")
                block_start = lineno
                buffer_start = lineno + 1
            elif annotation == _END:
                if block_start is None:
                    raise fail(lineno, "StatementEnd without StatementBegin")
                if not any(part.strip() for part in buffer):
                    raise fail(block_start, "empty StatementBegin block")
                block_start = None
                flush()
            elif annotation == _NO_TX:
                transactional = False
            else:
                raise fail(lineno, f"unknown annotation {line.strip()!r}")
            continue
        if line.lstrip().startswith("--") or not line.strip():
            continue  # comment-only or blank line
        if section is None:
            raise fail(lineno, "SQL before '-- +goose Up'")
        if not buffer:
            buffer_start = lineno
        buffer.append(line)
        if _ends_statement(line):
            flush()

    if block_start is not None:
        raise fail(block_start, "StatementBegin without StatementEnd")
    if buffer:
        raise fail(buffer_start, "statement does not end with ';'")
    if _UP not in seen:
        raise MigrationError(f"{filename}: no '-- +goose Up' annotation")
    return Migration(
        version=version,
        name=name,
        up=tuple(sections[_UP]),
        down=tuple(sections[_DOWN]),
        transactional=transactional,
        filename=filename,
    )


def load_migrations(source: Traversable) -> list[Migration]:
    """Every ``*.sql`` file in ``source``, parsed, sorted by version.

    Other files (``__init__.py``, READMEs) are ignored. A ``.sql`` file with a bad name,
    and two files with one version, are a :class:`MigrationError`.
    """
    by_version: dict[int, Migration] = {}
    for entry in source.iterdir():
        if not entry.name.endswith(".sql") or entry.name.startswith(".") or not entry.is_file():
            continue
        migration = parse_migration(entry.read_text(encoding="utf-8"), entry.name)
        other = by_version.get(migration.version)
        if other is not None:
            first, second = sorted([other.source, migration.source])
            raise MigrationError(
                f"{first} and {second}: two migration files with version {migration.version}"
            )
        by_version[migration.version] = migration
    return [by_version[version] for version in sorted(by_version)]
