"""Export, import, copy, statistics, purge and erasure as library calls, on every backend."""

from __future__ import annotations

import functools
import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, text

from savegame import transfer
from savegame.agent import Agent
from savegame.errors import (
    ConflictError,
    CorruptSessionError,
    InvalidIdentifierError,
    SerializationError,
)
from savegame.models.offline import OfflineModel
from savegame.storage.in_memory import InMemoryStorage
from savegame.storage.json import JsonStorage
from savegame.storage.session import MESSAGES_OF_RUNS, MODES, Session
from savegame.storage.session.agent import AgentSession
from savegame.storage.session.team import TeamSession
from savegame.storage.sqlite import SqliteStorage
from savegame.storage.url import open_storage
from savegame.testing import Store
from savegame.testing.sample import make_session
from tests.stores import BACKENDS


def _awkward(mode: str, session_id: str, i: int) -> Session:
    data = make_session(mode, session_id, i % 3, 300, user_id=f"u{i % 2}").to_dict()
    data["session_data"] = {
        "text": "Ünïcødé 🎮 \u202eRTL\u202c e\u0301",
        "nul": "a\x00b",
        "surrogate": "\udfff",
        "number": [0, -1, 2.5, 1e300, 10**20],
        "n_runs": i % 3 + 1,
        "round": i % 3,
    }
    data["created_at"] = 1_650_000_000 + i
    data["updated_at"] = 1_650_000_900 + i
    session = MODES[mode].session_class.from_dict(data)
    assert session is not None
    return session


def _memory_with(mode: str, count: int) -> InMemoryStorage:
    storage = InMemoryStorage(mode=mode)  # type: ignore[arg-type]
    for i in range(count):
        storage.restore(_awkward(mode, f"x{i}", i))
    return storage


def _lines(storage: Any, user_id: str | None = None) -> list[str]:
    lines: list[str] = []
    transfer.export_sessions(storage, lines.append, user_id)
    return lines


def _comparable(storage: Any, lines: list[str]) -> list[str]:
    """``lines`` as they can be compared with an export of ``storage``: as they are, or for a
    store that does not keep the order of keys (PostgreSQL's JSONB), with every key sorted."""
    if "key_order" in type(storage).capabilities:
        return lines
    return [json.dumps(json.loads(line), sort_keys=True) for line in lines]


def test_export_import_export_gives_the_same_lines(store: Store) -> None:
    source = _memory_with(store.mode, 6)
    exported = _lines(source)
    assert len(exported) == 6
    assert all(line.endswith("\n") and "\n" not in line[:-1] for line in exported)
    assert transfer.import_sessions(store(), exported).copied == 6
    assert _comparable(store(), _lines(store())) == _comparable(store(), exported)
    by_user = _lines(store(), "u1")
    assert _comparable(store(), by_user) == _comparable(store(), _lines(source, "u1"))


def test_import_keeps_timestamps_and_versions(backend_store: Store) -> None:
    source = InMemoryStorage()
    session = make_session("agent", "v", 0)
    for _ in range(3):
        source.upsert(session)
    stored = source.read("v")
    assert stored is not None
    assert stored.version == 3
    transfer.import_sessions(backend_store(), _lines(source))
    arrived = backend_store().read("v")
    assert arrived == stored


def test_a_bad_line_stops_the_import_before_anything_is_written(backend_store: Store) -> None:
    good = _lines(_memory_with("agent", 2))
    team_line = transfer.session_line(make_session("team", "t", 0))
    for bad, message in [
        ("{oops", "dump:3: not JSON"),
        ("[1, 2]", "dump:3: not a session"),
        ('{"user_id": "u"}', "dump:3: not a session"),
        (team_line, "team_data"),
    ]:
        with pytest.raises(SerializationError, match=message):
            transfer.import_sessions(backend_store(), [*good, bad], "dump")
        storage = backend_store()
        assert not storage.table_exists() or storage.get_all_session_ids() == []


def test_indented_json_or_an_array_is_said_not_to_be_an_export() -> None:
    """What sessions show --json and sessions list --json print was refused as "not JSON
    (Expecting property name ...)", which does not say what an import takes."""
    session = json.loads(_lines(_memory_with("agent", 1))[0])
    for printed in (
        json.dumps(session, indent=2),
        json.dumps([session]),
        json.dumps([session], indent=2),
    ):
        with pytest.raises(SerializationError, match="one session a line") as raised:
            transfer.import_sessions(InMemoryStorage(), printed.split("\n"), "show.json")
        assert str(raised.value).startswith("show.json:1: not ")


