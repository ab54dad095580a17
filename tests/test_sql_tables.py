"""The tables of the SQL storages, on SQLite, PostgreSQL and MySQL alike.

Table names that storages derive from theirs: a storage named after another's runs table, or
whose runs table is another's session table, is refused with a clear error and touches
neither table. A table of an earlier savegame's layout is read, upgraded and written.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, Table, update

from savegame.errors import StorageError
from savegame.storage.session.agent import AgentSession
from savegame.storage.sql import SqlStorage
from savegame.testing import Store
from tests.stores import BACKENDS, Backend


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
