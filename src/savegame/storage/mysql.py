"""MySQL and MariaDB with PyMySQL: utf8mb4 everywhere, ``ON DUPLICATE KEY UPDATE``.

Only what is particular to MySQL lives here; the layout, queries and migrations are in
:mod:`savegame.storage.sql`.

* JSON goes into ``LONGTEXT`` columns written by savegame's serializer, not into MySQL's
  ``JSON`` type: MariaDB's ``JSON`` is ``LONGTEXT`` checked by ``json_valid``, which refuses
  documents nested more than 32 levels, and MySQL's refuses more than 100; savegame accepts
  sessions nested 512 levels deep. Tables written by the original, with ``JSON`` columns,
  are read and written as they are.
* Ids are ``VARBINARY`` holding UTF-8: compared byte for byte, so ``a``, ``A`` and ``a ``
  are three sessions (utf8mb4 collations fold case or ignore trailing spaces), and sorted in
  code-point order, like every other backend.
* Schema changes of concurrent processes take turns under a named lock (``GET_LOCK``); one
  that waited :data:`_SCHEMA_LOCK_WAIT` seconds for it in vain raises
  :class:`~savegame.errors.BackendUnavailableError` and changes nothing.
* Writes run in ``READ COMMITTED`` (a missing row takes no gap lock, so two first writes of
  different sessions never deadlock), reads in ``REPEATABLE READ`` (one snapshot).
* A read of one session gets its header as one JSON array (``JSON_ARRAY``) rather than as
  sixteen columns: PyMySQL parses each column's description in Python, which took longer
  than the rest of such a read. An array, or a value in it, larger than
  ``max_allowed_packet`` comes as NULL; the array says which columns are NULL, and a header
  whose array disagrees is read again column by column.
* A session can be as large as the server's ``max_allowed_packet`` allows (16 MB by
  default on MariaDB; raise it to store larger sessions); a larger one is refused with
  :class:`~savegame.errors.SerializationError` before it is sent (see :func:`_fits`), and
  nothing is written.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Column, Engine, Integer, Table, case, cast, event, func, literal_column, text
from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects.mysql import CHAR, LONGTEXT, VARBINARY, insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, Executable
from sqlalchemy.types import TypeDecorator, TypeEngine

from savegame.errors import BackendUnavailableError, SerializationError, StorageError
from savegame.storage import codec
from savegame.storage.sql import (
    JsonText,
    RunDigests,
    ServerStorage,
    SqlDialect,
    server_db_url,
)
from savegame.storage.url import StorageURL, redact

_UNAVAILABLE = frozenset(
    {
        1040,  # too many connections
        # Limits of the user's: its connections at once (MAX_USER_CONNECTIONS, or the
        # server's max_user_connections), or its connections or queries in the hour.
        1203,  # user already has more than max_user_connections active connections
        1226,  # user has exceeded a resource limit
        1053,  # server shutdown in progress
        1205,  # lock wait timeout
        2002,  # can't connect through the socket
        2003,  # can't connect to the server
        2006,  # server has gone away
        2013,  # lost connection during query
        2055,  # lost connection
        # A statement stopped by the server's time limit, waiting for a lock as a rule,
        # as PostgreSQL's statement_timeout stops one.
        1317,  # query interrupted (KILL QUERY)
        1969,  # max_statement_time exceeded (MariaDB)
        3024,  # max_execution_time exceeded (MySQL)
    }
)
_DEADLOCK = 1213
_PACKET_TOO_LARGE = 1153
_REFUSED_JSON = frozenset(
    {
        3140,  # invalid JSON text (MySQL's JSON type)
        3157,  # JSON document nested too deep (MySQL's JSON type)
        3819,  # CHECK constraint violated (MySQL)
        4025,  # CHECK constraint failed: MariaDB's JSON is LONGTEXT checked by json_valid
    }
)
_NO_SUCH_TABLE = 1146
_NO_SUCH_COLUMN = 1054
_TABLE_CHANGED = 1412
_DUPLICATE_KEY = 1062
_KEY_TOO_LONG = 1071
_GROUP_CONCAT_MAX = 1 << 30
_NO_LIMIT = 2**64 - 1
"""The largest ``sql_select_limit``, which is no limit."""
_SCHEMA_LOCK = "savegame.schema:"
"""The name of the lock under which savegame changes a database's tables, before the
database's name."""
_LOCK_NAME_MAX = 64
"""The longest name GET_LOCK takes; a longer one is refused, as a database's may make it."""
_SCHEMA_LOCK_WAIT = 60
"""Seconds a schema change waits for another process's to end (GET_LOCK's own timeout)."""


