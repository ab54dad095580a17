"""What is particular to the Redis backend: key layout, prefixes, TTL, URLs and faults.

Runs against the Redis server of ``SAVEGAME_TEST_REDIS_URL`` and against a 3-master cluster
(see ``tests/redis_servers.py``); each test works under a prefix of its own and drops it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from operator import methodcaller
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from filelock import FileLock
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

import savegame.storage.redis as redis_backend
from savegame.errors import (
    BackendUnavailableError,
    CorruptSessionError,
    InvalidIdentifierError,
    SerializationError,
    StorageError,
)
from savegame.storage import redis as redis_module
from savegame.storage.known import PAST_TOKENS
from savegame.storage.redis import RedisStorage, from_url
from savegame.storage.session.agent import AgentSession
from savegame.storage.session.team import TeamSession
from savegame.storage.url import open_storage, parse_url
from savegame.testing.contract import check_lost_reply, in_threads
from tests.redis_servers import (
    own_cluster,
    plain_server,
    restartable_server,
    server_url,
    tls_cluster,
    tls_server,
)
from tests.stores import (
    drop_redis,
    missing_service,
    redis_client,
    redis_through_proxy,
    unique,
)

T = TypeVar("T")


@pytest.fixture(params=[False, True], ids=["redis", "redis-cluster"])
def server(request: pytest.FixtureRequest) -> str:
    """The URL of a standalone server, then of a cluster."""
    return server_url(request.param)


@pytest.fixture
def raw(server: str) -> Iterator[Any]:
    """A plain redis-py client of the same server, for looking at keys directly."""
    client = redis_client(server)
    yield client
    client.close()


@pytest.fixture
def prefix(server: str) -> Iterator[str]:
    """A prefix of this test's own, with everything under it (and ``:sub``) dropped after."""
    name = unique("sgt")
    yield name
    drop_redis(name, server, name + ":sub")


def _runs(n: int, tag: str = "") -> list[dict[str, Any]]:
    return [{"run_id": str(i), "content": f"turn {i}{tag}"} for i in range(n)]


def _session(sid: str, runs: Any = None, **fields: Any) -> AgentSession:
    memory = None if runs is None else {"runs": runs, "summary": "s"}
    return AgentSession(session_id=sid, memory=memory, **fields)


def _members(raw: Any, key: str) -> list[str]:
    return [m.decode() for m in raw.zrange(key, 0, -1)]


def test_key_layout_is_as_documented(server: str, raw: Any, prefix: str) -> None:
    storage = RedisStorage(prefix, url=server)
    storage.upsert(_session("s/1", _runs(3), user_id="u", agent_id="a", created_at=10))
    tag = "{" + prefix + "}:"
    header = raw.hgetall(f"{tag}h:s/1")
    assert set(header) == {b"data", b"version", b"created_at", b"runs", b"token", b"past"}
    assert header[b"past"] == b""
    first = header[b"token"]
    for _ in range(9):
        storage.upsert(_session("s/1", _runs(3), user_id="u", agent_id="a", created_at=10))
    past = raw.hget(f"{tag}h:s/1", "past")
    assert len(past) == 8 * 16
    assert first not in past  # the 10th write back is forgotten
    assert b'"runs":null' in header[b"data"]  # the runs' place among memory's keys
    assert b"run_id" not in header[b"data"]
    assert header[b"runs"] == b"3"
    assert raw.llen(f"{tag}r:s/1") == 3
    assert raw.strlen(f"{tag}d:s/1") == 3 * 32
    keys = [f"{tag}{k}" for k in ("all", "u:u", "e:a", "ue:1:ua")]
    for key in keys:
        assert _members(raw, key) == ["s/1"]
        assert raw.zscore(key, "s/1") == -10
    assert raw.hget(f"{tag}idx", "s/1").split(b"\x00") == [k.encode() for k in keys[1:]]
    session_keys = [f"{tag}{kind}:s/1" for kind in "hrd"]
    slots = {key_slot(key.encode()) for key in [*keys, *session_keys, f"{tag}idx", f"{tag}exp"]}
    assert len(slots) == 1


def _blake2b(text: bytes, size: int) -> str:
    return hashlib.blake2b(text, digest_size=size).hexdigest()


def test_each_run_has_a_128_bit_digest(server: str, raw: Any, prefix: str) -> None:
    storage = RedisStorage(prefix, url=server)
    storage.upsert(_session("s", _runs(3)))
    tag = "{" + prefix + "}:"
    _check_digests(raw, tag, "s")
    storage.close()


def _as_before_digests_widened(raw: Any, tag: str, sid: str, runs: Any = None) -> None:
    """Stores ``runs`` (when given) and digests as savegame wrote them with 64-bit digests,
    under a new token: what a process not yet upgraded leaves after its write."""
    key = f"{tag}r:{sid}"
    if runs is not None:
        for i, run in enumerate(runs):
            raw.lset(key, i, json.dumps(run))
    raw.set(f"{tag}d:{sid}", "".join(_blake2b(t, 8) for t in raw.lrange(key, 0, -1)))
    raw.hset(f"{tag}h:{sid}", "token", secrets.token_hex(8))


def _check_digests(raw: Any, tag: str, sid: str) -> None:
    texts = raw.lrange(f"{tag}r:{sid}", 0, -1)
    assert (raw.get(f"{tag}d:{sid}") or b"").decode() == "".join(_blake2b(t, 16) for t in texts)


def _stored_runs(storage: RedisStorage, sid: str) -> Any:
    got = storage.read(sid)
    assert got is not None
    assert got.memory is not None
    return got.memory["runs"]


@pytest.mark.parametrize("count", [0, 1, 4])
def test_sessions_with_digests_of_the_legacy_width_read_and_save_exactly(
    server: str, raw: Any, prefix: str, count: int
) -> None:
    # Sessions stored before digests were widened carry 16 characters per run, which match
    # no digest of today's: reads take the runs as stored, and remember none of them.
    tag = "{" + prefix + "}:"
    runs = _runs(count)
    writer = RedisStorage(prefix, url=server)
    writer.upsert(_session("s", runs, user_id="u"))
    _as_before_digests_widened(raw, tag, "s")

    # A save that changes no run still leaves every run with a digest of today's width.
    reader = RedisStorage(prefix, url=server)
    got = reader.read("s")
    assert got is not None
    got.session_data = {"name": "renamed"}
    reader.upsert(got)
    _check_digests(raw, tag, "s")
    fresh = RedisStorage(prefix, url=server).read("s")
    assert fresh is not None
    assert fresh.memory == {"runs": runs, "summary": "s"}
    assert fresh.session_data == {"name": "renamed"}

    # A storage that has not seen the session adds a run.
    _as_before_digests_widened(raw, tag, "s")
    runs.append({"run_id": "new"})
    RedisStorage(prefix, url=server).upsert(_session("s", runs, user_id="u"))
    _check_digests(raw, tag, "s")
    assert _stored_runs(RedisStorage(prefix, url=server), "s") == runs

    # A process not yet upgraded changes the first run of a session another has read.
    _as_before_digests_widened(raw, tag, "s")
    assert _stored_runs(reader, "s") == runs
    runs[0] = {"run_id": "0", "content": "edited"}
    _as_before_digests_widened(raw, tag, "s", runs[:1])
    assert _stored_runs(reader, "s") == runs
    assert _stored_runs(reader, "s") == runs
    assert [s.memory for s in reader.get_all_sessions(user_id="u")] == [
        {"runs": runs, "summary": "s"}
    ]
    # The first writer, which remembers the runs with digests of today's width, too.
    assert _stored_runs(writer, "s") == runs
    for each in (writer, reader):
        each.close()


def test_a_save_writes_only_new_and_changed_runs(server: str, raw: Any, prefix: str) -> None:
    storage = RedisStorage(prefix, url=server)
    runs = _runs(3)
    storage.upsert(_session("s", runs))
    key = "{" + prefix + "}:r:s"
    # A marker the storage could only keep by not rewriting run 0.
    raw.lset(key, 0, '{"marker":true}')
    runs[2] = {"run_id": "2", "content": "edited"}
    storage.upsert(_session("s", [*runs, {"run_id": "3"}]))
    assert raw.lindex(key, 0) == b'{"marker":true}'
    # A storage that remembers the session trusts its own copy while the token is the same:
    # the marker, written behind savegame's back, shows to a storage that does not.
    got = RedisStorage(prefix, url=server).read("s")
    assert got is not None
    assert got.memory["runs"] == [{"marker": True}, runs[1], runs[2], {"run_id": "3"}]
    storage.upsert(_session("s", runs[:1]))
    assert raw.llen(key) == 1
    assert raw.strlen("{" + prefix + "}:d:s") == 32
    storage.upsert(_session("s", "inline text"))
    assert raw.exists(key, "{" + prefix + "}:d:s") == 0
    got = storage.read("s")
    assert got is not None
    assert got.memory == {"runs": "inline text", "summary": "s"}


def test_a_read_fetches_only_the_runs_the_reader_does_not_remember(
    server: str, raw: Any, prefix: str
) -> None:
    reader, writer = RedisStorage(prefix, url=server), RedisStorage(prefix, url=server)
    runs = _runs(3)
    writer.upsert(_session("s", runs))
    assert reader.read("s") is not None  # now remembered
    # Another text under the same digest: only a storage that fetches the run can see it.
    raw.lset("{" + prefix + "}:r:s", 0, '{"marker":true}')
    writer.upsert(_session("s", [*runs, {"run_id": "3"}]))
    got = reader.read("s")
    assert got is not None
    assert got.memory["runs"] == [*runs, {"run_id": "3"}]
    fresh = RedisStorage(prefix, url=server).read("s")
    assert fresh is not None
    assert fresh.memory["runs"][0] == {"marker": True}


def test_a_purge_reads_headers_and_never_a_run_key(server: str, raw: Any, prefix: str) -> None:
    """A purge judges each session by its header: with the keys of every session's runs
    and digests made hashes by hand, which any command on runs (LLEN, LRANGE, STRLEN)
    refuses (WRONGTYPE) and any read of the session therefore fails on, it still finds the
    stale sessions, removes them, keys and all, and says no session is damaged."""
    from savegame import transfer

    writer = RedisStorage(prefix, url=server)
    tag = "{" + prefix + "}:"
    for sid, updated in (("old", 1000), ("older", 500), ("new", None)):
        writer.restore(_session(sid, _runs(50), created_at=100, updated_at=updated))
        for kind in "rd":
            raw.delete(f"{tag}{kind}:{sid}")
            raw.hset(f"{tag}{kind}:{sid}", "not", "runs")
    storage = RedisStorage(prefix, url=server)
    with pytest.raises(CorruptSessionError):
        storage.read("old")
    assert transfer.stale_sessions(storage, 3600) == ["old", "older"]
    damaged: list[str] = []
    assert transfer.purge(storage, 3600, dry_run=True, damaged=damaged) == ["old", "older"]
    assert sorted(transfer.purge(storage, 3600, damaged=damaged)) == ["old", "older"]
    assert damaged == []
    for sid in ("old", "older"):
        assert raw.exists(*(f"{tag}{kind}:{sid}" for kind in "hrd")) == 0
    assert storage.get_all_session_ids() == ["new"]
    assert raw.type(f"{tag}r:new") == b"hash"


def test_a_prefix_never_sees_or_drops_a_longer_one(server: str, prefix: str) -> None:
    outer = RedisStorage(prefix, url=server)
    inner = RedisStorage(prefix + ":sub", url=server)
    outer.upsert(_session("mine", user_id="u"))
    inner.upsert(_session("theirs", user_id="u"))
    assert outer.get_all_session_ids() == ["mine"]
    assert outer.get_all_session_ids(user_id="u") == ["mine"]
    assert outer.read("theirs") is None
    assert outer.delete_user("u") == 1
    outer.upsert(_session("again"))
    outer.drop()
    assert outer.get_all_session_ids() == []
    assert inner.get_all_session_ids(user_id="u") == ["theirs"]
    assert inner.read("theirs") is not None


@pytest.mark.parametrize("bad", ["", "a b", "{tag}", "a*", "ü", "x}y", "-x", 7, "p" * 201])
def test_prefixes_are_checked(bad: Any) -> None:
    with pytest.raises(InvalidIdentifierError, match="at most 200 characters"):
        RedisStorage(bad)


