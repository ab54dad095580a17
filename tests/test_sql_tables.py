"""The tables of the SQL storages, on SQLite, PostgreSQL and MySQL alike.

Table names that storages derive from theirs: a storage named after another's runs table, or
whose runs table is another's session table, is refused with a clear error and touches
neither table. A table of an earlier savegame's layout is read, upgraded and written.
"""

from __future__ import annotations

import functools
import hashlib
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.pool import AssertionPool, Pool, StaticPool

from savegame.errors import CorruptSessionError, InvalidIdentifierError, StorageError
from savegame.storage.mysql import MySQLStorage
from savegame.storage.postgres import PostgresStorage
from savegame.storage.session import Session
from savegame.storage.session.agent import AgentSession
from savegame.storage.session.workflow import WorkflowSession
from savegame.storage.sql import CONNECT_TIMEOUT, LATEST, SqlStorage
from savegame.storage.sqlite import SqliteStorage
from savegame.testing import Store
from savegame.testing.contract import in_threads
from tests import sql_cases
from tests.stores import BACKENDS, Backend, mysql_url, postgres_url, write_original_table

_URLS = {
    SqliteStorage: "sqlite:///app.db",
    PostgresStorage: "postgresql+psycopg://app:secret@db.internal/app",
    MySQLStorage: "mysql+pymysql://app:secret@db.internal/app",
}


@pytest.mark.parametrize("cls", list(_URLS), ids=lambda cls: cls.__name__)
def test_a_url_or_engine_of_another_database_is_refused(cls: type[SqlStorage]) -> None:
    # A SqliteStorage given a PostgreSQL URL ran its statements there; a PostgresStorage
    # given a file name raised SQLAlchemy's ArgumentError, which is no StorageError.
    for bad in ("app.db", "", "not a url"):
        with pytest.raises(InvalidIdentifierError, match="is not a database URL; give one like"):
            cls("t", db_url=bad)  # type: ignore[call-arg]
    for other, url in _URLS.items():
        if other is cls:
            continue
        for given in ("db_url", "db_engine"):
            value = url if given == "db_url" else create_engine(url)
            with pytest.raises(InvalidIdentifierError) as refused:
                cls("t", **{given: value})  # type: ignore[call-arg]
            assert f"{cls.__name__} keeps sessions in" in str(refused.value)
            assert f"its {given} names a " in str(refused.value)
            assert "secret" not in str(refused.value)


@pytest.mark.parametrize("cls", list(_URLS), ids=lambda cls: cls.__name__)
def test_a_db_engine_that_is_no_engine_is_refused(cls: type[SqlStorage]) -> None:
    # A URL given as db_engine (or a connection of an engine) raised AttributeError: 'str'
    # object has no attribute 'url', which is no StorageError and says nothing of db_url.
    engine = create_engine("sqlite://")
    with engine.connect() as connection:
        for given in (_URLS[cls], connection, 5):
            with pytest.raises(InvalidIdentifierError) as refused:
                cls("t", db_engine=given)  # type: ignore[call-arg]
            said = str(refused.value)
            assert said.startswith(
                f"{cls.__name__}: db_engine must be a SQLAlchemy Engine, not {type(given).__name__}"
            )
            assert ("give a URL as db_url=" in said) is isinstance(given, str)
            assert "secret" not in said
    engine.dispose()


@pytest.mark.parametrize(
    ("cls", "url", "written"),
    [
        (PostgresStorage, "postgresql+psycopg2://app:secret@db.internal/app", "postgresql"),
        (PostgresStorage, "postgresql+asyncpg://app:secret@db.internal/app", "postgresql"),
        (MySQLStorage, "mysql+mysqldb://app:secret@db.internal/app", "mysql"),
        (MySQLStorage, "mariadb+mysqlconnector://app:secret@db.internal/app", "mariadb"),
    ],
)
def test_a_db_url_of_another_driver_is_refused(
    cls: type[SqlStorage], url: str, written: str
) -> None:
    # postgresql+psycopg2://, the URL most SQLAlchemy applications hold, raised the
    # ModuleNotFoundError of psycopg2, which is no StorageError and says nothing of psycopg.
    driver = "psycopg" if cls is PostgresStorage else "pymysql"
    with pytest.raises(InvalidIdentifierError) as refused:
        cls("t", db_url=url)  # type: ignore[call-arg]
    assert f"savegame talks to {written} through {driver} only" in str(refused.value)
    assert f"write {written}+{driver}://" in str(refused.value)
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize("cls", list(_URLS), ids=lambda cls: cls.__name__)
def test_two_ways_of_naming_the_database_at_once_are_refused(
    cls: type[SqlStorage], tmp_path: Path
) -> None:
    # The engine was used and the URL (or SQLite's db_file) ignored, which the storage's
    # db_url and db_file went on showing.
    url = _URLS[cls]
    engine = create_engine(url)
    named = [{"db_url": url, "db_engine": engine}]
    if cls is SqliteStorage:
        named += [
            {"db_url": url, "db_file": tmp_path / "other.db"},
            {"db_file": tmp_path / "other.db", "db_engine": engine},
        ]
    for given in named:
        with pytest.raises(InvalidIdentifierError, match=r" and .*: give one of them") as refused:
            cls("t", **given)  # type: ignore[arg-type]
        assert "secret" not in str(refused.value)
    assert list(tmp_path.iterdir()) == []
    engine.dispose()


@pytest.mark.parametrize("cls", list(_URLS), ids=lambda cls: cls.__name__)
def test_a_table_name_the_database_or_savegame_keeps_is_refused(cls: type[SqlStorage]) -> None:
    # savegame_migrations met SQLAlchemy's InvalidRequestError on every call; a SQLite name
    # starting with sqlite_ was read as an empty store and refused by the database on write.
    reserved = ["savegame_migrations", "SAVEGAME_Migrations"]
    if cls is SqliteStorage:
        reserved += ["sqlite_master", "SQLITE_sessions"]
    for name in reserved:
        with pytest.raises(InvalidIdentifierError, match="keeps tables of that name for itself"):
            cls(name, db_url=_URLS[cls])  # type: ignore[call-arg]
    for name in ("savegame_migrations_x", "my_sqlite_sessions"):
        with cls(name, db_url=_URLS[cls]) as storage:  # type: ignore[call-arg]
            assert storage.table_name == name


def _sibling(storage: SqlStorage, table_name: str) -> SqlStorage:
    """A storage of another table beside ``storage``'s, on the same database."""
    options: dict[str, Any] = {"db_engine": storage.db_engine}
    if storage.schema is not None:
        options["schema"] = storage.schema
    return type(storage)(table_name, **options)  # type: ignore[call-arg]


_SQL = [b for b in BACKENDS if b.name in ("sqlite-file", "sqlite-memory", "postgres", "mysql")]


@pytest.fixture(params=[pytest.param(b, id=b.name) for b in _SQL])
def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    backend: Backend = request.param
    with backend.make(tmp_path, "agent") as made:
        yield made


def _sql(store: Store) -> SqlStorage:
    storage = store()
    assert isinstance(storage, SqlStorage)
    return storage


def test_a_closed_storage_refuses_every_call_and_the_store_keeps_its_sessions(
    sql_store: Store,
) -> None:
    # Used after close(), a storage connected again: an in-memory database it owned came
    # back empty (see test_sqlite), and a server's connections sat in a pool that nothing
    # would close.
    storage = _sql(sql_store)
    stored = storage.upsert(AgentSession(session_id="a"))
    storage.close()
    for call in (
        lambda: storage.read("a"),
        lambda: storage.upsert(AgentSession(session_id="b")),
        storage.get_all_session_ids,
        storage.table_exists,
        storage.drop,
    ):
        with pytest.raises(StorageError, match="was closed; open a new storage"):
            call()
    storage.close()
    assert sql_store().get_all_sessions() == [stored]


