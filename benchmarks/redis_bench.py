"""savegame's Redis backend against a hand-written redis-py baseline doing the same work.

The baseline keeps the same data the same way (a header hash, a list of runs, sorted-set
indexes, all in one ``MULTI``/``EXEC`` pipeline per write) but has no version check, no
digests and no validation: it is what a careful person would write with redis-py alone.

Run alone with ``python benchmarks/redis_bench.py [--quick]``; ``benchmarks/run.py`` imports
:func:`run`. The server is ``SAVEGAME_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``);
everything is written under prefixes of its own and removed afterwards.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from savegame.storage.codec import encode
from savegame.storage.redis import RedisStorage
from savegame.storage.session.agent import AgentSession

URL = os.environ.get("SAVEGAME_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TURN_TEXT = "A sentence of model output, long enough to look like one. " * 8


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


class Baseline:
    """The same layout written by hand: one transaction per write, JSON text per value."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.keys = "{" + prefix + "}:"

    def upsert(self, session: AgentSession, new_runs_from: int = 0) -> None:
        data = session.to_dict()
        data["memory"] = dict(data["memory"])
        runs = data["memory"].pop("runs")
        sid, user = data["session_id"], data["user_id"]
        now = int(time.time())
        data["created_at"] = data["updated_at"] = now
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(f"{self.keys}h:{sid}", mapping={"data": json.dumps(data), "n": len(runs)})
        if new_runs_from == 0:
            pipe.delete(f"{self.keys}r:{sid}")
        if runs[new_runs_from:]:
            pipe.rpush(f"{self.keys}r:{sid}", *[json.dumps(r) for r in runs[new_runs_from:]])
        for key in ("all", f"u:{user}", f"e:{data['agent_id']}"):
            pipe.zadd(self.keys + key, {sid: -now})
        pipe.execute()

    def read(self, sid: str) -> dict[str, Any] | None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hget(f"{self.keys}h:{sid}", "data")
        pipe.lrange(f"{self.keys}r:{sid}", 0, -1)
        data, runs = pipe.execute()
        if data is None:
            return None
        record: dict[str, Any] = json.loads(data)
        record["memory"]["runs"] = [json.loads(r) for r in runs]
        return record

    def list_user(self, user: str) -> list[dict[str, Any]]:
        ids = self.client.zrange(f"{self.keys}u:{user}", 0, -1)
        return [r for r in (self.read(i.decode()) for i in ids) if r is not None]

    def drop(self) -> None:
        # The benchmark's own prefix: scanning it is fine here.
        for key in self.client.scan_iter(match=self.keys + "*", count=1000):
            self.client.delete(key)


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


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Times every figure; returns rows of name, savegame seconds, baseline seconds, ratio."""
    client = redis.Redis.from_url(URL)
    client.ping()
    tag = uuid.uuid4().hex[:8]
    storage = RedisStorage(f"bench_sg_{tag}", url=URL)
    baseline = Baseline(client, f"bench_bl_{tag}")
    count = 500 if quick else 2000
    sessions = [_session(f"s{i}", f"user-{i % 100}", 3) for i in range(count)]
    rows: list[dict[str, Any]] = []

    def row(name: str, ours: float, theirs: float, note: str = "") -> None:
        rows.append({"name": name, "savegame": ours, "baseline": theirs, "note": note})

    try:
        row(
            f"{count} upserts of new sessions (3 runs each)",
            _time(lambda: [storage.upsert(s) for s in sessions], setup=storage.drop),
            _time(lambda: [baseline.upsert(s) for s in sessions], setup=baseline.drop),
        )
        row(
            f"{count} upserts of the same sessions again",
            _time(lambda: [storage.upsert(s) for s in sessions]),
            _time(lambda: [baseline.upsert(s) for s in sessions]),
        )

        def restarted() -> None:
            with RedisStorage(f"bench_sg_{tag}", url=URL) as fresh:
                for s in sessions:
                    fresh.upsert(s)

        row(
            f"{count} upserts of stored sessions by a storage just opened",
            _time(restarted),
            _time(lambda: [baseline.upsert(s) for s in sessions]),
        )
        ids = [s.session_id for s in sessions]
        row(
            f"{count} reads",
            _time(lambda: [storage.read(i) for i in ids]),
            _time(lambda: [baseline.read(i) for i in ids]),
        )
        for size in (1_000, 10_000 if quick else 50_000):
            _fill(storage, baseline, size)
            row(
                f"list one user's 10 sessions, store of {size}",
                _time(lambda: storage.get_all_sessions(user_id="user-7"), repeat=20),
                _time(lambda: baseline.list_user("user-7"), repeat=20),
            )
        for turns in (10, 100, 1000):
            row(
                f"save at turn {turns}",
                _turn(lambda s: storage.upsert(s), turns, "conv-sg"),
                _turn(lambda s: baseline.upsert(s, len(s.memory["runs"]) - 1), turns, "conv-bl"),
            )
        long = _session("long", "user-c", 1000).to_dict()
        rows.append(
            {
                "name": "of which checking and copying the session (every backend)",
                "savegame": _time(lambda: encode(long), repeat=9),
                "baseline": 0.0,
                "note": "turn 1000",
            }
        )
    finally:
        storage.drop()
        storage.close()
        baseline.drop()
        client.close()
    return rows


def _fill(storage: RedisStorage, baseline: Baseline, size: int) -> None:
    """Grows both stores to ``size`` sessions; user-7 keeps 10 of them (plus earlier ones)."""
    have = len(storage.get_all_session_ids())
    for i in range(have, size):
        user = "user-7" if i < 10 else f"other-{i % 5000}"
        session = _session(f"f{i}", user, 1)
        storage.upsert(session)
        baseline.upsert(session)


def _turn(save: Callable[[AgentSession], Any], turns: int, sid: str) -> float:
    """The time of one save that adds run ``turns`` to a conversation of ``turns`` runs."""
    session = _session(sid, "user-c", turns)
    save(session)
    best = float("inf")
    for extra in range(9):
        session.memory["runs"].append(_run(turns + extra))
        start = time.perf_counter()
        save(session)
        best = min(best, time.perf_counter() - start)
    return best


def report(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, with the ratio savegame / baseline."""
    lines = ["| Redis | savegame | redis-py baseline | ratio |", "| --- | ---: | ---: | ---: |"]
    for r in rows:
        if not r["baseline"]:
            lines.append(f"| {r['name']} ({r['note']}) | {r['savegame'] * 1000:.1f} ms | | |")
            continue
        ratio = r["savegame"] / r["baseline"]
        lines.append(
            f"| {r['name']} | {r['savegame'] * 1000:.1f} ms | {r['baseline'] * 1000:.1f} ms "
            f"| {ratio:.2f}x |"
        )
    turns = {r["name"]: r["savegame"] for r in rows if r["name"].startswith("save at turn")}
    lists = [r["savegame"] for r in rows if r["name"].startswith("list one user")]
    if len(turns) == 3:
        first, last = turns["save at turn 10"], turns["save at turn 1000"]
        lines.append(f"\nsave at turn 1000 / turn 10: {last / first:.2f}x")
    if len(lists) == 2:
        lines.append(f"listing in the large store / the 1k store: {lists[1] / lists[0]:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(run(quick="--quick" in sys.argv)))