class Utf8Binary(TypeDecorator[str]):
    """A string stored as its UTF-8 bytes, compared and sorted byte for byte."""

    impl = VARBINARY
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return value.encode("utf-8") if isinstance(value, str) else value

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value


@compiles(RunDigests, "mariadb")
@compiles(RunDigests, "mysql")
def _group_concat(element: RunDigests, compiler: Any, **kw: Any) -> str:
    digest, position = (compiler.process(c, **kw) for c in element.clauses)
    return f"GROUP_CONCAT({digest} ORDER BY {position} SEPARATOR '')"


def _code(error: BaseException) -> object:
    """The server's error number of a PyMySQL error (None when it carries none)."""
    args: tuple[Any, ...] = getattr(error, "args", ())
    return args[0] if args else None


class MySQLDialect(SqlDialect):
    """MySQL's differences: text JSON, binary ids, ``ON DUPLICATE KEY``, named locks."""

    title = "MySQL"
    backends = ("mysql", "mariadb")
    locks_scanned = True
    needs_database = True
    example = "mysql+pymysql://user@host/db"
    default_port = 3306
    read_isolation = "REPEATABLE READ"
    write_isolation = "READ COMMITTED"
    # SQLAlchemy reads a table's options under the name of the engine's dialect: "mysql",
    # or "mariadb" for a mariadb:// URL.
    table_options = {
        f"{name}_{option}": value
        for name in backends
        for option, value in (
            ("engine", "InnoDB"),
            ("charset", "utf8mb4"),
            ("collate", "utf8mb4_bin"),
        )
    }

    def json_type(self) -> TypeEngine[Any]:
        return JsonText("LONGTEXT")

    def id_type(self) -> TypeEngine[Any]:
        # Four bytes per character: the longest id fits, and stays under InnoDB's
        # 3072-byte index limit.
        return Utf8Binary(4 * codec.MAX_ID_LENGTH)

    def text_type(self) -> TypeEngine[Any]:
        return LONGTEXT()

    def dumps(self, value: Any, text: str | None = None) -> str:
        return codec.dumps_text_safe(value, text)

    def loads(self, text: str | bytes) -> Any:
        return codec.loads_text_safe(text)

    def snapshot(self, conn: Connection) -> None:
        # InnoDB starts a snapshot at the first read of a table's rows, and the
        # information_schema looked at before is no such read. Nothing was done yet in
        # the transaction that this statement, starting one anew, would commit.
        conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT")

    def column_names(self, conn: Connection, table: Table) -> tuple[str, ...]:
        # information_schema compares names ignoring case: a table whose name differs in
        # case alone, which a server on a case-sensitive file system may hold too, is left out.
        query = text(
            "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :table "
            "ORDER BY ORDINAL_POSITION"
        )
        rows = conn.execute(query, {"schema": table.schema, "table": table.name})
        return tuple(column for name, column in rows if name == table.name)

    def upsert(self, table: Table, keys: Sequence[str]) -> Executable:
        statement = insert(table)
        return statement.on_duplicate_key_update(
            {c.name: statement.inserted[c.name] for c in table.c if c.name not in keys}
        )

    def insert_new(self, table: Table) -> Executable:
        # INSERT IGNORE would also swallow truncations; a duplicate key fails this statement
        # only, and the transaction goes on.
        return insert(table)

    def duplicate(self, error: BaseException) -> bool:
        return _code(error) == _DUPLICATE_KEY

    def packed(self, columns: Sequence[Column[Any]]) -> ColumnElement[Any] | None:
        # PyMySQL parses the description of each column of a result in Python, which costs
        # more than the values of a small session. Every column but the integers is cast to
        # text: ids (VARBINARY) would come as base64 from MySQL, and a JSON column (of a
        # table written by the original) as a JSON value rather than its text. A cast gives
        # NULL for a value larger than max_allowed_packet: the bits of NULL columns tell.
        utf8 = CHAR(charset="utf8mb4")
        values = [c if isinstance(c.type, Integer) else cast(c, utf8) for c in columns]
        zero: ColumnElement[Any] = literal_column("0")
        nulls = sum(
            (
                case((c.is_(None), literal_column(str(1 << i))), else_=zero)
                for i, c in enumerate(columns)
            ),
            start=zero,
        )
        return func.json_array(*values, nulls)

    def configure(self, conn: Any) -> None:
        # A read gathers a session's run digests with GROUP_CONCAT, cut at 1 MB by default
        # (1 kB on MySQL): 32 hexadecimal digits a run. 1 GB is MariaDB's largest setting,
        # and a strict sql_mode (TRADITIONAL) makes a larger one an error, not a warning.
        with conn.cursor() as cursor:
            # A sql_select_limit of the server's (DEFAULT would be that one) or the URL's
            # init_command would cut every listing and a session's runs short; a
            # completion_type of RELEASE would close the connection at every commit.
            cursor.execute(
                f"SET SESSION group_concat_max_len = {_GROUP_CONCAT_MAX}, "
                f"sql_select_limit = {_NO_LIMIT}, completion_type = 0"
            )
            # The isolation level: at "READ UNCOMMITTED" (an engine made so, or a server
            # whose default it is) a statement sees other transactions' rows before they
            # commit, a session's header without all its runs. MySQL 8 and MariaDB 11.1
            # renamed the variable.
            asked = "SELECT @@session.max_allowed_packet, @@session.{}"
            try:
                cursor.execute(asked.format("transaction_isolation"))
            except conn.Error:
                cursor.execute(asked.format("tx_isolation"))
            packet, level = cursor.fetchone()
            conn.savegame_packet_limit = int(packet)
            conn.savegame_dirty = level == "READ-UNCOMMITTED"

    def other_level(self, conn: Any) -> bool:
        return bool(conn.get_autocommit()) or getattr(conn, "savegame_dirty", False)

    def begin(self, conn: Any, write: bool) -> None:
        if write and getattr(conn, "savegame_dirty", False):
            _read_committed(conn)
        if write and conn.get_autocommit():
            # The session's autocommit stays the application's; COMMIT ends this one.
            conn.begin()

    def one_statement(self, conn: Any) -> AbstractContextManager[None]:
        if getattr(conn, "savegame_dirty", False):
            _read_committed(conn)
        return super().one_statement(conn)

    def execute(self, cursor: Any, sql: str, params: Any, keyed: bool) -> None:
        _fits(cursor.connection, sql, params)
        cursor.execute(sql, params)
        if cursor.warning_count:
            _check_stored_whole(cursor, sql)

    def execute_many(self, cursor: Any, sql: str, rows: list[Any]) -> None:
        for params in rows:
            _fits(cursor.connection, sql, params)
        cursor.executemany(sql, rows)
        if cursor.warning_count:
            _check_stored_whole(cursor, sql)

    def adopt_id_types(self, conn: Connection, table: Table) -> None:
        # The original's ids are VARCHAR in a case- and space-insensitive collation: left
        # so, "A" would read and overwrite the header of "a" while the runs table, keyed
        # byte for byte, keeps them apart. VARCHAR keeps trailing spaces, and a collation
        # that tells fewer ids apart than bytes do held no two ids the same bytes tell
        # apart: the conversion keeps every row.
        have = {
            c["name"]: c["type"] for c in sa_inspect(conn).get_columns(table.name, table.schema)
        }
        preparer = conn.dialect.identifier_preparer
        columns = [
            column
            for column in table.c
            if isinstance(column.type, Utf8Binary)
            and column.name in have
            and not isinstance(have[column.name], VARBINARY)
        ]

        def modify(kind: Callable[[Column[Any]], TypeEngine[Any]]) -> None:
            changes = [
                f"MODIFY COLUMN {preparer.quote(column.name)} "
                f"{kind(column).compile(dialect=conn.dialect)}"
                f"{'' if column.nullable else ' NOT NULL'}"
                for column in columns
            ]
            conn.exec_driver_sql(f"ALTER TABLE {preparer.format_table(table)} {', '.join(changes)}")

        def as_wide_as_before(column: Column[Any]) -> TypeEngine[Any]:
            length = getattr(have[column.name], "length", None) or codec.MAX_ID_LENGTH
            return Utf8Binary(4 * min(length, codec.MAX_ID_LENGTH))

        if not columns:
            return
        try:
            modify(lambda column: column.type)
        except sa_exc.DBAPIError as exc:
            if exc.orig is None or _code(exc.orig) != _KEY_TOO_LONG:
                raise
            # An index of the original's (or the application's) over several id columns
            # outgrows InnoDB's 3072 bytes at savegame's width: the columns keep the bytes
            # they had (VARCHAR(255) in utf8mb4, 1020), so every index stays as long as it
            # was. A failed ALTER TABLE changes nothing.
            modify(as_wide_as_before)

    def schema_lock(self, conn: Connection, schema: str | None) -> str:
        # A lock of GET_LOCK's is the whole server's: named after the database, a long
        # upgrade in one holds up no other. GET_LOCK gives 0 when its time is up, and the
        # caller would go on without the lock, changing tables alongside its holder.
        database = schema or conn.execute(text("SELECT DATABASE()")).scalar() or ""
        name = _SCHEMA_LOCK + database
        if len(name) > _LOCK_NAME_MAX:
            name = _SCHEMA_LOCK + hashlib.sha1(database.encode()).hexdigest()
        taken = conn.execute(
            text("SELECT GET_LOCK(:name, :wait)"), {"name": name, "wait": _SCHEMA_LOCK_WAIT}
        ).scalar()
        if taken != 1:
            raise BackendUnavailableError(
                f"{self.title} at {redact(conn.engine.url.render_as_string())}: another process "
                f"held the lock {name!r}, under which savegame changes the tables of database "
                f"{database!r}, longer than this connection waits ({_SCHEMA_LOCK_WAIT} seconds, "
                "or its statement time limit); nothing was changed, try again once it is done"
            )
        return name

    def release_schema_lock(self, conn: Connection, taken: str) -> None:
        conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": taken})

    def unavailable(self, error: BaseException) -> bool:
        import pymysql

        if isinstance(error, pymysql.err.InterfaceError):
            return True
        return isinstance(error, pymysql.err.OperationalError) and _code(error) in _UNAVAILABLE

    def refused(self, error: BaseException, dbapi: Any) -> bool:
        # A session larger than the server's max_allowed_packet: the server says so and
        # drops the connection, which the pool then replaces. A JSON column of a table the
        # original made refuses a value nested deeper than the JSON type takes.
        code = _code(error)
        return super().refused(error, dbapi) or code == _PACKET_TOO_LARGE or code in _REFUSED_JSON

    def retryable(self, error: BaseException, dbapi: Any) -> bool:
        return super().retryable(error, dbapi) or _code(error) == _DEADLOCK

    def missing_table(self, error: BaseException) -> bool:
        return _code(error) == _NO_SUCH_TABLE

    def missing_column(self, error: BaseException) -> bool:
        return _code(error) == _NO_SUCH_COLUMN

    def table_changed(self, error: BaseException) -> bool:
        return _code(error) == _TABLE_CHANGED