def test_a_table_named_after_a_runs_table_is_refused(sql_store: Store) -> None:
    first = _sql(sql_store)
    first.upsert(AgentSession(session_id="a", memory={"runs": [{"run_id": "r"}]}))
    second = _sibling(first, f"{first.table_name}_runs")
    try:
        with pytest.raises(StorageError, match="holds the runs of another storage"):
            second.upsert(AgentSession(session_id="b"))
        with pytest.raises(StorageError, match="holds the runs of another storage"):
            second.read("a")
        with pytest.raises(StorageError, match="holds the runs of another storage"):
            second.drop()
    finally:
        second.close()
    got = first.read("a")
    assert got is not None
    assert got.memory == {"runs": [{"run_id": "r"}]}


def test_a_runs_table_that_is_another_session_table_is_refused(sql_store: Store) -> None:
    first = _sql(sql_store)
    runs_owner = _sibling(first, f"{first.table_name}_x")
    clash = _sibling(first, f"{first.table_name}_x_runs")
    try:
        clash.upsert(AgentSession(session_id="b"))
        with pytest.raises(StorageError, match="is another storage's session table"):
            runs_owner.upsert(AgentSession(session_id="a", memory={"runs": [{"run_id": "r"}]}))
        assert runs_owner.read("a") is None
        runs_owner.drop()
        assert clash.get_all_session_ids() == ["b"]
    finally:
        clash.drop()
        runs_owner.close()
        clash.close()


def _lose_runs_table(storage: SqlStorage, recorded: bool) -> None:
    """Drops the runs table of ``storage``'s (by hand, or as a create() killed half-way on
    MySQL leaves it); unless ``recorded``, the table's record in savegame_migrations too."""
    with storage.db_engine.begin() as conn:
        storage.runs_table.drop(conn)
        if not recorded:
            migrations = Table(
                "savegame_migrations", MetaData(schema=storage.schema), autoload_with=conn
            )
            conn.execute(delete(migrations).where(migrations.c.table_name == storage.table_name))


def _made(sql_store: Store) -> SqlStorage:
    """The SQL storage of ``sql_store``, its table made (and with it the database file or
    the schema, beside which a test makes tables of its own)."""
    own = _sql(sql_store)
    own.create()
    return own


def _original_beside(own: SqlStorage, name: str, session_id: str) -> SqlStorage:
    """A storage of the original's table ``name``, made beside ``own``'s with one session of
    one run."""
    rows = [{"session_id": session_id, "memory": {"runs": [{"run_id": "r"}]}}]
    write_original_table(own.db_engine, name, own.schema, rows)
    return _sibling(own, name)


def test_an_upgrade_keeps_inline_the_runs_of_a_session_holding_a_number_no_float_holds(
    sql_store: Store,
) -> None:
    # The original's JSON columns took 1e400 (written by hand, or by another program), which
    # savegame reads as an infinity and never stores: the upgrade raised a bare ValueError and
    # moved nothing. Such a session keeps its runs inline, read as it is; the others move.
    # PostgreSQL's JSONB, the original's there, gives the number back as an int: it moves.
    own = _made(sql_store)
    name = f"{own.table_name}_n"
    legacy = _original_beside(own, name, "plain")
    table = Table(name, MetaData(schema=own.schema), autoload_with=own.db_engine)
    big = literal_column("""'{"runs": [{"x": 1e400}]}'""")
    try:
        with own.db_engine.begin() as conn:
            conn.execute(insert(table).values(session_id="big", memory=big))
        before = {s.session_id: repr(s.memory) for s in legacy.get_all_sessions()}
        inline = ["big"] if "inf" in before["big"] else []
        assert inline or own.db_engine.dialect.name == "postgresql"
        legacy.upgrade_schema()
        again = _sibling(own, name)
        try:
            assert {s.session_id: repr(s.memory) for s in again.get_all_sessions()} == before
        finally:
            again.close()
        runs = Table(f"{name}_runs", MetaData(schema=own.schema), autoload_with=own.db_engine)
        with own.db_engine.connect() as conn:
            ids = conn.execute(select(runs.c.session_id).distinct()).scalars().all()
        moved = [i.decode() if isinstance(i, bytes) else i for i in ids]  # MySQL's are binary
        assert sorted(moved) == sorted({"big", "plain"} - set(inline))
    finally:
        legacy.drop()
        legacy.close()


def test_a_table_named_after_the_runs_table_of_an_original_table_is_refused(
    sql_store: Store,
) -> None:
    # The original's table has no runs table yet: made second, a session table of that
    # name would leave its upgrade nowhere to move the runs.
    own = _made(sql_store)
    original = f"{own.table_name}_o"
    upgraded = _original_beside(own, original, "a")
    clash = _sibling(own, f"{original}_runs")
    try:
        for call in (clash.create, functools.partial(clash.upsert, AgentSession("b"))):
            with pytest.raises(StorageError, match=f"table {original!r} keep their runs"):
                call()
        assert not clash.table_exists()
        upgraded.upgrade_schema()
        got = upgraded.read("a")
        assert got is not None
        assert got.memory == {"runs": [{"run_id": "r"}]}
    finally:
        upgraded.drop()
        clash.drop()
        upgraded.close()
        clash.close()


def test_an_original_table_whose_runs_table_name_another_original_table_has_says_to_rename(
    sql_store: Store,
) -> None:
    # The original took t and t_runs as two tables of sessions: giving the storage of t
    # another name would open an empty table, so the error says to rename one.
    own = _made(sql_store)
    first = f"{own.table_name}_o"
    storages = [_original_beside(own, name, name) for name in (first, f"{first}_runs")]
    try:
        with pytest.raises(StorageError, match=r"rename one of the two tables \(ALTER TABLE"):
            storages[0].upgrade_schema()
        for storage in storages:
            got = storage.read(storage.table_name)
            assert got is not None
            assert got.memory == {"runs": [{"run_id": "r"}]}
    finally:
        for storage in reversed(storages):
            storage.drop()
            storage.close()


def test_a_table_from_before_past_tokens_is_read_then_upgraded_and_written(
    sql_store: Store,
) -> None:
    first = _sql(sql_store)
    runs = [{"run_id": f"r{i}"} for i in range(3)]
    first.upsert(AgentSession(session_id="a", memory={"runs": runs}, session_data={"n": 1}))
    first.upsert(AgentSession(session_id="a", memory={"runs": runs}, session_data={"n": 2}))
    engine, table = first.db_engine, first.table_name
    # What savegame wrote before past_tokens: migration 4 applied, the column not there.
    with engine.begin() as conn:
        quote = conn.dialect.identifier_preparer
        name = quote.format_table(Table(table, MetaData(schema=first.schema)))
        conn.exec_driver_sql(f"ALTER TABLE {name} DROP COLUMN past_tokens")
        migrations = Table("savegame_migrations", MetaData(schema=first.schema), autoload_with=conn)
        conn.execute(update(migrations).where(migrations.c.table_name == table).values(version=4))
    older = _sibling(first, table)
    try:
        got = older.read("a")
        assert got is not None
        assert (got.memory, got.session_data, got.version) == ({"runs": runs}, {"n": 2}, 2)
        with pytest.raises(StorageError, match="older layout \\(version 4"):
            older.upsert(AgentSession(session_id="a", memory={"runs": runs}))
        older.upgrade_schema()
        got.session_data = {"n": 3}
        saved = older.upsert(got, expected_version=2)
        assert saved.version == 3
        again = _sibling(first, table)
        try:
            read = again.read("a")
            assert read is not None
            assert (read.memory, read.session_data, read.version) == ({"runs": runs}, {"n": 3}, 3)
        finally:
            again.close()
        with engine.connect() as conn:
            header = Table(table, MetaData(schema=first.schema), autoload_with=conn)
            past = conn.execute(
                header.select().with_only_columns(header.c.past_tokens)
            ).scalar_one()
        assert isinstance(past, str)
        assert len(past) == 16  # the token of the write before the upgrade
    finally:
        older.close()