def test_a_write_whose_stamp_is_a_second_after_the_call_lives_no_longer_than_expire(
    server: str, raw: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The call reads the clock at one second, the stamp at the next: the keys were given
    # expire + 1 seconds, from the call's time to the stamp's expiry.
    import savegame.storage.base as base

    start = int(time.time())
    seconds = iter([start, *[start + 1] * 10])
    monkeypatch.setattr(base, "_now", lambda: next(seconds))
    storage = RedisStorage(prefix, url=server, expire=60)
    storage.upsert(AgentSession(session_id="s", memory={"runs": [{"run_id": "r"}]}))
    tag = storage._tag("s")
    ttls = [raw.ttl(f"{tag}{kind}:s") for kind in "hrd"]
    assert all(58 < ttl <= 60 for ttl in ttls), ttls
    storage.drop()


def test_sessions_expire_natively_and_purge_cleans_the_indexes(
    server: str, raw: Any, prefix: str
) -> None:
    lasting = RedisStorage(prefix, url=server)
    lasting.upsert(_session("kept", _runs(1), user_id="u"))
    storage = RedisStorage(prefix, url=server, expire=60)
    storage.upsert(_session("long", _runs(2), user_id="u"))
    tag = "{" + prefix + "}:"
    assert 0 < raw.ttl(f"{tag}h:long") <= 60
    assert 0 < raw.ttl(f"{tag}r:long") <= 60
    assert 0 < raw.ttl(f"{tag}d:long") <= 60
    assert raw.ttl(f"{tag}h:kept") == -1
    short = RedisStorage(prefix, url=server, expire=2)
    short.upsert(_session("short", _runs(2), user_id="u", agent_id="a"))
    time.sleep(3.1)
    # Redis removed the data; the index entries wait for a listing or a purge.
    assert raw.exists(f"{tag}h:short", f"{tag}r:short", f"{tag}d:short") == 0
    assert raw.zscore(f"{tag}u:u", "short") is not None
    assert short.purge_expired() == 1
    for key in ("all", "u:u", "e:a", "ue:1:ua", "exp"):
        assert raw.zscore(f"{tag}{key}", "short") is None, key
    assert raw.hget(f"{tag}idx", "short") is None
    assert sorted(storage.get_all_session_ids(user_id="u")) == ["kept", "long"]
    # Writing again without expiry makes a session lasting again.
    lasting.upsert(_session("long", _runs(2), user_id="u"))
    assert raw.ttl(f"{tag}h:long") == -1
    assert raw.ttl(f"{tag}r:long") == -1
    assert raw.ttl(f"{tag}d:long") == -1
    assert raw.zscore(f"{tag}exp", "long") is None


def test_listing_skips_and_removes_expired_entries(server: str, raw: Any, prefix: str) -> None:
    storage = RedisStorage(prefix, url=server, expire=2)
    storage.upsert(_session("gone", user_id="u", created_at=20))
    RedisStorage(prefix, url=server).upsert(_session("kept", user_id="u", created_at=10))
    time.sleep(3.1)
    assert storage.get_recent_sessions(user_id="u", limit=1)[0].session_id == "kept"
    assert _members(raw, "{" + prefix + "}:u:u") == ["kept"]
    assert _members(raw, "{" + prefix + "}:all") == ["kept"]


def test_a_ready_client_is_used_and_left_open(server: str, raw: Any, prefix: str) -> None:
    storage = RedisStorage(prefix, client=raw)
    storage.upsert(_session("c"))
    storage.close()
    assert raw.ping()
    assert RedisStorage(prefix, url=server).read("c") is not None


@pytest.mark.timeout(30)
def test_a_ready_client_on_a_unix_socket_is_named_by_its_path(tmp_path: Path) -> None:
    path = str(tmp_path / "redis.sock")
    client = redis.Redis(unix_socket_path=path, db=2, retry=Retry(NoBackoff(), 0))
    storage = RedisStorage("p", client=client)
    assert f"Redis at unix://{path}?db=2" in repr(storage)
    with pytest.raises(
        BackendUnavailableError, match=f"^Redis at unix://{re.escape(path)}\\?db=2 "
    ):
        storage.read("s")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
def test_a_closed_port_raises_naming_the_address(scheme: str) -> None:
    port = _closed_port()
    storage = RedisStorage("p", url=f"{scheme}://127.0.0.1:{port}/0")
    for call in (storage.create, lambda: storage.read("s"), lambda: storage.upsert(_session("s"))):
        with pytest.raises(BackendUnavailableError, match=f"127.0.0.1:{port}"):
            call()


@pytest.mark.timeout(120)
def test_killed_connections_leave_no_half_written_session(
    server: str, raw: Any, prefix: str
) -> None:
    storage = RedisStorage(prefix, url=server)
    stop = threading.Event()
    outcomes = {"ok": 0, "unavailable": 0}
    failures: list[BaseException] = []

    def write() -> None:
        i = 0
        while not stop.is_set():
            sid = f"s{i % 40}"
            try:
                storage.upsert(_session(sid, _runs(i % 7, f"/{i}"), user_id=f"u{i % 3}"))
                storage.get_all_session_ids(user_id=f"u{i % 3}")
                outcomes["ok"] += 1
            except BackendUnavailableError:
                outcomes["unavailable"] += 1
            except BaseException as exc:
                failures.append(exc)
                return
            i += 1

    worker = threading.Thread(target=write)
    worker.start()
    kills = 0
    try:
        while kills < 40 and worker.is_alive():
            time.sleep(0.02)
            kills += _kill_clients(raw, f"savegame:{prefix}")
    finally:
        stop.set()
        worker.join(60)
    print(f"{kills} connections killed; writes: {outcomes}")
    assert failures == []
    assert kills > 0
    assert outcomes["ok"] > 0
    storage.upsert(_session("after", _runs(2), user_id="u0"))
    assert storage.read("after") is not None
    _check_consistent(raw, prefix)


def _kill_clients(raw: Any, name: str) -> int:
    nodes = raw.get_primaries() if isinstance(raw, RedisCluster) else [None]
    killed = 0
    for node in nodes:
        options = {} if node is None else {"target_nodes": node}
        for client in raw.client_list(**options):
            if client.get("name") == name:
                killed += raw.client_kill_filter(_id=client["id"], **options)
    return killed


def _check_consistent(raw: Any, prefix: str) -> None:
    """Every header is listed and whole; every listed session has its header."""
    tag = "{" + prefix + "}:"
    headers = {k.decode()[len(tag) + 2 :] for k in raw.scan_iter(match=f"{tag}h:*", count=1000)}
    listed = set(_members(raw, f"{tag}all"))
    assert headers == listed
    assert {k.decode() for k in raw.hkeys(f"{tag}idx")} == listed
    for sid in headers:
        count = int(raw.hget(f"{tag}h:{sid}", "runs"))
        assert count == raw.llen(f"{tag}r:{sid}") == raw.strlen(f"{tag}d:{sid}") // 32, sid
        listed_in = [k for k in raw.hget(f"{tag}idx", sid).decode().split("\x00") if k]
        assert all(raw.zscore(key, sid) is not None for key in listed_in)


def test_urls_name_server_database_prefix_and_options() -> None:
    storage = from_url(parse_url("redis://:secret@db.example:6380/3?prefix=app:x", "team"))
    assert (storage.prefix, storage.mode) == ("app:x", "team")
    assert "db.example:6380/3" in repr(storage)
    assert "secret" not in repr(storage)
    assert from_url(parse_url("redis://h", "workflow")).prefix == "savegame:workflow"
    cluster = from_url(parse_url("redis+cluster://a:7000,b:7001/?expire=9", "agent"))
    assert "Redis Cluster at a:7000,b:7001" in repr(cluster)
    assert cluster.expire == 9
    assert from_url(parse_url("rediss://h:6390/0")).prefix == "savegame:agent"
    assert "Redis at [::1]:6379/2" in repr(open_storage("redis://[::1]:6379/2"))
    assert "Redis Cluster at [::1]:7000,h:7001" in repr(
        open_storage("redis+cluster://[::1]:7000,h:7001")
    )
    assert "Redis at [::1]:6379/0" in repr(RedisStorage("p", client=redis.Redis(host="::1")))
    for bad in (
        "redis://a:1,b:2/0",
        "redis://h/notanumber",
        "redis+cluster://h:1/2",
        "redis://h/0?prefix=has space",
        "redis://h/0?colour=blue",
    ):
        with pytest.raises(InvalidIdentifierError):
            open_storage(bad)


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:6379/1_0",
        "redis://h:6379/\u0661",
        "redis://h:6379/+1",
        "redis://h:6379/ 1",
        "redis://h:6379/0?prefix=p&shards=1_0",
        "redis://h:6379/0?prefix=p&expire=\u0663\u0660",
        "redis://h:6379/0?prefix=p&cache_bytes= 5",
        "redis://h:6379/" + "1" * 5000,
        "redis://h:6379/0?prefix=p&shards=" + "1" * 5000,
    ],
    ids=lambda url: url if len(url) < 80 else f"{url[:40]}...",
)
def test_a_database_or_number_python_alone_reads_as_one_is_refused(url: str) -> None:
    # int() took "1_0" for database 10, and the digits of other scripts for ASCII ones;
    # 5,000 digits, more than it reads, raised its ValueError.
    with pytest.raises(InvalidIdentifierError, match=r"must be a (whole )?number"):
        open_storage(url)


@pytest.mark.parametrize("name", ["shards", "cache_bytes"])
def test_a_count_given_as_true_is_refused(name: str) -> None:
    # Taken for 1, where port=True, db=True and expire=True are refused.
    with pytest.raises(InvalidIdentifierError, match=name):
        RedisStorage("p", **{name: True})
    with pytest.raises(InvalidIdentifierError, match=name):
        open_storage("redis://h:6379/0?prefix=p", **{name: True})


def test_a_rediss_url_with_ssl_false_is_refused_and_with_ssl_true_taken() -> None:
    # TLS was used, the ssl=false dropped without a word, where keywords win over the URL.
    for opening in (
        lambda: open_storage("rediss://:hunter2@127.0.0.1:1/0?ssl=false"),
        lambda: open_storage("rediss://:hunter2@127.0.0.1:1/0", ssl=False),
        lambda: open_storage("rediss://:hunter2@127.0.0.1:1/0", ssl="0"),
        lambda: RedisStorage("p", url="rediss://:hunter2@127.0.0.1:1/0?ssl=no"),
    ):
        with pytest.raises(InvalidIdentifierError, match="rediss:// URL asks for TLS") as info:
            opening()
        assert "hunter2" not in str(info.value)
    # A URL's ?ssl=true beside TLS asked otherwise was refused as an unknown option "ssl".
    for agreeing in (
        "rediss://127.0.0.1:1/0?ssl=true",
        "rediss://127.0.0.1:1/0",
        "redis://127.0.0.1:1/0?ssl=1",
    ):
        assert open_storage(agreeing, ssl=True)
        assert RedisStorage("p", url=agreeing, ssl=True)
    assert RedisStorage("p", url="rediss://127.0.0.1:1/0?ssl=yes")


def test_a_url_naming_a_unix_socket_says_how_to_reach_one() -> None:
    # The message said only that "run/redis.sock" is not a database number.
    with pytest.raises(InvalidIdentifierError, match=r"unix socket has no URL: .*client="):
        open_storage("redis:///run/redis.sock")
    with pytest.raises(InvalidIdentifierError, match=r"must be a number$"):
        open_storage("redis://127.0.0.1:1/zero")


def test_url_queries_set_tls_or_are_refused() -> None:
    with pytest.raises(InvalidIdentifierError, match="ssl_ca_certs needs TLS"):
        RedisStorage("p", url="redis://h/0?ssl_ca_certs=/ca.pem")
    with pytest.raises(InvalidIdentifierError, match="ssl_ca_certs needs TLS"):
        RedisStorage("p", ssl_ca_certs="/ca.pem")
    # An empty one (?ssl_ca_certs=$CA with CA unset) was taken for none: the system's.
    for opening in (
        lambda: open_storage("rediss://h/0?ssl_ca_certs="),
        lambda: RedisStorage("p", url="rediss://h/0?ssl_ca_certs="),
        lambda: RedisStorage("p", ssl=True, ssl_ca_certs=""),
    ):
        with pytest.raises(InvalidIdentifierError, match="ssl_ca_certs is empty"):
            opening()
    for bad in ("redis://h/0?colour=blue", "redis://h/0?ssl=maybe", "rediss://h/0?prefix=x"):
        with pytest.raises(InvalidIdentifierError):
            RedisStorage("p", url=bad)
    with pytest.raises(InvalidIdentifierError, match="neither true nor false"):
        open_storage("redis://h/0?ssl=sometimes")
    # A bare ?ssl, which some read as yes, was taken for no.
    for bare in ("redis://h/0?ssl", "redis://h/0?ssl=", "rediss://h/0?ssl"):
        with pytest.raises(InvalidIdentifierError, match="ssl='' is neither true nor false"):
            open_storage(bare)
        with pytest.raises(InvalidIdentifierError, match="ssl='' is neither true nor false"):
            RedisStorage("p", url=bare)
    with pytest.raises(
        InvalidIdentifierError,
        match=r"prefix; it takes ssl, ssl_ca_certs, socket_timeout, connect_timeout \(",
    ):
        RedisStorage("p", url="redis://h/0?prefix=x")
    RedisStorage("p", url="redis+cluster://a:1,b:2?ssl=true&ssl_ca_certs=/ca.pem")


@pytest.mark.parametrize(
    "given",
    [
        {"url": "redis://127.0.0.1:6379/0", "host": "other.example"},
        {"url": "redis://127.0.0.1:6379/0", "port": 6380},
        {"url": "redis://127.0.0.1:6379/0", "db": 3},
        {"url": "redis+cluster://a:7000,b:7001", "host": "c"},
        {"url": "redis://:hunter2@127.0.0.1:6379/0", "password": "hunter3"},
        {"url": "redis://me:hunter2@127.0.0.1:6379/0", "username": "you"},
        {"url": "rediss://127.0.0.1:6379/0?ssl_ca_certs=/a.pem", "ssl_ca_certs": "/b.pem"},
        {"url": "redis://:hunter2@127.0.0.1:6379/0?ssl=false", "ssl": True},
    ],
)
def test_a_url_and_an_argument_naming_another_server_or_user_are_refused(
    given: dict[str, Any],
) -> None:
    # The URL's were used, the arguments dropped without a word.
    with pytest.raises(InvalidIdentifierError, match=r"RedisStorage got .* and .*: give") as info:
        RedisStorage("p", **given)
    assert "hunter2" not in str(info.value)
    assert "hunter3" not in str(info.value)


def test_a_password_or_user_a_url_lacks_may_come_as_an_argument() -> None:
    for given in (
        {"url": "redis://127.0.0.1:6379/0", "password": "pw", "username": "me"},
        {"url": "redis://me:pw@127.0.0.1:6379/0", "password": "pw", "username": "me"},
        {"url": "rediss://127.0.0.1:6379/0?ssl_ca_certs=/a.pem", "ssl_ca_certs": "/a.pem"},
    ):
        assert RedisStorage("p", **given)


@pytest.mark.parametrize(
    "opening",
    [
        lambda: RedisStorage("p", port=0),
        lambda: RedisStorage("p", port=65536),
        lambda: RedisStorage("p", db=-1),
        lambda: RedisStorage("p", url="redis://:hunter2@127.0.0.1:6379/-1"),
        lambda: open_storage("redis://:hunter2@127.0.0.1:6379/-1"),
    ],
)
def test_a_negative_database_or_a_port_out_of_range_is_refused_when_the_storage_is_made(
    opening: Any,
) -> None:
    # Redis refused it at the first call, with a plain StorageError.
    with pytest.raises(
        InvalidIdentifierError,
        match=r"Redis database -1 must be a whole number \(int\), 0 or more|Redis port",
    ) as info:
        opening()
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({"port": "6379"}, "Redis port '6379' must be a whole number (int) from 1 to 65535"),
        ({"port": 6379.0}, "Redis port 6379.0 must be a whole number (int) from 1 to 65535"),
        ({"port": True}, "Redis port True must be a whole number (int) from 1 to 65535"),
        ({"db": "3"}, "Redis database '3' must be a whole number (int), 0 or more"),
        # These raised TypeError or AttributeError, which are no StorageError.
        ({"host": None}, "Redis host must be a host name or address, not None"),
        ({"host": 5}, "Redis host must be a host name or address, not 5"),
        ({"host": ""}, "Redis host must be a host name or address, not ''"),
        ({"url": 5}, "Redis url must be a str (redis://host:6379/0), not int"),
        ({"url": b"redis://h"}, "Redis url must be a str (redis://host:6379/0), not bytes"),
        # A string was true, "false" too: TLS to a server without it timed out at first use.
        ({"ssl": "false"}, "ssl must be True or False, not 'false'"),
        ({"ssl": 1}, "ssl must be True or False, not 1"),
        ({"ssl": None}, "ssl must be True or False, not None"),
        # Sent as they were: an int as its digits, a list refused only at the first call.
        ({"password": 5}, "Redis password must be a str or None, not int"),
        ({"password": b"hunter2"}, "Redis password must be a str or None, not bytes"),
        ({"password": ["hunter2"]}, "Redis password must be a str or None, not list"),
        ({"username": 5}, "Redis username must be a str or None, not int"),
    ],
)
def test_a_host_port_database_or_url_of_another_type_is_refused_saying_what_is_wanted(
    given: dict[str, Any], said: str
) -> None:
    # "port '6379' must be from 1 to 65535" named a port in that range as the fault.
    with pytest.raises(InvalidIdentifierError) as info:
        RedisStorage("p", **given)
    assert str(info.value) == said


@pytest.mark.parametrize("name", ["socket_timeout", "connect_timeout"])
@pytest.mark.parametrize("value", [0, -1, "soon", True, float("nan"), float("inf")])
def test_a_timeout_that_is_no_wait_is_refused_when_the_storage_is_made(
    name: str, value: object
) -> None:
    # redis-py found it at the first call: a TypeError, a ValueError, or for 0 a timeout
    # raised as BackendUnavailableError, which says to wait and try again.
    with pytest.raises(InvalidIdentifierError, match=f"{name} must be a number of seconds"):
        RedisStorage("p", host="127.0.0.1", port=1, **{name: value})
    assert RedisStorage("p", **{name: 0.5})


def test_a_url_gives_the_timeouts_and_a_server_that_never_answers_fails_the_call() -> None:
    # A Redis URL took neither timeout: a server that never answered held each call for
    # 30 s, and an application configured by URL alone could not shorten that.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        url = f"redis://127.0.0.1:{port}/0?socket_timeout=0.2&connect_timeout=1.5"
        for storage in (RedisStorage("p", url=url), open_storage(url)):
            with pytest.raises(BackendUnavailableError, match=f"127.0.0.1:{port}"):
                storage.read("s")
            kwargs = storage._connect().connection_pool.connection_kwargs
            assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.2, 1.5)
            storage.close()
    default = RedisStorage("p", url="redis://127.0.0.1:1/0")._connect()
    kwargs = default.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (30.0, 5.0)


@pytest.mark.parametrize(
    ("opening", "refused"),
    [
        (
            lambda: RedisStorage("p", url="redis://h/0?socket_timeout=0"),
            "socket_timeout must be a number of seconds above 0",
        ),
        (
            lambda: open_storage("redis://h/0?connect_timeout=soon"),
            "connect_timeout must be a number of seconds above 0",
        ),
        (
            # float() read it as 10.
            lambda: open_storage("redis://h/0?connect_timeout=1_0"),
            "connect_timeout must be a number of seconds above 0",
        ),
        (
            lambda: RedisStorage("p", url="redis://h/0?socket_timeout=2", socket_timeout=3),
            "got socket_timeout=3 as an argument and 2.0 in its url: give one",
        ),
        (
            lambda: RedisStorage("p", url="redis://h/0?connect_timeout=2&connect_timeout=2"),
            "gives an option more than once: connect_timeout",
        ),
    ],
)
def test_a_timeout_in_a_url_that_is_no_wait_or_disagrees_is_refused(
    opening: Any, refused: str
) -> None:
    with pytest.raises(InvalidIdentifierError, match=re.escape(refused)):
        opening()
    assert RedisStorage("p", url="redis://h/0?socket_timeout=2", socket_timeout=2.0)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter/2@127.0.0.1:6379/0",
        "redis://us/erx:hunter2@127.0.0.1:6379/0",
        "rediss://:hunter?2@127.0.0.1:6379/0",
        "redis://:hun?ter&2@127.0.0.1:6379/0?ssl_ca_certs=/a@b.pem",
        "redis+cluster://:hunter/2@127.0.0.1:7000,127.0.0.1:7001",
    ],
)
def test_a_url_whose_credentials_hold_a_slash_or_question_mark_is_refused_unquoted(
    url: str,
) -> None:
    # The credentials would end at the "/" or "?": the rest of the password was taken for
    # a host, a database or an option, and quoted in the error ("':hunter' is not host:port").
    for opening in (lambda: RedisStorage("p", url=url), lambda: open_storage(url)):
        with pytest.raises(InvalidIdentifierError, match=r"%2F|%3F") as info:
            opening()
        assert "hunter" not in str(info.value)
        assert "erx" not in str(info.value)
    assert RedisStorage("p", url="rediss://h/0?ssl_ca_certs=/home/me@corp/ca.pem")