def _read_committed(conn: Any) -> None:
    """Makes the next transaction on the DBAPI connection ``conn`` read only what others
    committed, whatever the connection's own level."""
    with conn.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")


_ALTERED = frozenset(
    {
        1048,  # column cannot be null: NULL stored as the column's default
        1264,  # out of range value: a number stored as the column's largest
        1265,  # data truncated for column: a string cut to the column's length
        1292,  # truncated incorrect value
        1366,  # incorrect string value: characters the column's charset lacks stored as "?"
        1406,  # data too long for column
    }
)
"""Warnings of a write that stored a value other than the one sent, as a sql_mode that is
not strict makes MySQL do where a strict one refuses the write."""


def _check_stored_whole(cursor: Any, sql: str) -> None:
    """Refuses a write that the server carried out by changing a value (see :data:`_ALTERED`).

    A column narrower than savegame's (a ``VARCHAR(255)`` of the original's table for a
    ``team_session_id`` of any length, or a column in a 3-byte charset) takes a value too
    long for it cut short when the sql_mode is not strict, with a warning only. Raised
    inside the write's transaction, which is rolled back: nothing is written.
    """
    if not sql.startswith(("INSERT", "UPDATE")):
        return
    with cursor.connection.cursor() as shown:
        shown.execute("SHOW WARNINGS")
        warnings = shown.fetchall()
    altered = [(code, message) for _, code, message in warnings if code in _ALTERED]
    if altered:
        code, message = altered[0]
        raise SerializationError(
            f"the server would store a value of the session other than the one given "
            f"({code}, {message!r}): a column of the table is narrower than the value, "
            "which a sql_mode that is not strict cuts short; nothing was written"
        )