def test_the_longest_table_names_make_every_table_and_index(sql_store: Store) -> None:
    # 58 characters, the longest allowed, and two that differ only at the end: the expiry
    # index's name is cut to fit, and stays apart from the other table's.
    own = _sql(sql_store)
    longest = (own.table_name + "_" + "x" * 58)[:57]  # unique to this test: servers are shared
    first = _sibling(own, longest + "a")
    second = _sibling(own, longest + "b")
    try:
        for storage in (first, second):
            storage.expire = 3600
            storage.create()
            storage.upsert(AgentSession(session_id=storage.table_name[-1], user_id="u"))
        for storage in (first, second):
            assert storage.get_all_session_ids(user_id="u") == [storage.table_name[-1]]
            assert storage.purge_expired() == 0
    finally:
        first.drop()
        second.drop()
    assert not first.table_exists()
    assert not second.table_exists()


def _cut_alike(prefix: str, schema: str | None) -> tuple[str, str]:
    """Two table names of 58 characters starting with ``prefix`` (of at most 52) whose
    user_id indexes SQLAlchemy would name alike, cutting ``ix_[<schema>_]<table>_user_id``
    to its first 55 characters, ``_`` and the last 4 hex digits of its MD5 (as it does for
    a server that takes 63)."""
    seen: dict[tuple[str, str], str] = {}
    for i in range(100_000):
        name = f"{prefix:_<52}{i:06d}"
        index = f"ix_{schema + '_' if schema else ''}{name}_user_id"
        key = (index[:55], hashlib.md5(index.encode()).hexdigest()[-4:])
        if key in seen:
            return seen[key], name
        seen[key] = name
    raise AssertionError("no two names alike")


def test_two_long_tables_whose_cut_index_names_would_be_alike_stand_side_by_side(
    sql_store: Store,
) -> None:
    # PostgreSQL names indexes per schema: the second table's index made under SQLAlchemy's
    # cut name failed as already there.
    own = _sql(sql_store)
    first, second = (_sibling(own, name) for name in _cut_alike(own.table_name[:40], own.schema))
    try:
        for storage in (first, second):
            storage.create()
            storage.upsert(AgentSession(session_id=storage.table_name, user_id="u"))
        for storage in (first, second):
            assert storage.get_all_session_ids(user_id="u") == [storage.table_name]
    finally:
        first.drop()
        second.drop()


def test_an_original_table_of_the_longest_name_is_upgraded_keeping_its_indexes(
    sql_store: Store,
) -> None:
    # The original's indexes of a long table (ix_<table>_user_id) have names longer than
    # the server takes, which SQLAlchemy cut when it made them: the upgrade found no index
    # of the name it looked for, made it again, and failed on the one that was there.
    own = _sql(sql_store)
    longest = (own.table_name + "_" + "x" * 58)[:58]  # unique to this test: servers are shared
    rows = [{"session_id": "old", "user_id": "u", "agent_id": "a", "memory": {"runs": [{"n": 0}]}}]
    own.create()  # the database, where it is a file
    write_original_table(own.db_engine, longest, own.schema, rows)
    storage = _sibling(own, longest)
    try:
        storage.upgrade_schema()
        storage.upsert(AgentSession(session_id="new", user_id="u", agent_id="a"))
        assert sorted(storage.get_all_session_ids(user_id="u", entity_id="a")) == ["new", "old"]
        got = storage.read("old")
        assert got is not None
        assert got.memory == {"runs": [{"n": 0}]}
        with own.db_engine.connect() as conn:
            indexes = inspect(conn).get_indexes(longest, own.schema)
        assert sorted(tuple(i["column_names"]) for i in indexes) == [
            ("agent_id",),
            ("expires_at",),
            ("user_id",),
        ]
    finally:
        storage.drop()
        storage.close()


def test_a_read_while_another_storage_upgrades_the_original_table_is_whole(
    sql_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The upgrade commits at the worst moment of a read: after the read has seen the
    # original layout, before it selects the rows, which then hold their runs apart.
    if sql_store.backend == "sqlite-memory":
        pytest.skip("one connection, which threads take in turn: no upgrade comes mid-read")
    assert sql_store.original is not None
    runs = [{"run_id": str(i), "content": f"turn {i}"} for i in range(3)]
    sql_store.original([{"session_id": "s", "user_id": "u", "memory": {"runs": runs}}])
    upgrader, reader = _sql(sql_store), _sql(sql_store)
    upgraded = sql_cases.upgrade_mid_read(monkeypatch, upgrader)
    got = reader.read("s")
    assert upgraded
    assert got is not None
    assert got.memory == {"runs": runs}
    [listed] = reader.get_all_sessions(user_id="u")
    assert listed.memory == {"runs": runs}


def test_storages_upgrading_one_original_table_at_once_all_return_and_lose_no_row(
    sql_store: Store,
) -> None:
    # Processes started together after a deploy each call upgrade_schema(): they take
    # turns under the schema lock, the later ones finding the work done.
    if sql_store.backend == "sqlite-memory":
        pytest.skip("one connection, which threads take in turn: no two upgrades overlap")
    assert sql_store.original is not None

    def runs(i: int) -> list[dict[str, Any]]:
        return [{"run_id": f"{i}-{n}", "content": f"turn {n}"} for n in range(i % 5)]

    sql_store.original(
        [
            {"session_id": f"old-{i}", "user_id": f"u{i % 3}", "memory": {"runs": runs(i)}}
            for i in range(40)
        ]
    )
    upgraders = [_sql(sql_store) for _ in range(4)]
    started = threading.Barrier(len(upgraders), timeout=30)

    def upgrade(n: int) -> None:
        started.wait()
        upgraders[n].upgrade_schema()
        upgraders[n].upsert(AgentSession(session_id=f"new-{n}", memory={"runs": runs(n)}))

    in_threads(len(upgraders), upgrade)
    reader = _sql(sql_store)
    assert sorted(reader.get_all_session_ids()) == sorted(
        [f"old-{i}" for i in range(40)] + [f"new-{n}" for n in range(4)]
    )
    for i in range(40):
        got = reader.read(f"old-{i}")
        assert got is not None
        assert (got.user_id, got.memory) == (f"u{i % 3}", {"runs": runs(i)})
    with reader.db_engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(reader.runs_table)).scalar()
        migrations = Table(
            "savegame_migrations", MetaData(schema=reader.schema), autoload_with=conn
        )
        version = conn.execute(
            select(migrations.c.version).where(migrations.c.table_name == reader.table_name)
        ).scalar_one()
    assert stored == sum(i % 5 for i in range(40)) + sum(n % 5 for n in range(4))
    assert version == LATEST


