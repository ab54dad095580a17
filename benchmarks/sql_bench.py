"""savegame's SQL backends against hand-written baselines doing the same work with the driver alone.

Each baseline is what a careful person would write without savegame: one table with the
original's columns, the whole session (runs inline in ``memory``) written by one prepared
upsert, reads and listings by one indexed query. It has no version check, no validation, no
runs table. SQLite's baseline uses the ``sqlite3`` module in WAL mode with
``synchronous=NORMAL``, and savegame is set to ``NORMAL`` too for the comparison; the
PostgreSQL baseline uses psycopg 3 with a prepared upsert; MySQL's uses PyMySQL.

Besides times, each part reports the bytes a save at turn N makes the database write: for
SQLite what it adds to the write-ahead log (with automatic checkpoints off, so that the log
only grows), for PostgreSQL the growth of its WAL position, for MySQL InnoDB's redo log.

Run alone with ``python benchmarks/sql_bench.py [--quick] [sqlite|postgres|mysql ...]``;
``benchmarks/run.py`` imports :data:`PARTS`. Servers are those of
``SAVEGAME_TEST_POSTGRES_URL`` and ``SAVEGAME_TEST_MYSQL_URL``; every table is removed
afterwards.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event

from savegame.storage.base import Storage
from savegame.storage.known import mark_runs
from savegame.storage.session.agent import AgentSession
from savegame.storage.sql import SqlStorage

POSTGRES_URL = os.environ.get(
    "SAVEGAME_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("SAVEGAME_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
TURN_TEXT = "A sentence of model output, long enough to look like one. " * 8
COLUMNS = "session_id, user_id, agent_id, memory, session_data, created_at, updated_at"


def _run(i: int) -> dict[str, Any]:
    return {
        "run_id": f"run-{i}",
        "messages": [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": TURN_TEXT},
        ],
    }


def _session(sid: str, user: str, turns: int) -> AgentSession:
    return AgentSession(
        session_id=sid,
        user_id=user,
        agent_id="agent-1",
        memory={"runs": [_run(i) for i in range(turns)], "summary": "so far"},
        session_data={"session_name": sid},
    )


def _row(session: AgentSession) -> tuple[Any, ...]:
    now = int(time.time())
    return (
        session.session_id,
        session.user_id,
        session.agent_id,
        json.dumps(session.memory),
        json.dumps(session.session_data),
        now,
        now,
    )


class Baseline:
    """One table, one prepared upsert, the whole session per write; a DBAPI connection."""

    def __init__(self, conn: Any, table: str, marker: str, ddl: list[str], upsert: str) -> None:
        self.conn = conn
        self.table = table
        self.marker = marker
        cursor = conn.cursor()
        for statement in ddl:
            cursor.execute(statement.format(t=table))
        conn.commit()
        self.upsert_sql = upsert.format(t=table, m=marker)
        self.read_sql = f"SELECT {COLUMNS} FROM {table} WHERE session_id = {marker}"
        self.list_sql = (
            f"SELECT {COLUMNS} FROM {table} WHERE user_id = {marker} ORDER BY created_at DESC"
        )

    def _execute(self, sql: str, params: tuple[Any, ...]) -> Any:
        cursor = self.conn.cursor()
        cursor.execute(sql, params)
        return cursor

    def upsert(self, session: AgentSession) -> None:
        self._execute(self.upsert_sql, _row(session))
        self.conn.commit()

    def read(self, sid: str) -> dict[str, Any] | None:
        row = self._execute(self.read_sql, (sid,)).fetchone()
        self.conn.commit()
        return None if row is None else _decode(row)

    def list_user(self, user: str) -> list[dict[str, Any]]:
        rows = self._execute(self.list_sql, (user,)).fetchall()
        self.conn.commit()
        return [_decode(row) for row in rows]

    def clear(self) -> None:
        self._execute(f"DELETE FROM {self.table}", ())
        self.conn.commit()

    def drop(self) -> None:
        self._execute(f"DROP TABLE IF EXISTS {self.table}", ())
        self.conn.commit()


def _decode(row: Any) -> dict[str, Any]:
    memory, data = row[3], row[4]
    return {
        "session_id": row[0],
        "user_id": row[1],
        "agent_id": row[2],
        "memory": json.loads(memory) if isinstance(memory, (str, bytes)) else memory,
        "session_data": json.loads(data) if isinstance(data, (str, bytes)) else data,
        "created_at": row[5],
        "updated_at": row[6],
    }


def _time(fn: Callable[[], Any], repeat: int = 3, setup: Callable[[], Any] | None = None) -> float:
    """The best of ``repeat`` timings of ``fn`` (after ``setup``, untimed, each time)."""
    best = float("inf")
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


Work = tuple[Callable[[], Any], Callable[[], Any] | None]
"""Something to time, and what to do untimed before each timing (or None)."""


def _pair(ours: Work, theirs: Work, repeat: int = 5) -> tuple[float, float]:
    """The best of ``repeat`` timings of each, taken in turns: a slow spell of the machine
    then falls on both sides, not on one."""
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for side, (fn, setup) in enumerate((ours, theirs)):
            if setup is not None:
                setup()
            start = time.perf_counter()
            fn()
            best[side] = min(best[side], time.perf_counter() - start)
    return best[0], best[1]


def _growth(
    saves: dict[str, Callable[[AgentSession], Any]], turns: tuple[int, ...], repeat: int = 9
) -> dict[tuple[str, int], float]:
    """The time of one save adding run N to a conversation of N runs, for each N in
    ``turns`` and each of ``saves``: the best of ``repeat``, all series taken in turns.

    Each N is timed on every side before the next N, sides in a new order each round:
    a small save never always follows a large one, whose work a server may still be
    flushing."""
    sessions = {}
    names = list(saves)
    for name, save in saves.items():
        for n in turns:
            sessions[name, n] = session = _session(f"grow-{name}-{n}", "user-c", n)
            save(session)
    best = {key: float("inf") for key in sessions}
    for extra in range(repeat):
        order = names if extra % 2 == 0 else names[::-1]
        for n in turns:
            for name in order:
                session = sessions[name, n]
                session.memory["runs"].append(_run(n + extra))  # type: ignore[index]
                start = time.perf_counter()
                saves[name](session)
                best[name, n] = min(best[name, n], time.perf_counter() - start)
    return best


def _compare(
    storage: Storage,
    baseline: Baseline,
    quick: bool,
    large: int,
    reopen: Callable[[], Storage],
) -> list[dict[str, Any]]:
    """The figures every backend shares; ``reopen()`` opens the same store afresh."""
    count = 500 if quick else 2000
    sessions = [_session(f"s{i}", f"user-{i % 100}", 3) for i in range(count)]
    ids = [s.session_id for s in sessions]
    rows: list[dict[str, Any]] = []

    def row(name: str, figures: tuple[float, float], note: str = "") -> None:
        ours, theirs = figures
        rows.append({"name": name, "savegame": ours, "baseline": theirs, "note": note})

    # Every side drops what each call returns at once, as the baselines do: results kept
    # for the whole loop would cost whichever side keeps them its garbage collector's
    # walks over them (about a third of a warm read, measured).
    def upserts(target: Any) -> Callable[[], None]:
        def run() -> None:
            for session in sessions:
                target.upsert(session)

        return run

    def reads(target: Any) -> Callable[[], None]:
        def run() -> None:
            for sid in ids:
                target.read(sid)

        return run

    def opened(work: Callable[[Storage], Callable[[], None]]) -> Callable[[], None]:
        def run() -> None:
            with reopen() as fresh:
                work(fresh)()

        return run

    row(
        f"{count} upserts of new sessions (3 runs each)",
        _pair((upserts(storage), storage.drop), (upserts(baseline), baseline.clear)),
    )
    row(
        f"{count} upserts of the same sessions again",
        _pair((upserts(storage), None), (upserts(baseline), None)),
    )
    row(
        f"{count} upserts of stored sessions by a storage just opened",
        _pair((opened(upserts), None), (upserts(baseline), None)),
    )
    upserts(storage)()
    row(f"{count} reads", _pair((reads(storage), None), (reads(baseline), None)))
    row(
        f"{count} reads by a storage just opened",
        _pair((opened(reads), None), (reads(baseline), None)),
    )
    storage.drop()
    baseline.clear()
    for size in (1_000, large):
        _fill(storage, baseline, size)
        row(
            f"list one user's 10 sessions, store of {size}",
            _pair(
                (lambda: storage.get_all_sessions(user_id="user-7"), None),
                (lambda: baseline.list_user("user-7"), None),
                repeat=20,
            ),
        )
    turns = (10, 100, 1000)
    grown = _growth({"savegame": storage.upsert, "baseline": baseline.upsert}, turns)
    for n in turns:
        row(f"save at turn {n}", (grown["savegame", n], grown["baseline", n]))
    shared = _session("shared", "user-c", 1000)
    with reopen() as writer:

        def extend(save: Callable[[AgentSession], Any]) -> Callable[[], None]:
            # Untimed: another storage (another process, in a deployment) adds a run.
            def setup() -> None:
                shared.memory["runs"].append(_run(len(shared.memory["runs"])))  # type: ignore[index]
                save(shared)

            return setup

        storage.read("shared")
        row(
            "read of a 1000-run session that another storage just added a run to",
            _pair(
                (lambda: storage.read("shared"), extend(writer.upsert)),
                (lambda: baseline.read("shared"), extend(baseline.upsert)),
                repeat=9,
            ),
        )
    runs = _session("long", "user-c", 1000).memory["runs"]  # type: ignore[index]
    rows.append(
        {
            "name": "of which marking the runs, to find those unchanged",
            "savegame": _time(lambda: mark_runs(runs), repeat=9),
            "baseline": 0.0,
            "note": "turn 1000",
        }
    )
    return rows


def _fill(storage: SqlStorage, baseline: Baseline, size: int) -> None:
    """Grows both stores to ``size`` sessions; user-7 has 10 of them."""
    have = len(storage.get_all_session_ids())
    for i in range(have, size):
        user = "user-7" if i < 10 else f"other-{i % 5000}"
        session = _session(f"f{i}", user, 1)
        storage.upsert(session)
        baseline.upsert(session)


# -- SQLite -------------------------------------------------------------------------------

SQLITE_DDL = [
    "CREATE TABLE {t} (session_id TEXT PRIMARY KEY, user_id TEXT, agent_id TEXT, "
    "memory TEXT, session_data TEXT, created_at INTEGER, updated_at INTEGER)",
    "CREATE INDEX {t}_user ON {t} (user_id)",
    "CREATE INDEX {t}_agent ON {t} (agent_id)",
]
SQLITE_UPSERT = (
    f"INSERT INTO {{t}} ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (session_id) DO UPDATE SET user_id = excluded.user_id, "
    "agent_id = excluded.agent_id, memory = excluded.memory, "
    "session_data = excluded.session_data, updated_at = excluded.updated_at"
)


def _sqlite_connection(path: Path, checkpoints: bool = True) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level="DEFERRED")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    if not checkpoints:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    return conn


def _sqlite_storage(path: Path, checkpoints: bool = True) -> SqlStorage:
    from savegame.storage.sqlite import SqliteStorage, make_engine

    if checkpoints:
        return SqliteStorage("bench", db_file=path, synchronous="NORMAL")
    engine = make_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def no_checkpoints(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.execute("PRAGMA wal_autocheckpoint = 0")

    return SqliteStorage("bench", db_engine=engine, synchronous="NORMAL")


def _saved_bytes(
    written: Callable[[], int], save: Callable[[AgentSession], Any], turns: int, asking: int = 0
) -> int:
    """Bytes a save at turn ``turns`` makes the database write, by ``written()``, a counter
    that only grows and counts ``asking`` bytes for asking it: the mean of the 10 saves that
    add runs ``turns`` to ``turns + 9``, so that the pages a save splits now and then count
    at their share (the baseline's saves grow over those 10 turns; savegame's do not)."""
    session = _session(f"bytes-{turns}", "user-c", turns)
    save(session)
    before = written()
    for extra in range(10):
        session.memory["runs"].append(_run(turns + extra))  # type: ignore[index]
        save(session)
    return round((written() - before - asking) / 10)


def bytes_rows(
    written: Callable[[], int],
    ours: Callable[[AgentSession], Any],
    theirs: Callable[[AgentSession], Any],
    their_counter: Callable[[], int] | None = None,
    asking: int = 0,
) -> list[dict[str, Any]]:
    """The rows "bytes written by the save at turn N" for savegame's and the baseline's saves."""
    return [
        {
            "name": f"bytes written by the save at turn {turns}",
            "savegame": _saved_bytes(written, ours, turns, asking),
            "baseline": _saved_bytes(their_counter or written, theirs, turns, asking),
            "note": "bytes",
        }
        for turns in (10, 100, 1000)
    ]


def run_sqlite(quick: bool = False) -> list[dict[str, Any]]:
    """SQLite, savegame at ``synchronous=NORMAL`` against the ``sqlite3`` baseline."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        storage = _sqlite_storage(folder / "savegame.db")
        baseline = Baseline(
            _sqlite_connection(folder / "baseline.db"), "bench", "?", SQLITE_DDL, SQLITE_UPSERT
        )
        rows = _compare(
            storage,
            baseline,
            quick,
            10_000 if quick else 50_000,
            lambda: _sqlite_storage(folder / "savegame.db"),
        )
        storage.close()
        baseline.conn.close()

        growing = _sqlite_storage(folder / "grow-sg.db", checkpoints=False)
        growing.create()
        plain = Baseline(
            _sqlite_connection(folder / "grow-bl.db", checkpoints=False),
            "bench",
            "?",
            SQLITE_DDL,
            SQLITE_UPSERT,
        )
        rows.extend(
            bytes_rows(
                lambda: (folder / "grow-sg.db-wal").stat().st_size,
                growing.upsert,
                plain.upsert,
                lambda: (folder / "grow-bl.db-wal").stat().st_size,
            )
        )
        growing.db_engine.dispose()
        plain.conn.close()
    return rows