def _fits(conn: Any, sql: str, params: Any) -> None:
    """Refuses a statement larger than the connection's max_allowed_packet before it is
    sent: the server would refuse it, but it closes the connection while the statement is
    still being sent, and the client may then see the connection reset, not the reason."""
    limit = getattr(conn, "savegame_packet_limit", None)
    if limit is None:
        return
    values = params.values() if isinstance(params, dict) else params
    texts = [v for v in values if type(v) in (str, bytes)]
    # As sent, a character takes at most 4 bytes (an escaped one 2, a byte 2 in hexadecimal):
    # by that bound alone nearly every statement fits; only the others are measured.
    slack = _SLACK * len(values)
    if 4 * (len(sql) + sum(map(len, texts))) + slack <= limit:
        return
    size = len(sql.encode()) + slack + sum(map(_escaped_size, texts))
    if size > limit:
        raise SerializationError(
            f"a statement of {size} bytes is larger than the server's max_allowed_packet "
            f"({limit} bytes); nothing was written (raise it with SET GLOBAL "
            "max_allowed_packet to store larger sessions)"
        )


_SLACK = 32
"""Bytes a value may take on the wire besides its text: quotes, a ``_binary X`` prefix, a
number's digits."""


def _escaped_size(value: str | bytes) -> int:
    """The bytes of a string value as PyMySQL sends it: text with a backslash before each
    of ``\\ ' " NUL LF CR ^Z``, bytes in hexadecimal."""
    if isinstance(value, bytes):
        return 2 * len(value)
    data = value.encode()
    return len(data) + sum(data.count(special) for special in _ESCAPED)


