"""What a storage remembers of its sessions: the marks and the pickle that prove runs
unchanged, and the bounded cache. Backends are held to the behaviour this serves by the
conformance suite."""

from __future__ import annotations

import collections
import datetime
import hashlib
import json
import subprocess
import sys
import textwrap
from types import FrameType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from savegame.errors import SerializationError
from savegame.storage import known as known_module
from savegame.storage.base import Header
from savegame.storage.codec import dumps
from savegame.storage.in_memory import InMemoryStorage
from savegame.storage.known import (
    PAST_TOKENS,
    Known,
    KnownSessions,
    Pickle,
    encode_runs,
    pickle_runs,
    resent_write_made,
    unpickle_runs,
)
from savegame.storage.session.agent import AgentSession
from savegame.testing import Store
from savegame.transfer import copy_sessions, export_sessions, session_line, stats


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def _runs(n: int) -> list[Any]:
    return [{"run_id": str(i), "text": "x" * (70_000 if i == 1 else 10)} for i in range(n)]


def test_the_pickle_of_a_prefix_is_a_prefix_and_comes_back_equal() -> None:
    runs = _runs(5)
    whole = pickle_runs(runs)
    part = pickle_runs(runs[:3])
    assert whole is not None
    assert part is not None
    assert whole.startswith(part[:-6])  # a 70 kB string is written apart by the pickler
    assert unpickle_runs(whole) == runs


@pytest.mark.parametrize(
    ("first", "second"),
    [(1, True), (1, 1.0), (0.0, -0.0), ({"a": 1, "b": 2}, {"b": 2, "a": 1}), ("s", "s ")],
)
def test_values_that_compare_equal_pickle_apart(first: Any, second: Any) -> None:
    assert pickle_runs([first]) != pickle_runs([second])


def test_anything_but_exact_built_in_types_is_not_pickled() -> None:
    class Text(str):
        pass

    cyclic: list[Any] = []
    cyclic.append(cyclic)
    for value in (Text("a"), collections.OrderedDict(a=1), object(), cyclic):
        assert pickle_runs([value]) is None
    assert pickle_runs([{"ok": [1, 2.5, None, True, "é"]}]) is not None


def test_runs_remembered_unchanged_are_not_encoded_again() -> None:
    made: list[Any] = []

    def text_of(value: Any, text: str | None) -> str:
        made.append(value)
        return dumps(value, text)

    runs = _runs(3)
    first = encode_runs(runs, None, text_of, _digest, "$", 2)
    assert len(made) == 3
    known = Known("t", Header(1, 0, None), first.digests, first.pickled)
    more = encode_runs([*runs, {"run_id": "3"}], known, text_of, _digest, "$", 2)
    assert made[3:] == [{"run_id": "3"}]
    assert more.texts[:3] == [None, None, None]
    assert more.digests.startswith(first.digests)
    assert more.changes(first.digests) == [(3, _digest('{"run_id":"3"}'), '{"run_id":"3"}')]
    # What the store holds differs from what is remembered: the run is encoded after all.
    stored = _digest("other") + first.digests[8:]
    assert [c[0] for c in more.changes(stored)] == [0, 3]
    assert more.items[0] is runs[0]


def test_a_run_changed_in_place_is_encoded_and_checked_again() -> None:
    runs = _runs(2)
    first = encode_runs(runs, None, dumps, _digest, "$", 2)
    known = Known("t", Header(1, 0, None), first.digests, first.pickled)
    runs[0]["text"] = {"a", "set"}
    with pytest.raises(SerializationError, match=r"\$\[0\]\['text'\]"):
        encode_runs(runs, known, dumps, _digest, "$", 2)
    runs[0]["text"] = (1, 2)
    again = encode_runs(runs, known, dumps, _digest, "$", 2)
    assert again.items[0] == {"run_id": "0", "text": [1, 2]}
    assert again.pickled.whole() == pickle_runs(again.items)


def _saved_twice(runs: list[Any]) -> Known:
    """What is remembered of two saves of ``runs``: the first finds no runs it gave
    before, so it makes no marks; the second may."""
    known = None
    for _ in range(2):
        given = encode_runs(runs, known, dumps, _digest, "$", 2)
        known = Known.written("t", Header(1, 0, None), given, (), {})
    assert known is not None
    return known


def _marked(runs: list[Any]) -> Known:
    """What is remembered of two saves of ``runs``, which marks them."""
    known = _saved_twice(runs)
    assert known.marks is not None
    return known