def test_blank_lines_are_skipped(backend_store: Store) -> None:
    lines = _lines(_memory_with("agent", 2))
    report = transfer.import_sessions(backend_store(), ["\n", lines[0], "  \n", lines[1]])
    assert (report.total, report.copied, report.unchanged) == (2, 2, 0)
    again = transfer.import_sessions(backend_store(), lines)
    assert (again.total, again.copied, again.unchanged) == (2, 0, 2)
    stored = _lines(backend_store())
    assert _comparable(backend_store(), stored) == _comparable(backend_store(), lines)


def test_a_byte_order_mark_in_front_of_the_file_is_skipped() -> None:
    """A file saved by Notepad starts with one; its first line was "not JSON"."""
    lines = _lines(_memory_with("agent", 2))
    for first in ("\ufeff" + lines[0], ("\ufeff" + lines[0]).encode("utf-8")):
        storage = InMemoryStorage()
        report = transfer.import_sessions(storage, [first, lines[1]])
        assert (report.total, report.copied) == (2, 2)
        assert _lines(storage) == lines
    with pytest.raises(SerializationError, match="dump:2: not JSON"):
        transfer.import_sessions(InMemoryStorage(), [lines[0], "\ufeff" + lines[1]], "dump")


def test_copy_reports_and_is_idempotent(store: Store) -> None:
    source = _memory_with(store.mode, 7)
    started: list[int] = []
    batches: list[int] = []
    report = transfer.copy_sessions(
        source, store(), batch_size=3, on_start=started.append, on_batch=batches.append
    )
    assert (report.total, report.copied, report.unchanged) == (7, 7, 0)
    assert started == [7]
    assert batches == [3, 3, 1]
    assert _comparable(store(), _lines(store())) == _comparable(store(), _lines(source))

    again = transfer.copy_sessions(source, store())
    assert (again.total, again.copied, again.unchanged) == (7, 0, 7)

    changed = source.read("x3")
    assert changed is not None
    changed.session_data = {"round": 9}  # type: ignore[attr-defined]
    source.upsert(changed)
    third = transfer.copy_sessions(source, store())
    assert (third.copied, third.unchanged) == (1, 6)
    assert store().read("x3") == source.read("x3")


def test_a_copy_or_an_import_leaves_no_session_remembered_past_its_batch(
    backend_store: Store,
) -> None:
    # A backend remembers the sessions it writes (savegame.storage.known); a copy of a large
    # store must not fill that cache with sessions nothing is about to save again, so that
    # its memory is bounded by a batch, not by the store (or the cache's bound).
    destination = backend_store()
    remembered = getattr(destination, "_known", None)
    if remembered is None:
        pytest.skip("this backend remembers no session")
    source = _memory_with("agent", 7)
    seen: list[int] = []
    report = transfer.copy_sessions(
        source, destination, batch_size=3, on_batch=lambda _: seen.append(len(remembered))
    )
    assert (report.copied, seen) == (7, [0, 0, 0])
    destination.drop()
    imported = transfer.import_sessions(destination, _lines(source))
    assert (imported.copied, len(remembered)) == (7, 0)
    assert _comparable(destination, _lines(destination)) == _comparable(destination, _lines(source))


def test_a_session_saved_at_the_destination_since_is_kept_unless_told(
    backend_store: Store,
) -> None:
    # Running a copy or an import again after users went on at the destination replaced
    # what they had saved there with the source's older copy.
    source = _memory_with("agent", 3)
    assert transfer.copy_sessions(source, backend_store()).copied == 3
    went_on = backend_store().read("x1")
    assert went_on is not None
    went_on.session_data = {"went": "on"}  # type: ignore[attr-defined]
    saved = backend_store().upsert(went_on)
    moved_on = source.read("x2")
    assert moved_on is not None
    moved_on.session_data = {"the source": "too"}  # type: ignore[attr-defined]
    source.upsert(moved_on)

    report = transfer.copy_sessions(source, backend_store())
    assert (report.copied, report.unchanged, report.kept) == (1, 1, ["x1"])
    assert "(1 written, 1 already there, 1 newer there kept)" in report.how_far("copy")
    assert backend_store().read("x1") == saved
    arrived = backend_store().read("x2")
    assert arrived is not None
    assert arrived.session_data == {"the source": "too"}  # type: ignore[attr-defined]

    backup = _lines(source)
    report = transfer.import_sessions(backend_store(), backup)
    assert (report.copied, report.unchanged, report.kept) == (0, 2, ["x1"])
    assert backend_store().read("x1") == saved
    report = transfer.import_sessions(backend_store(), backup, replace_newer=True)
    assert (report.copied, report.unchanged, report.kept) == (1, 2, [])
    restored = backend_store().read("x1")
    assert restored is not None
    assert restored.session_data == source.read("x1").session_data  # type: ignore[union-attr]
    assert transfer.import_sessions(backend_store(), backup).unchanged == 3