_ESCAPED = (b"\\", b"'", b'"', b"\0", b"\n", b"\r", b"\x1a")


class MySQLStorage(ServerStorage):
    """Sessions in a table of a MySQL or MariaDB database.

    ``db_url`` is ``mysql+pymysql://user:password@host:port/database`` (a ``mysql://`` URL
    uses PyMySQL too); ``schema`` is the database of the tables, None for the URL's. The
    other arguments are those of :class:`~savegame.storage.sql.ServerStorage`.

    Raises:
        InvalidIdentifierError: when neither ``db_url`` nor ``db_engine`` is given, or for a
            table or database name that is not a plain identifier, both ``db_url`` and
            ``db_engine``, a ``db_engine`` that is no SQLAlchemy ``Engine``, or neither a
            database in the URL nor a ``schema``.
        MissingDependencyError: when PyMySQL is not installed.
    """

    driver = ("pymysql", "pymysql", "mysql")
    dialect_class = MySQLDialect

    def _translated(self, exc: BaseException) -> StorageError | None:
        mapped = super()._translated(exc)
        tls = any(name.startswith("ssl") for name in self.db_engine.url.query)
        if mapped is None and tls and isinstance(exc, OSError):
            # PyMySQL wraps its socket's errors in its own, but not those of reading the TLS
            # files a URL names, as it makes a connection: ssl's error names neither the file
            # nor the database ("[Errno 2] No such file or directory").
            return StorageError(
                f"MySQL at {self.where()}: cannot make a connection with the TLS files its "
                f"URL names (ssl_ca=, ssl_cert=, ssl_key=): {exc}"
            )
        return mapped

    def store_names(self) -> tuple[object, ...]:
        # The database is the schema, whether the URL or ``schema`` names it.
        url = self._server_url
        return (
            url.set(database=None).render_as_string(hide_password=True),
            self.schema or url.database,
            self.table_name,
        )

    @classmethod
    def engine_options(cls, connect_timeout: int) -> dict[str, Any]:
        return {
            "isolation_level": "READ COMMITTED",
            "pool_recycle": 3600,
            # savegame ends every transaction it begins; PyMySQL's rollback on an idle
            # connection would cost a round trip each time a connection goes back.
            "pool_reset_on_return": None,
            "connect_args": {
                # Whatever the URL asks: savegame's text is str, in utf8mb4.
                "charset": "utf8mb4",
                "use_unicode": True,
                "connect_timeout": connect_timeout,
                # The client's own cap; the server's max_allowed_packet still applies.
                "max_allowed_packet": 1 << 30,
            },
        }

    @classmethod
    def prepare_engine(cls, engine: Engine) -> None:
        event.listen(engine, "do_connect", _greeted_in_time)


