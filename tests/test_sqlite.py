"""What only SQLite shows: its file, its locks, the original's tables, and what a save writes."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from operator import methodcaller
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event

import savegame.storage.sqlite as sqlite_module
from savegame import open_storage
from savegame.agent import Agent
from savegame.errors import (
    BackendUnavailableError,
    CorruptSessionError,
    InvalidIdentifierError,
    StorageError,
)
from savegame.models.offline import OfflineModel
from savegame.storage.session.agent import AgentSession
from savegame.storage.session.v2.workflow import WorkflowSession as WorkflowSessionV2
from savegame.storage.sqlite import SqliteStorage, make_engine
from savegame.testing.contract import in_threads
from tests import sql_cases
from tests.erasure import MARK, marked_files, snapshot
from tests.full_disk import FILE_SIZE_LIMIT, full_tmpfs, read_only
from tests.stores import write_original_table
from tests.syscalls import synced, syscalls_of


def _runs(n: int, size: int = 400) -> list[dict[str, Any]]:
    return [
        {"run_id": f"r{i}", "messages": [{"role": "assistant", "content": f"{i} " + "x" * size}]}
        for i in range(n)
    ]


def _legacy_database(path: Path, sessions: int) -> None:
    """A file written the way the original wrote it: runs inline in ``memory``."""
    rows = [
        {
            "session_id": f"old-{i}",
            "user_id": f"user-{i % 3}",
            "team_session_id": None,
            "agent_id": "agent-1",
            "memory": {"runs": _runs(i % 4, 20), "summary": f"s{i}"},
            "agent_data": {"model": "m"},
            "session_data": {"n": i},
            "extra_data": None,
            "created_at": 1_700_000_000 + i,
            "updated_at": 1_700_000_000 + i,
        }
        for i in range(sessions)
    ]
    write_original_table(f"sqlite:///{path}", "legacy", None, rows)


def test_an_upgrade_meeting_unreadable_json_names_the_row_and_changes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "original.db"
    rows = [{"session_id": f"s{i}", "memory": {"runs": [{"i": i}]}} for i in range(3)]
    write_original_table(f"sqlite:///{path}", "legacy", None, rows)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE legacy SET memory = '{\"runs\": [' WHERE session_id = 's1'")
    db.close()
    storage = SqliteStorage("legacy", db_file=str(path))
    with pytest.raises(CorruptSessionError, match=r"'s1'.*'memory'"):
        storage.upgrade_schema()
    got = storage.read("s2")
    assert got is not None
    assert got.memory == {"runs": [{"i": 2}]}
    with pytest.raises(StorageError, match="older layout"):
        storage.upsert(AgentSession(session_id="s3"))
    storage.close()


def test_an_upgrade_keeps_inline_the_runs_of_a_session_holding_nan(tmp_path: Path) -> None:
    # SQLite's JSON columns alone took json.dumps's NaN from the original, which savegame never
    # writes: such a session keeps its runs inline, read as they are, and the others move
    # (an infinity, which every SQL backend's original could hold, is in test_sql_tables).
    path = tmp_path / "original.db"
    rows = [
        {"session_id": "nan", "memory": {"runs": [{"metrics": {"ratio": math.nan}}]}},
        {"session_id": "plain", "memory": {"runs": [{"i": 2}]}},
    ]
    write_original_table(f"sqlite:///{path}", "legacy", None, rows)
    storage = SqliteStorage("legacy", db_file=str(path))
    before = {s.session_id: repr(s.memory) for s in storage.get_all_sessions()}
    storage.upgrade_schema()
    again = SqliteStorage("legacy", db_file=str(path))
    assert {s.session_id: repr(s.memory) for s in again.get_all_sessions()} == before
    with sqlite3.connect(path) as db:
        moved = db.execute("SELECT session_id FROM legacy_runs").fetchall()
    db.close()
    assert moved == [("plain",)]
    session = again.read("nan")
    assert session is not None
    session.memory = {"runs": [{"metrics": {"ratio": 0.5}}, {"i": 3}]}
    again.upsert(session)
    third = SqliteStorage("legacy", db_file=str(path))
    got = third.read("nan")
    assert got is not None
    assert got.memory == {"runs": [{"metrics": {"ratio": 0.5}}, {"i": 3}]}
    for each in (storage, again, third):
        each.close()


def test_the_original_table_is_read_then_upgraded_and_written(tmp_path: Path) -> None:
    path = tmp_path / "original.db"
    _legacy_database(path, 30)
    storage = SqliteStorage("legacy", db_file=path)
    got = storage.read("old-5")
    assert got is not None
    assert got.memory == {"runs": _runs(1, 20), "summary": "s5"}
    assert got.version == 1
    assert storage.get_all_session_ids(user_id="user-2")[:2] == ["old-29", "old-26"]
    with pytest.raises(StorageError, match="upgrade_schema"):
        storage.upsert(AgentSession(session_id="new"))

    storage.upgrade_schema()
    storage.upgrade_schema()
    assert len(storage.get_all_session_ids()) == 30
    for i in range(30):
        session = storage.read(f"old-{i}")
        assert session is not None
        assert session.memory == {"runs": _runs(i % 4, 20), "summary": f"s{i}"}
        assert session.session_data == {"n": i}
        assert session.created_at == 1_700_000_000 + i
    db = sqlite3.connect(path)
    inline = db.execute("SELECT count(*) FROM legacy WHERE memory LIKE '%\"runs\":[%'").fetchone()
    moved = db.execute("SELECT count(*) FROM legacy_runs").fetchone()
    assert inline == (0,)
    assert moved == (sum(i % 4 for i in range(30)),)
    db.close()

    session = storage.read("old-7")
    assert session is not None
    session.memory["runs"].append({"run_id": "next"})  # type: ignore[index]
    stored = storage.upsert(session, expected_version=1)
    assert stored.version == 2
    again = SqliteStorage("legacy", db_file=path).read("old-7")
    assert again is not None
    assert again.memory["runs"][-1] == {"run_id": "next"}  # type: ignore[index]


def test_numbers_in_the_original_json_columns_are_read_and_written_exactly(
    tmp_path: Path,
) -> None:
    # The original's JSON columns have NUMERIC affinity: SQLite keeps the text of a JSON
    # number as an INTEGER or REAL, which read as the number it became, not as JSON text.
    path = tmp_path / "original.db"
    rows = [
        {"session_id": "whole", "memory": 5, "extra_data": None},
        {"session_id": "real", "memory": {"runs": [{"i": 1}]}, "extra_data": 1.5},
    ]
    write_original_table(f"sqlite:///{path}", "legacy", None, rows)
    storage = SqliteStorage("legacy", db_file=path)
    whole = storage.read("whole")
    assert whole is not None
    assert whole.memory == 5
    assert len(storage.get_all_sessions()) == 2
    storage.upgrade_schema()
    real = storage.read("real")
    assert real is not None
    assert (real.memory, real.extra_data) == ({"runs": [{"i": 1}]}, 1.5)
    for value in (7, 1.0, -0.0, 10**20, 2.5e-300):
        storage.upsert(AgentSession(session_id="whole", session_data=value))  # type: ignore[arg-type]
        got = SqliteStorage("legacy", db_file=path).read("whole")
        assert got is not None
        assert repr(got.session_data) == repr(value)
    storage.close()


def test_auto_upgrade_schema_upgrades_on_first_write(tmp_path: Path) -> None:
    path = tmp_path / "original.db"
    _legacy_database(path, 3)
    storage = SqliteStorage("legacy", db_file=path, auto_upgrade_schema=True)
    storage.upsert(AgentSession(session_id="new", user_id="user-0"))
    assert sorted(storage.get_all_session_ids(user_id="user-0")) == ["new", "old-0"]


def _wal_growth(tmp_path: Path, turns: int, turn: Callable[[SqliteStorage, int], Any]) -> Any:
    """Bytes each of ``turns`` calls of ``turn(storage, n)`` added to the database's WAL."""
    engine = make_engine(f"sqlite:///{tmp_path / 'growth.db'}")

    @event.listens_for(engine, "connect")
    def keep_every_frame(dbapi_connection: Any, record: Any) -> None:
        # Without checkpoints the WAL only grows, so its growth is what each save wrote.
        dbapi_connection.execute("PRAGMA wal_autocheckpoint = 0")

    storage = SqliteStorage("growth", db_engine=engine, synchronous="NORMAL")
    storage.create()
    wal = tmp_path / "growth.db-wal"
    written: dict[int, int] = {}
    for n in range(1, turns + 1):
        before = wal.stat().st_size if wal.exists() else 0
        turn(storage, n)
        written[n] = wal.stat().st_size - before
    got = storage.read("long")
    engine.dispose()
    return written, got