@pytest.mark.parametrize("move", ["copy", "import"])
def test_a_turn_saved_at_the_destination_is_kept_whatever_the_clocks_say(
    backend_store: Store, move: str
) -> None:
    # The source's clock ran a minute ahead of the destination's (or the turn was saved in
    # the second the copy was made): a copy or an import run again took the turn saved at
    # the destination for older than the source's copy, and wrote over it without a word.
    source = InMemoryStorage(mode="agent")
    Agent(OfflineModel(), source, session_id="trip").run("My name is Ada.")
    ahead = source.read("trip")
    assert ahead is not None
    ahead.updated_at += 60  # type: ignore[attr-defined]
    source.restore(ahead)
    backup = _lines(source)
    assert transfer.copy_sessions(source, backend_store()).copied == 1
    Agent(OfflineModel(), backend_store(), session_id="trip").run("I moved to Bergen.")
    went_on = backend_store().read("trip")
    assert went_on is not None

    again = (
        functools.partial(transfer.copy_sessions, source)
        if move == "copy"
        else functools.partial(transfer.import_sessions, lines=backup)
    )
    report = again(backend_store())
    assert (report.copied, report.kept) == (0, ["trip"])
    assert backend_store().read("trip") == went_on
    assert again(backend_store(), replace_newer=True).copied == 1
    back = backend_store().read("trip")
    assert back is not None
    assert len(back.memory["runs"]) == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("move", ["copy", "import"])
def test_a_session_saved_at_the_destination_while_the_move_runs_is_kept(
    backend_store: Store, move: str
) -> None:
    # An application already on the new store saved sessions between the look a copy or an
    # import took at what the destination held and its write: the source's older sessions
    # were written over them, and the turns saved there were lost.
    source = _memory_with("agent", 3)
    destination, user = backend_store(), backend_store()
    assert transfer.copy_sessions(_memory_with("agent", 1), destination).copied == 1
    changed = source.read("x0")
    assert changed is not None
    changed.session_data = {"changed": "at the source"}  # type: ignore[attr-defined]
    changed.updated_at = 1_700_000_000  # type: ignore[attr-defined]
    source.restore(changed)
    look = destination._read_sessions
    saved: dict[str, Session] = {}

    def look_then_save(ids: list[str], *args: Any, **kwargs: Any) -> list[Session]:
        found = look(ids, *args, **kwargs)
        for session_id in ids:
            if session_id != "x2" and session_id not in saved:
                saved[session_id] = user.upsert(make_session("agent", session_id, 2))
        return found

    destination._read_sessions = look_then_save  # type: ignore[method-assign]
    if move == "copy":
        report = transfer.copy_sessions(source, destination)
    else:
        report = transfer.import_sessions(destination, _lines(source))
    assert (report.copied, report.unchanged, sorted(report.kept)) == (1, 0, ["x0", "x1"])
    for session_id, session in saved.items():
        assert backend_store().read(session_id) == session
    assert backend_store().read("x2") == source.read("x2")


def test_a_session_saved_at_the_destination_at_each_look_stops_the_move_naming_it() -> None:
    # With --replace-newer, a session saved there again after each look would be written
    # over unseen; the copy stops instead, saying what it had stored, and the save stays.
    source, destination = _memory_with("agent", 2), InMemoryStorage()
    user = destination  # an application saving there as it goes on
    look = destination._read_sessions

    def look_then_save(ids: list[str], *args: Any, **kwargs: Any) -> list[Session]:
        found = look(ids, *args, **kwargs)
        if "x1" in ids:
            user.upsert(make_session("agent", "x1", 2))
        return found

    destination._read_sessions = look_then_save  # type: ignore[method-assign]
    # A ConflictError, as the destination raised it: the caller may run the copy again.
    with pytest.raises(
        ConflictError,
        match=r"session 'x1' was not stored: .*another writer changed it.*; the copy stopped "
        r"having stored 1 of 2 sessions \(1 written",
    ) as raised:
        transfer.copy_sessions(source, destination, replace_newer=True)
    assert raised.value.session_id == "x1"
    assert raised.value.actual == raised.value.expected + 1
    kept = user.read("x1")
    assert kept is not None
    assert kept.session_data == make_session("agent", "x1", 2).session_data  # type: ignore[attr-defined]


