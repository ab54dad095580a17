"""What the SQLite, PostgreSQL and MySQL backends share, on SQLAlchemy Core.

Layout. A storage owns two tables, both in its schema:

``<table>``
    one *header* row per session, with the original's column names: ``session_id`` (primary
    key), one column per field of the mode's session class (the ids as indexed strings,
    ``memory`` and the ``*_data`` fields as JSON, ``created_at``/``updated_at`` as integers),
    plus savegame's ``version``, ``expires_at`` (indexed, for purges) and ``run_count``.
``<table>_runs``
    one row per run of the list at the mode's ``runs_path`` (``memory["runs"]``, or ``runs``
    in ``workflow_v2``), keyed by ``(session_id, position)``, with a digest of its JSON text.

``run_count`` says where the runs are: NULL means "as they are in the header" (a session
whose runs are not a list, or a row written by the original, which kept runs inline), a
number means "that many rows in ``<table>_runs``". A write sends the header and only the
runs whose digest changed, and deletes the runs past the new end, in one transaction, so a
save costs what changed, not the length of the conversation. Listings read headers only.

Transactions. A write locks the session's header row first (``SELECT ... FOR UPDATE``; in
SQLite the whole database with ``BEGIN IMMEDIATE``), so checking the version and writing are
one atomic step; two first inserts of one session meet at the primary key and the loser runs
again, now seeing the row. Reads run in a snapshot (``REPEATABLE READ`` where the database
has levels), so header and runs always come from the same write.

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

import hashlib
import importlib
import re
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar, get_args, get_origin, get_type_hints
from urllib.parse import urlencode

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    delete,
    func,
    inspect,
    make_url,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection
from sqlalchemy.schema import CreateSchema
from sqlalchemy.sql.expression import Executable
from sqlalchemy.types import TypeEngine, UserDefinedType

from savegame.errors import (
    BackendUnavailableError,
    CorruptSessionError,
    MissingDependencyError,
    SerializationError,
    StorageError,
)
from savegame.storage import codec
from savegame.storage.base import Header, Record, Storage
from savegame.storage.session import Mode, ModeSpec, mode_spec, set_path, split_runs
from savegame.storage.url import StorageURL

MIGRATIONS_TABLE = "savegame_migrations"
"""The table, in each schema savegame writes to, that records each table's layout version."""

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,57}")
# 58 characters leave room for "_runs" within PostgreSQL's 63-character identifiers.

_ATTEMPTS = 5
_BATCH = 500


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


class SqlDialect(ABC):
    """What differs between the SQL databases savegame supports; one subclass each.

    Attributes:
        title: the database's name in messages.
        read_isolation: the isolation level that makes a read's statements one snapshot
            (None where every transaction already is one).
        table_options: keyword arguments for each :class:`~sqlalchemy.Table`.
    """

    title: ClassVar[str] = "SQL"
    settings: tuple[Any, ...] = ()
    """What :meth:`configure` sets on a connection; a connection is set up again when it differs."""
    read_isolation: ClassVar[str | None] = None
    table_options: ClassVar[dict[str, Any]] = {}

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

    def dumps(self, value: Any) -> str:
        """JSON text for a JSON column."""
        return codec.dumps(value)

    def loads(self, text: str | bytes) -> Any:
        """The value of a JSON column's text."""
        return codec.loads(text)

    # -- statements -----------------------------------------------------------------------

    @abstractmethod
    def upsert(self, table: Table, keys: Sequence[str]) -> Executable:
        """INSERT into ``table`` that updates every other column when ``keys`` exist."""

    # -- connections and transactions -----------------------------------------------------

    def configure(self, conn: Connection) -> None:
        """Sets up a new DBAPI connection before its first use by savegame."""

    @contextmanager
    def transaction(self, conn: Connection, write: bool) -> Iterator[Connection]:
        """A transaction on ``conn``: a snapshot for reads, row locks for writes."""
        if not write and self.read_isolation is not None:
            conn = conn.execution_options(isolation_level=self.read_isolation)
        with conn.begin():
            yield conn

    def schema_lock(self, conn: Connection) -> None:
        """Serializes schema changes between processes, inside the transaction on ``conn``."""

    def release_schema_lock(self, conn: Connection) -> None:
        """Releases what :meth:`schema_lock` took, where it outlives the transaction."""

    def create_schema(self, conn: Connection, schema: str | None) -> None:
        """Makes ``schema`` when it is missing (None: the connection's default is used)."""
        if schema is not None:
            conn.execute(CreateSchema(schema, if_not_exists=True))

    # -- errors ---------------------------------------------------------------------------

    def unavailable(self, error: BaseException) -> bool:
        """Whether a driver error means the database is unreachable or stayed locked."""
        return False

    def retryable(self, error: sa_exc.DBAPIError) -> bool:
        """Whether a write that failed with ``error`` may simply run again.

        Two first inserts of one session meet at the primary key; the one that loses sees
        the row when it runs again.
        """
        return isinstance(error, sa_exc.IntegrityError)


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
    """What a storage knows about its table: the layout version and the columns it has."""

    version: int
    columns: frozenset[str]


