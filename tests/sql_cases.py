"""Checks that PostgreSQL and MySQL share: a closed port, killed connections, the original's tables.

Each takes the storage and a way to reach the server as an administrator; the test modules
provide the SQL that differs.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import URL, Engine, create_engine, event, make_url, text
from sqlalchemy.pool import NullPool

from savegame.agent import Agent
from savegame.errors import BackendUnavailableError, CorruptSessionError, StorageError
from savegame.models.offline import OfflineModel
from savegame.storage.session import Session
from savegame.storage.session.agent import AgentSession
from savegame.storage.sql import SqlStorage
from savegame.testing import Store
from savegame.testing.contract import _lost_alone, in_threads
from tests.stores import unique, write_original_table


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def check_closed_port(make: Callable[[str], SqlStorage], url_template: str) -> None:
    """First use of a storage on a closed port raises naming the address, and nothing hangs."""
    port = closed_port()
    storage = make(url_template.format(port=port))
    with pytest.raises(BackendUnavailableError, match=f"127.0.0.1:{port}"):
        storage.read("anything")
    with pytest.raises(BackendUnavailableError, match=f"127.0.0.1:{port}"):
        storage.upsert(AgentSession(session_id="s"))
    storage.close()


def check_a_server_that_never_answers(make: Callable[[str], SqlStorage], url_template: str) -> None:
    """A listener that takes the connection and never speaks (another service's port, a
    server hung) fails the first use within the connect timeout (``make`` gives one of a
    second), naming the address, rather than holding the call for ever."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        storage = make(url_template.format(port=port))
        raised: list[BaseException] = []

        def first_use() -> None:
            try:
                storage.read("anything")
            except BaseException as exc:
                raised.append(exc)

        reader = threading.Thread(target=first_use, daemon=True)
        reader.start()
        reader.join(timeout=120)
        assert not reader.is_alive(), "the first use of a server that never answers hung"
        [error] = raised
        assert isinstance(error, BackendUnavailableError), repr(error)
        assert f"127.0.0.1:{port}" in str(error)
        storage.close()


def check_refused_login(make: Callable[[str], SqlStorage], server: str) -> None:
    """A user or a database the server refuses at login raises a plain StorageError, as
    Redis's refused credentials do: no later try would fare better, where
    BackendUnavailableError says to wait and try again. The password is not shown."""
    url = make_url(server)
    for refused in (
        url.set(username=unique("nosuch"), password="hunter2"),
        url.set(database=unique("nosuch")),
    ):
        storage = make(refused.render_as_string(hide_password=False))
        with pytest.raises(StorageError) as info:
            storage.read("s")
        assert not isinstance(info.value, BackendUnavailableError)
        assert "nosuch" in str(info.value)
        assert "hunter2" not in str(info.value)
        storage.close()


def _runs(tag: str, n: int) -> list[dict[str, Any]]:
    return [{"run_id": f"{tag}{i}", "content": f"{tag} turn {i}"} for i in range(n)]


