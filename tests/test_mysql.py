"""What only MySQL/MariaDB shows: binary ids, text JSON, killed connections, the original's tables.

Runs against the server of ``SAVEGAME_TEST_MYSQL_URL``, each test with tables of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, inspect, make_url, text

from savegame import open_storage
from savegame.errors import (
    BackendUnavailableError,
    InvalidIdentifierError,
    SerializationError,
    StorageError,
)
from savegame.storage.mysql import MySQLStorage
from savegame.storage.session.agent import AgentSession
from savegame.workflow import Workflow
from tests import sql_cases
from tests.stores import mysql_packet_limit, mysql_url, unique, write_original_table


@pytest.fixture
def server() -> str:
    return mysql_url()


@pytest.fixture
def table(admin: Engine) -> Iterator[str]:
    name = unique("sg")
    yield name
    with admin.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {name}_runs, {name}"))
        if inspect(conn).has_table("savegame_migrations"):
            conn.execute(text("DELETE FROM savegame_migrations WHERE table_name = :t"), {"t": name})


def test_ids_differing_in_case_or_trailing_spaces_are_different_sessions(
    server: str, table: str
) -> None:
    storage = MySQLStorage(table, db_url=server)
    for sid in ["a", "A", "a ", "ä", "🎲"]:
        storage.upsert(AgentSession(session_id=sid, user_id=sid, created_at=1))
    assert storage.get_all_session_ids() == ["A", "a", "a ", "ä", "🎲"]
    assert storage.get_all_session_ids(user_id="a ") == ["a "]
    assert storage.delete_session("a") is True
    assert storage.read("a ") is not None
    storage.close()


@pytest.mark.parametrize("option", ["use_unicode=false", "charset=latin1"])
def test_driver_options_that_would_change_what_text_is_are_overridden(
    server: str, table: str, option: str
) -> None:
    # Text must come back as str, in utf8mb4; PyMySQL's use_unicode=false gave bytes, on
    # which the first read failed with a TypeError.
    storage = MySQLStorage(table, db_url=f"{server}?{option}")
    storage.upsert(AgentSession(session_id="🎲", user_id="ü", memory={"runs": [{"t": "🎲"}]}))
    got = MySQLStorage(table, db_url=f"{server}?{option}", cache_bytes=0).read("🎲")
    assert got is not None
    assert (got.user_id, got.memory) == ("ü", {"runs": [{"t": "🎲"}]})
    storage.close()


def test_an_upgraded_original_table_tells_ids_apart_byte_for_byte(server: str, table: str) -> None:
    # The original's ids are VARCHAR in the database's collation (case-insensitive, trailing
    # spaces ignored): once upgraded, "A" must not read, overwrite or erase the session "a".
    write_original_table(
        server,
        table,
        None,
        [{"session_id": "a", "user_id": "alice", "memory": {"runs": [{"n": 1}]}, "created_at": 1}],
    )
    storage = MySQLStorage(table, db_url=server)
    storage.upgrade_schema()
    assert storage.read("A") is None
    assert storage.get_all_session_ids(user_id="ALICE") == []
    for sid in ["A", "a "]:
        storage.upsert(AgentSession(session_id=sid, user_id="bob", memory={"runs": [{"n": sid}]}))
    assert storage.delete_user("ALICE") == 0
    got = storage.read("a")
    assert got is not None
    assert (got.user_id, got.memory) == ("alice", {"runs": [{"n": 1}]})
    assert sorted(storage.get_all_session_ids()) == ["A", "a", "a "]
    storage.close()


def test_upgrading_again_converts_the_ids_an_earlier_savegame_left_case_insensitive(
    server: str, admin: Engine, table: str
) -> None:
    # An earlier savegame upgraded the original's tables without converting their id
    # columns, and recorded them at the latest version: upgrading again converts them.
    write_original_table(
        server, table, None, [{"session_id": "a", "user_id": "alice", "created_at": 1}]
    )
    MySQLStorage(table, db_url=server).upgrade_schema()
    with admin.begin() as conn:
        conn.execute(
            text(
                f"ALTER TABLE {table} MODIFY session_id VARCHAR(255) COLLATE"
                " utf8mb4_general_ci NOT NULL, MODIFY user_id VARCHAR(255) COLLATE"
                " utf8mb4_general_ci"
            )
        )
    storage = MySQLStorage(table, db_url=server)
    assert storage.read("A") is not None  # the collation's doing, as that savegame left it
    storage.upgrade_schema()
    assert storage.read("A") is None
    assert storage.get_all_session_ids(user_id="ALICE") == []
    storage.upsert(AgentSession(session_id="A", user_id="bob"))
    got = storage.read("a")
    assert got is not None
    assert got.user_id == "alice"
    with admin.connect() as conn:
        kinds = {
            c["name"]: type(c["type"]).__name__
            for c in inspect(conn).get_columns(table)
            if c["name"] in ("session_id", "user_id")
        }
    assert kinds == {"session_id": "VARBINARY", "user_id": "VARBINARY"}
    storage.close()


def test_an_original_table_with_an_index_over_two_id_columns_is_upgraded(
    server: str, admin: Engine, table: str
) -> None:
    # At savegame's width (2048 bytes) the two columns of such an index outgrow InnoDB's
    # 3072-byte keys: the upgrade failed with "Specified key was too long", every time.
    write_original_table(
        server,
        table,
        None,
        [{"session_id": "a", "user_id": "alice", "agent_id": "g", "created_at": 1}],
    )
    with admin.begin() as conn:
        conn.execute(text(f"CREATE INDEX {table}_both ON {table} (user_id, agent_id)"))
    storage = MySQLStorage(table, db_url=server)
    storage.upgrade_schema()
    storage.upgrade_schema()
    storage.upsert(AgentSession(session_id="A", user_id="ALICE", agent_id="g"))
    storage.upsert(AgentSession(session_id="x" * 300, user_id="u" * 255))
    assert storage.get_all_session_ids(user_id="alice") == ["a"]
    assert storage.get_all_session_ids(entity_id="g") == ["A", "a"]
    with admin.connect() as conn:
        indexes = {i["name"]: i["column_names"] for i in inspect(conn).get_indexes(table)}
    assert indexes[f"{table}_both"] == ["user_id", "agent_id"]
    storage.close()


def test_deep_values_pass_where_json_valid_would_refuse_them(
    server: str, admin: Engine, table: str
) -> None:
    storage = MySQLStorage(table, db_url=server)
    deep: object = "bottom"
    for _ in range(200):
        deep = {"k": deep}
    storage.upsert(AgentSession(session_id="deep", session_data={"v": deep}))
    got = storage.read("deep")
    assert got is not None
    assert got.session_data == {"v": deep}
    with admin.connect() as conn:
        refused = conn.execute(
            text(f"SELECT JSON_VALID(session_data) FROM {table} WHERE session_id = 'deep'")
        ).scalar()
    assert refused == 0  # why the columns are LONGTEXT and not MariaDB's JSON
    storage.close()


def test_a_user_or_database_refused_at_login_is_not_taken_for_a_server_away(
    server: str,
) -> None:
    sql_cases.check_refused_login(lambda url: MySQLStorage("sessions", db_url=url), server)


def test_a_server_that_never_answers_fails_the_first_use_naming_the_address(
    server: str,
) -> None:
    # PyMySQL waited for the server's greeting for ever: its connect_timeout covers the
    # TCP connection alone. The greeting's wait ends with the connection made.
    sql_cases.check_a_server_that_never_answers(
        lambda url: MySQLStorage("sessions", db_url=url, connect_timeout=1),
        "mysql+pymysql://root@127.0.0.1:{port}/test",
    )
    with (
        MySQLStorage(unique("sg"), db_url=server, connect_timeout=1) as storage,
        storage.db_engine.connect() as conn,
    ):
        assert conn.execute(text("SELECT SLEEP(2.5)")).scalar() == 0


def test_a_closed_port_raises_naming_the_address() -> None:
    sql_cases.check_closed_port(
        lambda url: MySQLStorage("sessions", db_url=url),
        "mysql+pymysql://root@127.0.0.1:{port}/test",
    )


def test_killed_connections_leave_no_half_written_session(
    server: str, admin: Engine, table: str
) -> None:
    storage = MySQLStorage(table, db_url=server)
    sql_cases.check_killed_connections(
        storage,
        admin,
        lock_run="SELECT 1 FROM {runs} WHERE session_id = 's' AND position = 0 FOR UPDATE",
        blocked="SELECT id FROM information_schema.processlist "
        "WHERE info LIKE 'INSERT INTO {runs}%' AND id <> CONNECTION_ID()",
        kill="KILL :id",
        own_id="SELECT CONNECTION_ID()",
    )
    storage.close()


@pytest.mark.timeout(60)
def test_the_original_table_is_read_upgraded_and_written(
    server: str, admin: Engine, table: str
) -> None:
    storage = MySQLStorage(table, db_url=server)
    sql_cases.check_original_table(storage, admin, server)
    storage.close()


def test_urls(server: str, table: str) -> None:
    storage = open_storage(f"{server}?table={table}&expire=30", mode="team")
    assert isinstance(storage, MySQLStorage)
    assert (storage.schema, storage.table_name, storage.expire) == (None, table, 30)
    assert storage.db_engine.url.drivername == "mysql+pymysql"
    per_mode = open_storage("mysql://root@127.0.0.1:1/test", mode="workflow_v2")
    assert isinstance(per_mode, MySQLStorage)
    assert per_mode.table_name == "workflow_v2_sessions"
    assert per_mode.db_engine.url.drivername == "mysql+pymysql"
    maria = open_storage(server.replace("mysql+pymysql://", "mariadb://") + f"?table={table}")
    assert isinstance(maria, MySQLStorage)
    maria.upsert(AgentSession(session_id="maria", memory={"runs": [{"said": "🎮"}]}))
    found = open_storage(f"{server}?table={table}").read("maria")
    assert found is not None
    assert found.memory == {"runs": [{"said": "🎮"}]}  # type: ignore[attr-defined]
    maria.close()
    storage.close()
    per_mode.close()


def test_without_pymysql_the_error_names_the_extra() -> None:
    sql_cases.check_missing_driver("pymysql", "MySQLStorage", "mysql://h/db", "mysql")


@pytest.fixture
def packet_limit(server: str) -> Iterator[int]:
    """The server's max_allowed_packet, which no other test changes while this one runs."""
    with mysql_packet_limit(server) as limit:
        yield limit