# -- PostgreSQL and MySQL -------------------------------------------------------------------


@contextmanager
def _server_pair(kind: str) -> Iterator[tuple[SqlStorage, Baseline, Callable[[], Storage]]]:
    tag = uuid.uuid4().hex[:8]
    if kind == "postgres":
        import psycopg

        from savegame.storage.postgres import PostgresStorage

        schema = f"bench_{tag}"

        def reopen() -> Storage:
            return PostgresStorage("bench", schema=schema, db_url=POSTGRES_URL)

        storage: SqlStorage = PostgresStorage("bench", schema=schema, db_url=POSTGRES_URL)
        dsn = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
        conn: Any = psycopg.connect(dsn, prepare_threshold=0)
        ddl = [
            "CREATE TABLE {t} (session_id VARCHAR PRIMARY KEY, user_id VARCHAR, "
            "agent_id VARCHAR, memory JSONB, session_data JSONB, created_at BIGINT, "
            "updated_at BIGINT)",
            "CREATE INDEX ON {t} (user_id)",
            "CREATE INDEX ON {t} (agent_id)",
        ]
        table = f"bench_baseline_{tag}"
        upsert = SQLITE_UPSERT.replace("?", "%s")
    else:
        from savegame.storage.mysql import MySQLStorage

        def reopen() -> Storage:
            return MySQLStorage(f"bench_{tag}", db_url=MYSQL_URL)

        storage = MySQLStorage(f"bench_{tag}", db_url=MYSQL_URL)
        conn = _mysql_connection()
        ddl = [
            "CREATE TABLE {t} (session_id VARCHAR(255) PRIMARY KEY, user_id VARCHAR(255), "
            "agent_id VARCHAR(255), memory LONGTEXT, session_data LONGTEXT, "
            "created_at BIGINT, updated_at BIGINT, INDEX (user_id), INDEX (agent_id)) "
            "CHARSET = utf8mb4",
        ]
        table = f"bench_baseline_{tag}"
        upsert = (
            f"INSERT INTO {{t}} ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON DUPLICATE KEY UPDATE user_id = VALUES(user_id), agent_id = VALUES(agent_id), "
            "memory = VALUES(memory), session_data = VALUES(session_data), "
            "updated_at = VALUES(updated_at)"
        )
    baseline = Baseline(conn, table, "%s", ddl, upsert)
    try:
        yield storage, baseline, reopen
    finally:
        storage.drop()
        if kind == "postgres":
            with conn.cursor() as cursor:
                cursor.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            conn.commit()
        baseline.drop()
        storage.close()
        conn.close()