def _lengths(monkeypatch: pytest.MonkeyPatch, name: str = "pickle_runs") -> list[int]:
    """The length of each list of runs given from now on to the function ``name`` of
    savegame.storage.known (one that pickles or marks runs)."""
    lengths: list[int] = []
    made = getattr(known_module, name)

    def counted(runs: list[Any]) -> bytes | None:
        lengths.append(len(runs))
        return made(runs)

    monkeypatch.setattr(known_module, name, counted)
    return lengths


def test_runs_whose_marks_are_unchanged_are_neither_encoded_nor_pickled_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = _runs(3)
    known = _marked(runs)
    pickled = _lengths(monkeypatch)
    runs.append({"run_id": "3"})
    more = encode_runs(runs, known, dumps, _digest, "$", 2)
    assert pickled == [1]
    assert more.texts[:3] == [None, None, None]
    assert more.pickled.whole() == pickle_runs(runs)
    assert more.marks is not None
    assert more.changes(known.digests) == [(3, _digest('{"run_id":"3"}'), '{"run_id":"3"}')]


def _to_true(runs: list[Any]) -> None:
    runs[0]["n"] = True


def _to_float(runs: list[Any]) -> None:
    runs[0]["n"] = 1.0


def _to_negative_zero(runs: list[Any]) -> None:
    runs[0]["zero"] = -0.0


def _keys_reordered(runs: list[Any]) -> None:
    first = runs[0]
    items = list(first.items())
    first.clear()
    first.update(reversed(items))


def _shared_changed_through_the_later_run(runs: list[Any]) -> None:
    runs[1]["also"]["deep"].append(2)


def _run_replaced_by_an_equal_copy(runs: list[Any]) -> None:
    runs[0] = json.loads(json.dumps(runs[0]))


@pytest.mark.parametrize(
    "change",
    [
        _to_true,
        _to_float,
        _to_negative_zero,
        _keys_reordered,
        _shared_changed_through_the_later_run,
        _run_replaced_by_an_equal_copy,
    ],
)
def test_a_run_changed_in_place_even_to_an_equal_value_is_encoded_again(change: Any) -> None:
    shared: dict[str, Any] = {"deep": [1]}
    runs: list[Any] = [
        {"run_id": "0", "n": 1, "zero": 0.0, "shared": shared},
        {"run_id": "1", "also": shared},
    ]
    known = _marked(runs)
    before = [dumps(run) for run in runs]
    change(runs)
    runs.append({"run_id": "2"})
    more = encode_runs(runs, known, dumps, _digest, "$", 2)
    changed = [i for i, run in enumerate(runs[:2]) if dumps(run) != before[i]]
    assert [c[0] for c in more.changes(known.digests)] == [*changed, 2]
    assert [json.loads(dumps(run)) for run in more.items] == [json.loads(dumps(r)) for r in runs]
    assert more.pickled.whole() == pickle_runs(more.items)


def test_marks_that_number_their_objects_otherwise_prove_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Runs whose marks refer to no object, so that they are the same bytes under either
    # flag of the list: the flag alone must refuse them.
    runs: list[Any] = [True, None]
    known = _marked(runs)
    assert known.marks is not None
    flipped = bytes([known.marks[0] ^ 0x80]) + known.marks[1:]
    pickled = _lengths(monkeypatch)
    runs.append(False)
    encode_runs(runs, known._replace(marks=flipped), dumps, _digest, "$", 2)
    assert pickled == [2, 1]  # the runs remembered pickled to compare: the marks not trusted
    encode_runs(runs, known, dumps, _digest, "$", 2)
    assert pickled[2:] == [1]


def test_runs_stored_other_than_given_are_not_marked() -> None:
    runs: list[Any] = [{"run_id": "0", "pair": (1, 2)}]
    known = None
    for _ in range(3):
        runs.append({"run_id": str(len(runs))})
        given = encode_runs(runs, known, dumps, _digest, "$", 2)
        assert given.items[0] == {"run_id": "0", "pair": [1, 2]}
        assert given.marks is None
        known = Known.written("t", Header(1, 0, None), given, (), {})


