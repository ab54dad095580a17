"""SQLite: savegame's embedded default, one file (or an in-memory database) on SQLAlchemy Core.

Only what is particular to SQLite lives here; the layout, queries and migrations are in
:mod:`savegame.storage.sql`.

Settings, and why:

* ``journal_mode=WAL``: readers never wait for the writer and a reader always sees one
  whole commit.
* ``synchronous=FULL`` by default: every commit is synced to the WAL file, so a write that
  returned survives a power cut, not only a crash of the process. ``NORMAL`` syncs at
  checkpoints only (a crash of the process loses nothing; a power cut may lose the last
  writes) and is several times faster on slow disks.
* ``BEGIN IMMEDIATE`` for writes: the write lock is taken before the session is read, so a
  writer never has to upgrade a read lock, which SQLite refuses with "database is locked"
  instead of waiting. Python's ``sqlite3`` begins transactions itself, late and deferred,
  so savegame switches that off on its connections while it holds them and issues
  ``BEGIN`` itself.
* ``secure_delete=ON``, and the log truncated after an erasure: what ``delete_session``,
  ``delete_user``, ``purge_expired`` and ``drop`` remove leaves no readable copy in the file
  (zeros in its place, in the pages that held it and in the pages it freed) nor in the
  write-ahead log, which is copied into the file and truncated to nothing once the erasure
  commits. A connection reading an older snapshot keeps the log from being truncated: the
  erasure returns all the same, and the next one, or :meth:`~SqliteStorage.close`, tries
  again.
* ``busy_timeout`` (30 seconds by default): how long a writer waits for the lock; past it
  the write raises :class:`~savegame.errors.BackendUnavailableError`, never returns None.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, make_url, text
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.engine import URL, Connection
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.expression import Executable

from savegame.errors import InvalidIdentifierError, StorageError
from savegame.storage.base import local_path, make_folder, path_text, unwritable
from savegame.storage.known import DEFAULT_BYTES
from savegame.storage.session import Mode
from savegame.storage.sql import (
    SqlDialect,
    SqlStorage,
    check_engine,
    database_url,
    made_here,
    on_conflict_update,
    shared_engine,
)
from savegame.storage.url import StorageURL
from savegame.storage.wal import CLEAR_WAIT, clear_log, erase_deleted, use_wal

_NOTHING: AbstractContextManager[None] = nullcontext()

# The primary result codes that mean "locked past the timeout" or "the file is not usable".
_CANTOPEN = 14

_UNAVAILABLE = frozenset(
    {
        5,  # SQLITE_BUSY
        6,  # SQLITE_LOCKED
        8,  # SQLITE_READONLY
        10,  # SQLITE_IOERR
        13,  # SQLITE_FULL
        14,  # SQLITE_CANTOPEN
        15,  # SQLITE_PROTOCOL
    }
)

_MAY_BE_WRITTEN = frozenset(
    {
        1034,  # SQLITE_IOERR_FSYNC
        1290,  # SQLITE_IOERR_DIR_FSYNC
        4874,  # SQLITE_IOERR_SHMSIZE
        5386,  # SQLITE_IOERR_SHMMAP
    }
)
"""The extended result codes of a failed commit whose frames may be whole in the WAL: their
sync failed, or the shared index that would have shown them to readers could not be grown."""

SYNCHRONOUS = ("FULL", "NORMAL", "EXTRA")

_NUMBER_STARTS = frozenset("-0123456789")


class SqliteDialect(SqlDialect):
    """SQLite's differences: pragmas, ``BEGIN IMMEDIATE``, ``ON CONFLICT`` and result codes."""

    title = "SQLite"
    backends = ("sqlite",)
    example = "sqlite:///app.db"
    reserved = "sqlite_"
    round_trips = False
    names_ignore_case = True

    def __init__(self, synchronous: str, busy_timeout: float, wal: bool) -> None:
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.wal = wal
        self.settings = (synchronous, busy_timeout, wal)
        self.inherited = "close" if wal else "keep"
        self.keeps_erased = wal

    def loads(self, text: str | bytes | float) -> Any:
        """The value of a JSON column's text, or the number SQLite made of it.

        The original declared its JSON columns ``JSON``, which gives them SQLite's NUMERIC
        affinity: the text of a JSON number is stored as an INTEGER or REAL (``1.0`` as 1,
        ``100000000000000000000`` as 1e20), and is read as the number it became.
        """
        if isinstance(text, (int, float)):
            return text
        return super().loads(text)

    def header_json(self, text: str) -> Any:
        """The text of a JSON number as a BLOB, which no column affinity converts, so that
        it reads back exactly from the original's columns (upgraded) as from savegame's."""
        return text.encode() if text[0] in _NUMBER_STARTS else text

    def column_names(self, conn: Connection, table: Table) -> tuple[str, ...]:
        query = text("SELECT name FROM pragma_table_info(:table)")
        return tuple(conn.execute(query, {"table": table.name}).scalars())

    def upsert(self, table: Table, keys: Sequence[str]) -> Executable:
        return on_conflict_update(insert(table), keys)

    def insert_new(self, table: Table) -> Executable:
        statement: Executable = insert(table).on_conflict_do_nothing()
        return statement

    def configure(self, conn: Any) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        if self.wal:
            use_wal(conn, self.busy_timeout)
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        erase_deleted(conn)

    def clear_erased(self, conn: Any) -> bool:
        return clear_log(conn, min(self.busy_timeout, CLEAR_WAIT))

    def begin(self, conn: Any, write: bool) -> None:
        # Explicit, so that the write lock is taken before the header is read; Python's
        # sqlite3 then begins nothing itself, whatever its isolation_level.
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def one_statement(self, conn: Any) -> AbstractContextManager[None]:
        return _NOTHING  # a SELECT outside a transaction is one by itself

    @contextmanager
    def transaction(self, conn: Connection, write: bool) -> Iterator[Connection]:
        raw: Any = conn.connection.driver_connection
        assert raw is not None
        level = raw.isolation_level
        raw.isolation_level = None
        try:
            with conn.begin():
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
                yield conn
        finally:
            if not conn.invalidated:
                raw.isolation_level = level

    def unavailable(self, error: BaseException) -> bool:
        code = getattr(error, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in _UNAVAILABLE

    def commit_may_have_landed(self, error: BaseException) -> bool:
        # No reply crosses a network: a COMMIT that failed was not made (a full disk, a
        # write refused), unless its frames were written to the WAL and what failed came
        # after, when a later opening of the file may find them whole.
        return getattr(error, "sqlite_errorcode", None) in _MAY_BE_WRITTEN

    def missing_table(self, error: BaseException) -> bool:
        # SQLite gives no error code of its own for these, only the message.
        return str(error).startswith("no such table")

    def missing_column(self, error: BaseException) -> bool:
        message = str(error)
        return message.startswith("no such column") or " has no column named " in message


def in_memory(url: URL) -> bool:
    """Whether a SQLite URL names an in-memory database."""
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


def _file_of(url: URL) -> Path | None:
    """The database file a SQLite URL names; None for memory and for ``file:`` URIs."""
    database = url.database
    if in_memory(url) or not database or database.startswith("file:") or url.query.get("uri"):
        return None
    return Path(database)


_LOOK_EVERY = 0.1
"""Seconds a read may go on using a database file that was removed or replaced: see
:meth:`SqliteStorage._elsewhere`."""

MAX_BUSY_TIMEOUT = 2_147_483
"""The longest busy timeout, in seconds: SQLite takes it in milliseconds, as a 32-bit int."""


def make_engine(url: str | URL, busy_timeout: float = 30.0) -> Engine:
    """An engine for a SQLite URL.

    A file's engine is shared by the storages of this process that name it (see
    :func:`~savegame.storage.sql.shared_engine`); an in-memory database is new each time and
    keeps one connection, which threads take in turn.
    """
    parsed = make_url(url)
    if in_memory(parsed):
        return made_here(
            create_engine(parsed, poolclass=StaticPool, connect_args={"check_same_thread": False})
        )
    return shared_engine(parsed, connect_args={"check_same_thread": False, "timeout": busy_timeout})


class SqliteStorage(SqlStorage):
    """Sessions in a table of a SQLite database.

    With none of ``db_url``, ``db_file`` and ``db_engine`` the database is in memory and
    lives as long as the storage's engine: another storage made with the same
    ``db_engine`` shares it.

    Args:
        table_name: the session table (runs go to ``<table_name>_runs``).
        db_url: a SQLAlchemy URL, ``sqlite:///relative.db`` or ``sqlite:////absolute.db``.
        db_file: the database file, ``~`` standing for the home folder; it and its folder
            are made by the first write (reads of a file that is not there find nothing and
            leave it so).
        db_engine: an engine to use; the storage does not dispose of it (but lets its pooled
            connections go when the database file is removed or replaced).
        schema_version: accepted for compatibility with the original; unused.
        auto_upgrade_schema: upgrade a table of an older layout on first write.
        mode: the storage mode.
        expire: seconds after its last write that a session expires.
        synchronous: ``"FULL"`` (a returned write survives power loss), ``"NORMAL"`` (it
            survives a crash of the process) or ``"EXTRA"``.
        busy_timeout: seconds a write waits for another writer's lock.
        cache_bytes: how many bytes the storage may remember of its recent sessions
            (:mod:`savegame.storage.known`); 0 remembers none.

    Raises:
        InvalidIdentifierError: for a table name that is not a plain identifier, a
            ``db_url`` or ``db_engine`` that is not of a SQLite database, a ``db_engine``
            that is no SQLAlchemy ``Engine`` (a URL, a connection), more than one of
            ``db_url``, ``db_file`` and ``db_engine``, or a ``db_file`` that is not a path, is
            empty, holds a NUL character or starts with the ``~user`` of an unknown user; for
            an unknown ``synchronous`` level, or a ``busy_timeout`` out of range.
    """

    def __init__(
        self,
        table_name: str,
        db_url: str | None = None,
        db_file: str | os.PathLike[str] | None = None,
        db_engine: Engine | None = None,
        schema_version: int = 1,
        auto_upgrade_schema: bool = False,
        mode: Mode | None = "agent",
        expire: int | None = None,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 30.0,
        cache_bytes: int = DEFAULT_BYTES,
    ) -> None:
        level = str(synchronous).upper()
        if level not in SYNCHRONOUS:
            raise InvalidIdentifierError(
                f"synchronous={synchronous!r} must be one of {', '.join(SYNCHRONOUS)}"
            )
        if type(busy_timeout) not in (int, float) or not 0 <= busy_timeout <= MAX_BUSY_TIMEOUT:
            raise InvalidIdentifierError(
                f"busy_timeout must be a number of seconds from 0 to {MAX_BUSY_TIMEOUT}, "
                f"not {busy_timeout!r}"
            )
        self.db_url = db_url
        places = {"db_url": db_url, "db_file": db_file, "db_engine": db_engine}
        given = [name for name, value in places.items() if value is not None]
        if len(given) > 1:
            # Each names a database: taking the first would leave db_file naming a file the
            # storage never writes.
            raise InvalidIdentifierError(
                f"{type(self).__name__} got {' and '.join(given)}: give one of them"
            )
        if db_file is not None and path_text(db_file, "db_file") == "":
            # Path("") is the current folder, which SQLite cannot open: the storage failed
            # at its first call, where JsonStorage("") is refused when made.
            raise InvalidIdentifierError(
                f"{type(self).__name__}: db_file is empty; name the database file, or give "
                "none of db_file, db_url and db_engine for a database in memory"
            )
        self.db_file = None if db_file is None else local_path(db_file, "db_file")
        if db_engine is not None:
            engine = check_engine(db_engine, type(self).__name__)
        elif db_url is not None:
            url = database_url(db_url, type(self).__name__, SqliteDialect)
            engine = make_engine(url, busy_timeout)
        elif self.db_file is not None:
            engine = make_engine(URL.create("sqlite", database=str(self.db_file)), busy_timeout)
        else:
            engine = make_engine("sqlite://")
        memory = in_memory(engine.url)
        self._file = _file_of(engine.url)
        self._look_again = 0.0
        super().__init__(
            table_name,
            engine,
            SqliteDialect(level, busy_timeout, wal=not memory),
            None,
            schema_version,
            auto_upgrade_schema,
            mode,
            expire,
            owns_engine=db_engine is None,
            serialize=memory,
            cache_bytes=cache_bytes,
        )

    def _absent(self) -> bool:
        """Whether the file is not there yet.

        Raises:
            StorageError: when the storage was closed, which the calls that find nothing
                in a file not there must say as every other call does.
        """
        self._check_open()
        # os.path: a name the file system refuses (too long) names no file, not an OSError.
        return self._file is not None and not os.path.exists(self._file)

    def _erased(self) -> None:
        if self._uncleared and self._absent():
            # Removed since: connecting to clear its log would make an empty file there.
            self._uncleared = False
            return
        super()._erased()

    def store_names(self) -> tuple[object, ...]:
        # A file by its real path, however it was named; a database in memory by its engine,
        # which alone reaches it.
        where = id(self.db_engine) if self._file is None else os.path.realpath(self._file)
        return (where, self.table_name)

    # SQLite goes on reading and writing a database file that was unlinked: a connection
    # opened before the file was removed or replaced would have writes acknowledged that no
    # other storage or process ever sees. Every write looks; reads look at most every
    # _LOOK_EVERY seconds, as looking costs a tenth of a read.

    def _opened(self, info: dict[Any, Any]) -> None:
        info.setdefault("file", self._identity())

    def _elsewhere(self, info: dict[Any, Any], writing: bool) -> bool:
        opened = info.get("file")
        if opened is None:
            return False
        now = time.monotonic()
        if not writing and now < self._look_again:
            return False
        self._look_again = now + _LOOK_EVERY
        return bool(opened != self._identity())

    def _identity(self) -> tuple[int, int] | None:
        """The device and inode of the database file; None when absent or in memory."""
        if self._file is None:
            return None
        try:
            stat = os.stat(self._file)
        except OSError:
            return None
        return (stat.st_dev, stat.st_ino)

    def _mapped(self, error: BaseException | None, invalidated: bool) -> StorageError:
        mapped = super()._mapped(error, invalidated)
        folder = None if self._file is None else self._file.parent
        cannot_open = getattr(error, "sqlite_errorcode", 0) & 0xFF == _CANTOPEN
        if cannot_open and self._file is not None and os.path.isdir(self._file):
            # SQLite says only that it cannot open it, as of a file it may not read.
            return type(mapped)(
                f"{mapped}; {str(self._file)!r} is a folder, not a database file: name a file "
                "(in it, say)"
            )
        if (
            cannot_open
            and self._file is not None
            and os.path.isfile(self._file)
            and folder is not None
            and unwritable(folder) is not None
        ):
            # The file is there and readable or not, SQLite says only that it cannot open
            # it; in WAL mode the cause is most often the folder.
            return type(mapped)(
                f"{mapped}; the folder {str(folder)!r} cannot be written to, and SQLite needs "
                f"to make {self._file.name}-wal and {self._file.name}-shm beside a database in "
                "WAL mode to open it, even to read: copy the file to a folder that can be "
                "written to"
            )
        return mapped

    def _make_tables(self, upgrade: bool) -> None:
        if self._file is not None:
            make_folder(self._file.parent)
        super()._make_tables(upgrade)

    def where(self) -> str:
        database = self.db_engine.url.database
        return repr(database) if database and not in_memory(self.db_engine.url) else "memory"


def in_memory_url(url: StorageURL) -> bool:
    """Whether a ``sqlite://`` storage URL names a database in memory (``sqlite://``,
    ``sqlite:///:memory:``), which lives as long as the process that opens it."""
    return url.path in ("", ":memory:")


def from_url(url: StorageURL) -> SqliteStorage:
    """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``sqlite://`` (in memory).

    Query parameters: ``table``, ``expire``, ``synchronous``, ``busy_timeout``,
    ``cache_bytes``.

    Raises:
        InvalidIdentifierError: for a bad table name or option value, or ``sqlite:///``
            with no path.
    """
    table = url.pop_namespace()
    expire = url.pop_int("expire")
    # The constructor checks it; open_storage names the URL in what it raises.
    synchronous = str(url.options.pop("synchronous", "FULL"))
    busy_timeout = url.pop_number("busy_timeout")
    cache_bytes = url.pop_cache_bytes()
    if url.raw.lower().startswith("sqlite:///") and url.path == "":
        # What "sqlite:///$DB" gives when DB is unset: an in-memory database would take the
        # writes and lose them when the process ends.
        raise InvalidIdentifierError(
            "sqlite:/// names no file; give its path (sqlite:///app.db), or sqlite:// for a "
            "database in memory"
        )
    path = None if in_memory_url(url) else url.path
    return SqliteStorage(
        table,
        db_file=path,
        mode=url.mode,  # type: ignore[arg-type]
        expire=expire,
        synchronous=synchronous,
        busy_timeout=30.0 if busy_timeout is None else busy_timeout,
        cache_bytes=cache_bytes,
    )