_MISSING = _Layout(0, frozenset())
ORIGINAL_VERSION = 1
"""The layout version of a table written by the original: runs inline, no savegame columns."""


def _field_kinds(spec: ModeSpec) -> dict[str, type]:
    """Each field of the mode's session class and the Python type it holds."""
    kinds: dict[str, type] = {}
    for name, hint in get_type_hints(spec.session_class).items():
        args = [a for a in get_args(hint) if a is not type(None)] or [hint]
        kinds[name] = get_origin(args[0]) or args[0]
    return kinds


@dataclass(frozen=True)
class Tables:
    """The tables of one storage, with what the code needs to know about their columns."""

    header: Table
    runs: Table
    migrations: Table
    json_columns: frozenset[str]


def build_tables(spec: ModeSpec, dialect: SqlDialect, name: str, schema: str | None) -> Tables:
    """The tables of a storage, derived from the fields of the mode's session class."""
    metadata = MetaData(schema=schema)
    indexed = {"user_id", spec.entity_field}
    json_columns: set[str] = set()
    columns: list[Column[Any]] = []
    for field, kind in _field_kinds(spec).items():
        if field == "session_id":
            columns.append(Column(field, dialect.id_type(), primary_key=True))
        elif kind is str:
            id_like = field in indexed
            column_type = dialect.id_type() if id_like else dialect.text_type()
            columns.append(Column(field, column_type, index=id_like))
        elif kind is int:
            columns.append(Column(field, BigInteger))
        else:
            json_columns.add(field)
            columns.append(Column(field, dialect.json_type()))
    columns.append(Column("expires_at", BigInteger, index=True))
    columns.append(Column("run_count", Integer))
    header = Table(name, metadata, *columns, **dialect.table_options)
    runs = Table(
        f"{name}_runs",
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


def server_engine(db_url: str, driver: str, package: str, extra: str, **options: Any) -> Engine:
    """A shared engine for a database server, with ``driver`` unless the URL names one.

    The pool checks each connection before handing it out, so a restarted server or a
    connection the server closed costs a reconnect, not an error.

    Raises:
        MissingDependencyError: when the driver's package is not installed.
    """
    try:
        importlib.import_module(package)
    except ImportError as exc:
        raise MissingDependencyError(package, extra) from exc
    url = make_url(db_url)
    base = {"postgres": "postgresql"}.get(url.drivername, url.drivername)
    if "+" not in base:
        url = url.set(drivername=f"{base}+{driver}")
    return shared_engine(url, pool_pre_ping=True, **options)


_SHARED: dict[tuple[str, str], list[Any]] = {}
_SHARED_LOCK = threading.Lock()


def shared_engine(url: URL, **options: Any) -> Engine:
    """One engine per URL and options in this process, so that storages share a pool.

    A server allows a limited number of connections; an application that opens a storage
    per mode, or per request, would otherwise keep a pool of idle connections for each.
    Give it back with :func:`release_engine`.
    """
    key = (url.render_as_string(hide_password=False), repr(sorted(options.items())))
    with _SHARED_LOCK:
        entry = _SHARED.get(key)
        if entry is None:
            entry = _SHARED[key] = [create_engine(url, **options), 0]
        entry[1] += 1
        engine: Engine = entry[0]
        return engine


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
    """The database URL of a storage URL: its query options savegame did not take, kept."""
    rest = {k: str(v) for k, v in url.options.items() if k != "mode"}
    return url.raw + ("?" + urlencode(rest) if rest else "")


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class _Statements:
    """The statements of the hot paths, built once so that each call only binds values."""

    def __init__(self, tables: Tables, dialect: SqlDialect) -> None:
        header, runs = tables.header, tables.runs
        sid: Any = bindparam("sid")
        ids: Any = bindparam("ids", expanding=True)
        self.lock_header = (
            select(header.c.version, header.c.created_at, header.c.expires_at)
            .where(header.c.session_id == sid)
            .with_for_update()
        )
        self.insert_header = header.insert()
        self.update_header = update(header).where(header.c.session_id == sid)
        self.digests = select(runs.c.position, runs.c.digest).where(runs.c.session_id == sid)
        self.upsert_run = dialect.upsert(runs, ("session_id", "position"))
        self.cut_runs = delete(runs).where(
            runs.c.session_id == sid, runs.c.position >= bindparam("count")
        )
        self.header = select(header).where(header.c.session_id == sid)
        self.headers = select(header).where(header.c.session_id.in_(ids))
        self.runs_of_one = (
            select(runs.c.session_id, runs.c.run)
            .where(runs.c.session_id == sid)
            .order_by(runs.c.position)
        )
        self.runs = (
            select(runs.c.session_id, runs.c.run)
            .where(runs.c.session_id.in_(ids))
            .order_by(runs.c.session_id, runs.c.position)
        )


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
        serialize: whether the engine has one connection that threads must take in turn.
    """

    capabilities = frozenset({"persistent", "processes"})

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
    ) -> None:
        super().__init__(mode, expire)
        self.table_name = codec.check_name(table_name, "table name", _TABLE_NAME)
        self.schema = None if schema is None else codec.check_name(schema, "schema name")
        self.schema_version = schema_version
        self.auto_upgrade_schema = auto_upgrade_schema
        self.db_engine = engine
        self.dialect = dialect
        self._owns_engine = owns_engine
        self._lock: AbstractContextManager[Any] = (
            engine_lock(engine) if serialize else nullcontext()
        )
        self._layout_lock = threading.Lock()
        self._define_tables()

    def _define_tables(self) -> None:
        """The table definitions of the current mode; the layout is asked for again."""
        self._layout = _MISSING
        self._tables = build_tables(self.spec, self.dialect, self.table_name, self.schema)
        self._sql = _Statements(self._tables, self.dialect)

    @property
    def mode(self) -> str:
        """The kind of sessions this storage holds; setting it switches the table's columns."""
        return self.spec.mode

    @mode.setter
    def mode(self, value: Mode | None) -> None:
        self._spec = mode_spec(value)
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
        return self.db_engine.url.render_as_string(hide_password=True)

    # -- transactions and errors ----------------------------------------------------------

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """The one place where driver errors become savegame errors."""
        try:
            yield
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated or (
                exc.orig is not None and self.dialect.unavailable(exc.orig)
            ):
                raise BackendUnavailableError(
                    f"{self.dialect.title} at {self.where()} is unavailable: {exc.orig}"
                ) from exc
            if isinstance(exc, sa_exc.DataError):
                raise SerializationError(
                    f"{self.dialect.title} refused a value of table {self.table_name!r}: {exc.orig}"
                ) from exc
            raise StorageError(
                f"{self.dialect.title} at {self.where()}, table {self.table_name!r}: {exc.orig}"
            ) from exc
        except sa_exc.TimeoutError as exc:
            raise BackendUnavailableError(
                f"no connection to {self.dialect.title} at {self.where()} came free: {exc}"
            ) from exc
        except sa_exc.SQLAlchemyError as exc:
            raise StorageError(f"{self.dialect.title} at {self.where()}: {exc}") from exc

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        with self._lock, self.db_engine.connect() as conn:
            # Storages sharing an engine may want other settings (SQLite's synchronous).
            if conn.info.get("savegame") != self.dialect.settings:
                self.dialect.configure(conn)
                conn.info["savegame"] = self.dialect.settings
            yield conn

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Connection]:
        with self._connection() as conn, self.dialect.transaction(conn, write) as tx:
            yield tx

    @contextmanager
    def _schema_change(self) -> Iterator[Connection]:
        """A write transaction holding the lock that serializes schema changes.

        The lock is let go only after the commit, so the next process to take it sees every
        change this one made.
        """
        with self._connection() as conn:
            try:
                with self.dialect.transaction(conn, True) as tx:
                    self.dialect.schema_lock(tx)
                    yield tx
            finally:
                if not conn.invalidated:
                    self.dialect.release_schema_lock(conn)

    # -- the layout -----------------------------------------------------------------------

    def _detect(self, conn: Connection) -> _Layout:
        inspector = inspect(conn)
        if not inspector.has_table(self.table_name, self.schema):
            return _MISSING
        version = ORIGINAL_VERSION
        if inspector.has_table(MIGRATIONS_TABLE, self.schema):
            migrations = self._tables.migrations
            recorded = conn.execute(
                select(migrations.c.version).where(migrations.c.table_name == self.table_name)
            ).scalar()
            version = recorded or version
        if version >= LATEST:
            return _Layout(version, frozenset(self.table.c.keys()))
        names = {c["name"] for c in inspector.get_columns(self.table_name, self.schema)}
        return _Layout(version, frozenset(names))

    def _current(self) -> _Layout:
        """The table's layout, asking the database until the table is at the latest one."""
        layout = self._layout
        if layout.version >= LATEST:
            return layout
        with self._transaction(False) as conn:
            layout = self._detect(conn)
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

    def create(self) -> None:
        """Makes the schema, the tables and their indexes; does nothing when they exist.

        An existing table of an older layout is left as it is (see :meth:`upgrade_schema`),
        unless the storage was made with ``auto_upgrade_schema=True``.

        Raises:
            BackendUnavailableError: when the database cannot be reached or stays locked.
        """
        self._make_tables(upgrade=self.auto_upgrade_schema)

    def table_exists(self) -> bool:
        """Whether the session table exists.

        Raises:
            BackendUnavailableError: when the database cannot be reached.
        """
        with self._guard(), self._transaction(False) as conn:
            return inspect(conn).has_table(self.table_name, self.schema)

    def drop(self) -> None:
        """Drops this storage's two tables and its line in ``savegame_migrations``.

        Raises:
            BackendUnavailableError: when the database cannot be reached or stays locked.
        """
        with self._guard():
            with self._schema_change() as conn:
                self.runs_table.drop(conn, checkfirst=True)
                self.table.drop(conn, checkfirst=True)
                if inspect(conn).has_table(MIGRATIONS_TABLE, self.schema):
                    migrations = self._tables.migrations
                    conn.execute(
                        delete(migrations).where(migrations.c.table_name == self.table_name)
                    )
            with self._layout_lock:
                self._layout = _MISSING

    def upgrade_schema(self) -> None:
        """Applies the migrations the table is missing, in one transaction where DDL allows.

        Running it again does nothing. A missing table is made at the latest layout.

        Raises:
            BackendUnavailableError: when the database cannot be reached or stays locked.
        """
        self._make_tables(upgrade=True)

    def _make_tables(self, upgrade: bool) -> None:
        """Makes missing tables at the latest layout; with ``upgrade``, migrates older ones."""
        with self._guard():
            with self._schema_change() as conn:
                self.dialect.create_schema(conn, self.schema)
                layout = self._detect(conn)
                if layout.version == 0:
                    for table in (self.table, self.runs_table, self._tables.migrations):
                        table.create(conn, checkfirst=True)
                elif upgrade:
                    for migration in MIGRATIONS:
                        if migration.version > layout.version:
                            migration.apply(self, conn)
                if layout.version == 0 or upgrade:
                    self._record_version(conn, LATEST)
                    layout = _Layout(LATEST, frozenset(self.table.c.keys()))
            with self._layout_lock:
                self._layout = layout

    def _record_version(self, conn: Connection, version: int) -> None:
        migrations = self._tables.migrations
        migrations.create(conn, checkfirst=True)
        statement = self.dialect.upsert(migrations, ("table_name",))
        conn.execute(statement, {"table_name": self.table_name, "version": version})

    def close(self) -> None:
        """Gives back the engine, when this storage made it; the last user disposes of it."""
        if self._owns_engine:
            self._owns_engine = False
            release_engine(self.db_engine)

    # -- records and rows -----------------------------------------------------------------

    def _row_values(self, record: Record) -> tuple[dict[str, Any], list[Any] | None]:
        """The header row of a record, and its runs when they go to the runs table."""
        header, runs = split_runs(record, self.spec.runs_path)
        json_columns = self._tables.json_columns
        values: dict[str, Any] = {}
        for name in (c.name for c in self.table.c):
            value = header.get(name)
            if name in json_columns and value is not None:
                value = self.dialect.dumps(value)
            values[name] = value
        values["run_count"] = None if runs is None else len(runs)
        return values, runs

    def _record(self, row: Any, runs: list[Any]) -> Record:
        """The record of a header row and the decoded runs of its session."""
        json_columns = self._tables.json_columns
        record: Record = {}
        try:
            for name, value in row._mapping.items():
                if name in json_columns and value is not None:
                    value = self.dialect.loads(value)
                record[name] = value
        except ValueError as exc:
            raise CorruptSessionError(
                f"session {record.get('session_id')!r} in table {self.table_name!r} "
                f"holds JSON that cannot be read: {exc}"
            ) from exc
        count = record.pop("run_count", None)
        if count is not None:
            if len(runs) != count:
                raise CorruptSessionError(
                    f"session {record['session_id']!r} should have {count} runs in table "
                    f"{self.runs_table.name!r} and has {len(runs)}"
                )
            set_path(record, self.spec.runs_path, runs)
        return record

    def _header_select(self, layout: _Layout, one: bool) -> Any:
        """The header query for one id (``:sid``) or several (``:ids``)."""
        if layout.version >= LATEST:
            return self._sql.header if one else self._sql.headers
        key = self.table.c.session_id
        match = key == bindparam("sid") if one else key.in_(bindparam("ids", expanding=True))
        return select(*[c for c in self.table.c if c.name in layout.columns]).where(match)

    def _runs_of(self, conn: Connection, ids: Sequence[str]) -> dict[str, list[Any]]:
        """The decoded runs of each session in ``ids``, in position order."""
        if len(ids) == 1:
            rows = conn.execute(self._sql.runs_of_one, {"sid": ids[0]})
        else:
            rows = conn.execute(self._sql.runs, {"ids": list(ids)})
        found: dict[str, list[Any]] = {}
        try:
            for session_id, text in rows:
                found.setdefault(session_id, []).append(
                    None if text is None else self.dialect.loads(text)
                )
        except ValueError as exc:
            raise CorruptSessionError(
                f"a run in table {self.runs_table.name!r} holds JSON that cannot be read: {exc}"
            ) from exc
        return found

    # -- primitives -----------------------------------------------------------------------

    def _read(self, session_id: str) -> Record | None:
        records = self._read_many([session_id])
        return records[0]

    def _read_many(self, ids: Iterable[str]) -> list[Record | None]:
        wanted = list(ids)
        found: dict[str, Record] = {}
        with self._guard():
            layout = self._current()
            if layout.version == 0 or not wanted:
                return [None] * len(wanted)
            with self._transaction(False) as conn:
                for start in range(0, len(wanted), _BATCH):
                    chunk = wanted[start : start + _BATCH]
                    # A single id takes the plain "=" query: IN lists are rendered per call.
                    one = len(chunk) == 1
                    query = self._header_select(layout, one)
                    params = {"sid": chunk[0]} if one else {"ids": chunk}
                    rows = conn.execute(query, params).all()
                    with_runs = [r.session_id for r in rows if r._mapping.get("run_count")]
                    runs = self._runs_of(conn, with_runs) if with_runs else {}
                    for row in rows:
                        found[row.session_id] = self._record(row, runs.get(row.session_id, []))
        return [found.get(session_id) for session_id in wanted]

    def _write(
        self, data: Record, expected_version: int | None, now: int, preserve: bool
    ) -> Record:
        with self._guard():
            self._writable()
            for attempt in range(_ATTEMPTS):
                try:
                    with self._transaction(True) as conn:
                        return self._write_in(conn, data, expected_version, now, preserve)
                except sa_exc.DBAPIError as exc:
                    if attempt + 1 == _ATTEMPTS or not self.dialect.retryable(exc):
                        raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _write_in(
        self,
        conn: Connection,
        data: Record,
        expected_version: int | None,
        now: int,
        preserve: bool,
    ) -> Record:
        session_id = data["session_id"]
        row = conn.execute(self._sql.lock_header, {"sid": session_id}).first()
        current = None if row is None else Header(row.version or 1, row.created_at, row.expires_at)
        record = self._stamp(data, current, expected_version, now, preserve)
        values, runs = self._row_values(record)
        if row is None:
            conn.execute(self._sql.insert_header, values)
        else:
            del values["session_id"]
            conn.execute(self._sql.update_header, {**values, "sid": session_id})
        self._write_runs(conn, session_id, runs, fresh=row is None)
        return record

    def _write_runs(
        self, conn: Connection, session_id: str, runs: list[Any] | None, fresh: bool
    ) -> None:
        """Writes the runs whose text changed and deletes those past the end."""
        stored: dict[int, str] = {}
        if not fresh:
            stored = dict(conn.execute(self._sql.digests, {"sid": session_id}).all())
        changed = []
        for position, run in enumerate(runs or ()):
            text = None if run is None else self.dialect.dumps(run)
            digest = _digest("null" if text is None else text)
            if stored.get(position) != digest:
                changed.append(
                    {"session_id": session_id, "position": position, "digest": digest, "run": text}
                )
        if changed:
            conn.execute(self._sql.upsert_run, changed)
        count = len(runs or ())
        if any(position >= count for position in stored):
            conn.execute(self._sql.cut_runs, {"sid": session_id, "count": count})

    def _list(
        self, user_id: str | None, entity_id: str | None, limit: int | None, now: int | None
    ) -> list[str]:
        header = self.table
        with self._guard():
            layout = self._current()
            if layout.version == 0:
                return []
            query = select(header.c.session_id)
            if user_id is not None:
                query = query.where(header.c.user_id == user_id)
            if entity_id is not None:
                query = query.where(header.c[self.spec.entity_field] == entity_id)
            if now is not None and "expires_at" in layout.columns:
                expires = header.c.expires_at
                query = query.where(expires.is_(None) | (expires > now))
            query = query.order_by(
                func.coalesce(header.c.created_at, 0).desc(), header.c.session_id
            )
            if limit is not None:
                query = query.limit(limit)
            with self._transaction(False) as conn:
                return list(conn.execute(query).scalars())

    def _delete(self, session_id: str) -> bool:
        header = self.table
        with self._guard():
            layout = self._current()
            if layout.version == 0:
                return False
            with self._transaction(True) as conn:
                if "run_count" in layout.columns:
                    runs_table = self.runs_table
                    conn.execute(delete(runs_table).where(runs_table.c.session_id == session_id))
                result = conn.execute(delete(header).where(header.c.session_id == session_id))
                return bool(result.rowcount)

    def _purge_expired(self, now: int) -> int:
        header = self.table
        with self._guard():
            layout = self._current()
            if "expires_at" not in layout.columns:
                return 0
            expired = header.c.expires_at <= now
            with self._transaction(True) as conn:
                if "run_count" in layout.columns:
                    runs_table = self.runs_table
                    gone = select(header.c.session_id).where(expired)
                    conn.execute(delete(runs_table).where(runs_table.c.session_id.in_(gone)))
                return int(conn.execute(delete(header).where(expired)).rowcount)

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
        connect_timeout: seconds to wait for a connection to the server.

    Raises:
        ValueError: when neither ``db_url`` nor ``db_engine`` is given.
        InvalidIdentifierError: for a table or schema name that is not a plain identifier.
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
        connect_timeout: int = 5,
    ) -> None:
        self.db_url = db_url
        owns = db_engine is None
        if db_engine is None:
            if db_url is None:
                raise ValueError(f"{type(self).__name__} needs db_url or db_engine")
            db_engine = server_engine(db_url, *self.driver, **self.engine_options(connect_timeout))
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
        )

    @classmethod
    def engine_options(cls, connect_timeout: int) -> dict[str, Any]:
        """Keyword arguments for :func:`sqlalchemy.create_engine`."""
        return {"connect_args": {"connect_timeout": connect_timeout}}


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
    indexed = {i["name"] for i in inspector.get_indexes(table.name, table.schema)}
    for index in table.indexes:
        if index.name not in indexed and all(
            c.name in names or c.name in have for c in index.columns
        ):
            index.create(conn, checkfirst=True)


