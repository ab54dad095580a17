"""What the SQLite, PostgreSQL and MySQL backends share, on SQLAlchemy Core.

Layout. A storage owns two tables, both in its schema:

``<table>``
    one *header* row per session, with the original's column names: ``session_id`` (primary
    key), one column per field of the mode's session class (the ids as indexed strings,
    ``memory`` and the ``*_data`` fields as JSON, ``created_at``/``updated_at`` as integers),
    plus savegame's ``version``, ``expires_at`` (indexed, for purges), ``run_count``,
    ``write_token`` (a random id of the write that made the row, never reused) and
    ``past_tokens`` (the tokens of the :data:`PAST_TOKENS` writes before it, newest first).
``<table>_runs``
    one row per run of the list at the mode's ``runs_path`` (``memory["runs"]``, or ``runs``
    in ``workflow_v2``), keyed by ``(session_id, position)``, with a digest of its JSON text.

``run_count`` says where the runs are: NULL means "as they are in the header" (a session
whose runs are not a list, or a row written by the original, which kept runs inline), a
number means "that many rows in ``<table>_runs``". A write sends the header and only the
runs whose digest changed, and deletes the runs past the new end, in one transaction, so a
save costs what changed, not the length of the conversation. Listings read headers only,
and so does a purge looking for stale sessions (:meth:`SqlStorage._read_stamps`).

Transactions. A write checks the version and writes in one atomic step: on a session the
storage remembers (:mod:`savegame.storage.known`) with an ``UPDATE ... WHERE write_token =
<the remembered one>``, which changes nothing when another write came in between; otherwise
after locking the session's header row (``SELECT ... FOR UPDATE``; in SQLite the whole
database, with ``BEGIN IMMEDIATE``). A session the storage has not seen is first taken for a
new one (an insert that does nothing when the row is there), while that guess keeps proving
right. Two first inserts of one session meet at the primary key and the loser runs again,
now seeing the row. A read takes the header and the runs in one snapshot: in one statement
on a server (the runs' digests aggregated into one string, and the text of only the runs
after those the reader remembers; on MySQL the header's columns packed into one JSON array,
see :meth:`SqlDialect.packed`), in one transaction in SQLite.

Execution. The statements of reads and writes of one session are built with SQLAlchemy Core
once per storage, compiled for the engine's dialect, and run on the driver's connection
taken from the engine's pool: per call, SQLAlchemy's own execution costs more than the
database does on a small session. Schema changes, listings, deletes and purges run through
SQLAlchemy. A pooled connection found dead (the server restarted, or closed it) is
discarded and the call runs again on another; a connection that cannot be made fails the
call, with :class:`~savegame.errors.BackendUnavailableError`. A write that lost its
connection while committing runs again with the same token, and finds it in the header
(or among its past tokens, when others wrote since) when the first attempt had landed, so
it is never applied twice.

Migrations. :data:`MIGRATIONS` is an ordered, append-only list. The version reached is kept
per table in ``savegame_migrations`` (in the same schema); a table written by the original,
which has no such row, is at version 1. New tables are made at the latest version. Until a
table is upgraded savegame reads it as it is and refuses to write to it (unless the storage
was made with ``auto_upgrade_schema=True``).

Errors. Every database call goes through :meth:`SqlStorage._guard`, the one place where
driver errors become :mod:`savegame.errors`, with the dialect deciding which ones mean
"the database is unreachable or locked".
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import os
import random
import re
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar
from urllib.parse import urlencode

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    inspect,
    literal_column,
    make_url,
    null,
    select,
    union_all,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection
from sqlalchemy.pool import AssertionPool, StaticPool
from sqlalchemy.schema import CreateSchema
from sqlalchemy.sql.expression import ColumnElement, Executable
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeEngine, UserDefinedType

from savegame.errors import (
    BackendUnavailableError,
    ConflictError,
    CorruptSessionError,
    InvalidIdentifierError,
    MissingDependencyError,
    SerializationError,
    StorageError,
)
from savegame.storage import codec
from savegame.storage.base import (
    HOLDING,
    Draft,
    Header,
    Record,
    Stamp,
    Still,
    Storage,
    check_seconds,
    check_stored,
    is_expired,
    once_more_on,
    with_retries,
)
from savegame.storage.known import (
    DEFAULT_BYTES,
    PAST_TOKENS,
    Known,
    KnownSessions,
    Pickle,
    RunEncoder,
    Runs,
    outcome_unknown,
    resent_write_made,
)
from savegame.storage.session import (
    MODES,
    Mode,
    ModeSpec,
    Session,
    get_path,
    set_path,
    split_runs,
)
from savegame.storage.url import StorageURL, redact

MIGRATIONS_TABLE = "savegame_migrations"
"""The table, in each schema savegame writes to, that records each table's layout version."""

RUNS_SUFFIX = "_runs"
"""What a session table's name ends in to name its runs table."""

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,57}")
_TABLE_ALLOWED = (
    "letters, digits and underscores, starting with a letter or underscore, at most 58 "
    "characters (its runs table's name adds _runs, within the 63 PostgreSQL takes)"
)

_ATTEMPTS = 8
"""Runs of a write that met another writer at the primary key, or a deadlock."""


def _pause(tries: int) -> None:
    """Waits a random while, longer after each try, before a transaction the database
    rolled back (a deadlock, two writers making one session) runs again: run again at
    once, it would meet the same transaction it met before."""
    time.sleep(random.uniform(0, 0.002 * 2**tries))


_DEAD_POOLED = 8
"""Pooled connections a call may find dead, one after the other, before it fails."""

_BATCH = 500

ANALYZE_AFTER = 500
"""How many sessions a copy or an import writes into a store before its tables' statistics
are first gathered (:meth:`SqlStorage._bulk_written`), and then each time as many
again as were written: a look-up in a table smaller than this is cheap even scanned whole."""

_STAMP_COLUMNS = ("session_id", "created_at", "updated_at", "version", "expires_at")
"""The header's columns a stamp (:meth:`SqlStorage._read_stamps`) is read from, those of
them the table has."""

_UNCHANGED = object()
"""What a read of one session gives when the store holds what the storage remembers."""

_UNPACKED = object()
"""What a read of one session gives when the server could not pack its header (see
:meth:`SqlDialect.packed`)."""

_ARRAY = json.JSONDecoder(strict=False)
"""Decodes a packed header: strings come back as the server sent them, control characters
included."""

T = TypeVar("T")
Inherited = Literal["forsake", "close", "keep"]


class JsonText(UserDefinedType[Any]):
    """A column holding JSON text that savegame serializes itself.

    savegame writes and parses the text with the dialect's ``dumps``/``loads``, whatever
    serializer an engine passed in by the caller was made with. ``spec`` is the column type
    in DDL; a dialect whose JSON type needs casts (PostgreSQL's JSONB) subclasses this.
    """

    cache_ok = True

    def __init__(self, spec: str = "TEXT") -> None:
        self.spec = spec

    def get_col_spec(self, **kw: Any) -> str:
        return self.spec


class RunDigests(FunctionElement[str]):
    """``RunDigests(digest, position)``: the digests of a session's runs, in the order of
    their positions, run together into one string (NULL for no runs). An aggregate that each
    server's module compiles for its database (``string_agg``, ``GROUP_CONCAT``)."""

    type = String()
    name = "run_digests"
    inherit_cache = True


class SqlDialect(ABC):
    """What differs between the SQL databases savegame supports; one subclass each.

    Attributes:
        title: the database's name in messages.
        read_isolation: the isolation level that makes the statements of a read through
            SQLAlchemy one snapshot (None where every transaction already is one).
        table_options: keyword arguments for each :class:`~sqlalchemy.Table`.
        names_ignore_case: whether table names that differ only in case name one table.
        round_trips: whether each statement goes to a server and back (False for an
            embedded database, where fewer statements matter less than simpler ones).
        inherited: what a process forked from one that used the engine does with the
            connections it inherited (see :func:`_after_fork`): ``"forsake"`` them unused (a
            server's, which the parent goes on using), ``"close"`` them (SQLite's: the
            child does not hold their file locks), or ``"keep"`` them (an in-memory
            database, of which the child has a copy of its own).
    """

    title: ClassVar[str] = "SQL"
    backends: ClassVar[tuple[str, ...]] = ()
    """SQLAlchemy's names of the databases of this dialect (``URL.get_backend_name()``)."""
    example: ClassVar[str] = ""
    """A URL of such a database, for messages."""
    reserved: ClassVar[str | None] = None
    """The start of the table names the database keeps for itself, in lower case."""
    settings: tuple[Any, ...] = ()
    """What :meth:`configure` sets on a connection; a connection is set up again when it differs."""
    read_isolation: ClassVar[str | None] = None
    write_isolation: ClassVar[str | None] = None
    """The isolation level of a write through SQLAlchemy on a connection of another level
    (:meth:`other_level`), where it would commit each statement of the write apart or fail
    as a serialization conflict where the row locks order writers."""
    names_ignore_case: ClassVar[bool] = False
    plans_by_statistics: ClassVar[bool] = False
    """Whether :meth:`analyze` gathers anything: where it does not, nothing calls it for a
    bulk write (see :meth:`SqlStorage._bulk_written`)."""
    table_options: ClassVar[dict[str, Any]] = {}
    round_trips: ClassVar[bool] = True
    inherited: Inherited = "forsake"
    default_port: ClassVar[int | None] = None
    """The port a server URL without one connects to: such a URL and one that spells the
    port out name one store (:meth:`ServerStorage.store_names`)."""
    needs_database: ClassVar[bool] = False
    """Whether a storage needs a database named by its URL or its ``schema`` (MySQL's
    tables are in a database, and a connection to none has no default one)."""

    locks_scanned: ClassVar[bool] = False
    """Whether a locking statement locks every row its scan reads, matching or not
    (InnoDB): statements that lock many sessions then name their primary key."""

    # -- types and serialization ----------------------------------------------------------

    def json_type(self) -> TypeEngine[Any]:
        """The type of JSON columns."""
        return JsonText("TEXT")

    def id_type(self) -> TypeEngine[Any]:
        """The type of the indexed id columns (session, user and entity ids)."""
        return String(codec.MAX_ID_LENGTH)

    def text_type(self) -> TypeEngine[Any]:
        """The type of other string fields (names, links to other sessions)."""
        return Text()

    def dumps(self, value: Any, text: str | None = None) -> str:
        """JSON text for a JSON column; ``text`` as for :func:`savegame.storage.codec.dumps`."""
        return codec.dumps(value, text)

    def loads(self, text: str | bytes) -> Any:
        """The value of a JSON column's text."""
        return codec.loads(text)

    def header_json(self, text: str) -> Any:
        """What a write binds for ``text``, the JSON of a header's JSON column."""
        return text

    # -- statements -----------------------------------------------------------------------

    @abstractmethod
    def upsert(self, table: Table, keys: Sequence[str]) -> Executable:
        """INSERT into ``table`` that updates every other column when ``keys`` exist."""

    @abstractmethod
    def insert_new(self, table: Table) -> Executable:
        """INSERT into ``table`` that inserts nothing when the primary key exists.

        Where the database has no such statement, a plain INSERT whose duplicate key
        :meth:`duplicate` recognises, and which leaves the transaction usable.
        """

    def duplicate(self, error: BaseException) -> bool:
        """Whether :meth:`insert_new` failed because the row was there."""
        return False

    def execute(self, cursor: Any, sql: str, params: Any, keyed: bool) -> None:
        """Runs a compiled statement on a driver cursor; ``keyed``: it works on one
        session's key, so that one plan serves every call (a server may keep it)."""
        cursor.execute(sql, params)

    def execute_many(self, cursor: Any, sql: str, rows: list[Any]) -> None:
        """Runs a compiled statement once for each of ``rows`` on a driver cursor."""
        cursor.executemany(sql, rows)

    def packed(self, columns: Sequence[Column[Any]]) -> ColumnElement[Any] | None:
        """One column whose value is the JSON array of ``columns``' values, in order (ids
        and texts as strings, JSON columns as their text), then an integer whose bit *i* is
        set when column *i* is NULL; for a driver that spends longer on each column of a
        result than on the value it holds. None: a read of one session fetches the header's
        columns as they are.

        A server may give NULL in place of a value, or of the array, larger than it sends
        at once; a read that finds the array NULL, or a NULL where the bits say the column
        holds a value, fetches the columns as they are.
        """
        return None

    # -- connections and transactions -----------------------------------------------------

    def configure(self, conn: Any) -> None:
        """Sets up a new DBAPI connection before its first use by savegame."""

    keeps_erased: bool = False
    """Whether the database keeps copies of removed rows that :meth:`clear_erased` clears."""

    def clear_erased(self, conn: Any) -> bool:
        """Clears, on a DBAPI connection outside a transaction, the copies of removed rows
        that the database keeps where savegame can reach them; whether that was done
        (False: another connection kept it from completing, and a later call tries again).
        """
        return True

    def other_level(self, conn: Any) -> bool:
        """Whether the DBAPI connection runs a write otherwise than in a transaction of
        :attr:`write_isolation`, as far as the driver tells without asking the server: it
        commits each statement by itself, or another level was set (an engine made with
        ``isolation_level="AUTOCOMMIT"``, or ``"SERIALIZABLE"``, sets its connections so)."""
        return False

    def begin(self, conn: Any, write: bool) -> None:
        """Starts a transaction on a DBAPI connection (by default its first statement does).

        A write transaction must take the locks that make reading the header and writing
        on it one step, also on a connection of :meth:`other_level`.
        """

    def end(self, conn: Any, commit: bool) -> None:
        """Ends the transaction on a DBAPI connection."""
        if commit:
            conn.commit()
        else:
            conn.rollback()

    def one_statement(self, conn: Any) -> AbstractContextManager[None]:
        """Around a read of one statement on a DBAPI connection, which is a snapshot by itself."""
        return _Committed(conn)

    @contextmanager
    def transaction(self, conn: Connection, write: bool) -> Iterator[Connection]:
        """A transaction through SQLAlchemy: a snapshot for reads, row locks for writes.

        Raises:
            DeadConnection: when the connection, taken from the pool, is found dead while
                its isolation level is set (a statement SQLAlchemy leaves to the driver).
        """
        level = self.read_isolation
        if write:
            raw = conn.connection.driver_connection
            level = self.write_isolation if self.other_level(raw) else None
        if level is not None:
            # SQLAlchemy sets the connection back to the engine's level when it returns.
            try:
                conn = conn.execution_options(isolation_level=level)
            except conn.dialect.loaded_dbapi.Error as exc:
                if not dead(conn.dialect, exc, conn.connection.driver_connection):
                    raise
                conn.invalidate(exc)
                raise DeadConnection(f"a pooled connection was dead: {exc}") from exc
        with conn.begin():
            yield conn

    def schema_lock(self, conn: Connection, schema: str | None) -> Any:
        """Serializes changes to the tables of ``schema`` (None: the connection's) between
        processes, inside the transaction on ``conn``; returns what
        :meth:`release_schema_lock` needs (None: nothing outlives the transaction)."""

    def release_schema_lock(self, conn: Connection, taken: Any) -> None:
        """Releases what :meth:`schema_lock` took (``taken``: what it returned), where it
        outlives the transaction."""

    def adopt_id_types(self, conn: Connection, table: Table) -> None:
        """Gives the id columns of ``table``, a table written by the original, the type
        savegame makes them with, where the original's compares or orders ids otherwise
        (MySQL's collations fold case and ignore trailing spaces; PostgreSQL's database
        collation orders them by locale, not code point). Called by every upgrade: it
        changes only what is not so yet."""

    def snapshot(self, conn: Connection) -> None:
        """Starts the snapshot of the read transaction on ``conn`` now, where the database
        would start it only at the first read of a table's rows, after the layout of the
        table has been looked at: an upgrade committed in between would give rows of one
        layout read as the other."""

    def column_names(self, conn: Connection, table: Table) -> tuple[str, ...] | None:
        """The names of the columns of ``table`` in order, asked in one query (none when
        there is no such table); None where the database has no such query.

        Reads of a table of an older layout ask it on every call, to see an upgrade made by
        another process: SQLAlchemy's inspection takes a dozen statements.
        """
        return None

    def analyze(self, conn: Connection, table: Table) -> None:
        """Gathers the statistics of ``table``, filled in bulk within the transaction of
        ``conn``, where the database plans queries by them and would otherwise wait for a
        background task to gather them."""

    def create_schema(self, conn: Connection, schema: str | None) -> None:
        """Makes ``schema`` when it is missing (None: the connection's default is used).

        Looked for first: ``CREATE SCHEMA IF NOT EXISTS`` (``CREATE DATABASE`` in MySQL)
        needs the right to make one even where it exists, which a role allowed only to use
        a schema that another role made and owns does not have.
        """
        if schema is not None and not inspect(conn).has_schema(schema):
            conn.execute(CreateSchema(schema, if_not_exists=True))

    # -- errors ---------------------------------------------------------------------------

    def unavailable(self, error: BaseException) -> bool:
        """Whether a driver error means the database is unreachable or stayed locked."""
        return False

    def commit_may_have_landed(self, error: BaseException) -> bool:
        """Whether a commit that failed with the driver's ``error`` may have been made: on a
        server, one whose connection died before the reply came."""
        return self.unavailable(error)

    def missing_table(self, error: BaseException) -> bool:
        """Whether a driver error says a table the statement names does not exist."""
        return False

    def missing_column(self, error: BaseException) -> bool:
        """Whether a driver error says a column the statement names does not exist."""
        return False

    def table_changed(self, error: BaseException) -> bool:
        """Whether a driver error says a table was altered since the transaction's snapshot
        was taken (MySQL, after a statement that rebuilt it): the call may run again."""
        return False

    def refused(self, error: BaseException, dbapi: Any) -> bool:
        """Whether a driver error means the database refused a value savegame sent (bad
        input: :class:`~savegame.errors.SerializationError`). ``dbapi`` is the driver's
        module."""
        return isinstance(error, dbapi.DataError)

    def retryable(self, error: BaseException, dbapi: Any) -> bool:
        """Whether a write that failed with the driver's ``error`` may simply run again.

        Two first inserts of one session meet at the primary key; the one that loses sees
        the row when it runs again. ``dbapi`` is the driver's module.
        """
        return isinstance(error, dbapi.IntegrityError)


