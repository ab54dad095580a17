"""SQLite's write-ahead log, which every SQLite database of savegame uses: the SQLite
backend's and the index beside the JSON and YAML files. Without SQLAlchemy, so that the file
backends load quickly."""

from __future__ import annotations

import sqlite3
import time

_BUSY = 5


def busy(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused for a lock another connection holds (Python 3.10's sqlite3
    gives the message only)."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        return "database is locked" in str(error)
    return bool(code & 0xFF == _BUSY)


def use_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Puts the database of ``conn`` in WAL mode, waiting up to ``timeout`` seconds for the
    chance.

    The switch from a rollback journal needs the file to itself, and SQLite gives up at
    once, without its busy handler, when another connection is writing to it: connections
    opening a new file together (two processes, one of them making the tables) would
    otherwise see "database is locked". A file already in WAL mode (the usual case) answers
    the first query.
    """
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as error:
            if not busy(error) or time.monotonic() >= deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
            continue
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(
                f"the database stays in journal mode {mode!r}: its file system does not"
                " support WAL, which savegame needs"
            )
        return