def test_credentials_the_server_refuses_are_not_taken_for_a_server_away(
    server: str, prefix: str
) -> None:
    # redis-py's AuthenticationError is a ConnectionError: it was tried 3 more times, and
    # raised as BackendUnavailableError, which says to wait and try again.
    scheme, _, rest = server.partition("://")
    url = f"{scheme}://nosuch-user:wrong@{rest.partition('@')[2] or rest}"
    storage = RedisStorage(prefix, url=url)
    with pytest.raises(StorageError, match="refused the credentials") as info:
        storage.read("s")
    assert not isinstance(info.value, BackendUnavailableError)
    assert "wrong" not in str(info.value)
    storage.close()


@contextlib.contextmanager
def _started(start: AbstractContextManager[T], needs: str = "") -> Iterator[T]:
    """What ``start`` yields; skips the tests (fails them under CI) when it cannot start."""
    with contextlib.ExitStack() as stack:
        try:
            started = stack.enter_context(start)
        except RuntimeError as exc:
            missing_service(f"{exc}; install redis-server{needs} to run these tests")
        yield started


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """A server that speaks TLS only, with a certificate no system authority trusts."""
    server = tls_server(tmp_path_factory.mktemp("redis-tls"))
    with _started(server, " (built with TLS)") as (port, ca):
        yield port, str(ca)