@pytest.mark.xdist_group("max_allowed_packet")
def test_a_session_larger_than_max_allowed_packet_is_refused_and_nothing_changes(
    server: str, admin: Engine, table: str, packet_limit: int
) -> None:
    # Refused before it is sent, always with the reason: the server itself would close the
    # connection while a large statement is still being sent, and the client might then
    # see only the connection reset.
    limit = packet_limit
    refused = "larger than the server's max_allowed_packet"
    storage = MySQLStorage(table, db_url=server)
    stored = storage.upsert(AgentSession(session_id="big", session_data={"n": 1}))
    with pytest.raises(SerializationError, match=refused):
        storage.upsert(AgentSession(session_id="big", session_data={"blob": "x" * limit}))
    with pytest.raises(SerializationError, match=refused):
        storage.upsert(AgentSession(session_id="new", memory={"runs": [{"text": "y" * limit}]}))
    # Under the limit as text, over it once PyMySQL has put a backslash before each quote.
    quotes = "'" * (limit * 3 // 4)
    with pytest.raises(SerializationError, match=refused):
        storage.upsert(AgentSession(session_id="big", session_data={"quotes": quotes}))
    assert storage.read("big") == stored
    assert storage.read("new") is None
    assert storage.get_all_session_ids() == ["big"]
    storage.upsert(AgentSession(session_id="after"))
    assert storage.read("after") is not None
    storage.close()


@pytest.mark.xdist_group("max_allowed_packet")
def test_a_header_too_large_to_send_packed_is_read_column_by_column(
    server: str, admin: Engine, table: str, packet_limit: int
) -> None:
    # A read of one session asks for its header as one JSON array, which doubles each
    # backslash; MariaDB gives NULL for an array larger than max_allowed_packet, though
    # each column alone fits. Another writer leaves such a header here.
    pairs = packet_limit * 9 // 32  # the column: 9/16 of the limit; packed: 9/8
    runs = [{"run_id": "r0", "messages": [{"role": "user", "content": "hi"}]}]
    with MySQLStorage(table, db_url=server) as storage:
        storage.upsert(AgentSession(session_id="wide", memory={"runs": runs}))
    where = "WHERE session_id = 'wide'"
    with admin.begin() as conn:
        conn.execute(
            text(f"UPDATE {table} SET session_data = CONCAT(:a, REPEAT(:b, :n), :c) {where}"),
            {"a": '{"b":"', "b": "\\\\", "n": pairs, "c": '"}'},
        )
        packed = f"SELECT JSON_ARRAY(session_data) IS NULL FROM {table} {where}"
        assert conn.execute(text(packed)).scalar() == 1
    with MySQLStorage(table, db_url=server) as fresh:
        got = fresh.read("wide")
        assert got is not None
        assert got.session_data == {"b": "\\" * pairs}
        assert got.memory == {"runs": runs}
        assert fresh.get_all_session_ids() == ["wide"]


@pytest.mark.xdist_group("max_allowed_packet")
def test_a_value_stored_under_a_larger_max_allowed_packet_is_never_read_as_null(
    server: str, admin: Engine, table: str, packet_limit: int
) -> None:
    # A value stored while the server took larger packets is larger than it packs now: the
    # cast to text in the packed header gives NULL for it, which is not the value.
    limit = packet_limit
    with MySQLStorage(table, db_url=server) as storage:
        storage.upsert(AgentSession(session_id="grown", session_data={"n": 1}))
    try:
        with admin.begin() as conn:
            conn.execute(text(f"SET GLOBAL max_allowed_packet = {4 * limit}"))
        admin.dispose()  # the next connection takes the larger limit
        with admin.begin() as conn:
            conn.execute(
                text(f"UPDATE {table} SET session_data = CONCAT(:a, REPEAT('x', :n), :c)"),
                {"a": '{"b":"', "n": limit, "c": '"}'},
            )
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"SET GLOBAL max_allowed_packet = {limit}"))
        admin.dispose()
    with MySQLStorage(table, db_url=server) as fresh:
        got = fresh.read("grown")
        assert got is not None
        assert got.session_data == {"b": "x" * limit}