def test_copy_refuses_stores_of_different_modes_and_bad_batches() -> None:
    """They were plain ValueErrors, which ``except StorageError`` let through."""
    destination = InMemoryStorage("team")
    with pytest.raises(
        InvalidIdentifierError, match="cannot copy agent sessions into a store of team"
    ):
        transfer.copy_sessions(InMemoryStorage("agent"), destination)
    assert not destination.table_exists() or destination.get_all_session_ids() == []
    with pytest.raises(InvalidIdentifierError, match="batch size"):
        transfer.copy_sessions(_memory_with("agent", 1), InMemoryStorage(), batch_size=0)


def test_stats(store: Store) -> None:
    empty = transfer.stats(store())
    assert (empty.sessions, empty.users, empty.entities, empty.bytes) == (0, 0, 0, 0)
    assert empty.oldest is None
    assert empty.newest is None
    source = _memory_with(store.mode, 5)
    transfer.copy_sessions(source, store())
    figures = transfer.stats(store())
    assert figures.sessions == 5
    assert figures.users == 2
    assert figures.entities == 1
    assert figures.bytes == sum(len(line.encode()) for line in _lines(source))
    assert figures.oldest == 1_650_000_000
    assert figures.newest == 1_650_000_904
    assert transfer.stats(store(), "u0").sessions == 3


def test_purge_removes_what_was_not_updated_for_that_long(backend_store: Store) -> None:
    storage = backend_store()
    storage.create()
    for i, age in enumerate([10, 100, 1000]):
        session = make_session("agent", f"p{i}", 0)
        session.created_at = session.updated_at = 1_000_000 - age  # type: ignore[attr-defined]
        storage.restore(session)
    assert transfer.stale_sessions(storage, 50, now=1_000_000) == ["p1", "p2"]
    assert transfer.stale_sessions(storage, 5000, now=1_000_000) == []
    # Measured from now, every one of them is decades old.
    assert sorted(transfer.purge(storage, 3600, dry_run=True)) == ["p0", "p1", "p2"]
    assert len(storage.get_all_session_ids()) == 3
    removed: list[str] = []
    assert transfer.purge(storage, 3600, removed=removed) is removed
    assert sorted(removed) == ["p0", "p1", "p2"]
    assert storage.get_all_session_ids() == []
    for refuse in (transfer.stale_sessions, transfer.purge):
        with pytest.raises(InvalidIdentifierError, match="negative"):
            refuse(storage, -1)
    assert issubclass(InvalidIdentifierError, ValueError)


def test_purge_keeps_a_session_saved_again_after_it_was_found_stale(
    backend_store: Store,
) -> None:
    """Its user came back while the purge ran: the purge removed the conversation saved
    since, as it removed whatever had the id it had listed."""
    storage, user = backend_store(), backend_store()
    storage.create()
    for session_id in ("back", "gone"):
        session = make_session("agent", session_id, 0)
        session.created_at = session.updated_at = 1_000_000  # type: ignore[attr-defined]
        storage.restore(session)
    delete = storage._delete_many

    def save_then_delete(session_ids: list[str], *args: Any) -> None:
        if "back" in session_ids:
            user.upsert(make_session("agent", "back", 1))
        delete(session_ids, *args)

    storage._delete_many = save_then_delete  # type: ignore[method-assign]
    assert transfer.purge(storage, 3600) == ["gone"]
    kept = user.read("back")
    assert kept is not None
    assert kept.to_dict() == {**make_session("agent", "back", 1).to_dict(), **_stamps(kept)}
    assert user.get_all_session_ids() == ["back"]


def test_a_purge_of_many_sqlite_sessions_takes_a_few_statements_a_batch(tmp_path: Path) -> None:
    # Each stale session was removed in a transaction of its own, then the log cleared:
    # eight statements a session (over 8,000 for 1,000 sessions); now about a dozen a batch.
    storage = SqliteStorage("chats", db_file=tmp_path / "s.db", synchronous="NORMAL")
    for i in range(300):
        session = AgentSession(session_id=f"s{i:03}", created_at=1000, updated_at=1000 + i)
        storage.restore(session)
    storage.restore(AgentSession(session_id="new"))
    statements: list[str] = []
    storage.db_engine.dispose()
    event.listen(
        storage.db_engine, "connect", lambda conn, _: conn.set_trace_callback(statements.append)
    )
    removed = transfer.purge(storage, 3600)
    assert sorted(removed) == [f"s{i:03}" for i in range(300)]
    assert len(statements) < 100, statements[:20]
    assert storage.get_all_session_ids() == ["new"]
    storage.close()