@pytest.mark.timeout(60)
def test_tls_with_a_private_authority_reaches_one_store_every_way(tls: tuple[int, str]) -> None:
    port, ca = tls
    name = unique("sgtls")
    first = RedisStorage(name, "127.0.0.1", port, ssl=True, ssl_ca_certs=ca)
    try:
        first.create()
        first.upsert(_session("over-tls", runs=_runs(3), user_id="u"))
        ways = [
            RedisStorage(name, url=f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"),
            RedisStorage(name, url=f"redis://localhost:{port}?ssl=true&ssl_ca_certs={ca}"),
            open_storage(f"rediss://127.0.0.1:{port}/0?prefix={name}&ssl_ca_certs={ca}"),
        ]
        for storage in ways:
            with storage:
                found = storage.read("over-tls")
                assert found is not None
                assert found.memory["runs"] == _runs(3)
                assert storage.get_all_session_ids(user_id="u") == ["over-tls"]
    finally:
        first.drop()
        first.close()


@pytest.mark.timeout(60)
def test_tls_refuses_an_untrusted_certificate_and_a_plain_client(tls: tuple[int, str]) -> None:
    port, _ = tls
    untrusted = RedisStorage("p", "127.0.0.1", port, ssl=True, connect_timeout=2)
    with pytest.raises(BackendUnavailableError, match=f"127.0.0.1:{port}.*certificate verify"):
        untrusted.read("s")
    plain = RedisStorage("p", "127.0.0.1", port, connect_timeout=2, socket_timeout=2)
    with pytest.raises(BackendUnavailableError, match=f"127.0.0.1:{port}"):
        plain.upsert(_session("s"))


@pytest.mark.timeout(60)
def test_tls_refuses_a_certificate_of_another_host_on_every_redis_py(tls: tuple[int, str]) -> None:
    # The certificate names 127.0.0.1 and localhost; "127.1" reaches the same server under a
    # name it does not hold. redis-py before 6 checks no host name unless asked.
    port, ca = tls
    other = RedisStorage("p", "127.1", port, ssl=True, ssl_ca_certs=ca, connect_timeout=2)
    with pytest.raises(BackendUnavailableError, match=r"127\.1.*[Hh]ostname mismatch"):
        other.read("s")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scheme", ["rediss", "redis+cluster"])
def test_an_ssl_ca_certs_file_that_cannot_be_read_is_named_at_first_use(
    scheme: str, tmp_path: Path
) -> None:
    # Not a server away: redis-py's own error named no file, and no wait would mend it.
    not_pem = tmp_path / "not-a-ca.pem"
    not_pem.write_text("not a certificate\n")
    port = _closed_port()
    for path in (tmp_path / "missing.pem", not_pem, tmp_path):
        url = f"{scheme}://127.0.0.1:{port}?ssl=true&ssl_ca_certs={path}"
        storage = RedisStorage("p", url=url, connect_timeout=2)
        for call in (methodcaller("read", "s"), methodcaller("upsert", _session("s"))):
            with pytest.raises(
                StorageError, match=f"ssl_ca_certs file {re.escape(repr(str(path)))}"
            ) as caught:
                call(storage)
            assert not isinstance(caught.value, BackendUnavailableError)
            assert f"127.0.0.1:{port}" in str(caught.value)


@pytest.fixture(scope="module")
def tls_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A 3-master cluster that speaks TLS only: its nodes as ``host:port,...``, the CA file."""
    cluster = tls_cluster(tmp_path_factory.mktemp("tls-cluster"))
    with _started(cluster, " (built with TLS)") as (ports, ca):
        yield ",".join(f"127.0.0.1:{port}" for port in ports), str(ca)


@pytest.mark.timeout(90)
def test_a_cluster_over_tls_serves_a_store_spread_over_its_masters(
    tls_nodes: tuple[str, str],
) -> None:
    nodes, ca = tls_nodes
    host, port = nodes.split(",")[0].split(":")
    raw = RedisCluster(host=host, port=int(port), ssl=True, ssl_ca_certs=ca)
    for _ in range(1000):
        name = unique("sgtls")
        tags = [f"{{{name}#{i}}}:all" for i in range(3)]
        if len({raw.get_node_from_key(tag).name for tag in tags}) == 3:
            break
    url = f"redis+cluster://{nodes}?ssl=true&ssl_ca_certs={ca}"
    storage = RedisStorage(name, url=url, shards=3)
    ids = [f"s{i}" for i in range(12)]
    try:
        for sid in ids:
            storage.upsert(_session(sid, runs=_runs(2, sid), user_id="u"))
        assert all(raw.exists(tag) for tag in tags), "a master holds none of the sessions"
        with open_storage(f"{url}&prefix={name}") as other:
            assert sorted(other.get_all_session_ids(user_id="u")) == sorted(ids)
            for sid in ids:
                found = other.read(sid)
                assert found is not None
                assert found.memory["runs"] == _runs(2, sid)
        plain = RedisStorage(name, url=f"redis+cluster://{nodes}", connect_timeout=2)
        with pytest.raises(BackendUnavailableError, match=re.escape(f"Redis Cluster at {nodes}")):
            plain.read("s0")
    finally:
        storage.drop()
        storage.close()
        raw.close()


def test_every_connection_savegame_makes_tells_a_write_sent_whole(server: str, prefix: str) -> None:
    # What tells a write sent again (of unknown outcome) from one that never left: the
    # connections of a client savegame makes, to every node of a cluster, mark each script
    # call sent. redis-py before 8.2 takes the class for a cluster's nodes only through a
    # URL; a plain class would leave each write counted as sent, or the client broken.
    storage = RedisStorage(prefix, url=server, shards=3)
    storage.upsert(_session("s"))
    client = storage._client
    nodes = client.get_nodes() if isinstance(client, RedisCluster) else []
    pools = [n.redis_connection.connection_pool for n in nodes] or [client.connection_pool]
    assert all(p.connection_class.__name__.startswith("Marking") for p in pools), pools
    assert storage._marks_sent
    storage.close()


def test_calls_in_other_threads_while_one_closes_the_storage_all_succeed(
    server: str, prefix: str
) -> None:
    # close() on a storage other threads are calling through waits for their calls in
    # progress, and a call after it connects again: none meets an emptied script table (a
    # raw KeyError) or a connection closed under it (a raw AttributeError from redis-py, or
    # the reply of another command).
    storage = RedisStorage(prefix, url=server, shards=3)
    for i in range(3):
        storage.upsert(_session(f"s{i}", _runs(2), user_id="u"))
    closed = threading.Event()
    failures: list[str] = []
    done: list[int] = []

    def work(t: int) -> None:
        i = 0
        while not closed.is_set():
            i += 1
            session_id = f"s{i % 3}"
            try:
                if t % 3 == 0:
                    got = storage.read(session_id)
                    assert got is not None
                    assert got.session_id == session_id
                elif t % 3 == 1:
                    storage.upsert(_session(session_id, _runs(1 + i % 4), user_id="u"))
                else:
                    assert len(storage.get_all_sessions(user_id="u")) == 3
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
        done.append(i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(100):
            storage.close()
            time.sleep(0.001)
    finally:
        closed.set()
        for thread in threads:
            thread.join(60)
    assert failures == []
    assert len(done) == 6
    assert all(calls > 1 for calls in done)
    storage.close()


def test_open_storage_reaches_the_same_store(server: str, prefix: str) -> None:
    RedisStorage(prefix, url=server).upsert(_session("shared", user_id="u"))
    with open_storage(f"{server}?prefix={prefix}") as storage:
        assert storage.get_all_session_ids(user_id="u") == ["shared"]


def test_a_stale_remembered_header_never_corrupts_a_write(server: str, prefix: str) -> None:
    mine = RedisStorage(prefix, url=server)
    other = RedisStorage(prefix, url=server)
    runs = _runs(3)
    mine.upsert(_session("s", runs))
    # The session is deleted and made again elsewhere: its version is 1 again.
    other.delete_session("s")
    other.upsert(_session("s", _runs(2, " elsewhere")))
    mine.upsert(_session("s", [*runs, {"run_id": "3"}]))
    got = other.read("s")
    assert got is not None
    assert got.memory["runs"] == [*runs, {"run_id": "3"}]
    assert got.version == 2
    # A version this storage has not seen yet is not a conflict.
    other.upsert(_session("s", runs))
    assert mine.upsert(_session("s", runs[:1]), expected_version=3).version == 4


def _servers_held() -> FileLock:
    """A lock the tests that hold up the shared servers take turns with, across processes:
    a client pause holds every client's writes for seconds, a slot migration among them,
    whose MIGRATE would then time out."""
    return FileLock(str(Path(tempfile.gettempdir()) / "savegame-redis-pause.lock"), timeout=120)


def _in_flight(raw: Any, storage: RedisStorage, call: Any) -> dict[str, Any]:
    """Runs ``call`` while the server holds writes, kills its connection, and lets go."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = call()
        except Exception as exc:
            outcome["error"] = exc

    storage.create()
    name = f"savegame:{storage.prefix}"
    every = {"target_nodes": RedisCluster.ALL_NODES} if isinstance(raw, RedisCluster) else {}
    worker = threading.Thread(target=work)
    with _servers_held():
        raw.client_pause(5000, all=False, **every)
        try:
            worker.start()
            for client in _blocked(raw, name):
                raw.client_kill_filter(_id=client["id"], **_target(client))
        finally:
            raw.client_unpause(**every)
    worker.join(30)
    return outcome


def _blocked(raw: Any, name: str) -> list[dict[str, Any]]:
    """The connections named ``name`` waiting on the pause (waits a bounded time for one)."""
    for _ in range(250):
        waiting = [c for c in _clients(raw) if c.get("name") == name and "b" in c["flags"]]
        if waiting:
            return waiting
        time.sleep(0.02)
    raise AssertionError("the write never reached the server")


def _clients(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, RedisCluster):
        return list(raw.client_list())
    return [
        {**client, "node": node}
        for node in raw.get_primaries()
        for client in raw.client_list(target_nodes=node)
    ]


def _target(client: dict[str, Any]) -> dict[str, Any]:
    return {"target_nodes": client["node"]} if "node" in client else {}


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A standalone server of this module's own: the tests that pause every client do it
    there, not on the server others share."""
    with _started(plain_server(tmp_path_factory.mktemp("redis-own"))) as url:
        yield url


@pytest.fixture(params=[False, True], ids=["redis", "redis-cluster"])
def pausable(request: pytest.FixtureRequest, own_server: str) -> str:
    """The URL of a standalone server of the tests' own, then of the tests' cluster."""
    return server_url(True) if request.param else own_server


@pytest.mark.timeout(60)
def test_a_write_whose_connection_is_killed_in_flight_is_retried(pausable: str) -> None:
    prefix = unique("sgt")
    raw = redis_client(pausable)
    storage = RedisStorage(prefix, url=pausable)
    try:
        outcome = _in_flight(raw, storage, lambda: storage.upsert(_session("s", _runs(2))))
        assert "error" not in outcome
        got = storage.read("s")
        assert got is not None
        assert (got.memory["runs"], got.version) == (_runs(2), 1)
        _check_consistent(raw, prefix)
    finally:
        storage.drop()
        storage.close()
        raw.close()


@pytest.mark.timeout(60)
def test_without_retries_a_killed_write_raises_and_the_next_works(own_server: str) -> None:
    url = own_server
    prefix = unique("sgt")
    name = f"savegame:{prefix}"
    client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), client_name=name)
    raw = redis.Redis.from_url(url)
    storage = RedisStorage(prefix, client=client)
    outcome = _in_flight(raw, storage, lambda: storage.upsert(_session("s", _runs(2))))
    assert isinstance(outcome.get("error"), BackendUnavailableError), outcome
    assert "Redis at" in str(outcome["error"])
    assert storage.read("s") is None
    storage.upsert(_session("s", _runs(3)))
    got = storage.read("s")
    assert got is not None
    assert got.memory["runs"] == _runs(3)
    _check_consistent(raw, prefix)
    storage.drop()
    client.close()
    raw.close()


def test_upgrade_schema_moves_sessions_of_the_original_layout(
    server: str, raw: Any, prefix: str
) -> None:
    # What the original RedisStorage wrote: one JSON string per session, created_at maybe None.
    old = {
        "session_id": "legacy",
        "user_id": "u",
        "agent_id": "a",
        "memory": {"runs": [{"run_id": "r1"}, {"run_id": "r2"}], "summary": "ü"},
        "session_data": None,
        "created_at": 1_700_000_000,
        "updated_at": 1_700_000_100,
    }
    try:
        raw.set(f"{prefix}:legacy", json.dumps(old, ensure_ascii=False))
        raw.set(f"{prefix}:no-time", json.dumps({"session_id": "no-time", "created_at": None}))
        raw.set(f"{prefix}:sub:theirs", json.dumps({"session_id": "theirs"}))
        raw.set(f"{prefix}:not-json", "plain text")
        storage = RedisStorage(prefix, url=server)
        assert storage.read("legacy") is None
        storage.upgrade_schema()
        got = storage.read("legacy")
        assert got is not None
        assert got.memory == old["memory"]
        assert (got.created_at, got.updated_at, got.version) == (1_700_000_000, 1_700_000_100, 1)
        assert storage.get_all_session_ids(user_id="u", entity_id="a") == ["legacy"]
        assert storage.read("no-time") is not None
        assert storage.read("theirs") is None
        assert raw.exists(f"{prefix}:legacy", f"{prefix}:no-time") == 0
        assert raw.get(f"{prefix}:sub:theirs") is not None
        assert raw.get(f"{prefix}:not-json") == b"plain text"
        storage.upgrade_schema()
        assert storage.read("legacy").version == 1  # type: ignore[union-attr]
    finally:
        raw.delete(*(f"{prefix}:{k}" for k in ("legacy", "no-time", "sub:theirs", "not-json")))


def test_upgrade_schema_moves_from_an_original_prefix_savegame_would_refuse(
    server: str, raw: Any, prefix: str
) -> None:
    # The original took any prefix: glob characters, braces, spaces, non-ASCII. Its sessions
    # move from there, and a neighbour the unescaped pattern would match stays.
    original = prefix + r" é*?[x]\{t}"
    neighbour = prefix + " éZZxt"
    moved = f"{original}:s1"
    kept = f"{neighbour}:s2"
    try:
        raw.set(moved, json.dumps({"session_id": "s1", "user_id": "u", "created_at": 5}))
        raw.set(kept, json.dumps({"session_id": "s2", "user_id": "u", "created_at": 6}))
        storage = RedisStorage(prefix, url=server)
        storage.upgrade_schema(original_prefix=original)
        assert storage.get_all_session_ids(user_id="u") == ["s1"]
        assert raw.exists(moved) == 0
        assert raw.get(kept) is not None
        storage.upgrade_schema(original_prefix=neighbour)
        assert storage.get_all_session_ids(user_id="u") == ["s2", "s1"]
        for bad in ("", "a\x00b", 7):
            with pytest.raises(InvalidIdentifierError):
                storage.upgrade_schema(original_prefix=bad)  # type: ignore[arg-type]
    finally:
        raw.delete(moved, kept)


def test_a_prefix_says_when_the_originals_sessions_await_an_upgrade(
    server: str, raw: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Until moved, they are not read: the prefix looks empty.
    storage = RedisStorage(prefix, url=server)
    old, longer = f"{prefix}:s1", f"{prefix}:sub:s2"
    try:
        raw.set(longer, json.dumps({"session_id": "s2"}))  # a longer prefix's
        assert storage.awaiting_upgrade() is None
        raw.set(old, json.dumps({"session_id": "s1", "user_id": "u"}))
        assert storage.read("s1") is None
        said = storage.awaiting_upgrade()
        assert said == f"sessions of the original RedisStorage under the prefix {prefix!r}"
        # In a larger server it does not look, rather than walk every key.
        monkeypatch.setattr(redis_module, "LOOK_LIMIT", raw.dbsize() - 1)
        assert storage.awaiting_upgrade() is None
        monkeypatch.undo()
        storage.upgrade_schema()
        assert storage.awaiting_upgrade() is None
        assert storage.read("s1") is not None
    finally:
        storage.drop()
        raw.delete(old, longer)


def test_a_sharded_store_spreads_sessions_and_merges_listings(
    server: str, raw: Any, prefix: str
) -> None:
    storage = RedisStorage(prefix, url=server, shards=4)
    for i in range(40):
        user = f"u{i % 2}"
        storage.upsert(_session(f"s{i:02}", _runs(1), user_id=user, created_at=1000 + i // 4))
    headers = [f"{{{prefix}#{i}}}:h:*" for i in range(4)]
    per_shard = [len(list(raw.scan_iter(match=pattern, count=1000))) for pattern in headers]
    assert sum(per_shard) == 40
    assert min(per_shard) > 0
    # Newest first across shards, ties (four per created_at) in id order.
    expected = sorted((f"s{i:02}" for i in range(40)), key=lambda s: (-(int(s[1:]) // 4), s))
    assert storage.get_all_session_ids() == expected
    assert [s.session_id for s in storage.get_recent_sessions(limit=5)] == expected[:5]
    assert storage.get_all_session_ids(user_id="u1") == [s for s in expected if int(s[1:]) % 2]
    assert storage.delete_user("u0") == 20
    assert len(storage.get_all_session_ids()) == 20
    # Another storage on the store finds its layout; one that wants another is refused.
    odd = [s for s in expected if int(s[1:]) % 2]
    assert RedisStorage(prefix, url=server).get_all_session_ids(user_id="u1") == odd
    with pytest.raises(InvalidIdentifierError, match="4 shards"):
        RedisStorage(prefix, url=server, shards=2).read("s01")
    storage.drop()
    assert not any(raw.exists(f"{{{prefix}#{i}}}:all") for i in range(4))
    assert raw.exists("{" + prefix + "}:shards") == 0


@pytest.mark.parametrize("shards", [None, 3])
def test_listings_removals_and_drop_never_run_keys_or_scan(
    own_server: str, shards: int | None
) -> None:
    # KEYS blocks the server while it walks every key, SCAN walks them all in many calls:
    # neither may grow with what else the server holds. The counts are the server's own,
    # of a server no one else uses.
    raw = redis.Redis.from_url(own_server)
    prefix = unique("sgt")
    storage = RedisStorage(prefix, url=own_server, shards=shards)
    for i in range(6):
        storage.upsert(_session(f"s{i}", _runs(2), user_id=f"u{i % 2}", agent_id="a"))
    RedisStorage(prefix, url=own_server, shards=shards, expire=1).upsert(
        _session("gone", _runs(1), user_id="u0")
    )
    time.sleep(1.1)
    raw.config_resetstat()
    assert storage.purge_expired() == 1
    for user_id, entity_id in ((None, None), ("u0", None), (None, "a")):
        storage.get_all_session_ids(user_id=user_id, entity_id=entity_id)
        storage.get_all_sessions(user_id=user_id, entity_id=entity_id)
        storage.get_recent_sessions(user_id=user_id, entity_id=entity_id, limit=3)
    storage.read_many(["s0", "s1", "gone"])
    assert storage.delete_session("s2") is True
    assert storage.delete_user("u1") == 3
    assert sorted(storage.get_all_session_ids()) == ["s0", "s4"]
    storage.drop()
    stats = raw.info("commandstats")
    assert "cmdstat_keys" not in stats, sorted(stats)
    assert "cmdstat_scan" not in stats, sorted(stats)
    assert not any(raw.scan_iter(match="*" + prefix + "*"))


@pytest.mark.parametrize("shards", [1, 3])
def test_erasing_a_user_of_many_sessions_takes_a_script_call_a_batch(
    server: str, prefix: str, shards: int
) -> None:
    # One script call a session made erasing a user a round trip per session; the
    # sessions of each slot go in batches, and each id removed is reported.
    storage = RedisStorage(prefix, url=server, shards=shards)
    for i in range(130):
        storage.upsert(_session(f"s{i:03}", _runs(1), user_id="u" if i < 120 else "v"))
    listed = storage.get_all_session_ids(user_id="u")
    client = storage._connected()
    sent: list[Any] = []
    execute = client.execute_command

    def counting(*args: Any, **options: Any) -> Any:
        sent.append(args[0])
        return execute(*args, **options)

    client.execute_command = counting
    removed: list[str] = []
    assert storage.delete_user("u", removed) == 120
    assert sorted(removed) == sorted(listed)
    assert len(sent) < 20, sent
    assert sorted(storage.get_all_session_ids()) == [f"s{i}" for i in range(120, 130)]


def _keys_of(raw: Any, prefix: str) -> list[str]:
    """Every key of the store ``prefix`` (its own, not those of ``prefix:sub``)."""
    found = set()
    for pattern in ("{" + prefix + "}:*", "{" + prefix + "#*}:*"):
        found |= {k.decode() for k in raw.scan_iter(match=pattern, count=1000)}
    return sorted(found)


@pytest.mark.parametrize("shards", [None, 1, 3])
def test_a_store_is_made_by_its_first_write_and_never_by_a_read(
    server: str, raw: Any, prefix: str, shards: int | None
) -> None:
    storage = RedisStorage(prefix, url=server, shards=shards)
    assert storage.read("a") is None
    assert storage.get_all_sessions(user_id="u") == []
    assert storage.get_recent_sessions(entity_id="e") == []
    assert storage.delete_session("a") is False
    assert storage.delete_user("u") == 0
    assert storage.purge_expired() == 0
    storage.drop()
    assert not storage.table_exists()
    assert _keys_of(raw, prefix) == []
    storage.upsert(_session("a", _runs(1), user_id="u"))
    assert raw.get("{" + prefix + "}:shards") == str(shards or 1).encode()
    assert storage.table_exists()
    assert RedisStorage(prefix, url=server).table_exists()
    storage.drop()
    assert not storage.table_exists()
    storage.create()
    assert _keys_of(raw, prefix) == ["{" + prefix + "}:mode", "{" + prefix + "}:shards"]
    assert raw.get("{" + prefix + "}:mode") == b"agent"
    assert storage.table_exists()


def test_a_storage_that_found_no_store_reads_the_one_another_makes(
    server: str, prefix: str
) -> None:
    # The first storage to write fixes the shards; one that only read meanwhile fixed
    # nothing, and finds the sessions where that one put them.
    early, wanting = RedisStorage(prefix, url=server), RedisStorage(prefix, url=server, shards=2)
    assert early.read("s1") is None
    assert wanting.get_all_session_ids() == []
    maker = RedisStorage(prefix, url=server, shards=4)
    ids = [f"s{i}" for i in range(12)]
    for sid in ids:
        maker.upsert(_session(sid, user_id="u", created_at=1000))
    assert early.read("s1") is not None
    assert early.get_all_session_ids(user_id="u") == sorted(ids)
    early.upsert(_session("late", user_id="u", created_at=999))
    assert maker.get_all_session_ids(user_id="u") == [*sorted(ids), "late"]
    with pytest.raises(InvalidIdentifierError, match="4 shards"):
        wanting.upsert(_session("s1"))


@pytest.mark.parametrize(("first", "second"), [(None, 3), (3, None)])
def test_a_first_writer_that_finds_another_recorded_its_shards_meanwhile_keeps_to_them(
    server: str, prefix: str, first: int | None, second: int | None
) -> None:
    # The second reads no layout, then (while it tells the mode) the first records its own:
    # the second writes where the recorded count puts the session, or is refused.
    early, late = (
        RedisStorage(prefix, url=server, shards=first),
        RedisStorage(prefix, url=server, shards=second),
    )
    telling = late._mode_found

    def meanwhile(*args: Any) -> Any:
        early.upsert(_session("e"))
        return telling(*args)

    late._mode_found = meanwhile  # type: ignore[method-assign]
    if second is None:
        late.upsert(_session("l"))
        assert sorted(RedisStorage(prefix, url=server).get_all_session_ids()) == ["e", "l"]
    else:
        with pytest.raises(InvalidIdentifierError, match="spread over 1 shards, not 3"):
            late.upsert(_session("l"))
        assert RedisStorage(prefix, url=server).get_all_session_ids() == ["e"]


@pytest.mark.parametrize("shards", [None, 3])
def test_a_write_after_another_storage_dropped_the_store_records_its_layout_again(
    server: str, raw: Any, prefix: str, shards: int | None
) -> None:
    dropping = RedisStorage(prefix, url=server, shards=shards)
    dropping.upsert(_session("x"))
    writer = RedisStorage(prefix, url=server)  # reads the layout, then writes on it
    assert writer.read("x") is not None
    dropping.drop()
    writer.upsert(_session("y", user_id="u"))
    assert raw.get("{" + prefix + "}:shards") == str(shards or 1).encode()
    assert raw.get("{" + prefix + "}:mode") == b"agent"
    reader = RedisStorage(prefix, url=server)
    assert reader.get_all_session_ids(user_id="u") == ["y"]
    assert reader._recorded  # it reads the layout once, not before each call
    other = 2 if shards is None else 1
    with pytest.raises(InvalidIdentifierError, match="spread over"):
        RedisStorage(prefix, url=server, shards=other).upsert(_session("z"))
    with pytest.raises(CorruptSessionError, match="keeps agent sessions"):
        RedisStorage(prefix, url=server, mode="team").get_all_session_ids()


@pytest.mark.parametrize("shards", [None, 3])
def test_a_prefix_keeps_the_mode_of_its_first_write(
    server: str, raw: Any, prefix: str, shards: int | None
) -> None:
    agents = RedisStorage(prefix, url=server, shards=shards)
    teams = RedisStorage(prefix, url=server, mode="team")
    assert teams.get_all_session_ids() == []  # connected before the store is made
    agents.upsert(_session("s", _runs(2), user_id="u"))
    assert raw.get("{" + prefix + "}:mode") == b"agent"
    team = TeamSession(session_id="t", user_id="u", team_id="T")
    calls = [
        lambda s: s.upsert(team),
        lambda s: s.read("s"),
        methodcaller("get_all_session_ids"),
        methodcaller("get_all_sessions", user_id="u"),
        methodcaller("delete_session", "s"),
        methodcaller("delete_user", "u"),
        methodcaller("purge_expired"),
        methodcaller("drop"),
        methodcaller("create"),
    ]
    for storage in (teams, RedisStorage(prefix, url=server, mode="team")):
        for call in calls:
            with pytest.raises(CorruptSessionError, match=r"keeps agent sessions.*mode='agent'"):
                call(storage)
    assert agents.get_all_session_ids(user_id="u") == ["s"]
    assert RedisStorage(prefix, url=server).read("s") is not None
    # Dropped by its own mode, the prefix forgets the mode with its sessions.
    agents.drop()
    assert _keys_of(raw, prefix) == []
    teams.upsert(team)
    assert raw.get("{" + prefix + "}:mode") == b"team"
    assert teams.get_all_session_ids() == ["t"]
    with pytest.raises(CorruptSessionError, match="mode='team'"):
        RedisStorage(prefix, url=server).upsert(_session("s"))


def test_a_storage_whose_store_was_made_again_in_another_mode_is_refused_at_its_write(
    server: str, raw: Any, prefix: str
) -> None:
    # The agents' storage read the layout (mode agent) before the store was dropped and
    # made again by a team storage: its write must not put an agent session among them.
    agents = RedisStorage(prefix, url=server)
    agents.upsert(_session("s", _runs(2), user_id="u"))
    RedisStorage(prefix, url=server).drop()
    teams = RedisStorage(prefix, url=server, mode="team")
    teams.upsert(TeamSession(session_id="t", user_id="u", team_id="T"))
    with pytest.raises(CorruptSessionError, match=r"keeps team sessions.*nothing was written"):
        agents.upsert(_session("a", _runs(1), user_id="u"))
    assert teams.get_all_session_ids() == ["t"]
    assert raw.exists("{" + prefix + "}:h:a") == 0
    # Refused from then on, as a storage of its mode opened now is.
    with pytest.raises(CorruptSessionError, match="keeps team sessions"):
        agents.get_all_session_ids()
    with pytest.raises(CorruptSessionError, match="keeps team sessions"):
        agents.upsert(_session("a", _runs(1), user_id="u"))
    agents.close()
    teams.drop()


@pytest.mark.parametrize("shards", [None, 1])
def test_a_storage_whose_store_was_made_again_over_other_shards_writes_where_its_sessions_are(
    server: str, raw: Any, prefix: str, shards: int | None
) -> None:
    # The storage read the layout (one shard) before the store was dropped and made again
    # over four: its write, into the one shard's slot, would make a session that the
    # store's storages never find, nor drop() removes.
    early = RedisStorage(prefix, url=server, shards=shards)
    early.upsert(_session("s", _runs(2), user_id="u"))
    RedisStorage(prefix, url=server).drop()
    spread = RedisStorage(prefix, url=server, shards=4)
    spread.upsert(_session("s", _runs(1), user_id="u"))
    if shards is None:
        early.upsert(_session("a", _runs(3), user_id="u"))
        early.upsert(_session("a", _runs(4), user_id="u"))
        got = spread.read("a")
        assert got is not None
        assert (got.memory["runs"], got.version) == (_runs(4), 2)
        assert sorted(spread.get_all_session_ids(user_id="u")) == ["a", "s"]
        assert early.read("s") is not None
    else:
        with pytest.raises(InvalidIdentifierError, match="spread over 4 shards, not 1"):
            early.upsert(_session("a", _runs(3), user_id="u"))
        assert spread.get_all_session_ids(user_id="u") == ["s"]
    one = "{" + prefix + "}:"
    assert [k for k in _keys_of(raw, prefix) if k.startswith(one)] == [one + "mode", one + "shards"]
    spread.drop()
    assert _keys_of(raw, prefix) == []


@pytest.fixture(scope="module")
def restartable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """A server of this module's own, and a function that restarts it without its data."""
    with _started(restartable_server(tmp_path_factory.mktemp("redis-restart"))) as started:
        yield started


@pytest.mark.timeout(60)
def test_a_server_restarted_without_its_data_is_met_as_it_is_now(
    restartable: tuple[str, Any],
) -> None:
    url, restart = restartable
    prefix = unique("sgt")
    agents = RedisStorage(prefix, url=url)
    agents.upsert(_session("s", _runs(2), user_id="u"))
    assert agents.read("s") is not None
    restart()
    # What the storage remembers of the session, and of the store, is not taken on trust.
    assert agents.read("s") is None
    assert agents.get_all_session_ids(user_id="u") == []
    assert not agents.table_exists()
    # A team storage makes the store again first: the agents' storage may not write there.
    teams = RedisStorage(prefix, url=url, mode="team")
    teams.upsert(TeamSession(session_id="t", user_id="u", team_id="T"))
    with pytest.raises(CorruptSessionError, match="keeps team sessions"):
        agents.upsert(_session("s", _runs(3), user_id="u"))
    assert teams.get_all_session_ids(user_id="u") == ["t"]
    teams.drop()
    restart()
    # Alone after a restart, the storage writes on: the store and its layout are made anew.
    agents = RedisStorage(prefix, url=url)
    agents.upsert(_session("s", _runs(2), user_id="u"))
    restart()
    agents.upsert(_session("s", _runs(3), user_id="u"))
    got = agents.read("s")
    assert got is not None
    assert (got.version, got.memory["runs"]) == (1, _runs(3))
    assert RedisStorage(prefix, url=url).get_all_session_ids(user_id="u") == ["s"]
    raw = redis.Redis.from_url(url)
    assert raw.get("{" + prefix + "}:mode") == b"agent"
    agents.drop()
    agents.close()
    raw.close()


def test_of_two_first_writers_of_different_modes_one_keeps_the_prefix(
    server: str, raw: Any, prefix: str
) -> None:
    names = [f"{prefix}:sub"] + [f"{prefix}:sub{n}" for n in range(1, 5)]
    try:
        for name in names:
            modes = ["agent", "team"] * 3
            storages = [RedisStorage(name, url=server, mode=m) for m in modes]  # type: ignore[arg-type]
            start = threading.Barrier(len(storages))
            outcome: dict[str, list[Any]] = {"agent": [], "team": []}

            def write(
                storage: RedisStorage,
                n: int,
                start: threading.Barrier = start,
                outcome: dict[str, list[Any]] = outcome,
            ) -> None:
                start.wait()
                session = storage.spec.session_class(session_id=f"s{n}")
                try:
                    outcome[storage.mode].append(storage.upsert(session))
                except CorruptSessionError as exc:
                    outcome[storage.mode].append(exc)

            threads = [threading.Thread(target=write, args=(s, n)) for n, s in enumerate(storages)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            kept = raw.get("{" + name + "}:mode").decode()
            lost = "team" if kept == "agent" else "agent"
            assert not any(isinstance(o, Exception) for o in outcome[kept])
            assert all(isinstance(o, CorruptSessionError) for o in outcome[lost])
            owner = RedisStorage(name, url=server, mode=kept)  # type: ignore[arg-type]
            assert len(owner.get_all_sessions()) == 3
    finally:
        for name in names[1:]:
            drop_redis(name, server)


def _as_an_earlier_savegame_left(raw: Any, prefix: str) -> None:
    """Removes the record of the store's mode, which savegame before modes did not make."""
    raw.delete("{" + prefix + "}:mode")


def test_a_prefix_an_earlier_savegame_made_takes_the_mode_of_its_sessions(
    server: str, raw: Any, prefix: str
) -> None:
    teams = RedisStorage(prefix, url=server, mode="team", shards=2)
    for n in range(3):
        teams.upsert(TeamSession(session_id=f"t{n}", team_id="T"))
    _as_an_earlier_savegame_left(raw, prefix)
    agents = RedisStorage(prefix, url=server)
    with pytest.raises(CorruptSessionError, match=r"keeps team sessions.*mode='team'"):
        agents.upsert(_session("a"))
    assert raw.get("{" + prefix + "}:mode") is None  # refused, it recorded nothing
    later = RedisStorage(prefix, url=server, mode="team")
    assert len(later.get_all_session_ids()) == 3  # a read records nothing either
    assert raw.get("{" + prefix + "}:mode") is None
    later.upsert(TeamSession(session_id="t3", team_id="T"))
    assert raw.get("{" + prefix + "}:mode") == b"team"
    # One where an earlier savegame let two modes write: the first of them to write keeps it.
    mixed = prefix + ":sub"
    RedisStorage(mixed, url=server).upsert(_session("a"))
    raw.set("{" + mixed + "}:mode", "team")
    RedisStorage(mixed, url=server, mode="team").upsert(TeamSession(session_id="t", team_id="T"))
    _as_an_earlier_savegame_left(raw, mixed)
    RedisStorage(mixed, url=server, mode="team").upsert(TeamSession(session_id="u", team_id="T"))
    assert raw.get("{" + mixed + "}:mode") == b"team"
    with pytest.raises(CorruptSessionError, match="mode='team'"):
        RedisStorage(mixed, url=server).upsert(_session("a"))
    # One an earlier savegame made and left empty takes the mode of its first writer.
    teams.drop()
    RedisStorage(prefix, url=server, mode="workflow").create()
    _as_an_earlier_savegame_left(raw, prefix)
    RedisStorage(prefix, url=server).upsert(_session("a"))
    assert raw.get("{" + prefix + "}:mode") == b"agent"


@pytest.mark.parametrize(
    "call",
    [
        methodcaller("delete_session", "t0"),
        methodcaller("delete_user", "u"),
        methodcaller("drop"),
        methodcaller("purge_expired"),
        methodcaller("get_all_session_ids"),
    ],
    ids=["delete_session", "delete_user", "drop", "purge_expired", "get_all_session_ids"],
)
def test_a_removal_of_another_mode_on_a_prefix_an_earlier_savegame_made_removes_nothing(
    server: str, raw: Any, prefix: str, call: Callable[[RedisStorage], Any]
) -> None:
    # Without a record of the mode, only writes looked at the sessions: a removal by a
    # storage of another mode (savegame sessions delete with the wrong --mode) removed them.
    teams = RedisStorage(prefix, url=server, mode="team", shards=2)
    for n in range(3):
        teams.upsert(TeamSession(session_id=f"t{n}", user_id="u", team_id="T"))
    _as_an_earlier_savegame_left(raw, prefix)
    with pytest.raises(CorruptSessionError, match=r"keeps team sessions.*mode='team'"):
        call(RedisStorage(prefix, url=server))
    assert raw.get("{" + prefix + "}:mode") is None
    kept = RedisStorage(prefix, url=server, mode="team").get_all_session_ids()
    assert sorted(kept) == ["t0", "t1", "t2"]  # newest first: the seconds they were saved in


def test_upgrade_schema_in_another_mode_than_the_originals_makes_nothing(
    server: str, raw: Any, prefix: str
) -> None:
    team = {"session_id": "t", "team_id": "T", "team_data": {"n": 1}, "created_at": 100}
    try:
        raw.set(f"{prefix}:t", json.dumps(team))
        with pytest.raises(CorruptSessionError, match=r"keeps team sessions.*mode='team'"):
            RedisStorage(prefix, url=server).upgrade_schema()
        assert _keys_of(raw, prefix) == []
        teams = RedisStorage(prefix, url=server, mode="team")
        teams.upgrade_schema()
        got = teams.read("t")
        assert got is not None
        assert got.team_data == {"n": 1}
        assert raw.get("{" + prefix + "}:mode") == b"team"
    finally:
        raw.delete(f"{prefix}:t")


@pytest.mark.parametrize("bad", [0, -1, 1025, "2", 2.0])
def test_shards_are_checked(bad: Any) -> None:
    with pytest.raises(InvalidIdentifierError, match="shards"):
        RedisStorage("p", shards=bad)


@pytest.mark.parametrize("damage", ["list deleted", "digests deleted", "digests lengthened"])
def test_a_write_on_runs_damaged_outside_savegame_is_refused(
    server: str, raw: Any, prefix: str, damage: str
) -> None:
    # Sending only the changed runs onto a list (or digests) that lost entries would make
    # a session that reads wrong: the script refuses, and writes nothing.
    storage = RedisStorage(prefix, url=server)
    session = storage.upsert(_session("s", _runs(3), user_id="u"))
    if damage == "digests lengthened":
        raw.append(f"{{{prefix}}}:d:s", "01234")
    else:
        raw.delete(f"{{{prefix}}}:{'r' if damage == 'list deleted' else 'd'}:s")
    session.memory["runs"].append({"run_id": "3"})  # type: ignore[index]
    with pytest.raises(CorruptSessionError, match=r"'s'.* 3 runs"):
        storage.upsert(session)
    assert int(raw.hget(f"{{{prefix}}}:h:s", "version")) == 1
    with pytest.raises(CorruptSessionError, match="'s'"):
        RedisStorage(prefix, url=server).read("s")
    storage.close()


def test_a_run_entry_edited_to_hold_two_values_fails_the_read(
    server: str, raw: Any, prefix: str
) -> None:
    # A read sends the list's entries joined by commas as one JSON array: an entry edited
    # by hand into "1, 2" read as two runs, the session one run longer than it is.
    storage = RedisStorage(prefix, url=server)
    storage.upsert(_session("s", _runs(3), user_id="u"))
    reader = RedisStorage(prefix, url=server)
    assert reader.read("s") is not None
    raw.lset(f"{{{prefix}}}:r:s", 2, '{"run_id": "2"}, {"run_id": "x"}')
    raw.hdel(f"{{{prefix}}}:h:s", "token")
    with pytest.raises(CorruptSessionError, match=r"'s'.*changed outside savegame"):
        reader.read("s")
    storage.close()
    reader.close()


def test_a_session_whose_header_is_gone_is_no_longer_listed(
    server: str, raw: Any, prefix: str
) -> None:
    # An evicted header leaves index entries, a list and digests behind: the session is
    # gone, for a read as for a live listing, which removes them.
    storage = RedisStorage(prefix, url=server)
    for sid in ("a", "b"):
        storage.upsert(_session(sid, _runs(2), user_id="u"))
    raw.delete(f"{{{prefix}}}:h:a")
    for reader in (RedisStorage(prefix, url=server), storage):
        assert reader.read("a") is None
        assert [s.session_id for s in reader.read_many(["a", "b"])] == ["b"]
        reader.close()
    storage = RedisStorage(prefix, url=server)
    fresh = RedisStorage(prefix, url=server)
    assert fresh.get_all_session_ids(user_id="u") == ["b"]
    assert fresh.get_all_session_ids() == ["b"]
    assert [s.session_id for s in fresh.get_all_sessions(user_id="u")] == ["b"]
    assert raw.exists(f"{{{prefix}}}:r:a", f"{{{prefix}}}:d:a") == 0
    assert raw.hget(f"{{{prefix}}}:idx", "a") is None
    storage.close()
    fresh.close()


@pytest.mark.parametrize("lost", ["idx", "idx and header"])
def test_an_evicted_index_map_never_lists_a_session_under_its_former_user(
    server: str, raw: Any, prefix: str, lost: str
) -> None:
    # {T}:idx says which index keys list each session, so that a write moving a session to
    # another user (or a delete) removes its old entries. Evicted, it no longer can: the
    # old user's index keeps the id, and must not list (nor have delete_user remove) the
    # session of its new user.
    tag = "{" + prefix + "}:"
    storage = RedisStorage(prefix, url=server)
    storage.upsert(_session("s", _runs(2), user_id="old", agent_id="A"))
    storage.upsert(_session("kept", _runs(1), user_id="old", agent_id="A"))
    raw.delete(f"{tag}idx", *([f"{tag}h:s"] if lost == "idx and header" else []))
    storage.upsert(_session("s", _runs(3), user_id="new", agent_id="B"))
    if lost == "idx":
        # The write took the session out of the indexes its stored header named.
        for key in ("u:old", "e:A", "ue:3:oldA"):
            assert _members(raw, tag + key) == ["kept"], key
    for reader in (storage, RedisStorage(prefix, url=server)):
        assert reader.get_all_session_ids(user_id="old") == ["kept"]
        assert reader.get_all_session_ids(entity_id="A") == ["kept"]
        assert reader.get_all_session_ids(user_id="old", entity_id="A") == ["kept"]
        assert [s.session_id for s in reader.get_recent_sessions(user_id="old", limit=1)] == [
            "kept"
        ]
        assert reader.get_all_session_ids(user_id="new", entity_id="B") == ["s"]
    assert storage.delete_user("old") == 1
    got = storage.read("s")
    assert got is not None
    assert (got.user_id, got.memory["runs"]) == ("new", _runs(3))
    # With its header evicted too, nothing tells where the session was listed: the entries
    # stay (unlisted), and go with their keys.
    raw.delete(*(tag + key for key in ("u:old", "e:A", "ue:3:oldA")))


def test_an_evicted_index_map_never_lists_a_session_holding_lone_surrogates_wrongly(
    server: str, raw: Any, prefix: str
) -> None:
    # Where {T}:idx has no entry, the scripts read a session's user and entity from its
    # header's JSON, which holds a lone surrogate (as model output may) as an escape
    # Redis's cjson refuses to decode.
    tag = "{" + prefix + "}:"
    storage = RedisStorage(prefix, url=server)
    odd = {"note": "cut \ud800 here", "path": "C:\\udd00", "pair": "\U0001f600"}
    storage.upsert(_session("s", _runs(2), user_id="old", agent_id="A", session_data=odd))
    storage.upsert(_session("kept", _runs(1), user_id="old", agent_id="A"))
    raw.delete(f"{tag}idx")
    storage.upsert(_session("s", _runs(3), user_id="new", agent_id="B", session_data=odd))
    for key in ("u:old", "e:A", "ue:3:oldA"):
        assert _members(raw, tag + key) == ["kept"], key
    raw.hdel(f"{tag}idx", "s")
    for reader in (storage, RedisStorage(prefix, url=server)):
        assert reader.get_all_session_ids(user_id="new", entity_id="B") == ["s"]
    raw.zadd(tag + "u:old", {"s": -1})
    for reader in (storage, RedisStorage(prefix, url=server)):
        assert reader.get_all_session_ids(user_id="old") == ["kept"]
    assert storage.delete_user("old") == 1
    got = storage.read("s")
    assert got is not None
    assert (got.user_id, got.session_data, got.memory["runs"]) == ("new", odd, _runs(3))
    raw.delete(tag + "u:old")  # put there by hand, unknown to the store: drop() leaves it


def test_an_evicted_index_map_finds_a_user_beyond_the_bmp_beside_a_lone_surrogate(
    server: str, raw: Any, prefix: str
) -> None:
    # Where {T}:idx has no entry, the scripts read the user and entity from the header's
    # JSON. A lone surrogate in the session's data must not make them read an emoji in an
    # id (written as a pair of surrogate escapes) as something else.
    tag = "{" + prefix + "}:"
    user, agent = "ü 🎲", "🤖"
    users = f"ue:{len(user.encode())}:{user}{agent}"
    odd = {"note": "cut \ud800 here"}
    storage = RedisStorage(prefix, url=server)
    for sid in ("s", "kept"):
        storage.upsert(_session(sid, _runs(2), user_id=user, agent_id=agent, session_data=odd))
    raw.delete(f"{tag}idx")
    storage.upsert(_session("s", _runs(3), user_id="new", agent_id="B", session_data=odd))
    for key in (f"u:{user}", f"e:{agent}", users):
        assert _members(raw, tag + key) == ["kept"], key
    raw.delete(f"{tag}idx")
    assert storage.delete_session("kept")
    for key in (f"u:{user}", f"e:{agent}", users):
        assert _members(raw, tag + key) == [], key
    assert storage.get_all_session_ids(user_id="new") == ["s"]


def _three_sessions_then_evicted(server: str, raw: Any, prefix: str, key: str) -> RedisStorage:
    """A storage of sessions s0 to s2 (user u, agent a), whose store then lost ``{T}:<key>``
    as an evicting maxmemory-policy would drop it."""
    storage = RedisStorage(prefix, url=server)
    for i in range(3):
        storage.upsert(_session(f"s{i}", _runs(2), user_id="u", agent_id="a"))
    raw.delete("{" + prefix + "}:" + key)
    return storage


def test_drop_removes_the_sessions_of_an_evicted_list_of_all(
    server: str, raw: Any, prefix: str
) -> None:
    # drop walks {T}:all; evicted, the sessions must still go, found by {T}:idx.
    storage = _three_sessions_then_evicted(server, raw, prefix, "all")
    storage.drop()
    assert RedisStorage(prefix, url=server).read("s0") is None
    assert _keys_of(raw, prefix) == []


def test_with_the_index_map_evicted_removals_leave_no_index_entry(
    server: str, raw: Any, prefix: str
) -> None:
    # Without {T}:idx, a removal finds the index keys of a session by its header.
    storage = _three_sessions_then_evicted(server, raw, prefix, "idx")
    assert storage.delete_session("s0")
    for key in ("u:u", "e:a", "ue:1:ua"):
        assert _members(raw, "{" + prefix + "}:" + key) == ["s1", "s2"], key
    storage.drop()
    assert _keys_of(raw, prefix) == []


def test_a_purge_racing_a_save_removes_only_what_expired(
    server: str, raw: Any, prefix: str
) -> None:
    # Between the script that finds the expired ids and the one that removes them, one of
    # them is saved again: it is left out, and its keys with it, not taken for the next id's.
    short = RedisStorage(prefix, url=server, expire=1)
    for sid in ("a", "b"):
        short.upsert(_session(sid, _runs(2), user_id="u"))
    time.sleep(2.1)  # both expired
    other = RedisStorage(prefix, url=server, expire=3600)
    purger = RedisStorage(prefix, url=server, expire=3600)
    script = purger._script

    def save_meanwhile(source: str, keys: list[str], args: list[Any]) -> Any:
        found = script(source, keys, args)
        if source is redis_backend._SWEEP and found:
            assert sorted(map(bytes.decode, found)) == ["a", "b"]
            other.upsert(_session("a", _runs(1, "again"), user_id="u"))
        return found

    purger._script = save_meanwhile  # type: ignore[method-assign]
    assert purger.purge_expired() == 1
    fresh = RedisStorage(prefix, url=server, cache_bytes=0)
    got = fresh.read("a")
    assert got is not None
    assert got.memory == {"runs": _runs(1, "again"), "summary": "s"}
    assert fresh.get_all_session_ids(user_id="u") == ["a"]
    assert raw.exists(f"{{{prefix}}}:r:b", f"{{{prefix}}}:d:b") == 0
    for each in (short, other, purger, fresh):
        each.close()


def test_a_listing_cleans_up_any_number_of_expired_sessions(server: str, prefix: str) -> None:
    # More than Lua unpacks at once (about 8,000) are removed in several calls.
    storage = RedisStorage(prefix, url=server, expire=3600)
    sessions = [f"s{i}" for i in range(8_100)]
    for sid in sessions:
        storage.upsert(_session(sid, user_id="u"))
    storage.upsert(_session("live", user_id="u"))
    fresh = RedisStorage(prefix, url=server, expire=3600, cache_bytes=0)
    tag = fresh._tag("live")
    for start in range(0, len(sessions), 1000):
        # Expired long ago, as far as the index of expiry times knows.
        chunk = dict.fromkeys(sessions[start : start + 1000], 1)
        fresh._call(lambda client, chunk=chunk: client.zadd(tag + "exp", chunk))
    assert fresh.get_all_session_ids(user_id="u") == ["live"]
    assert fresh.get_all_session_ids() == ["live"]
    assert fresh.purge_expired() == 0
    storage.close()
    fresh.close()


def test_a_damaged_session_raises_instead_of_looking_absent(
    server: str, raw: Any, prefix: str
) -> None:
    RedisStorage(prefix, url=server).upsert(_session("s", _runs(2), user_id="u"))
    raw.hset("{" + prefix + "}:h:s", "data", "{not json")
    storage = RedisStorage(prefix, url=server)
    with pytest.raises(CorruptSessionError, match="'s'"):
        storage.read("s")
    with pytest.raises(CorruptSessionError):
        storage.get_all_sessions(user_id="u")
    assert storage.delete_session("s") is True
    assert storage.read("s") is None


@pytest.mark.parametrize(
    "writes", [0, 1, PAST_TOKENS], ids=["alone", "another-writes", "past-tokens-full"]
)
def test_a_write_that_a_client_of_the_users_own_sends_again_is_never_made_twice(
    writes: int,
) -> None:
    # The client's own retries send the write script again without savegame seeing it;
    # the script's answer still shows the write's token among the session's last writes.
    # After more than PAST_TOKENS other writes in the client's retry window, savegame
    # cannot tell: the README says so. The retries are set here, as redis-py's default
    # differs by version (none before 6, 3 in 6 and 7, 10 since 8).
    server = server_url(False)
    prefix = unique("sgc")
    clients: list[Any] = []
    errors = [redis.ConnectionError, redis.TimeoutError]

    def at(host: str, port: int, db: int) -> RedisStorage:
        retry = Retry(NoBackoff(), 10)
        clients.append(redis.Redis(host=host, port=port, db=db, retry=retry, retry_on_error=errors))
        return RedisStorage(prefix, client=clients[-1])

    try:
        with redis_through_proxy(server, at) as link:
            check_lost_reply(link, writes)
    finally:
        for client in clients:
            client.close()
        with RedisStorage(prefix, url=server) as cleanup:
            cleanup.drop()


def test_times_an_earlier_savegame_stored_as_floats_are_read_as_whole_seconds(
    server: str, raw: Any, prefix: str
) -> None:
    RedisStorage(prefix, url=server).upsert(_session("s", _runs(1), user_id="u"))
    header = "{" + prefix + "}:h:s"
    data = json.loads(raw.hget(header, "data"))
    data.update(created_at=1796514380.75, updated_at=1796514381.25)
    raw.hset(header, mapping={"data": json.dumps(data), "created_at": "1796514380.75"})
    storage = RedisStorage(prefix, url=server)
    [got] = storage.get_all_sessions(user_id="u")
    assert (got.created_at, got.updated_at) == (1796514380, 1796514381)
    got.session_data = {"saved": "again"}
    assert storage.upsert(got).created_at == 1796514380
    storage.close()


def test_a_value_larger_than_redis_takes_is_refused_before_it_is_sent(
    server: str, raw: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sent, a value over proto-max-bulk-len (512 MB) makes the server close the connection,
    # which looked like a server gone away (BackendUnavailableError, after sending it four
    # times). The limit is lowered here, so the test needs no gigabytes.
    storage = RedisStorage(prefix, url=server)
    before = storage.upsert(_session("s", _runs(2), user_id="u"))
    monkeypatch.setattr(redis_backend, "MAX_ARGUMENT", 1 << 20)
    for sid in ("s", "new"):
        for holder in ("runs", "header"):
            big = "\u00e9" * (600 * 1024)  # 1.2 MB as UTF-8, 600 k characters
            runs = _runs(2) + ([{"blob": big}] if holder == "runs" else [])
            session = _session(sid, runs, user_id="u")
            if holder == "header":
                session.session_data = {"blob": big}
            with pytest.raises(SerializationError, match="larger than"):
                storage.upsert(session)
    for reader in (storage, RedisStorage(prefix, url=server)):
        assert reader.read("s") == before
        assert reader.read("new") is None
        assert reader.get_all_session_ids(user_id="u") == ["s"]


def _answers(client: redis.Redis) -> bool:
    """Whether the server answers ``client``, rather than saying it is BUSY."""
    try:
        client.ping()
    except redis.exceptions.ResponseError as exc:
        if str(exc).startswith("BUSY"):
            return False
        raise
    return True


@pytest.mark.timeout(60)
def test_a_server_busy_with_a_script_is_unavailable_not_a_refusal(own_server: str) -> None:
    # While any client's script runs past busy-reply-threshold, the server answers every
    # other command with BUSY and runs none: nothing was done, and it serves again soon.
    prefix = unique("sgt")
    storage = RedisStorage(prefix, url=own_server)
    stored = storage.upsert(_session("s", _runs(1)))
    admin = redis.Redis.from_url(own_server)
    threshold = admin.config_get("busy-reply-threshold")["busy-reply-threshold"]
    admin.config_set("busy-reply-threshold", 50)
    spinning = redis.Redis.from_url(own_server)

    def spin() -> None:
        with contextlib.suppress(redis.exceptions.ResponseError):  # killed, at the end
            spinning.eval("while true do end", 0)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    probe = redis.Redis.from_url(own_server)
    try:
        deadline = time.monotonic() + 10
        while _answers(probe):
            assert time.monotonic() < deadline, "the script never made the server busy"
            time.sleep(0.02)
        with pytest.raises(BackendUnavailableError, match="BUSY"):
            storage.upsert(_session("s", _runs(2)))
        with pytest.raises(BackendUnavailableError, match="BUSY"):
            RedisStorage(prefix, url=own_server).read("s")
    finally:
        probe.script_kill()
        spinner.join(10)
        admin.config_set("busy-reply-threshold", threshold)
    assert storage.read("s") == stored
    storage.drop()
    for client in (admin, spinning, probe):
        client.close()


class _Migration:
    """One cluster slot being moved from its master to another, as ``redis-cli --cluster
    reshard`` moves it: IMPORTING and MIGRATING set, then keys moved in batches (``move``),
    then the slot given to the new master (``finish``, which is always run)."""

    def __init__(self, raw: Any, slot: int) -> None:
        self.slot = slot
        self.source = raw.nodes_manager.get_node_from_slot(slot)
        self.target = next(n for n in raw.get_primaries() if n.name != self.source.name)
        self.primaries = raw.get_primaries()
        self.ids = {n.name: self.node(n).execute_command("CLUSTER", "MYID") for n in self.primaries}

    @staticmethod
    def node(node: Any) -> Any:
        return redis.Redis(host=node.host, port=node.port)

    def begin(self) -> None:
        source, target = self.node(self.source), self.node(self.target)
        target.execute_command(
            "CLUSTER", "SETSLOT", self.slot, "IMPORTING", self.ids[self.source.name]
        )
        source.execute_command(
            "CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.ids[self.target.name]
        )

    def move(self, *keys: str) -> None:
        source = self.node(self.source)
        for key in keys:
            source.execute_command(
                "MIGRATE", self.target.host, self.target.port, "", 0, 5000, "KEYS", key
            )

    def finish(self) -> None:
        source = self.node(self.source)
        self.move(
            *(
                k.decode()
                for k in source.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, 100000)
            )
        )
        for node in self.primaries:
            self.node(node).execute_command(
                "CLUSTER", "SETSLOT", self.slot, "NODE", self.ids[self.target.name]
            )


@contextlib.contextmanager
def _migrating(raw: Any, prefix: str) -> Iterator[_Migration]:
    migration = _Migration(raw, key_slot(f"{{{prefix}}}:all".encode()))
    with _servers_held():
        migration.begin()
        try:
            yield migration
        finally:
            migration.finish()


@pytest.fixture
def cluster_raw() -> Iterator[Any]:
    client = redis_client(server_url(True))
    yield client
    client.close()


@pytest.fixture
def cluster_prefix() -> Iterator[str]:
    name = unique("sgt")
    yield name
    with RedisStorage(name, url=server_url(True)) as storage:
        storage.drop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("same_user", [False, True], ids=["own-user", "shared-user"])
def test_a_write_while_the_slot_migrates_never_loses_the_session(
    cluster_raw: Any, cluster_prefix: str, same_user: bool
) -> None:
    # A script on a MIGRATING slot is stopped by its first command on a key missing there:
    # a write that removed the header (or an index) to make it again lost it.
    url, prefix = server_url(True), cluster_prefix
    storage = RedisStorage(prefix, url=url, expire=3600)
    session = storage.upsert(_session("s", _runs(1), user_id="u", agent_id="a"))
    if same_user:
        storage.upsert(_session("other", _runs(1), user_id="u", agent_id="a"))
    written = True
    with _migrating(cluster_raw, prefix):
        session.memory["runs"].append({"run_id": "1"})  # type: ignore[index]
        try:
            storage.upsert(session)
        except BackendUnavailableError:
            written = False
    fresh = RedisStorage(prefix, url=url, expire=3600)
    stored = fresh.read("s")
    assert stored is not None
    assert len(stored.memory["runs"]) == (2 if written else 1)  # type: ignore[index]
    assert "s" in fresh.get_all_session_ids(user_id="u")
    assert "s" in fresh.get_all_session_ids(entity_id="a")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("moved", ["session", "indexes"])
def test_a_removal_or_listing_while_the_slot_migrates_never_unlists_a_session(
    cluster_raw: Any, cluster_prefix: str, moved: str
) -> None:
    # Keys moved so far: the session's (a removal stops at its header, after removing its
    # index entries), or the indexes (a listing there sees no header and forgot it).
    url, prefix = server_url(True), cluster_prefix
    tag = "{" + prefix + "}:"
    storage = RedisStorage(prefix, url=url, expire=3600)
    for sid in ("s1", "s2"):
        storage.upsert(_session(sid, _runs(1), user_id="u", agent_id="a"))
    with _migrating(cluster_raw, prefix) as migration:
        if moved == "session":
            migration.move(tag + "h:s1", tag + "r:s1", tag + "d:s1")
        else:
            migration.move(*(tag + k for k in ("all", "idx", "exp", "u:u")))
        with contextlib.suppress(BackendUnavailableError):
            storage.get_all_session_ids(user_id="u")
        with contextlib.suppress(BackendUnavailableError):
            storage.delete_user("u")
    fresh = RedisStorage(prefix, url=url, expire=3600)
    alive = [sid for sid in ("s1", "s2") if fresh.read(sid) is not None]
    assert sorted(fresh.get_all_session_ids(user_id="u")) == alive  # newest first: any order
    fresh.delete_user("u")
    assert fresh.read("s1") is None
    assert fresh.read("s2") is None
    fresh.drop()
    nodes = [_Migration.node(n) for n in cluster_raw.get_primaries()]
    assert not [key for node in nodes for key in node.keys(tag + "*")]


@pytest.fixture(scope="module")
def cluster_of_our_own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a 3-master cluster of this module's own: the tests that unassign slots
    do it there, not on the cluster others share."""
    with _started(own_cluster(tmp_path_factory.mktemp("redis-cluster-own"))) as cluster:
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in cluster["ports"])


@contextlib.contextmanager
def _slot_unserved(url: str, prefix: str, how: str) -> Iterator[None]:
    """The master of the slot of ``{prefix}`` answering CLUSTERDOWN, as during a failover:
    ``down``, another of its slots unassigned, which a cluster that requires full coverage
    (the default) takes for the cluster down; ``uncovered``, the store's own slot unassigned
    in a cluster that does not. Put back on leaving."""
    raw = redis_client(url)
    slot = key_slot(f"{{{prefix}}}:all".encode())
    owner = raw.nodes_manager.get_node_from_slot(slot)
    nodes = [_Migration.node(n) for n in raw.get_primaries()]
    master = _Migration.node(owner)
    if how == "down":
        gone = next(
            s
            for s in range(16384)
            if s != slot and raw.nodes_manager.get_node_from_slot(s).name == owner.name
        )
        master.execute_command("CLUSTER", "DELSLOTS", gone)
    else:
        gone = slot
        for node in nodes:
            node.config_set("cluster-require-full-coverage", "no")
        for node in nodes:
            node.execute_command("CLUSTER", "DELSLOTS", slot)
    try:
        for _ in range(100):
            refused = how == "uncovered" or b"cluster_state:fail" in master.execute_command(
                "CLUSTER", "INFO"
            )
            if refused:
                break
            time.sleep(0.05)
        yield
    finally:
        master.execute_command("CLUSTER", "ADDSLOTS", gone)
        whole = (b"cluster_state:ok", b"cluster_slots_assigned:16384")
        for _ in range(200):
            infos = [n.execute_command("CLUSTER", "INFO") for n in nodes]
            if all(part in info for info in infos for part in whole):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the cluster did not take the slot back in 10 s")
        for node in nodes:
            node.config_set("cluster-require-full-coverage", "yes")
        raw.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["down", "uncovered"])
def test_a_write_the_cluster_refuses_as_down_is_unavailable_not_of_unknown_outcome(
    cluster_of_our_own: str, how: str
) -> None:
    # CLUSTERDOWN is an answer: the script did not run. Taken for a sending that went
    # unanswered, the write raised an "outcome unknown" StorageError, which no caller
    # retries, during every failover of a master.
    url, prefix = cluster_of_our_own, unique("sgt")
    storage = RedisStorage(prefix, url=url)
    try:
        storage.upsert(_session("s", _runs(1)))
        with _slot_unserved(url, prefix, how):
            with pytest.raises(BackendUnavailableError) as caught:
                storage.upsert(_session("s", _runs(2)))
            assert "unknown" not in str(caught.value)
            with pytest.raises(BackendUnavailableError):
                storage.read("s")
        fresh = RedisStorage(prefix, url=url)
        got = fresh.read("s")
        assert got is not None
        assert (got.memory["runs"], got.version) == (_runs(1), 1)  # type: ignore[index]
        # The slot served again is found by the storage that met it unserved.
        assert storage.upsert(_session("s", _runs(2))).version == 2
    finally:
        storage.drop()
        storage.close()


@pytest.mark.timeout(60)
def test_a_cluster_serving_all_but_a_slot_serves_the_stores_of_the_others(
    cluster_of_our_own: str,
) -> None:
    # A cluster run with cluster-require-full-coverage no serves every slot a master
    # holds; redis-py's default refused to start on a cluster with a slot unserved.
    url, prefix, served = cluster_of_our_own, unique("sgt"), unique("sgt")
    storage = RedisStorage(served, url=url, shards=3)
    try:
        with _slot_unserved(url, prefix, "uncovered"):
            storage.upsert(_session("s", _runs(2), user_id="u"))
            assert storage.get_all_session_ids(user_id="u") == ["s"]
            with RedisStorage(served, url=url) as other:
                got = other.read("s")
                assert got is not None
                assert got.memory["runs"] == _runs(2)  # type: ignore[index]
            with pytest.raises(BackendUnavailableError, match="not covered"):
                RedisStorage(prefix, url=url).read("s")
    finally:
        storage.drop()
        storage.close()


@contextlib.contextmanager
def _store_moving(url: str, finish_after: float | None = None) -> Iterator[tuple[Any, Any, Any]]:
    """A new store holding session ``s`` (one run), whose slot is moving to another master
    with its key ``{P}:all`` moved already, and the others not. Yields the store's
    storage, the session as stored, and ``done()``, which waits for the move to finish: it
    finishes ``finish_after`` seconds in (by a timer), or at ``done()``. The store is
    dropped at the end."""
    storage = RedisStorage(unique("sgt"), url=url)
    raw = redis_client(url)
    try:
        session = storage.upsert(_session("s", _runs(1), user_id="u"))
        migration = _Migration(raw, key_slot(f"{{{storage.prefix}}}:all".encode()))
        migration.begin()
        timer = None if finish_after is None else threading.Timer(finish_after, migration.finish)
        finished = False

        def done() -> None:
            nonlocal finished
            if not finished:
                finished = True
                migration.finish() if timer is None else timer.join()

        try:
            if timer is not None:
                timer.start()
            migration.move(f"{{{storage.prefix}}}:all")
            yield storage, session, done
        finally:
            done()
    finally:
        storage.drop()
        storage.close()
        raw.close()


@pytest.mark.timeout(60)
def test_a_write_while_the_slot_migrates_briefly_is_made(cluster_of_our_own: str) -> None:
    # A script whose keys are on both nodes for now is answered TRYAGAIN, which redis-py
    # asks again for about 0.4 s: the write failed, though tried again it would have been
    # made a moment later, when the slot had moved.
    url = cluster_of_our_own
    with _store_moving(url, finish_after=0.7) as (storage, session, done):
        session.memory["runs"].append({"run_id": "1"})
        assert storage.upsert(session).version == 2
        done()
        got = RedisStorage(storage.prefix, url=url).read("s")
        assert got is not None
        assert got.memory["runs"] == [*_runs(1), {"run_id": "1"}]


@pytest.mark.timeout(60)
def test_a_storage_made_while_a_master_is_away_serves_the_stores_of_the_others(
    tmp_path: Path,
) -> None:
    # The master of slot 0 is the one redis-py asks for its commands when it starts, and
    # only a retry, which savegame turned off, asks another: with that master away, no
    # storage could be made, for any store.
    with _started(own_cluster(tmp_path)) as cluster:
        nodes = {port: redis.Redis(port=port) for port in cluster["ports"]}
        for node in nodes.values():
            node.config_set("cluster-require-full-coverage", "no")
        first = next(
            part[2][1] for part in nodes[cluster["ports"][0]].cluster("SLOTS") if part[0] == 0
        )
        others = [port for port in cluster["ports"] if port != first]
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in others)
        raw = redis_client(url)
        away = {raw.nodes_manager.get_node_from_slot(0).name}
        prefix = next(
            name
            for name in (unique("sgt") for _ in range(1000))
            if raw.get_node_from_key(f"{{{name}}}:all").name not in away
        )
        raw.close()
        os.kill(cluster["pids"][cluster["ports"].index(first)], signal.SIGKILL)
        storage = RedisStorage(prefix, url=url, connect_timeout=1)
        storage.upsert(_session("s", _runs(2), user_id="u"))
        got = storage.read("s")
        assert got is not None
        assert got.memory["runs"] == _runs(2)  # type: ignore[index]
        assert storage.get_all_session_ids(user_id="u") == ["s"]
        # The connect-time ACL probe declares no key: sent to a random slot's master, it
        # met the away one a third of the time, and only the retries hid it.
        for _ in range(30):
            assert storage._acl_probe(storage._client) is False
        storage.close()
        for node in nodes.values():
            node.close()


@pytest.mark.timeout(60)
def test_a_call_while_the_slot_migrates_for_long_says_so(cluster_of_our_own: str) -> None:
    # It said "unavailable: TTL exhausted.", redis-py's words for giving up on TRYAGAIN.
    url = cluster_of_our_own
    with _store_moving(url) as (storage, session, done):
        session.memory["runs"].append({"run_id": "1"})
        for call in (lambda: storage.upsert(session), lambda: storage.read("other")):
            with pytest.raises(BackendUnavailableError, match="is moving the slot"):
                call()
        done()
        got = RedisStorage(storage.prefix, url=url).read("s")
        assert got is not None
        assert got.memory["runs"] == _runs(1)


def test_storages_upgrading_one_original_prefix_at_once_all_return_and_move_each_once(
    server: str, raw: Any, prefix: str
) -> None:
    # Each finds keys that another moves meanwhile: a key gone is passed over, and a
    # session stored by another from the same old copy is no session "not moved from it".
    old = {
        f"{prefix}:s{i}": json.dumps(
            {
                "session_id": f"s{i}",
                "user_id": f"u{i % 3}",
                "memory": {"runs": [{"run_id": f"{i}-{n}"} for n in range(i % 4)]},
                "created_at": 1_700_000_000 + i,
                "updated_at": 1_700_000_100 + i,
            }
        )
        for i in range(60)
    }
    try:
        for key, value in old.items():
            raw.set(key, value)
        upgraders = [RedisStorage(prefix, url=server) for _ in range(4)]
        started = threading.Barrier(len(upgraders), timeout=30)

        def upgrade(n: int) -> None:
            started.wait()
            upgraders[n].upgrade_schema()

        in_threads(len(upgraders), upgrade)
        assert not any(raw.exists(key) for key in old)
        storage = RedisStorage(prefix, url=server)
        assert len(storage.get_all_session_ids()) == 60
        for i in range(60):
            got = storage.read(f"s{i}")
            assert got is not None
            assert (got.user_id, got.version, got.updated_at) == (
                f"u{i % 3}",
                1,
                1_700_000_100 + i,
            )
            assert got.memory == {"runs": [{"run_id": f"{i}-{n}"} for n in range(i % 4)]}
    finally:
        for key in old:
            raw.delete(key)


def test_upgrade_schema_run_again_never_overwrites_a_session_saved_since(
    server: str, raw: Any, prefix: str
) -> None:
    # An upgrade killed between storing a session and deleting its old key leaves both; the
    # session is then saved again. Run again, the upgrade must not put the old copy back.
    old = {"session_id": "s", "memory": {"runs": [{"n": 1}]}, "created_at": 100}
    try:
        raw.set(f"{prefix}:s", json.dumps(old))
        storage = RedisStorage(prefix, url=server)
        storage.restore(AgentSession.from_dict(old))  # type: ignore[arg-type]
        current = storage.read("s")
        assert current is not None
        current.memory["runs"].append({"n": 2})
        storage.upsert(current)
        storage.upgrade_schema()
        got = storage.read("s")
        assert got is not None
        assert (got.memory["runs"], got.version) == ([{"n": 1}, {"n": 2}], 2)
        assert raw.exists(f"{prefix}:s") == 0
    finally:
        raw.delete(f"{prefix}:s")


def test_upgrade_schema_run_again_moves_what_the_original_saved_since_the_move(
    server: str, raw: Any, prefix: str
) -> None:
    # The original, still running after the upgrade, saves a session again under its old
    # key. Run again, the upgrade must move that newer save, not delete it as a leftover;
    # a session savegame saved after it keeps savegame's.
    first = {"session_id": "s", "memory": {"runs": [{"n": 1}]}, "created_at": 100}
    try:
        raw.set(f"{prefix}:s", json.dumps({**first, "updated_at": 200}))
        raw.set(f"{prefix}:t", json.dumps({**first, "session_id": "t", "updated_at": 200}))
        storage = RedisStorage(prefix, url=server)
        storage.upgrade_schema()
        later = {"memory": {"runs": [{"n": 1}, {"n": 2}]}, "updated_at": 300}
        raw.set(f"{prefix}:s", json.dumps({**first, **later}))
        raw.set(f"{prefix}:t", json.dumps({**first, **later, "session_id": "t"}))
        ours = storage.read("t")
        assert ours is not None
        ours.session_data = {"by": "savegame"}
        storage.upsert(ours)
        storage.upgrade_schema()
        for reader in (storage, RedisStorage(prefix, url=server)):
            got = reader.read("s")
            assert got is not None
            assert (got.memory, got.updated_at, got.version) == (later["memory"], 300, 2)
            kept = reader.read("t")
            assert kept is not None
            assert (kept.memory, kept.session_data) == (first["memory"], {"by": "savegame"})
        assert raw.exists(f"{prefix}:s", f"{prefix}:t") == 0
    finally:
        raw.delete(f"{prefix}:s", f"{prefix}:t")


def test_upgrade_schema_of_sessions_the_original_stored_without_created_at(
    server: str, raw: Any, prefix: str
) -> None:
    # The original's Agent set no created_at, and its upsert (asdict, then "if 'created_at'
    # not in data") kept the None: every session it stored has updated_at alone. They take
    # it as created_at, so their order is kept, and an upgrade interrupted (Ctrl-C) between
    # storing a session and deleting its old key completes when run again.
    rows = {
        f"s{i}": {
            **AgentSession(session_id=f"s{i}", user_id="u", agent_id="A").to_dict(),
            "memory": {"runs": _runs(2)},
            "updated_at": 1_700_000_000 + i,
        }
        for i in range(3)
    }
    try:
        for sid, row in rows.items():
            assert row["created_at"] is None
            raw.set(f"{prefix}:{sid}", json.dumps(row))
        storage = RedisStorage(prefix, url=server)
        _upgrade_cut_before_its_first_delete(storage)
        assert sum(raw.exists(f"{prefix}:{sid}") for sid in rows) == 3
        again = RedisStorage(prefix, url=server)
        again.upgrade_schema()
        assert [sid for sid in rows if raw.exists(f"{prefix}:{sid}")] == []
        got = again.get_recent_sessions(user_id="u", entity_id="A", limit=3)
        assert [s.session_id for s in got] == ["s2", "s1", "s0"]
        assert [(s.created_at, s.updated_at) for s in got] == [
            (rows[s.session_id]["updated_at"],) * 2 for s in got
        ]
        assert got[0].memory == {"runs": _runs(2)}
        storage.close()
        again.close()
    finally:
        raw.delete(*(f"{prefix}:{sid}" for sid in rows))


def _upgrade_cut_before_its_first_delete(storage: RedisStorage) -> None:
    """Runs ``storage.upgrade_schema()`` up to the deletion of its first old key, as an
    upgrade killed after storing a session and before deleting the original's copy."""
    call = storage._call

    def interrupted(fn: Any) -> Any:
        if isinstance(fn, methodcaller) and "'delete'" in repr(fn):
            raise KeyboardInterrupt
        return call(fn)

    storage._call = interrupted  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            storage.upgrade_schema()
    finally:
        del storage._call


def test_upgrade_schema_of_a_session_stored_without_any_time(
    server: str, raw: Any, prefix: str
) -> None:
    # A key written by hand (the original always set updated_at) has neither time: it is
    # stamped when moved, never later than a save that follows, and an upgrade interrupted
    # between storing it and deleting its old key completes when run again.
    row = {**AgentSession(session_id="s", user_id="u").to_dict(), "memory": {"runs": _runs(2)}}
    row.pop("version")
    try:
        raw.set(f"{prefix}:s", json.dumps(row))
        storage = RedisStorage(prefix, url=server)
        _upgrade_cut_before_its_first_delete(storage)
        assert raw.exists(f"{prefix}:s") == 1
        again = RedisStorage(prefix, url=server)
        again.upgrade_schema()
        assert raw.exists(f"{prefix}:s") == 0
        moved = again.read("s")
        assert moved is not None
        assert (moved.memory, moved.version) == ({"runs": _runs(2)}, 1)
        assert moved.created_at == moved.updated_at
        assert moved.created_at is not None
        assert moved.created_at <= int(time.time())
        saved = again.upsert(moved)
        assert saved.created_at == moved.created_at
        assert saved.updated_at is not None
        assert saved.updated_at >= moved.created_at
        storage.close()
        again.close()
    finally:
        raw.delete(f"{prefix}:s")


def test_upgrade_schema_leaves_in_place_what_it_cannot_move_and_moves_the_rest(
    server: str, raw: Any, prefix: str
) -> None:
    # A team session under an agent store (the CLI's default mode), and a session savegame
    # cannot store: both stay as they were, named in the error; the others move.
    team = {"session_id": "t", "team_id": "T", "team_data": {"name": "x"}, "created_at": 100}
    bad = {"session_id": "bad", "user_id": 5}
    good = [{"session_id": f"g{i}", "created_at": 100 + i} for i in range(5)]
    rows = {"t": team, "bad": bad, **{g["session_id"]: g for g in good}}
    try:
        for sid, row in rows.items():
            raw.set(f"{prefix}:{sid}", json.dumps(row))
        storage = RedisStorage(prefix, url=server, mode="agent")
        with pytest.raises(SerializationError, match=f"{prefix}:t.*team") as caught:
            storage.upgrade_schema()
        assert f"{prefix}:bad" in str(caught.value)
        assert sorted(storage.get_all_session_ids()) == [f"g{i}" for i in range(5)]
        assert json.loads(raw.get(f"{prefix}:t")) == team
        assert json.loads(raw.get(f"{prefix}:bad")) == bad
        # The prefix keeps agent sessions now: a team storage moves nothing there.
        with (
            RedisStorage(prefix, url=server, mode="team") as teams,
            pytest.raises(CorruptSessionError, match="mode='agent'"),
        ):
            teams.upgrade_schema()
        assert json.loads(raw.get(f"{prefix}:t")) == team
    finally:
        raw.delete(*(f"{prefix}:{sid}" for sid in rows))


@pytest.mark.parametrize("expire", [None, 100, 10**6])
def test_upgrade_schema_keeps_the_time_a_session_had_left(
    server: str, raw: Any, prefix: str, expire: int | None
) -> None:
    # The original stored each session with SET ... EX <its expire>: a session moved keeps
    # the time it had left, never more than this storage's expire gives it; one stored
    # without a TTL lives as this storage's sessions do.
    rows = {sid: {"session_id": sid, "memory": {"runs": _runs(2)}} for sid in ("ttl", "none")}
    try:
        raw.set(f"{prefix}:ttl", json.dumps(rows["ttl"]), ex=1000)
        raw.set(f"{prefix}:none", json.dumps(rows["none"]))
        RedisStorage(prefix, url=server, expire=expire).upgrade_schema()
        tag = "{" + prefix + "}:"
        most = 1000 if expire is None else min(expire, 1000)
        for kind in "hrd":
            assert 0 < raw.ttl(f"{tag}{kind}:ttl") <= most, kind
            if expire is None:
                assert raw.ttl(f"{tag}{kind}:none") == -1, kind
            else:
                assert 0 < raw.ttl(f"{tag}{kind}:none") <= expire, kind
        deadline = raw.zscore(f"{tag}exp", "ttl")
        assert deadline is not None
        # The keys get the seconds left from the write (an EXPIRE, not an EXPIREAT read by
        # the server's clock): they end within the second before the deadline recorded.
        assert deadline - 1 <= raw.expiretime(f"{tag}h:ttl") <= deadline
        assert (raw.zscore(f"{tag}exp", "none") is None) == (expire is None)
        assert raw.exists(f"{prefix}:ttl", f"{prefix}:none") == 0
    finally:
        raw.delete(*(f"{prefix}:{sid}" for sid in rows))


@pytest.mark.parametrize("first", ["agent", "team"])
def test_upgrade_schema_of_a_prefix_the_original_shared_between_modes_moves_each_mode(
    server: str, raw: Any, prefix: str, first: str
) -> None:
    # The original let an agent's and a team's storage share a prefix. A prefix keeps one
    # mode: the agent sessions move within it, and the team sessions, left in place and
    # named (never taken for agent sessions, nor stranded without a word), move to a prefix
    # of their own, whichever runs first; their fields come along whole, None ones too.
    agents = [
        AgentSession(session_id=f"a{i}", agent_id="A", created_at=i, updated_at=i) for i in range(3)
    ]
    teams = [TeamSession(session_id=f"t{i}", created_at=9 + i, updated_at=9 + i) for i in range(3)]
    teams[0].team_id, teams[0].team_data = "T", {"n": 1}
    rows = {s.session_id: {**s.to_dict(), "version": None} for s in [*agents, *teams]}
    team_prefix = prefix + ":sub"
    try:
        for sid, row in rows.items():
            raw.set(f"{prefix}:{sid}", json.dumps(row))

        def upgrade_agents() -> None:
            storage = RedisStorage(prefix, url=server)
            if first == "agent":
                with pytest.raises(SerializationError) as caught:
                    storage.upgrade_schema()
                said = str(caught.value)
                assert "left 3 key(s)" in said
                assert all(f"'{prefix}:t{i}'" in said for i in range(3))
                assert "mode='team'" in said
                assert f"upgrade_schema(original_prefix={prefix!r})" in said
            else:
                storage.upgrade_schema()

        def upgrade_teams() -> None:
            RedisStorage(team_prefix, url=server, mode="team").upgrade_schema(
                original_prefix=prefix
            )

        order = [upgrade_agents, upgrade_teams]
        if first == "team":
            order.reverse()
        for upgrade in order:
            upgrade()
        assert [k for k in rows if raw.exists(f"{prefix}:{k}")] == []
        mine = RedisStorage(prefix, url=server)
        for each in agents:
            each.version = 1
        assert mine.get_all_sessions() == agents[::-1]
        theirs = RedisStorage(team_prefix, url=server, mode="team")
        for each in teams:
            each.version = 1
        assert theirs.get_all_sessions() == teams[::-1]
        assert raw.get("{" + prefix + "}:mode") == b"agent"
        assert raw.get("{" + team_prefix + "}:mode") == b"team"
        # Run again, each finds nothing left to move.
        RedisStorage(prefix, url=server).upgrade_schema()
        upgrade_teams()
    finally:
        raw.delete(*(f"{prefix}:{sid}" for sid in rows))


@pytest.mark.timeout(60)
def test_a_storage_opened_on_a_full_server_reads_lists_and_removes(own_server: str) -> None:
    # maxmemory with noeviction (the policy the README asks for) refuses write commands,
    # and only them: opening a store whose layout is recorded must not need one.
    prefix = unique("sgt")
    storage = RedisStorage(prefix, url=own_server)
    storage.upsert(_session("s", _runs(2), user_id="u"))
    admin = redis.Redis.from_url(own_server)
    limit = admin.config_get("maxmemory")["maxmemory"]
    try:
        admin.config_set("maxmemory", 1)
        # Unavailable, as a full disk is for the other backends: nothing was written, and
        # removals make room.
        with pytest.raises(BackendUnavailableError, match="maxmemory"):
            RedisStorage(prefix, url=own_server).upsert(_session("other"))
        with pytest.raises(BackendUnavailableError, match="nothing was written"):
            storage.upsert(_session("s", _runs(3), user_id="v"))
        got = RedisStorage(prefix, url=own_server).read("s")
        assert got is not None
        assert (got.user_id, got.memory["runs"]) == ("u", _runs(2))
        assert RedisStorage(prefix, url=own_server).get_all_session_ids(user_id="u") == ["s"]
        assert RedisStorage(prefix, url=own_server).delete_session("s")
    finally:
        admin.config_set("maxmemory", limit)
        storage.drop()
        storage.close()
        admin.close()


@pytest.mark.timeout(60)
def test_a_write_made_before_the_server_fills_up_is_reported_made(own_server: str) -> None:
    # The store was dropped meanwhile: the write makes it again, then records its layout,
    # which a server that filled up in between (noeviction) refuses. The session is there.
    prefix = unique("sgt")
    storage = RedisStorage(prefix, url=own_server)
    storage.upsert(_session("s", _runs(2), user_id="u"))
    RedisStorage(prefix, url=own_server).drop()
    admin = redis.Redis.from_url(own_server)
    limit = admin.config_get("maxmemory")["maxmemory"]
    sending = storage._send_write

    def then_full(*args: Any) -> Any:
        answer = sending(*args)
        if not isinstance(answer[0], list):  # made, not answered with the stored header
            admin.config_set("maxmemory", 1)
        return answer

    storage._send_write = then_full  # type: ignore[method-assign]
    try:
        storage.upsert(_session("s", _runs(3), user_id="u"))
        admin.config_set("maxmemory", limit)
        got = RedisStorage(prefix, url=own_server).read("s")
        assert got is not None
        assert got.memory["runs"] == _runs(3)
        storage._send_write = sending  # type: ignore[method-assign]
        # Room again, the next write records the layout the first could not.
        storage.upsert(_session("t", user_id="u"))
        assert admin.get("{" + prefix + "}:mode") == b"agent"
        assert admin.get("{" + prefix + "}:shards") == b"1"
        # Newest first: "t" comes first unless both were made in one second.
        assert sorted(storage.get_all_session_ids(user_id="u")) == ["s", "t"]
    finally:
        admin.config_set("maxmemory", limit)
        storage.drop()
        storage.close()
        admin.close()


def _contents(raw: Any, prefix: str) -> dict[bytes, Any]:
    """Every key of the store of ``prefix`` (of one shard), with what it holds."""
    read = {
        b"hash": raw.hgetall,
        b"list": lambda key: raw.lrange(key, 0, -1),
        b"string": raw.get,
        b"zset": lambda key: raw.zrange(key, 0, -1, withscores=True),
    }
    return {key: read[raw.type(key)](key) for key in raw.scan_iter(match="{" + prefix + "}:*")}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("rules", "denied"),
    [
        (["~*", "+@all", "-del"], "DEL"),
        (["~*", "+@all", "-persist", "-expire"], "EXPIRE"),
        # Index keys the scripts find in the store (not declared) readable only.
        (
            [
                "~{PFX}:[hrd]:*",
                "~{PFX}:all",
                "~{PFX}:idx",
                "~{PFX}:exp",
                "~{PFX}:shards",
                "~{PFX}:mode",
                "%R~{PFX}:u:*",
                "+@all",
            ],
            "ZREM",
        ),
    ],
    ids=["no-del", "no-expire", "index-read-only"],
)
def test_a_user_the_acl_denies_a_command_changes_nothing_and_is_told_which(
    own_server: str, rules: list[str], denied: str
) -> None:
    # A script stopped by a command the user may not run keeps what it changed before.
    prefix = unique("sgt")
    with _limited_user(own_server, prefix, [r.replace("PFX", prefix) for r in rules]) as (
        admin,
        limited,
        _,
    ):
        if int(admin.info("server")["redis_version"].split(".")[0]) < 7:
            pytest.skip("Redis before 7.0 cannot check a user's ACL from a script")
        before = _contents(admin, prefix)
        calls = [lambda: limited.upsert(_session("s", None))]
        if denied != "EXPIRE":  # which removals run too
            calls += [lambda: limited.delete_session("s"), limited.drop]
        for call in calls:
            with pytest.raises(StorageError, match=f"denies the user {denied} on .*nothing was"):
                call()
            assert _contents(admin, prefix) == before
        got = limited.read("s")
        assert got is not None
        assert (got.user_id, got.memory["runs"]) == ("u", _runs(2))


@contextlib.contextmanager
def _limited_user(server: str, prefix: str, rules: list[str]) -> Iterator[tuple[Any, Any, str]]:
    """An admin client of ``server``, a storage of ``prefix`` whose session ``s`` (two runs,
    user ``u``) another storage saved, connected as a new user the ACL ``rules`` set, and
    the server's URL as that user; the user and the store are removed afterwards."""
    admin = redis.Redis.from_url(server)
    user = unique("sgu")
    admin.acl_setuser(user, enabled=True, passwords=["+pw"], reset_keys=True)
    admin.execute_command("ACL", "SETUSER", user, *rules)
    owner = RedisStorage(prefix, url=server)
    owner.upsert(_session("s", _runs(2), user_id="u"))
    as_user = server.replace("//", f"//{user}:pw@")
    limited = RedisStorage(prefix, url=as_user)
    try:
        yield admin, limited, as_user
    finally:
        admin.acl_deluser(user)
        limited.close()
        owner.drop()
        owner.close()
        admin.close()


@pytest.mark.timeout(60)
def test_a_user_the_acl_denies_a_key_a_call_names_is_told_under_which_prefix(
    own_server: str,
) -> None:
    # Refused before the script runs, the call said only that "one of the keys used as
    # arguments" was denied, naming neither the key nor the store.
    prefix = unique("sgt")
    tag = "{" + prefix + "}:"
    rules = [f"~{tag}[hrd]:*", f"%R~{tag}*", "+@all"]
    with _limited_user(own_server, prefix, rules) as (admin, limited, _):
        before = _contents(admin, prefix)
        for call in (lambda: limited.upsert(_session("s", None, user_id="u")), limited.drop):
            with pytest.raises(StorageError) as denied:
                call()
            said = str(denied.value)
            assert f"denies the user a key under {tag}" in said, said
            assert "nothing was changed" in said, said
            assert _contents(admin, prefix) == before


@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy", ["allkeys-random", "allkeys-lru", "volatile-random"])
def test_a_server_that_evicts_keys_never_has_a_session_read_short_or_misplaced(
    own_server: str, policy: str
) -> None:
    # Whatever keys a maxmemory-policy evicts, a session read or listed is whole and of the
    # user it was listed for, or the call raises CorruptSessionError.
    prefix = unique("sgt")
    admin = redis.Redis.from_url(own_server)
    limit = admin.config_get("maxmemory")["maxmemory"]
    storage = RedisStorage(prefix, url=own_server, expire=10**6, cache_bytes=0)
    stored: dict[str, tuple[str, int]] = {}
    rng = random.Random(policy)
    try:
        admin.config_set("maxmemory-policy", policy)
        for i in range(300):
            if i == 100:
                admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) - 100_000)
            sid, user, count = f"s{i % 60}", f"u{rng.randrange(4)}", rng.randrange(1, 6)
            runs = [{"n": n, "pad": "x" * rng.randrange(50, 2000)} for n in range(count)]
            with contextlib.suppress(CorruptSessionError):
                storage.upsert(_session(sid, runs, user_id=user))
                stored[sid] = (user, count)
        for sid, (user, count) in stored.items():
            with contextlib.suppress(CorruptSessionError):
                got = storage.read(sid)
                if got is not None:
                    assert (got.user_id, len(got.memory["runs"])) == (user, count)
        for user in ("u0", "u1", "u2", "u3"):
            assert {stored[sid][0] for sid in storage.get_all_session_ids(user_id=user)} <= {user}
            with contextlib.suppress(CorruptSessionError):
                for got in storage.get_all_sessions(user_id=user):
                    assert (got.user_id, len(got.memory["runs"])) == stored[got.session_id]
    finally:
        admin.config_set("maxmemory", limit)
        admin.config_set("maxmemory-policy", "noeviction")
        for pattern in ("{" + prefix + "}:*", prefix + ":*"):
            for key in admin.scan_iter(match=pattern, count=1000):
                admin.delete(key)
        storage.close()
        admin.close()