class _Committed:
    """Commits a DBAPI connection when its block ends without an error (a class rather
    than a generator-based context manager: it wraps every read of a server)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, trace: Any) -> None:
        if exc is None:
            self._conn.commit()


class _Cursor:
    """A driver cursor of ``conn``, closed when the block ends, also by an error.

    Left open, a cursor that an error's traceback holds is let go by the garbage collector,
    in whatever thread collects it; SQLite finalizes its statement there, which waits for
    the connection's mutex. Another thread may by then hold that connection, busy-waiting
    inside a statement for a lock the collecting thread's own transaction holds: both wait
    the whole busy timeout, and "database is locked" reaches the caller.

    A class rather than a generator-based context manager, which costs a microsecond more
    on every call.
    """

    __slots__ = ("_cursor",)

    def __init__(self, conn: Any) -> None:
        self._cursor = conn.cursor()

    def __enter__(self) -> Any:
        return self._cursor

    def __exit__(self, kind: Any, exc: BaseException | None, trace: Any) -> None:
        self._cursor.close()


def on_conflict_update(statement: Any, keys: Sequence[str]) -> Executable:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE`` of every other column (SQLite, PostgreSQL).

    ``statement`` is the dialect's own ``insert(table)``.
    """
    table = statement.table
    updated: Executable = statement.on_conflict_do_update(
        index_elements=list(keys),
        set_={c.name: statement.excluded[c.name] for c in table.c if c.name not in keys},
    )
    return updated


@dataclass(frozen=True)
class Migration:
    """One step of :data:`MIGRATIONS`: brings a table from ``version - 1`` to ``version``."""

    version: int
    description: str
    apply: Callable[[SqlStorage, Connection], None]


@dataclass(frozen=True)
class _Layout:
    """What a storage knows about its table: the layout version and the columns it has;
    ``recorded``: whether ``savegame_migrations`` says so."""

    version: int
    columns: frozenset[str]
    recorded: bool = True


_MISSING = _Layout(0, frozenset())
ORIGINAL_VERSION = 1
"""The layout version of a table written by the original: runs inline, no savegame columns."""


@dataclass(frozen=True)
class Tables:
    """The tables of one storage, with what the code needs to know about their columns."""

    header: Table
    runs: Table
    migrations: Table
    json_columns: frozenset[str]


TOKEN_WIDTH = 16
"""Characters of a write token: 64 random bits in hex."""


_BUILT: dict[tuple[Any, ...], Any] = {}
_BUILT_LOCK = threading.Lock()
_BUILT_MAX = 256
"""Table shapes kept by :func:`_built`: the oldest are made again when more are asked for."""


def _built(key: tuple[Any, ...], make: Callable[[], T]) -> T:
    """What ``make`` returns, made once per ``key`` in this process and shared after.

    Building a storage's tables and compiling its statements costs milliseconds, more than
    a hundred reads: an application that opens a storage per request must not pay it on
    each. The objects shared are never changed after they are made.
    """
    with _BUILT_LOCK:
        found = _BUILT.get(key)
    if found is None:
        found = make()
        with _BUILT_LOCK:
            found = _BUILT.setdefault(key, found)
            if len(_BUILT) > _BUILT_MAX:
                del _BUILT[next(iter(_BUILT))]
    made: T = found
    return made


_NAME_LIMIT = 63
"""The longest identifier PostgreSQL keeps (MySQL's is 64)."""


def _needed(spec: ModeSpec) -> tuple[str, str, str]:
    """The columns every table of ``spec``'s mode has, the original's included."""
    return ("session_id", spec.runs_path[0], spec.entity_field)


def _modes_held(names: set[str]) -> list[str]:
    """The modes whose every table has the columns ``names`` has (see :func:`_needed`)."""
    return [mode for mode, spec in MODES.items() if names >= set(_needed(spec))]


def _index_name(name: str) -> str:
    """``name``, or for a long table's index a name cut to fit :data:`_NAME_LIMIT`, ending
    in a digest of the whole name so that two long tables' indexes never share one."""
    if len(name) <= _NAME_LIMIT:
        return name
    return f"{name[: _NAME_LIMIT - 9]}_{hashlib.blake2b(name.encode(), digest_size=4).hexdigest()}"


def build_tables(spec: ModeSpec, dialect: SqlDialect, name: str, schema: str | None) -> Tables:
    """The tables of a storage, derived from the fields of the mode's session class (made
    once per mode, dialect, name and schema in this process)."""
    key = ("tables", spec.mode, type(dialect), name, schema)
    return _built(key, lambda: _new_tables(spec, dialect, name, schema))


def _new_tables(spec: ModeSpec, dialect: SqlDialect, name: str, schema: str | None) -> Tables:
    metadata = MetaData(schema=schema)
    indexed = {"user_id", spec.entity_field}
    json_columns: set[str] = set()
    columns: list[Column[Any]] = []
    indexes: list[Index] = []
    for field, kind in spec.kinds.items():
        if field == "session_id":
            columns.append(Column(field, dialect.id_type(), primary_key=True))
        elif kind is str:
            id_like = field in indexed
            column = Column(field, dialect.id_type() if id_like else dialect.text_type())
            columns.append(column)
            if id_like:
                # Named here: SQLAlchemy would cut a long table's index name to end in 4 hex
                # digits of a digest, which two long names in one schema may share.
                indexes.append(Index(_index_name(f"ix_{name}_{field}"), column))
        elif kind is int:
            columns.append(Column(field, BigInteger))
        else:
            json_columns.add(field)
            columns.append(Column(field, dialect.json_type()))
    expires = Column("expires_at", BigInteger)
    columns.append(expires)
    columns.append(Column("run_count", Integer))
    columns.append(Column("write_token", String(TOKEN_WIDTH)))
    columns.append(Column("past_tokens", String(TOKEN_WIDTH * PAST_TOKENS)))
    # Only sessions that expire are indexed by expiry, where the database can say so: a
    # session without one costs no index entry.
    has_expiry = expires.isnot(None)
    expiry = Index(
        _index_name(f"ix_{name}_expires_at"),
        expires,
        sqlite_where=has_expiry,
        postgresql_where=has_expiry,
    )
    header = Table(name, metadata, *columns, *indexes, expiry, **dialect.table_options)
    runs = Table(
        f"{name}{RUNS_SUFFIX}",
        metadata,
        Column("session_id", dialect.id_type(), primary_key=True),
        Column("position", Integer, primary_key=True, autoincrement=False),
        Column("digest", String(32), nullable=False),
        Column("run", dialect.json_type()),
        **dialect.table_options,
    )
    migrations = Table(
        MIGRATIONS_TABLE,
        metadata,
        Column("table_name", String(64), primary_key=True),
        Column("version", Integer, nullable=False),
        **dialect.table_options,
    )
    return Tables(header, runs, migrations, frozenset(json_columns))


_ENGINE_LOCKS: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()
_ENGINE_LOCKS_GUARD = threading.Lock()


def engine_lock(engine: Engine) -> threading.RLock:
    """One lock per engine, for engines whose single connection threads must take in turn."""
    with _ENGINE_LOCKS_GUARD:
        lock = _ENGINE_LOCKS.get(engine)
        if lock is None:
            lock = _ENGINE_LOCKS[engine] = threading.RLock()
        return lock


CONNECT_TIMEOUT = 5
"""Seconds a server storage waits for a connection, unless told otherwise."""


def database_url(db_url: str | URL, storage: str, dialect: type[SqlDialect]) -> URL:
    """``db_url`` parsed, for a storage of class ``storage`` on a database of ``dialect``.

    A password holding an ``@`` that is not escaped ends early, at that ``@``: the rest of
    it is read as the host and port, which the driver's error would then quote. Such a URL
    is refused without quoting it, its password shown as ``***``.

    Raises:
        InvalidIdentifierError: for a string SQLAlchemy cannot read as a URL (a bare file
            name, say), one whose host holds an ``@`` or whose port is not from 1 to 65535,
            or the URL of another kind of database.
    """
    shown = redact(str(db_url))
    escape = "an '@' in a password must be written %40"
    try:
        url = make_url(db_url)
    except sa_exc.ArgumentError:
        raise InvalidIdentifierError(
            f"{storage}: db_url {shown!r} is not a database URL; give one like {dialect.example}"
        ) from None
    except ValueError:
        # A port that is not a number, quoted by the error: maybe the end of a password.
        raise InvalidIdentifierError(
            f"{storage}: db_url {shown!r} is not a database URL: its port is not a number "
            f"({escape})"
        ) from None
    if "@" in (url.host or ""):
        raise InvalidIdentifierError(
            f"{storage}: the host of db_url {shown!r} holds an '@'; {escape}"
        )
    if url.port is not None and not 1 <= url.port <= 65535:
        # SQLAlchemy takes port 0 for the default one, and the drivers refuse the others
        # only at the first connection, as a server that cannot be reached.
        raise InvalidIdentifierError(
            f"{storage}: the port of db_url {shown!r} must be from 1 to 65535"
        )
    check_database(url, storage, dialect, "db_url")
    return url


def check_database(url: URL, storage: str, dialect: type[SqlDialect], given: str) -> None:
    """Refuses a ``url`` (given as ``given``: ``db_url`` or ``db_engine``) of a database that
    is not of ``dialect``: a storage would run its statements on it, or fail on its first
    call with the driver's own error.

    Raises:
        InvalidIdentifierError: naming the database ``url`` is of.
    """
    backend = url.get_backend_name()
    if backend not in dialect.backends:
        shown = redact(url.render_as_string(hide_password=True))
        raise InvalidIdentifierError(
            f"{storage} keeps sessions in {dialect.title}, and its {given} names a {backend} "
            f"database ({shown}): give a URL like {dialect.example}, or open any URL with "
            "savegame.open_storage"
        )


def check_engine(engine: object, storage: str) -> Engine:
    """``engine``, given as ``db_engine``, once it is a SQLAlchemy :class:`Engine`: a URL or
    a connection given there failed on its first attribute, with an ``AttributeError``.

    Raises:
        InvalidIdentifierError: naming what was given instead (and, for a string, that a URL
            goes to ``db_url``).
    """
    if not isinstance(engine, Engine):
        hint = "; give a URL as db_url=" if isinstance(engine, str) else ""
        raise InvalidIdentifierError(
            f"{storage}: db_engine must be a SQLAlchemy Engine, not {type(engine).__name__}{hint}"
        )
    return engine


def check_driver(url: URL, storage: str, driver: str) -> None:
    """Refuses a ``url`` that names another driver than ``driver``, the one savegame talks
    to the database through (``postgresql+psycopg2://``, ``mysql+mysqldb://``): SQLAlchemy
    would import that driver, and fail with its ``ModuleNotFoundError`` where it is not
    installed, or run savegame's statements through a driver they were not written for.

    Raises:
        InvalidIdentifierError: naming the driver, and the URL to write instead.
    """
    named = url.get_driver_name() if "+" in url.drivername else driver
    if named != driver:
        base = url.get_backend_name()
        shown = redact(url.render_as_string(hide_password=True))
        raise InvalidIdentifierError(
            f"{storage}: db_url {shown!r} names the driver {named!r}; savegame talks to "
            f"{base} through {driver} only: write {base}+{driver}:// (or {base}://)"
        )


def server_engine(
    db_url: URL,
    driver: str,
    package: str,
    extra: str,
    prepare: Callable[[Engine], None] | None = None,
    **options: Any,
) -> Engine:
    """A shared engine for a database server, with ``driver`` unless the URL names one;
    ``prepare`` is called with it once it is made (not when it is shared).

    A pooled connection that the server closed, or lost in a restart, costs a reconnect,
    not an error (see the module docstring); no connection is checked before each use.

    Raises:
        MissingDependencyError: when the driver's package is not installed.
    """
    try:
        importlib.import_module(package)
    except ImportError as exc:
        raise MissingDependencyError(package, extra) from exc
    url = db_url
    base = {"postgres": "postgresql"}.get(url.drivername, url.drivername)
    if "+" not in base:
        url = url.set(drivername=f"{base}+{driver}")
    return shared_engine(url, prepare, **options)


_SHARED: dict[tuple[str, str], list[Any]] = {}
_SHARED_LOCK = threading.Lock()


def shared_engine(
    url: URL, prepare: Callable[[Engine], None] | None = None, **options: Any
) -> Engine:
    """One engine per URL and options in this process, so that storages share a pool;
    ``prepare`` is called with a new one before it is shared.

    A server allows a limited number of connections; an application that opens a storage
    per mode, or per request, would otherwise keep a pool of idle connections for each.
    Give it back with :func:`release_engine`.
    """
    # Not the URL rendered as a string: that encodes the database name to UTF-8, which a
    # path that is not UTF-8 (``caf\udce9.db``, as Python reads its bytes) cannot be.
    key = (repr(tuple(url)), repr(sorted(options.items())))
    with _SHARED_LOCK:
        entry = _SHARED.get(key)
        if entry is None:
            engine = made_here(create_engine(url, **options))
            if prepare is not None:
                prepare(engine)
            entry = _SHARED[key] = [engine, 0]
        entry[1] += 1
        shared: Engine = entry[0]
        return shared