def check_killed_connections(
    storage: SqlStorage,
    admin: Engine,
    lock_run: str,
    blocked: str,
    kill: str,
    own_id: str,
) -> None:
    """Connections killed between operations and in the middle of a write.

    Args:
        storage: a fresh storage.
        admin: an engine on the same database, for locking and killing.
        lock_run: SQL that locks run 0 of session ``s`` (parameter ``:table``-free; the
            runs table is formatted in as ``{runs}``).
        blocked: SQL giving the connection ids whose statement waits on ``{runs}``.
        kill: SQL killing connection ``:id``.
        own_id: SQL giving the id of the connection that runs it.
    """
    runs_table = storage.runs_table.name
    storage.upsert(AgentSession(session_id="s", user_id="u", memory={"runs": _runs("old", 2)}))

    with storage.db_engine.connect() as conn:
        idle = conn.execute(text(own_id)).scalar()
    with admin.connect() as conn:
        conn.execute(text(kill), {"id": idle})
    assert storage.read("s") is not None, "the pool hands out a dead connection"

    # Every pooled connection killed, as by a restart of the server: a storage opened
    # afterwards on the same pool, whose first call reads the table's layout through
    # SQLAlchemy, works at once. The pool holds connections savegame has set up, or
    # connections it has not (taken by the application from the engine it shares).
    engine = storage.db_engine
    pooled: list[Any] = []

    def note_id(dbapi_connection: Any, record: Any) -> None:
        with contextlib.closing(dbapi_connection.cursor()) as cursor:
            cursor.execute(own_id.replace(":", ""))
            pooled.append(cursor.fetchone()[0])
        dbapi_connection.rollback()

    for set_up in (True, False):
        engine.dispose()
        pooled.clear()
        event.listen(engine, "connect", note_id)
        if set_up:
            for _ in range(2):
                used = type(storage)(storage.table_name, schema=storage.schema, db_engine=engine)
                used.read("s")
                used.get_all_sessions()
                used.close()
        else:
            with engine.connect(), engine.connect():
                pass
        event.remove(engine, "connect", note_id)
        assert pooled
        with admin.connect() as conn:
            for each in pooled:
                conn.execute(text(kill), {"id": each})
        for _ in range(3):
            fresh = type(storage)(storage.table_name, schema=storage.schema, db_engine=engine)
            assert fresh.read("s") is not None, set_up
            assert fresh.get_all_session_ids(user_id="u") == ["s"]

    outcome: dict[str, Any] = {}

    def write() -> None:
        try:
            new = AgentSession(session_id="s", user_id="u", memory={"runs": _runs("new", 3)})
            outcome["stored"] = storage.upsert(new)
        except StorageError as exc:
            outcome["error"] = exc

    with admin.connect() as locker:
        transaction = locker.begin()
        locker.execute(text(lock_run.format(runs=runs_table)))
        writer = threading.Thread(target=write)
        writer.start()
        waiting: list[Any] = []
        for _ in range(400):
            with admin.connect() as conn:
                waiting = list(conn.execute(text(blocked.format(runs=runs_table))).scalars())
            if waiting:
                break
            time.sleep(0.025)
        assert len(waiting) == 1, "the write never waited on the locked run"
        with admin.connect() as conn:
            conn.execute(text(kill), {"id": waiting[0]})
        transaction.rollback()
    writer.join(60)
    assert not writer.is_alive()

    got = storage.read("s")
    assert got is not None
    if "error" in outcome:
        assert isinstance(outcome["error"], BackendUnavailableError), outcome["error"]
        assert (got.version, got.memory) == (1, {"runs": _runs("old", 2)})
    else:
        assert (got.version, got.memory) == (2, {"runs": _runs("new", 3)})
    again = storage.upsert(AgentSession(session_id="s", memory={"runs": _runs("next", 1)}))
    assert storage.read("s") == again


def check_original_table(storage: SqlStorage, admin: Engine, server: str) -> None:
    """A table made as the original made it is read, upgraded without losing a row, written."""
    rows = [
        {
            "session_id": f"old-{i}",
            "user_id": f"user-{i % 3}",
            "team_session_id": None,
            "agent_id": "agent-1",
            "memory": {"runs": _runs("old", i % 4), "summary": f"s{i}"},
            "agent_data": None,
            "session_data": {"n": i, "nul": "plain"},
            "extra_data": None,
            "created_at": 1_700_000_000 + i,
            "updated_at": 1_700_000_000 + i,
        }
        for i in range(12)
    ]
    write_original_table(server, storage.table.name, storage.table.schema, rows)
    got = storage.read("old-5")
    assert got is not None
    assert got.memory == {"runs": _runs("old", 1), "summary": "s5"}
    assert storage.get_all_session_ids(user_id="user-2") == ["old-11", "old-8", "old-5", "old-2"]
    with pytest.raises(StorageError, match="upgrade_schema"):
        storage.upsert(AgentSession(session_id="new"))
    storage.upgrade_schema()
    storage.upgrade_schema()
    for i in range(12):
        session = storage.read(f"old-{i}")
        assert session is not None
        assert session.memory == {"runs": _runs("old", i % 4), "summary": f"s{i}"}
        assert session.session_data == {"n": i, "nul": "plain"}
        assert session.created_at == 1_700_000_000 + i
    with admin.connect() as conn:
        moved = conn.execute(text(f"SELECT count(*) FROM {storage.runs_table.fullname}")).scalar()
    assert moved == sum(i % 4 for i in range(12))
    session = storage.read("old-7")
    assert session is not None
    session.memory["runs"].append({"run_id": "next"})  # type: ignore[index]
    assert storage.upsert(session, expected_version=1).version == 2
    assert len(storage.get_all_session_ids()) == 12