@pytest.mark.timeout(60)
def test_a_write_whose_every_sending_goes_unanswered_is_of_unknown_outcome() -> None:
    # The write lands and its reply is lost; then the server refuses more connections than
    # savegame tries. "Unavailable" says nothing was written, and would have the caller make
    # the change again: the write's outcome is unknown, and said so.
    server = server_url(False)
    prefix = unique("sgt")

    def at(host: str, port: int, db: int) -> RedisStorage:
        return RedisStorage(prefix, url=f"redis://{host}:{port}/{db}")

    try:
        with redis_through_proxy(server, at) as link:
            assert link.refuse_connection is not None
            restart = link.refuse_connection
            link.storage.upsert(_session("c", session_data={"n": 1}))
            session = link.storage.read("c")
            assert session is not None
            session.session_data["n"] += 1  # type: ignore[index]
            link.lose_reply(lambda: restart(50))
            with pytest.raises(StorageError, match="unknown") as caught:
                link.storage.upsert(session, expected_version=session.version)
            assert not isinstance(caught.value, BackendUnavailableError)
            assert link.lost()
            got = link.other.read("c")
            assert got is not None
            assert (got.session_data, got.version) == ({"n": 2}, 2)
    finally:
        with RedisStorage(prefix, url=server) as cleanup:
            cleanup.drop()


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("data", None, "without its data"),
        ("version", "x", "numbers cannot be read"),
        ("created_at", "yesterday", "numbers cannot be read"),
        ("runs", None, "no list of runs"),
        ("data", '{"session_id": "other"}', "of session 'other'"),
        ("data", '{"session_id": "s", "user_id": 5}', "user_id must be"),
    ],
)
def test_a_header_changed_outside_savegame_raises_naming_the_session(
    server: str, raw: Any, prefix: str, field: str, value: str | None, said: str
) -> None:
    # Never a raw ValueError, a session that reads as absent or as another, nor one whose
    # runs read as None while its list holds them.
    RedisStorage(prefix, url=server).upsert(_session("s", _runs(2), user_id="u"))
    RedisStorage(prefix, url=server).upsert(_session("fine", _runs(1), user_id="u"))
    header = "{" + prefix + "}:h:s"
    if value is None:
        raw.hdel(header, field)
    else:
        raw.hset(header, field, value)
    storage = RedisStorage(prefix, url=server)
    for read in (lambda: storage.read("s"), lambda: storage.get_all_sessions(user_id="u")):
        with pytest.raises(CorruptSessionError, match=f"'s'.*{re.escape(said)}"):
            read()
    assert storage.get_all_session_ids(user_id="u") == ["fine", "s"]
    assert storage.delete_session("s") is True
    assert storage.read("s") is None
    assert storage.read("fine") is not None