def release_engine(engine: Engine) -> None:
    """Gives back an engine of :func:`shared_engine`; the last user disposes of it."""
    with _SHARED_LOCK:
        for key, entry in _SHARED.items():
            if entry[0] is engine:
                entry[1] -= 1
                if entry[1] > 0:
                    return
                del _SHARED[key]
                break
    engine.dispose()


def server_db_url(url: StorageURL) -> str:
    """The database URL of a storage URL: its query options savegame did not take, kept,
    those given more than once (:data:`~savegame.storage.url.REPEATABLE`) in their order."""
    rest = [
        (name, str(each))
        for name, value in url.options.items()
        for each in (value if isinstance(value, list) else [value])
    ]
    return url.raw + ("?" + urlencode(rest) if rest else "")


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


_DIGEST_WIDTH = len(_digest(""))


def _same_type(a: Any, b: Any) -> bool:
    return type(a) is type(b)


def _text(value: Any) -> Any:
    """A value read from the driver, with ids that come as UTF-8 bytes (MySQL) decoded."""
    return value.decode("utf-8") if type(value) is bytes else value


class _Raw(NamedTuple):
    """A statement compiled once for the engine's dialect, run on the driver's connection."""

    sql: str
    order: tuple[str, ...] | None
    """The names of the parameters in order, for drivers that take them by position."""
    dialect: SqlDialect
    keyed: bool
    """Whether the statement works on one session's key (see :meth:`SqlDialect.execute`)."""

    @classmethod
    def of(
        cls,
        statement: Any,
        dialect: SqlDialect,
        engine_dialect: Any,
        columns: Sequence[str] | None = None,
        keyed: bool = True,
    ) -> _Raw:
        """``statement`` compiled; ``columns``: those an INSERT or UPDATE sets, by name."""
        compiled = statement.compile(dialect=engine_dialect, column_keys=columns)
        order = tuple(compiled.positiontup or ()) if compiled.positional else None
        return cls(compiled.string, order, dialect, keyed)

    def params(self, values: Mapping[str, Any]) -> Any:
        """What the driver takes for ``values``."""
        return values if self.order is None else tuple(map(values.__getitem__, self.order))

    def run(self, cursor: Any, values: Mapping[str, Any]) -> Any:
        self.dialect.execute(cursor, self.sql, self.params(values), self.keyed)
        return cursor

    def run_many(self, cursor: Any, rows: list[dict[str, Any]]) -> None:
        self.dialect.execute_many(cursor, self.sql, [self.params(row) for row in rows])


def _listing_query(
    header: Table, extra: Sequence[Any], filters: Sequence[str], live: bool, limited: bool
) -> Any:
    """The ids (and ``extra`` columns) of the sessions whose columns in ``filters`` equal the
    parameters of those names, newest first, ties by id; ``live``: only those not expired
    at ``:now``; ``limited``: at most ``:limit``, from ``:offset``."""
    query = select(header.c.session_id, *extra)
    for name in filters:
        query = query.where(header.c[name] == bindparam(name))
    if live:
        expires = header.c.expires_at
        query = query.where(expires.is_(None) | (expires > bindparam("now")))
    query = query.order_by(
        func.coalesce(header.c.created_at, literal_column("0")).desc(), header.c.session_id
    )
    if limited:
        # An explicit offset: SQLite renders one with the limit anyway.
        count = Integer()
        query = query.limit(bindparam("limit", type_=count))
        query = query.offset(bindparam("offset", type_=count))
    return query


class _Statements:
    """The statements of the hot paths, built once so that each call only binds values.

    Those the storage runs on the driver's connection are compiled when it first connects
    (a dialect may render them differently by server version).
    """

    def __init__(
        self, tables: Tables, dialect: SqlDialect, engine_dialect: Any, indexed: Sequence[str]
    ) -> None:
        header, runs = tables.header, tables.runs
        sid: Any = bindparam("sid")
        ids: Any = bindparam("ids", expanding=True)
        names = [c.name for c in header.c]
        # past_tokens is set from its own old value (see :meth:`update`).
        written = [n for n in names if n not in ("session_id", "past_tokens")]
        run_columns = ["session_id", "position", "digest", "run"]
        self.header_names = names
        # Through SQLAlchemy: reads of many sessions, and of tables of an older layout.
        self.headers = select(header).where(header.c.session_id.in_(ids))
        self.runs = (
            select(runs.c.session_id, runs.c.run, runs.c.digest)
            .where(runs.c.session_id.in_(ids))
            .order_by(runs.c.session_id, runs.c.position)
        )
        self.tokens = select(header.c.session_id, header.c.write_token).where(
            header.c.session_id.in_(ids)
        )

        # On the driver's connection.
        def compile_(
            statement: Any, columns: Sequence[str] | None = None, keyed: bool = True
        ) -> _Raw:
            return _Raw.of(statement, dialect, engine_dialect, columns, keyed)

        self.lock_header = compile_(
            select(
                header.c.version,
                header.c.created_at,
                header.c.write_token,
                header.c.past_tokens,
                *(header.c[name] for name in indexed),
            )
            .where(header.c.session_id == sid)
            .with_for_update(),
        )
        self.insert_header = compile_(header.insert(), names)
        self.insert_new = compile_(dialect.insert_new(header), names)
        self.indexed = indexed
        self._written = written
        self._header = header
        self._compile = compile_
        self._updates: dict[tuple[frozenset[str], bool], _Raw] = {}
        self._listings: dict[tuple[tuple[str, ...], bool, bool], _Raw] = {}
        # A run set to NULL outside savegame comes with no digest, so that a write which
        # reads the digests never takes it for stored (see SqlStorage._stored_digests).
        self.digests = compile_(
            select(runs.c.position, case((runs.c.run.is_(None), null()), else_=runs.c.digest))
            .where(runs.c.session_id == sid)
            .order_by(runs.c.position)
        )
        self.upsert_run = compile_(dialect.upsert(runs, ("session_id", "position")), run_columns)
        self.cut_runs = compile_(
            delete(runs).where(runs.c.session_id == sid, runs.c.position >= bindparam("count")),
        )
        # The token alone, to find a remembered session unchanged.
        self.token_of = compile_(select(header.c.write_token).where(header.c.session_id == sid))
        # The reads of one session fetch the text of the runs from position :kept on: the
        # reader remembers those before, and checks them by their digests.
        kept: Any = bindparam("kept", type_=Integer())
        # On a server, in one statement, so in one snapshot: the header (at place -1), the
        # digests of all the runs run together (at -2: one row, not one a run, each of
        # which would carry every header column), and the runs from :kept on. Unordered:
        # sorting the union would cost the server a temporary table.
        # Where the dialect packs the header's columns into one (:meth:`SqlDialect.packed`),
        # the union has four: the packed header, run, digest and place.
        packed = dialect.packed(list(header.c))
        columns: list[Any] = list(header.c)
        nulls = [null().label(c.name) for c in header.c]
        if packed is not None:
            columns, nulls = [packed.label("head")], [null().label("head")]
        self.packed = packed is not None
        head = select(
            *columns,
            null().label("run"),
            null().label("digest"),
            literal_column("-1").label("place"),
        ).where(header.c.session_id == sid)
        digests = select(
            *nulls,
            null().label("run"),
            RunDigests(runs.c.digest, runs.c.position).label("digest"),
            literal_column("-2").label("place"),
        ).where(runs.c.session_id == sid)
        rest = select(
            *nulls, runs.c.run, null().label("digest"), runs.c.position.label("place")
        ).where(runs.c.session_id == sid, runs.c.position >= kept)
        self.read_one = compile_(union_all(head, digests, rest)) if dialect.round_trips else None
        # In an embedded database, where statements cost no round trip: header and runs in
        # a transaction, every digest with the text of the runs from :kept on.
        text = case((runs.c.position >= kept, runs.c.run)).label("run")
        self.header_of = compile_(select(header).where(header.c.session_id == sid))
        self.runs_of = compile_(
            select(text, runs.c.digest).where(runs.c.session_id == sid).order_by(runs.c.position),
        )

    def listing(self, filters: tuple[str, ...], live: bool, limited: bool) -> _Raw:
        """:func:`_listing_query` of the ids and tokens, compiled once for each shape."""
        key = (filters, live, limited)
        statement = self._listings.get(key)
        if statement is None:
            header = self._header
            query = _listing_query(header, [header.c.write_token], filters, live, limited)
            statement = self._listings[key] = self._compile(query, keyed=False)
        return statement

    def update(self, changed: frozenset[str], on_token: bool) -> _Raw:
        """The UPDATE of a header that sets the indexed columns in ``changed`` and every
        other column; ``on_token``: only while the row carries the token ``:known``.

        ``past_tokens`` becomes ``:on`` (the token the write replaces) followed by the past
        tokens it had, cut to :data:`PAST_TOKENS`: computed from its own old value only, so
        the result is the same where SET clauses see the values set before them (MySQL).

        Setting an indexed column to the value it has still rewrites its index entry,
        which in SQLite costs more than the rest of the write.
        """
        key = (changed, on_token)
        statement = self._updates.get(key)
        if statement is None:
            header = self._header
            match = header.c.session_id == bindparam("sid")
            if on_token:
                match = match & (header.c.write_token == bindparam("known"))
            columns = [n for n in self._written if n not in self.indexed or n in changed]
            # Literals, not bound values: the compiled statement takes only named values.
            empty: Any = literal_column("''")
            width: Any = literal_column(str(TOKEN_WIDTH * PAST_TOKENS))
            past = bindparam("on", type_=String()) + func.coalesce(header.c.past_tokens, empty)
            kept = func.substr(past, literal_column("1"), width)
            query = update(header).where(match).values(past_tokens=kept)
            statement = self._compile(query, columns)
            self._updates[key] = statement
        return statement


def dead(engine_dialect: Any, error: BaseException, raw: Any) -> bool:
    """Whether ``error``, raised on the driver's connection ``raw``, says it is dead."""
    return isinstance(error, engine_dialect.loaded_dbapi.Error) and bool(
        engine_dialect.is_disconnect(error, raw, None)
    )


class DeadConnection(BackendUnavailableError):
    """A pooled connection found dead where SQLAlchemy does not look (while savegame sets it
    up); it has been discarded, and the call may run again on another."""


class _TableGone(StorageError):
    """The table was dropped by another storage or process since this one last saw it, or
    the database removed or replaced."""


_again_if_dropped = once_more_on(_TableGone)
"""A method of a :class:`SqlStorage`, run once more when it met the table dropped behind
this storage's back: it then sees the table as missing, as a storage just opened would (a
read finds nothing, a write makes the table again)."""


class _Guard:
    """Turns the errors of SQLAlchemy and the driver into savegame's, raised ``from`` them.

    A class rather than a generator-based context manager: it wraps every call.
    """

    __slots__ = ("_storage",)

    def __init__(self, storage: SqlStorage) -> None:
        self._storage = storage

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, trace: Any) -> None:
        if exc is None or isinstance(exc, StorageError):
            return
        if isinstance(exc, AssertionError) and isinstance(exc.__context__, KeyboardInterrupt):
            # SQLAlchemy checks in a finally that a commit it began has ended, which one
            # cut short by Ctrl-C has not: the interrupt is what the caller must get.
            raise exc.__context__
        mapped = self._storage._translated(exc)
        if mapped is not None:
            raise mapped from exc


class _Write:
    """One write, as its attempts share it: what to write, on what, its token, and the
    record its last attempt stamped."""

    __slots__ = (
        "committed_on",
        "draft",
        "expected",
        "known",
        "now",
        "on",
        "preserve",
        "record",
        "superseded",
        "token",
    )

    def __init__(
        self, draft: Draft, known: Known | None, expected: int | None, now: int, preserve: bool
    ) -> None:
        self.draft = draft
        self.known = known
        self.expected = expected
        self.now = now
        self.preserve = preserve
        # 64 random bits: ``random`` is seeded from the OS, and again in a forked child.
        self.token = f"{random.getrandbits(64):016x}"
        self.record: Record | None = None
        self.on = ""
        """The stored token the last attempt wrote on ('': it made the session)."""
        self.committed_on: str | None = None
        """Set when an attempt sent its commit: the token it wrote on. Its connection may
        have died after the database committed and before it said so."""
        self.superseded = False
        """Whether the write was found made, and other writes made after it."""


class _Spare:
    """One pooled connection of an engine kept out between calls, for the next call of any
    storage on that engine: taking a connection from the pool and giving it back costs more
    than a small read. One per engine, so that storages made in numbers (one per request,
    say) never hold more connections than the pool would have lent them.

    Only on engines savegame made (:func:`made_here`): an engine the application passes in
    is the application's, whose pool may hold a single connection, which the application
    and savegame's calls through SQLAlchemy would then wait for in vain.

    ``inherited`` is what a forked child does with the engine's connections (see
    :attr:`SqlDialect.inherited`), on every engine; ``keeps``: whether the engine is one
    savegame made, whose connection is kept."""

    __slots__ = ("_fairy", "_lock", "inherited", "keeps")

    def __init__(self, inherited: Inherited, keeps: bool) -> None:
        self._lock = threading.Lock()
        self._fairy: Any = None
        self.inherited = inherited
        self.keeps = keeps

    def take(self) -> Any:
        """The kept connection (None when there is none), which is no longer kept."""
        with self._lock:
            fairy, self._fairy = self._fairy, None
        return fairy

    def keep(self, fairy: Any, kept: list[bool]) -> None:
        """Keeps ``fairy`` for the next call, unless one is kept already (or the engine
        is the application's); sets ``kept[0]`` when it does, in the same statement, so
        that Ctrl-C cannot land between the two (the call would give the connection back
        to the pool as well)."""
        with self._lock:
            if self._fairy is None and self.keeps:
                self._fairy, kept[0] = fairy, True

    def close(self, *_: Any) -> None:
        """Closes the kept connection (the engine is being disposed of)."""
        fairy = self.take()
        if fairy is not None:
            fairy.invalidate()

    def after_fork(self, engine: Engine) -> None:
        """In a child just forked: lets go of the connections of ``engine`` made by the
        parent, so that the child's calls make their own (see :func:`_after_fork`)."""
        self._lock = threading.Lock()  # another thread of the parent may have held it
        if self.inherited == "keep":
            return
        fairy, self._fairy = self._fairy, None
        if fairy is not None:
            if self.inherited == "close":
                fairy.invalidate()
            else:
                # Out of the pool, it is never given back, so never rolled back; a server
                # driver's connection collected in a child does not end the session.
                fairy.detach()
        engine.dispose(close=self.inherited == "close")


_SPARES: weakref.WeakKeyDictionary[Engine, _Spare] = weakref.WeakKeyDictionary()
_SPARES_GUARD = threading.Lock()
_MADE: weakref.WeakSet[Engine] = weakref.WeakSet()


def made_here(engine: Engine) -> Engine:
    """``engine``, noted as one savegame made, on which storages keep a spare connection
    (see :class:`_Spare`)."""
    with _SPARES_GUARD:
        _MADE.add(engine)
    return engine


def _spare_of(engine: Engine, inherited: Inherited) -> _Spare:
    with _SPARES_GUARD:
        spare = _SPARES.get(engine)
        if spare is None:
            spare = _SPARES[engine] = _Spare(inherited, engine in _MADE)
            event.listen(engine, "engine_disposed", spare.close)
        return spare


