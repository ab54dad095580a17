"""Random histories of saves, edits, reads and deletes by two storages of one store, checked
against a model of what the store must hold.

A storage remembers what it last wrote or read of each session, so that the next save writes
what changed and the next read fetches nothing that is unchanged (see
:mod:`savegame.storage.known`). Each rule of this machine is something an application does
with a session it holds: add a run, edit a run in place, change a value's type (``1`` to
``True`` to ``1.0``, which ``==`` calls equal), reorder a run's keys, drop a run, point the
message list at the runs' messages, save, read, delete, list, or open the storage afresh.
Two storages take turns, so that each often holds a memory of the store that the other has
made stale; one of them, where the backend allows, may remember only a few sessions' worth
of bytes. After every save, the model holds the session's exact text, and every read and
listing by either storage must give exactly that.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, ClassVar

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from savegame.errors import ConflictError
from savegame.storage.session import Session, get_path, set_path
from savegame.testing.contract import Store, _exact, _fields, _runs_of, _spec, _with_runs

SIDES = st.sampled_from([0, 1])
KEYS = st.sampled_from([0, 1])
PLACES = st.integers(min_value=0, max_value=20)

# Values that ``==`` calls equal and the store must tell apart are drawn often.
LEAVES = st.sampled_from([0, 1, 1.0, 0.0, True, False, None, "", "x", "ü 🎲", 2**40, 0.5])
VALUES = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3)
    ),
    max_leaves=6,
)
MESSAGES = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant"]),
            "content": st.sampled_from(["hi", "ü 🎲", "a longer answer " * 40]),
        }
    ),
    max_size=2,
)
RUNS = st.fixed_dictionaries(
    {"run_id": st.text("abc", max_size=2), "messages": MESSAGES},
    optional={"a": VALUES, "b": VALUES},
)


class History(RuleBasedStateMachine):
    """Plays random histories on :attr:`store`; made for a store by :func:`history_machine`."""

    store: ClassVar[Store]
    small: ClassVar[bool]
    """Whether one side may remember only a few sessions' worth of bytes."""
    path: ClassVar[tuple[str, ...]]
    """Where a session of the store's mode keeps its runs."""

    def __init__(self) -> None:
        super().__init__()
        tag = uuid.uuid4().hex[:10]
        self.ids = [f"history-{tag}-{k}" for k in range(2)]
        self.users = [f"user-{tag}-a", f"user-{tag}-b"]
        self.storages = [self._opened(0), self._opened(1)]
        self.witness = self.store(cache_bytes=0) if self.small else self.store()
        """Reads what the store holds, remembering nothing."""
        self.ordered = all("key_order" in type(s).capabilities for s in self.storages)
        self.held: list[dict[str, Session]] = [{}, {}]
        self.seen: list[dict[str, int]] = [{}, {}]
        """The version each side last saved or read of a session."""
        self.stored: dict[str, str] = {}
        self.versions: dict[str, int] = {}

    def _opened(self, side: int) -> Any:
        if self.small and side == 1:
            return self.store(cache_bytes=3000)
        return self.store()

    def _held(self, side: int, key: int) -> Session:
        sid = self.ids[key]
        session = self.held[side].get(sid)
        if session is None:
            session = self.held[side][sid] = _with_runs(self.store, sid, [], user_id=self.users[0])
        return session

    def _runs(self, side: int, key: int) -> list[Any]:
        runs: list[Any] = _runs_of(self.store, self._held(side, key))
        return runs

    def _text(self, session: Session) -> str:
        return _exact(_fields(session), self.ordered)

    def _saved(self, side: int, sid: str, text: str, version: int) -> None:
        """Enters a write by ``side`` in the model, and checks that the store holds it."""
        self.stored[sid] = text
        self.versions[sid] = self.seen[side][sid] = version
        self._check(sid, self.witness.read(sid))

    def _check(self, sid: str, got: Session | None) -> None:
        if sid not in self.stored:
            assert got is None, f"{sid} was deleted, yet read as {got}"
            return
        assert got is not None, f"{sid} was saved, yet not found"
        assert self._text(got) == self.stored[sid]
        assert got.version == self.versions[sid]  # type: ignore[attr-defined]

    @rule(side=SIDES, key=KEYS, run=RUNS)
    def add_a_run(self, side: int, key: int, run: dict[str, Any]) -> None:
        self._runs(side, key).append(run)

    @rule(side=SIDES, key=KEYS, at=PLACES, name=st.sampled_from("ab"), value=VALUES)
    def edit_a_run_in_place(self, side: int, key: int, at: int, name: str, value: Any) -> None:
        runs = self._runs(side, key)
        if runs:
            runs[at % len(runs)][name] = value

    @rule(side=SIDES, key=KEYS, at=PLACES, content=st.sampled_from(["edited", "ü"]))
    def edit_a_message_in_place(self, side: int, key: int, at: int, content: str) -> None:
        runs = self._runs(side, key)
        if runs and runs[at % len(runs)]["messages"]:
            runs[at % len(runs)]["messages"][0]["content"] = content

    @rule(side=SIDES, key=KEYS, at=PLACES)
    def reorder_a_run(self, side: int, key: int, at: int) -> None:
        runs = self._runs(side, key)
        if runs:
            run = runs[at % len(runs)]
            items = list(run.items())
            run.clear()
            run.update(reversed(items))

    @rule(side=SIDES, key=KEYS, at=PLACES)
    def drop_a_run(self, side: int, key: int, at: int) -> None:
        runs = self._runs(side, key)
        if runs:
            del runs[at % len(runs)]

    @rule(side=SIDES, key=KEYS, copied=st.booleans())
    def gather_the_messages(self, side: int, key: int, copied: bool) -> None:
        if self.path != ("memory", "runs"):
            return
        runs = self._runs(side, key)
        messages = [m for run in runs for m in run["messages"]]
        if copied:
            messages = json.loads(json.dumps(messages))
        self._held(side, key).memory["messages"] = messages  # type: ignore[attr-defined]

    @rule(side=SIDES, key=KEYS)
    def copy_the_runs(self, side: int, key: int) -> None:
        data = self._held(side, key).to_dict()
        set_path(data, self.path, json.loads(json.dumps(get_path(data, self.path))))
        copied = _spec(self.store).session_class.from_dict(data)
        assert copied is not None
        self.held[side][self.ids[key]] = copied

    @rule(side=SIDES, key=KEYS)
    def move_to_the_other_user(self, side: int, key: int) -> None:
        session = self._held(side, key)
        session.user_id = self.users[session.user_id == self.users[0]]  # type: ignore[attr-defined]

    @rule(side=SIDES, key=KEYS, value=VALUES)
    def change_session_data(self, side: int, key: int, value: Any) -> None:
        self._held(side, key).session_data = {"v": value}  # type: ignore[attr-defined]

    @rule(side=SIDES, key=KEYS, checked=st.booleans())
    def save(self, side: int, key: int, checked: bool) -> None:
        sid = self.ids[key]
        session = self._held(side, key)
        storage = self.storages[side]
        if checked:
            expected, actual = self.seen[side].get(sid, 0), self.versions.get(sid, 0)
            if expected != actual:
                with pytest.raises(ConflictError) as info:
                    storage.upsert(session, expected_version=expected)
                assert (info.value.expected, info.value.actual) == (expected, actual)
                self._check(sid, storage.read(sid))
                return
            stored = storage.upsert(session, expected_version=expected)
        else:
            stored = storage.upsert(session)
        self._saved(side, sid, self._text(session), self.versions.get(sid, 0) + 1)
        self._check(sid, stored)

    @rule(side=SIDES, key=KEYS, run=RUNS)
    def update(self, side: int, key: int, run: dict[str, Any]) -> None:
        sid = self.ids[key]

        def add(session: Session | None) -> Session:
            if session is None:
                session = self._held(side, key)
            _runs_of(self.store, session).append(json.loads(json.dumps(run)))
            return session

        stored = self.storages[side].update(sid, add)
        self._saved(side, sid, self._text(stored), self.versions.get(sid, 0) + 1)
        self.held[side][sid] = stored
        self._check(sid, self.storages[1 - side].read(sid))

    @rule(side=SIDES, key=KEYS, version=st.integers(min_value=0, max_value=4))
    def restore(self, side: int, key: int, version: int) -> None:
        sid = self.ids[key]
        session = self._held(side, key)
        session.version = version  # type: ignore[attr-defined]
        self.storages[side].restore(session)
        self._saved(side, sid, self._text(session), max(version, self.versions.get(sid, 0) + 1))
        self._check(sid, self.storages[side].read(sid))

    @rule(side=SIDES, key=KEYS)
    def read(self, side: int, key: int) -> None:
        sid = self.ids[key]
        got = self.storages[side].read(sid)
        self._check(sid, got)
        if got is not None:
            self.held[side][sid] = got
            self.seen[side][sid] = got.version

    @rule(side=SIDES, key=KEYS)
    def delete(self, side: int, key: int) -> None:
        sid = self.ids[key]
        assert self.storages[side].delete_session(sid) is (sid in self.stored)
        self.stored.pop(sid, None)
        self.versions.pop(sid, None)

    @rule(side=SIDES)
    def list_the_users_sessions(self, side: int) -> None:
        everyone: list[str] = []
        for user in self.users:
            listed = self.storages[side].get_all_sessions(user_id=user)
            for session in listed:
                assert session.user_id == user
                self._check(session.session_id, session)
            everyone += [s.session_id for s in listed]
        assert sorted(everyone) == sorted(self.stored)
        assert self.storages[side].read_many(self.ids) == [
            s for s in (self.storages[side].read(sid) for sid in self.ids) if s is not None
        ]

    @rule(side=SIDES)
    def open_afresh(self, side: int) -> None:
        self.storages[side].close()
        self.storages[side] = self._opened(side)

    def teardown(self) -> None:
        for sid in self.ids:
            self.storages[0].delete_session(sid)
        for storage in [*self.storages, self.witness]:
            storage.close()


def history_machine(store: Store) -> type[RuleBasedStateMachine]:
    """A state machine class that plays random histories on ``store`` (agent mode or any
    other); each history works on sessions and a user of its own."""
    with store() as probe:
        small = "cache_bytes" in type(probe).capabilities
    settings = {"store": store, "small": small, "path": _spec(store).runs_path}
    return type("History", (History,), settings)
