"""What the erasure tests of SQLite and of the folders' index share: a mark to look for in
the bytes on disk, and a reader of another program that keeps SQLite's log from clearing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

MARK = "forget-me-3b9d"
"""Text put in every field of the sessions erased, and looked for in the files after."""


def marked_files(folder: Path) -> list[str]:
    """The files under ``folder`` whose bytes hold :data:`MARK`."""
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and MARK.encode() in path.read_bytes()
    )


def snapshot(path: Path) -> sqlite3.Connection:
    """A connection of another program to the SQLite database at ``path``, holding a read
    snapshot (a transaction begun and read in), which keeps the log from being cleared."""
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM sessions").fetchone()
    return reader