def test_runs_given_as_a_new_copy_each_time_are_not_marked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marked = _lengths(monkeypatch, "mark_runs")
    runs, kept = _runs(2), []
    known = None
    for _ in range(3):
        copy = json.loads(json.dumps(runs))
        kept.append(copy)  # alive, so that no copy's first run takes an earlier one's id
        given = encode_runs(copy, known, dumps, _digest, "$", 2)
        known = Known.written("t", Header(1, 0, None), given, (), {})
    assert marked == []
    for _ in range(2):
        given = encode_runs(runs, known, dumps, _digest, "$", 2)
        known = Known.written("t", Header(1, 0, None), given, (), {})
    assert marked == [2]


@pytest.mark.parametrize(
    "last",
    [
        {"run_id": "2", "n": [1, 2.5, True, None, -0.0, 10**30]},
        {"run_id": "2", "n": (1, 2)},
        {"run_id": "2", "n": [{"deep": (True,)}]},
        {"run_id": "2", "at": datetime.date(2026, 12, 4)},
    ],
    ids=["plain", "tuple", "nested-tuple", "date"],
)
def test_what_is_remembered_is_the_pickle_of_the_runs_as_stored(last: Any) -> None:
    runs = [*_runs(2), last]
    for known in (None, _remembered(_runs(2))):
        encoded = encode_runs(runs, known, dumps, _digest, "$", 2)
        assert encoded.items == [json.loads(dumps(run)) for run in encoded.items]
        assert encoded.pickled.whole() == pickle_runs(encoded.items)


# Values that ``==`` calls equal, empty containers, and a list of a pickle's batch size.
_LEAVES = st.sampled_from([0, 1, 1.0, -0.0, 0.0, True, None, "", "x", 2**70])
_VALUES = st.recursive(
    _LEAVES | st.builds(list, st.just(range(1000))),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.sampled_from("ab"), inner, max_size=2)
    ),
    max_leaves=5,
)


def _grow(value: Any, more: Any) -> bool:
    """Adds ``more`` inside the last container of ``value``; whether there was one."""
    if isinstance(value, dict):
        if value and _grow(value[next(reversed(value))], more):
            return True
        value[f"k{len(value)}"] = more
        return True
    if isinstance(value, list):
        if not (value and _grow(value[-1], more)):
            value.append(more)
        return True
    return False


@settings(max_examples=400, deadline=None)
@given(
    before=st.lists(_VALUES, min_size=1, max_size=4),
    change=st.sampled_from(["grow", "pair", "replace", "append", "drop", "none"]),
    at=st.integers(min_value=0, max_value=3),
    value=_VALUES,
    kept=st.booleans(),
)
def test_runs_proved_unchanged_are_exactly_the_runs_remembered(
    before: list[Any], change: str, at: int, value: Any, kept: bool
) -> None:
    # Runs saved twice (so marked, unless stored other than given), then changed in place
    # (``kept``) or in a copy, and saved again: the store must end up with the digests a
    # save that remembers nothing makes, whatever the marks or pickles of the runs before
    # and after have in common, and remember the pickle of the runs as stored.
    runs = before if kept else json.loads(json.dumps(before))
    known = _saved_twice(before)
    i = at % len(runs)
    if change == "grow":
        _grow(runs[i], value)
    elif change == "pair" and i + 1 < len(runs):
        runs[i : i + 2] = [(runs[i], runs[i + 1])]
    elif change == "replace":
        runs[i] = value
    elif change == "drop":
        del runs[i]
    runs.append(value)
    encoded = encode_runs(runs, known, dumps, _digest, "$", 2)
    alone = encode_runs(runs, None, dumps, _digest, "$", 2)
    assert known.digests is not None
    width = len(_digest(""))
    stored = [known.digests[j * width : (j + 1) * width] for j in range(len(runs))]
    for j, digest, _ in encoded.changes(known.digests):
        stored[j] = digest
    assert "".join(stored) == alone.digests
    assert encoded.pickled.whole() == pickle_runs(alone.items)


def _remembered(runs: list[Any]) -> Known:
    first = encode_runs(runs, None, dumps, _digest, "$", 2)
    return Known("t", Header(1, 0, None), first.digests, first.pickled)


def test_a_read_of_the_runs_after_those_remembered_joins_them_exactly() -> None:
    runs = _runs(4)
    digests = "".join(_digest(dumps(run)) for run in runs)
    known = Known("t", Header(1, 0, None), digests[:24], Pickle.of(pickle_runs(runs[:3])))
    # The stored runs agree with those remembered where both have one: longer or shorter.
    assert known.leads(digests)
    assert known.leads(digests[:8])
    assert known.leads("")
    assert not known.leads(_digest("other") + digests[8:])
    joined, pickled = known.joined(runs[3:], 4)
    assert joined == runs
    assert pickled is not None
    assert pickled.whole() == pickle_runs(runs)  # made by extending the remembered pickle
    assert joined[0] is not runs[0]  # copies, which the caller may change
    assert known.joined([], 3) == (runs[:3], known.runs)
    assert known.joined([], 2) == (runs[:2], None)


