"""What only PostgreSQL shows: its schema, JSONB, killed backends and the original's tables.

Runs against the server of ``SAVEGAME_TEST_POSTGRES_URL``, each test in a schema of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, inspect, make_url, text

from savegame import open_storage
from savegame.errors import InvalidIdentifierError
from savegame.storage.in_memory import InMemoryStorage
from savegame.storage.postgres import PostgresStorage
from savegame.storage.session.agent import AgentSession
from savegame.storage.sql import ANALYZE_AFTER
from savegame.transfer import copy_sessions
from tests import sql_cases
from tests.stores import postgres_url, unique, write_original_table


@pytest.fixture
def server() -> str:
    return postgres_url()


@pytest.fixture
def schema(admin: Engine) -> Iterator[str]:
    name = unique("sg")
    yield name
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))


def test_schema_tables_and_types(server: str, admin: Engine, schema: str) -> None:
    storage = PostgresStorage("sessions", schema=schema, db_url=server)
    storage.upsert(AgentSession(session_id="s", memory={"runs": [{"r": 1}]}))
    found = inspect(admin)
    assert set(found.get_table_names(schema=schema)) == {
        "sessions",
        "sessions_runs",
        "savegame_migrations",
    }
    types = {c["name"]: str(c["type"]) for c in found.get_columns("sessions", schema=schema)}
    assert types["memory"] == "JSONB"
    assert types["created_at"] == "BIGINT"
    with admin.connect() as conn:
        stored = conn.execute(text(f'SELECT run FROM "{schema}".sessions_runs')).scalar()
    assert stored == {"r": 1}
    storage.close()


def test_nul_and_surrogates_are_stored_as_queryable_jsonb(
    server: str, admin: Engine, schema: str
) -> None:
    storage = PostgresStorage("sessions", schema=schema, db_url=server)
    data = {"text": "a\x00b", "lone": "\udc80", "plain": "ok", "big": 1e20}
    storage.upsert(AgentSession(session_id="s", session_data=data))
    with admin.connect() as conn:
        plain = conn.execute(
            text(f"SELECT session_data->>'plain' FROM \"{schema}\".sessions")
        ).scalar()
    assert plain == "ok"
    got = storage.read("s")
    assert got is not None
    assert got.session_data == data
    assert isinstance(got.session_data["big"], float)  # type: ignore[index]


def test_values_jsonb_cannot_hold_are_refused_as_serialization_errors() -> None:
    # A string over 256 MB (SQLSTATE 54000) is bad input, as on SQLite and MySQL, not a
    # failure of the server; checked on the error itself, the real one needing gigabytes.
    import psycopg

    dialect = PostgresStorage.dialect_class()
    assert dialect.refused(psycopg.errors.ProgramLimitExceeded(), psycopg)
    assert not dialect.refused(psycopg.errors.AdminShutdown(), psycopg)


def test_a_user_or_database_refused_at_login_is_not_taken_for_a_server_away(
    server: str,
) -> None:
    sql_cases.check_refused_login(lambda url: PostgresStorage("sessions", db_url=url), server)


def test_a_server_that_never_answers_fails_the_first_use_naming_the_address() -> None:
    sql_cases.check_a_server_that_never_answers(
        lambda url: PostgresStorage("sessions", db_url=url, connect_timeout=1),
        "postgresql+psycopg://postgres@127.0.0.1:{port}/test",
    )


def test_a_closed_port_raises_naming_the_address() -> None:
    sql_cases.check_closed_port(
        lambda url: PostgresStorage("sessions", db_url=url),
        "postgresql+psycopg://postgres@127.0.0.1:{port}/test",
    )


def test_killed_backends_leave_no_half_written_session(
    server: str, admin: Engine, schema: str
) -> None:
    storage = PostgresStorage("sessions", schema=schema, db_url=server)
    sql_cases.check_killed_connections(
        storage,
        admin,
        lock_run=f'SELECT 1 FROM "{schema}".{{runs}} '
        "WHERE session_id = 's' AND position = 0 FOR UPDATE",
        # The schema too: other tests' tables are called "sessions", in schemas of their
        # own, and a backend of theirs waiting would be killed.
        blocked="SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        f"AND query LIKE '%{schema}%' AND query LIKE '%{{runs}}%'",
        kill="SELECT pg_terminate_backend(:id)",
        own_id="SELECT pg_backend_pid()",
    )
    storage.close()


@pytest.mark.timeout(60)
def test_the_original_table_is_read_upgraded_and_written(
    server: str, admin: Engine, schema: str
) -> None:
    storage = PostgresStorage("legacy", schema=schema, db_url=server)
    sql_cases.check_original_table(storage, admin, server)
    storage.close()


def test_an_upgrade_leaves_the_runs_table_with_statistics_to_plan_by(
    server: str, admin: Engine, schema: str
) -> None:
    # Without them the planner took the runs table just filled for an empty one until
    # autovacuum came by: listings read the runs of many sessions by scanning it all.
    rows = [
        {"session_id": f"s{i}", "memory": {"runs": [{"n": k} for k in range(4)]}, "created_at": i}
        for i in range(50)
    ]
    write_original_table(server, "legacy", schema, rows)
    storage = PostgresStorage("legacy", schema=schema, db_url=server)
    storage.upgrade_schema()
    with admin.connect() as conn:
        counted = conn.execute(
            text("SELECT reltuples FROM pg_class WHERE oid = CAST(:t AS regclass)"),
            {"t": f'"{schema}".legacy_runs'},
        ).scalar()
    assert counted == 200
    storage.close()


def test_an_upgraded_original_table_orders_ids_by_code_point_as_a_new_one_does(
    server: str, admin: Engine, schema: str
) -> None:
    # The original's id columns take the database's collation (en_US.UTF-8 on many
    # servers), in which "a" comes before "B": listings break ties by code point, "B" first.
    ids = ["a", "B", "ä", "Z"]
    rows = [{"session_id": i, "user_id": "u", "agent_id": "e", "created_at": 1} for i in ids]
    write_original_table(server, "legacy", schema, rows)
    with admin.begin() as conn:
        for column in ("session_id", "user_id", "agent_id"):
            conn.execute(
                text(
                    f'ALTER TABLE "{schema}".legacy ALTER COLUMN {column} TYPE VARCHAR(255) '
                    'COLLATE "en-x-icu"'
                )
            )
    storage = PostgresStorage("legacy", schema=schema, db_url=server)
    storage.upgrade_schema()
    fresh = PostgresStorage("fresh", schema=schema, db_url=server)
    for sid in ids:
        fresh.upsert(AgentSession(session_id=sid, user_id="u", agent_id="e", created_at=1))
    expected = sorted(ids)
    for listed in (storage, fresh):
        assert listed.get_all_session_ids() == expected
        assert listed.get_all_session_ids(user_id="u", entity_id="e") == expected
    with admin.connect() as conn:
        collations = conn.execute(
            text(
                "SELECT column_name, collation_name FROM information_schema.columns "
                "WHERE table_schema = :s AND table_name = 'legacy' AND column_name IN "
                "('session_id', 'user_id', 'agent_id')"
            ),
            {"s": schema},
        ).all()
    assert sorted(collations) == [("agent_id", "C"), ("session_id", "C"), ("user_id", "C")]
    storage.upgrade_schema()
    storage.close()
    fresh.close()


@pytest.mark.parametrize("bad", ["a b", 'x"y', "s;drop", ""])
def test_schema_and_table_names_are_checked(bad: str) -> None:
    with pytest.raises(InvalidIdentifierError):
        PostgresStorage("sessions", schema=bad, db_url="postgresql://nowhere/db")
    with pytest.raises(InvalidIdentifierError):
        PostgresStorage(bad, db_url="postgresql://nowhere/db")


def test_drop_removes_only_this_storages_tables(server: str, admin: Engine, schema: str) -> None:
    mine = PostgresStorage("sessions", schema=schema, db_url=server)
    theirs = PostgresStorage("sessions_sub", schema=schema, db_url=server, mode="team")
    mine.create()
    theirs.create()
    mine.drop()
    assert not mine.table_exists()
    assert theirs.table_exists()
    assert set(inspect(admin).get_table_names(schema=schema)) == {
        "sessions_sub",
        "sessions_sub_runs",
        "savegame_migrations",
    }
    mine.close()
    theirs.close()


def test_urls(server: str, schema: str) -> None:
    storage = open_storage(f"{server}?schema={schema}&expire=30", mode="workflow")
    assert isinstance(storage, PostgresStorage)
    assert (storage.schema, storage.table_name, storage.expire) == (
        schema,
        "workflow_sessions",
        30,
    )
    assert storage.db_engine.url.drivername == "postgresql+psycopg"
    plain = open_storage("postgresql://u:secret@127.0.0.1:1/db?table=t&sslmode=disable")
    assert isinstance(plain, PostgresStorage)
    assert plain.db_engine.url.query == {"sslmode": "disable"}
    assert "secret" not in plain.where()
    # The form a hosted DATABASE_URL takes.
    hosted = open_storage(
        server.replace("postgresql+psycopg://", "postgres://") + f"?schema={schema}"
    )
    assert isinstance(hosted, PostgresStorage)
    hosted.upsert(AgentSession(session_id="hosted"))
    assert storage.read("hosted") is None  # another mode's table
    assert hosted.read("hosted") is not None
    hosted.close()
    storage.close()
    plain.close()


def test_without_psycopg_the_error_names_the_extra() -> None:
    sql_cases.check_missing_driver("psycopg", "PostgresStorage", "postgresql://h/db", "postgres")


def test_statements_on_one_session_are_prepared_and_listings_are_not(
    server: str, schema: str
) -> None:
    # A read or write of one session is planned once per connection; a listing is planned
    # afresh each time, with the table's statistics of the day.
    storage = PostgresStorage("sessions", schema=schema, db_url=server)
    storage.upsert(AgentSession(session_id="s", user_id="u", memory={"runs": [{"r": 1}]}))
    storage.upsert(AgentSession(session_id="s", user_id="u", memory={"runs": [{"r": 2}]}))
    other = PostgresStorage("sessions", schema=schema, db_url=server)
    assert other.read("s") is not None
    assert storage.read("s") is not None
    assert storage.get_all_session_ids(user_id="u") == ["s"]

    def prepared(conn: object) -> list[str]:
        # Outside a transaction, as savegame's own reads: the connection goes back to be
        # used by the next call, of this storage or another on the same server.
        with storage.dialect.one_statement(conn), conn.cursor() as cursor:  # type: ignore[attr-defined]
            cursor.execute("SELECT statement FROM pg_prepared_statements")
            return [row[0] for row in cursor.fetchall()]

    statements = storage._on_connection(prepared)
    assert statements, "nothing is prepared: every call is planned again"
    assert any(s.startswith("UPDATE") and "write_token" in s for s in statements)
    assert any("UNION ALL" in s for s in statements), statements
    assert not any("ORDER BY coalesce" in s for s in statements), statements
    other.close()
    storage.close()


def test_a_purge_never_takes_the_runs_of_a_session_saved_again(
    server: str, admin: Engine, schema: str
) -> None:
    sql_cases.check_purge_keeps_a_session_saved_again(
        lambda **kw: PostgresStorage("sessions", schema=schema, db_url=server, **kw),
        admin,
        f"SELECT 1 FROM \"{schema}\".{{runs}} WHERE session_id = 'x' FOR UPDATE",
        "SELECT count(*) FROM pg_stat_activity"
        f" WHERE wait_event_type = 'Lock' AND query LIKE 'DELETE FROM %{schema}%.{{runs}} %'",
    )


def test_a_purge_reads_no_run(server: str, schema: str) -> None:
    with (
        PostgresStorage("sessions", schema=schema, db_url=server) as storage,
        PostgresStorage("sessions", schema=schema, db_url=server) as reader,
    ):
        sql_cases.check_a_purge_reads_no_run(storage, reader)


def test_a_lost_commit_on_a_new_connection_waits_for_a_restarting_server(
    tmp_path: Path,
) -> None:
    from tests.stores import _postgres

    with _postgres(tmp_path, "agent") as store:
        sql_cases.check_lost_commit_then_restart(store)


def test_an_original_session_whose_id_is_too_long_for_savegame_keeps_its_runs_through_an_upgrade(
    server: str, admin: Engine, schema: str
) -> None:
    # The original's ids are VARCHAR without a length; savegame takes up to 512 characters
    # and its runs table holds no more. Such a session stays as the original wrote it, runs
    # inline, and the others are upgraded.
    long_id = "L" * 600
    runs = [{"run_id": "r0", "content": "hi"}]
    write_original_table(
        server, "legacy", schema, [{"session_id": "short", "memory": {"runs": runs}}]
    )
    with admin.begin() as conn:
        conn.execute(text(f'ALTER TABLE "{schema}".legacy ALTER COLUMN session_id TYPE VARCHAR'))
    with admin.begin() as conn:
        conn.execute(
            text(f'INSERT INTO "{schema}".legacy (session_id, memory) VALUES (:sid, :memory)'),
            {"sid": long_id, "memory": '{"runs": [{"run_id": "r0", "content": "hi"}]}'},
        )
    storage = PostgresStorage("legacy", schema=schema, db_url=server)
    storage.upgrade_schema()
    assert {s.session_id: s.memory for s in storage.get_all_sessions()} == {
        "short": {"runs": runs},
        long_id: {"runs": runs},
    }
    with admin.connect() as conn:
        moved = conn.execute(text(f'SELECT session_id FROM "{schema}".legacy_runs')).scalars()
        assert list(moved) == ["short"]
    storage.close()


@contextmanager
def _role_of(
    server: str, admin: Engine, schema: str, rights: str, owner: PostgresStorage
) -> Iterator[PostgresStorage]:
    """A storage of the schema's sessions table as a new role that may use the schema and
    has ``rights`` on its tables as they are now; ``owner`` is closed, and the role
    dropped, at the end."""
    role = unique("sg")
    with admin.begin() as conn:
        conn.execute(text(f"CREATE ROLE \"{role}\" LOGIN PASSWORD 'secret'"))
        conn.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
        conn.execute(text(f'GRANT {rights} ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"'))
    url = make_url(server).set(username=role, password="secret")
    storage = PostgresStorage("sessions", schema=schema, db_url=url.render_as_string(False))
    try:
        yield storage
    finally:
        storage.close()
        owner.close()
        with admin.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))


def test_a_role_that_may_only_use_a_schema_another_role_made_creates_and_upgrades(
    server: str, admin: Engine, schema: str
) -> None:
    owner = PostgresStorage("sessions", schema=schema, db_url=server)
    sql_cases.save_owned_session(owner)
    rights = "SELECT, INSERT, UPDATE, DELETE"
    with _role_of(server, admin, schema, rights, owner) as storage:
        sql_cases.check_schema_of_another_role(storage, owner)


def test_a_role_that_may_only_read_reads_and_its_writes_change_nothing(
    server: str, admin: Engine, schema: str
) -> None:
    owner = PostgresStorage("sessions", schema=schema, db_url=server)
    owner.create()
    with _role_of(server, admin, schema, "SELECT", owner) as storage:
        sql_cases.check_read_only_role(storage, owner)


def test_an_engine_whose_schema_translate_map_names_the_schema_keeps_the_tables_there(
    server: str, schema: str
) -> None:
    # The tables were made in the schema the map names, and the sessions written to the
    # storage's own schema, where no table was: every write failed.
    engine = create_engine(server).execution_options(schema_translate_map={"tenant": schema})
    storage = PostgresStorage("sessions", schema="tenant", db_engine=engine)
    try:
        runs = [{"n": 1}, {"n": 2}]
        stored = storage.upsert(AgentSession(session_id="s", user_id="u", memory={"runs": runs}))
        assert storage.read("s") == stored
        assert storage.get_all_session_ids(user_id="u") == ["s"]
        with PostgresStorage("sessions", schema=schema, db_url=server) as plain:
            assert plain.read("s") == stored
        storage.drop()
        assert not storage.table_exists()
    finally:
        storage.close()
        engine.dispose()


def test_statements_prepared_before_another_process_converts_the_id_columns_are_prepared_anew(
    server: str, admin: Engine, schema: str
) -> None:
    # The ids of a table an earlier savegame upgraded kept the database's collation, which
    # upgrade_schema() now converts. A connection that had prepared its statements on the
    # table before then failed its next calls: "cached plan must not change result type".
    owner = PostgresStorage("sessions", schema=schema, db_url=server)
    owner.upsert(AgentSession(session_id="s", user_id="u", memory={"runs": [0]}))
    with admin.begin() as conn:
        for column in ("session_id", "user_id", "agent_id"):
            conn.execute(
                text(
                    f'ALTER TABLE "{schema}".sessions ALTER COLUMN {column} '
                    'TYPE VARCHAR(512) COLLATE "POSIX"'
                )
            )
    user = PostgresStorage("sessions", schema=schema, db_url=server, cache_bytes=0)
    for n in range(1, 4):
        assert user.read("s") is not None
        user.upsert(AgentSession(session_id="s", user_id="u", memory={"runs": list(range(n))}))
    owner.upgrade_schema()
    got = user.read("s")
    assert got is not None
    assert got.memory == {"runs": [0, 1, 2]}
    stored = user.upsert(AgentSession(session_id="s", user_id="u", memory={"runs": [9]}))
    assert owner.read("s") == stored
    assert user.get_all_session_ids(user_id="u") == ["s"]
    user.close()
    owner.close()


@pytest.mark.parametrize("setting", ["lock_timeout", "statement_timeout"])
def test_a_lock_held_past_a_timeout_raises_backend_unavailable(
    server: str, admin: Engine, schema: str, setting: str
) -> None:
    url = make_url(server).update_query_dict({"options": f"-c {setting}=300"})
    # The tables are made first without the timeout: making them waits for the database's
    # schema lock, which another test's storage may hold for longer than the timeout.
    with PostgresStorage("sessions", schema=schema, db_url=server) as maker:
        maker.create()
    storage = PostgresStorage("sessions", schema=schema, db_url=url.render_as_string(False))
    sql_cases.check_lock_held_past_a_timeout(
        storage, admin, f"SELECT 1 FROM \"{schema}\".{{table}} WHERE session_id = 's' FOR UPDATE"
    )
    storage.close()


def test_a_write_that_waited_for_a_row_lock_lives_from_its_write(
    server: str, admin: Engine, schema: str
) -> None:
    holder = admin.connect()

    def hold() -> Callable[[], None]:
        holder.execute(
            text(f"SELECT 1 FROM \"{schema}\".sessions WHERE session_id = 's' FOR UPDATE")
        )
        return holder.close

    sql_cases.check_a_write_that_waited_for_a_lock_lives_from_its_write(
        lambda **options: PostgresStorage("sessions", schema=schema, db_url=server, **options),
        hold,
    )


def test_a_batch_removal_waits_on_no_other_session(server: str, admin: Engine, schema: str) -> None:
    url = make_url(server).update_query_dict({"options": "-c lock_timeout=1000"})
    with PostgresStorage("sessions", schema=schema, db_url=server) as maker:
        maker.create()
    storage = PostgresStorage("sessions", schema=schema, db_url=url.render_as_string(False))
    sql_cases.check_a_batch_removal_waits_on_no_other_session(
        storage,
        admin,
        f'SELECT 1 FROM "{schema}".{{table}} t JOIN "{schema}".{{runs}} r USING (session_id) '
        "WHERE t.session_id = 'other' FOR UPDATE",
    )
    storage.close()


@pytest.mark.parametrize("setting", ["lock_timeout", "statement_timeout"])
def test_a_read_held_past_a_timeout_raises_backend_unavailable(
    server: str, admin: Engine, schema: str, setting: str
) -> None:
    url = make_url(server).update_query_dict({"options": f"-c {setting}=150"})
    with PostgresStorage("sessions", schema=schema, db_url=server) as maker:
        maker.create()
    sql_cases.check_a_read_held_past_a_timeout(
        lambda **options: PostgresStorage(
            "sessions", schema=schema, db_url=url.render_as_string(False), **options
        ),
        admin,
        f'LOCK TABLE "{schema}".{{table}} IN ACCESS EXCLUSIVE MODE',
    )


def test_a_role_at_its_connection_limit_raises_backend_unavailable(
    server: str, admin: Engine, schema: str
) -> None:
    role = unique("sg")
    with admin.begin() as conn:
        conn.execute(text(f"CREATE ROLE \"{role}\" LOGIN PASSWORD 'secret' CONNECTION LIMIT 1"))
        conn.execute(text(f'CREATE SCHEMA "{schema}" AUTHORIZATION "{role}"'))
    url = make_url(server).set(username=role, password="secret").render_as_string(False)
    try:
        sql_cases.check_a_connection_limit(
            lambda: PostgresStorage("sessions", schema=schema, db_url=url), url
        )
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))


def test_connections_the_server_closed_when_idle_are_made_again(server: str, schema: str) -> None:
    # idle_session_timeout closes a connection idle outside a transaction, the one savegame
    # keeps between calls or the application's pool holds; idle_in_transaction_session_timeout
    # would close one that savegame left inside a transaction.
    options = "-c idle_session_timeout=300 -c idle_in_transaction_session_timeout=300"
    url = make_url(server).update_query_dict({"options": options})
    engine = create_engine(url)
    storages = [
        PostgresStorage("sessions", schema=schema, db_url=url.render_as_string(False)),
        PostgresStorage("sessions", schema=schema, db_engine=engine),
    ]
    reader = PostgresStorage("sessions", schema=schema, db_url=server, cache_bytes=0)
    try:
        sql_cases.check_idle_connections_closed_by_the_server(storages, reader, 0.3)
    finally:
        for storage in (*storages, reader):
            storage.close()
        engine.dispose()


def test_text_travels_as_utf8_whatever_the_client_encoding_libpq_is_told(
    server: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # libpq takes the client encoding from PGCLIENTENCODING, and a database's own encoding
    # otherwise: LATIN1 could not carry an emoji, nor savegame's escapes (U+FDD0).
    monkeypatch.setenv("PGCLIENTENCODING", "LATIN1")
    storage = PostgresStorage("sessions", schema=schema, db_url=server)
    data = {"text": "🎲 日本語 \x00 é"}
    storage.upsert(AgentSession(session_id="🎲", user_id="é", session_data=data))
    got = PostgresStorage("sessions", schema=schema, db_url=server, cache_bytes=0).read("🎲")
    assert got is not None
    assert got.session_data == data
    assert storage.get_all_session_ids(user_id="é") == ["🎲"]
    storage.close()


def test_an_engine_in_autocommit_still_writes_each_session_in_one_transaction(
    server: str, admin: Engine, schema: str
) -> None:
    url = make_url(server).update_query_dict({"options": "-c lock_timeout=300"})
    engine = create_engine(url, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0)
    sql_cases.check_an_autocommit_engine(
        lambda e: PostgresStorage("sessions", schema=schema, db_engine=e),
        engine,
        admin,
        f'"{schema}".sessions_runs',
    )
    engine.dispose()


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_an_engine_of_a_stricter_isolation_level_loses_no_update(
    server: str, schema: str, level: str
) -> None:
    engine = create_engine(server, isolation_level=level)
    sql_cases.check_an_engine_of_another_isolation_level(
        lambda e: PostgresStorage("sessions", schema=schema, db_engine=e), engine
    )
    engine.dispose()


def test_an_engine_reading_uncommitted_never_reads_a_session_half_written(
    server: str, schema: str
) -> None:
    # PostgreSQL runs READ UNCOMMITTED as READ COMMITTED: held here as MySQL is.
    engine = create_engine(server, isolation_level="READ UNCOMMITTED")
    sql_cases.check_an_engine_reading_uncommitted(
        lambda e: PostgresStorage("sessions", schema=schema, db_engine=e, cache_bytes=0), engine
    )
    engine.dispose()


def test_a_copy_into_a_new_table_leaves_statistics_to_find_the_sessions_there_by(
    server: str, admin: Engine, schema: str
) -> None:
    # Without them each batch's look-up of the sessions already there scanned the tables
    # whole, until autovacuum came by: a copy of many sessions grew ever slower.
    source = InMemoryStorage()
    count = ANALYZE_AFTER + 20
    for i in range(count):
        source.upsert(AgentSession(session_id=f"s{i:05d}", memory={"runs": [{"n": i}]}))
    destination = PostgresStorage("sessions", schema=schema, db_url=server)
    destination.create()
    with admin.begin() as conn:
        for table in ("sessions", "sessions_runs"):
            conn.execute(text(f'ALTER TABLE "{schema}".{table} SET (autovacuum_enabled = false)'))
    assert copy_sessions(source, destination).copied == count
    with admin.connect() as conn:
        counted = {
            table: conn.execute(
                text("SELECT reltuples FROM pg_class WHERE oid = CAST(:t AS regclass)"),
                {"t": f'"{schema}".{table}'},
            ).scalar()
            for table in ("sessions", "sessions_runs")
        }
    # Gathered once the copy had written ANALYZE_AFTER sessions, and not again since.
    assert counted == {"sessions": ANALYZE_AFTER, "sessions_runs": ANALYZE_AFTER}
    destination.close()


def test_one_server_spelled_otherwise_is_one_store(server: str, schema: str) -> None:
    sql_cases.check_one_server_spelled_otherwise_is_one_store(
        lambda url: PostgresStorage("sessions", schema=schema, db_url=url), server, 5432, "postgres"
    )
