"""PostgreSQL with psycopg 3: JSONB columns, a schema of savegame's own, and a pool that reconnects.

Only what is particular to PostgreSQL lives here; the layout, queries and migrations are in
:mod:`savegame.storage.sql`.

* JSON goes into ``JSONB`` columns. JSONB refuses NUL characters and lone surrogates, which
  model output contains, so savegame writes the text-safe form of
  :func:`savegame.storage.codec.dumps_text_safe` and reads it back exactly.
* The ids are ``VARCHAR COLLATE "C"``: code-point order, the same in every locale, which is
  the order listings break ties in.
* The schema (``ai`` unless told otherwise) is made when missing; schema changes of
  concurrent processes take turns under an advisory lock.
* Reads run in ``REPEATABLE READ``, so a session's header and runs come from one commit.
* Needs PostgreSQL 12 or later (``plan_cache_mode``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from sqlalchemy import String, Table, Text, cast, text
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, Executable
from sqlalchemy.types import TypeEngine

from savegame.storage import codec
from savegame.storage.known import DEFAULT_BYTES
from savegame.storage.session import Mode
from savegame.storage.sql import (
    JsonText,
    RunDigests,
    ServerStorage,
    SqlDialect,
    on_conflict_update,
    server_db_url,
)
from savegame.storage.url import StorageURL

_SCHEMA_LOCK = 0x5A7E_6A3E
"""The advisory lock key under which savegame changes schemas and tables."""

_READ_COMMITTED = (None, 2)
"""psycopg's isolation levels of a connection that runs in READ COMMITTED: the server's
default (None), and ``IsolationLevel.READ_COMMITTED``."""

_NEVER = 2**31 - 1
"""A prepare threshold no statement reaches: psycopg prepares only what is asked to."""


# What the server says when it refuses a login for good (libpq gives no SQLSTATE for a
# connection that failed): a wrong password or role, a database that is not there, a host
# pg_hba.conf turns away. In English, the server's default; in another language the error
# stays BackendUnavailableError.
_LOGIN_REFUSED = re.compile(
    r"FATAL:\s+(?:\w+ authentication failed|role .* does not exist"
    r"|database .* does not exist|no pg_hba\.conf entry|permission denied for database)"
)

# A JSON string, or a number written with a positive exponent (Python writes floats of 1e16
# and above that way). Strings are matched only so that numbers inside them are skipped.
_EXPONENT_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?e\+\d+')


def _keep_float(match: re.Match[str]) -> str:
    token = match.group()
    return token if token[0] == '"' else f"{int(float(token))}.0"


class Jsonb(JsonText):
    """``JSONB`` that travels as text, so savegame's own serializer writes and reads it."""

    cache_ok = True

    def __init__(self) -> None:
        super().__init__("JSONB")

    def bind_expression(self, bindvalue: Any) -> ColumnElement[Any]:
        return cast(bindvalue, JSONB)

    def column_expression(self, colexpr: Any) -> ColumnElement[Any]:
        return cast(colexpr, Text)


@compiles(RunDigests, "postgresql")
def _string_agg(element: RunDigests, compiler: Any, **kw: Any) -> str:
    digest, position = (compiler.process(c, **kw) for c in element.clauses)
    return f"string_agg({digest}, '' ORDER BY {position})"


@contextmanager
def _autocommitted(conn: Any) -> Iterator[None]:
    # In autocommit the statement goes alone, without a BEGIN and a COMMIT around it.
    # The connection is left as it was found: one of an engine made in autocommit by the
    # application must go on committing the application's statements.
    was = conn.autocommit
    conn.autocommit = True
    try:
        yield
    finally:
        # A statement cut short (Ctrl-C) may still be running: the setting cannot change
        # then, and trying would hide the interruption behind a driver error. Such a
        # connection is closed by the caller, not used again.
        status = conn.info.transaction_status
        if status == type(status).IDLE:
            conn.autocommit = was