def test_a_sqlite_purge_reads_no_run(tmp_path: Path) -> None:
    """Every statement SQLite runs (the driver's own included) is traced: finding the
    stale sessions reads the header table only, and the purge names the runs table only
    to delete the stale sessions' rows, of which there are more than a batch. With the
    runs deleted by hand (any read of a session then fails) the answer is the same, and
    no session is said to be damaged."""
    db = tmp_path / "s.db"
    with SqliteStorage("chats", db_file=db) as writer:
        for i in range(transfer.STAMP_BATCH + 20):
            runs = [{"run_id": f"{i}/{k}", "content": "x" * 100} for k in range(5)]
            when = 1000 + i if i % 3 else None  # None: made now, so not stale
            writer.restore(
                AgentSession(
                    session_id=f"s{i:04}",
                    created_at=when,
                    updated_at=when,
                    memory={"runs": runs},
                )
            )
        expected = [s.session_id for s in writer.get_all_sessions() if s.updated_at < 5000]
    assert len(expected) > transfer.STAMP_BATCH // 2
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("DELETE FROM chats_runs WHERE session_id = 's0001'")
        conn.execute("DELETE FROM chats_runs WHERE session_id = 's0003'")
    storage = SqliteStorage("chats", db_file=db)
    with pytest.raises(CorruptSessionError):
        storage.read("s0001")
    statements: list[str] = []
    storage.db_engine.dispose()
    event.listen(
        storage.db_engine, "connect", lambda conn, _: conn.set_trace_callback(statements.append)
    )
    assert transfer.stale_sessions(storage, 3600) == expected
    damaged: list[str] = []
    assert transfer.purge(storage, 3600, dry_run=True, damaged=damaged) == expected
    assert statements
    assert [s for s in statements if "chats_runs" in s] == []
    assert sorted(transfer.purge(storage, 3600, damaged=damaged)) == sorted(expected)
    assert damaged == []
    assert [s for s in statements if "chats_runs" in s and not s.startswith("DELETE")] == []
    kept = [f"s{i:04}" for i in range(transfer.STAMP_BATCH + 20) if i % 3 == 0]
    assert sorted(storage.get_all_session_ids()) == kept  # s0003, its runs lost, among them
    storage.close()


def _stamps(session: Session) -> dict[str, Any]:
    return {k: getattr(session, k) for k in ("created_at", "updated_at", "version")}


def test_rename(backend_store: Store) -> None:
    storage = backend_store()
    storage.create()
    assert transfer.rename_session(storage, "absent", "x") is None
    storage.upsert(make_session("agent", "r", 1))
    renamed = transfer.rename_session(storage, "r", "Ωmega")
    assert renamed is not None
    assert transfer.session_name(renamed) == "Ωmega"
    stored = storage.read("r")
    assert stored is not None
    assert transfer.session_name(stored) == "Ωmega"
    assert stored.session_data["round"] == 1  # type: ignore[attr-defined]
    assert len(transfer.runs_of(storage.spec, stored)) == 2


@pytest.mark.parametrize(
    "backend", [pytest.param(b, id=b.name) for b in BACKENDS if b.name != "memory"]
)
def test_delete_user_of_a_single_store(backend: Any, tmp_path: Path) -> None:
    with backend.make(tmp_path, "team") as store:
        if store.url is None:
            pytest.skip(f"{store.backend} lives in one process and has no URL")
        storage = store()
        storage.create()
        for i in range(4):
            storage.upsert(make_session("team", f"d{i}", 0, user_id=f"u{i % 2}"))
        erasure = transfer.delete_user(str(store.url), "u0", "team")
        # A folder is searched in every mode (test_cli: a folder of team and agent sessions).
        folder = store.backend in ("json", "yaml")
        assert erasure.removed == (dict.fromkeys(MODES, 0) if folder else {}) | {"team": 2}
        assert erasure.total == 2
        assert sorted(erasure.ids) == ["d0", "d2"]
        assert sorted(storage.get_all_session_ids()) == ["d1", "d3"]
        with pytest.raises(InvalidIdentifierError):
            transfer.delete_user(str(store.url), "", "team")


_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)


_JOINED = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def test_a_table_of_another_mode_is_refused_not_told_of_as_damaged_sessions(
    tmp_path: Path,
) -> None:
    """A table of team sessions opened in mode agent: export, stats, purge and the listing
    went on past each session as a damaged one, and stats counted 0 sessions."""
    db = tmp_path / "app.db"
    with SqliteStorage("t", db_file=str(db), mode="team") as team:
        for i in range(3):
            team.upsert(make_session("team", f"s{i}", 0, user_id="u"))
    url = f"sqlite:///{db}?table=t"
    for call in (
        lambda s: transfer.export_sessions(s, lambda line: None, damaged=[]),
        lambda s: transfer.stats(s, damaged=[]),
        lambda s: transfer.purge(s, 0, damaged=[]),
        lambda s: transfer.read_sessions(s, s.get_all_session_ids(), []),
    ):
        with (
            open_storage(url, "agent") as storage,
            pytest.raises(CorruptSessionError, match="lacks the column"),
        ):
            call(storage)
    with open_storage(url, "team") as team:
        assert sorted(team.get_all_session_ids()) == ["s0", "s1", "s2"]