@pytest.mark.parametrize("field", ["token", "version"])
def test_a_header_missing_its_token_or_version_is_updated(
    server: str, raw: Any, prefix: str, field: str
) -> None:
    # Read as version 1 (a header written before tokens has none): update() writes on it
    # rather than meeting a conflict on every attempt, or a write looping a thousand times.
    RedisStorage(prefix, url=server).upsert(_session("s", _runs(2), user_id="u"))
    raw.hdel("{" + prefix + "}:h:s", field)
    storage = RedisStorage(prefix, url=server)
    stored = storage.update("s", lambda s: _session("s", _runs(3), user_id="u"))
    assert RedisStorage(prefix, url=server).read("s") == stored
    assert RedisStorage(prefix, url=server).upsert(_session("s", _runs(1))).version == 3


@pytest.mark.parametrize("kind", ["h", "r"])
def test_a_key_of_another_type_is_a_corrupt_session(
    server: str, raw: Any, prefix: str, kind: str
) -> None:
    # A header or a list of runs made a plain string outside savegame: Redis answers
    # WRONGTYPE, which says the store was changed, not that the server refused a command.
    RedisStorage(prefix, url=server).upsert(_session("s", _runs(2), user_id="u"))
    raw.set("{" + prefix + "}:" + kind + ":s", "plain")
    storage = RedisStorage(prefix, url=server)
    for call in (lambda: storage.read("s"), lambda: storage.upsert(_session("s", _runs(3)))):
        with pytest.raises(CorruptSessionError, match="not of the type savegame keeps"):
            call()
    assert storage.delete_session("s") is True
    assert storage.read("s") is None


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("shards", "0", "not a shard count"),
        ("shards", "many", "not a shard count"),
        ("shards", "-2", "not a shard count"),
        ("shards", "99999", "not a shard count"),
        ("shards", b"\xff", "not a shard count"),
        ("mode", "bogus", "which is no mode"),
        ("mode", b"\xff", "which is no mode"),
    ],
)
def test_a_store_record_changed_outside_savegame_raises_naming_it(
    server: str, raw: Any, prefix: str, key: str, value: Any, said: str
) -> None:
    # A raw ValueError, a ZeroDivisionError on every call, or a store read over 99,999 slots
    # where its sessions are in one; and advice to open the store with mode='bogus'.
    RedisStorage(prefix, url=server).upsert(_session("s", _runs(2), user_id="u"))
    raw.set("{" + prefix + "}:" + key, value)
    storage = RedisStorage(prefix, url=server)
    calls = (
        methodcaller("read", "s"),
        methodcaller("get_all_session_ids"),
        methodcaller("upsert", _session("t")),
    )
    for call in calls:
        with pytest.raises(CorruptSessionError, match=f"{{{prefix}}}:{key} in .*{said}"):
            call(storage)
    raw.set("{" + prefix + "}:" + key, "1" if key == "shards" else "agent")
    assert storage.read("s") is not None
    assert storage.get_all_session_ids() == ["s"]