class PostgresDialect(SqlDialect):
    """PostgreSQL's differences: JSONB, ``ON CONFLICT``, advisory locks, SQLSTATEs."""

    title = "PostgreSQL"
    plans_by_statistics = True
    backends = ("postgresql", "postgres")
    example = "postgresql+psycopg://user@host/db"
    default_port = 5432
    read_isolation = "REPEATABLE READ"
    write_isolation = "READ COMMITTED"

    def json_type(self) -> TypeEngine[Any]:
        return Jsonb()

    def id_type(self) -> TypeEngine[Any]:
        return String(codec.MAX_ID_LENGTH, collation="C")

    def column_names(self, conn: Connection, table: Table) -> tuple[str, ...]:
        query = text(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(:table) "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        )
        qualified = conn.dialect.identifier_preparer.format_table(table)
        return tuple(conn.execute(query, {"table": qualified}).scalars())

    def adopt_id_types(self, conn: Connection, table: Table) -> None:
        # The original's id columns take the database's collation (en_US.UTF-8 on many
        # servers), in which listings would break ties otherwise than in savegame's own
        # tables, by code point. Their type stays: the original took ids of any length.
        names = [c.name for c in table.c if getattr(c.type, "collation", None) == "C"]
        preparer = conn.dialect.identifier_preparer
        qualified = preparer.format_table(table)
        found = conn.execute(
            text(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "JOIN pg_collation c ON c.oid = a.attcollation "
                "WHERE a.attrelid = CAST(:table AS regclass) AND a.attname = ANY(:names) "
                "AND NOT a.attisdropped AND c.collname <> 'C'"
            ),
            {"table": qualified, "names": names},
        ).all()
        if found:
            changes = ", ".join(
                f'ALTER COLUMN {preparer.quote(name)} TYPE {kind} COLLATE "C"'
                for name, kind in found
            )
            conn.exec_driver_sql(f"ALTER TABLE {qualified} {changes}")

    def analyze(self, conn: Connection, table: Table) -> None:
        # Until autovacuum comes by, the planner takes a runs table just filled by an
        # upgrade for an empty one, and reads the runs of many sessions by scanning it all.
        conn.exec_driver_sql(f"ANALYZE {conn.dialect.identifier_preparer.format_table(table)}")

    def dumps(self, value: Any, text: str | None = None) -> str:
        # JSONB keeps numbers as NUMERIC and prints 6.6e+16 back as 66000000000000000, an int
        # once parsed; the same value written with a decimal point comes back as a float.
        text = codec.dumps_text_safe(value, text)
        return _EXPONENT_TOKEN.sub(_keep_float, text) if "e+" in text else text

    def loads(self, text: str | bytes) -> Any:
        return codec.loads_text_safe(text)

    def upsert(self, table: Table, keys: Sequence[str]) -> Executable:
        return on_conflict_update(insert(table), keys)

    def execute(self, cursor: Any, sql: str, params: Any, keyed: bool) -> None:
        # A statement on one session's key is prepared on each connection at first use:
        # planned once, not on every call (see engine_options).
        cursor.execute(sql, params, prepare=keyed)

    def insert_new(self, table: Table) -> Executable:
        statement: Executable = insert(table).on_conflict_do_nothing()
        return statement

    def one_statement(self, conn: Any) -> AbstractContextManager[None]:
        return _autocommitted(conn)

    def other_level(self, conn: Any) -> bool:
        return bool(conn.autocommit) or conn.isolation_level not in _READ_COMMITTED

    def begin(self, conn: Any, write: bool) -> None:
        # A write reads the header under its row lock: in REPEATABLE READ or SERIALIZABLE,
        # one that waited for another writer's lock would fail as a serialization conflict.
        # The connection's settings stay the application's; COMMIT ends this transaction.
        if not write:
            return
        if conn.autocommit:
            conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        elif conn.isolation_level not in _READ_COMMITTED:
            conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")

    def schema_lock(self, conn: Connection, schema: str | None) -> None:
        # An advisory lock is the database's: other databases of the server go on.
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})

    def refused(self, error: BaseException, dbapi: Any) -> bool:
        # 54000 (program_limit_exceeded): a value JSONB cannot hold, such as a string or an
        # object over 256 MB. psycopg raises it as an OperationalError, but it is bad input,
        # as SQLite's "string or blob too big" and MySQL's max_allowed_packet are.
        return super().refused(error, dbapi) or getattr(error, "sqlstate", None) == "54000"

    def unavailable(self, error: BaseException) -> bool:
        import psycopg

        # 55P03 (lock_not_available): a lock held past the connection's lock_timeout, as
        # 57014 is one held past its statement_timeout.
        state = getattr(error, "sqlstate", None) or ""
        if not state and _LOGIN_REFUSED.search(str(error)):
            return False
        return isinstance(error, psycopg.OperationalError) and (
            not state or state[:2] in ("08", "53", "57") or state == "55P03"
        )

    def missing_table(self, error: BaseException) -> bool:
        return getattr(error, "sqlstate", None) == "42P01"

    def missing_column(self, error: BaseException) -> bool:
        return getattr(error, "sqlstate", None) == "42703"

    def table_changed(self, error: BaseException) -> bool:
        # 0A000 (feature_not_supported): a statement prepared on this connection before
        # another process's upgrade_schema() changed a column it reads ("cached plan must
        # not change result type"). The call runs again, on statements prepared anew (see
        # end()).
        return getattr(error, "sqlstate", None) == "0A000"

    def end(self, conn: Any, commit: bool) -> None:
        # Ends a call; without commit, one that failed. psycopg lets go of the connection's
        # prepared statements at a rollback, so that one prepared before a table changed is
        # not used again; a read fails outside any transaction (see one_statement()), so
        # one is begun to be rolled back.
        status = conn.info.transaction_status
        super().end(conn, commit)
        if commit or status != type(status).IDLE:
            return
        was = conn.autocommit
        conn.autocommit = False
        try:
            conn.execute("SELECT 1")
        finally:
            conn.rollback()
            conn.autocommit = was

    def retryable(self, error: BaseException, dbapi: Any) -> bool:
        state = getattr(error, "sqlstate", None)
        return super().retryable(error, dbapi) or state in ("40001", "40P01")