def check_missing_driver(module: str, storage_class: str, url: str, extra: str) -> None:
    """Without the driver installed, making the storage says which extra to install."""
    code = (
        f"import sys\nsys.modules[{module!r}] = None\n"
        "from savegame.errors import MissingDependencyError\n"
        f"from savegame.storage.{storage_class.lower().replace('storage', '')} "
        f"import {storage_class}\n"
        f"try:\n    {storage_class}('t', db_url={url!r})\n"
        "except MissingDependencyError as exc:\n    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert f'pip install "savegame[{extra}]"' in done.stdout


def _count(engine: Engine, query: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(query).scalar() or 0)


def check_purge_keeps_a_session_saved_again(
    make: Callable[..., SqlStorage], admin: Engine, lock_runs: str, waiting: str
) -> None:
    """purge_expired() never takes the runs of a session written again (a new expiry)
    while it purges: the purge is held in its work by a lock on another expired session's
    runs (``lock_runs``, SQL locking the runs of session ``x``, the runs table formatted in
    as ``{runs}``) while another storage saves ``s`` again, unchanged but for its expiry.
    ``waiting``: SQL counting the statements under way (waiting for a lock) that delete
    from the runs table (``{runs}``), run on a connection of its own.
    """
    short = make(expire=1)
    for sid in ("s", "x"):
        short.upsert(AgentSession(session_id=sid, memory={"runs": _runs(sid, 3)}))
    time.sleep(2.1)  # both expired
    lasting = make(expire=3600)
    outcome: dict[str, Any] = {}

    def purge() -> None:
        outcome["purged"] = short.purge_expired()

    def save_again() -> None:
        outcome["saved"] = lasting.upsert(
            AgentSession(session_id="s", memory={"runs": _runs("s", 3)})
        )

    with admin.connect() as locker:
        transaction = locker.begin()
        locker.execute(text(lock_runs.format(runs=short.runs_table.name)))
        threads = [threading.Thread(target=purge)]
        threads[0].start()
        # The purge is under way, waiting for x's runs: looked for, not slept on, as a
        # loaded machine may not have started it in any given time.
        deadline = time.monotonic() + 30
        asked = text(waiting.format(runs=short.runs_table.name))
        while not _count(admin, asked):
            assert time.monotonic() < deadline, "the purge was not held: the test did not test"
            time.sleep(0.02)
        threads.append(threading.Thread(target=save_again))
        threads[1].start()
        time.sleep(0.5)
        assert threads[0].is_alive(), "the purge was not held: the test did not test"
        transaction.rollback()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    assert set(outcome) == {"purged", "saved"}, outcome  # neither raised
    got = make(expire=3600, cache_bytes=0).read("s")
    assert got is not None
    assert got.memory == {"runs": _runs("s", 3)}
    assert make(cache_bytes=0).read("x") is None


def check_lost_commit_then_restart(store: Store) -> None:
    """A write on a connection just made whose commit reply is lost, the server then
    refusing four connections (restarting): the write waits for it, as one whose pooled
    connection was found dead does, and is found made; it does not spend its attempts at
    once and say its outcome is unknown."""
    assert store.lossy is not None
    with store.lossy() as link:
        _lost_alone(link, connections_cut=True, refused=4)


def save_owned_session(owner: SqlStorage) -> None:
    """Makes ``owner``'s tables, holding session ``s``, for :func:`check_schema_of_another_role`."""
    owner.upsert(AgentSession(session_id="s", memory={"runs": _runs("s", 2)}))


def check_schema_of_another_role(storage: SqlStorage, owner: SqlStorage) -> None:
    """A storage whose user may read and write the tables of a schema that another made,
    and make none (an application's role beside the administrator's): ``create()`` and
    ``upgrade_schema()`` of tables that are there change nothing, and do not fail asking
    to make the schema. ``owner`` made the tables (:func:`save_owned_session`)."""
    storage.create()
    storage.upgrade_schema()
    got = storage.read("s")
    assert got is not None
    assert got.memory == {"runs": _runs("s", 2)}
    got.memory = {"runs": _runs("s", 3)}
    storage.upsert(got, expected_version=1)
    read = owner.read("s")
    assert read is not None
    assert (read.version, read.memory) == (2, {"runs": _runs("s", 3)})


def check_read_only_role(storage: SqlStorage, owner: SqlStorage) -> None:
    """A storage whose user may only read the tables ``owner`` made (a reporting role):
    ``create()`` and ``upgrade_schema()`` of tables at the latest layout change nothing and
    so need no right to write; reads and listings work; every write raises
    :class:`StorageError` and leaves the store as it was."""
    save_owned_session(owner)
    storage.create()
    storage.upgrade_schema()
    got = storage.read("s")
    assert got is not None
    assert got.memory == {"runs": _runs("s", 2)}
    assert storage.get_all_session_ids() == ["s"]
    got.memory = {"runs": _runs("s", 3)}
    for write in (
        lambda: storage.upsert(got),
        lambda: storage.upsert(AgentSession(session_id="new")),
        lambda: storage.delete_session("s"),
        storage.drop,
    ):
        with pytest.raises(StorageError):
            write()
    read = owner.read("s")
    assert read is not None
    assert (read.version, read.memory) == (1, {"runs": _runs("s", 2)})
    assert owner.get_all_session_ids() == ["s"]


def check_a_write_that_waited_for_a_lock_lives_from_its_write(
    opener: Callable[..., SqlStorage], hold: Callable[[], Callable[[], None]]
) -> None:
    """A write that waits 2.5 s for a lock another transaction holds on session ``s``
    (``hold()`` takes it and returns what lets it go) stamps its session when it is made:
    one that lives 2 s from its write is read, listed and kept by a purge after it returns,
    rather than stored already expired."""
    with opener() as maker:
        maker.upsert(AgentSession(session_id="s", user_id="u"))
    storage = opener(expire=2)
    release = hold()
    timer = threading.Timer(2.5, release)
    timer.start()
    try:
        storage.upsert(AgentSession(session_id="s", user_id="u", session_data={"n": 1}))
    finally:
        timer.join()
    got = storage.read("s")
    assert got is not None
    assert (got.session_data, got.version) == ({"n": 1}, 2)
    assert storage.get_all_session_ids(user_id="u") == ["s"]
    assert storage.purge_expired() == 0
    storage.close()


def check_lock_held_past_a_timeout(storage: SqlStorage, admin: Engine, lock_header: str) -> None:
    """With a server-side timeout set on ``storage``'s connections (in its URL), every call
    that waits for a session's header while another transaction holds its lock raises
    BackendUnavailableError, and the session stays as it was. ``lock_header`` locks the
    header of session ``s`` (``{table}`` is the session table's name)."""
    storage.upsert(AgentSession(session_id="s", user_id="u", memory={"runs": _runs("a", 2)}))
    calls: list[Callable[[], object]] = [
        lambda: storage.upsert(AgentSession(session_id="s", memory={"runs": _runs("b", 3)})),
        lambda: storage.upsert(
            AgentSession(session_id="s", memory={"runs": _runs("b", 3)}), expected_version=1
        ),
        lambda: storage.delete_session("s"),
        lambda: storage.delete_user("u"),
    ]
    with admin.connect() as holder:
        holder.execute(text(lock_header.format(table=storage.table_name)))
        for call in calls:
            with pytest.raises(BackendUnavailableError):
                call()
        holder.rollback()
    got = storage.read("s")
    assert got is not None
    assert got.memory == {"runs": _runs("a", 2)}
    assert got.version == 1


def check_an_autocommit_engine(
    make: Callable[[Engine], SqlStorage], engine: Engine, admin: Engine, runs_table: str
) -> None:
    """A storage on an ``engine`` made with ``isolation_level="AUTOCOMMIT"`` (and a server
    timeout on locks) still writes and deletes each session in one transaction: a write or
    a delete that fails half-way, on a run another transaction locks in ``runs_table``
    (the storage's, as SQL names it), leaves the session as it was. And the engine's
    connections still autocommit for the application after savegame has used them."""
    storage = make(engine)
    storage.upsert(AgentSession(session_id="s", memory={"runs": _runs("a", 2)}))
    with admin.connect() as holder:
        holder.execute(
            text(f"SELECT 1 FROM {runs_table} WHERE session_id = 's' AND position = 1 FOR UPDATE")
        )
        with pytest.raises(BackendUnavailableError):
            storage.upsert(AgentSession(session_id="s", memory={"runs": _runs("b", 3)}))
        with pytest.raises(BackendUnavailableError):
            storage.delete_session("s")
        holder.rollback()
    got = make(engine).read("s")
    assert got is not None
    assert got.memory == {"runs": _runs("a", 2)}
    assert got.version == 1
    with engine.connect() as conn:
        conn.execute(text(f"DELETE FROM {runs_table}"))
    with admin.connect() as conn:
        left = conn.execute(text(f"SELECT COUNT(*) FROM {runs_table}")).scalar()
    assert left == 0, "a statement the application ran on the engine was not committed"
    storage.close()


def check_an_engine_of_one_connection(make: Callable[[Engine], SqlStorage], engine: Engine) -> None:
    """Storages on the application's ``engine``, whose pool holds one connection, keep none
    of it between calls: the application gets it after each call, storages opened later
    too, and threads sharing the engine take it in turn."""
    storage = make(engine)
    storage.upsert(AgentSession(session_id="s", session_data={"n": 0}))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    assert make(engine).read("s") is not None

    def add_one(session: Session | None) -> Session:
        assert isinstance(session, AgentSession)
        assert session.session_data is not None
        session.session_data["n"] += 1
        return session

    in_threads(4, lambda _: [make(engine).update("s", add_one) for _ in range(10)])
    got = storage.read("s")
    assert got is not None
    assert got.session_data == {"n": 40}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1


def check_an_engine_of_another_isolation_level(
    make: Callable[[Engine], SqlStorage], engine: Engine
) -> None:
    """Threads updating one session through storages on an ``engine`` made with a stricter
    isolation level than savegame's writes need lose no update and raise nothing: the
    writes, ordered by their row locks, do not fail as serialization conflicts."""
    make(engine).upsert(AgentSession(session_id="s", session_data={"n": 0}))

    def add_one(session: Session | None) -> Session:
        assert isinstance(session, AgentSession)
        assert session.session_data is not None
        session.session_data["n"] += 1
        return session

    def work(n: int) -> None:
        storage = make(engine)
        for i in range(50):
            storage.update("s", add_one)
            storage.upsert(AgentSession(session_id="t", session_data={"by": n, "i": i}))

    in_threads(4, work)
    got = make(engine).read("s")
    assert got is not None
    assert got.session_data == {"n": 200}


def check_an_engine_reading_uncommitted(
    make: Callable[[Engine], SqlStorage], engine: Engine
) -> None:
    """Storages on an ``engine`` made with ``isolation_level="READ UNCOMMITTED"`` never read
    a session half written: while one saves a session again and again, its runs replaced
    by a different number of others each time, another reads only whole saves."""
    make(engine).upsert(AgentSession(session_id="s", memory={"runs": _runs("w0-", 1)}))
    done = threading.Event()
    torn: list[list[str]] = []

    def work(n: int) -> None:
        if n == 0:
            writer = make(engine)
            try:
                for i in range(1, 200):
                    runs = _runs(f"w{i}-", 1 + i % 7)
                    writer.upsert(AgentSession(session_id="s", memory={"runs": runs}))
            finally:
                done.set()
            return
        reader = make(engine)
        while not done.is_set():
            got = reader.read("s")
            assert got is not None
            assert got.memory is not None
            ids = [run["run_id"] for run in got.memory["runs"]]
            tag = ids[0].partition("-")[0]
            if ids != [run["run_id"] for run in _runs(f"{tag}-", 1 + int(tag[1:]) % 7)]:
                torn.append(ids)

    in_threads(2, work)
    assert torn == []


def check_a_pool_that_times_out(make: Callable[[Engine], SqlStorage], engine: Engine) -> None:
    """Storages on the application's ``engine``, whose pool lends one connection and waits
    half a second for it (``pool_size=1, max_overflow=0, pool_timeout=0.5``): every call of
    a storage just opened takes that one connection alone; a call that finds it taken for
    longer raises BackendUnavailableError naming the pool, and writes nothing; threads
    sharing one storage wait their turn or fail so, and no write is lost or half made."""
    storage = make(engine)
    storage.upsert(
        AgentSession(session_id="s", user_id="u", session_data={"n": 0}, memory={"runs": [1]})
    )
    calls: list[Callable[[SqlStorage], object]] = [
        lambda s: s.read("s"),
        lambda s: s.read_many(["s", "none"]),
        lambda s: s.get_all_session_ids(user_id="u"),
        lambda s: s.get_all_sessions(user_id="u"),
        lambda s: s.upsert(AgentSession(session_id="t", user_id="v", memory={"runs": [1]})),
        lambda s: s.delete_user("v"),
    ]
    for call in calls:
        call(make(engine))
    with engine.connect() as holder:
        holder.execute(text("SELECT 1"))
        for call in (calls[1], calls[4]):
            with pytest.raises(BackendUnavailableError, match="QueuePool limit"):
                call(make(engine))
    assert storage.get_all_session_ids() == ["s"]

    done: list[int] = []
    refused: list[str] = []

    def add_one(session: Session | None) -> Session:
        assert isinstance(session, AgentSession)
        assert session.session_data is not None
        session.session_data["n"] += 1
        return session

    def work(_: int) -> None:
        for _ in range(5):
            try:
                storage.update("s", add_one)
            except BackendUnavailableError as exc:
                refused.append(str(exc))
            else:
                done.append(1)

    in_threads(4, work)
    assert all("QueuePool limit" in message for message in refused)
    got = make(engine).read("s")
    assert got is not None
    assert got.session_data == {"n": len(done)}
    assert got.version == 1 + len(done)
    storage.close()


def check_a_connection_limit(make: Callable[[], SqlStorage], url: str) -> None:
    """A storage of a user the server lets hold one connection (``url``), made by
    ``make``, whose one connection another program holds: its calls raise
    BackendUnavailableError saying the server refused, and write nothing; once the
    connection is let go, they work."""
    maker = make()
    maker.upsert(AgentSession(session_id="s", memory={"runs": _runs("a", 1)}))
    maker.close()
    other = create_engine(url, poolclass=NullPool)
    try:
        storage = make()
        with other.connect() as holder:
            holder.execute(text("SELECT 1"))
            for call in (
                lambda: storage.read("s"),
                lambda: storage.upsert(
                    AgentSession(session_id="s", memory={"runs": _runs("b", 2)})
                ),
            ):
                with pytest.raises(BackendUnavailableError, match="connections"):
                    call()
        got = storage.read("s")
        assert got is not None
        assert (got.version, got.memory) == (1, {"runs": _runs("a", 1)})
        storage.close()
    finally:
        other.dispose()


def check_a_read_held_past_a_timeout(
    make: Callable[..., SqlStorage], admin: Engine, lock_table: str, unlock: str | None = None
) -> None:
    """With a server-side timeout set on the connections of the storages ``make`` makes
    (in their URL), a read that waits for a table another connection locks
    (``lock_table`` locks the table ``{table}``, ``unlock`` or a rollback lets it go)
    raises BackendUnavailableError, never finds nothing: on a storage just opened, and on
    one that remembers the session."""
    warm = make()
    warm.upsert(AgentSession(session_id="s", user_id="u", memory={"runs": _runs("a", 2)}))
    for table in (warm.table_name, f"{warm.table_name}_runs"):
        fresh = make(cache_bytes=0)
        calls: list[Callable[[], object]] = [
            functools.partial(fresh.read, "s"),
            functools.partial(fresh.get_all_sessions, user_id="u"),
        ]
        if table == warm.table_name:
            calls += [functools.partial(fresh.read_many, ["s"]), functools.partial(warm.read, "s")]
        with admin.connect() as holder:
            holder.execute(text(lock_table.format(table=table)))
            try:
                for call in calls:
                    with pytest.raises(BackendUnavailableError):
                        call()
            finally:
                if unlock is not None:
                    holder.execute(text(unlock))
                holder.rollback()
        fresh.close()
    assert warm.read_many(["s"])[0].memory == {"runs": _runs("a", 2)}
    warm.close()


def check_idle_connections_closed_by_the_server(
    storages: list[SqlStorage], reader: SqlStorage, idle: float
) -> None:
    """The server closes the connections of ``storages`` (one on an engine savegame made,
    one on the application's) once left idle ``idle`` seconds: the next call of each, a
    write for the first and a read for the others, connects again; each write is made
    once, as ``reader`` (which remembers nothing) sees."""
    for n, storage in enumerate(storages):
        storage.upsert(AgentSession(session_id=f"s{n}", memory={"runs": _runs("a", 1)}))
    time.sleep(idle + 0.3)
    for n, storage in enumerate(storages):
        if n:
            got = storage.read(f"s{n}")
            assert got is not None
            assert got.version == 1
        stored = storage.upsert(AgentSession(session_id=f"s{n}", memory={"runs": _runs("b", 2)}))
        assert stored.version == 2
        got = reader.read(f"s{n}")
        assert got is not None
        assert (got.version, got.memory) == (2, {"runs": _runs("b", 2)})


def check_a_batch_removal_waits_on_no_other_session(
    storage: SqlStorage, admin: Engine, lock_other: str
) -> None:
    """``delete_user``, ``purge`` and ``purge_expired()`` of sessions that make up most of
    the table remove them while another transaction holds the header and runs of a session
    they do not remove (a save of another user's), without waiting on it. ``storage``
    gives up on a lock after about a second (a setting in its URL); ``lock_other`` locks
    session ``other``'s header and runs (``{table}`` and ``{runs}`` are the tables'
    names)."""
    from savegame import transfer

    def old_sessions() -> list[str]:
        ids = [f"old-{i:02d}" for i in range(30)]
        for session_id in ids:
            storage.restore(
                AgentSession(
                    session_id=session_id,
                    user_id="u",
                    created_at=1000,
                    updated_at=1000,
                    version=1,
                    memory={"runs": _runs(session_id, 2)},
                )
            )
        return ids

    @contextlib.contextmanager
    def other_held() -> Iterator[None]:
        # Held around each removal alone: under MySQL's repeatable read the lock also
        # covers the gap before ``other``'s rows, which purged rows widen, so sessions
        # made while it is held could wait on it.
        with admin.connect() as holder:
            holder.execute(text(lock))
            yield
            holder.rollback()

    other = AgentSession(session_id="other", user_id="v", memory={"runs": _runs("o", 2)})
    storage.upsert(other)
    lock = lock_other.format(table=storage.table_name, runs=storage.runs_table.name)
    ids = old_sessions()
    with other_held():
        assert sorted(transfer.purge(storage, 3600)) == ids
    old_sessions()
    removed: list[str] = []
    with other_held():
        assert storage.delete_user("u", removed) == 30
    assert sorted(removed) == ids
    expiring = type(storage)(
        storage.table_name, schema=storage.schema, db_engine=storage.db_engine, expire=1
    )
    for session_id in ids:
        expiring.upsert(AgentSession(session_id=session_id, memory={"runs": _runs("e", 2)}))
    deadline = time.time() + 10
    while expiring.get_all_session_ids() != ["other"]:
        assert time.time() < deadline
        time.sleep(0.05)
    expiring.close()
    with other_held():
        assert storage.purge_expired() == 30
    assert storage.get_all_session_ids() == ["other"]
    got = storage.read("other")
    assert got is not None
    assert got.memory == {"runs": _runs("o", 2)}


def check_a_purge_reads_no_run(storage: SqlStorage, reader: SqlStorage) -> None:
    """``stale_sessions`` and ``purge`` judge sessions by the header table alone: no
    statement reads the runs table (only the purge's removal of the stale sessions' rows
    names it), and with every run deleted by hand, which fails any read of a session,
    the stale sessions are found and removed all the same, none said to be damaged.
    ``reader``: another storage of ``storage``'s table, which has seen none of its
    sessions."""
    from savegame import transfer

    for session_id, updated in (("old", 1000), ("older", 500), ("new", None)):
        storage.restore(
            AgentSession(
                session_id=session_id,
                created_at=100,
                updated_at=updated,
                memory={"runs": _runs(session_id, 40)},
            )
        )
    runs_table = storage.runs_table
    with storage.db_engine.begin() as conn:
        conn.execute(runs_table.delete())
    with pytest.raises(CorruptSessionError):
        reader.read("new")
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(reader.db_engine, "before_cursor_execute", seen)
    try:
        assert transfer.stale_sessions(reader, 3600) == ["old", "older"]
        damaged: list[str] = []
        assert sorted(transfer.purge(reader, 3600, damaged=damaged)) == ["old", "older"]
        assert damaged == []
    finally:
        event.remove(reader.db_engine, "before_cursor_execute", seen)
    name = runs_table.name
    reads = [s for s in statements if name in s and not s.lstrip().upper().startswith("DELETE")]
    assert reads == [], reads
    assert reader.get_all_session_ids() == ["new"]


def upgrade_mid_read(monkeypatch: pytest.MonkeyPatch, upgrader: SqlStorage) -> list[bool]:
    """Makes ``upgrader`` upgrade its table at the worst moment of the next read of a table
    at an older layout: after the read has looked at the layout, before it selects the
    rows. The list returned holds True once the upgrade has run."""
    select = SqlStorage._header_select
    upgraded: list[bool] = []

    def upgrade_first(storage: SqlStorage, layout: Any) -> Any:
        if not upgraded:
            upgraded.append(True)
            upgrader.upgrade_schema()
        return select(storage, layout)

    monkeypatch.setattr(SqlStorage, "_header_select", upgrade_first)
    return upgraded


def check_one_server_spelled_otherwise_is_one_store(
    make: Callable[[str], SqlStorage], server: str, default_port: int, scheme: str
) -> None:
    """Storages whose URLs spell one server otherwise (the default port left out or written
    out, the host in capitals, another scheme of the database) are storages of one store:
    an agent moved from one to another does not carry into it, whole, a session that was
    erased there meanwhile."""
    url = make_url(server)
    assert url.host
    assert url.port in (None, default_port), "the check needs a server on the default port"
    url = URL.create(url.drivername, url.username, url.password, url.host, None, url.database)
    spellings = [
        url.set(port=default_port),
        url.set(host=url.host.upper()),
        url.set(drivername=scheme),
    ]
    first = make(url.render_as_string(hide_password=False))
    others = [make(s.render_as_string(hide_password=False)) for s in spellings]
    assert [other.store_names() for other in others] == [first.store_names()] * len(others)
    agent = Agent(model=OfflineModel(), storage=first, session_id="s", user_id="alice")
    agent.run("my secret is 42")
    assert first.delete_user("alice") == 1
    agent.storage = others[0]
    agent.run("hello again")
    stored = others[0].read("s")
    assert stored is not None
    assert len(stored.memory["runs"]) == 1, "the erased turn was written back"
    first.drop()
    for storage in (first, *others):
        storage.close()