def test_delete_user_goes_on_past_a_store_that_fails_and_says_what_it_did(
    tmp_path: Path,
) -> None:
    """A team_sessions table that is not a session table stopped the erasure there: the
    user's workflow sessions were kept, and nothing said the agent ones were gone."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    for mode, session_id in (("agent", "a"), ("workflow", "w")):
        with SqliteStorage(f"{mode}_sessions", db_file=str(tmp_path / "app.db"), mode=mode) as s:
            s.upsert(make_session(mode, session_id, 0, user_id="alice"))
    with closing(sqlite3.connect(tmp_path / "app.db")) as conn:
        conn.execute("CREATE TABLE team_sessions (x INTEGER)")
        conn.commit()
    with pytest.raises(CorruptSessionError) as raised:
        transfer.delete_user(url, "alice")
    message = str(raised.value)
    assert message.startswith(
        "the sessions of user 'alice' in mode team could not be deleted (team: "
    )
    assert message.endswith(
        "; in the other modes they were, 2 in all (agent: 1, workflow: 1, workflow_v2: 0)"
    )
    for mode in ("agent", "workflow"):
        with SqliteStorage(f"{mode}_sessions", db_file=str(tmp_path / "app.db"), mode=mode) as s:
            assert s.get_all_session_ids() == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(list(MODES)), data=st.dictionaries(_text, _json, max_size=5))
def test_an_export_line_holds_any_session_exactly(mode: str, data: dict[str, Any]) -> None:
    spec = MODES[mode]
    session = spec.session_class.from_dict(
        {"session_id": "h", "session_data": data, "extra_data": {"again": data}, "version": 4}
    )
    assert session is not None
    if _JOINED.search(json.dumps(data, ensure_ascii=False)):
        # JSON can write a surrogate pair held as two code points only as the one character
        # it encodes: refused, as every store refuses it.
        with pytest.raises(SerializationError, match="surrogate pair"):
            transfer.session_line(session)
        return
    line = transfer.session_line(session)
    line.encode("utf-8")
    assert "\n" not in line
    back = transfer.parse_line(spec, line)
    assert back == session
    assert json.loads(line) == json.loads(transfer.session_line(back))


def test_an_imported_message_list_copying_the_runs_is_not_stored_twice(tmp_path: Path) -> None:
    runs = [
        {"run_id": f"r{i}", "messages": [{"role": "user", "content": f"turn {i}"}]}
        for i in range(3)
    ]
    copied = json.loads(json.dumps([m for run in runs for m in run["messages"]]))
    differs = [*copied[:2], {"role": "user", "content": 1}]
    source = InMemoryStorage()
    for sid, messages in (("same", copied), ("other", differs)):
        memory = {"runs": runs, "messages": messages}
        source.upsert(AgentSession(session_id=sid, memory=memory))
    storage = SqliteStorage("t", db_file=tmp_path / "s.db")
    assert transfer.import_sessions(storage, _lines(source)).copied == 2
    with storage.db_engine.connect() as conn:
        stored = dict(conn.execute(text("SELECT session_id, memory FROM t")).all())
    assert "turn 0" not in stored["same"]  # kept as the mark, made again from the runs
    assert "turn 0" in stored["other"]  # not a copy of the runs' messages: kept as it is
    for sid, messages in (("same", copied), ("other", differs)):
        got = storage.read(sid)
        assert got is not None
        assert got.memory["messages"] == messages
        assert got.memory["runs"] == runs


def _line(**fields: Any) -> str:
    """An export line of an agent session with these fields, written as they are."""
    times = {"created_at": 1_700_000_000, "updated_at": 1_700_000_100}
    return json.dumps({"session_id": "s", **times, **fields}, separators=(",", ":"))


def test_a_line_without_times_is_already_there_once_imported(backend_store: Store) -> None:
    # restore() gives a session without created_at or updated_at the time of its write;
    # the next import of the same line must find it there, not write it again.
    line = json.dumps({"session_id": "s", "session_data": {"n": 1}})
    assert transfer.import_sessions(backend_store(), [line]).copied == 1
    stored = backend_store().read("s")
    assert stored is not None
    for _ in range(2):
        report = transfer.import_sessions(backend_store(), [line])
        assert (report.copied, report.unchanged) == (0, 1)
    assert backend_store().read("s") == stored
    changed = line.replace('"n": 1', '"n": 2')
    assert transfer.import_sessions(backend_store(), [changed]).copied == 1


def test_a_session_differing_only_in_type_or_key_order_is_not_already_there(
    backend_store: Store,
) -> None:
    ordered = "key_order" in type(backend_store()).capabilities
    runs = [{"role": "user", "content": "hi", "n": 1}]
    first = _line(memory={"runs": runs}, session_data={"flag": 1, "z": 0, "a": 0}, version=3)
    assert transfer.import_sessions(backend_store(), [first]).copied == 1
    assert transfer.import_sessions(backend_store(), [first]).unchanged == 1

    # Each changed line carries the version the store will give it (restore never lets a
    # version go back), so that importing it twice finds it there the second time.
    retyped = first.replace('"flag":1', '"flag":true').replace('"n":1}', '"n":1.0}')
    retyped = retyped.replace('"version":3', '"version":4')
    report = transfer.import_sessions(backend_store(), [retyped])
    assert (report.copied, report.unchanged) == (1, 0)
    stored = backend_store().read("s")
    assert stored is not None
    assert stored.session_data["flag"] is True  # type: ignore[attr-defined]
    assert type(stored.memory["runs"][0]["n"]) is float  # type: ignore[attr-defined]
    assert transfer.import_sessions(backend_store(), [retyped]).unchanged == 1

    # The same session with the keys of its dicts in another order: another session where
    # the store keeps key order, the same one where it does not.
    reordered = retyped.replace('"z":0,"a":0', '"a":0,"z":0')
    report = transfer.import_sessions(backend_store(), [reordered])
    assert (report.copied, report.unchanged) == ((1, 0) if ordered else (0, 1))
    if ordered:
        stored = backend_store().read("s")
        assert stored is not None
        assert list(stored.session_data) == ["flag", "a", "z"]  # type: ignore[attr-defined]

    # -0.0: another session where the store keeps it, the same one where JSONB gives back
    # 0.0 for it.
    signed = reordered.replace('"z":0', '"z":0.0').replace('"version":4', '"version":5')
    assert transfer.import_sessions(backend_store(), [signed]).copied == 1
    negative = signed.replace('"z":0.0', '"z":-0.0')
    report = transfer.import_sessions(backend_store(), [negative])
    assert (report.copied, report.unchanged) == ((1, 0) if ordered else (0, 1))
    assert transfer.import_sessions(backend_store(), [negative]).unchanged == 1

    # copy compares the same way.
    source = InMemoryStorage()
    session = transfer.parse_line(source.spec, retyped.replace('"flag":true', '"flag":1.0'))
    source.restore(session)
    again = transfer.copy_sessions(source, backend_store())
    assert (again.copied, again.unchanged) == (1, 0)
    stored = backend_store().read("s")
    assert stored is not None
    assert type(stored.session_data["flag"]) is float  # type: ignore[attr-defined]

    # A session replaced has a version past its line's: importing the line again finds it
    # there, and writes nothing more.
    changed = retyped.replace('"flag":true', '"flag":"x"')
    assert transfer.import_sessions(backend_store(), [changed]).copied == 1
    report = transfer.import_sessions(backend_store(), [changed])
    assert (report.copied, report.unchanged) == (0, 1)
    assert backend_store().read("s").session_data["flag"] == "x"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        pytest.param(
            '{"session_id":"bad","memory":{"v":NaN}}', SerializationError, "nan", id="nan"
        ),
        pytest.param(
            _line(memory={"runs": [], "messages": MESSAGES_OF_RUNS}),
            SerializationError,
            "may not hold it",
            id="messages-mark",
        ),
        pytest.param(_line(created_at=1.5), SerializationError, "created_at", id="float-time"),
        pytest.param(
            '{"session_id":"p","session_data":{"t":"\ud83d\ude00"}}',
            SerializationError,
            "surrogate pair",
            id="surrogate-pair-as-two-code-points",
        ),
        pytest.param(_line(version=True), SerializationError, "version", id="bool-version"),
        pytest.param(
            '{"session_id":""}', InvalidIdentifierError, "must not be empty", id="empty-id"
        ),
        pytest.param(
            _line(user_id="a\x00b"), InvalidIdentifierError, "user id", id="nul-in-user-id"
        ),
        pytest.param(
            _line(team_session_id={"id": "t"}),
            SerializationError,
            "team_session_id must be a str",
            id="text-field-not-text",
        ),
    ],
)
def test_a_value_that_cannot_be_stored_stops_the_import_before_anything_is_written(
    backend_store: Store, bad: str, error: type[Exception], message: str
) -> None:
    good = _lines(_memory_with("agent", 2))
    after = _lines(_memory_with("agent", 3))[2:]
    with pytest.raises(error, match=rf"^dump:3: .*{message}"):
        transfer.import_sessions(backend_store(), [*good, bad, *after], "dump")
    storage = backend_store()
    assert not storage.table_exists() or storage.get_all_session_ids() == []


def test_a_session_twice_in_one_file_is_refused_naming_both_lines(backend_store: Store) -> None:
    lines = [_line(version=1), "", _line(version=2).replace('"s"', '"other"'), _line(version=3)]
    with pytest.raises(SerializationError, match=r"^dump:4: session 's' is on line 1 too"):
        transfer.import_sessions(backend_store(), lines, "dump")
    storage = backend_store()
    assert not storage.table_exists() or storage.get_all_session_ids() == []


def test_an_export_line_sorts_the_fields_and_keeps_the_order_inside_them(
    backend_store: Store,
) -> None:
    source = InMemoryStorage()
    source.restore(
        AgentSession(
            session_id="o",
            memory={"runs": [{"role": "user", "content": "hi"}]},
            session_data={"z": 1, "a": {"y": 2, "b": 3}},
            created_at=1_700_000_000,
        )
    )
    [line] = _lines(source)
    fields = list(json.loads(line))
    assert fields == sorted(fields)
    assert '"memory":{"runs":[{"role":"user","content":"hi"}]}' in line
    assert '"session_data":{"z":1,"a":{"y":2,"b":3}}' in line

    transfer.import_sessions(backend_store(), [line])
    arrived = backend_store().read("o")
    assert arrived is not None
    assert arrived == source.read("o")
    if "key_order" in type(backend_store()).capabilities:
        assert list(arrived.memory["runs"][0]) == ["role", "content"]  # type: ignore[attr-defined]
        assert list(arrived.session_data) == ["z", "a"]  # type: ignore[attr-defined]
        assert _lines(backend_store()) == [line]


def test_an_import_stops_at_a_session_of_another_mode_rather_than_replace_it(
    tmp_path: Path,
) -> None:
    # A stored copy that cannot be read because it is another mode's session is no damaged
    # copy to write over: the import stops, naming it, and leaves it.
    JsonStorage(tmp_path / "team", mode="team").upsert(TeamSession(session_id="t", team_id="x"))
    JsonStorage(tmp_path / "agent").upsert(AgentSession(session_id="a"))
    (tmp_path / "team" / "t.json").replace(tmp_path / "agent" / "t.json")
    lines = [json.dumps({"session_id": sid}) for sid in ("a", "t")]
    with pytest.raises(CorruptSessionError, match=r"line:2: session 't' was not stored"):
        transfer.import_sessions(JsonStorage(tmp_path / "agent"), lines)
    stored = JsonStorage(tmp_path / "agent", mode="team").read("t")
    assert stored is not None
    assert stored.team_id == "x"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("bad", "key"),
    [
        ('{"session_id":"s","user_id":"alice","user_id":"bob"}', "user_id"),
        ('{"session_id":"s","session_data":{"n":1,"n":2}}', "n"),
        ('{"session_id":"s","memory":{"runs":[{"content":"a","content":"b"}]}}', "content"),
        ('{"session_id":"a","session_id":"s"}', "session_id"),
    ],
)
def test_a_line_with_a_key_twice_stops_the_import_naming_the_key(
    backend_store: Store, bad: str, key: str
) -> None:
    """A JSON object holding a key twice was read as its last value, silently: a line whose
    ``user_id`` said both alice and bob was stored as bob's session."""
    storage = backend_store()
    storage.create()
    storage.upsert(AgentSession(session_id="s", user_id="carol", session_data={"n": 0}))
    before = _lines(storage)
    good = _lines(_memory_with("agent", 2))
    with pytest.raises(SerializationError, match=rf"^dump:3: .*key {key!r} .*twice"):
        transfer.import_sessions(backend_store(), [*good, bad], "dump")
    assert _lines(backend_store()) == before


def test_a_report_given_is_filled_in_as_the_work_goes_on() -> None:
    """A caller cut short (the command line, on Ctrl-C) reads how far it got from it."""
    source = _memory_with("agent", 5)
    seen: list[int] = []
    report = transfer.Report(copied=99)
    destination = InMemoryStorage()
    got = transfer.copy_sessions(
        source,
        destination,
        batch_size=2,
        on_batch=lambda n: seen.append(report.copied),
        report=report,
    )
    assert got is report
    assert (report.total, report.copied, seen) == (5, 5, [2, 4, 5])
    again = transfer.Report()
    assert transfer.import_sessions(destination, _lines(source), report=again) is again
    assert (again.total, again.copied, again.unchanged) == (5, 0, 5)