def test_a_save_writes_what_changed_not_the_whole_conversation(tmp_path: Path) -> None:
    session = AgentSession(session_id="long", user_id="u", memory={"runs": []})

    def turn(storage: SqliteStorage, n: int) -> None:
        nonlocal session
        session.memory["runs"].append(_runs(1)[0] | {"run_id": f"r{n}"})  # type: ignore[index]
        session = storage.upsert(session)  # type: ignore[assignment]

    written, got = _wal_growth(tmp_path, 1000, turn)
    early = sum(written[t] for t in range(10, 20)) / 10
    late = sum(written[t] for t in range(991, 1001)) / 10
    assert late <= 3 * early, (early, late)
    assert len(got.memory["runs"]) == 1000


def test_an_agents_save_writes_its_new_run_not_the_whole_conversation(tmp_path: Path) -> None:
    agents: dict[str, Agent] = {}

    def turn(storage: SqliteStorage, n: int) -> None:
        agent = agents.setdefault(
            "a", Agent(model=OfflineModel(), storage=storage, session_id="long")
        )
        agent.run(f"Turn {n}: " + "a question long enough to weigh something. " * 10)

    written, got = _wal_growth(tmp_path, 300, turn)
    early = sum(written[t] for t in range(10, 20)) / 10
    late = sum(written[t] for t in range(291, 301)) / 10
    assert late <= 3 * early, (early, late)
    assert len(got.memory["runs"]) == 300