def test_a_read_of_an_original_table_looks_at_its_columns_alone_until_another_upgrades_it(
    sql_store: Store,
) -> None:
    # A table left at the original's layout is read as it is: each call must see an upgrade
    # made by another process, and asked SQLAlchemy's inspector (a dozen statements, most
    # of a read's time) three times a read to do so.
    assert sql_store.original is not None
    runs = [{"run_id": str(i)} for i in range(3)]
    sql_store.original([{"session_id": "s", "user_id": "u", "memory": {"runs": runs}}])
    reader, upgrader = _sql(sql_store), _sql(sql_store)
    seen: list[str] = []
    event.listen(reader.db_engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    assert reader.read("s") is not None
    # Each: the table's columns and the rows (and the start of the snapshot, on MySQL);
    # a listing of sessions reads its ids, then the sessions.
    for call, most in (
        (lambda: reader.read("s"), 3),
        (lambda: reader.get_all_session_ids(user_id="u"), 3),
        (lambda: reader.get_all_sessions(user_id="u"), 6),
    ):
        seen.clear()
        call()
        assert len(seen) <= most, seen
    upgrader.upgrade_schema()
    for _ in range(2):
        got = reader.read("s")
        assert got is not None
        assert got.memory == {"runs": runs}
        [listed] = reader.get_all_sessions(user_id="u")
        assert listed.memory == {"runs": runs}
    seen.clear()
    reader.read("s")
    reader.get_all_sessions(user_id="u")
    asks = ("pragma_table_info", "information_schema", "pg_attribute", "DESCRIBE")
    assert not [s for s in seen if any(ask in s for ask in asks)], seen


def test_a_latest_table_whose_record_was_lost_is_taken_at_the_latest_layout(
    sql_store: Store,
) -> None:
    # A call cut short after making the tables, before recording them (MySQL commits each
    # CREATE TABLE at once), left every column but no line in savegame_migrations: the
    # next storage writes on the table, and records it, rather than calling it original.
    first = _sql(sql_store)
    runs = [{"run_id": "0"}, {"run_id": "1"}]
    first.upsert(AgentSession(session_id="s", memory={"runs": runs}))
    with first.db_engine.begin() as conn:
        migrations = Table("savegame_migrations", MetaData(schema=first.schema), autoload_with=conn)
        conn.execute(delete(migrations).where(migrations.c.table_name == first.table_name))
    second = _sibling(first, first.table_name)
    got = second.read("s")
    assert got is not None
    assert got.memory == {"runs": runs}
    second.upsert(AgentSession(session_id="t"))
    second.upgrade_schema()
    assert sorted(second.get_all_session_ids()) == ["s", "t"]
    with first.db_engine.connect() as conn:
        recorded = conn.execute(
            select(migrations.c.version).where(migrations.c.table_name == first.table_name)
        ).scalar()
    assert recorded == LATEST


@pytest.mark.parametrize("recorded", [False, True], ids=["create-cut-short", "runs-dropped"])
def test_a_table_left_without_its_runs_table_is_made_whole_and_written(
    sql_store: Store, recorded: bool
) -> None:
    # MySQL commits each CREATE TABLE: a create() killed between the two left the session
    # table alone, unrecorded; or the runs table was dropped by hand. Either was taken for
    # the original's table: create() did nothing and writes asked for upgrade_schema().
    first = _sql(sql_store)
    first.create()
    _lose_runs_table(first, recorded)
    runs = [{"run_id": "0"}, {"run_id": "1"}]
    second, third = _sibling(first, first.table_name), _sibling(first, first.table_name)
    try:
        second.create()
        second.upsert(AgentSession(session_id="s", memory={"runs": runs}))
        got = third.read("s")
        assert got is not None
        assert got.memory == {"runs": runs}
    finally:
        second.close()
        third.close()


def test_a_table_left_without_its_runs_table_is_read_and_deleted_from_as_it_is(
    sql_store: Store,
) -> None:
    # What a storage sees of tables another process is making, outside the schema lock:
    # MySQL commits each CREATE TABLE, so the session table stands, unrecorded, before its
    # runs table does. Deleting a session then asked the runs table, which was not there,
    # and failed; reads and the rest find the table empty.
    first = _sql(sql_store)
    first.create()
    with first.db_engine.begin() as conn:
        first.runs_table.drop(conn)
        migrations = Table("savegame_migrations", MetaData(schema=first.schema), autoload_with=conn)
        conn.execute(delete(migrations).where(migrations.c.table_name == first.table_name))
    second = _sibling(first, first.table_name)
    try:
        assert second.delete_session("s") is False
        assert second.delete_session("s", expected_version=1) is False
        assert second.read("s") is None
        assert second.get_all_session_ids() == []
        assert second.delete_user("u") == 0
        assert second.purge_expired() == 0
    finally:
        second.close()


def test_a_session_the_original_saves_again_after_the_upgrade_is_read_as_it_saved_it(
    sql_store: Store,
) -> None:
    # The original, still running after the upgrade, saves a session as it always did: the
    # whole memory, runs inline, savegame's columns left as they were. Its runs were read
    # as the older ones the upgrade (or savegame) had put apart.
    assert sql_store.original is not None
    old = [{"run_id": "0"}]
    sql_store.original([{"session_id": "s", "user_id": "u", "memory": {"runs": old}}])
    storage = _sql(sql_store)
    storage.upgrade_schema()
    storage.upsert(AgentSession(session_id="t", user_id="u", memory={"runs": old}))
    new = [*old, {"run_id": "1"}]
    table = storage.table
    with storage.db_engine.begin() as conn:
        for session_id in ("s", "t"):
            memory = storage.dialect.dumps({"runs": new, "summary": session_id})
            conn.execute(update(table).where(table.c.session_id == session_id), {"memory": memory})
    reader = _sibling(storage, storage.table_name)
    try:
        for session_id in ("s", "t"):
            got = reader.read(session_id)
            assert got is not None
            assert got.memory == {"runs": new, "summary": session_id}
            [listed] = [
                x for x in reader.get_all_sessions(user_id="u") if x.session_id == session_id
            ]
            assert listed.memory == got.memory
            # savegame saves it again: the runs go apart once more, the older ones replaced.
            got.memory["runs"].append({"run_id": "2"})  # type: ignore[index]
            reader.upsert(got, expected_version=got.version)
            again = _sibling(storage, storage.table_name)
            read = again.read(session_id)
            again.close()
            assert read is not None
            assert read.memory == {"runs": [*new, {"run_id": "2"}], "summary": session_id}
    finally:
        reader.close()


def test_a_session_the_original_saves_while_the_upgrade_moves_its_runs_is_kept(
    sql_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MySQL commits each ALTER TABLE, so the runs are moved without the table locked: the
    # original's save of a session between the upgrade's reading of its row and writing it
    # back was overwritten with what the upgrade had read.
    if sql_store.backend == "sqlite-memory":
        pytest.skip("one connection, which threads take in turn: no save comes mid-upgrade")
    assert sql_store.original is not None
    old = [{"run_id": "0"}]
    new = [*old, {"run_id": "1"}]
    sql_store.original([{"session_id": "s", "memory": {"runs": old}}])
    upgrader = _sql(sql_store)
    table = upgrader.table
    engine = create_engine(upgrader.db_engine.url)

    def save_as_the_original() -> None:
        with engine.begin() as conn:
            memory = upgrader.dialect.dumps({"runs": new})
            conn.execute(update(table).where(table.c.session_id == "s"), {"memory": memory})

    dumps = upgrader.dialect.dumps
    savers: list[threading.Thread] = []

    def save_meanwhile(value: Any, text: str | None = None) -> str:
        if not savers:  # the upgrade has read the row, and writes it back after this
            savers.append(threading.Thread(target=save_as_the_original))
            savers[0].start()
            savers[0].join(2)  # done by now, unless it waits for the upgrade
        return dumps(value, text)

    monkeypatch.setattr(upgrader.dialect, "dumps", save_meanwhile)
    try:
        upgrader.upgrade_schema()
        assert savers
        savers[0].join(60)
        assert not savers[0].is_alive()
    finally:
        engine.dispose()
    reader = _sibling(upgrader, upgrader.table_name)
    got = reader.read("s")
    reader.close()
    assert got is not None
    assert got.memory == {"runs": new}


def test_a_read_fetches_only_the_runs_the_reader_does_not_remember(sql_store: Store) -> None:
    reader, writer = _sql(sql_store), _sql(sql_store)
    runs = [{"run_id": f"r{i}"} for i in range(3)]
    writer.upsert(AgentSession(session_id="s", memory={"runs": runs}))
    assert reader.read("s") is not None  # now remembered
    # Another text under the same digest: only a storage that fetches the run can see it.
    table = writer.runs_table
    with writer.db_engine.begin() as conn:
        conn.execute(
            update(table)
            .where(table.c.session_id == "s", table.c.position == 0)
            .values(run='{"run_id": "not fetched"}')
        )
    writer.upsert(AgentSession(session_id="s", memory={"runs": [*runs, {"run_id": "r3"}]}))
    got = reader.read("s")
    assert got is not None
    assert got.memory["runs"] == [*runs, {"run_id": "r3"}]  # type: ignore[index]
    fresh = _sql(sql_store).read("s")
    assert fresh is not None
    assert fresh.memory["runs"][0] == {"run_id": "not fetched"}  # type: ignore[index]


def test_a_save_writes_the_runs_that_changed_and_leaves_the_others_as_stored(
    sql_store: Store,
) -> None:
    # A run's row changed under the same digest shows whether a save wrote it again: a save
    # of a long conversation sends its header and its changed runs, not every run.
    writer = _sql(sql_store)
    runs = [{"run_id": f"r{i}"} for i in range(50)]
    writer.upsert(AgentSession(session_id="s", memory={"runs": runs}))
    table = writer.runs_table
    with writer.db_engine.begin() as conn:
        conn.execute(
            update(table)
            .where(table.c.session_id == "s", table.c.position.in_([0, 10]))
            .values(run='{"run_id": "not written again"}')
        )
    runs[10] = {"run_id": "r10", "changed": True}
    writer.upsert(AgentSession(session_id="s", memory={"runs": [*runs, {"run_id": "r50"}]}))
    fresh = _sql(sql_store).read("s")
    assert fresh is not None
    got = fresh.memory["runs"]  # type: ignore[index]
    assert got[0] == {"run_id": "not written again"}
    assert got[1:] == [*runs[1:], {"run_id": "r50"}]


def test_a_call_meeting_its_table_dropped_runs_again_when_another_thread_met_it_first(
    sql_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Threads sharing a storage meet a drop together: the one whose error is told apart
    # second finds the table forgotten already by the first, and must still run again.
    storage = _sql(sql_store)
    storage.upsert(AgentSession(session_id="a", memory={"runs": [{"r": 1}]}))
    assert storage.read("a") is not None
    _sql(sql_store).drop()
    translated = SqlStorage._translated
    first: list[Any] = []

    def after_another_thread(self: SqlStorage, exc: BaseException) -> Any:
        if not first:
            first.append("met")
            thread = threading.Thread(target=lambda: first.append(storage.read("a")))
            thread.start()
            thread.join(timeout=60)
            assert not thread.is_alive(), "the other thread waited for this one"
        return translated(self, exc)

    monkeypatch.setattr(SqlStorage, "_translated", after_another_thread)
    assert storage.read("a") is None
    assert first == ["met", None]


def test_a_delete_of_no_session_removes_the_runs_no_header_stands_for(sql_store: Store) -> None:
    # Runs left by a header removed by hand: the delete finds no session, and removes them,
    # so that a session saved again under that id holds its own runs only.
    storage = _sql(sql_store)
    storage.upsert(AgentSession(session_id="s", memory={"runs": [{"n": n} for n in range(3)]}))
    storage.upsert(AgentSession(session_id="t", memory={"runs": [{"n": 0}]}))
    header, runs = storage.table, storage.runs_table
    with storage.db_engine.begin() as conn:
        conn.execute(delete(header).where(header.c.session_id == "s"))
    assert storage.delete_session("s") is False
    with storage.db_engine.connect() as conn:
        left = conn.execute(select(runs.c.session_id, runs.c.position)).all()
    assert sorted(left) == [("t", 0)]
    storage.upsert(AgentSession(session_id="s", memory={"runs": [{"again": True}]}))
    fresh = _sql(sql_store).read("s")
    assert fresh is not None
    assert fresh.memory == {"runs": [{"again": True}]}


_ON_RUNS = {
    # The statements of other connections under way on a runs table ({runs}), waiting for
    # a lock.
    "mysql": "SELECT count(*) FROM information_schema.PROCESSLIST"
    " WHERE command = 'Query' AND info LIKE '%{runs}%' AND id <> CONNECTION_ID()",
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
    " AND query LIKE '%{runs}%' AND pid <> pg_backend_pid()",
}


def test_a_delete_of_no_session_leaves_the_runs_of_a_save_committed_as_it_looked(
    sql_store: Store,
) -> None:
    # A transaction in progress holds the runs the delete finds (written here by hand,
    # before their header), and commits their header while the delete waits for them: the
    # runs stay with their header. On MariaDB, one statement removing the runs "where no
    # header stands for them" judged so before the header was there and removed them once
    # it had waited, leaving the header without its runs (a race six storages saving and
    # deleting one session met about once in 20,000 calls). A server that shows a
    # statement no row another transaction has not committed (PostgreSQL) gives the
    # delete none to wait for.
    storage = _sql(sql_store)
    name = storage.db_engine.dialect.name.replace("mariadb", "mysql")
    if name not in _ON_RUNS:
        pytest.skip(f"{name} writes one transaction at a time")
    storage.upsert(AgentSession(session_id="s", memory={"runs": [{"n": n} for n in range(2)]}))
    saved = storage.read("s")
    header, runs = storage.table, storage.runs_table
    with storage.db_engine.connect() as conn:
        row = conn.execute(select(header).where(header.c.session_id == "s")).mappings().one()
        run_rows = conn.execute(select(runs).where(runs.c.session_id == "s")).mappings().all()
    storage.delete_session("s")
    deleted: list[bool] = []
    deleter = _sql(sql_store)
    waiting = text(_ON_RUNS[name].format(runs=runs.name))
    with storage.db_engine.connect() as conn, conn.begin():
        conn.execute(insert(runs), [dict(r) for r in run_rows])
        thread = threading.Thread(target=lambda: deleted.append(deleter.delete_session("s")))
        thread.start()
        deadline = time.monotonic() + 30
        # Each look in a transaction of its own: PostgreSQL shows one the activity of the
        # moment it first looked.
        auto = storage.db_engine.execution_options(isolation_level="AUTOCOMMIT")
        with auto.connect() as watcher:
            while thread.is_alive() and not watcher.execute(waiting).scalar():
                assert time.monotonic() < deadline, "the delete neither waited nor ended"
                time.sleep(0.02)
        if name == "mysql":
            assert thread.is_alive(), "the delete did not wait for the runs"
        conn.execute(insert(header).values(**row))
    thread.join(timeout=60)
    assert deleted == [False]
    assert _sql(sql_store).read("s") == saved


def test_storages_of_one_table_share_what_was_compiled(sql_store: Store) -> None:
    """A storage opened per request pays for its tables and statements once per process,
    and a storage of another table or mode never gets another's statements."""
    first = _sql(sql_store)
    first.upsert(AgentSession(session_id="a", memory={"runs": [{"run_id": "r"}]}))
    again = sql_store()
    other = _sibling(first, f"{first.table_name}_other")
    assert isinstance(again, SqlStorage)
    try:
        assert again.read("a") is not None
        assert again.table is first.table
        assert again._statements() is first._statements()
        other.upsert(AgentSession(session_id="b"))
        assert other.table is not first.table
        assert other._statements() is not first._statements()
        assert other.table_name in other._statements().insert_header.sql
        assert other.table_name not in first._statements().insert_header.sql
        again.mode = "team"
        assert again.table is not first.table
        assert again._statements() is not first._statements()
    finally:
        other.drop()
        other.close()
        again.close()


def _in_transaction(conn: Any) -> bool:
    """Whether a DBAPI connection of sqlite3, psycopg or PyMySQL is inside a transaction."""
    if isinstance(conn, sqlite3.Connection):
        return conn.in_transaction
    if getattr(conn, "closed", False) or getattr(conn, "open", True) is False:
        # Closed by the pool it went back to (it keeps no more than its size): no
        # transaction can be left on it.
        return False
    if hasattr(conn, "pgconn"):
        import psycopg

        return bool(conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)
    with conn.cursor() as cursor:
        cursor.execute("SELECT @@in_transaction")
        return bool(cursor.fetchone()[0])


def test_a_failed_call_leaves_its_connection_outside_any_transaction(sql_store: Store) -> None:
    """A transaction left open on a pooled connection would keep its row locks (another
    writer of the session would wait out the lock timeout) until the connection's next use."""
    storage = _sql(sql_store)
    storage.upsert(AgentSession(session_id="a"))
    seen: list[Any] = []

    def failing(conn: Any) -> None:
        seen.append(conn)
        storage.dialect.begin(conn, True)
        cursor = conn.cursor()
        storage._statements().lock_header.run(cursor, {"sid": "a"}).fetchall()
        assert _in_transaction(conn)
        cursor.execute("SELECT no_such_column_anywhere")

    with pytest.raises(storage._driver_errors):
        storage._on_connection(failing)
    assert not _in_transaction(seen[0])
    other = sql_store()
    other.upsert(AgentSession(session_id="a", session_data={"after": True}))
    got = storage.read("a")
    assert got is not None
    assert got.session_data == {"after": True}  # type: ignore[attr-defined]


def _send_unanswered(conn: Any, query: str) -> None:
    """Sends ``query`` on a psycopg or PyMySQL connection and leaves its reply unread, as a
    call cut short between the two does."""
    if hasattr(conn, "pgconn"):
        conn.pgconn.send_query(query.encode())
        while conn.pgconn.flush():
            pass
    else:
        from pymysql.constants import COMMAND

        conn._execute_command(COMMAND.COM_QUERY, query)


def test_a_call_cut_short_never_leaves_its_reply_to_the_next(sql_store: Store) -> None:
    storage = _sql(sql_store)
    if not storage.dialect.round_trips:
        pytest.skip("an embedded database leaves no reply unread")
    storage.upsert(AgentSession(session_id="a", session_data={"n": 1}))
    storage.upsert(AgentSession(session_id="b", session_data={"n": 2}))
    seen: list[Any] = []

    def interrupted(conn: Any) -> None:
        seen.append(conn)
        _send_unanswered(conn, "SELECT 'stale reply'")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        storage._on_connection(interrupted)
    assert seen[0].closed if hasattr(seen[0], "pgconn") else not seen[0].open
    pool = [storage.db_engine.raw_connection() for _ in range(3)]
    try:
        assert all(fairy.driver_connection is not seen[0] for fairy in pool)
    finally:
        for fairy in pool:
            fairy.close()
    got = [storage.read(sid) for sid in ("a", "b")]
    assert [g.session_data for g in got if g is not None] == [{"n": 1}, {"n": 2}]  # type: ignore[attr-defined]


def _connect_timeout(storage: SqlStorage) -> Any:
    raw = storage.db_engine.raw_connection()
    try:
        driver = raw.driver_connection
        if isinstance(storage, MySQLStorage):
            return driver.connect_timeout  # type: ignore[union-attr]
        return int(driver.info.get_parameters()["connect_timeout"])  # type: ignore[union-attr]
    finally:
        raw.close()


@pytest.mark.parametrize("server", ["postgres", "mysql"])
def test_a_connect_timeout_in_the_url_is_kept(server: str) -> None:
    cls, url = (
        (PostgresStorage, postgres_url()) if server == "postgres" else (MySQLStorage, mysql_url())
    )
    separator = "&" if "?" in url else "?"
    timeouts = []
    for given in ({}, {"connect_timeout": 3}):
        storage = cls("unused", db_url=f"{url}{separator}connect_timeout=17", **given)
        timeouts.append(_connect_timeout(storage))
        storage.close()
    storage = cls("unused", db_url=url)
    timeouts.append(_connect_timeout(storage))
    storage.close()
    assert timeouts == [17, 3, CONNECT_TIMEOUT]


@pytest.mark.parametrize("cls", [PostgresStorage, MySQLStorage], ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("value", [0, -1, 1.5, "soon", True, 10**9, "1_0", "1e3", "1" * 5000])
def test_a_connect_timeout_that_is_no_wait_is_refused_when_the_storage_is_made(
    cls: type[SqlStorage], value: object
) -> None:
    # The drivers found it at the first call, with a TypeError or ValueError of their own
    # (PyMySQL), a StorageError (libpq, for the URL's), or took 0 for "wait for ever".
    url = _URLS[cls].replace("@db.internal/", "@127.0.0.1:1/")
    for opening in (
        lambda: cls("t", db_url=url, connect_timeout=value),  # type: ignore[call-arg]
        lambda: cls("t", db_url=f"{url}?connect_timeout={value}"),  # type: ignore[call-arg]
    ):
        with pytest.raises(InvalidIdentifierError, match="connect_timeout must be a whole number"):
            opening()


def test_a_session_written_into_a_table_of_another_mode_is_refused(sql_store: Store) -> None:
    agents = _sql(sql_store)
    agents.upsert(AgentSession(session_id="a"))
    options: dict[str, Any] = {"db_engine": agents.db_engine, "mode": "team"}
    if agents.schema is not None:
        options["schema"] = agents.schema
    teams = type(agents)(agents.table_name, **options)  # type: ignore[call-arg]
    team = teams.spec.session_class.from_dict({"session_id": "t", "team_id": "squad"})
    assert team is not None
    # The message names the mode the table holds, which the columns tell.
    held = "lacks the column\\(s\\) 'team_id' of team sessions: it holds agent sessions: open it"
    for call in (functools.partial(teams.upsert, team), functools.partial(teams.read, "a")):
        with pytest.raises(CorruptSessionError, match=held):
            call()
    with pytest.raises(CorruptSessionError, match="lacks the column\\(s\\) 'team_id'"):
        teams.upgrade_schema()
    assert agents.get_all_session_ids() == ["a"]


def _original_made_again(
    store: Store, memories: dict[str, Any], runs_table_too: bool
) -> SqlStorage:
    """A storage of ``store`` that wrote sessions of these ``memories`` for user "u", whose
    table was then dropped behind its back (``runs_table_too``: its runs table as well), as
    the original's ``drop()`` does before its ``create()``."""
    if store.backend == "sqlite-memory":
        pytest.skip("the original's table is written through another connection")
    assert store.original is not None
    storage = _sql(store)
    for sid, memory in memories.items():
        storage.upsert(AgentSession(session_id=sid, user_id="u", memory=memory))
    dropped = (storage.runs_table, storage.table) if runs_table_too else (storage.table,)
    with storage.db_engine.begin() as conn:
        for table in dropped:
            conn.exec_driver_sql(
                f"DROP TABLE {conn.dialect.identifier_preparer.format_table(table)}"
            )
    return storage


def test_a_table_made_again_by_the_original_after_savegame_recorded_it_is_read_as_such(
    sql_store: Store,
) -> None:
    # The original library's drop() and create() on a table savegame had made: its line in
    # savegame_migrations stays, at the latest version, over a table of the original's
    # columns. Storages open before and after read it as the original's, and an upgrade
    # brings it up to date.
    before = _original_made_again(sql_store, {"a": {"runs": [{"n": 0}]}}, runs_table_too=True)
    runs = [{"run_id": "1", "content": "hi"}]
    sql_store.original([{"session_id": "b", "user_id": "u", "memory": {"runs": runs}}])
    after = _sibling(before, before.table_name)
    try:
        for storage in (before, after):
            got = storage.read("b")
            assert got is not None
            assert got.memory == {"runs": runs}
            assert storage.get_all_session_ids(user_id="u") == ["b"]
            with pytest.raises(StorageError, match="older layout \\(version 1"):
                storage.upsert(AgentSession(session_id="c"))
        after.upgrade_schema()
        after.upsert(AgentSession(session_id="c", user_id="u"))
        assert sorted(before.get_all_session_ids(user_id="u")) == ["b", "c"]
        got = before.read("b")
        assert got is not None
        assert got.memory == {"runs": runs}
    finally:
        after.close()


def test_the_runs_table_the_originals_drop_leaves_holds_no_run_after_an_upgrade(
    sql_store: Store,
) -> None:
    # The original's drop() removes its own table only: savegame's runs table stays, with
    # the runs of the sessions dropped. Made again by the original, upgraded, the table must
    # not take them for the runs of the sessions it holds, or of those written later.
    old = {"runs": [{"run_id": "old", "n": n} for n in range(3)]}
    before = _original_made_again(sql_store, {"a": old, "b": old}, runs_table_too=False)
    runs = [{"run_id": "1", "content": "hi"}]
    sql_store.original([{"session_id": "a", "user_id": "u", "memory": {"runs": runs}}])
    after = _sibling(before, before.table_name)
    try:
        after.upgrade_schema()
        fresh = {"runs": [{"run_id": "2"}]}
        after.upsert(AgentSession(session_id="b", user_id="u", memory=fresh))
        reader = _sibling(before, before.table_name)
        try:
            got = {sid: reader.read(sid) for sid in ("a", "b")}
        finally:
            reader.close()
        assert {sid: s.memory if s else None for sid, s in got.items()} == {
            "a": {"runs": runs},
            "b": fresh,
        }
    finally:
        after.close()


def test_an_original_table_of_another_mode_or_no_session_table_is_refused_untouched(
    sql_store: Store,
) -> None:
    # "savegame schema upgrade" takes mode agent unless told: a team table, or a table
    # that holds no sessions at all, must not be read short or filled with agent columns.
    own = _made(sql_store)
    metadata = MetaData(schema=own.schema)
    team = Table(
        own.table_name + "_team",
        metadata,
        Column("session_id", String(255), primary_key=True),
        Column("team_id", String(255)),
        Column("user_id", String(255)),
        Column("memory", JSON()),
        Column("team_data", JSON()),
        Column("created_at", BigInteger),
    )
    other = Table(
        own.table_name + "_other",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("name", Text),
    )
    with own.db_engine.begin() as conn:
        metadata.create_all(conn)
        conn.execute(
            team.insert(),
            [
                {
                    "session_id": "t",
                    "team_id": "squad",
                    "memory": {"runs": [{"r": 1}]},
                    "team_data": {"n": 1},
                }
            ],
        )
    try:
        for table, lacking in (
            (team, "'agent_id' of agent sessions: it holds team sessions: open it with mode team"),
            (other, "'session_id', 'memory', 'agent_id' of agent sessions: it holds sessions of"),
        ):
            agents = _sibling(own, table.name)
            try:
                for call in (
                    functools.partial(agents.read, "t"),
                    agents.get_all_sessions,
                    agents.upgrade_schema,
                ):
                    with pytest.raises(
                        CorruptSessionError, match=f"lacks the column\\(s\\) {lacking}"
                    ):
                        call()
            finally:
                agents.close()
            with own.db_engine.connect() as conn:
                assert set(
                    Table(table.name, MetaData(schema=own.schema), autoload_with=conn).c.keys()
                ) == set(table.c.keys())
        options: dict[str, Any] = {"db_engine": own.db_engine, "mode": "team"}
        if own.schema is not None:
            options["schema"] = own.schema
        teams = type(own)(team.name, **options)  # type: ignore[call-arg]
        try:
            teams.upgrade_schema()
            got = teams.read("t")
            assert got is not None
            assert got.to_dict()["team_data"] == {"n": 1}
        finally:
            teams.drop()
            teams.close()
    finally:
        with own.db_engine.begin() as conn:
            metadata.drop_all(conn)


def test_an_original_workflow_v2_table_upgraded_or_not_is_refused_in_mode_workflow(
    sql_store: Store,
) -> None:
    # The original gave the tables of every mode its memory column, so its workflow_v2
    # table has every column of a workflow table too: read in mode workflow, its runs
    # would go unseen, and an upgrade and saves in that mode would mix two modes' runs.
    own = _made(sql_store)
    json_type = JSON().with_variant(JSONB(), "postgresql")
    steps = Table(
        own.table_name + "_steps",
        MetaData(schema=own.schema),
        Column("session_id", String(255), primary_key=True),
        Column("user_id", String(255)),
        Column("memory", json_type),
        Column("session_data", json_type),
        Column("extra_data", json_type),
        Column("created_at", BigInteger),
        Column("updated_at", BigInteger),
        Column("workflow_id", String(255)),
        Column("workflow_name", String(255)),
        Column("workflow_data", json_type),
        Column("runs", json_type),
    )
    with own.db_engine.begin() as conn:
        steps.create(conn)
        conn.execute(
            steps.insert(),
            [
                {
                    "session_id": "w",
                    "workflow_id": "flow",
                    "runs": [{"run_id": "r1"}],
                    "created_at": 1,
                }
            ],
        )
    options: dict[str, Any] = {"db_engine": own.db_engine}
    if own.schema is not None:
        options["schema"] = own.schema

    def refused_in_mode_workflow() -> None:
        for name in ("read", "get_all_sessions", "upsert", "upgrade_schema"):
            workflows = type(own)(steps.name, mode="workflow", **options)  # type: ignore[call-arg]
            calls = {
                "read": functools.partial(workflows.read, "w"),
                "get_all_sessions": workflows.get_all_sessions,
                "upsert": functools.partial(
                    workflows.upsert, WorkflowSession("w", memory={"runs": [{"x": 1}]})
                ),
                "upgrade_schema": workflows.upgrade_schema,
            }
            try:
                # Twice: a call refused once is refused again, not let through.
                for _ in range(2):
                    with pytest.raises(
                        CorruptSessionError,
                        match="holds workflow_v2 sessions: open it with mode workflow_v2",
                    ):
                        calls[name]()
            finally:
                workflows.close()

    try:
        refused_in_mode_workflow()
        with own.db_engine.connect() as conn:
            assert set(
                Table(steps.name, MetaData(schema=own.schema), autoload_with=conn).c.keys()
            ) == set(steps.c.keys())
        steps_v2 = type(own)(steps.name, mode="workflow_v2", **options)  # type: ignore[call-arg]
        try:
            steps_v2.upgrade_schema()
            # Upgraded, the table keeps the original's memory column, and so every column
            # of a workflow table still.
            refused_in_mode_workflow()
            got = steps_v2.read("w")
            assert got is not None
            assert got.to_dict()["runs"] == [{"run_id": "r1"}]
            assert got.version == 1
        finally:
            steps_v2.drop()
            steps_v2.close()
    finally:
        with own.db_engine.begin() as conn:
            steps.drop(conn, checkfirst=True)


def test_an_original_table_recorded_at_an_older_savegame_version_is_upgraded_whole(
    sql_store: Store,
) -> None:
    # An earlier savegame recorded the table at version 2 or 3; the original made it again.
    first = _sql(sql_store)
    first.create()
    engine, table = first.db_engine, first.table_name
    first.drop()
    rows = [{"session_id": "a", "memory": {"runs": [{"run_id": "r"}]}}]
    write_original_table(engine, table, first.schema, rows)
    with engine.connect() as conn:
        migrations = Table("savegame_migrations", MetaData(schema=first.schema), autoload_with=conn)
    for version in (3, 2):
        with engine.begin() as conn:
            conn.execute(delete(migrations).where(migrations.c.table_name == table))
            conn.execute(insert(migrations).values(table_name=table, version=version))
        storage = _sibling(first, table)
        storage.upgrade_schema()
        storage.upsert(AgentSession(session_id="b", memory={"runs": [{"run_id": "s"}]}))
        again = _sibling(first, table)
        assert [again.read(i).memory for i in "ab"] == [  # type: ignore[union-attr]
            {"runs": [{"run_id": "r"}]},
            {"runs": [{"run_id": "s"}]},
        ]
        again.close()
        storage.close()
    first.close()


def test_an_upgrade_moves_the_runs_of_many_sessions_in_a_few_statements(
    sql_store: Store,
) -> None:
    # Two statements a session (an UPDATE of its header, an INSERT of its runs) made the
    # upgrade of 50,000 sessions take minutes, for which PostgreSQL kept the table locked.
    n = 1200
    rows = [
        {
            "session_id": f"s{i:04d}",
            "memory": {"runs": [{"run_id": f"r{k}"} for k in range(i % 3)], "summary": i},
            "created_at": i,
        }
        for i in range(n)
    ]
    # Large runs are written before the batch ends, every 8 MB.
    for row in rows[:10]:
        row["memory"]["runs"].append({"run_id": "large", "content": "x" * (1 << 20)})
    assert sql_store.original is not None
    sql_store.original(rows)
    storage = _sql(sql_store)
    writes: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        words = statement.split(None, 3)
        if words[0] in ("UPDATE", "INSERT"):
            writes.append(" ".join(words[:3]))

    event.listen(storage.db_engine, "before_cursor_execute", note)
    try:
        storage.upgrade_schema()
    finally:
        event.remove(storage.db_engine, "before_cursor_execute", note)
    inserts = [w for w in writes if w.startswith("INSERT")]
    updates = [w for w in writes if w.startswith("UPDATE")]
    assert len(inserts) < 20, inserts
    assert len(updates) < 20, updates
    fresh = _sibling(storage, storage.table_name)
    for row in rows[:12] + rows[-10:]:
        got = fresh.read(row["session_id"])
        assert got is not None
        assert got.memory == row["memory"]  # type: ignore[attr-defined]
    fresh.close()
    storage.close()


def test_a_table_of_a_newer_layout_is_refused_and_left_as_it_is(sql_store: Store) -> None:
    # Recorded at a version this savegame does not know: it read and wrote the table as its
    # own, and upgrade_schema() recorded its own latest version over the newer one, so the
    # newer savegame would have applied its migrations to the table a second time.
    first = _sql(sql_store)
    first.upsert(AgentSession(session_id="a", memory={"runs": [{"run_id": "r"}]}))
    engine, table = first.db_engine, first.table_name
    with engine.connect() as conn:
        migrations = Table("savegame_migrations", MetaData(schema=first.schema), autoload_with=conn)
        header = Table(table, MetaData(schema=first.schema), autoload_with=conn)

    def record(version: int) -> None:
        with engine.begin() as conn:
            conn.execute(
                update(migrations).where(migrations.c.table_name == table).values(version=version)
            )

    record(LATEST + 1)
    try:
        for auto in (False, True):
            newer = _sibling(first, table)
            newer.auto_upgrade_schema = auto
            try:
                for call in (
                    functools.partial(newer.read, "a"),
                    newer.get_all_session_ids,
                    functools.partial(newer.upsert, AgentSession(session_id="b")),
                    functools.partial(newer.delete_session, "a"),
                    newer.upgrade_schema,
                    newer.create,
                    newer.drop,
                ):
                    with pytest.raises(StorageError, match=f"layout version {LATEST + 1}, written"):
                        call()
            finally:
                newer.close()
        with engine.connect() as conn:
            recorded = conn.execute(
                select(migrations.c.version).where(migrations.c.table_name == table)
            ).scalar()
            stored = conn.execute(select(header.c.session_id)).scalars().all()
        assert recorded == LATEST + 1
        assert [s if isinstance(s, str) else s.decode() for s in stored] == ["a"]
    finally:
        record(LATEST)


def _on_a_pool_of_one(
    sql_store: Store, timeout: float, check: Callable[[Callable[[Any], Any], Any], None]
) -> None:
    """Runs ``check(make, engine)`` with an application's engine of the store's database
    whose pool holds one connection and waits ``timeout`` seconds for it, ``make(engine)``
    making a storage of the store's table on it."""
    if sql_store.backend == "sqlite-memory":
        pytest.skip("an in-memory database is one connection, shared by its engine")
    own = _sql(sql_store)
    engine = create_engine(own.db_engine.url, pool_size=1, max_overflow=0, pool_timeout=timeout)
    options: dict[str, Any] = {} if own.schema is None else {"schema": own.schema}
    try:
        check(lambda e: type(own)(own.table_name, db_engine=e, **options), engine)
    finally:
        engine.dispose()


def test_an_engine_of_one_connection_is_shared_with_the_application(sql_store: Store) -> None:
    # savegame kept one connection of any engine out of its pool between calls: on the
    # application's engine of one connection, the application and savegame's own calls
    # through SQLAlchemy then waited for it in vain.
    _on_a_pool_of_one(sql_store, 3, sql_cases.check_an_engine_of_one_connection)


def test_an_engine_whose_pool_times_out_raises_backend_unavailable_and_loses_nothing(
    sql_store: Store,
) -> None:
    # read_many on a storage just opened took a second connection while holding the first,
    # and waited in vain on a pool of one (on an AssertionPool, a bare AssertionError).
    _on_a_pool_of_one(sql_store, 0.5, sql_cases.check_a_pool_that_times_out)


@pytest.mark.parametrize("options", [{"stream_results": True}, {"yield_per": 2}])
def test_an_engine_that_streams_results_makes_reads_and_writes_every_table(
    sql_store: Store, options: dict[str, Any]
) -> None:
    # PostgreSQL's server-side cursors take only queries: on such an engine every call
    # failed, CREATE TABLE and DELETE sent as cursors.
    if sql_store.backend == "sqlite-memory":
        pytest.skip("an in-memory database is one connection, shared by its engine")
    own = _sql(sql_store)
    engine = create_engine(own.db_engine.url).execution_options(**options)
    table = f"{own.table_name}_streamed"
    extra: dict[str, Any] = {} if own.schema is None else {"schema": own.schema}
    storage = type(own)(table, db_engine=engine, **extra)  # type: ignore[call-arg]
    try:
        stored = [
            storage.upsert(AgentSession(session_id=f"s{n}", user_id="u", memory={"runs": [n] * 3}))
            for n in range(5)
        ]
        assert sorted(storage.get_all_sessions(user_id="u"), key=lambda s: s.session_id) == stored
        storage.upgrade_schema()
        assert storage.delete_user("u") == 5
        storage.drop()
        assert not storage.table_exists()
    finally:
        storage.close()
        engine.dispose()


@pytest.mark.parametrize("pool", [StaticPool, AssertionPool])
def test_threads_on_an_engine_whose_pool_lends_one_connection_take_it_in_turn(
    sql_store: Store, pool: type[Pool]
) -> None:
    # Such a pool hands its one connection to every thread at once (StaticPool), or
    # refuses a second with an AssertionError (AssertionPool): threads interleaved their
    # statements on it, and reads came out corrupt or failed with the driver's own errors.
    if sql_store.backend == "sqlite-memory":
        pytest.skip("an in-memory database is one connection, shared by its engine")
    own = _sql(sql_store)
    threads = {"check_same_thread": False} if own.db_engine.dialect.name == "sqlite" else {}
    engine = create_engine(own.db_engine.url, poolclass=pool, connect_args=threads)
    options: dict[str, Any] = {} if own.schema is None else {"schema": own.schema}

    def make() -> SqlStorage:
        return type(own)(own.table_name, db_engine=engine, **options)  # type: ignore[call-arg]

    shared = make()

    def add_run(session: Session | None) -> Session:
        runs = [] if session is None else session.memory["runs"]
        return AgentSession(session_id="s", user_id="u", memory={"runs": [*runs, len(runs)]})

    def work(n: int) -> None:
        storage = shared if n % 2 else make()
        for _ in range(10):
            storage.update("s", add_run)
            assert storage.read("s") is not None
            assert storage.get_all_session_ids(user_id="u") == ["s"]

    try:
        in_threads(4, work)
        got = shared.read("s")
        assert got is not None
        assert got.memory == {"runs": list(range(40))}
        assert make().read_many(["s"]) == [got]
    finally:
        engine.dispose()


def _ctrl_c_at(event: str, function: str, call: Callable[[], Any]) -> None:
    """Runs ``call`` with Ctrl-C raised at the first ``event`` (``"call"``, ``"return"``)
    of a function named ``function``; it must come out as KeyboardInterrupt."""

    def trace(frame: Any, seen: str, arg: Any) -> Any:
        if seen == event and frame.f_code.co_name == function:
            raise KeyboardInterrupt
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        with pytest.raises(KeyboardInterrupt):
            call()
    finally:
        sys.settrace(previous)


def test_ctrl_c_just_after_a_connection_was_kept_leaves_the_next_calls_working(
    sql_store: Store,
) -> None:
    # A call keeps its connection for the next one (see sql._Spare). Ctrl-C landing just
    # after it was kept, before the call noted so, had the call give it back to the pool
    # as well: kept and closed, it failed a later call with a raw AttributeError.
    storage = _sql(sql_store)
    storage.upsert(AgentSession(session_id="s", session_data={"n": 1}))
    _ctrl_c_at("return", "keep", lambda: storage.read("s"))
    for _ in range(3):
        got = storage.read("s")
        assert got is not None
        assert got.session_data == {"n": 1}


def test_ctrl_c_while_a_transaction_commits_is_a_keyboard_interrupt(sql_store: Store) -> None:
    # SQLAlchemy asserts, in a finally, that a commit it began has ended: Ctrl-C landing
    # in the commit came out of a listing or read_many as a bare AssertionError.
    storage = _sql(sql_store)
    storage.upsert(AgentSession(session_id="s", user_id="u"))
    _ctrl_c_at("call", "_do_commit", lambda: storage.read_many(["s"]))
    assert [s.session_id for s in storage.read_many(["s"]) if s is not None] == ["s"]