def test_runs_saved_again_unchanged_keep_the_remembered_pickle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A save that changes the rest of the session only: the remembered pickle stands for
    # the runs as it is, neither made again nor extended by an empty piece each time.
    runs = _runs(3)
    known = _marked(runs)
    pickled = _lengths(monkeypatch)
    again = encode_runs(runs, known, dumps, _digest, "$", 2)
    assert pickled == []
    assert again.pickled is known.runs
    assert again.marks is not None
    assert again.changes(known.digests) == []
    later = Known.written("t", Header(2, 0, None), again, (), {})
    runs.append({"run_id": "3"})
    more = encode_runs(runs, later, dumps, _digest, "$", 2)
    assert more.pickled.whole() == pickle_runs(runs)


def test_a_pickle_extended_save_after_save_is_the_pickle_of_all_the_runs() -> None:
    runs = _runs(2)
    made = [Pickle.of(pickle_runs(runs))]
    for i in range(100):  # more pieces than a pickle keeps apart
        more = [{"run_id": f"more-{i}"}]
        runs.append(more[0])
        before = made[-1]
        assert before is not None
        made.append(before.extended(pickle_runs(more)))
    for count, pickled in enumerate(made, start=2):
        assert pickled is not None
        assert len(pickled) == len(pickle_runs(runs[:count]))
        assert pickled.whole() == pickle_runs(runs[:count])
        assert unpickle_runs(pickled.whole()) == runs[:count]


def test_the_cache_is_bounded_by_bytes_least_recently_used_first_out() -> None:
    cache = KnownSessions(max_bytes=100)

    def entry(size: int) -> Known:
        return Known("t", Header(1, 0, None), None, Pickle.of(b"x" * size))

    cache.put("a", entry(40))
    cache.put("b", entry(40))
    assert cache.get("a") is not None
    cache.put("c", entry(40))
    assert cache.get("b") is None
    assert cache.get("a") is not None
    cache.put("huge", entry(101))
    assert cache.get("huge") is None
    cache.put("a", None)
    assert cache.get("a") is None
    with pytest.raises(ValueError, match="cache_bytes"):
        KnownSessions(max_bytes=-1)
    assert len(KnownSessions(max_bytes=0)) == 0


def test_what_a_storage_reads_it_remembers_whole(backend_store: Store) -> None:
    writer = backend_store.require("cache_bytes")
    # Times of their own, so that the listing takes b and c whenever the writes run: read,
    # listing and read_many each leave one session to remember.
    for sid, created in (("a", 1), ("b", 4), ("c", 3), ("d", 2)):
        runs = [{"run_id": f"{sid}{i}", "messages": [{"role": "user"}]} for i in range(2)]
        memory = {"runs": runs}
        writer.upsert(AgentSession(session_id=sid, user_id="u", memory=memory, created_at=created))
    reader = backend_store()
    cache = reader._known  # type: ignore[attr-defined]
    assert reader.read("a") is not None
    assert [s.session_id for s in reader.get_recent_sessions(user_id="u", limit=2)] == ["b", "c"]
    assert len(reader.read_many(["d", "c"])) == 2
    for sid in ("a", "b", "c", "d"):
        known = cache.get(sid)
        assert known is not None
        assert known.whole(), sid