def _mysql_connection() -> Any:
    import pymysql
    from sqlalchemy import make_url

    url = make_url(MYSQL_URL)
    return pymysql.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        database=url.database,
        charset="utf8mb4",
    )


def _log_written(conn: Any, kind: str) -> Callable[[], int]:
    """The server's count of bytes written to its log: PostgreSQL's WAL position, InnoDB's
    redo log (run it on a server nothing else is writing to)."""
    query = (
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"
        if kind == "postgres"
        else "SHOW GLOBAL STATUS LIKE 'Innodb_os_log_written'"
    )

    def written() -> int:
        cursor = conn.cursor()
        cursor.execute(query)
        row = cursor.fetchone()
        conn.commit()
        return int(row[-1])

    return written


def run_server(kind: str, quick: bool = False) -> list[dict[str, Any]]:
    """PostgreSQL or MySQL against its driver's baseline."""
    with _server_pair(kind) as (storage, baseline, reopen):
        rows = _compare(storage, baseline, quick, 10_000 if quick else 50_000, reopen)
        rows.extend(bytes_rows(_log_written(baseline.conn, kind), storage.upsert, baseline.upsert))
        return rows


def report(title: str, baseline_name: str, rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, with the ratio savegame / baseline."""
    lines = [
        f"| {title} | savegame | {baseline_name} | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r["note"] == "bytes":
            ratio = r["savegame"] / r["baseline"]
            lines.append(
                f"| {r['name']} | {r['savegame']:,} B | {r['baseline']:,} B | {ratio:.2f}x |"
            )
        elif not r["baseline"]:
            lines.append(f"| {r['name']} ({r['note']}) | {r['savegame'] * 1000:.1f} ms | | |")
        else:
            ratio = r["savegame"] / r["baseline"]
            lines.append(
                f"| {r['name']} | {r['savegame'] * 1000:.1f} ms "
                f"| {r['baseline'] * 1000:.1f} ms | {ratio:.2f}x |"
            )
    figures = {r["name"]: r["savegame"] for r in rows}
    lists = [r["savegame"] for r in rows if r["name"].startswith("list one user")]
    lines.append("")
    if "save at turn 10" in figures:
        last, first = figures["save at turn 1000"], figures["save at turn 10"]
        lines.append(f"- save at turn 1000 / turn 10, time: {last / first:.2f}x")
    if "bytes written by the save at turn 10" in figures:
        last = figures["bytes written by the save at turn 1000"]
        first = figures["bytes written by the save at turn 10"]
        lines.append(f"- save at turn 1000 / turn 10, bytes written: {last / first:.2f}x")
    if len(lists) == 2:
        lines.append(f"- listing in the large store / the 1k store: {lists[1] / lists[0]:.2f}x")
    return "\n".join(lines)


PARTS: list[tuple[str, str, Callable[[bool], list[dict[str, Any]]]]] = [
    ("SQLite", "sqlite3 baseline", run_sqlite),
    ("PostgreSQL", "psycopg baseline", lambda quick: run_server("postgres", quick)),
    ("MySQL (MariaDB)", "PyMySQL baseline", lambda quick: run_server("mysql", quick)),
]
"""(title, baseline's name, run(quick) -> rows) for each database; ``run.py`` runs them all."""


if __name__ == "__main__":
    wanted = [a for a in sys.argv[1:] if not a.startswith("--")]
    for title, name, part in PARTS:
        if not wanted or any(w.lower() in title.lower() for w in wanted):
            print(report(title, name, part("--quick" in sys.argv)))
