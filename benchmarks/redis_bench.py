"""savegame's Redis backend against a hand-written redis-py baseline doing the same work.

The baseline is what a careful person would write with redis-py alone: the whole session as
one JSON value in a hash, sorted-set indexes by user and agent, one ``MULTI``/``EXEC``
pipeline per write; no version check, no validation, no list of runs. The figures are those
of the SQL sections (``sql_bench._compare``), plus the bytes the server receives for a save
at turn N, read from ``INFO stats`` (run it on a server nothing else is using).

Run alone with ``python benchmarks/redis_bench.py [--quick]``; ``benchmarks/run.py`` imports
:func:`run` and :func:`report`. The server is ``SAVEGAME_TEST_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``); everything is written under prefixes of its own and removed.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from typing import Any

import redis
from sql_bench import _compare, bytes_rows
from sql_bench import report as table

from savegame.storage.redis import RedisStorage
from savegame.storage.session.agent import AgentSession

URL = os.environ.get("SAVEGAME_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Baseline:
    """The whole session in one hash field, indexes in sorted sets, one transaction a write."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.keys = prefix + ":"

    def upsert(self, session: AgentSession) -> None:
        data = session.to_dict()
        now = int(time.time())
        data["created_at"] = data["updated_at"] = now
        sid = data["session_id"]
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(f"{self.keys}s:{sid}", "data", json.dumps(data))
        for key in ("all", f"u:{data['user_id']}", f"a:{data['agent_id']}"):
            pipe.zadd(self.keys + key, {sid: -now})
        pipe.execute()

    def read(self, sid: str) -> dict[str, Any] | None:
        text = self.client.hget(f"{self.keys}s:{sid}", "data")
        return None if text is None else dict(json.loads(text))

    def list_user(self, user: str) -> list[dict[str, Any]]:
        ids = self.client.zrange(f"{self.keys}u:{user}", 0, -1)
        pipe = self.client.pipeline(transaction=False)
        for sid in ids:
            pipe.hget(f"{self.keys}s:{sid.decode()}", "data")
        return [json.loads(text) for text in pipe.execute() if text is not None]

    def clear(self) -> None:
        # The benchmark's own prefix: scanning it is fine here.
        for key in self.client.scan_iter(match=self.keys + "*", count=1000):
            self.client.delete(key)

    drop = clear


def _received(client: Any) -> int:
    return int(client.info("stats")["total_net_input_bytes"])


def _asking(client: Any) -> int:
    """What asking for the count costs: INFO's own request, between two asks."""
    first = _received(client)
    return _received(client) - first


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Times every figure; returns rows of name, savegame figure, baseline figure, note."""
    client = redis.Redis.from_url(URL)
    client.ping()
    tag = uuid.uuid4().hex[:8]
    storage = RedisStorage(f"bench_sg_{tag}", url=URL)
    baseline = Baseline(client, f"bench_bl_{tag}")
    try:
        rows = _compare(
            storage,
            baseline,  # type: ignore[arg-type]
            quick,
            10_000 if quick else 50_000,
            lambda: RedisStorage(f"bench_sg_{tag}", url=URL),
        )
        rows.extend(
            bytes_rows(
                lambda: _received(client),
                storage.upsert,
                baseline.upsert,  # type: ignore[arg-type]
                asking=_asking(client),
            )
        )
    finally:
        storage.drop()
        storage.close()
        baseline.clear()
        client.close()
    return rows


def report(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, with the ratio savegame / baseline."""
    return table("Redis", "redis-py baseline", rows)


if __name__ == "__main__":
    print(report(run(quick="--quick" in sys.argv)))