class PostgresStorage(ServerStorage):
    """Sessions in a table of a PostgreSQL database, in schema ``ai`` unless told otherwise.

    ``db_url`` is ``postgresql+psycopg://user:password@host:port/database`` (a
    ``postgresql://`` URL uses psycopg 3 too). The other arguments are those of
    :class:`~savegame.storage.sql.ServerStorage`.

    Raises:
        InvalidIdentifierError: when neither ``db_url`` nor ``db_engine`` is given, or for a
            table or schema name that is not a plain identifier, both ``db_url`` and
            ``db_engine``, or a ``db_engine`` that is no SQLAlchemy ``Engine``.
        MissingDependencyError: when psycopg is not installed.
    """

    driver = ("psycopg", "psycopg", "postgres")
    dialect_class = PostgresDialect
    # JSONB keeps an object's keys in an order of its own (shorter keys first).
    capabilities = ServerStorage.capabilities - {"key_order"}

    @classmethod
    def engine_options(cls, connect_timeout: int) -> dict[str, Any]:
        # psycopg would prepare every statement it runs often, and PostgreSQL then settles
        # on one generic plan, made with the table's statistics at the time: a listing
        # planned as a scan of a small table would stay a scan after the table grew. So
        # nothing is prepared but the statements on one session's key (see execute()),
        # whose plan is the primary key's whatever the size of the table. A threshold no
        # statement reaches does that; None would turn preparing off, prepare=True too.
        # libpq takes the client encoding from PGCLIENTENCODING or the database's encoding
        # (LATIN1, SQL_ASCII), in which psycopg could not send an emoji or gives bytes
        # for text; in UTF8 the server refuses what its encoding cannot hold (a
        # SerializationError) and a SQL_ASCII database keeps the UTF-8 as it is sent.
        options = {
            "connect_timeout": connect_timeout,
            "prepare_threshold": _NEVER,
            "client_encoding": "utf8",
        }
        return {"connect_args": options}

    def __init__(
        self,
        table_name: str,
        schema: str | None = "ai",
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
        super().__init__(
            table_name,
            schema,
            db_url,
            db_engine,
            schema_version,
            auto_upgrade_schema,
            mode,
            expire,
            connect_timeout=connect_timeout,
            cache_bytes=cache_bytes,
        )


def from_url(url: StorageURL) -> PostgresStorage:
    """``postgresql+psycopg://user@host:port/db?schema=ai&table=agent_sessions``.

    Query parameters savegame does not take (``sslmode``, say) go to the driver; one that
    libpq does not take either is refused here, not at the first connection.

    Raises:
        InvalidIdentifierError: for a bad table name, ``expire`` or ``cache_bytes``, or an
            unknown option.
    """
    table = url.pop_namespace()
    expire = url.pop_int("expire")
    schema = str(url.options.pop("schema", "ai"))
    cache_bytes = url.pop_cache_bytes()
    if "plugin" not in url.options:
        url.refuse(
            _not_libpq(set(url.options)),
            "table, schema, expire, cache_bytes and libpq's connection parameters",
        )
    return PostgresStorage(
        table,
        schema=schema,
        db_url=server_db_url(url),
        mode=url.mode,  # type: ignore[arg-type]
        expire=expire,
        cache_bytes=cache_bytes,
    )


def _not_libpq(names: set[str]) -> set[str]:
    """Those of ``names`` that libpq does not take as connection parameters; none when
    psycopg is missing (:class:`PostgresStorage` says what to install).

    libpq is asked rather than a list kept here, so that a newer libpq's parameters pass.
    A URL naming a SQLAlchemy ``plugin=``, which may take options of its own, is not judged.
    """
    try:
        psycopg = importlib.import_module("psycopg")
    except ImportError:
        return set()
    unknown = set()
    for name in names:
        try:
            psycopg.conninfo.make_conninfo("", **{name: "1"})
        except psycopg.ProgrammingError:
            unknown.add(name)
    return unknown