def _savegame_columns(storage: SqlStorage, conn: Connection) -> None:
    fields = [c.name for c in storage.table.c if c.name != "run_count"]
    _add_columns(storage, conn, fields)


def _runs_table(storage: SqlStorage, conn: Connection) -> None:
    _add_columns(storage, conn, ["run_count"])
    storage.runs_table.create(conn, checkfirst=True)
    header = storage.table
    column = header.c[storage.spec.runs_path[0]]
    after = ""
    while True:
        rows = conn.execute(
            select(header.c.session_id, column)
            .where(header.c.run_count.is_(None), header.c.session_id > after)
            .order_by(header.c.session_id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        for session_id, text in rows:
            after = session_id
            value = {column.name: None if text is None else storage.dialect.loads(text)}
            rest, runs = split_runs(value, storage.spec.runs_path)
            if runs is None:
                continue
            kept = rest.get(column.name)
            conn.execute(
                update(header).where(header.c.session_id == session_id),
                {
                    column.name: None if kept is None else storage.dialect.dumps(kept),
                    "run_count": len(runs),
                },
            )
            storage._write_runs(conn, session_id, runs, fresh=True)


MIGRATIONS: list[Migration] = [
    Migration(2, "every session field as a column; version and expires_at", _savegame_columns),
    Migration(3, "runs in <table>_runs, one row each; run_count in the header", _runs_table),
]
"""Append-only. Version 1 is the original's table; each entry brings a table one step on."""

LATEST = MIGRATIONS[-1].version