def test_a_purge_never_takes_the_runs_of_a_session_saved_again(
    server: str, admin: Engine, table: str
) -> None:
    sql_cases.check_purge_keeps_a_session_saved_again(
        lambda **kw: MySQLStorage(table, db_url=server, **kw),
        admin,
        "SELECT 1 FROM {runs} WHERE session_id = 'x' FOR UPDATE",
        # INNODB_TRX, cached, does not show the wait reliably; the process list does.
        "SELECT count(*) FROM information_schema.PROCESSLIST"
        " WHERE command = 'Query' AND info LIKE 'DELETE FROM {runs} %'",
    )


def test_a_purge_reads_no_run(server: str, table: str) -> None:
    with (
        MySQLStorage(table, db_url=server) as storage,
        MySQLStorage(table, db_url=server) as reader,
    ):
        sql_cases.check_a_purge_reads_no_run(storage, reader)


def test_a_lost_commit_on_a_new_connection_waits_for_a_restarting_server(
    tmp_path: Path,
) -> None:
    from tests.stores import _mysql

    with _mysql(tmp_path, "agent") as store:
        sql_cases.check_lost_commit_then_restart(store)


def test_a_mariadb_url_opens_a_storage_as_a_mysql_one(
    server: str, admin: Engine, table: str
) -> None:
    # SQLAlchemy's dialect for mariadb:// is named "mariadb": what is compiled or made for
    # MySQL, the runs' digests and the tables' charset, must be so for it too.
    url = make_url(server).set(drivername="mariadb+pymysql")
    runs = [{"run_id": "r0", "content": "🎲"}]
    with MySQLStorage(table, db_url=url.render_as_string(hide_password=False)) as storage:
        assert storage.db_engine.dialect.name == "mariadb"
        storage.upsert(AgentSession(session_id="🎲", user_id="u", memory={"runs": runs}))
        got = storage.read("🎲")
        assert got is not None
        assert got.memory == {"runs": runs}
        assert storage.get_all_session_ids(user_id="u") == ["🎲"]
    with admin.connect() as conn:
        collations = conn.execute(
            text(
                "SELECT table_name, table_collation, engine FROM information_schema.tables"
                " WHERE table_schema = DATABASE() AND table_name IN (:a, :b)"
            ),
            {"a": table, "b": f"{table}_runs"},
        ).all()
    assert sorted(collations) == [
        (table, "utf8mb4_bin", "InnoDB"),
        (f"{table}_runs", "utf8mb4_bin", "InnoDB"),
    ]