def _greeted_in_time(dialect: Any, record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
    """Connects as PyMySQL does, but waits for the server's greeting no longer than the
    connect timeout: PyMySQL's ``connect_timeout`` covers the TCP connection alone, and
    without a ``read_timeout`` it then waits for ever on a listener that never speaks
    (PostgreSQL's port, a hung server). Once connected, reads wait as long as they take
    again, as a long statement must. A ``read_timeout`` of the URL's covers both already."""
    wait = cparams.get("connect_timeout")
    connection = dialect.loaded_dbapi.connect(*cargs, **{**cparams, "defer_connect": True})
    # Where the driver keeps its read timeout: another version may keep it elsewhere, and
    # it is then left alone rather than set for the connection's whole life.
    if (
        not wait
        or cparams.get("read_timeout") is not None
        or (getattr(connection, "_read_timeout", 0) is not None)
    ):
        connection.connect()
        return connection
    connection._read_timeout = wait
    try:
        connection.connect()
    finally:
        connection._read_timeout = None
    return connection


def from_url(url: StorageURL) -> MySQLStorage:
    """``mysql+pymysql://user@host:port/database?table=agent_sessions``.

    Query parameters savegame does not take go to the driver (``charset``, ``ssl_ca``, ...);
    one that PyMySQL does not take either is refused here, not at the first connection.

    Raises:
        InvalidIdentifierError: for a bad table name, ``expire`` or ``cache_bytes``, or an
            unknown option.
    """
    table = url.pop_namespace()
    expire = url.pop_int("expire")
    schema = url.options.pop("schema", None)
    cache_bytes = url.pop_cache_bytes()
    driver = _driver_options()
    if driver is not None and "plugin" not in url.options:
        url.refuse(
            set(url.options) - driver,
            "table, schema, expire, cache_bytes and the keyword arguments of pymysql.connect()",
        )
    return MySQLStorage(
        table,
        schema=None if schema is None else str(schema),
        db_url=server_db_url(url),
        mode=url.mode,  # type: ignore[arg-type]
        expire=expire,
        cache_bytes=cache_bytes,
    )


# Query parameters that do not reach pymysql.connect() under their own name: SQLAlchemy's
# MySQL dialect folds these ssl_ ones into its ssl= argument. Every other one becomes a
# keyword argument of pymysql.connect().
_TAKEN_ON_THE_WAY = frozenset({"ssl_capath", "ssl_cipher", "ssl_check_hostname"})


def _driver_options() -> frozenset[str] | None:
    """The URL options PyMySQL takes, or None when that cannot be told.

    Read from its signature rather than listed, so that a PyMySQL that takes a new option
    gets it. None without PyMySQL (:class:`MySQLStorage` says what to install), or when it
    takes any keyword. A URL naming a SQLAlchemy ``plugin=``, which may take options of its
    own, is not judged either.
    """
    try:
        connections = importlib.import_module("pymysql.connections")
    except ImportError:
        return None
    parameters = inspect.signature(connections.Connection.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters if p.name != "self") | _TAKEN_ON_THE_WAY