def _after_fork() -> None:
    """Runs in the child of every ``os.fork()`` of a process that imported this module.

    A child that went on using the connections it inherited would share each with its
    parent: two processes writing requests on one socket and reading each other's replies
    (a read given another session's rows, a commit ending the other's transaction), and, in
    SQLite, a connection whose file locks stayed with the parent: the parent, closing its
    own, took the database for unused and removed the write-ahead log that held the child's
    acknowledged writes. So every engine a storage used gets a new pool in the child, and
    the child's calls connect anew. SQLAlchemy's own advice for a pool in a forked child
    (``engine.dispose(close=False)``), extended to the connection savegame keeps out of it.
    """
    global _SPARES_GUARD, _SHARED_LOCK, _ENGINE_LOCKS_GUARD
    _SPARES_GUARD, _SHARED_LOCK = threading.Lock(), threading.Lock()
    _ENGINE_LOCKS_GUARD = threading.Lock()
    for engine, spare in list(_SPARES.items()):
        spare.after_fork(engine)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class SqlStorage(Storage):
    """A storage in one table (plus its runs table) of a SQL database.

    Subclasses make the engine and pick the dialect; everything else is here.

    Args:
        table_name: the session table; letters, digits and underscores, at most 58
            characters (the runs table is named ``<table_name>_runs``).
        engine: the SQLAlchemy engine.
        dialect: the database's differences.
        schema: the schema (PostgreSQL) or database (MySQL) of the tables; None for the
            connection's default.
        schema_version: accepted for compatibility with the original; savegame keeps its
            own layout version in the database.
        auto_upgrade_schema: upgrade a table of an older layout on first write instead of
            refusing to write to it.
        mode: the storage mode.
        expire: seconds after its last write that a session expires.
        owns_engine: whether :meth:`close` disposes of the engine.
        serialize: whether the engine has one connection that threads must take in turn
            (also taken so on an engine whose pool is a ``StaticPool`` or ``AssertionPool``).
        cache_bytes: how many bytes of runs the storage may remember of its recent
            sessions (:mod:`savegame.storage.known`); 0 remembers none.
    """

    capabilities = frozenset({"persistent", "processes", "key_order", "cache_bytes"})

    def __init__(
        self,
        table_name: str,
        engine: Engine,
        dialect: SqlDialect,
        schema: str | None = None,
        schema_version: int = 1,
        auto_upgrade_schema: bool = False,
        mode: Mode | None = "agent",
        expire: int | None = None,
        *,
        owns_engine: bool = True,
        serialize: bool = False,
        cache_bytes: int = DEFAULT_BYTES,
    ) -> None:
        super().__init__(mode, expire)
        check_database(engine.url, type(self).__name__, type(dialect), "db_engine")
        self.table_name = codec.check_name(table_name, "table name", _TABLE_NAME, _TABLE_ALLOWED)
        folded = table_name.lower()
        keeper = "savegame" if folded == MIGRATIONS_TABLE else None
        if dialect.reserved is not None and folded.startswith(dialect.reserved):
            keeper = dialect.title
        if keeper is not None:
            raise InvalidIdentifierError(
                f"table name {table_name!r} is not allowed: {keeper} keeps tables of that name "
                "for itself; give the sessions' table another name"
            )
        options = engine.get_execution_options()
        # An engine's schema_translate_map would send only the statements SQLAlchemy runs
        # to the schema it names, those savegame runs on the driver going to ``schema``.
        translate = options.get("schema_translate_map") or {}
        schema = translate.get(schema, schema)
        self.schema = None if schema is None else codec.check_name(schema, "schema name")
        self.schema_version = schema_version
        self.auto_upgrade_schema = auto_upgrade_schema
        self.db_engine = engine
        self.dialect = dialect
        self._owns_engine = owns_engine
        self._streams = bool(options.get("stream_results") or options.get("yield_per"))
        self._closed = False
        self._uncleared = False
        # A StaticPool lends its one connection to every thread at once, an AssertionPool
        # refuses a second borrower: the application's engine of such a pool is taken in
        # turn, as an in-memory SQLite database is.
        one = isinstance(engine.pool, (StaticPool, AssertionPool))
        self._lock: AbstractContextManager[Any] = (
            engine_lock(engine) if serialize or one else nullcontext()
        )
        self._layout_lock = threading.Lock()
        self._known = KnownSessions(cache_bytes)
        self._written_in_bulk = 0
        self._analyzed_for = 0
        self._guarding = _Guard(self)
        self._spare = _spare_of(engine, dialect.inherited)
        self._run_codec = RunEncoder(self._known, dialect.dumps, _digest)
        self._guess_new = True
        self._doubt_record = False
        self._older: tuple[tuple[str, ...], _Layout] | None = None
        dbapi = engine.dialect.loaded_dbapi
        self._dbapi = dbapi
        self._driver_errors: tuple[type[BaseException], ...] = (dbapi.Error,)
        self._define_tables()

    def _define_tables(self) -> None:
        """The table definitions of the current mode; the layout is asked for again."""
        self._layout = _MISSING
        self._older = None
        self._tables = build_tables(self.spec, self.dialect, self.table_name, self.schema)
        self._sql: _Statements | None = None
        self._known.clear()
        json_columns = self._tables.json_columns
        ids = {"session_id", "user_id", self.spec.entity_field}
        self._columns = [
            (str(c.name), c.name in json_columns, c.name in ids) for c in self._tables.header.c
        ]
        names = [str(c.name) for c in self._tables.header.c]
        self._names = names
        self._json_names = [name for name in names if name in json_columns]
        self._count_at = names.index("run_count")
        self._token_at = names.index("write_token")
        header = self._tables.header
        indexed = {c.name for index in header.indexes for c in index.columns}
        self._indexed = tuple(name for name in names if name in indexed)

    def _forked(self) -> None:
        # The engine's connections are let go by _after_fork, once per engine.
        self._layout_lock = threading.Lock()
        self._known.forked()

    def _mode_changed(self) -> None:
        self._define_tables()

    @property
    def table(self) -> Table:
        """The session (header) table."""
        return self._tables.header

    @property
    def runs_table(self) -> Table:
        """The table of runs, one row per run."""
        return self._tables.runs

    def where(self) -> str:
        """The database, for messages (passwords hidden)."""
        return redact(self.db_engine.url.render_as_string(hide_password=True))

    # -- transactions and errors ----------------------------------------------------------

    def _guard(self) -> _Guard:
        """The one place where driver errors become savegame errors (a context manager)."""
        return self._guarding

    def _translated(self, exc: BaseException) -> StorageError | None:
        """The savegame error for an error from SQLAlchemy or the driver; None for others."""
        if isinstance(exc, sa_exc.DBAPIError):
            return self._mapped(exc.orig, exc.connection_invalidated)
        if isinstance(exc, self._driver_errors):
            return self._mapped(exc, False)
        if isinstance(exc, sa_exc.TimeoutError):
            return BackendUnavailableError(
                f"no connection to {self.dialect.title} at {self.where()} came free: {exc}"
            )
        if isinstance(exc, sa_exc.SQLAlchemyError):
            return StorageError(f"{self.dialect.title} at {self.where()}: {exc}")
        return None

    def _mapped(self, error: BaseException | None, invalidated: bool) -> StorageError:
        """The savegame error for a driver error."""
        title = self.dialect.title
        if invalidated or (error is not None and self.dialect.unavailable(error)):
            return BackendUnavailableError(f"{title} at {self.where()} is unavailable: {error}")
        if error is not None and self._layout.version and self.dialect.table_changed(error):
            # Altered by an upgrade since this call's snapshot: the call runs again, on the
            # table as it is now (see _again_if_dropped).
            self._forget()
            return _TableGone(
                f"table {self.table_name!r} at {self.where()} was altered while in use: {error}"
            )
        if error is not None and self.dialect.missing_table(error):
            # Dropped by another storage or process since this one saw it: what this one
            # knows of the table and its sessions is forgotten (see _again_if_dropped).
            # Whatever the layout now says: another thread of this storage that met the
            # drop first has forgotten it already, and this call must run again all the same.
            # The session table may stand again without its runs table, made by another
            # program: the table's record is not taken at its word (see _detect).
            self._doubt_record = True
            self._forget()
            return _TableGone(
                f"table {self.table_name!r} at {self.where()} was dropped while in use: {error}"
            )
        if (
            error is not None
            and self.dialect.missing_column(error)
            and self._layout.version >= LATEST
            and not self._doubt_record
        ):
            # Taken at the latest layout on its record alone: the call runs again, on the
            # table's columns (see _detect).
            self._doubt_record = True
            self._forget()
            return _TableGone(
                f"table {self.table_name!r} at {self.where()} lacks a column its record in "
                f"{MIGRATIONS_TABLE} says it has: {error}"
            )
        if error is not None and self.dialect.missing_column(error):
            # A table whose columns are another mode's fields (agent_id where team_id is
            # wanted): it holds sessions of another mode.
            return CorruptSessionError(
                f"table {self.table_name!r} at {self.where()} lacks a column of {self.mode} "
                f"sessions ({error}): it holds sessions of another mode; open it with the "
                "mode it was written in"
            )
        if error is not None and self.dialect.refused(error, self._dbapi):
            return SerializationError(
                f"{title} refused a value of table {self.table_name!r}: {error}"
            )
        return StorageError(f"{title} at {self.where()}, table {self.table_name!r}: {error}")

    def _call(self, fn: Callable[[], T]) -> T:
        """Runs ``fn``, which works through SQLAlchemy, again when its connection was dead.

        SQLAlchemy discards every pooled connection when it finds one dead, so the second
        run connects afresh; when that fails too, the server is down. A connection found
        dead while savegame sets it up (:class:`DeadConnection`) is discarded alone, so the
        call runs again up to :data:`_DEAD_POOLED` times, each on another.
        """
        with self._guard():
            dead = 0
            while True:
                try:
                    return fn()
                except DeadConnection:
                    # Only that connection was discarded: the pool may hold more like it.
                    dead += 1
                    if dead > _DEAD_POOLED:
                        raise
                except sa_exc.DBAPIError as exc:
                    if not exc.connection_invalidated:
                        raise
                    return fn()

    def _again_on_deadlock(self, fn: Callable[[], T]) -> T:
        """Runs ``fn``, a transaction through SQLAlchemy that may simply run again (a delete,
        a purge), again when the database rolled it back to break a deadlock: as a write
        is, up to :data:`_ATTEMPTS` times, after a short random pause."""
        for tries in range(_ATTEMPTS):
            try:
                return fn()
            except sa_exc.DBAPIError as exc:
                if (
                    tries + 1 == _ATTEMPTS
                    or exc.connection_invalidated
                    or exc.orig is None
                    or not self.dialect.retryable(exc.orig, self._dbapi)
                ):
                    raise
            _pause(tries)
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_open(self) -> None:
        """Refuses a new connection to a storage that was closed (see :meth:`close`).

        Raises:
            StorageError: saying so.
        """
        if self._closed:
            raise StorageError(f"{self!r} was closed; open a new storage to go on")

    def _on_connection(
        self, fn: Callable[[Any], T], patient: bool = False, writing: bool = False
    ) -> T:
        """Runs ``fn`` on a DBAPI connection from the pool, set up for savegame.

        ``patient``: a connection just died (see :meth:`_pooled`), so one refused is asked
        for again a few times, as it is when a pooled one is found dead here. ``writing``:
        ``fn`` writes (see :meth:`_elsewhere`).

        A connection taken from the pool that turns out dead is discarded and ``fn`` runs
        again on another; ``fn`` must therefore be safe to run again (reads are; writes
        find their own token when the first run had committed).

        A connection goes back to the pool outside any transaction, whatever ``fn`` raised.
        One to a server whose call was cut short by anything but a driver's or savegame's
        own error (Ctrl-C, say) may still hold the reply to a statement, which would be
        read as the answer to the next one: it is closed instead.
        """
        self._check_open()
        dialect = self.dialect
        spare = self._spare
        with HOLDING, self._lock:
            for attempt in range(_DEAD_POOLED + 1):
                fairy = spare.take()
                if fairy is None:
                    fairy = self._pooled(patient=patient or attempt > 0)
                conn = fairy.driver_connection
                info = fairy.info
                if self._elsewhere(info, writing):
                    fairy.invalidate()
                    fairy.close()
                    raise self._gone()
                used = "savegame" in info
                kept = [False]
                try:
                    if info.get("savegame") != dialect.settings:
                        dialect.configure(conn)
                        info["savegame"] = dialect.settings
                        self._opened(info)
                    result = fn(conn)
                    spare.keep(fairy, kept)
                    return result
                except BaseException as exc:
                    if kept[0]:
                        raise  # cut short once done: the connection is another call's now
                    known = isinstance(exc, (*self._driver_errors, StorageError))
                    found_dead = dead(self.db_engine.dialect, exc, conn)
                    # Cut short by anything else (Ctrl-C), a call to a server may have left
                    # a reply unread: that connection is not used again.
                    if found_dead or (dialect.round_trips and not known):
                        fairy.invalidate(exc if isinstance(exc, Exception) else None)
                    else:
                        self._end(conn, False)
                    if not (found_dead and used and attempt < _DEAD_POOLED):
                        raise
                finally:
                    if not kept[0]:
                        fairy.close()
        raise AssertionError("unreachable")  # pragma: no cover

    def _pooled(self, patient: bool) -> Any:
        """A connection from the pool. ``patient``: one was just found dead, the server may
        be restarting, so a connection refused is asked for again a few times after a
        short pause (:func:`~savegame.storage.base.with_retries`) before the call fails."""
        if not patient:
            return self.db_engine.raw_connection()
        return with_retries(
            self.db_engine.raw_connection,
            lambda exc: isinstance(exc, self._driver_errors) and self.dialect.unavailable(exc),
        )

    def _end(self, conn: Any, commit: bool) -> None:
        """Ends a transaction; when rolling back after an error, the error is what counts."""
        if commit:
            self.dialect.end(conn, True)
            return
        with contextlib.suppress(*self._driver_errors):
            self.dialect.end(conn, False)

    @contextmanager
    def _connection(self, writing: bool) -> Iterator[Connection]:
        with HOLDING, self._lock, self._configured(writing) as conn:
            yield conn

    def _configured(self, writing: bool) -> Connection:
        """A connection from the pool, set up for savegame.

        Storages sharing an engine may want other settings (SQLite's synchronous). They are
        set on the driver's connection, outside SQLAlchemy, which therefore does not notice
        a pooled connection found dead there (a server restart).

        Raises:
            DeadConnection: for such a connection, which is discarded (see :meth:`_call`).
        """
        self._check_open()
        conn = self.db_engine.connect()
        if self._streams:
            # PostgreSQL's server-side cursors take only queries: an engine streaming
            # results wrapped every statement savegame runs (CREATE, DELETE) in one.
            conn.execution_options(stream_results=False, yield_per=None)
        if self._elsewhere(conn.info, writing):
            conn.invalidate()
            conn.close()
            raise self._gone()
        if conn.info.get("savegame") == self.dialect.settings:
            return conn
        raw = conn.connection.driver_connection
        try:
            self.dialect.configure(raw)
        except BaseException as exc:
            found_dead = dead(self.db_engine.dialect, exc, raw)
            if found_dead:
                conn.invalidate(exc)
            conn.close()
            if found_dead:
                raise DeadConnection(f"a pooled connection was dead: {exc}") from exc
            raise
        conn.info["savegame"] = self.dialect.settings
        self._opened(conn.info)
        return conn

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Connection]:
        with self._connection(write) as conn, self.dialect.transaction(conn, write) as tx:
            yield tx

    @contextmanager
    def _schema_change(self) -> Iterator[Connection]:
        """A write transaction holding the lock that serializes schema changes.

        The lock is let go only after the commit, so the next process to take it sees every
        change this one made.
        """
        with self._connection(True) as conn:
            taken = None
            try:
                with self.dialect.transaction(conn, True) as tx:
                    taken = self.dialect.schema_lock(tx, self.schema)
                    yield tx
            finally:
                if taken is not None and not conn.invalidated:
                    self.dialect.release_schema_lock(conn, taken)

    def _statements(self) -> _Statements:
        """The compiled statements (compiled on first use, once the server is known)."""
        statements = self._sql
        if statements is None:
            self._check_open()
            with self._guard(), self._lock, self.db_engine.connect():
                engine = self.db_engine.dialect
                # The tables stand for the mode, the dialect and the names (build_tables);
                # the rest is what the engine's compiler renders differently.
                key = (
                    "statements",
                    self._tables,
                    type(engine),
                    engine.paramstyle,
                    engine.server_version_info,
                    getattr(engine, "is_mariadb", None),
                )
                statements = self._sql = _built(
                    key,
                    lambda: _Statements(self._tables, self.dialect, engine, self._indexed),
                )
        return statements

    # -- the layout -----------------------------------------------------------------------

    def _detect(self, conn: Connection, settled: bool = False, doubt: bool = False) -> _Layout:
        """The table's layout as ``conn`` sees it; ``settled``: under the schema lock, where
        no other process is making the tables (see :meth:`_make_tables`).

        A table recorded at the latest layout is taken at it without looking, unless
        ``doubt`` or the storage has met a column or table missing: then a table lacking
        the latest columns, or its runs table, is taken as it is, as though not recorded. Another
        program made it again after savegame recorded it (the original library's
        ``drop()`` and ``create()``), and ``savegame_migrations`` kept the record.

        A table found of an older layout is taken at it again, without inspecting it, while
        its columns stay as they were (:meth:`SqlDialect.column_names`): every migration
        adds one, so an upgrade by another process changes them.
        """
        columns = None
        if not (settled or doubt):
            columns = self.dialect.column_names(conn, self.table)
            older = self._older
            if columns and older is not None and older[0] == columns:
                return older[1]
        inspector = inspect(conn)
        if not inspector.has_table(self.table_name, self.schema):
            return _MISSING
        self._refuse_another_case(inspector)
        version = self._recorded_version(conn, inspector)
        latest = frozenset(self.table.c.keys())
        if version >= LATEST and not (doubt or self._doubt_record):
            # The record names the table, not the mode it was made in: another mode's table
            # (team_id where agent_id is wanted) is recorded at the latest layout too, and
            # a removal, which names none of those columns, would remove its sessions. An
            # original's workflow_v2 table keeps its memory column when upgraded, and with
            # it every column of a workflow table. The columns asked above tell both.
            if columns is None:
                columns = self.dialect.column_names(conn, self.table)
            if columns:
                self._refuse_foreign(set(columns))
            return _Layout(version, latest)
        names = {c["name"] for c in inspector.get_columns(self.table_name, self.schema)}
        self._refuse_foreign(names)
        if version >= LATEST:
            if names >= latest and self._runs_table_is(conn):
                return _Layout(version, latest)
            version = ORIGINAL_VERSION
        version = _borne_out(version, names)
        if settled and names >= set(self.table.c.keys()) and self._runs_table_is(conn) is not False:
            # Every column of the latest layout, which only savegame makes, with no record
            # saying so or without its runs table: tables made (or upgraded) by a call cut
            # short before it made the runs table or recorded them, as MySQL's DDL commits
            # table by table, or a runs table dropped by hand. Rows without their runs apart
            # read as they are (run_count is NULL), so the table is taken at the latest
            # layout, and its runs table made (see _make_tables). Only under the schema
            # lock: outside it, the tables may be another process's being made, which MySQL
            # refuses to describe meanwhile (error 1684), and a read takes them as they are.
            return _Layout(LATEST, frozenset(self.table.c.keys()), recorded=False)
        layout = _Layout(version, frozenset(names))
        if columns and set(columns) == names and not names >= latest:
            self._older = (columns, layout)
        return layout

    def _recorded_version(self, conn: Connection, inspector: Any) -> int:
        """The layout version ``savegame_migrations`` records for the table; the original's
        where it records none.

        Raises:
            StorageError: for a version newer than this savegame knows.
        """
        version = ORIGINAL_VERSION
        if inspector.has_table(MIGRATIONS_TABLE, self.schema):
            migrations = self._tables.migrations
            recorded = conn.execute(
                select(migrations.c.version).where(migrations.c.table_name == self.table_name)
            ).scalar()
            version = recorded or version
        if version > LATEST:
            # A layout this code cannot know: reading it could give sessions short, writing
            # could leave it half updated, and an upgrade would record an older version
            # than the table's, so the newer savegame would apply its migrations again.
            raise StorageError(
                f"table {self.table_name!r} at {self.where()} has layout version {version}, "
                f"written by a newer savegame; this one knows versions up to {LATEST}: "
                "upgrade savegame to use it"
            )
        return version

    def _refuse_another_case(self, inspector: Any) -> None:
        """Refuses a table name that, where the database ignores the case of table names,
        is another storage's table of a name differing in case alone.

        Raises:
            InvalidIdentifierError: naming that table.
        """
        if not self.dialect.names_ignore_case:
            return
        folded = self.table_name.casefold()
        for name in inspector.get_table_names(self.schema):
            if name.casefold() == folded and name != self.table_name:
                raise InvalidIdentifierError(
                    f"{self.dialect.title} table names ignore case: table "
                    f"{self.table_name!r} is the table {name!r} here, another storage's; "
                    f"open that one as {name!r}, or give this storage another name"
                )

    def _refuse_foreign(self, names: set[str]) -> None:
        """Refuses a table of columns ``names`` that holds no sessions of this mode.

        Raises:
            StorageError: when it is the runs table of another storage's sessions.
            CorruptSessionError: when it lacks a column every table of this mode has (the
                original's included): it holds sessions of another mode (team_id where
                agent_id is wanted), which would be read short, or is no session table at
                all, which an upgrade would fill with this mode's columns. The mode its
                columns tell is named, when they tell one; and what
                :meth:`_refuse_closer` refuses.
        """
        if names == set(self.runs_table.c.keys()):
            raise StorageError(
                f"table {self.table_name!r} holds the runs of another storage's sessions"
                f" (those of table {self.table_name.removesuffix(RUNS_SUFFIX)!r}); give this"
                " storage another table name"
            )
        lacking = [name for name in _needed(self.spec) if name not in names]
        if not lacking:
            self._refuse_closer(names)
            return
        held = _modes_held(names)
        holds = (
            f"it holds {held[0]} sessions: open it with mode {held[0]}"
            if len(held) == 1
            else "it holds sessions of another mode, or is not a session table; open it "
            "with the mode it was written in"
        )
        raise CorruptSessionError(
            f"table {self.table_name!r} at {self.where()} lacks the column(s) "
            f"{', '.join(map(repr, lacking))} of {self.mode} sessions: {holds}, or give "
            "this storage another table name"
        )

    def _refuse_closer(self, names: set[str]) -> None:
        """Refuses a table of columns ``names`` that has every column this mode needs, when
        another mode whose needed columns it has too leaves fewer of its columns
        unexplained: a table of the original's workflow_v2 sessions (``workflow_name`` and
        ``runs`` beside the ``memory`` of every original table) is theirs, not a workflow
        table's, upgraded or not.

        Raises:
            CorruptSessionError: for such a table, naming the mode it holds.
        """
        held = _modes_held(names)
        if self.mode not in held:
            return
        extra = {mode: sorted(names - MODES[mode].fields) for mode in held}
        closest = min(held, key=lambda mode: len(extra[mode]))
        if len(extra[closest]) < len(extra[self.mode]):
            theirs = ", ".join(map(repr, sorted(set(extra[self.mode]) - set(extra[closest]))))
            raise CorruptSessionError(
                f"table {self.table_name!r} at {self.where()} has the column(s) {theirs} of "
                f"{closest} sessions: it holds {closest} sessions: open it with mode "
                f"{closest}, or give this storage another table name"
            )

    def _runs_table_is(self, conn: Connection) -> bool | None:
        """Whether the table of the runs table's name has the runs' columns; None when
        there is no such table."""
        runs = self.runs_table
        inspector = inspect(conn)
        if not inspector.has_table(runs.name, self.schema):
            return None
        names = {c["name"] for c in inspector.get_columns(runs.name, self.schema)}
        return names == set(runs.c.keys())

    def _check_runs_table(self, conn: Connection, made: bool) -> None:
        """Refuses a runs table that another storage made as its own session table;
        ``made``: this storage's table exists, with sessions that another name would not
        reach, so the error says to rename a table instead.
        """
        runs = self.runs_table
        if self._runs_table_is(conn) is False:
            remedy = (
                "rename one of the two tables (ALTER TABLE ... RENAME TO ...) and open it by"
                " its new name"
                if made
                else "give this storage another table name"
            )
            raise StorageError(
                f"table {runs.name!r}, where the storage of table {self.table_name!r} would"
                f" keep its runs, is another storage's session table; {remedy}"
            )

    def _refuse_runs_name(self, conn: Connection) -> None:
        """Refuses to make this storage's table where it would be the runs table of a
        session table without one yet: the original's, whose upgrade makes it.

        Raises:
            StorageError: naming that session table.
        """
        name = self.table_name
        suffix = name[-len(RUNS_SUFFIX) :]
        if self.dialect.names_ignore_case:
            suffix = suffix.casefold()
        owner = name[: -len(RUNS_SUFFIX)]
        if suffix != RUNS_SUFFIX or not owner:
            return
        inspector = inspect(conn)
        if not inspector.has_table(owner, self.schema):
            return
        if _modes_held({c["name"] for c in inspector.get_columns(owner, self.schema)}):
            raise StorageError(
                f"table {name!r} is where the sessions of table {owner!r} keep their runs"
                " once savegame has upgraded it; give this storage another table name"
            )

    def _opened(self, info: dict[Any, Any]) -> None:
        """Notes in a pooled connection's ``info``, when savegame first sets it up, which
        database it reaches, for :meth:`_elsewhere`."""

    def _elsewhere(self, info: dict[Any, Any], writing: bool) -> bool:
        """Whether the pooled connection of ``info`` reaches a database that is no longer at
        this storage's address (a SQLite file removed or replaced): see :meth:`_gone`.
        ``writing``: the connection is to write, which must never go to such a database."""
        return False

    def _gone(self) -> _TableGone:
        """The error of a call that met a connection to a database no longer at this
        storage's address. Every pooled connection, all made before, is let go and the
        table forgotten, so that the call runs again as on a storage just opened (see
        :func:`_again_if_dropped`)."""
        self.db_engine.dispose()
        self._forget()
        return _TableGone(f"the database at {self.where()} was removed or replaced while in use")

    def _forget(self) -> None:
        """Forgets the table's layout and every session remembered, as a storage just opened
        knows nothing of them."""
        self._known.clear()
        with self._layout_lock:
            self._layout = _MISSING
            self._older = None

    def _absent(self) -> bool:
        """Whether the database is not there yet, and asking it would make it (a SQLite file):
        reads then find nothing without touching it."""
        return False

    def _current(self, rechecked: bool = False) -> _Layout:
        """The table's layout, asking the database until the table is at the latest one.

        ``rechecked``: the caller detects an older layout again in the snapshot it reads
        (:meth:`_in_snapshot`), so a table known to be of one is not asked about here.
        """
        layout = self._layout
        if layout.version >= LATEST or (rechecked and layout.version):
            return layout
        if self._absent():
            return _MISSING

        def detect() -> _Layout:
            with self._transaction(False) as conn:
                return self._detect(conn)

        layout = self._call(detect)
        with self._layout_lock:
            self._layout = layout
        return layout

    def _in_snapshot(self, conn: Connection) -> _Layout:
        """The table's layout as the snapshot of ``conn`` sees it; kept when another process
        has brought the table to the latest one since this storage last looked."""
        layout = self._layout
        if layout.version >= LATEST:
            return layout
        self.dialect.snapshot(conn)
        layout = self._detect(conn)
        if layout.version >= LATEST:
            with self._layout_lock:
                self._layout = layout
        return layout

    def _writable(self) -> None:
        if self._current().version >= LATEST:
            return
        # Under the schema lock: makes a missing table, and waits out another process that
        # is making it (MySQL's DDL commits table by table, so it can be seen half made).
        self._make_tables(upgrade=self.auto_upgrade_schema)
        layout = self._layout
        if layout.version < LATEST:
            raise StorageError(
                f"table {self.table_name!r} has an older layout (version {layout.version}, "
                f"savegame writes version {LATEST}); savegame reads it as it is, and writes "
                "once storage.upgrade_schema() has brought it up to date"
            )

    @_again_if_dropped
    def create(self) -> None:
        """Makes the schema, the tables and their indexes; does nothing when they exist.

        An existing table of an older layout is left as it is (see :meth:`upgrade_schema`),
        unless the storage was made with ``auto_upgrade_schema=True``.

        Raises:
            BackendUnavailableError: when the database cannot be reached or stays locked.
            StorageError: when one of the two tables would be another session table's runs
                table, or its runs table is another storage's session table.
        """
        self._make_tables(upgrade=self.auto_upgrade_schema)

    @_again_if_dropped
    def table_exists(self) -> bool:
        """Whether the session table exists.

        Raises:
            BackendUnavailableError: when the database cannot be reached.
        """

        def exists() -> bool:
            with self._transaction(False) as conn:
                return bool(inspect(conn).has_table(self.table_name, self.schema))

        return not self._absent() and self._call(exists)

    @_again_if_dropped
    def drop(self) -> None:
        """Drops this storage's two tables and its line in ``savegame_migrations``.

        A table of the runs table's name that is another storage's session table is left
        alone.

        Raises:
            BackendUnavailableError: when the database cannot be reached or stays locked.
            StorageError: when this storage's table holds another storage's runs.
        """

        def drop() -> None:
            if self._absent():
                return
            with self._schema_change() as conn:
                self._detect(conn)  # raises when this storage's table is another's runs
                runs_are_ours = self._runs_table_is(conn)
                # The header table first: reads and writes take the header before the
                # runs, so dropping the runs first deadlocked with them (PostgreSQL), and
                # left a header without its runs table between MySQL's two commits.
                self.table.drop(conn, checkfirst=True)
                if runs_are_ours:
                    self.runs_table.drop(conn)
                if inspect(conn).has_table(MIGRATIONS_TABLE, self.schema):
                    migrations = self._tables.migrations
                    conn.execute(
                        delete(migrations).where(migrations.c.table_name == self.table_name)
                    )
                self._removed()

        self._call(drop)
        self._forget()
        self._erased()

    @_again_if_dropped
    def upgrade_schema(self) -> None:
        """Applies the migrations the table is missing, in one transaction where DDL allows.

        Running it again does nothing. A missing table is made at the latest layout.

        Raises:
            BackendUnavailableError: when the database cannot be reached or stays locked.
        """
        self._make_tables(upgrade=True)

    def _make_tables(self, upgrade: bool) -> None:
        """Makes missing tables at the latest layout; with ``upgrade``, migrates older ones."""

        def make() -> _Layout:
            with self._schema_change() as conn:
                self.dialect.create_schema(conn, self.schema)
                layout = self._detect(conn, settled=True, doubt=upgrade)
                if layout.version == 0 or upgrade:
                    self._check_runs_table(conn, made=layout.version > 0)
                if layout.version == 0:
                    self._refuse_runs_name(conn)
                    for table in (self.table, self.runs_table, self._tables.migrations):
                        table.create(conn, checkfirst=True)
                elif not layout.recorded:
                    self.runs_table.create(conn, checkfirst=True)
                elif upgrade:
                    for migration in MIGRATIONS:
                        if migration.version > layout.version:
                            migration.apply(self, conn)
                    # Also on tables an earlier savegame brought to a later version before
                    # the second migration converted the original's id columns.
                    self.dialect.adopt_id_types(conn, self.table)
                # A table recorded at the latest layout keeps its record as it is: a role
                # that may only read the tables can then call upgrade_schema() too.
                behind = upgrade and layout.version < LATEST
                if layout.version == 0 or behind or not layout.recorded:
                    self._record_version(conn, LATEST)
                    layout = _Layout(LATEST, frozenset(self.table.c.keys()))
                return layout

        layout = self._call(make)
        with self._layout_lock:
            self._layout = layout

    def _record_version(self, conn: Connection, version: int) -> None:
        migrations = self._tables.migrations
        migrations.create(conn, checkfirst=True)
        statement = self.dialect.upsert(migrations, ("table_name",))
        conn.execute(statement, {"table_name": self.table_name, "version": version})

    def close(self) -> None:
        """Gives back the engine, when this storage made it; the last user disposes of it.

        The storage is closed for good: any later call raises :class:`StorageError`. A
        closed in-memory database is gone, and a connection made afterwards would be to a
        new, empty one; one to a server would sit in a pool that nothing closes any more.

        An erasure whose copies could not be cleared yet (see :meth:`_erased`) is cleared
        first, and what that raises is raised once the storage is closed.
        """
        try:
            if not self._closed:
                self._erased()
        finally:
            self._close()

    def _close(self) -> None:
        self._closed = True
        self._known.clear()
        if self._owns_engine:
            self._owns_engine = False
            release_engine(self.db_engine)

    # -- records and rows -----------------------------------------------------------------

    def _header_values(self, draft: Draft, record: Record, token: str) -> dict[str, Any]:
        """The header row of a stamped record."""
        dumps = self.dialect.dumps
        bound = self.dialect.header_json
        texts = draft.texts
        values = {name: record.get(name) for name in self._names}
        for name in self._json_names:
            value = values[name]
            if value is not None:
                values[name] = bound(dumps(value, texts.get(name)))
        values["run_count"] = None if draft.runs is None else len(draft.runs)
        values["write_token"] = token
        return values

    def _decoded(self, row: Sequence[Any]) -> Record:
        """The record of a header row (its values in the order of the table's columns)."""
        loads = self.dialect.loads
        record: Record = {}
        try:
            for (name, is_json, is_id), value in zip(self._columns, row, strict=False):
                if value is not None:
                    if is_json:
                        value = loads(value)
                    elif is_id:
                        value = _text(value)
                record[name] = value
        except ValueError as exc:
            raise CorruptSessionError(
                f"session {record.get('session_id')!r} in table {self.table_name!r} "
                f"holds JSON that cannot be read: {exc}"
            ) from exc
        return record

    def _check_numbers(self, record: Record, run_count: Any) -> None:
        """Refuses a header row whose numbers savegame cannot have written
        (:func:`~savegame.storage.base.check_stored`), a run count among them.

        Raises:
            CorruptSessionError: naming the session and the number.
        """
        where = f"in table {self.table_name!r}"
        if run_count is not None and (type(run_count) is not int or run_count < 0):
            raise CorruptSessionError(
                f"session {record.get('session_id')!r} {where} cannot be read (its run_count "
                f"is {run_count!r}, not a whole number): it was changed outside savegame"
            )
        check_stored(record, self.spec, where)

    def _loaded_runs(self, session_id: str, texts: list[Any], start: int = 0) -> list[Any]:
        """The runs of their stored ``texts``, the first of which is at position ``start``.

        Raises:
            CorruptSessionError: for a text that is not JSON, or NULL (which savegame never
                writes: a JSON ``null`` is the text ``null``), naming the session.
        """
        loads = self.dialect.loads
        try:
            return [loads(text) for text in texts]
        except (ValueError, TypeError) as exc:
            where = f"of session {session_id!r} in table {self.runs_table.name!r}"
            if None in texts:
                raise CorruptSessionError(
                    f"run {start + texts.index(None)} {where} is NULL, which savegame never "
                    "writes: the row was changed outside savegame"
                ) from exc
            raise CorruptSessionError(
                f"a run {where} holds JSON that cannot be read: {exc}"
            ) from exc

    def _header_select(self, layout: _Layout) -> Any:
        """The header query, through SQLAlchemy, for the sessions of ``:ids``."""
        match = self.table.c.session_id.in_(bindparam("ids", expanding=True))
        return select(*[c for c in self.table.c if c.name in layout.columns]).where(match)

    def _runs_of(self, conn: Connection, ids: Sequence[str]) -> dict[str, tuple[list[Any], str]]:
        """The runs' texts and digests of each session in ``ids``, in position order,
        through SQLAlchemy."""
        sql = self._statements()
        found: dict[str, tuple[list[Any], list[str]]] = {}
        for session_id, text, digest in conn.execute(sql.runs, {"ids": list(ids)}):
            texts, digests = found.setdefault(session_id, ([], []))
            texts.append(text)
            digests.append(digest)
        return {sid: (texts, "".join(digests)) for sid, (texts, digests) in found.items()}

    def _unpacked(
        self,
        session_id: str,
        row: Sequence[Any],
        found: Any,
        joined: tuple[list[Any], Pickle | None] | None = None,
        remember: bool = True,
    ) -> Record:
        """The record of a header row (the table's columns in order) and its runs' texts and
        digests; remembered when the row carries a write token, once it is found whole, and
        ``remember``.
        ``joined``: the runs already decoded, and their pickle (see :meth:`Known.joined`).

        Raises:
            CorruptSessionError: when the header counts more or fewer runs than are stored,
                or holds a version, time or run count that is not a whole number (a column
                of SQLite holds any text).
        """
        record = self._decoded(row)
        stored = record.pop("write_token", None)
        record.pop("past_tokens", None)
        count = record.pop("run_count", None)
        self._check_numbers(record, count)
        if count is not None and get_path(record, self.spec.runs_path) is not None:
            # savegame leaves None where the runs were: this header was saved since by a
            # program that keeps them in it (the original library, still running after
            # the upgrade), whose runs are newer than those apart. Not remembered: the
            # store's token is savegame's last write, not this one.
            self._known.put(session_id, None)
            return record
        digests: str | None = None
        runs: list[Any] = []
        pickled = None
        if count is not None:
            texts, digests = found if found is not None else ([], "")
            runs, pickled = (
                joined if joined is not None else (self._loaded_runs(session_id, texts), None)
            )
            if len(runs) != count:
                raise CorruptSessionError(
                    f"session {session_id!r} should have {count} runs in table "
                    f"{self.runs_table.name!r} and has {len(runs)}"
                )
        if stored is not None and remember:
            listed = tuple(record.get(name) for name in self._indexed)
            kept = None if count is None else runs
            known = Known.read(stored, Header.of(record), digests, kept, listed, record, pickled)
            self._known.put(session_id, known)
        if count is not None:
            set_path(record, self.spec.runs_path, runs)
        return record

    def _remembered(self, ids: Sequence[str], tokens: dict[str, Any] | None) -> dict[str, Record]:
        """Copies of the sessions among ``ids`` that this storage remembers whole and the
        store still holds unchanged: by the stored ``tokens``, or by one query for them."""
        known = {}
        for session_id in ids:
            entry = self._known.get(session_id)
            if entry is not None and entry.whole():
                known[session_id] = entry
        if not known:
            return {}
        if tokens is None:
            tokens = self._tokens(list(known))
        path = self.spec.runs_path
        return {i: k.record(path) for i, k in known.items() if tokens.get(i) == k.token}

    def _tokens(self, asked: list[str]) -> dict[str, Any]:
        """The stored write token of each session among ``asked`` that is stored."""
        sql = self._statements()
        tokens: dict[str, Any] = {}

        def ask() -> None:
            with self._transaction(False) as conn:
                for start in range(0, len(asked), _BATCH):
                    chunk = asked[start : start + _BATCH]
                    tokens.update(conn.execute(sql.tokens, {"ids": chunk}).all())

        self._call(ask)
        return tokens

    # -- primitives -----------------------------------------------------------------------

    @_again_if_dropped
    def _read(self, session_id: str) -> Record | None:
        layout = self._current(rechecked=True)
        if layout.version == 0:
            return None
        if layout.version < LATEST:
            return self._read_many([session_id])[0]
        known = self._known.get(session_id)
        if known is None or not known.whole():
            return self._read_one(session_id, "", None)
        return self._read_one(session_id, known.token, known)

    def _read_one(self, session_id: str, token: str, known: Known | None) -> Record | None:
        """A session read in one snapshot; ``known``: what is remembered of it, whole, which
        spares fetching its runs again, and all of it when the store still holds ``token``."""
        kept = len(known.digests) // _DIGEST_WIDTH if known is not None and known.digests else 0
        self._statements()
        with self._guard():
            row, found = self._on_connection(
                lambda conn: self._read_on(conn, session_id, token, kept)
            )
        if row is _UNCHANGED:
            assert known is not None
            return known.record(self.spec.runs_path)
        if row is _UNPACKED:
            return self._records([session_id], None)[0]
        if row is None:
            self._known.put(session_id, None)
            return None
        if kept and found is not None:
            assert known is not None
            texts, digests = found
            if not known.leads(digests) or row[self._token_at] is None:
                # A run the reader remembers was changed since, or may have been under the
                # same digest (a header whose token was cleared by hand, see the README):
                # all of them are fetched.
                return self._read_one(session_id, "", None)
            joined = known.joined(self._loaded_runs(session_id, texts[kept:], kept), len(texts))
            return self._unpacked(session_id, row, found, joined)
        return self._unpacked(session_id, row, found)

    def _read_on(
        self, conn: Any, session_id: str, token: str, kept: int
    ) -> tuple[Any, tuple[list[Any], str] | None]:
        """The header row of a session, and its runs' texts and digests, from one snapshot;
        :data:`_UNCHANGED` when the header carries ``token``. The runs before position
        ``kept`` come without their texts (None)."""
        sql = self._statements()
        dialect = self.dialect
        with _Cursor(conn) as cursor:
            params = {"sid": session_id, "kept": kept}
            if token:
                with dialect.one_statement(conn):
                    current = sql.token_of.run(cursor, params).fetchone()
                if current is None:
                    return None, None
                if current[0] == token:
                    return _UNCHANGED, None
            if not dialect.round_trips:
                return self._read_locally(conn, cursor, params)
            assert sql.read_one is not None
            with dialect.one_statement(conn):
                rows = sql.read_one.run(cursor, params).fetchall()
            heads = [r for r in rows if r[-1] == -1]
            if not heads:
                return None, None
            width = len(heads[0]) - 3  # the header's columns come before run, digest and place
            row = heads[0][:width]
            if sql.packed:
                spread = None if row[0] is None else self._spread(row[0], session_id)
                if spread is None:
                    return _UNPACKED, None
                row = spread
            if row[self._count_at] is None:
                return row, None
            digests = _text(next((r[width + 1] for r in rows if r[-1] == -2), None) or "")
            found = sorted((r for r in rows if r[-1] >= 0), key=itemgetter(-1))
            skipped = min(kept, len(digests) // _DIGEST_WIDTH)
            return row, ([None] * skipped + [r[width] for r in found], digests)

    def _spread(self, packed: str, session_id: str) -> list[Any] | None:
        """The values of a header's columns, from the JSON array :meth:`SqlDialect.packed`
        made of them; None when the server left out a value too large to pack."""
        try:
            values = _ARRAY.decode(packed)
        except ValueError:
            values = None
        if (
            type(values) is not list
            or len(values) != len(self._columns) + 1
            or type(values[-1]) is not int
        ):
            raise StorageError(
                f"{self.dialect.title} at {self.where()} gave the header of session "
                f"{session_id!r} as {packed!r:.200}, not the array of its columns"
            )
        nulls = values.pop()
        for i, value in enumerate(values):
            if value is None and not nulls >> i & 1:
                return None
        return values

    def _read_locally(
        self, conn: Any, cursor: Any, params: dict[str, Any]
    ) -> tuple[Any, tuple[list[Any], str] | None]:
        """:meth:`_read_on`'s header and runs in an embedded database, in a transaction."""
        sql = self._statements()
        self.dialect.begin(conn, False)
        try:
            row = sql.header_of.run(cursor, params).fetchone()
            runs: tuple[list[Any], str] | None = None
            if row is not None and row[self._count_at] is not None:
                found = sql.runs_of.run(cursor, params).fetchall()
                runs = ([text for text, _ in found], "".join(d for _, d in found))
        finally:
            self._end(conn, True)
        return row, runs

    def _forget_written(self, session_ids: Iterable[str]) -> None:
        self._known.forget(session_ids)

    def _bulk_written(self, count: int) -> None:
        # Gathered again each time the sessions written in bulk have doubled: a handful of
        # ANALYZEs for a copy of any size, none for one too small to be slowed down.
        self._written_in_bulk += count
        if not self.dialect.plans_by_statistics or self._written_in_bulk < max(
            ANALYZE_AFTER, 2 * self._analyzed_for
        ):
            return
        self._analyzed_for = self._written_in_bulk
        tables = [self.table]
        if self._current(rechecked=True).version >= LATEST:
            tables.append(self.runs_table)
        self._statements()

        def analyze() -> None:
            with self._transaction(True) as conn:
                for table in tables:
                    self.dialect.analyze(conn, table)

        self._call(analyze)

    @_again_if_dropped
    def _read_many(self, ids: Iterable[str], remember: bool = True) -> list[Record | None]:
        return self._records(list(ids), None, remember)

    def _records(
        self, wanted: list[str], tokens: dict[str, Any] | None, remember: bool = True
    ) -> list[Record | None]:
        """The records of ``wanted``, in that order (None where there is none): copies of
        those remembered whose token the store still holds, the others read in one
        transaction. ``tokens``: the stored tokens, when the caller has them. With
        ``remember=False`` what is remembered is neither used nor added to, nor its order
        of use changed: every session is read from the store."""
        if not wanted or self._current(rechecked=True).version == 0:
            return [None] * len(wanted)
        found: dict[str, Record] = {}
        if self._layout.version >= LATEST and remember:
            found.update(self._remembered(wanted, tokens))
        rest = [session_id for session_id in wanted if session_id not in found]
        names = [name for name, _, _ in self._columns]
        # Compiled before the connection is taken: compiling may take one of its own, which
        # a pool of one connection (or an AssertionPool) would then wait for in vain.
        self._statements()

        def read() -> None:
            with self._transaction(False) as conn:
                # The layout as of the snapshot that reads the rows: an upgrade committed
                # since the check above has moved the runs out of the rows.
                layout = self._in_snapshot(conn)
                if layout.version == 0:
                    return
                for start in range(0, len(rest), _BATCH):
                    chunk = rest[start : start + _BATCH]
                    rows = conn.execute(self._header_select(layout), {"ids": chunk}).all()
                    with_runs = [r.session_id for r in rows if r._mapping.get("run_count")]
                    runs = self._runs_of(conn, with_runs) if with_runs else {}
                    for row in rows:
                        values = [row._mapping.get(name) for name in names]
                        session_id = row.session_id
                        found[session_id] = self._unpacked(
                            session_id, values, runs.get(session_id), remember=remember
                        )

        if rest:
            self._call(read)
        return [found.get(session_id) for session_id in wanted]

    @_again_if_dropped
    def _write(
        self, draft: Draft, expected_version: int | None, now: int, preserve: bool
    ) -> Record:
        self._writable()
        self._statements()
        session_id = draft.session_id
        # Never trusted blindly: a write on it checks that the store still carries its token.
        write = _Write(draft, self._known.get(session_id), expected_version, now, preserve)
        with self._guard():
            for tries in range(_ATTEMPTS):
                try:
                    # After a commit left unanswered, the server may be restarting: each
                    # attempt waits for it as a connection found dead does, rather than
                    # saying at once that its outcome is unknown.
                    record = self._on_connection(
                        lambda conn: self._write_on(conn, write),
                        patient=write.committed_on is not None,
                        writing=True,
                    )
                    break
                except self._driver_errors as exc:
                    # The commit was sent and its connection died before the answer: the
                    # write may have been made, whatever connection it went on. It is sent
                    # again, to find its token, never reported as not made.
                    landed = self.dialect.commit_may_have_landed
                    resend = write.committed_on is not None and landed(exc)
                    if not resend and (
                        tries + 1 == _ATTEMPTS or not self.dialect.retryable(exc, self._dbapi)
                    ):
                        raise
                    if resend and tries + 1 == _ATTEMPTS:
                        where = f"{self.dialect.title} at {self.where()}"
                        raise outcome_unknown(
                            where, session_id, "it could not be reached again to look"
                        ) from exc
                    if not resend:
                        write.known = None
                        write.committed_on = None  # a deadlock or the like: rolled back
                        _pause(tries)
        if write.superseded:
            self._known.put(session_id, None)
            return draft.whole(record)
        header = Header(record["version"], record["created_at"], record.get("expires_at"))
        listed = tuple(record.get(name) for name in self._indexed)
        self._known.put(session_id, Known.written(write.token, header, draft.runs, listed, record))
        return draft.whole(record)

    def _write_on(self, conn: Any, write: _Write) -> Record:
        """One attempt of a write, in one transaction on ``conn`` (:meth:`_on_connection`
        ends it when the attempt fails)."""
        self.dialect.begin(conn, True)
        with _Cursor(conn) as cursor:
            record = self._write_in(cursor, write)
        write.committed_on = write.on
        self._end(conn, True)
        return record

    def _write_in(self, cursor: Any, write: _Write) -> Record:
        sql = self._statements()
        draft, known, token = write.draft, write.known, write.token
        session_id = draft.session_id
        if known is not None and write.record is None:
            # On the remembered header, when the store still holds it.
            record = write.record = self._stamped(write, known.header)
            if record is not None:
                values = self._header_values(draft, record, token)
                statement = sql.update(self._changed(values, known.listed), True)
                values["sid"], values["known"] = session_id, known.token
                values["on"] = known.token
                if statement.run(cursor, values).rowcount == 1:
                    self._write_runs(cursor, session_id, draft.runs, known.digests)
                    write.on = known.token
                    return record
        elif known is None and write.record is None and self._guess_new:
            # Taken for a new session while that guess keeps proving right.
            record = write.record = self._stamped(write, None)
            if record is not None:
                if self._inserted(cursor, sql, self._header_values(draft, record, token)):
                    self._write_runs(cursor, session_id, draft.runs, None)
                    write.on = ""
                    return record
                self._guess_new = False
        # A header that another writer makes between the look for it and the insert is
        # looked for again, locked and written on, in this transaction; where that keeps
        # happening, the last insert's duplicate key fails the attempt, which runs again.
        found, tries = None, 0
        while found is None:
            tries += 1
            found = self._write_locked(cursor, write, tries == _ATTEMPTS)
        return found

    def _write_locked(self, cursor: Any, write: _Write, last: bool) -> Record | None:
        """Writes on the stored header, locked first, or inserts one where there is none.
        None: another writer made the header after it was looked for (never when ``last``:
        its duplicate key is raised)."""
        sql = self._statements()
        draft, known, token = write.draft, write.known, write.token
        session_id = draft.session_id
        row = sql.lock_header.run(cursor, {"sid": session_id}).fetchone()
        holds = "" if row is None else row[2] or ""
        if write.committed_on is not None and write.record is not None:
            current, past = ("", "") if row is None else (row[2] or "", row[3] or "")
            made = resent_write_made(write.token, write.committed_on, current, past)
            if made is None:
                # The session changed since the attempt whose commit went unanswered wrote
                # on it, too often to tell by whom.
                raise outcome_unknown(f"{self.dialect.title} at {self.where()}", session_id)
            if made:
                # An earlier attempt committed before its connection died.
                write.superseded = holds != write.token
                return write.record
            write.committed_on = None
        write.on = holds
        listed = () if row is None else tuple(_text(v) for v in row[4:])
        current = None
        if row is not None:
            found = {"session_id": session_id, "version": row[0], "created_at": row[1]}
            found["expires_at"] = listed[self._indexed.index("expires_at")]
            self._check_numbers(found, None)
            current = Header.of(found)
        record = self._stamp(draft.record, current, write.expected, write.now, write.preserve)
        write.record = record
        values = self._header_values(draft, record, token)
        if row is None:
            if last:
                sql.insert_header.run(cursor, values)
            elif not self._inserted(cursor, sql, values):
                return None
            stored = None
            self._guess_new = True
        else:
            statement = sql.update(self._changed(values, listed), False)
            values["sid"], values["on"] = session_id, holds
            statement.run(cursor, values)
            if known is not None and row[2] == known.token:
                stored = known.digests
            else:
                stored = self._stored_digests(cursor, session_id, row[2] is not None)
        self._write_runs(cursor, session_id, draft.runs, stored)
        return record

    def _stored_digests(self, cursor: Any, session_id: str, tokened: bool) -> str | None:
        """The digests of the session's runs in the table, concatenated, for a write that
        holds the header's lock; ``tokened``: the header carries a write token.

        Digests line up with the runs they stand for only while the positions run from 0
        without a gap and each digest has its width: where a row was removed, a digest
        changed or a run set to NULL (which comes without a digest) outside savegame, a run
        taken as stored could be missing or unreadable and the write would leave the session
        short. Nor are they taken at their word for a header without a token: one whose
        token was cleared to say that its session was changed by hand (see the README),
        where a run's text may have changed under the same digest. Then every run of the
        table is removed, and the write sends all of its runs (None).
        """
        sql = self._statements()
        if tokened:
            rows = sql.digests.run(cursor, {"sid": session_id}).fetchall()
            if all(
                position == i and isinstance(digest, str) and len(digest) == _DIGEST_WIDTH
                for i, (position, digest) in enumerate(rows)
            ):
                return "".join(digest for _, digest in rows)
        sql.cut_runs.run(cursor, {"sid": session_id, "count": 0})
        return None

    def _changed(self, values: dict[str, Any], listed: tuple[Any, ...]) -> frozenset[str]:
        """The indexed columns whose new ``values`` differ from the stored ``listed``."""
        if not listed:
            return frozenset(self._indexed)
        now = tuple(map(values.__getitem__, self._indexed))
        if now == listed and all(map(_same_type, now, listed)):
            return frozenset()
        return frozenset(
            name
            for name, old in zip(self._indexed, listed, strict=True)
            if values[name] != old or type(values[name]) is not type(old)
        )

    def _stamped(self, write: _Write, current: Header | None) -> Record | None:
        """The record stamped on a header the storage only believes is stored; None when
        that belief disagrees with the version expected (the stored header must be read)."""
        try:
            return self._stamp(
                write.draft.record, current, write.expected, write.now, write.preserve
            )
        except ConflictError:
            return None

    def _inserted(self, cursor: Any, sql: _Statements, values: dict[str, Any]) -> bool:
        """Whether the guessed-new header went in (False: the session is there)."""
        try:
            return bool(sql.insert_new.run(cursor, values).rowcount == 1)
        except self._driver_errors as exc:
            if self.dialect.duplicate(exc):
                return False
            raise

    def _write_runs(
        self, cursor: Any, session_id: str, runs: Runs | None, stored: str | None
    ) -> None:
        """Writes the runs whose digest differs from ``stored`` and deletes those past the end.

        ``stored``: the digests of the runs in the table, concatenated (None or "": none).
        """
        sql = self._statements()
        count = 0 if runs is None else len(runs)
        if runs is not None:
            changed = runs.changes(stored)
            if changed:
                sql.upsert_run.run_many(
                    cursor,
                    [
                        {"session_id": session_id, "position": p, "digest": d, "run": t}
                        for p, d, t in changed
                    ],
                )
        if stored and len(stored) > count * _DIGEST_WIDTH:
            sql.cut_runs.run(cursor, {"sid": session_id, "count": count})

    @_again_if_dropped
    def _list(
        self, user_id: str | None, entity_id: str | None, limit: int | None, now: int | None
    ) -> list[str]:
        return [session_id for session_id, _ in self._listing(user_id, entity_id, limit, now)]

    @_again_if_dropped
    def _list_sessions(
        self, user_id: str | None, entity_id: str | None, limit: int | None, now: int
    ) -> list[Session]:
        # The listing's tokens tell which of the sessions this storage remembers unchanged.
        listed = self._listing(user_id, entity_id, limit, now)
        records = self._records([session_id for session_id, _ in listed], dict(listed))
        return self._sessions_of(records, user_id, entity_id, now)

    @_again_if_dropped
    def _read_stamps(self, ids: list[str], now: int) -> list[Stamp | None]:
        # From the header table alone: the runs table is never read.
        if not ids or self._current(rechecked=True).version == 0:
            return [None] * len(ids)
        found: dict[str, Stamp] = {}
        where = f"in table {self.table_name!r}"

        def read() -> None:
            with self._transaction(False) as conn:
                layout = self._in_snapshot(conn)
                if layout.version == 0:
                    return
                # The entity's column too, which only a table of this mode has: one of
                # another mode is refused, as a read refuses it, rather than purged.
                wanted = (*_STAMP_COLUMNS, self.spec.entity_field)
                names = [name for name in wanted if name in layout.columns]
                query = select(*(self.table.c[name] for name in names)).where(
                    self.table.c.session_id.in_(bindparam("ids", expanding=True))
                )
                for start in range(0, len(ids), _BATCH):
                    for row in conn.execute(query, {"ids": ids[start : start + _BATCH]}):
                        record = dict(zip(names, row, strict=True))
                        record["session_id"] = _text(record["session_id"])
                        check_stored(record, self.spec, where)
                        if not is_expired(record.get("expires_at"), now):
                            found[record["session_id"]] = self._stamp_of(record)

        self._call(read)
        return [found.get(session_id) for session_id in ids]

    def _listing(
        self, user_id: str | None, entity_id: str | None, limit: int | None, now: int | None
    ) -> list[tuple[str, str | None]]:
        """The ids of :meth:`_list` and the write token of each (None: the layout has none)."""
        values: dict[str, Any] = {"now": now, "limit": limit, "offset": 0}
        filters = []
        for name, value in (("user_id", user_id), (self.spec.entity_field, entity_id)):
            if value is not None:
                filters.append(name)
                values[name] = value
        layout = self._current(rechecked=True)
        if layout.version == 0:
            return []
        if layout.version >= LATEST:
            sql = self._statements()
            statement = sql.listing(tuple(filters), now is not None, limit is not None)

            def run(conn: Any) -> list[tuple[str, str | None]]:
                with self.dialect.one_statement(conn), _Cursor(conn) as cursor:
                    rows = statement.run(cursor, values).fetchall()
                return [(_text(session_id), token) for session_id, token in rows]

            with self._guard():
                return self._on_connection(run)

        def listing() -> list[tuple[str, str | None]]:
            with self._transaction(False) as conn:
                layout = self._in_snapshot(conn)
                if layout.version == 0:
                    return []
                live = now is not None and "expires_at" in layout.columns
                query = _listing_query(self.table, (), filters, live, limit is not None)
                rows = conn.execute(query, values).scalars()
                return [(session_id, None) for session_id in rows]

        return self._call(listing)

    @_again_if_dropped
    def _removal_layout(self) -> _Layout | None:
        """The table's layout for a removal; None when there is no table.

        Tables with savegame's columns but unrecorded are being made by another process
        (MySQL commits each CREATE TABLE, and refuses to describe one being made), or were
        left half made: a removal waits for them under the schema lock, as a write does,
        which also makes a missing runs table. A database file removed since this storage
        last saw it holds nothing to remove, and none is made.
        """
        if self._absent():
            self._forget()
            return None
        layout = self._current()
        if layout.version == 0:
            return None
        if layout.version < LATEST and "run_count" in layout.columns:
            self._make_tables(upgrade=False)
            layout = self._current()
        return layout

    @_again_if_dropped
    def _delete(
        self, session_id: str, owner: str | None = None, version: int | None = None
    ) -> bool:
        header = self.table
        self._known.put(session_id, None)
        which = header.c.session_id == session_id
        if owner is not None:
            which &= header.c.user_id == owner

        def remove() -> bool:
            layout = self._removal_layout()
            if layout is None:
                return False
            where = which
            if version is not None:
                if "version" in layout.columns:
                    where &= func.coalesce(header.c.version, 1) == version
                elif version != 1:
                    return False  # a table of the original's layout keeps sessions at 1
            with self._transaction(True) as conn:
                # The header first, then the runs: the order a write locks them in, so
                # that a delete and a write of one session never deadlock.
                result = conn.execute(delete(header).where(where))
                removed = result.rowcount
                if "run_count" in layout.columns:
                    removed += self._delete_runs(conn, session_id, bool(result.rowcount))
                if removed:
                    self._removed()
                return bool(result.rowcount)

        return self._call(lambda: self._again_on_deadlock(remove))

    def _delete_runs(self, conn: Connection, session_id: str, header_deleted: bool) -> int:
        """Deletes the runs of a session whose header this transaction has just deleted
        (``header_deleted``), or, where it found none, those no header stands for (runs
        left alone by a change made outside savegame); returns how many.

        Where it found no header, a write may make the session meanwhile: the runs it finds
        are locked, which waits for a write in progress to end, before a header is looked
        for, and only those go. A header committed with them is then seen; and the look
        takes no lock, so the delete does not wait, holding the runs, for the header of a
        write that waits for them (a write locks the header first). One statement that
        removed the runs "where no header stands for them" removed, now and then, the runs
        of a save committed while it ran, on MySQL, leaving that save's header without them.
        """
        runs = self.runs_table
        own = runs.c.session_id == session_id
        if header_deleted:
            # Its lock, held until this transaction ends, keeps every write of the session
            # out: each takes the header before the runs.
            return int(conn.execute(delete(runs).where(own)).rowcount)
        found = conn.execute(select(runs.c.position).where(own).with_for_update()).all()
        if not found:
            return 0
        header = self.table
        standing = select(header.c.session_id).where(header.c.session_id == session_id)
        if conn.execute(standing).first() is not None:
            return 0
        positions = [position for (position,) in found]
        return int(conn.execute(delete(runs).where(own, runs.c.position.in_(positions))).rowcount)

    @_again_if_dropped
    def _delete_many(self, session_ids: list[str], removed: list[str], still: Still) -> None:
        header = self.table
        owner, versions = still.owner, still.versions
        for session_id in session_ids:
            self._known.put(session_id, None)

        def remove() -> list[str]:
            layout = self._removal_layout()
            if layout is None:
                return []
            versioned = "version" in layout.columns
            version = func.coalesce(header.c.version, 1) if versioned else literal_column("1")
            with self._transaction(True) as conn:
                # The headers still to remove, locked first, as a write locks a header
                # before its runs; then their rows. A header already gone had its runs
                # removed with it.
                wanted = select(header.c.session_id, version).where(
                    header.c.session_id.in_(session_ids)
                )
                if owner is not None:
                    wanted = wanted.where(header.c.user_id == owner)
                found = [
                    _text(sid)
                    for sid, at in conn.execute(self._by_key(wanted).with_for_update())
                    if versions is None or versions.get(_text(sid)) == at
                ]
                if not found:
                    return []
                self._removed()
                self._delete_rows(conn, found, "run_count" in layout.columns)
                return found

        found = set(self._call(lambda: self._again_on_deadlock(remove)))
        removed += (session_id for session_id in session_ids if session_id in found)

    def _by_key(self, query: Select[Any]) -> Select[Any]:
        """``query``, a locking read of the session table by ``session_id IN (...)``, made
        to read by the primary key where the database locks every row a scan reads, the
        rows that do not match too (InnoDB): read by a scan, as the optimizer reads most of
        a small table, it waited on (and timed out on) the lock of a session it was not
        after, another user's being saved. Asked for in the key's order, the optimizer
        reads by the key; an index hint would do so more surely, but fails on a table
        without a primary key, which the original's tables may be."""
        if self.dialect.locks_scanned:
            query = query.order_by(self.table.c.session_id)
        return query

    def _delete_rows(self, conn: Connection, ids: list[str], runs: bool) -> None:
        """Deletes the headers of ``ids``, locked by this transaction, and with ``runs``
        their runs. Where the database locks every row a scan reads (see :meth:`_by_key`),
        one statement by key each: MySQL takes no index hint in a DELETE, and reads one
        of ``session_id IN (...)`` that names most of the table by a scan."""
        tables = [self.table, self.runs_table] if runs else [self.table]
        for table in tables:
            if self.dialect.locks_scanned:
                one = delete(table).where(table.c.session_id == bindparam("sid"))
                conn.execute(one, [{"sid": session_id} for session_id in ids])
            else:
                conn.execute(delete(table).where(table.c.session_id.in_(ids)))

    def _removed(self) -> None:
        """Notes that rows were removed (or are about to be), for :meth:`_erased`."""
        if self.dialect.keeps_erased:
            self._uncleared = True

    def _erased(self) -> None:
        if not self._uncleared:
            return
        # Unset first: an erasure of another thread that commits meanwhile sets it again,
        # and clears after this one.
        self._uncleared = False
        cleared = False
        try:
            with self._guard():
                cleared = self._on_connection(self.dialect.clear_erased)
        except _TableGone:
            cleared = True  # the database erased from is no longer at this address
        except StorageError as exc:
            # The removal itself committed: said, lest the caller take it for not made.
            kind = (
                type(exc) if type(exc) in (StorageError, BackendUnavailableError) else StorageError
            )
            raise kind(
                f"the sessions were removed, but clearing the copies the database keeps of "
                f"them failed (tried again at the next removal, or close()): {exc}"
            ) from exc
        finally:
            if not cleared:
                self._uncleared = True

    @_again_if_dropped
    def _purge_expired(self, now: int) -> int:
        header = self.table

        def purge() -> int:
            layout = self._removal_layout()
            if layout is None or "expires_at" not in layout.columns:
                return 0
            expired = header.c.expires_at <= now
            with self._transaction(True) as conn:
                if "run_count" not in layout.columns:
                    gone = int(conn.execute(delete(header).where(expired)).rowcount)
                    if gone:
                        self._removed()
                    return gone
                # The expired headers first, locked, as a write locks a header before its
                # runs: a session written again meanwhile (a new expiry) is no longer
                # expired once its lock is had, and keeps its runs; one written after
                # waits for the purge. Deleting the runs first, by a subquery, took the
                # runs of a session re-saved between the two deletes and left its header.
                # They are found first without a lock, then locked by their keys (see
                # _by_key).
                found = list(conn.execute(select(header.c.session_id).where(expired)).scalars())
                ids: list[str] = []
                for start in range(0, len(found), _BATCH):
                    wanted = select(header.c.session_id).where(
                        header.c.session_id.in_(found[start : start + _BATCH]), expired
                    )
                    ids += conn.execute(self._by_key(wanted).with_for_update()).scalars()
                if ids:
                    self._removed()
                for start in range(0, len(ids), _BATCH):
                    self._delete_rows(conn, ids[start : start + _BATCH], True)
                return len(ids)

        return self._call(lambda: self._again_on_deadlock(purge))

    def store_names(self) -> tuple[object, ...]:
        # The database as its URL names it, and the table.
        return (
            self.db_engine.url.render_as_string(hide_password=True),
            self.schema,
            self.table_name,
        )

    def __repr__(self) -> str:
        where = f"{self.schema}.{self.table_name}" if self.schema else self.table_name
        return f"{type(self).__name__}({where!r}, mode={self.mode!r})"


class ServerStorage(SqlStorage):
    """A SQL storage on a database server: the engine is made from ``db_url`` when not given.

    Subclasses say which driver (:attr:`driver`, the package and the extra that installs it),
    which dialect, and what the engine needs (:meth:`engine_options`).

    Args:
        table_name: the session table (runs go to ``<table_name>_runs``).
        schema: the schema (database, in MySQL) of the tables, made when missing.
        db_url: the database's SQLAlchemy URL; the driver is added when it names none.
        db_engine: an engine to use instead; the storage does not dispose of it.
        schema_version: accepted for compatibility with the original; unused.
        auto_upgrade_schema: upgrade a table of an older layout on first write.
        mode: the storage mode.
        expire: seconds after its last write that a session expires.
        connect_timeout: whole seconds to wait for a connection to the server, above 0;
            None: the URL's ``connect_timeout`` option, or :data:`CONNECT_TIMEOUT`.
        cache_bytes: how many bytes the storage may remember of its recent sessions
            (:mod:`savegame.storage.known`); 0 remembers none.

    Raises:
        InvalidIdentifierError: when neither ``db_url`` nor ``db_engine`` is given; for a
            table or schema name that is not a plain identifier, a ``db_url`` or
            ``db_engine`` that is not of this storage's database (or no ``Engine``), or both,
            a ``db_url`` that names another driver than savegame's (``postgresql+psycopg2``), a
            ``connect_timeout`` (the argument or the URL's) that is not a whole number of
            seconds above 0, or (MySQL) neither a database in the URL nor a ``schema``.
        MissingDependencyError: when the driver is not installed.
    """

    driver: ClassVar[tuple[str, str, str]]
    """(SQLAlchemy driver name, package to import, savegame extra that installs it)."""
    dialect_class: ClassVar[type[SqlDialect]]

    def __init__(
        self,
        table_name: str,
        schema: str | None = None,
        db_url: str | None = None,
        db_engine: Engine | None = None,
        schema_version: int = 1,
        auto_upgrade_schema: bool = False,
        mode: Mode | None = "agent",
        expire: int | None = None,
        *,
        connect_timeout: int | None = None,
        cache_bytes: int = DEFAULT_BYTES,
    ) -> None:
        if db_url is not None and db_engine is not None:
            # The engine was used and the URL ignored, which db_url went on showing.
            raise InvalidIdentifierError(
                f"{type(self).__name__} got db_url and db_engine: give one of them"
            )
        self.db_url = db_url
        owns = db_engine is None
        if db_engine is not None:
            check_engine(db_engine, type(self).__name__)
        else:
            if db_url is None:
                raise InvalidIdentifierError(f"{type(self).__name__} needs db_url or db_engine")
            url = database_url(db_url, type(self).__name__, self.dialect_class)
            check_driver(url, type(self).__name__, self.driver[0])
            given = CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
            timeout = int(check_seconds(given, "connect_timeout", whole=True))
            options = self.engine_options(timeout)
            if connect_timeout is None and "connect_timeout" in url.query:
                check_seconds(url.query["connect_timeout"], "connect_timeout", whole=True)
                del options["connect_args"]["connect_timeout"]  # the URL's, then
            db_engine = server_engine(url, *self.driver, self.prepare_engine, **options)
        if self.dialect_class.needs_database and schema is None and not db_engine.url.database:
            # The first call failed on an AssertionError of SQLAlchemy's.
            if owns:
                release_engine(db_engine)
            raise InvalidIdentifierError(
                f"{type(self).__name__}: {redact(db_engine.url.render_as_string())!r} names no "
                f"database; name one in it ({self.dialect_class.example}) or give schema="
            )
        super().__init__(
            table_name,
            db_engine,
            self.dialect_class(),
            schema,
            schema_version,
            auto_upgrade_schema,
            mode,
            expire,
            owns_engine=owns,
            cache_bytes=cache_bytes,
        )

    @functools.cached_property
    def _server_url(self) -> URL:
        """The engine's URL as it names the server, the same however the server is spelled:
        the scheme without its driver (``mariadb://`` as ``mysql://``), the host in lower case
        and the port given, the default one too."""
        url = self.db_engine.url.set(drivername=self.dialect_class.backends[0])
        if not url.host:
            return url
        return url.set(host=url.host.lower(), port=url.port or self.dialect_class.default_port)

    def store_names(self) -> tuple[object, ...]:
        return (
            self._server_url.render_as_string(hide_password=True),
            self.schema,
            self.table_name,
        )

    @classmethod
    def engine_options(cls, connect_timeout: int) -> dict[str, Any]:
        """Keyword arguments for :func:`sqlalchemy.create_engine`."""
        return {"connect_args": {"connect_timeout": connect_timeout}}

    @classmethod
    def prepare_engine(cls, engine: Engine) -> None:
        """Readies an engine this storage class made, before any storage uses it (its
        event listeners, say); an application's own engine is left as it is."""


# -- migrations -------------------------------------------------------------------------


def _add_columns(storage: SqlStorage, conn: Connection, names: Iterable[str]) -> None:
    """Adds the columns of the current table definition that the table lacks, and indexes."""
    inspector = inspect(conn)
    table = storage.table
    have = {c["name"] for c in inspector.get_columns(table.name, table.schema)}
    preparer = conn.dialect.identifier_preparer
    for name in names:
        if name in have:
            continue
        column = table.c[name]
        column_type = column.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(
            f"ALTER TABLE {preparer.format_table(table)} "
            f"ADD COLUMN {preparer.quote(name)} {column_type}"
        )
    # Told apart by their columns, not their names: SQLAlchemy cuts a name longer than the
    # database takes (the index of a long table's user_id) only when it makes the index, so
    # the name the database gives back is not the one the table definition holds.
    indexed = {tuple(i["column_names"]) for i in inspector.get_indexes(table.name, table.schema)}
    for index in table.indexes:
        if tuple(c.name for c in index.columns) not in indexed and all(
            c.name in names or c.name in have for c in index.columns
        ):
            index.create(conn, checkfirst=True)


_LATER_COLUMNS = ("run_count", "write_token", "past_tokens")
"""Columns that migrations after the second add."""


def _savegame_columns(storage: SqlStorage, conn: Connection) -> None:
    fields = [c.name for c in storage.table.c if c.name not in _LATER_COLUMNS]
    _add_columns(storage, conn, fields)
    storage.dialect.adopt_id_types(conn, storage.table)


def _runs_table(storage: SqlStorage, conn: Connection) -> None:
    _add_columns(storage, conn, ["run_count"])
    storage.runs_table.create(conn, checkfirst=True)
    header = storage.table
    # A runs table may be there already: savegame made it for a table that another program
    # dropped and made again (the original's drop() knows its own table only). Its rows are
    # of sessions gone, or of sessions whose runs are in the header again: moved below, runs
    # would meet them at their positions, and a session made later would be read with them.
    # Rows of sessions whose runs are apart already (an upgrade cut short) are theirs.
    apart = select(header.c.session_id).where(header.c.run_count.is_not(None))
    runs_table = storage.runs_table
    conn.execute(delete(runs_table).where(runs_table.c.session_id.not_in(apart)))
    _move_runs(storage, conn)
    storage.dialect.analyze(conn, runs_table)


def _borne_out(version: int, names: set[str]) -> int:
    """``version``, a recorded layout below the latest, as far as a table's columns ``names``
    bear it out: the original may have made the table again after an earlier savegame
    recorded it, and every migration adds a column (see ``_MARKS``)."""
    for migration, column in _MARKS:
        if column not in names:
            return min(version, migration - 1)
    return version


def _move_runs(storage: SqlStorage, conn: Connection) -> None:
    """Moves the runs of every session whose runs are in its header to the runs table."""
    header = storage.table
    runs_table = storage.runs_table
    column = header.c[storage.spec.runs_path[0]]
    dumps = storage.dialect.dumps
    after = ""
    while True:
        # Locked until the upgrade commits: MySQL commits each ALTER TABLE, so the table is
        # not locked while the runs move, and a save by the original between this read and
        # the update below would be overwritten with what was read.
        rows = conn.execute(
            select(header.c.session_id, column)
            .where(header.c.run_count.is_(None), header.c.session_id > after)
            .order_by(header.c.session_id)
            .limit(_BATCH)
            .with_for_update()
        ).all()
        if not rows:
            return
        headers: list[dict[str, Any]] = []
        moved: list[dict[str, Any]] = []
        size = 0
        for session_id, text in rows:
            after = session_id
            if len(_text(session_id)) > codec.MAX_ID_LENGTH:
                # The original took ids of any length (PostgreSQL's VARCHAR without one);
                # the runs table keeps savegame's. Such a session stays as it was written,
                # runs inline, which savegame reads as they are.
                continue
            try:
                value = {column.name: None if text is None else storage.dialect.loads(text)}
            except ValueError as exc:
                raise CorruptSessionError(
                    f"session {_text(session_id)!r} in table {storage.table_name!r} holds "
                    f"JSON that cannot be read in its {column.name!r}: {exc}; fix or delete "
                    "that row, then upgrade again"
                ) from exc
            rest, runs = split_runs(value, storage.spec.runs_path)
            if runs is None:
                continue
            kept = rest.get(column.name)
            try:
                head = None if kept is None else dumps(kept)
                texts = [dumps(run) for run in runs]
            except ValueError:
                # NaN or an infinity, which the original's json.dumps wrote and savegame
                # never stores: such a session stays as it was written, as a long id does.
                continue
            headers.append({"sid": session_id, column.name: head, "run_count": len(runs)})
            moved.extend(
                {"session_id": session_id, "position": i, "digest": _digest(t), "run": t}
                for i, t in enumerate(texts)
            )
            size += sum(map(len, texts))
            if size > _MOVE_TEXT:
                _moved(conn, header, runs_table, headers, moved)
                size = 0
        _moved(conn, header, runs_table, headers, moved)


_MOVE_TEXT = 8 << 20
"""Characters of runs an upgrade holds before it writes them, within a batch of sessions."""


def _moved(
    conn: Connection,
    header: Table,
    runs_table: Table,
    headers: list[dict[str, Any]],
    moved: list[dict[str, Any]],
) -> None:
    """Writes the headers and runs of sessions whose runs an upgrade moved, and empties
    both lists.

    In two statements, each run for many rows (the drivers send them in a few round
    trips), rather than two a session: one by one, the upgrade of 50,000 sessions took
    minutes, which PostgreSQL spends holding the table locked.
    """
    if headers:
        conn.execute(update(header).where(header.c.session_id == bindparam("sid")), headers)
    if moved:
        conn.execute(runs_table.insert(), moved)
    headers.clear()
    moved.clear()


def _write_token(storage: SqlStorage, conn: Connection) -> None:
    _add_columns(storage, conn, ["write_token"])


def _past_tokens(storage: SqlStorage, conn: Connection) -> None:
    _add_columns(storage, conn, ["past_tokens"])


_MARKS = ((2, "expires_at"), (3, "run_count"), (4, "write_token"), (5, "past_tokens"))
"""Each migration with a column it adds, in order: a table lacking it is not past the one before."""

MIGRATIONS: list[Migration] = [
    Migration(2, "every session field as a column; version and expires_at", _savegame_columns),
    Migration(3, "runs in <table>_runs, one row each; run_count in the header", _runs_table),
    Migration(4, "write_token: a random id of each session's last write", _write_token),
    Migration(5, "past_tokens: the tokens of each session's writes before its last", _past_tokens),
]
"""Append-only. Version 1 is the original's table; each entry brings a table one step on."""

LATEST = MIGRATIONS[-1].version