def test_a_write_that_waited_for_another_process_lives_from_its_write(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    def hold() -> Callable[[], None]:
        # A writer of another process (SQLite's locks are the file's) holds the write lock.
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_THE_WRITE_LOCK, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"

        def release() -> None:
            assert holder.stdin is not None
            holder.stdin.close()
            assert holder.wait(timeout=60) == 0

        return release

    sql_cases.check_a_write_that_waited_for_a_lock_lives_from_its_write(
        lambda **options: SqliteStorage("t", db_file=path, **options), hold
    )


_HOLD_THE_WRITE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


def test_a_lock_held_past_the_timeout_raises_and_reads_go_on(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    storage = SqliteStorage("t", db_file=path, busy_timeout=0.3)
    storage.upsert(AgentSession(session_id="a"))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(BackendUnavailableError, match="locked"):
            storage.upsert(AgentSession(session_id="b"))
        assert storage.read("a") is not None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    storage.upsert(AgentSession(session_id="b"))
    assert sorted(storage.get_all_session_ids()) == ["a", "b"]


def test_connections_opening_a_new_file_together_all_switch_it_to_wal(tmp_path: Path) -> None:
    # Two connections switching at once both hold a read lock and want the file to
    # themselves; SQLite refuses one at once, without waiting, and savegame must retry.
    dialect = SqliteStorage("t", db_file=tmp_path / "first.db").dialect
    for attempt in range(20):
        path = tmp_path / f"new-{attempt}.db"
        together = threading.Barrier(6)

        def connect(_: int, path: Path = path, together: threading.Barrier = together) -> None:
            conn = sqlite3.connect(path, isolation_level=None)
            try:
                together.wait(timeout=30)
                dialect.configure(conn)
                assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            finally:
                conn.close()

        in_threads(6, connect)


def test_a_reader_that_outstays_the_timeout_fails_the_switch_to_wal(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("CREATE TABLE other (x)")
    reader.execute("BEGIN")
    reader.execute("SELECT * FROM other").fetchall()
    try:
        storage = SqliteStorage("t", db_file=path, busy_timeout=0.2)
        with pytest.raises(BackendUnavailableError, match="locked"):
            storage.upsert(AgentSession(session_id="a"))
    finally:
        reader.close()
    storage.upsert(AgentSession(session_id="a"))
    assert storage.get_all_session_ids() == ["a"]


def test_reads_of_a_file_that_is_not_there_leave_it_so(tmp_path: Path) -> None:
    path = tmp_path / "deeper" / "s.db"
    for storage in (
        SqliteStorage("t", db_file=path),
        SqliteStorage("t", db_url=f"sqlite:///{path}"),
        open_storage(f"sqlite:///{path}"),
    ):
        assert storage.read("a") is None
        assert storage.get_all_sessions(user_id="u") == []
        assert storage.get_all_session_ids() == []
        assert not storage.table_exists()
        assert not storage.delete_session("a")
        assert storage.purge_expired() == 0
        storage.drop()
        storage.close()
    assert list(tmp_path.iterdir()) == []
    storage = SqliteStorage("t", db_file=path)
    storage.upsert(AgentSession(session_id="a"))
    assert storage.get_all_session_ids() == ["a"]
    assert path.exists()


def test_a_database_in_a_folder_that_cannot_be_written_to_names_the_folder(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "shelf"
    with SqliteStorage("t", db_file=folder / "s.db") as storage:
        storage.upsert(AgentSession(session_id="a"))
    with read_only(folder), SqliteStorage("t", db_file=folder / "s.db") as storage:
        with pytest.raises(BackendUnavailableError, match="cannot be written to") as raised:
            storage.read("a")
        assert repr(str(folder)) in str(raised.value)
        assert "s.db-wal" in str(raised.value)
    with SqliteStorage("t", db_file=folder / "s.db") as storage:
        assert storage.read("a") is not None


def test_a_folder_given_as_the_database_file_is_said_to_be_one(tmp_path: Path) -> None:
    """SQLite says only "unable to open database file" of a folder, as of a file it may not
    read."""
    with (
        SqliteStorage("t", db_file=tmp_path) as storage,
        pytest.raises(BackendUnavailableError) as raised,
    ):
        storage.read("a")
    assert f"{str(tmp_path)!r} is a folder, not a database file" in str(raised.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_a_schema_version_is_accepted_whatever_its_value_and_changes_nothing(
    tmp_path: Path, version: object
) -> None:
    # The original raised for anything but 1; the README says savegame ignores it.
    path = tmp_path / "s.db"
    with SqliteStorage("t", db_file=path, schema_version=version) as storage:  # type: ignore[arg-type]
        assert storage.schema_version == version
        storage.upsert(AgentSession(session_id="a", memory={"runs": [{"content": "x"}]}))
    with sqlite3.connect(path) as conn:
        tables = sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master"))
    with SqliteStorage("t", db_file=tmp_path / "plain.db") as plain:
        plain.upsert(AgentSession(session_id="a"))
    with sqlite3.connect(tmp_path / "plain.db") as conn:
        assert tables == sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master"))
    with SqliteStorage("t", db_file=path) as storage:
        assert storage.read("a").memory == {"runs": [{"content": "x"}]}  # type: ignore[union-attr]


def test_file_settings(tmp_path: Path) -> None:
    storage = SqliteStorage("t", db_file=tmp_path / "deeper" / "s.db", synchronous="normal")
    storage.create()
    with storage.db_engine.connect() as conn:
        raw: Any = conn.connection.dbapi_connection
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert raw.execute("PRAGMA synchronous").fetchone() == (1,)
        assert raw.execute("PRAGMA busy_timeout").fetchone() == (30000,)
    with pytest.raises(InvalidIdentifierError, match="synchronous"):
        SqliteStorage("t", synchronous="OFF")


@pytest.mark.parametrize(
    "name", ["bad name", "x;drop table y", 'q"uote', "o'k", "", "1abc", "a" * 59]
)
def test_table_names_are_checked(name: str) -> None:
    with pytest.raises(InvalidIdentifierError):
        SqliteStorage(name)


def test_a_table_name_too_long_is_refused_saying_how_long_one_may_be() -> None:
    # The pattern alone, {0,57}, left the reader to count.
    with pytest.raises(InvalidIdentifierError, match=r"at most 58 characters .*adds _runs"):
        SqliteStorage("a" * 59)


def test_drop_removes_only_this_storages_tables(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE other (x)")
    db.close()
    mine = SqliteStorage("sessions", db_file=path)
    theirs = SqliteStorage("sessions_sub", db_file=path)
    mine.upsert(AgentSession(session_id="a", memory={"runs": [{"r": 1}]}))
    theirs.upsert(AgentSession(session_id="b", memory={"runs": [{"r": 2}]}))
    mine.drop()
    assert not mine.table_exists()
    assert theirs.read("b") is not None
    db = sqlite3.connect(path)
    names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    assert names == {"other", "sessions_sub", "sessions_sub_runs", "savegame_migrations"}


def test_in_memory_database_is_shared_through_its_engine() -> None:
    first = SqliteStorage("t", mode="workflow_v2")
    first.upsert(WorkflowSessionV2(session_id="w", runs=[{"step": 1}]))
    second = SqliteStorage("t", db_engine=first.db_engine, mode="workflow_v2")
    got = second.read("w")
    assert got is not None
    assert got.runs == [{"step": 1}]
    assert SqliteStorage("t", mode="workflow_v2").read("w") is None


def test_in_memory_database_serves_threads() -> None:
    storage = SqliteStorage("t")

    def work(n: int) -> None:
        for i in range(50):
            storage.upsert(AgentSession(session_id=f"{n}-{i}", memory={"runs": [i]}))

    in_threads(4, work)
    assert len(storage.get_all_session_ids()) == 200


def test_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_storage("sqlite:///rel.db", mode="team")
    assert isinstance(relative, SqliteStorage)
    assert relative.table_name == "team_sessions"
    relative.create()
    assert (tmp_path / "rel.db").exists()
    absolute = open_storage(f"sqlite:///{tmp_path / 'abs.db'}?table=mine&expire=60")
    assert isinstance(absolute, SqliteStorage)
    assert (absolute.table_name, absolute.expire) == ("mine", 60)
    assert absolute.db_file == tmp_path / "abs.db"
    memory = open_storage("sqlite://")
    memory.upsert(AgentSession(session_id="m"))
    assert memory.read("m") is not None


def test_storages_sharing_a_file_keep_their_own_durability(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    full = SqliteStorage("a", db_file=path)
    normal = SqliteStorage("b", db_file=path, synchronous="NORMAL")
    assert full.db_engine is normal.db_engine
    for storage, level in ((full, 2), (normal, 1), (full, 2)):
        storage.upsert(AgentSession(session_id="x"))
        with storage._transaction(False) as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == level


def test_an_in_memory_database_closed_with_its_storage_is_not_taken_for_an_empty_one() -> None:
    storage = SqliteStorage("t")
    storage.upsert(AgentSession(session_id="a"))
    storage.close()
    with pytest.raises(StorageError, match="was closed"):
        storage.read("a")  # was None: a new, empty database had taken the closed one's place


def test_a_closed_storage_of_a_file_never_made_refuses_every_call(tmp_path: Path) -> None:
    path = tmp_path / "never.db"
    storage = SqliteStorage("t", db_file=path)
    storage.close()
    for call in (
        lambda: storage.read("a"),
        storage.get_all_session_ids,
        storage.table_exists,
        storage.drop,
    ):
        with pytest.raises(StorageError, match="was closed"):
            call()  # read was None, and the listing empty: the file was not there to ask
    assert not path.exists()


def test_changing_the_mode_switches_the_columns(tmp_path: Path) -> None:
    storage = SqliteStorage("sessions", db_file=tmp_path / "s.db")
    storage.upsert(AgentSession(session_id="a", agent_id="x"))
    storage.mode = "workflow_v2"
    assert "workflow_name" in storage.table.c
    other = SqliteStorage("flows", db_file=tmp_path / "s.db", mode="agent")
    other.mode = "workflow_v2"
    other.upsert(WorkflowSessionV2(session_id="w", workflow_name="nightly", runs=[{"s": 1}]))
    got = other.read("w")
    assert got is not None
    assert (got.workflow_name, got.runs) == ("nightly", [{"s": 1}])


def _stored_then_set(path: Path, table: str, column: str, text: str) -> None:
    """A session stored by savegame, then ``column`` of its rows in ``table`` set to
    ``text`` behind savegame's back."""
    SqliteStorage("t", db_file=path).upsert(
        AgentSession(session_id="s", memory={"runs": _runs(2, 5), "summary": "s"})
    )
    db = sqlite3.connect(path)
    try:
        with db:
            db.execute(f"UPDATE {table} SET {column} = ? WHERE session_id = 's'", (text,))
    finally:
        db.close()


@pytest.mark.parametrize(
    ("column", "table", "text"),
    [
        ("memory", "t", '{"summary": "s"} trailing'),
        ("memory", "t", "{not json"),
        ("run", "t_runs", '{"run_id": "r0"}]'),
        ("run", "t_runs", ""),
    ],
)
def test_damaged_json_raises_instead_of_reading_wrong(
    tmp_path: Path, column: str, table: str, text: str
) -> None:
    _stored_then_set(tmp_path / "s.db", table, column, text)
    with pytest.raises(CorruptSessionError, match=r"session 's'.* cannot be read"):
        SqliteStorage("t", db_file=tmp_path / "s.db").read("s")


def test_json_written_by_another_tool_with_spaces_around_it_reads(tmp_path: Path) -> None:
    _stored_then_set(tmp_path / "s.db", "t", "session_data", '\n {"a": 1}\n')
    session = SqliteStorage("t", db_file=tmp_path / "s.db").read("s")
    assert session is not None
    assert session.session_data == {"a": 1}


def test_a_name_that_differs_only_in_case_from_another_tables_is_refused(tmp_path: Path) -> None:
    # SQLite takes "Chat" and "chat" for one table: a storage named "Chat" would list, and
    # drop, the sessions of the storage named "chat".
    path = tmp_path / "case.db"
    first = SqliteStorage("chat", db_file=str(path))
    first.upsert(AgentSession(session_id="s", user_id="u"))
    other = SqliteStorage("Chat", db_file=str(path))
    for call in (
        lambda: other.read("s"),
        other.get_all_session_ids,
        lambda: other.upsert(AgentSession(session_id="t")),
        other.drop,
        other.upgrade_schema,
    ):
        with pytest.raises(InvalidIdentifierError, match="'Chat' is the table 'chat'"):
            call()
    assert SqliteStorage("chat", db_file=str(path)).get_all_session_ids() == ["s"]


def test_a_write_never_goes_to_a_database_file_removed_under_a_running_storage(
    tmp_path: Path,
) -> None:
    # SQLite goes on reading and writing a file that was unlinked: writes were acknowledged
    # that no other storage or process would ever see.
    path = tmp_path / "x.db"
    storage = SqliteStorage("t", db_file=path)
    storage.upsert(AgentSession(session_id="gone", user_id="u"))
    for name in ("x.db", "x.db-wal", "x.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    storage.upsert(AgentSession(session_id="new", user_id="u"))
    assert path.exists()
    assert storage.read("gone") is None
    assert storage.get_all_session_ids() == ["new"]
    assert [s.session_id for s in storage.get_all_sessions(user_id="u")] == ["new"]
    assert SqliteStorage("t", db_file=path, cache_bytes=0).get_all_session_ids() == ["new"]


@pytest.mark.parametrize("replaced", [False, True], ids=["removed", "replaced"])
def test_reads_see_a_database_file_removed_or_replaced_within_a_tenth_of_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replaced: bool
) -> None:
    # Reads look at the file at most every _LOOK_EVERY seconds; set to 0, every read looks.
    monkeypatch.setattr(sqlite_module, "_LOOK_EVERY", 0.0)
    path, other = tmp_path / "x.db", tmp_path / "other.db"
    storage = SqliteStorage("t", db_file=path)
    storage.upsert(AgentSession(session_id="old"))
    with SqliteStorage("t", db_file=other) as elsewhere:
        elsewhere.upsert(AgentSession(session_id="moved in"))
    for name in ("x.db", "x.db-wal", "x.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    if replaced:
        other.replace(path)
    assert storage.read("old") is None
    assert storage.get_all_session_ids() == (["moved in"] if replaced else [])
    assert path.exists() == replaced  # a read makes no file
    storage.upsert(AgentSession(session_id="after"))
    expected = ["after", "moved in"] if replaced else ["after"]
    assert SqliteStorage("t", db_file=path).get_all_session_ids() == expected


@pytest.mark.parametrize(
    "call",
    [
        methodcaller("delete_session", "old"),
        methodcaller("delete_session", "old", expected_version=1),
        methodcaller("delete_user", "u"),
        methodcaller("purge_expired"),
        methodcaller("drop"),
    ],
    ids=["delete_session", "delete_session_at_a_version", "delete_user", "purge_expired", "drop"],
)
def test_a_removal_first_after_the_database_file_was_removed_makes_no_file(
    tmp_path: Path, call: Callable[[SqliteStorage], Any]
) -> None:
    # Run as on a storage just opened, which finds nothing in a file not there and leaves
    # it so: delete_session and purge_expired made an empty database file there.
    path = tmp_path / "x.db"
    storage = SqliteStorage("t", db_file=path, expire=3600)
    storage.upsert(AgentSession(session_id="old", user_id="u"))
    assert storage.read("old") is not None
    for name in ("x.db", "x.db-wal", "x.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    assert call(storage) in (False, 0, None)
    assert list(tmp_path.iterdir()) == []
    storage.close()


@pytest.mark.parametrize("call", ["create", "upgrade_schema", "table_exists", "drop"])
def test_schema_calls_see_a_database_file_replaced_under_a_pooled_connection(
    tmp_path: Path, call: str
) -> None:
    path = tmp_path / "x.db"
    with SqliteStorage("t", db_file=path) as first:
        first.upsert(AgentSession(session_id="old"))
        kept = SqliteStorage("t", db_file=path)  # its engine keeps a connection to the file
        assert kept.read("old") is not None
    path.unlink()
    write_original_table(f"sqlite:///{path}", "legacy", None, [{"session_id": "a"}])
    with SqliteStorage("legacy", db_file=path) as storage:
        getattr(storage, call)()
        assert storage.table_exists() == (call != "drop")
    kept.close()


_FULL_DISK_CHECKS = """
import sys
from savegame.errors import BackendUnavailableError
from savegame.storage.session.agent import AgentSession
from savegame.storage.sqlite import SqliteStorage

storage = SqliteStorage("t", db_file=sys.argv[1])
storage.upsert(AgentSession(session_id="keep", user_id="u", memory={"runs": [{"n": 0}]}))
full()
for session in (
    AgentSession(session_id="new", user_id="u", memory={"runs": [{"n": 1}]}),
    AgentSession(session_id="keep", user_id="u", memory={"runs": [{"n": 0}, {"n": 1}]}),
):
    try:
        storage.upsert(session)
    except BackendUnavailableError as exc:
        assert "full" in str(exc) or "I/O" in str(exc), exc
    else:
        raise AssertionError("a write to a full disk returned")
assert storage.read("keep").memory == {"runs": [{"n": 0}]}
assert storage.read("new") is None
assert storage.get_all_session_ids() == ["keep"]
free()
storage.upsert(AgentSession(session_id="new", user_id="u"))
assert sorted(SqliteStorage("t", db_file=sys.argv[1]).get_all_session_ids()) == ["keep", "new"]
print("checked")
"""


def _check_full_disk(prologue: str, path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", prologue + _FULL_DISK_CHECKS, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip() == "checked", done.stdout + done.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_FSIZE")
def test_a_write_to_a_full_disk_raises_backend_unavailable_and_changes_nothing(
    tmp_path: Path,
) -> None:
    # A file-size limit of one byte fails every write past the first byte (EFBIG, which
    # SQLite reports as an I/O error). The failed commit was taken for one whose reply a
    # server never sent: written again five times, it ended in a plain StorageError saying
    # the database could not be reached to learn the outcome.
    _check_full_disk(FILE_SIZE_LIMIT, tmp_path / "full.db")


def test_a_write_to_a_full_tmpfs_raises_backend_unavailable_and_changes_nothing(
    tmp_path: Path,
) -> None:
    # The same on a file system filled to its last byte (SQLITE_FULL); needs the right to
    # mount one.
    with full_tmpfs(tmp_path) as (disk, prologue):
        _check_full_disk(prologue, disk / "full.db")


def test_listings_by_user_or_agent_search_an_index(tmp_path: Path) -> None:
    storage = SqliteStorage("chats", db_file=tmp_path / "s.db")
    for i in range(40):
        storage.upsert(AgentSession(session_id=f"s{i}", user_id=f"u{i % 4}", agent_id=f"a{i % 5}"))
    statements: list[str] = []
    storage.db_engine.dispose()
    event.listen(
        storage.db_engine, "connect", lambda conn, _: conn.set_trace_callback(statements.append)
    )
    storage.get_all_session_ids(user_id="u1")
    storage.get_recent_sessions(entity_id="a2")
    listings = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert listings
    raw = sqlite3.connect(tmp_path / "s.db")
    try:
        for statement in listings:
            plan = " ".join(row[-1] for row in raw.execute(f"EXPLAIN QUERY PLAN {statement}"))
            assert "USING INDEX" in plan or "USING PRIMARY KEY" in plan, (statement, plan)
            assert "SCAN chats " not in f"{plan} ", (statement, plan)
    finally:
        raw.close()


def test_erasing_a_user_of_many_sessions_takes_a_few_statements_a_batch(tmp_path: Path) -> None:
    # One transaction of four statements a session made erasing 510 sessions cost over
    # 2,000 statements and 510 commits; in batches of 500 it takes about a dozen.
    storage = SqliteStorage("chats", db_file=tmp_path / "s.db", synchronous="NORMAL")
    for i in range(515):
        storage.upsert(
            AgentSession(session_id=f"s{i:03}", user_id="u" if i < 510 else "other", memory={})
        )
    listed = storage.get_all_session_ids(user_id="u")
    statements: list[str] = []
    storage.db_engine.dispose()
    event.listen(
        storage.db_engine, "connect", lambda conn, _: conn.set_trace_callback(statements.append)
    )
    removed: list[str] = []
    assert storage.delete_user("u", removed) == 510
    assert removed == listed
    assert len(statements) < 60, statements[:20]
    assert sorted(storage.get_all_session_ids()) == ["s510", "s511", "s512", "s513", "s514"]
    storage.close()


@pytest.mark.parametrize(("synchronous", "durable"), [(None, True), ("NORMAL", False)])
def test_a_returned_write_was_synced_to_the_log_unless_synchronous_is_normal(
    tmp_path: Path, synchronous: str | None, durable: bool
) -> None:
    db = (tmp_path / "s.db").resolve()
    level = "" if synchronous is None else f", synchronous={synchronous!r}"
    setup = (
        "from savegame.storage.sqlite import SqliteStorage\n"
        "from savegame.storage.session.agent import AgentSession\n"
        f"storage = SqliteStorage('t', db_file={str(db)!r}{level})\n"
        "storage.upsert(AgentSession(session_id='first'))"
    )
    calls = syscalls_of(setup, "storage.upsert(AgentSession(session_id='abc'))", tmp_path)
    assert bool(synced(calls, f"{db}-wal")) is durable, calls


def test_the_folders_a_new_database_file_needs_are_synced_into_theirs(tmp_path: Path) -> None:
    # SQLite syncs the folder of the files it makes, never the folders above: the entries of
    # the folders savegame makes for it must be synced too, or a crash of the machine could
    # lose the database, with a write that returned, along with its folder.
    base = tmp_path.resolve()
    db = base / "a" / "b" / "s.db"
    setup = (
        "from savegame.storage.sqlite import SqliteStorage\n"
        "from savegame.storage.session.agent import AgentSession\n"
        f"storage = SqliteStorage('t', db_file={str(db)!r})"
    )
    calls = syscalls_of(setup, "storage.upsert(AgentSession(session_id='abc'))", tmp_path)
    for made in (base / "a", db.parent):
        assert synced(calls, made.parent), (made, calls)
    assert synced(calls, db.parent), calls


def _save_marked(storage: Any, times: int = 4, sessions: int = 3) -> None:
    """Saves ``sessions`` sessions of user ``MARK`` ``times`` each, the mark in every field
    that holds text (ids, memory and its runs, session data), beside one of another user."""
    storage.upsert(AgentSession(session_id="kept", user_id="someone", memory={"runs": _runs(2)}))
    for turn in range(times):
        for i in range(sessions):
            runs = [{"run_id": f"{MARK}-{k}", "content": f"{MARK} " * 300} for k in range(turn + 1)]
            storage.upsert(
                AgentSession(
                    session_id=f"{MARK}-{i}",
                    user_id=MARK,
                    agent_id=f"agent-{MARK}",
                    memory={"runs": runs, "summary": f"{MARK} said {turn}"},
                    session_data={"note": f"{MARK} " * (50 * (turn + 1))},
                )
            )


def test_an_erased_user_leaves_no_copy_in_the_database_file_or_its_log(tmp_path: Path) -> None:
    storage = SqliteStorage("sessions", db_file=tmp_path / "app.db")
    _save_marked(storage)
    assert storage.delete_user(MARK) == 3
    # While the storage is open, then once it is closed.
    assert marked_files(tmp_path) == []
    storage.close()
    assert marked_files(tmp_path) == []
    again = SqliteStorage("sessions", db_file=tmp_path / "app.db")
    assert again.read("kept") is not None
    assert again.get_all_session_ids() == ["kept"]
    again.close()


@pytest.mark.parametrize("erase", ["delete_session", "purge_expired", "drop"])
def test_every_erasure_leaves_no_copy_in_the_database_file_or_its_log(
    tmp_path: Path, erase: str
) -> None:
    storage = SqliteStorage("sessions", db_file=tmp_path / "app.db", expire=1)
    _save_marked(storage, sessions=1)
    if erase == "delete_session":
        assert storage.delete_session(f"{MARK}-0")
        assert storage.delete_session("kept")
    elif erase == "purge_expired":
        time.sleep(2.1)
        assert storage.purge_expired() == 2
    else:
        storage.drop()
    assert marked_files(tmp_path) == []
    storage.close()


def _erased_beside_a_reader(path: Path) -> tuple[SqliteStorage, sqlite3.Connection]:
    """A storage of the database at ``path`` that saved the marked sessions and erased
    their user while another program's reader held a snapshot; the storage and the reader."""
    storage = SqliteStorage("sessions", db_file=path)
    _save_marked(storage)
    reader = snapshot(path)
    assert storage.delete_user(MARK) == 3
    return storage, reader


def test_an_erasure_that_a_reader_keeps_from_clearing_the_log_is_cleared_later(
    tmp_path: Path,
) -> None:
    path = tmp_path / "app.db"
    # The reader's snapshot holds the log's older pages: the erasure returns all the same.
    storage, reader = _erased_beside_a_reader(path)
    assert storage.read(f"{MARK}-0") is None
    assert marked_files(tmp_path) != []
    reader.execute("COMMIT")
    storage.close()
    assert marked_files(tmp_path) == []
    reader.close()
    storage, reader = _erased_beside_a_reader(path)
    reader.execute("COMMIT")
    # The next erasure clears the log, even one that removes nothing.
    assert storage.delete_user("nobody") == 0
    assert marked_files(tmp_path) == []
    reader.close()
    storage.close()


def test_an_erasure_zeroes_what_it_frees_whatever_sqlites_default(tmp_path: Path) -> None:
    # SQLite's default for secure_delete is a build option (on in some, off in most):
    # here an engine of the application sets it off on every connection.
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    event.listen(engine, "connect", lambda raw, _: raw.execute("PRAGMA secure_delete = OFF"))
    storage = SqliteStorage("sessions", db_engine=engine)
    _save_marked(storage)
    assert storage.delete_user(MARK) == 3
    assert marked_files(tmp_path) == []
    with engine.connect() as conn:
        raw: Any = conn.connection.dbapi_connection
        assert raw.execute("PRAGMA secure_delete").fetchone() == (1,)
    storage.close()
    engine.dispose()


def test_closing_after_an_erasure_whose_file_was_removed_neither_raises_nor_makes_it(
    tmp_path: Path,
) -> None:
    storage, reader = _erased_beside_a_reader(tmp_path / "app.db")
    reader.close()
    for name in ("app.db", "app.db-wal", "app.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    time.sleep(0.2)  # past the time a read goes on without looking for the file
    storage.close()
    assert list(tmp_path.iterdir()) == []