def test_an_index_member_that_is_no_utf8_is_removed_or_raises(
    server: str, raw: Any, prefix: str
) -> None:
    # Ids are written as UTF-8: a member that is not was put there outside savegame. A live
    # listing leaves it out, as it does entries that have no session; delete_user, which
    # lists expired sessions too, raises naming the index; drop and purge_expired remove it.
    tag = "{" + prefix + "}:"
    storage = RedisStorage(prefix, url=server)
    storage.upsert(_session("s", _runs(2), user_id="u"))
    raw.zadd(tag + "u:u", {b"\xff\xfe": -1})
    said = re.escape(f"{tag}u:u in ") + r".* lists b'\\xff\\xfe', which is no session id"
    with pytest.raises(CorruptSessionError, match=said):
        storage.delete_user("u")
    assert storage.get_all_session_ids(user_id="u") == ["s"]
    assert storage.read("s") is not None
    raw.zrem(tag + "u:u", b"\xff\xfe")
    assert storage.delete_user("u") == 1
    raw.zadd(tag + "all", {b"\xff\xfe": -1})
    raw.zadd(tag + "exp", {b"\xfe": 1})
    assert storage.purge_expired() == 0
    assert raw.zscore(tag + "exp", b"\xfe") is None
    storage.drop()
    assert _keys_of(raw, prefix) == []


def test_a_user_denied_scan_still_gets_the_note_of_an_empty_prefix(own_server: str) -> None:
    # The look for the original's sessions that the command line makes on an empty prefix
    # (SCAN) is a hint: a user the ACL denies it gets the note without the hint, not an error.
    prefix = unique("sgt")
    with _limited_user(own_server, prefix, ["~*", "+@all", "-scan"]) as (_, _, as_user):
        empty = f"{as_user}?prefix={unique('sgt')}"
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                "from savegame.cli import main; main()",
                "sessions",
                "list",
                "-s",
                empty,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    assert "nothing of mode agent is stored" in proc.stderr