@pytest.mark.xdist_group("schema_lock")
def test_schema_changes_wait_for_the_lock_and_never_go_on_without_it(
    server: str, admin: Engine, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process holds the lock under which savegame changes the database's tables (a
    # long upgrade, say): a storage that waited for it in vain says so, and changes nothing.
    # The lock of another database holds up nothing here: it was the whole server's.
    from savegame.storage import mysql

    monkeypatch.setattr(mysql, "_SCHEMA_LOCK_WAIT", 1)
    storage = MySQLStorage(table, db_url=server)
    lock = f"savegame.schema:{make_url(server).database}"
    with admin.connect() as holder:
        assert holder.execute(text("SELECT GET_LOCK(:n, 30)"), {"n": lock}).scalar() == 1
        try:
            refused = f"held the lock '{lock}', under which savegame changes the tables of"
            with pytest.raises(BackendUnavailableError, match=refused):
                storage.create()
            with pytest.raises(BackendUnavailableError, match=refused):
                storage.upsert(AgentSession(session_id="s"))
            assert not storage.table_exists()
            holder.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": lock})
            other = holder.execute(text("SELECT GET_LOCK('savegame.schema:another', 30)"))
            assert other.scalar() == 1
            storage.create()
            assert storage.table_exists()
        finally:
            holder.execute(text("SELECT RELEASE_ALL_LOCKS()"))
    storage.upsert(AgentSession(session_id="s"))
    assert storage.read("s") is not None
    storage.close()


@contextmanager
def _user_of(
    server: str, admin: Engine, rights: str
) -> Iterator[tuple[MySQLStorage, MySQLStorage]]:
    """Storages of a new database's sessions table: one as root, its owner, and one as a
    new user with ``rights`` on the database; both closed, the database and the user
    dropped, at the end."""
    database = unique("sg")
    user = unique("sg")
    with admin.begin() as conn:
        conn.execute(text(f"CREATE DATABASE {database}"))
        conn.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'secret'"))
        conn.execute(text(f"GRANT {rights} ON {database}.* TO '{user}'@'%'"))
    owner = MySQLStorage("sessions", schema=database, db_url=server)
    url = make_url(server).set(username=user, password="secret", database=database)
    storage = MySQLStorage("sessions", schema=database, db_url=url.render_as_string(False))
    try:
        yield owner, storage
    finally:
        storage.close()
        owner.close()
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE {database}"))
            conn.execute(text(f"DROP USER '{user}'@'%'"))


def test_a_user_that_may_only_use_a_database_another_made_creates_and_upgrades(
    server: str, admin: Engine
) -> None:
    with _user_of(server, admin, "SELECT, INSERT, UPDATE, DELETE") as (owner, storage):
        sql_cases.save_owned_session(owner)
        sql_cases.check_schema_of_another_role(storage, owner)


def test_a_user_that_may_only_read_reads_and_its_writes_change_nothing(
    server: str, admin: Engine
) -> None:
    with _user_of(server, admin, "SELECT") as (owner, storage):
        owner.create()
        sql_cases.check_read_only_role(storage, owner)


@pytest.mark.parametrize(
    "sql_mode", ["TRADITIONAL", "STRICT_ALL_TABLES", "ANSI", "NO_BACKSLASH_ESCAPES"]
)
def test_sessions_round_trip_whatever_the_sql_mode(server: str, table: str, sql_mode: str) -> None:
    # Under a strict mode, MariaDB refuses a session variable set past its maximum, where it
    # otherwise lowers it with a warning: setting group_concat_max_len failed every call.
    url = make_url(server).update_query_dict(
        {"init_command": f"SET SESSION sql_mode = '{sql_mode}'"}
    )
    storage = MySQLStorage(table, db_url=url.render_as_string(False))
    data = {"text": "a \\ b ' c \" d \0 e \n f \x1a 😀"}
    runs = [{"q": "'\\"}, {"r": 1}]
    storage.upsert(AgentSession(session_id="it's\\", user_id="u", session_data=data))
    stored = storage.upsert(
        AgentSession(session_id="it's\\", user_id="u", session_data=data, memory={"runs": runs})
    )
    with MySQLStorage(table, db_url=url.render_as_string(False)) as other:
        assert other.read("it's\\") == stored
        assert other.get_all_session_ids(user_id="u") == ["it's\\"]
    assert storage.delete_session("it's\\")
    storage.close()


def test_a_select_limit_of_the_server_or_session_cuts_no_session_or_listing_short(
    server: str, table: str
) -> None:
    # sql_select_limit caps every SELECT without a LIMIT: listings came back short, and a
    # session with more runs than the cap was reported corrupt.
    url = make_url(server).update_query_dict({"init_command": "SET SESSION sql_select_limit = 2"})
    storage = MySQLStorage(table, db_url=url.render_as_string(False), expire=3600)
    runs = [{"n": n} for n in range(5)]
    for n in range(4):
        storage.upsert(AgentSession(session_id=f"s{n}", user_id="u", memory={"runs": runs}))
    with MySQLStorage(table, db_url=url.render_as_string(False)) as other:
        got = other.read("s0")
        assert got is not None
        assert got.memory == {"runs": runs}
        assert sorted(other.get_all_session_ids(user_id="u")) == ["s0", "s1", "s2", "s3"]
        assert len(other.get_all_sessions()) == 4
    assert storage.delete_user("u") == 4
    storage.close()


def test_a_completion_type_of_release_closes_no_connection_savegame_commits_on(
    server: str, table: str
) -> None:
    # completion_type = RELEASE (2) makes the server close a connection at each COMMIT and
    # ROLLBACK; set for the whole server, every call failed as a server gone away. Here it
    # is set on each new connection, as the server's global setting would give it.
    engine = create_engine(server)
    connections: list[Any] = []

    @event.listens_for(engine, "connect")
    def release_on_commit(dbapi_connection: Any, record: Any) -> None:
        connections.append(dbapi_connection)
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET SESSION completion_type = 2")

    storage = MySQLStorage(table, db_engine=engine)
    try:
        for n in range(3):
            runs = [{"n": k} for k in range(n + 1)]
            stored = storage.upsert(AgentSession(session_id="s", memory={"runs": runs}))
            assert storage.read("s") == stored
            assert storage.get_all_session_ids() == ["s"]
        assert len(connections) == 1
    finally:
        storage.close()
        engine.dispose()


def test_an_engine_whose_schema_translate_map_names_the_database_keeps_the_tables_there(
    server: str, admin: Engine, table: str
) -> None:
    # The map's None stands for the URL's database, which a storage without schema= uses.
    database = unique("sg")
    with admin.begin() as conn:
        conn.execute(text(f"CREATE DATABASE {database}"))
    engine = create_engine(server).execution_options(schema_translate_map={None: database})
    storage = MySQLStorage(table, db_engine=engine)
    try:
        stored = storage.upsert(AgentSession(session_id="s", user_id="u", memory={"runs": [1]}))
        assert storage.read("s") == stored
        assert storage.get_all_session_ids(user_id="u") == ["s"]
        with MySQLStorage(table, schema=database, db_url=server) as plain:
            assert plain.read("s") == stored
        with MySQLStorage(table, db_url=server) as elsewhere:
            assert not elsewhere.table_exists()
    finally:
        storage.close()
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE {database}"))


def test_a_write_that_waited_for_a_row_lock_lives_from_its_write(
    server: str, admin: Engine, table: str
) -> None:
    holder = admin.connect()

    def hold() -> Callable[[], None]:
        holder.begin()
        holder.execute(text(f"SELECT 1 FROM {table} WHERE session_id = 's' FOR UPDATE"))
        return holder.close

    sql_cases.check_a_write_that_waited_for_a_lock_lives_from_its_write(
        lambda **options: MySQLStorage(table, db_url=server, **options), hold
    )


@pytest.mark.parametrize("setting", ["innodb_lock_wait_timeout = 1", "max_statement_time = 0.3"])
def test_a_lock_held_past_a_timeout_raises_backend_unavailable(
    server: str, admin: Engine, table: str, setting: str
) -> None:
    url = make_url(server).update_query_dict({"init_command": f"SET SESSION {setting}"})
    # The tables are made first without the timeout: making them waits for the server-wide
    # schema lock, which another test's storage may hold for longer than the timeout.
    with MySQLStorage(table, db_url=server) as maker:
        maker.create()
    storage = MySQLStorage(table, db_url=url.render_as_string(False))
    sql_cases.check_lock_held_past_a_timeout(
        storage, admin, "SELECT 1 FROM {table} WHERE session_id = 's' FOR UPDATE"
    )
    storage.close()


def test_a_batch_removal_waits_on_no_other_session(server: str, admin: Engine, table: str) -> None:
    url = make_url(server).update_query_dict(
        {"init_command": "SET SESSION innodb_lock_wait_timeout = 1"}
    )
    with MySQLStorage(table, db_url=server) as maker:
        maker.create()
    storage = MySQLStorage(table, db_url=url.render_as_string(False))
    sql_cases.check_a_batch_removal_waits_on_no_other_session(
        storage,
        admin,
        "SELECT 1 FROM {table} JOIN {runs} USING (session_id) "
        "WHERE {table}.session_id = 'other' FOR UPDATE",
    )
    storage.close()


def test_a_read_held_past_a_timeout_raises_backend_unavailable(
    server: str, admin: Engine, table: str
) -> None:
    url = make_url(server).update_query_dict(
        {"init_command": "SET SESSION max_statement_time = 0.15"}
    )
    with MySQLStorage(table, db_url=server) as maker:
        maker.create()
    sql_cases.check_a_read_held_past_a_timeout(
        lambda **options: MySQLStorage(table, db_url=url.render_as_string(False), **options),
        admin,
        "LOCK TABLES {table} WRITE",
        "UNLOCK TABLES",
    )


def test_a_user_at_its_connection_limit_raises_backend_unavailable(
    server: str, admin: Engine
) -> None:
    # MariaDB and MySQL refuse the connection with error 1226, which was a plain StorageError.
    database = unique("sg")
    user = unique("sg")
    with admin.begin() as conn:
        conn.execute(text(f"CREATE DATABASE {database}"))
        conn.execute(
            text(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'secret' WITH MAX_USER_CONNECTIONS 1")
        )
        conn.execute(text(f"GRANT ALL ON {database}.* TO '{user}'@'%'"))
    url = make_url(server).set(username=user, password="secret", database=database)
    try:
        sql_cases.check_a_connection_limit(
            lambda: MySQLStorage("sessions", db_url=url.render_as_string(False)),
            url.render_as_string(False),
        )
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE {database}"))
            conn.execute(text(f"DROP USER '{user}'@'%'"))


def test_connections_the_server_closed_when_idle_are_made_again(server: str, table: str) -> None:
    url = make_url(server).update_query_dict({"init_command": "SET SESSION wait_timeout = 1"})
    engine = create_engine(url)
    storages = [
        MySQLStorage(table, db_url=url.render_as_string(False)),
        MySQLStorage(table, db_engine=engine),
    ]
    reader = MySQLStorage(table, db_url=server, cache_bytes=0)
    try:
        sql_cases.check_idle_connections_closed_by_the_server(storages, reader, 1)
    finally:
        for storage in (*storages, reader):
            storage.close()
        engine.dispose()


def test_an_engine_in_autocommit_still_writes_each_session_in_one_transaction(
    server: str, admin: Engine, table: str
) -> None:
    url = make_url(server).update_query_dict(
        {"init_command": "SET SESSION innodb_lock_wait_timeout = 1"}
    )
    engine = create_engine(url, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0)
    sql_cases.check_an_autocommit_engine(
        lambda e: MySQLStorage(table, db_engine=e), engine, admin, f"{table}_runs"
    )
    engine.dispose()


def test_a_value_the_json_columns_of_an_upgraded_original_table_refuse_is_a_serialization_error(
    server: str, table: str
) -> None:
    # The original's JSON columns stay JSON, which MariaDB checks with json_valid: nesting
    # deeper than 32 levels fails the check (MySQL refuses more than 100).
    write_original_table(
        server, table, None, [{"session_id": "a", "session_data": {"n": 1}, "created_at": 1}]
    )
    storage = MySQLStorage(table, db_url=server)
    storage.upgrade_schema()
    deep: dict[str, object] = {"leaf": 1}
    for _ in range(120):
        deep = {"d": deep}
    for session_id in ("a", "new"):
        with pytest.raises(SerializationError):
            storage.upsert(AgentSession(session_id=session_id, session_data=deep))
    got = MySQLStorage(table, db_url=server, cache_bytes=0).read("a")
    assert got is not None
    assert got.session_data == {"n": 1}
    assert storage.get_all_session_ids() == ["a"]
    storage.close()


@pytest.mark.parametrize("sql_mode", ["", "TRADITIONAL"])
def test_a_value_too_long_for_a_column_of_the_original_is_refused_whatever_the_sql_mode(
    server: str, admin: Engine, table: str, sql_mode: str
) -> None:
    # The original's team_session_id is a VARCHAR(255) (and its columns may be in a 3-byte
    # charset): a sql_mode that is not strict stored a longer value, or an emoji, changed
    # with a warning only, and the save returned as though it had stored the session.
    write_original_table(
        server, table, None, [{"session_id": "a", "team_session_id": "t", "created_at": 1}]
    )
    MySQLStorage(table, db_url=server).upgrade_schema()
    with admin.begin() as conn:
        conn.execute(
            text(f"ALTER TABLE {table} MODIFY team_session_id VARCHAR(255) CHARACTER SET utf8mb3")
        )
    url = make_url(server).update_query_dict(
        {"init_command": f"SET SESSION sql_mode = '{sql_mode}'"}
    )
    storage = MySQLStorage(table, db_url=url.render_as_string(False))
    for value in ("t" * 300, "🎲"):
        for session_id in ("a", "new"):
            with pytest.raises(SerializationError, match="team_session_id"):
                storage.upsert(AgentSession(session_id=session_id, team_session_id=value))
    with MySQLStorage(table, db_url=server, cache_bytes=0) as other:
        got = other.read("a")
        assert got is not None
        assert got.team_session_id == "t"
        assert other.get_all_session_ids() == ["a"]
    storage.upsert(AgentSession(session_id="new", team_session_id="t" * 255))
    storage.close()


def test_a_url_that_names_no_database_is_refused_unless_schema_names_one() -> None:
    # The first call failed on a bare AssertionError of SQLAlchemy's.
    server = mysql_url()
    bare, _, database = server.partition("?")[0].rpartition("/")
    engine = create_engine(bare)
    for opening in (
        lambda: open_storage(f"{bare}?table=t"),
        lambda: open_storage(f"{bare}/?table=t"),
        lambda: MySQLStorage("t", db_url=bare),
        lambda: MySQLStorage("t", db_engine=engine),
    ):
        with pytest.raises(InvalidIdentifierError, match="names no database; name one in it"):
            opening()
    with open_storage(f"{bare}?table={unique('sg')}&schema={database}") as storage:
        assert storage.read("absent") is None
    engine.dispose()


def test_tls_files_that_cannot_be_read_are_named(server: str, table: str, tmp_path: Path) -> None:
    # PyMySQL raised ssl's own error, no StorageError, which named neither the file nor the
    # database: "error: [Errno 2] No such file or directory" was all the command line said.
    not_a_certificate = tmp_path / "ca.pem"
    not_a_certificate.write_text("not a certificate\n")
    for path in (tmp_path / "missing.pem", not_a_certificate):
        storage = open_storage(f"{server}?table={table}&ssl_ca={path}")
        with pytest.raises(StorageError) as refused:
            storage.read("s")
        assert "cannot make a connection with the TLS files its URL names" in str(refused.value)
        assert str(path) in str(refused.value).replace("%2F", "/")
        storage.close()


@pytest.mark.xdist_group("max_allowed_packet")
def test_a_workflow_run_whose_output_is_too_large_is_recorded_without_it(
    server: str, admin: Engine, table: str, packet_limit: int
) -> None:
    limit = packet_limit

    class Report(Workflow):
        def run(self) -> str:
            self.session_state["runs"] = self.session_state.get("runs", 0) + 1
            return "x" * limit

    storage = MySQLStorage(table, db_url=server, mode="workflow")
    with pytest.raises(SerializationError, match="max_allowed_packet"):
        Report(session_id="w", storage=storage).run()
    stored = storage.read("w")
    assert stored is not None
    [run] = stored.memory["runs"]  # type: ignore[attr-defined]
    assert (run["status"], "output" in run) == ("failed", False)
    assert run["error"].startswith("not saved: SerializationError: a statement of ")
    assert stored.session_data["session_state"] == {"runs": 1}  # type: ignore[attr-defined]
    storage.close()


def test_an_engine_reading_uncommitted_never_reads_a_session_half_written(
    server: str, table: str
) -> None:
    engine = create_engine(server, isolation_level="READ UNCOMMITTED")
    sql_cases.check_an_engine_reading_uncommitted(
        lambda e: MySQLStorage(table, db_engine=e, cache_bytes=0), engine
    )
    engine.dispose()


@pytest.mark.parametrize("level", ["READ UNCOMMITTED", "REPEATABLE READ", "SERIALIZABLE"])
def test_an_engine_of_another_isolation_level_loses_no_update(
    server: str, table: str, level: str
) -> None:
    engine = create_engine(server, isolation_level=level)
    sql_cases.check_an_engine_of_another_isolation_level(
        lambda e: MySQLStorage(table, db_engine=e), engine
    )
    engine.dispose()


def test_the_database_named_by_the_url_or_by_schema_is_one_store(server: str, table: str) -> None:
    # An agent given a storage naming the URL's database as schema= took it for another
    # store: its session was carried there whole, as to a store it had never been in.
    database = make_url(server).database
    assert database
    plain = MySQLStorage(table, db_url=server)
    named = MySQLStorage(table, db_url=server, schema=database)
    other = MySQLStorage(table, db_url=server, schema=f"{database}_other")
    assert plain.store_names() == named.store_names()
    assert other.store_names() != plain.store_names()
    for storage in (plain, named, other):
        storage.close()


def test_a_read_while_the_original_table_of_a_new_database_is_upgraded_is_whole(
    server: str, admin: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # InnoDB starts a read's snapshot at its first read of a table's rows. In a database
    # holding no savegame_migrations yet, looking at the original table's layout reads none:
    # an upgrade committed before the rows were read gave them with their runs moved out,
    # read as the original's, without them.
    database = unique("sg")
    with admin.begin() as conn:
        conn.execute(text(f"CREATE DATABASE {database}"))
    engine = create_engine(make_url(server).set(database=database))
    try:
        runs = [{"run_id": str(i)} for i in range(3)]
        rows = [{"session_id": "s", "user_id": "u", "memory": {"runs": runs}}]
        write_original_table(engine, "sessions", None, rows)
        upgrader = MySQLStorage("sessions", db_engine=engine)
        reader = MySQLStorage("sessions", db_engine=engine)
        assert reader.read("absent") is None
        upgraded = sql_cases.upgrade_mid_read(monkeypatch, upgrader)
        got = reader.read("s")
        assert upgraded
        assert got is not None
        assert got.memory == {"runs": runs}
        reader.close()
        upgrader.close()
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE {database}"))


def test_one_server_spelled_otherwise_is_one_store(server: str, table: str) -> None:
    sql_cases.check_one_server_spelled_otherwise_is_one_store(
        lambda url: MySQLStorage(table, db_url=url), server, 3306, "mariadb"
    )