@pytest.mark.parametrize(
    ("event", "text"),
    [("return", "short"), ("call", "x" * 70_000)],
    ids=["as the pickle is written", "between the writes of a long string"],
)
def test_a_save_interrupted_while_pickling_leaves_the_next_one_remembered_right(
    backend_store: Store, event: str, text: str
) -> None:
    # Ctrl-C lands where Python code runs during a pickle: in the pickler's file, as it
    # takes a pickle whole (a pickle that would have begun the next one, which then read
    # back as the interrupted session's runs) or the first of the pieces that a long
    # string is written in (whose next one then could not be read back at all).
    storage = backend_store.require("cache_bytes")
    write = known_module._Kept.write.__code__
    before = sys.gettrace()
    writes = 0

    def interrupt(frame: FrameType, seen: str, arg: Any) -> Any:
        if seen == event:
            sys.settrace(before)
            raise KeyboardInterrupt
        return interrupt

    def tracer(frame: FrameType, seen: str, arg: Any) -> Any:
        nonlocal writes
        if frame.f_code is not write:
            return None
        writes += 1
        return interrupt(frame, seen, arg) if writes == 1 + (event == "call") else None

    cut = AgentSession(session_id="cut", memory={"runs": [{"run_id": "cut", "text": text}]})
    sys.settrace(tracer)
    try:
        with pytest.raises(KeyboardInterrupt):
            storage.upsert(cut)
    finally:
        sys.settrace(before)
    assert writes == 1 + (event == "call")
    runs = [{"run_id": "next"}, {"run_id": "and one more"}]
    storage.upsert(AgentSession(session_id="next", memory={"runs": runs}))
    for _ in range(2):
        got = storage.read("next")
        assert got is not None
        assert got.memory == {"runs": runs}
    assert storage.read("cut") is None


_FINALIZED_MEANWHILE = textwrap.dedent(
    """
    import gc
    from savegame.storage.known import pickle_runs, unpickle_runs

    made = []

    class Saving:
        def __init__(self):
            self.cycle = self  # freed by the garbage collector alone

        def __del__(self):
            made.append(pickle_runs([{"run_id": "made by a finalizer"}]))

    runs = [{"run_id": "outer", "text": "x" * 100}]
    pickle_runs(runs)
    gc.collect()
    gc.set_threshold(1)
    for _ in range(200):
        Saving()
        assert unpickle_runs(pickle_runs(runs)) == runs
    gc.set_threshold(700)
    gc.collect()
    assert len(made) == 200
    assert all(unpickle_runs(blob) == [{"run_id": "made by a finalizer"}] for blob in made)
    print("ok")
    """
)


def test_a_pickle_made_while_another_is_under_way_in_its_thread_is_made_apart() -> None:
    # The garbage collector runs finalizers where an allocation starts it, in the middle
    # of a dump too (up to Python 3.11, at the one the pickler makes as it starts), and a
    # workflow's run dropped half-way is saved by one: on the dump's pickler, its pickle
    # crashed the process. A finalizer in a cycle, collected at nearly every allocation.
    done = subprocess.run(
        [sys.executable, "-c", _FINALIZED_MEANWHILE], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr[-2000:]


def test_a_write_sent_again_is_told_made_or_not_from_the_tokens_kept() -> None:
    mine, on, others = "m" * 16, "o" * 16, [f"{i:016x}" for i in range(PAST_TOKENS + 1)]
    # Made, and still the last write; made, and written over since.
    assert resent_write_made(mine, on, mine, on) is True
    assert resent_write_made(mine, on, others[0], mine + on) is True
    # Another write followed the one it wrote on: not made.
    assert resent_write_made(mine, on, others[0], on) is False
    # It was to make the session, and the tokens go back to another's making: not made.
    assert resent_write_made(mine, "", others[1], others[0]) is False
    # Too many writes since, or the session deleted: it cannot be told.
    assert resent_write_made(mine, on, others[0], "".join(others[1:])) is None
    assert resent_write_made(mine, "", others[0], "".join(others[1:])) is None
    assert resent_write_made(mine, on, "", "") is None
    # Making a session that is not there: not made.
    assert resent_write_made(mine, "", "", "") is False


def test_an_export_a_count_and_a_copy_leave_what_a_storage_remembers_as_it_was(
    backend_store: Store,
) -> None:
    # Reading a whole store would push out the sessions an application goes on with, and
    # spend time keeping sessions it will not read again.
    writer = backend_store.require("cache_bytes")
    for i in range(6):
        memory = {"runs": [{"run_id": f"{i}-0", "messages": [{"role": "user"}]}]}
        writer.upsert(AgentSession(session_id=f"s{i}", user_id="u", memory=memory))
    reader = backend_store()
    cache = reader._known  # type: ignore[attr-defined]
    assert reader.read("s1") is not None
    assert reader.read("s3") is not None
    before = list(cache._items.items())
    lines: list[str] = []
    assert export_sessions(reader, lines.append) == 6
    assert stats(reader).sessions == 6
    assert copy_sessions(reader, InMemoryStorage()).copied == 6
    assert list(cache._items.items()) == before
    assert lines == [session_line(s) + "\n" for s in writer.get_all_sessions()]
    assert reader.read("s1") == writer.read("s1")
