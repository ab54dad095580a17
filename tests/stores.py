"""Every backend savegame tests, as a way to open an isolated store of it.

Each entry makes a :class:`savegame.testing.Store` for one test: a namespace of its own (a
temporary folder, a unique table, schema or key prefix), removed when the test ends. A
backend joins the conformance suite, the CLI tests and the runtime tests by adding one entry
to :data:`BACKENDS`.

Server backends read their address from ``SAVEGAME_TEST_REDIS_URL``,
``SAVEGAME_TEST_POSTGRES_URL`` and ``SAVEGAME_TEST_MYSQL_URL``. Where the server cannot be
reached their tests skip, saying how to point them at one, unless
``SAVEGAME_REQUIRE_SERVICES=1`` (set by CI), which makes them fail instead.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from operator import methodcaller
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pytest
import yaml
from sqlalchemy import make_url
from sqlalchemy.pool import NullPool

from savegame.errors import CorruptSessionError
from savegame.storage.base import Storage
from savegame.storage.files import FileStorage
from savegame.storage.in_memory import InMemoryStorage
from savegame.storage.json import JsonStorage
from savegame.storage.session import MODES
from savegame.storage.yaml import YamlStorage
from savegame.testing import LossyLink, Store
from tests.lossy_proxy import LossyProxy, lossy_link


def unique(prefix: str = "t") -> str:
    """A name no other test run uses: for tables, schemas, key prefixes."""
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:10]}"


def require_service(name: str, variable: str, default: str, probe: Callable[[str], Any]) -> str:
    """The server's URL, after checking it answers; skips (or fails under CI) when it doesn't."""
    url = os.environ.get(variable, default)
    try:
        probe(url)
    except Exception as exc:
        missing_service(
            f"{name} is not reachable at {url} ({type(exc).__name__}: {exc}); "
            f"start one or set {variable} to the URL of one"
        )
    return url


def missing_service(message: str) -> NoReturn:
    """Skips the test for want of a server, or fails it under ``SAVEGAME_REQUIRE_SERVICES=1``."""
    if os.environ.get("SAVEGAME_REQUIRE_SERVICES") == "1":
        pytest.fail(message + " (SAVEGAME_REQUIRE_SERVICES=1: servers are required)")
    pytest.skip(message)


@dataclass
class Backend:
    """How to make a fresh, isolated store of one backend.

    ``make(tmp_path, mode)`` is a context manager yielding a :class:`Store` and removing its
    namespace afterwards.
    """

    name: str
    make: Callable[[Path, str], Any]


@contextmanager
def _memory(tmp_path: Path, mode: str) -> Iterator[Store]:
    shared: dict[str, Any] = {}

    def opener(mode: str, **options: Any) -> Storage:
        return InMemoryStorage(mode=mode, storage_dict=shared, **options)  # type: ignore[arg-type]

    def original(rows: list[dict[str, Any]]) -> None:
        shared.update({row["session_id"]: dict(row) for row in rows})

    def spoiler(field: str) -> Callable[[Storage, str, Any], None]:
        def spoil(storage: Storage, session_id: str, text: Any) -> None:
            shared[session_id][field] = text

        return spoil

    store = Store(
        "memory",
        mode,
        opener,
        original=original,
        spoil_number={field: spoiler(field) for field in TIMES_AND_VERSION},
        spoil_text={field: spoiler(field) for field in MODES[mode].plain_fields},
    )
    yield store
    store.close_all()


def _files(name: str, storage_class: type[FileStorage]) -> Callable[[Path, str], Any]:
    @contextmanager
    def make(tmp_path: Path, mode: str) -> Iterator[Store]:
        folder = tmp_path / f"{name}-store"

        def opener(mode: str, **options: Any) -> Storage:
            return storage_class(folder, mode=mode, **options)  # type: ignore[arg-type]

        def neighbour(mode: str, **options: Any) -> Storage:
            return storage_class(folder / "sub", mode=mode, **options)  # type: ignore[arg-type]

        def original(rows: list[dict[str, Any]]) -> None:
            folder.mkdir(parents=True, exist_ok=True)
            for row in rows:
                text = json.dumps(row) if name == "json" else yaml.safe_dump(row)
                (folder / f"{row['session_id']}.{name}").write_text(text, encoding="utf-8")

        def spoiler(field: str) -> Callable[[Storage, str, Any], None]:
            def spoil(storage: Storage, session_id: str, text: Any) -> None:
                assert isinstance(storage, FileStorage)
                path = storage._path(session_id)
                load, dump = (
                    (json.loads, json.dumps) if name == "json" else (yaml.safe_load, yaml.safe_dump)
                )
                record = load(path.read_text(encoding="utf-8"))
                record[field] = text
                path.write_text(dump(record), encoding="utf-8")

            return spoil

        def spoil_json(storage: Storage, session_id: str, text: str) -> None:
            assert isinstance(storage, FileStorage)
            path = storage._path(session_id)
            if name == "json":
                record = json.loads(path.read_text(encoding="utf-8"))
                record["session_data"] = _SPOILT
                dumped, quoted = json.dumps(record), json.dumps(_SPOILT)
            else:
                record = yaml.safe_load(path.read_text(encoding="utf-8"))
                record["session_data"] = _SPOILT
                dumped, quoted = yaml.safe_dump(record), f"session_data: {_SPOILT}"
                text = f"session_data: {text}"
            path.write_text(_with_json(dumped, quoted, text), encoding="utf-8")

        store = Store(
            name,
            mode,
            opener,
            url=f"{name}:///{folder}",
            original=original,
            spoil_number={field: spoiler(field) for field in TIMES_AND_VERSION},
            spoil_text={field: spoiler(field) for field in MODES[mode].plain_fields},
            spoil_json=spoil_json,
            neighbour=neighbour,
        )
        yield store
        store.close_all()

    return make


def redis_client(server: str) -> Any:
    """A plain redis-py client of a test server or cluster, for writing keys directly."""
    import redis
    from redis.cluster import ClusterNode, RedisCluster

    if server.startswith("redis+cluster://"):
        netloc = server.split("://", 1)[1].split("/")[0].split("?")[0]
        nodes = [ClusterNode(h, int(p)) for h, p in (n.rsplit(":", 1) for n in netloc.split(","))]
        return RedisCluster(startup_nodes=nodes)
    return redis.Redis.from_url(server)


def drop_redis(prefix: str, server: str, *others: str) -> None:
    """Drops the Redis stores ``prefix`` (and ``others``), each in the mode it keeps, which
    only a storage of that mode may drop; through one client, whose making (a cluster
    client's reads every command the server knows) costs more than a drop."""
    from savegame.storage.redis import RedisStorage

    client = redis_client(server)
    try:
        for each in (prefix, *others):
            mode = client.get("{" + each + "}:mode")
            opener = partial(RedisStorage, each, client=client)
            if mode is None:
                # An earlier savegame's store records none: it is its sessions' mode.
                drop_in_its_mode(opener)
                continue
            with opener(mode=mode.decode()) as storage:
                storage.drop()
    finally:
        client.close()


@contextmanager
def through_proxy(
    address: tuple[str, int],
    make: Callable[[str, int], Storage],
    marker: bytes,
    reply: bytes = b"",
    after: bytes = b"",
) -> Iterator[LossyLink]:
    """A :class:`LossyLink` of a storage reaching the server at ``address`` through a
    :class:`LossyProxy` and another reaching it directly; ``make(host, port)`` opens a
    storage of the store at an address. ``marker``, ``reply``, ``after``: see
    :meth:`LossyProxy.lose_reply_to`."""
    with LossyProxy(*address) as proxy:
        storage, other = make("127.0.0.1", proxy.port), make(*address)
        with lossy_link(proxy, storage, other, marker, reply, after) as link:
            yield link


@contextmanager
def redis_through_proxy(
    server: str, make: Callable[[str, int, int], Storage]
) -> Iterator[LossyLink]:
    """:func:`through_proxy` for the standalone Redis server at URL ``server``, losing the
    reply to the write script; ``make(host, port, db)`` opens a storage of the store."""
    db = int(urlsplit(server).path.strip("/") or 0)
    at = _address(server, 6379)
    with through_proxy(at, lambda host, port: make(host, port, db), b"EVALSHA") as link:
        yield link


def _redis(name: str, cluster: bool, shards: int = 1) -> Callable[[Path, str], Any]:
    @contextmanager
    def make(tmp_path: Path, mode: str) -> Iterator[Store]:
        from savegame.storage.redis import RedisStorage
        from tests.redis_servers import server_url

        server = server_url(cluster)
        prefix = unique("sg")

        def opener(mode: str, **options: Any) -> Storage:
            return RedisStorage(prefix, url=server, mode=mode, shards=shards, **options)  # type: ignore[arg-type]

        def neighbour(mode: str, **options: Any) -> Storage:
            return RedisStorage(f"{prefix}:sub", url=server, mode=mode, shards=shards, **options)  # type: ignore[arg-type]

        def original(rows: list[dict[str, Any]]) -> None:
            client = redis_client(server)
            try:
                for row in rows:
                    client.set(f"{prefix}:{row['session_id']}", json.dumps(row))
            finally:
                client.close()

        @contextmanager
        def lossy() -> Iterator[LossyLink]:
            if cluster:
                with _lossy_cluster_link() as link:
                    yield link
                return

            def at(host: str, port: int, db: int) -> Storage:
                return RedisStorage(prefix, url=f"redis://{host}:{port}/{db}")

            with redis_through_proxy(server, at) as link:
                yield link

        store = Store(
            name,
            mode,
            opener,
            url=f"{server}?prefix={prefix}&shards={shards}",
            original=original,
            lossy=lossy,
            lose_runs=lose_redis_runs,
            lose_run=lose_redis_run,
            change_run=change_redis_run,
            spoil_number=REDIS_NUMBERS,
            spoil_text={f"data {f}": _spoil_redis_data(f) for f in MODES[mode].plain_fields},
            spoil_json=spoil_redis_json,
            neighbour=neighbour,
        )
        try:
            yield store
        finally:
            store.close_all()
            drop_redis(prefix, server, f"{prefix}:sub")

    return make


@contextmanager
def _lossy_cluster_link() -> Iterator[LossyLink]:
    """A link on a cluster of its own, whose nodes clients reach through lossy proxies
    (:func:`tests.redis_servers.lossy_cluster`): the conformance cluster has none."""
    from savegame.storage.redis import RedisStorage
    from tests.redis_servers import lossy_cluster_url

    try:
        url, proxies = lossy_cluster_url()
    except RuntimeError as exc:
        missing_service(f"{exc}; install redis-server and redis-cli to run this test")
    prefix = unique("sgl")
    client = redis_client(url)
    try:
        proxy = proxies[client.get_node_from_key(f"{{{prefix}}}:h:c").port]
    finally:
        client.close()
    storage, other = RedisStorage(prefix, url=url), RedisStorage(prefix, url=url)
    try:
        with lossy_link(proxy, storage, other, b"EVALSHA") as link:
            yield link
    finally:
        with RedisStorage(prefix, url=url) as cleanup:
            cleanup.drop()


def lose_sql_runs(storage: Storage, session_id: str) -> None:
    """Deletes a session's rows from its storage's runs table, behind savegame's back."""
    from sqlalchemy import delete

    from savegame.storage.sql import SqlStorage

    assert isinstance(storage, SqlStorage)
    runs = storage.runs_table
    with storage.db_engine.begin() as conn:
        conn.execute(delete(runs).where(runs.c.session_id == session_id))


def lose_sql_run(storage: Storage, session_id: str, position: int) -> None:
    """Deletes one row of a session's runs, behind savegame's back."""
    from sqlalchemy import delete

    from savegame.storage.sql import SqlStorage

    assert isinstance(storage, SqlStorage)
    runs = storage.runs_table
    with storage.db_engine.begin() as conn:
        conn.execute(
            delete(runs).where(runs.c.session_id == session_id, runs.c.position == position)
        )


def null_sql_run(storage: Storage, session_id: str, position: int) -> None:
    """Sets the text of one of a session's runs to NULL, its digest left as it was, behind
    savegame's back."""
    from sqlalchemy import update

    from savegame.storage.sql import SqlStorage

    assert isinstance(storage, SqlStorage)
    runs = storage.runs_table
    with storage.db_engine.begin() as conn:
        conn.execute(
            update(runs)
            .where(runs.c.session_id == session_id, runs.c.position == position)
            .values(run=None)
        )


def change_sql_run(storage: Storage, session_id: str, position: int, run: Any) -> None:
    """Changes the text of one of a session's runs as the README says to change a session
    by hand: its digest left as it was, the header's write token cleared in the same
    transaction."""
    from sqlalchemy import update

    from savegame.storage.sql import SqlStorage

    assert isinstance(storage, SqlStorage)
    runs, header = storage.runs_table, storage.table
    with storage.db_engine.begin() as conn:
        conn.execute(
            update(runs)
            .where(runs.c.session_id == session_id, runs.c.position == position)
            .values(run=json.dumps(run))
        )
        conn.execute(
            update(header).where(header.c.session_id == session_id).values(write_token=None)
        )


def change_redis_run(storage: Storage, session_id: str, position: int, run: Any) -> None:
    """Changes one of a session's runs as the README says to change a session by hand: its
    digest left as it was, the header's token removed in the same transaction."""
    from savegame.storage.redis import RedisStorage

    assert isinstance(storage, RedisStorage)
    tag = storage._tag(session_id)

    def change(client: Any) -> None:
        pipe = client.pipeline(transaction=True)
        pipe.lset(f"{tag}r:{session_id}", position, json.dumps(run))
        pipe.hdel(f"{tag}h:{session_id}", "token")
        pipe.execute()

    storage._call(change)


_SPOILT = "SPOILT-BY-HAND"
"""A value put where :func:`_with_json` puts JSON text: its dumped form is then replaced."""


def _with_json(dumped: str, quoted: str, text: str) -> str:
    """``dumped`` (a record whose ``session_data`` is :data:`_SPOILT`, written as ``quoted``
    by its format) with ``text`` in its place."""
    assert dumped.count(quoted) == 1
    return dumped.replace(quoted, text)


def spoil_sql_json(storage: Storage, session_id: str, text: str) -> None:
    """Writes JSON ``text`` as it stands in a session's ``session_data`` column, clearing
    its write token in the same transaction, as the README says to change a session by
    hand."""
    from sqlalchemy import Text, bindparam, cast, update
    from sqlalchemy.dialects.postgresql import JSONB

    from savegame.storage.sql import SqlStorage

    assert isinstance(storage, SqlStorage)
    value: Any = bindparam("data", text, type_=Text)
    if storage.db_engine.dialect.name == "postgresql":
        value = cast(value, JSONB)
    header = storage.table
    with storage.db_engine.begin() as conn:
        conn.execute(
            update(header)
            .where(header.c.session_id == session_id)
            .values(session_data=value, write_token=None)
        )


def spoil_redis_json(storage: Storage, session_id: str, text: str) -> None:
    """Writes JSON ``text`` as it stands as a session's ``session_data`` in its header's
    data, removing the header's token in the same transaction (as a change by hand must)."""
    from savegame.storage.redis import RedisStorage

    assert isinstance(storage, RedisStorage)
    key = f"{storage._tag(session_id)}h:{session_id}"
    data = json.loads(storage._call(methodcaller("hget", key, "data")))
    data["session_data"] = _SPOILT
    spoilt = _with_json(json.dumps(data), json.dumps(_SPOILT), text)

    def change(client: Any) -> None:
        pipe = client.pipeline(transaction=True)
        pipe.hset(key, "data", spoilt)
        pipe.hdel(key, "token")
        pipe.execute()

    storage._call(change)


def lose_redis_run(storage: Storage, session_id: str, position: int) -> None:
    """Removes one run from a session's list, the runs after it moving up one place."""
    from savegame.storage.redis import RedisStorage

    assert isinstance(storage, RedisStorage)
    key = f"{storage._tag(session_id)}r:{session_id}"
    marker = "\x00lost"
    storage._call(methodcaller("lset", key, position, marker))
    storage._call(methodcaller("lrem", key, 1, marker))


def lose_redis_runs(storage: Storage, session_id: str) -> None:
    """Deletes a session's list of runs, as a cache evicting keys would."""
    from savegame.storage.redis import RedisStorage

    assert isinstance(storage, RedisStorage)
    key = f"{storage._tag(session_id)}r:{session_id}"
    storage._call(methodcaller("delete", key))


TIMES_AND_VERSION = ("version", "created_at", "updated_at", "expires_at")
"""The numbers every backend keeps with a session."""


def _spoil_redis_header(field: str) -> Callable[[Storage, str, Any], None]:
    """Writes text in place of a number among the fields of a session's header."""

    def spoil(storage: Storage, session_id: str, text: Any) -> None:
        from savegame.storage.redis import RedisStorage

        assert isinstance(storage, RedisStorage)
        key = f"{storage._tag(session_id)}h:{session_id}"
        storage._call(methodcaller("hset", key, field, text))

    return spoil


def _spoil_redis_data(field: str) -> Callable[[Storage, str, Any], None]:
    """Writes text in place of a number in the JSON of a session's header."""

    def spoil(storage: Storage, session_id: str, text: Any) -> None:
        from savegame.storage.redis import RedisStorage

        assert isinstance(storage, RedisStorage)
        key = f"{storage._tag(session_id)}h:{session_id}"
        data = json.loads(storage._call(methodcaller("hget", key, "data")))
        data[field] = text
        storage._call(methodcaller("hset", key, "data", json.dumps(data)))

    return spoil


REDIS_NUMBERS = {
    **{f"header {f}": _spoil_redis_header(f) for f in ("version", "created_at", "expires_at")},
    "header runs": _spoil_redis_header("runs"),
    **{f"data {f}": _spoil_redis_data(f) for f in TIMES_AND_VERSION},
}


def _spoil_sql(column: str) -> Callable[[Storage, str, Any], None]:
    """Writes text in place of a number in a session's header row (SQLite keeps it)."""

    def spoil(storage: Storage, session_id: str, text: Any) -> None:
        from sqlalchemy import update

        from savegame.storage.sql import SqlStorage

        assert isinstance(storage, SqlStorage)
        header = storage.table
        with storage.db_engine.begin() as conn:
            conn.execute(
                update(header).where(header.c.session_id == session_id).values({column: text})
            )

    return spoil


def _sqlite(in_memory: bool) -> Callable[[Path, str], Any]:
    @contextmanager
    def make(tmp_path: Path, mode: str) -> Iterator[Store]:
        from savegame.storage.sqlite import SqliteStorage, make_engine

        table = unique("sessions")
        path = tmp_path / "sqlite-store" / "sessions.db"
        engine = make_engine("sqlite://") if in_memory else None

        def opener(mode: str, **options: Any) -> Storage:
            return opened(table, mode, **options)

        def neighbour(mode: str, **options: Any) -> Storage:
            return opened(f"{table}_sub", mode, **options)

        def opened(table: str, mode: str, **options: Any) -> Storage:
            if engine is not None:
                return SqliteStorage(table, db_engine=engine, mode=mode, **options)  # type: ignore[arg-type]
            return SqliteStorage(table, db_file=path, mode=mode, **options)  # type: ignore[arg-type]

        url = None if in_memory else f"sqlite:///{path}?table={table}"

        def original(rows: list[dict[str, Any]]) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_original_table(engine or f"sqlite:///{path}", table, None, rows)

        name = "sqlite-memory" if in_memory else "sqlite-file"
        store = Store(
            name,
            mode,
            opener,
            url=url,
            original=original,
            lose_runs=lose_sql_runs,
            lose_run=lose_sql_run,
            null_run=null_sql_run,
            change_run=change_sql_run,
            spoil_number={c: _spoil_sql(c) for c in (*TIMES_AND_VERSION, "run_count")},
            spoil_json=spoil_sql_json,
            neighbour=neighbour,
        )
        try:
            yield store
        finally:
            store.close_all()
            if engine is not None:
                engine.dispose()

    return make


def write_original_table(
    engine_or_url: Any, table: str, schema: str | None, rows: list[dict[str, Any]]
) -> None:
    """Makes the original library's agent table and fills it, as the original would have."""
    from sqlalchemy import JSON, BigInteger, Column, MetaData, String, Table, create_engine, text
    from sqlalchemy.dialects.postgresql import JSONB

    json_type = JSON().with_variant(JSONB(), "postgresql")
    original = Table(
        table,
        MetaData(schema=schema),
        Column("session_id", String(255), primary_key=True),
        Column("user_id", String(255), index=True),
        Column("memory", json_type),
        Column("session_data", json_type),
        Column("extra_data", json_type),
        Column("created_at", BigInteger),
        Column("updated_at", BigInteger),
        Column("agent_id", String(255), index=True),
        Column("team_session_id", String(255)),
        Column("agent_data", json_type),
    )
    owned = isinstance(engine_or_url, str)
    engine = create_engine(engine_or_url) if owned else engine_or_url
    try:
        with engine.begin() as conn:
            if schema is not None:
                conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            original.create(conn)
            conn.execute(original.insert(), rows)
    finally:
        if owned:
            engine.dispose()


POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/test"


def _probe_sql(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def postgres_url() -> str:
    """The test PostgreSQL server's URL (skips or fails when it does not answer)."""
    return require_service("PostgreSQL", "SAVEGAME_TEST_POSTGRES_URL", POSTGRES_URL, _probe_sql)


def mysql_url() -> str:
    """The test MySQL/MariaDB server's URL (skips or fails when it does not answer)."""
    return require_service("MySQL", "SAVEGAME_TEST_MYSQL_URL", MYSQL_URL, _probe_sql)


@contextmanager
def mysql_packet_limit(server: str) -> Iterator[int]:
    """The MySQL server's max_allowed_packet, held still while the caller runs: one test
    raises it for a moment, and the server may be shared with other runs of the suite, so
    every test that reads or changes it holds a server-wide lock. Skips above 64 MB, as the
    values of about that size these tests send would be too large here."""
    from sqlalchemy import create_engine, text

    engine = create_engine(server, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            taken = conn.execute(text("SELECT GET_LOCK(:name, 600)"), {"name": _PACKET_LOCK})
            assert taken.scalar_one() == 1, "another run held max_allowed_packet for 10 minutes"
            try:
                limit = int(conn.execute(text("SELECT @@global.max_allowed_packet")).scalar_one())
                if limit > 64 << 20:
                    pytest.skip(
                        f"max_allowed_packet is {limit} bytes here; the test needs 64 MB or less"
                    )
                yield limit
            finally:
                conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": _PACKET_LOCK})
    finally:
        engine.dispose()


_PACKET_LOCK = "savegame_tests_max_allowed_packet"


def _address(server: str, default_port: int) -> tuple[str, int]:
    url = make_url(server)
    return url.host or "127.0.0.1", url.port or default_port


@contextmanager
def _postgres(tmp_path: Path, mode: str) -> Iterator[Store]:
    from sqlalchemy import create_engine, text

    from savegame.storage.postgres import PostgresStorage

    server = postgres_url()
    schema = unique("sg")

    def opener(mode: str, **options: Any) -> Storage:
        return PostgresStorage("sessions", schema=schema, db_url=server, mode=mode, **options)  # type: ignore[arg-type]

    def neighbour(mode: str, **options: Any) -> Storage:
        return PostgresStorage("sessions_sub", schema=schema, db_url=server, mode=mode, **options)  # type: ignore[arg-type]

    def original(rows: list[dict[str, Any]]) -> None:
        write_original_table(server, "sessions", schema, rows)

    def at(host: str, port: int) -> Storage:
        url = make_url(server).set(host=host, port=port).render_as_string(hide_password=False)
        return PostgresStorage("sessions", schema=schema, db_url=url)

    def lossy() -> AbstractContextManager[LossyLink]:
        # psycopg may still be reading earlier replies: lose the one that reports the commit.
        return through_proxy(_address(server, 5432), at, b"COMMIT", reply=b"COMMIT\x00")

    store = Store(
        "postgres",
        mode,
        opener,
        url=f"{server}?schema={schema}&table=sessions",
        original=original,
        lossy=lossy,
        lose_runs=lose_sql_runs,
        lose_run=lose_sql_run,
        null_run=null_sql_run,
        change_run=change_sql_run,
        spoil_json=spoil_sql_json,
        neighbour=neighbour,
    )
    try:
        yield store
    finally:
        store.close_all()
        engine = create_engine(server)
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@contextmanager
def _mysql(tmp_path: Path, mode: str) -> Iterator[Store]:
    from sqlalchemy import create_engine

    from savegame.storage.mysql import MySQLStorage

    server = mysql_url()
    table = unique("sg")

    def opener(mode: str, **options: Any) -> Storage:
        return MySQLStorage(table, db_url=server, mode=mode, **options)  # type: ignore[arg-type]

    def neighbour(mode: str, **options: Any) -> Storage:
        return MySQLStorage(f"{table}_sub", db_url=server, mode=mode, **options)  # type: ignore[arg-type]

    def original(rows: list[dict[str, Any]]) -> None:
        write_original_table(server, table, None, rows)

    def at(host: str, port: int) -> Storage:
        url = make_url(server).set(host=host, port=port).render_as_string(hide_password=False)
        return MySQLStorage(table, db_url=url)

    def lossy() -> AbstractContextManager[LossyLink]:
        # The read before the write commits too: lose the commit that follows the write.
        return through_proxy(_address(server, 3306), at, b"COMMIT", after=b"UPDATE ")

    store = Store(
        "mysql",
        mode,
        opener,
        url=f"{server}?table={table}",
        original=original,
        lossy=lossy,
        lose_runs=lose_sql_runs,
        lose_run=lose_sql_run,
        null_run=null_sql_run,
        change_run=change_sql_run,
        neighbour=neighbour,
    )
    try:
        yield store
    finally:
        store.close_all()
        # One engine for both: making one (its connection and the dialect's first queries)
        # costs more than a drop.
        engine = create_engine(server)
        try:
            for name in (table, f"{table}_sub"):
                drop_in_its_mode(partial(MySQLStorage, name, db_engine=engine))
        finally:
            engine.dispose()


def drop_in_its_mode(opener: Callable[..., Storage]) -> None:
    """Drops a test's SQL table whatever the mode of its sessions (a test may have made it in
    another mode than its store's): a storage of another mode drops nothing."""
    for mode in MODES:
        with opener(mode=mode) as storage:
            try:
                storage.drop()
            except CorruptSessionError:
                continue
            return


BACKENDS: list[Backend] = [
    Backend("memory", _memory),
    Backend("json", _files("json", JsonStorage)),
    Backend("yaml", _files("yaml", YamlStorage)),
    Backend("sqlite-file", _sqlite(in_memory=False)),
    Backend("sqlite-memory", _sqlite(in_memory=True)),
    Backend("postgres", _postgres),
    Backend("mysql", _mysql),
    Backend("redis", _redis("redis", cluster=False)),
    # The cluster store spreads over 3 slots, so its sessions live on different masters.
    Backend("redis-cluster", _redis("redis-cluster", cluster=True, shards=3)),
]


def backend_params() -> list[Any]:
    """pytest params for every backend, each marked with its name."""
    return [pytest.param(b, id=b.name) for b in BACKENDS]
