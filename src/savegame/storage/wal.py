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


CLEAR_WAIT = 0.1
"""Seconds :func:`clear_log` waits for other connections: long enough for savegame's own
calls, which hold a snapshot for milliseconds, short enough that an erasure never waits on a
long reader, and that other writers, whose lock it holds while it waits, barely notice."""


def erase_deleted(conn: sqlite3.Connection) -> None:
    """Makes SQLite overwrite with zeros what ``conn`` deletes: the space of removed rows in
    their pages, and whole pages it frees (the overflow pages of long values too). SQLite's
    default is a build option: many builds leave deleted content readable in the file.
    ``FAST`` would zero rows within their pages only, leaving freed pages as they were."""
    conn.execute("PRAGMA secure_delete = ON")


def clear_log(conn: sqlite3.Connection, wait: float = CLEAR_WAIT) -> bool:
    """Copies the write-ahead log of ``conn``'s database into the file and truncates it to
    nothing, so that the log keeps no image of a page as it was before an erasure; waits up
    to ``wait`` seconds for other connections. Outside a transaction only.

    Returns:
        Whether it was done: False when another connection kept it from completing (one
        reading a snapshot older than the last commit, or writing), which is no error;
        the log is cleared by a later call.

    Raises:
        sqlite3.Error: for any other failure (the disk, the file).
    """
    (timeout,) = conn.execute("PRAGMA busy_timeout").fetchone()
    conn.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
    try:
        (blocked, _, _) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.OperationalError as error:
        if not busy(error):
            raise
        return False
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout)}")
    return not blocked
