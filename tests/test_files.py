"""What is particular to the JSON and YAML backends: names on disk, the index, foreign files."""

from __future__ import annotations

import ast
import json
import os
import pwd
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from savegame import transfer
from savegame.errors import (
    BackendUnavailableError,
    ConflictError,
    CorruptSessionError,
    InvalidIdentifierError,
)
from savegame.storage.files import FileFormat, FileStorage, file_name
from savegame.storage.json import JsonStorage
from savegame.storage.session.agent import AgentSession
from savegame.storage.session.team import TeamSession
from savegame.storage.url import open_storage
from savegame.storage.yaml import YamlStorage
from savegame.testing.contract import ODD_IDS, wait_child
from tests.erasure import MARK, marked_files, snapshot
from tests.full_disk import FILE_SIZE_LIMIT, full_tmpfs, read_only
from tests.syscalls import renamed_to, synced, syscalls_of

FORMATS = [pytest.param(JsonStorage, id="json"), pytest.param(YamlStorage, id="yaml")]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("cls", FORMATS)
def test_odd_ids_never_leave_the_folder(tmp_path: Path, cls: type[FileStorage]) -> None:
    folder = tmp_path / "inner" / "store"
    storage = cls(folder)
    for sid in ODD_IDS:
        storage.upsert(AgentSession(session_id=sid, memory={"id": sid}))
    outside = _tree(tmp_path) - {"inner", "inner/store"}
    assert all(name.startswith("inner/store/") for name in outside), outside
    names = {p.name for p in folder.iterdir()} - {".savegame"}
    assert len(names) == len(ODD_IDS)
    ext = cls.format.extension
    assert names == {file_name(sid, ext) for sid in ODD_IDS}
    assert all("/" not in name and name not in (".", "..") for name in names)
    for sid in ODD_IDS:
        got = storage.read(sid)
        assert got is not None
        assert got.memory == {"id": sid}


def test_plain_ids_keep_the_original_file_name(tmp_path: Path) -> None:
    storage = JsonStorage(tmp_path)
    for sid in ["chat_session_123", "a.b-c_d", "UPPER9"]:
        storage.upsert(AgentSession(session_id=sid))
        assert (tmp_path / f"{sid}.json").is_file()
    assert file_name("../x", ".json").startswith("~")
    assert file_name("con", ".json").startswith("~")
    assert file_name(".hidden", ".json").startswith("~")
    assert file_name("x" * 129, ".json").startswith("~")


def test_json_files_are_readable_text(tmp_path: Path) -> None:
    storage = JsonStorage(tmp_path)
    storage.upsert(AgentSession(session_id="s", memory={"greeting": "grüß dich 🎲"}))
    text = (tmp_path / "s.json").read_text(encoding="utf-8")
    assert "grüß dich 🎲" in text
    assert text.startswith("{\n")
    assert json.loads(text)["memory"] == {"greeting": "grüß dich 🎲"}


def test_folder_written_by_the_original_opens(tmp_path: Path) -> None:
    for i in range(3):
        original = {
            "session_id": f"old{i}",
            "user_id": "jane",
            "agent_id": "bot",
            "memory": {"runs": [{"content": f"turn {i}"}]},
            "agent_data": {"model": "gpt-4o-mini"},
            "session_data": None,
            "extra_data": None,
            "team_session_id": None,
            "created_at": 100 + i,
            "updated_at": 100 + i,
        }
        (tmp_path / f"old{i}.json").write_text(json.dumps(original), encoding="utf-8")
    storage = JsonStorage(tmp_path)
    assert storage.get_all_session_ids(user_id="jane") == ["old2", "old1", "old0"]
    got = storage.read("old1")
    assert got is not None
    assert got.version == 1
    assert got.memory == {"runs": [{"content": "turn 1"}]}
    assert storage.upsert(got, expected_version=1).version == 2


@pytest.mark.parametrize("cls", FORMATS)
def test_files_changed_behind_its_back_are_noticed(tmp_path: Path, cls: type[FileStorage]) -> None:
    storage = cls(tmp_path)
    storage.upsert(AgentSession(session_id="a", user_id="u", created_at=1))
    other = cls(tmp_path / "elsewhere")
    other.upsert(AgentSession(session_id="b", user_id="u", created_at=2))
    ext = cls.format.extension
    os.replace(tmp_path / "elsewhere" / f"b{ext}", tmp_path / f"b{ext}")
    assert storage.get_all_session_ids(user_id="u") == ["b", "a"]
    (tmp_path / f"a{ext}").unlink()
    assert storage.get_all_session_ids(user_id="u") == ["b"]


@pytest.mark.parametrize("cls", FORMATS)
def test_a_damaged_file_never_breaks_a_listing(tmp_path: Path, cls: type[FileStorage]) -> None:
    storage = cls(tmp_path)
    storage.upsert(AgentSession(session_id="good", user_id="u"))
    ext = cls.format.extension
    (tmp_path / f"torn{ext}").write_bytes(b'{"session_id": "torn", "memory": {"ru')
    (tmp_path / f"list{ext}").write_bytes(b"[1, 2, 3]")
    assert storage.get_all_session_ids() == ["good"]
    assert [s.session_id for s in storage.get_all_sessions(user_id="u")] == ["good"]
    with pytest.raises(CorruptSessionError):
        storage.read("torn")
    with pytest.raises(CorruptSessionError):
        storage.read("list")
    storage.upsert(AgentSession(session_id="torn", user_id="u"))
    assert sorted(storage.get_all_session_ids(user_id="u")) == ["good", "torn"]


@pytest.mark.parametrize("cls", FORMATS)
@pytest.mark.parametrize("style", ["json", "yaml"])
def test_a_file_nested_thousands_of_levels_deep_is_a_damaged_file(
    tmp_path: Path, cls: type[FileStorage], style: str
) -> None:
    # Python's JSON parser recurses once a level and gives up with a RecursionError some
    # thousand levels down: that is a damaged file, not a failure of every listing.
    storage = cls(tmp_path)
    storage.upsert(AgentSession(session_id="good", user_id="u"))
    deep = "[" * 100_000 + "]" * 100_000
    if style == "json":
        text = f'{{"session_id": "deep", "user_id": "u", "memory": {{"x": {deep}}}}}'
    else:
        text = f"session_id: deep\nuser_id: u\nmemory:\n  x: {deep}\n"
    (tmp_path / f"deep{cls.format.extension}").write_text(text)
    for reader in (storage, cls(tmp_path)):
        assert reader.get_all_session_ids(user_id="u") == ["good"]
        assert [s.session_id for s in reader.get_all_sessions()] == ["good"]
        with pytest.raises(CorruptSessionError, match="deep"):
            reader.read("deep")
        [why] = reader.unreadable()
        assert f"deep{cls.format.extension}" in why
    storage.upsert(AgentSession(session_id="new", user_id="u"))
    storage.drop()
    # Like any file that holds no session it can read, drop() leaves it.
    assert sorted(os.listdir(tmp_path)) == [".savegame", f"deep{cls.format.extension}"]
    storage.upsert(AgentSession(session_id="deep", user_id="u"))
    assert storage.get_all_session_ids() == ["deep"]


@pytest.mark.parametrize(
    "odd",
    [
        {"user_id": {"name": "ann"}},
        {"agent_id": 7},
        {"created_at": 2**63},
        {"created_at": -5},
        {"expires_at": "2030-01-01"},
        {"version": "3"},
    ],
)
@pytest.mark.parametrize("cls", FORMATS)
def test_a_file_edited_to_hold_fields_of_the_wrong_kind_is_a_damaged_file(
    tmp_path: Path, cls: type[FileStorage], odd: dict[str, Any]
) -> None:
    # Fields the index keeps (ids, times, version) of another kind: the file is left out
    # of listings, reading it says what is wrong, and nothing else in the folder breaks.
    storage = cls(tmp_path)
    storage.upsert(AgentSession(session_id="good", user_id="u"))
    ext = cls.format.extension
    content = {"session_id": "odd", "memory": {"runs": []}, **odd}
    (tmp_path / f"odd{ext}").write_bytes(cls.format.dump(content))
    for reader in (storage, cls(tmp_path)):
        assert reader.get_all_session_ids() == ["good"]
        with pytest.raises(CorruptSessionError, match=f"{next(iter(odd))} must be"):
            reader.read("odd")
    storage.upsert(AgentSession(session_id="odd", user_id="u"))
    storage.delete_session("good")
    assert cls(tmp_path).get_all_session_ids(user_id="u") == ["odd"]


def test_index_is_rebuilt_when_missing_or_left_pending(tmp_path: Path) -> None:
    storage = JsonStorage(tmp_path)
    for i in range(5):
        storage.upsert(AgentSession(session_id=f"s{i}", user_id="u", created_at=i))
    storage.close()
    index = next((tmp_path / ".savegame").glob("index-json.sqlite3"))
    index.unlink()
    for extra in (tmp_path / ".savegame").glob("index-json.sqlite3-*"):
        extra.unlink()
    fresh = JsonStorage(tmp_path)
    assert fresh.get_all_session_ids(user_id="u") == ["s4", "s3", "s2", "s1", "s0"]
    # A writer killed between marking its write pending and finishing it leaves the mark
    # and possibly a file the index does not know yet.
    conn = sqlite3.connect(index)
    conn.execute("INSERT INTO pending VALUES ('s9')")
    conn.execute("DELETE FROM sessions WHERE session_id = 's2'")
    conn.commit()
    conn.close()
    (tmp_path / "s9.json").write_text(
        json.dumps({"session_id": "s9", "user_id": "u", "created_at": 9}), encoding="utf-8"
    )
    assert fresh.get_all_session_ids(user_id="u") == ["s9", "s4", "s3", "s2", "s1", "s0"]


class _Counting(JsonStorage):
    loads = 0

    @staticmethod
    def _load_counted(raw: bytes) -> Any:
        _Counting.loads += 1
        return json.loads(raw)

    format = FileFormat("json", ".json", JsonStorage.format.dump, _load_counted)


def test_listing_one_user_opens_only_that_users_files(tmp_path: Path) -> None:
    storage = _Counting(tmp_path)
    for i in range(200):
        storage.upsert(AgentSession(session_id=f"s{i}", user_id=f"user{i % 20}", created_at=i))
    _Counting.loads = 0
    assert storage.get_all_session_ids(user_id="user7") == [f"s{i}" for i in range(187, 6, -20)]
    assert _Counting.loads == 0
    sessions = storage.get_recent_sessions(user_id="user7", limit=3)
    assert [s.session_id for s in sessions] == ["s187", "s167", "s147"]
    assert _Counting.loads == 3


def test_drop_removes_only_its_own_files(tmp_path: Path) -> None:
    js, ya = JsonStorage(tmp_path), YamlStorage(tmp_path)
    js.upsert(AgentSession(session_id="j"))
    ya.upsert(AgentSession(session_id="y"))
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    js.drop()
    assert js.get_all_session_ids() == []
    assert ya.get_all_session_ids() == ["y"]
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert not (tmp_path / "j.json").exists()


@pytest.mark.parametrize("cls", FORMATS)
def test_drop_leaves_files_of_its_format_that_are_no_session_of_its_own(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    # A folder shared with other files (a project's root, named by "json:///." or a
    # dir_path built from an empty setting): drop removes the sessions' files, damaged ones
    # included, and leaves another program's files, files cut short, and copies of a
    # session under another name, which the storage never read as its sessions.
    ext = cls.format.extension
    storage = cls(tmp_path)
    storage.upsert(AgentSession(session_id="mine"))
    foreign = {
        f"package{ext}": '{"name": "app", "version": "1.0"}\n',
        f"list{ext}": "[1, 2]\n",
        f"cut{ext}": '{"session_id": "cut", "memo',
        f"backup{ext}": '{"session_id": "mine", "memory": null}\n',
    }
    for name, text in foreign.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / f"damaged{ext}").write_text(
        '{"session_id": "damaged", "created_at": "yesterday"}\n', encoding="utf-8"
    )
    storage.drop()
    left = {p.name: p.read_text(encoding="utf-8") for p in tmp_path.iterdir() if p.is_file()}
    assert left == foreign
    assert storage.get_all_session_ids() == []


def test_yaml_keeps_awkward_text_and_deep_values_readable(tmp_path: Path) -> None:
    storage = YamlStorage(tmp_path)
    storage.upsert(AgentSession(session_id="plain", memory={"text": "hello"}))
    assert "text: hello" in (tmp_path / "plain.yaml").read_text(encoding="utf-8")
    odd = {"lone": "a\udc80b", "mark": "\ufdd0x", "nul": "a\x00b"}
    storage.upsert(AgentSession(session_id="odd", memory=odd))
    got = storage.read("odd")
    assert got is not None
    assert got.memory == odd


def test_yaml_files_of_sessions_nested_deeper_than_64_levels_are_written_as_json(
    tmp_path: Path,
) -> None:
    storage = YamlStorage(tmp_path)
    for depth in (64, 65):
        value: Any = "leaf"
        for _ in range(depth - 2):  # memory and its "d" are two levels
            value = [value]
        storage.upsert(AgentSession(session_id=f"d{depth}", memory={"d": value}))
        text = (tmp_path / f"d{depth}.yaml").read_text(encoding="utf-8")
        assert text.startswith("{") is (depth > 64), text[:40]
        got = YamlStorage(tmp_path).read(f"d{depth}")
        assert got is not None
        assert got.memory == {"d": value}


def _damage_header(index: Path) -> None:
    for path in index.parent.glob(index.name + "-*"):
        path.unlink()
    index.write_bytes(b"not a database" * 100)


def _cut_short(index: Path) -> None:
    data = index.read_bytes()
    index.write_bytes(data[: len(data) // 3])


def _zero_pages(index: Path) -> None:
    data = bytearray(index.read_bytes())
    data[4096:] = bytes(len(data) - 4096)  # every page but the first, the schema's
    index.write_bytes(bytes(data))


def _garble_schema(index: Path) -> None:
    # Bytes in the schema's text that are no UTF-8: SQLite's error message quotes them, and
    # Python's sqlite3 raised UnicodeDecodeError decoding it.
    data = bytearray(index.read_bytes())
    at = data.index(b"CREATE TABLE sessions")
    data[at + 7 : at + 9] = b"\xc7\xff"
    index.write_bytes(bytes(data))


def _overwrite_a_leaf_of_sessions(index: Path) -> None:
    # A page of rows, met by a listing that brings the index up to date (the folder's time
    # changed), not by one that finds it fresh.
    with sqlite3.connect(index) as conn:
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'sessions'"
        ).fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    data = bytearray(index.read_bytes())
    at = (root - 1) * size
    assert data[at] == 5  # an interior page: its first cell points to a leaf
    cell = at + int.from_bytes(data[at + 12 : at + 14], "big")
    leaf = int.from_bytes(data[cell : cell + 4], "big")
    data[(leaf - 1) * size : leaf * size] = b"\xff" * size
    index.write_bytes(bytes(data))
    later = index.parent.parent.stat().st_mtime_ns + 10**9
    os.utime(index.parent.parent, ns=(later, later))


@pytest.mark.parametrize(
    "damage",
    [_damage_header, _cut_short, _zero_pages, _garble_schema, _overwrite_a_leaf_of_sessions],
    ids=lambda f: f.__name__,
)
@pytest.mark.parametrize("cls", FORMATS)
def test_a_damaged_index_is_made_anew_from_the_files(
    tmp_path: Path, cls: type[FileStorage], damage: Callable[[Path], None]
) -> None:
    # The index is derived from the files: damaged, it is removed and made again by the
    # call that finds it, which answers as if nothing had happened.
    folder = tmp_path / "s"
    running = cls(folder)
    for i in range(300):
        running.upsert(
            AgentSession(session_id=f"s{i}", user_id=f"u{i % 3}", memory={"x": "y" * 50})
        )
    index = running._index_path
    with sqlite3.connect(index) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    damage(index)
    expected = [f"s{i}" for i in range(300) if i % 3 == 1]
    fresh = cls(folder)
    assert sorted(fresh.get_all_session_ids(user_id="u1")) == sorted(expected)
    stored = fresh.upsert(AgentSession(session_id="s1", user_id="u1", memory={"x": "new"}))
    assert stored.version == 2  # its header read from its file, not from the damaged index
    fresh.close()
    damage(index)
    # A storage whose connection was open to the index before it was damaged.
    new = running.upsert(AgentSession(session_id="new", user_id="u1"))
    assert new.version == 1
    assert sorted(running.get_all_session_ids(user_id="u1")) == sorted([*expected, "new"])
    assert running.delete_user("u2") == 100
    assert cls(folder).get_all_session_ids(user_id="u2") == []
    with sqlite3.connect(index) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    running.close()


@pytest.mark.parametrize("cls", FORMATS)
def test_a_damaged_index_in_a_folder_that_cannot_be_written_to_is_listed_from_the_files(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    folder = tmp_path / "s"
    writer = cls(folder)
    writer.upsert(AgentSession(session_id="a", user_id="u"))
    # Closed: SQLite keeps open, until then, the files of the index this process opens.
    writer.close()
    _damage_header(writer._index_path)
    with read_only(folder) as view:
        storage = cls(view)
        assert storage.get_all_session_ids(user_id="u") == ["a"]
        with pytest.raises(BackendUnavailableError):
            storage.upsert(AgentSession(session_id="b", user_id="u"))
        storage.close()
    assert (
        (folder / ".savegame" / cls(folder)._index_path.name)
        .read_bytes()
        .startswith(b"not a database")
    )


def test_opening_the_index_waits_while_another_process_writes_it(tmp_path: Path) -> None:
    # Two processes opening one folder for the first time: the index starts with a
    # rollback journal, and switching it to WAL while another connection writes is
    # refused at once ("database is locked"), without SQLite's busy timeout.
    writer = JsonStorage(tmp_path / "s")
    writer.upsert(AgentSession(session_id="a", user_id="u"))
    index = writer._index_path
    writer.close()
    with sqlite3.connect(index) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
    other = sqlite3.connect(index, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process writing to it, say
    released = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    released.start()
    try:
        assert JsonStorage(tmp_path / "s").get_all_session_ids() == ["a"]
    finally:
        released.join()
        other.close()


def test_a_damaged_index_raises_savegames_error_and_rolls_back(tmp_path: Path) -> None:
    # The index is derived data in a SQLite database beside the files: its failures come
    # as savegame's errors, and leave no transaction open on the storage's connection.
    storage = JsonStorage(tmp_path / "s")
    storage.upsert(AgentSession(session_id="a", user_id="u"))
    with sqlite3.connect(storage._index_path) as side:
        side.execute("DROP TABLE sessions")
    with pytest.raises(BackendUnavailableError, match="index of the folder"):
        storage.get_all_session_ids()
    with pytest.raises(BackendUnavailableError, match="index of the folder"):
        storage.upsert(AgentSession(session_id="a", user_id="u"))  # its header is in the index
    assert not storage._index().in_transaction
    # A write whose file is in place returns, though the index cannot record it: its
    # pending mark makes the index read the file again.
    storage.upsert(AgentSession(session_id="b", user_id="u"))
    assert not storage._index().in_transaction
    assert storage.read("a") is not None  # reads need only the files
    storage.close()
    fresh = JsonStorage(tmp_path / "s")  # makes the index's tables again
    fresh.rebuild_index()
    assert sorted(fresh.get_all_session_ids(user_id="u")) == ["a", "b"]


@pytest.mark.parametrize("cls", FORMATS)
def test_times_an_earlier_savegame_stored_as_floats_are_read_as_whole_seconds(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    storage = cls(tmp_path)
    storage.upsert(AgentSession(session_id="s", user_id="u"))
    path = tmp_path / f"s{cls.format.extension}"
    content = cls.format.load(path.read_bytes())
    content.update(created_at=1796514380.75, updated_at=1796514381.25)
    path.write_bytes(cls.format.dump(content))
    readers = (storage, cls(tmp_path))
    for reader in readers:
        [got] = reader.get_all_sessions(user_id="u")
        assert (got.created_at, got.updated_at) == (1796514380, 1796514381)
    got.session_data = {"saved": "again"}
    assert readers[1].upsert(got).created_at == 1796514380


@pytest.mark.parametrize("cls", FORMATS)
def test_a_folder_removed_and_made_again_under_a_running_storage_lists_what_is_there(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    # The storage's connection to the index outlived the index file: it went on writing
    # rows into a file no one else sees, and listed sessions whose files were gone.
    import shutil

    folder = tmp_path / "s"
    storage = cls(folder)
    storage.upsert(AgentSession(session_id="gone", user_id="u"))
    shutil.rmtree(folder)
    storage.upsert(AgentSession(session_id="new", user_id="u"))
    assert storage.read("gone") is None
    assert storage.get_all_session_ids() == ["new"]
    assert storage.get_all_session_ids(user_id="u") == ["new"]
    assert cls(folder).get_all_session_ids() == ["new"]


def _written(cls: type[FileStorage], tmp_path: Path, sessions: list[AgentSession]) -> Path:
    """The folder ``sessions`` in ``tmp_path``, holding ``sessions`` written by ``cls``."""
    folder = tmp_path / "sessions"
    writer = cls(folder)
    for session in sessions:
        writer.upsert(session)
    writer.close()
    return folder


_WRITES: dict[str, Callable[[FileStorage], object]] = {
    "upsert": lambda s: s.upsert(AgentSession(session_id="new")),
    "update": lambda s: s.update("s0", lambda session: session),
    "delete_session": lambda s: s.delete_session("s0"),
    "delete_user": lambda s: s.delete_user("u0"),
    "drop": lambda s: s.drop(),
    "upgrade_schema": lambda s: s.upgrade_schema(),
    "rebuild_index": lambda s: s.rebuild_index(),
    "create": lambda s: s.create(),
    "copy": lambda s: transfer.copy_sessions(JsonStorage(s.dir_path.parent / "other"), s),
}


@pytest.mark.parametrize("cls", FORMATS)
@pytest.mark.parametrize("write", list(_WRITES))
def test_a_write_to_a_folder_that_cannot_be_written_to_says_so(
    tmp_path: Path, cls: type[FileStorage], write: str
) -> None:
    # The system's own words named neither the folder nor the cause: "unable to open
    # database file" of the index, "Read-only file system: '.../lock'" of the lock.
    folder = _written(
        cls, tmp_path, [AgentSession(session_id=f"s{i}", user_id=f"u{i}") for i in range(2)]
    )
    JsonStorage(tmp_path / "other").upsert(AgentSession(session_id="x"))
    with read_only(folder) as view:
        storage = cls(view)
        with pytest.raises(BackendUnavailableError) as raised:
            _WRITES[write](storage)
        assert f"the folder {view} cannot be written to (" in str(raised.value)
        assert "can be read and listed" in str(raised.value)
        assert storage.get_all_session_ids(user_id="u0") == ["s0"]
        storage.close()
    assert sorted(cls(folder).get_all_session_ids()) == ["s0", "s1"]


@pytest.mark.parametrize("cls", FORMATS)
@pytest.mark.parametrize("made_by", ["savegame", "the original"])
def test_a_folder_that_cannot_be_written_to_is_read_and_listed(
    tmp_path: Path, cls: type[FileStorage], made_by: str
) -> None:
    # A backup mounted read-only: no lock can be taken, nor index opened or made; a
    # writer's temporary file left behind stays, as nothing can be removed.
    folder = _written(
        cls,
        tmp_path,
        [
            AgentSession(session_id=f"s{i}", user_id=f"u{i % 2}", created_at=10 + i)
            for i in range(3)
        ],
    )
    if made_by == "the original":
        for entry in (folder / ".savegame").iterdir():
            entry.unlink()
        (folder / ".savegame").rmdir()
    (folder / ".tmp-left").write_text("cut short", encoding="utf-8")
    before = _tree(folder)
    with read_only(folder):
        storage = cls(folder)
        got = storage.read("s1")
        assert got is not None
        assert got.user_id == "u1"
        assert storage.get_all_session_ids(user_id="u0") == ["s2", "s0"]
        assert [s.session_id for s in storage.get_recent_sessions(limit=None)] == ["s2", "s1", "s0"]
        assert storage.unreadable() == []
        for write in (
            lambda: storage.upsert(AgentSession(session_id="new")),
            lambda: storage.delete_session("s0"),
        ):
            with pytest.raises(BackendUnavailableError, match=str(folder)):
                write()
        storage.close()
    assert _tree(folder) == before


@pytest.mark.parametrize("cls", FORMATS)
@pytest.mark.parametrize("bad", [-1, -0.5, float("nan"), float("inf"), True, "30", None, 10**9])
def test_a_lock_timeout_that_is_no_wait_of_so_many_seconds_is_refused_when_made(
    tmp_path: Path, cls: type[FileStorage], bad: object
) -> None:
    # A negative or infinite one waited for ever on a held lock, where a lock held too long
    # raises BackendUnavailableError; NaN raised ValueError at the first write, a bool or a
    # string filelock's TypeError: none of them a StorageError.
    with pytest.raises(InvalidIdentifierError, match="lock_timeout must be a number of seconds"):
        cls(tmp_path / "a", lock_timeout=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "a").exists()
    for good in (0, 0.5, 2):
        cls(tmp_path / "a", lock_timeout=good).upsert(AgentSession(session_id="s"))


_HOLD_THE_LOCK = """
import sys, time
from savegame.storage.url import open_storage

def hold(session):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))

open_storage(sys.argv[1], mode="agent").update("s", hold)
"""


@pytest.mark.parametrize("cls", FORMATS)
def test_a_urls_lock_timeout_is_how_long_a_write_waits_for_the_folders_lock(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    folder = tmp_path / "s"
    url = f"{cls.format.name}:///{folder}"
    for bad in ("abc", "-1", "nan"):
        with pytest.raises(InvalidIdentifierError, match=f"lock_timeout='{bad}' in storage URL"):
            open_storage(f"{url}?lock_timeout={bad}", mode="agent")
    with pytest.raises(InvalidIdentifierError, match="lock_timeout must be a number of seconds"):
        open_storage(f"{url}?lock_timeout=1e10", mode="agent")
    storage = open_storage(f"{url}?lock_timeout=0.2", mode="agent")
    storage.upsert(AgentSession(session_id="s"))
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_THE_LOCK, url, "30"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BackendUnavailableError, match="lock"):
            storage.upsert(AgentSession(session_id="t"))
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert storage.read("t") is None
    storage.upsert(AgentSession(session_id="t"))


@pytest.mark.parametrize("cls", FORMATS)
def test_a_write_of_another_storage_inside_updates_fn_waits_for_the_folders_lock(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    # update holds the folder's lock from its read to its write, as the README says: a
    # write through another storage of the folder, in fn, waits for it, then gives up.
    storage, other = cls(tmp_path / "s"), cls(tmp_path / "s", lock_timeout=0.1)
    storage.upsert(AgentSession(session_id="s"))
    refused: list[BackendUnavailableError] = []

    def bump(session: Any) -> Any:
        with pytest.raises(BackendUnavailableError, match="stayed locked") as raised:
            other.upsert(AgentSession(session_id="t"))
        refused.append(raised.value)
        return session

    assert storage.update("s", bump).version == 2
    assert len(refused) == 1
    assert other.read("t") is None
    other.upsert(AgentSession(session_id="t"))


@pytest.mark.parametrize("cls", FORMATS)
def test_a_write_that_waited_for_another_process_expires_counting_from_its_write(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    # Another process holds the folder's lock (an update whose fn takes its time) for longer
    # than the sessions live: the write that waits for it is made when the lock comes free,
    # and its session lives from then, not from when the call began.
    folder = tmp_path / "s"
    storage = cls(folder, expire=2)
    storage.create()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_THE_LOCK, f"{cls.format.name}:///{folder}", "2.5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        storage.upsert(AgentSession(session_id="s", user_id="u"))
    finally:
        assert holder.wait(timeout=60) == 0
    got = storage.read("s")
    assert got is not None
    assert got.version == 1
    assert storage.get_all_session_ids(user_id="u") == ["s"]
    assert storage.purge_expired() == 0


@pytest.mark.parametrize("cls", FORMATS)
def test_failures_of_the_folder_itself_are_savegames_errors(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    ext = cls.format.extension
    storage = cls(tmp_path / "a", lock_timeout=2)
    storage.upsert(AgentSession(session_id="s1"))
    # A session's file that became a folder.
    (tmp_path / "a" / f"s1{ext}").unlink()
    (tmp_path / "a" / f"s1{ext}").mkdir()
    with pytest.raises(BackendUnavailableError):
        storage.delete_session("s1")
    # The lock file that became a folder.
    (tmp_path / "a" / ".savegame" / "lock").unlink()
    (tmp_path / "a" / ".savegame" / "lock").mkdir()
    with pytest.raises(BackendUnavailableError, match="cannot lock"):
        storage.upsert(AgentSession(session_id="s2"))
    # A file where the folder of the lock and index goes.
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / ".savegame").write_text("not a folder", encoding="utf-8")
    other = cls(tmp_path / "b")
    for call in (
        lambda: other.upsert(AgentSession(session_id="s1")),
        other.get_all_session_ids,
        other.create,
    ):
        with pytest.raises(BackendUnavailableError):
            call()


@pytest.mark.parametrize("cls", FORMATS)
@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_a_folder_path_that_is_a_file_is_refused_by_every_call_not_taken_for_an_empty_store(
    tmp_path: Path, cls: type[FileStorage], where: str
) -> None:
    # A mistyped path, or a folder replaced by a file: "nothing stored" would be wrong, and
    # a backup or an erasure run on it would report success having seen nothing.
    (tmp_path / "notes").write_text("a file", encoding="utf-8")
    folder = tmp_path / "notes" if where == "a file" else tmp_path / "notes" / "sessions"
    storage = cls(folder)
    calls: list[Callable[[], object]] = [
        storage.table_exists,
        storage.get_all_session_ids,
        storage.get_all_sessions,
        storage.get_recent_sessions,
        storage.unreadable,
        storage.purge_expired,
        storage.drop,
        storage.create,
        lambda: storage.read("s1"),
        lambda: storage.delete_session("s1"),
        lambda: storage.delete_user("u"),
        lambda: storage.upsert(AgentSession(session_id="s1")),
    ]
    for call in calls:
        with pytest.raises(BackendUnavailableError, match="notes"):
            call()
    assert (tmp_path / "notes").read_text(encoding="utf-8") == "a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


# The checks of a full disk, run in a process of their own: ``full()`` leaves no room for
# any byte of data, ``free()`` makes room again. Sessions s0..s5 are stored (users u0, u1),
# "gone" is expired, and the index is stale (a pending mark, as a writer killed leaves it).
_FULL_DISK_CHECKS = """
import json, os, sqlite3, sys
from savegame.errors import BackendUnavailableError
from savegame.storage.json import JsonStorage
from savegame.storage.session.agent import AgentSession
from savegame.storage.yaml import YamlStorage

cls = {"json": JsonStorage, "yaml": YamlStorage}[sys.argv[1]]
folder = sys.argv[2]
stored = ["s5", "s4", "s3", "s2", "s1", "s0"]
full()
# No process has the index open: SQLite cannot make the files it keeps beside it.
assert cls(folder).get_all_session_ids() == stored
free()
early = cls(folder)
early.create()  # its connection to the index is open before the disk fills
full()
late = cls(folder)  # opens the index on a full disk
for storage in (early, late):
    for session in (AgentSession(session_id="new"), AgentSession(session_id="s1", created_at=1)):
        try:
            storage.upsert(session)
        except BackendUnavailableError:
            pass
        else:
            raise AssertionError("a write on a full disk returned")
    assert storage.get_all_session_ids() == stored
    assert storage.get_all_session_ids(user_id="u1") == ["s5", "s3", "s1"]
    assert [s.session_id for s in storage.get_recent_sessions(user_id="u0")] == ["s4", "s2"]
    assert storage.read("s3").session_data == {"i": 3}
assert not [name for name in os.listdir(folder) if name.startswith(".tmp-")]
assert late.delete_session("s0") and not early.delete_session("s0")
assert early.get_all_session_ids() == late.get_all_session_ids() == stored[:-1]
assert early.purge_expired() == 1
assert not os.path.exists(os.path.join(folder, "gone" + cls.format.extension))
assert late.delete_user("u1") == 3
assert early.get_all_session_ids() == cls(folder).get_all_session_ids() == ["s4", "s2"]
assert early.read("s1") is None and early.read("s4").session_data == {"i": 4}
free()
early.upsert(AgentSession(session_id="s6", user_id="u0", created_at=6))
assert cls(folder).get_all_session_ids(user_id="u0") == ["s6", "s4", "s2"]
index = sqlite3.connect(early._index_path)
assert sorted(r[0] for r in index.execute("SELECT session_id FROM sessions")) == ["s2", "s4", "s6"]
assert index.execute("SELECT * FROM pending").fetchall() == []
full()
early.drop()
assert early.get_all_session_ids() == cls(folder).get_all_session_ids() == []
free()
assert cls(folder).get_all_session_ids() == []
print("checked")
"""


def _stored_before_the_disk_fills(folder: Path, cls: type[FileStorage]) -> None:
    storage = cls(folder)
    for i in range(6):
        session = AgentSession(
            session_id=f"s{i}", user_id=f"u{i % 2}", created_at=i, session_data={"i": i}
        )
        storage.upsert(session)
    expired = {"session_id": "gone", "user_id": "u0", "created_at": 9, "expires_at": 10}
    (folder / f"gone{cls.format.extension}").write_bytes(cls.format.dump(expired))
    storage.get_all_session_ids()  # the index knows "gone"
    index = sqlite3.connect(storage._index_path, isolation_level=None)
    index.execute("INSERT INTO pending VALUES ('s3')")
    index.close()
    storage.close()


def _run_checks(prologue: str, cls: type[FileStorage], folder: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", prologue + _FULL_DISK_CHECKS, cls.format.name, str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip() == "checked", done.stdout + done.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_FSIZE")
@pytest.mark.parametrize("cls", FORMATS)
def test_a_full_disk_leaves_stored_sessions_listable_and_removable(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    # A file-size limit of one byte fails every write of data past the first byte (EFBIG
    # where a full disk gives ENOSPC): the session files' and the index's alike.
    _stored_before_the_disk_fills(tmp_path / "s", cls)
    _run_checks(FILE_SIZE_LIMIT, cls, tmp_path / "s")


@pytest.mark.parametrize("cls", FORMATS)
def test_a_full_tmpfs_leaves_stored_sessions_listable_and_removable(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    # The same on a file system filled to its last byte; needs the right to mount one.
    with full_tmpfs(tmp_path) as (disk, prologue):
        _stored_before_the_disk_fills(disk / "s", cls)
        _run_checks(prologue, cls, disk / "s")


def test_a_removal_the_index_cannot_record_shows_in_the_folders_time(tmp_path: Path) -> None:
    # A file removed within the tick of the clock that stamped the index leaves the folder's
    # time as the index recorded it: the index would be trusted, and list the session.
    storage = JsonStorage(tmp_path)
    storage.upsert(AgentSession(session_id="a", created_at=1))
    storage.upsert(AgentSession(session_id="b", created_at=2))
    assert storage.get_all_session_ids() == ["b", "a"]  # the index records the folder
    before = os.stat(tmp_path)
    (tmp_path / "a.json").unlink()
    os.utime(tmp_path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert storage.get_all_session_ids() == ["b", "a"]
    storage._show_change(before.st_mtime_ns)
    assert os.stat(tmp_path).st_mtime_ns != before.st_mtime_ns
    assert storage.get_all_session_ids() == JsonStorage(tmp_path).get_all_session_ids() == ["b"]


# A removal the index could not record (a full disk) is shown by the folder's time alone: a
# later write or removal that records the folder's time without reading it again would hide it.
_REMOVE_ON_A_FULL_DISK = """
import resource, signal, sys
from savegame.storage.json import JsonStorage
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))
storage = JsonStorage(sys.argv[1])
if sys.argv[2] == "drop":
    storage.drop()
else:
    assert storage.delete_user("u") == 2
print("removed")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_FSIZE")
@pytest.mark.parametrize("removal", ["delete_user", "drop"])
@pytest.mark.parametrize("then", ["upsert", "delete_session"])
def test_sessions_removed_on_a_full_disk_are_never_listed_again(
    tmp_path: Path, removal: str, then: str
) -> None:
    storage = JsonStorage(tmp_path)
    for i, user in enumerate(["u", "u", "v"]):
        storage.upsert(AgentSession(session_id=f"s{i}", user_id=user, created_at=i))
    storage.close()
    done = subprocess.run(
        [sys.executable, "-c", _REMOVE_ON_A_FULL_DISK, str(tmp_path), removal],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip() == "removed", done.stdout + done.stderr
    # Room again: another process writes or removes a session before any process lists.
    other = JsonStorage(tmp_path)
    if then == "upsert":
        other.upsert(AgentSession(session_id="new", user_id="w", created_at=9))
    else:
        other.delete_session("s2")
    left = sorted(p.stem for p in tmp_path.glob("*.json"))
    assert sorted(JsonStorage(tmp_path).get_all_session_ids()) == left
    assert JsonStorage(tmp_path).get_all_session_ids(user_id="u") == []


def test_a_write_never_takes_its_header_from_a_row_marked_pending(tmp_path: Path) -> None:
    storage = JsonStorage(tmp_path)
    storage.upsert(AgentSession(session_id="a", session_data={"n": 0}))
    conn = storage._index()
    stale = conn.execute("SELECT * FROM sessions").fetchone()
    storage.upsert(AgentSession(session_id="a", session_data={"n": 1}))  # version 2
    # What a write whose index could not be written after its rename leaves, on a file
    # system whose clock counts in seconds: the old row, its mark, a file of the same time
    # and size as the old one.
    path = tmp_path / "a.json"
    assert path.stat().st_size == stale[8]
    os.utime(path, ns=(stale[7], stale[7]))
    conn.execute("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", stale)
    conn.execute("INSERT INTO pending VALUES ('a')")
    with pytest.raises(ConflictError):
        storage.upsert(AgentSession(session_id="a"), expected_version=1)
    assert storage.upsert(AgentSession(session_id="a"), expected_version=2).version == 3


def test_the_first_write_in_a_folder_of_the_original_keeps_its_sessions_listed(
    tmp_path: Path,
) -> None:
    # No index yet: the one the write makes must not record the folder as indexed.
    for i in range(2):
        session = {"session_id": f"old{i}", "user_id": "u", "created_at": i, "memory": {}}
        (tmp_path / f"old{i}.json").write_text(json.dumps(session))
    JsonStorage(tmp_path).upsert(AgentSession(session_id="new", user_id="u", created_at=9))
    assert JsonStorage(tmp_path).get_all_session_ids() == ["new", "old1", "old0"]


def _write_originals(tmp_path: Path, cls: type[FileStorage], ids: list[str]) -> None:
    """Sessions as the original wrote them: each in ``<session_id>.json`` (``.yaml``)."""
    for i, session_id in enumerate(ids):
        record = {"session_id": session_id, "user_id": "u", "created_at": i, "memory": {}}
        ext = cls.format.extension
        (tmp_path / f"{session_id}{ext}").write_bytes(cls.format.dump(record))


ORIGINALS = ["my chat", "a@b.com", "chat:1", "x" * 200, "plain"]
"""Session ids the original named files after; all but the last savegame names otherwise."""


@pytest.mark.parametrize("cls", FORMATS)
def test_a_folder_of_the_original_is_read_listed_and_written_whatever_its_ids(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    # The original named every file <session_id>.json; savegame looked for the ids it names
    # otherwise under hashed names only: they were neither read nor listed (an agent
    # resuming one started afresh), and a save left the original's file beside its own.
    _write_originals(tmp_path, cls, ORIGINALS)
    ext = cls.format.extension
    storage = cls(tmp_path)
    assert storage.get_all_session_ids(user_id="u") == list(reversed(ORIGINALS))
    assert storage.unreadable() == []
    for i, session_id in enumerate(ORIGINALS):
        read = storage.read(session_id)
        assert read is not None
        assert (read.session_id, read.created_at) == (session_id, i)

    saved = storage.upsert(AgentSession(session_id="my chat", user_id="u", created_at=99))
    assert (saved.created_at, saved.version) == (0, 2)
    assert not (tmp_path / f"my chat{ext}").exists()
    assert storage.delete_session("a@b.com")
    assert not (tmp_path / f"a@b.com{ext}").exists()
    assert storage.read("a@b.com") is None
    again = cls(tmp_path)
    assert again.get_all_session_ids() == ["plain", "x" * 200, "chat:1", "my chat"]
    assert again.unreadable() == []
    again.drop()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".savegame"]
    # Without an index to tell, too.
    _write_originals(tmp_path, cls, ORIGINALS)
    shutil.rmtree(tmp_path / ".savegame")
    cls(tmp_path).drop()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".savegame"]
    # The original's name of an id holding a separator is a file elsewhere: never read.
    inside = tmp_path / "in"
    (inside / "sub").mkdir(parents=True)
    (tmp_path / f"x{ext}").write_bytes(cls.format.dump({"session_id": "../x", "memory": {}}))
    (inside / f"sub/y{ext}").write_bytes(cls.format.dump({"session_id": "sub/y", "memory": {}}))
    assert cls(inside).read("../x") is None
    assert cls(inside).read("sub/y") is None
    assert cls(inside).get_all_session_ids() == []


@pytest.mark.parametrize("cls", FORMATS)
def test_sessions_the_original_kept_in_hidden_files_are_read_and_listed(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    # The original listed every <session_id>.json, ".x.json" of session ".x" too: savegame
    # left such files out of listings (and so of every export and copy, without a word)
    # until upgrade_schema(), and never read one named like ".tmp-x.json".
    ext = cls.format.extension
    hidden = [".x", ".tmp-y", "..z"]
    _write_originals(tmp_path, cls, ["plain", *hidden])
    (tmp_path / f".eslintrc{ext}").write_bytes(b'{"root": true}')
    (tmp_path / f".notes{ext}").write_bytes(b"{cut")
    storage = cls(tmp_path)
    assert storage.get_all_session_ids(user_id="u") == ["..z", ".tmp-y", ".x", "plain"]
    for session_id in hidden:
        assert storage.read(session_id) is not None
    # Other programs' hidden files are theirs: not named as damaged, and dropped by none.
    assert storage.unreadable() == []
    storage.upsert(AgentSession(session_id=".tmp-y", user_id="u", created_at=50))
    assert not (tmp_path / f".tmp-y{ext}").exists()
    assert cls(tmp_path).read(".tmp-y").created_at == 2  # type: ignore[union-attr]
    storage.drop()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".eslintrc" + ext,
        ".notes" + ext,
        ".savegame",
    ]


@pytest.mark.parametrize("cls", FORMATS)
def test_upgrade_schema_renames_the_files_the_original_named_after_any_id(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    ext = cls.format.extension
    ids = [*ORIGINALS, ".hidden"]
    _write_originals(tmp_path, cls, ids)
    storage = cls(tmp_path)
    storage.upsert(AgentSession(session_id="other", user_id="u"))
    # savegame's file of "chat:1" beside the original's (made by an earlier savegame): kept.
    (tmp_path / f"chat:1{ext}").rename(tmp_path / "keep")
    storage.upsert(AgentSession(session_id="chat:1", user_id="u", created_at=50))
    (tmp_path / "keep").rename(tmp_path / f"chat:1{ext}")
    other_mode = {"session_id": "a team", "team_id": "t", "team_data": {}, "memory": {}}
    (tmp_path / f"a team{ext}").write_bytes(cls.format.dump(other_mode))
    (tmp_path / f"not it{ext}").write_bytes(cls.format.dump({"session_id": "another"}))

    storage.upgrade_schema()
    storage.upgrade_schema()
    for session_id in ("my chat", "a@b.com", "x" * 200, ".hidden"):
        assert not (tmp_path / f"{session_id}{ext}").exists()
        assert (tmp_path / file_name(session_id, ext)).exists()
    assert cls(tmp_path).get_all_session_ids() == [
        "other",
        "chat:1",
        ".hidden",
        "plain",
        "x" * 200,
        "a@b.com",
        "my chat",
    ]
    assert cls(tmp_path).read("chat:1").created_at == 50  # type: ignore[union-attr]
    assert (tmp_path / f"chat:1{ext}").exists()
    assert any("chat:1" in line for line in cls(tmp_path).unreadable())
    assert (tmp_path / f"a team{ext}").exists()
    assert (tmp_path / f"not it{ext}").exists()


def _refuses_mode(error: CorruptSessionError, kept: str, refused: str) -> bool:
    message = str(error)
    return f"mode={kept!r}" in message and f"mode={refused!r}" in message


@pytest.mark.parametrize("cls", FORMATS)
def test_a_folder_keeps_the_mode_of_its_first_write(tmp_path: Path, cls: type[FileStorage]) -> None:
    # The README's agent and team examples run against one folder: the team's first write
    # is refused, naming both modes, and the agent's listings go on working.
    agent, team = cls(tmp_path, mode="agent"), cls(tmp_path, mode="team")
    stored = agent.upsert(AgentSession(session_id="a1", user_id="u"))
    with pytest.raises(CorruptSessionError) as refused:
        team.upsert(TeamSession(session_id="t1", user_id="u"))
    assert _refuses_mode(refused.value, "agent", "team")
    with pytest.raises(CorruptSessionError):
        team.upsert(TeamSession(session_id="a1"))
    assert not (tmp_path / f"t1{cls.format.extension}").exists()
    assert (tmp_path / ".savegame" / f"mode-{cls.format.name}").read_text() == "agent\n"
    for listed in (agent, cls(tmp_path)):
        assert listed.get_all_session_ids() == ["a1"]
        assert listed.get_all_sessions(user_id="u") == [stored]
    # The team storage lists none of the agent's sessions, and reads, deletes or drops none.
    assert team.get_all_session_ids() == team.get_all_sessions() == []
    with pytest.raises(CorruptSessionError, match="mode='agent'"):
        team.read("a1")
    with pytest.raises(CorruptSessionError, match="mode='agent'"):
        team.delete_session("a1")
    assert team.delete_user("u") == 0
    team.drop()
    assert agent.get_all_sessions() == [stored]
    assert agent.upsert(stored).version == 2


def test_formats_keep_a_mode_each_in_one_folder(tmp_path: Path) -> None:
    JsonStorage(tmp_path, mode="agent").upsert(AgentSession(session_id="a"))
    YamlStorage(tmp_path, mode="team").upsert(TeamSession(session_id="t"))
    assert JsonStorage(tmp_path, mode="agent").get_all_session_ids() == ["a"]
    assert YamlStorage(tmp_path, mode="team").get_all_session_ids() == ["t"]


def test_a_dropped_folder_takes_another_mode(tmp_path: Path) -> None:
    agent = JsonStorage(tmp_path, mode="agent")
    agent.upsert(AgentSession(session_id="a"))
    agent.drop()
    team = JsonStorage(tmp_path, mode="team")
    team.upsert(TeamSession(session_id="t"))
    assert team.get_all_session_ids() == ["t"]
    with pytest.raises(CorruptSessionError, match="mode='team'"):
        agent.upsert(AgentSession(session_id="a"))


def _original(folder: Path, session_id: str, **fields: Any) -> None:
    record = {"session_id": session_id, "user_id": "u", "created_at": 1, **fields}
    (folder / f"{session_id}.json").write_text(json.dumps(record), encoding="utf-8")


def test_a_folder_of_the_original_keeps_the_mode_of_its_files(tmp_path: Path) -> None:
    # No marker, no index: the mode is inferred from the files, once.
    _original(tmp_path, "old", agent_id="bot", agent_data={}, team_session_id=None)
    with pytest.raises(CorruptSessionError) as refused:
        JsonStorage(tmp_path, mode="team").upsert(TeamSession(session_id="t"))
    assert _refuses_mode(refused.value, "agent", "team")
    JsonStorage(tmp_path).upsert(AgentSession(session_id="new", user_id="u", created_at=2))
    assert JsonStorage(tmp_path).get_all_session_ids() == ["new", "old"]


def test_files_that_fit_several_modes_leave_the_folder_to_the_first_writer(
    tmp_path: Path,
) -> None:
    _original(tmp_path, "plain", memory={})  # fields every mode but workflow_v2 has
    team = JsonStorage(tmp_path, mode="team")
    team.upsert(TeamSession(session_id="t", user_id="u", created_at=2))
    assert team.get_all_session_ids() == ["t", "plain"]
    with pytest.raises(CorruptSessionError, match="mode='team'"):
        JsonStorage(tmp_path).upsert(AgentSession(session_id="a"))


def test_a_folder_an_earlier_savegame_mixed_lists_each_mode_apart(tmp_path: Path) -> None:
    # An earlier savegame let the agent and the team examples write into one folder, and
    # its index listed both (the rows of a team session in an agent's index): every
    # listing of either mode failed. Each mode now lists its own; the first to write keeps
    # the folder, and the other mode's sessions stay readable, to be copied elsewhere.
    agent, team = JsonStorage(tmp_path), JsonStorage(tmp_path / "other", mode="team")
    agent.upsert(AgentSession(session_id="a1", user_id="u", agent_id="bot", created_at=1))
    team.upsert(TeamSession(session_id="t1", user_id="u", team_id="squad", created_at=2))
    os.replace(tmp_path / "other" / "t1.json", tmp_path / "t1.json")
    (tmp_path / ".savegame" / "mode-json").unlink()
    index = sqlite3.connect(agent._index_path, isolation_level=None)
    index.execute("PRAGMA user_version = 0")
    row = ("t1", "t1.json", "u", "squad", 2, None, 1, 0, 0)
    index.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    mtime = str(os.stat(tmp_path).st_mtime_ns)
    index.execute("DELETE FROM meta")
    index.executemany(
        "INSERT INTO meta VALUES (?, ?)", [("folder_mtime_ns", mtime), ("entity_field", "agent_id")]
    )
    index.close()
    agent.close()
    for _ in range(2):
        agent, team = JsonStorage(tmp_path), JsonStorage(tmp_path, mode="team")
        assert agent.get_all_session_ids(user_id="u") == ["a1"]
        assert [s.session_id for s in agent.get_all_sessions(user_id="u")] == ["a1"]
        assert [s.session_id for s in team.get_all_sessions(user_id="u")] == ["t1"]
        assert team.get_all_session_ids(entity_id="squad") == ["t1"]
        agent.upsert(AgentSession(session_id="a2", user_id="x", created_at=0))
    with pytest.raises(CorruptSessionError, match="mode='agent'"):
        team.upsert(TeamSession(session_id="t2"))
    assert team.read("t1") is not None
    agent.drop()
    assert agent.get_all_session_ids() == []
    assert team.get_all_session_ids() == ["t1"]
    with pytest.raises(CorruptSessionError, match="mode='agent'"):
        team.upsert(TeamSession(session_id="t2"))  # the folder is still the agent's


@pytest.mark.parametrize("cls", [JsonStorage, YamlStorage])
def test_a_write_never_replaces_a_session_of_another_mode_in_the_folder(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    # A team session that an earlier savegame let into an agent's folder stays readable in
    # its mode, to be moved elsewhere: an agent write of its id, or an import of a backup
    # holding that id, replaced it with an agent session, losing its team fields.
    team_folder = tmp_path / "team"
    cls(team_folder, mode="team").upsert(
        TeamSession(session_id="t1", team_id="squad", team_data={"members": 2})
    )
    agent = cls(tmp_path / "agent")
    agent.upsert(AgentSession(session_id="a1"))
    extension = cls(tmp_path).format.extension
    os.replace(team_folder / f"t1{extension}", tmp_path / "agent" / f"t1{extension}")
    before = (tmp_path / "agent" / f"t1{extension}").read_bytes()
    for write in (agent.upsert, agent.restore):
        for storage in (agent, cls(tmp_path / "agent")):
            with pytest.raises(CorruptSessionError, match="mode='team'"):
                write.__func__(storage, AgentSession(session_id="t1"))  # type: ignore[attr-defined]
    assert (tmp_path / "agent" / f"t1{extension}").read_bytes() == before
    stored = cls(tmp_path / "agent", mode="team").read("t1")
    assert stored is not None
    assert stored.team_data == {"members": 2}  # type: ignore[attr-defined]


_FIRST_WRITE = """
import sys, time
from savegame.errors import CorruptSessionError
from savegame.storage.json import JsonStorage
from savegame.storage.session import MODES
folder, mode, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
storage = JsonStorage(folder, mode=mode)
session = MODES[mode].session_class(session_id=mode)
time.sleep(max(0.0, start - time.time()))
try:
    storage.upsert(session)
except CorruptSessionError:
    print("refused")
else:
    print("written")
"""


def test_processes_of_two_modes_writing_first_into_one_folder_never_both_write(
    tmp_path: Path,
) -> None:
    for attempt in range(4):
        folder = tmp_path / f"f{attempt}"
        start = f"{time.time() + 1.5:.3f}"
        runs = [
            subprocess.Popen(
                [sys.executable, "-c", _FIRST_WRITE, str(folder), mode, start],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for mode in ("agent", "team")
        ]
        said = [run.communicate(timeout=60) for run in runs]
        assert sorted(out.strip() for out, _ in said) == ["refused", "written"], said
        kept = (folder / ".savegame" / "mode-json").read_text().strip()
        assert [p.stem for p in folder.glob("*.json")] == [kept]


def test_only_the_first_write_into_a_folder_pays_for_its_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsyncs: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        fsyncs.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    storage = JsonStorage(tmp_path)
    storage.upsert(AgentSession(session_id="first"))
    assert (
        len(fsyncs) == 4
    )  # the new .savegame folder into its own, the marker, the file, the folder
    for i in range(3):
        fsyncs.clear()
        storage.upsert(AgentSession(session_id=f"s{i}"))
        assert len(fsyncs) == 2  # the session's file, the folder: as before the marker


@pytest.mark.parametrize("cls", FORMATS)
def test_the_folders_a_store_makes_are_synced_into_theirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cls: type[FileStorage]
) -> None:
    synced: list[str] = []
    real = os.fsync

    def naming(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", naming)
    folder = tmp_path / "a" / "b"
    cls(folder).upsert(AgentSession(session_id="first"))
    # Each new folder's entry lives in the folder above it: without these a crash could
    # lose the folder, and the session acknowledged in it.
    for made in (tmp_path / "a", folder, folder / ".savegame"):
        assert str(made.parent) in synced, (made, synced)


@pytest.mark.parametrize("cls", FORMATS)
def test_unreadable_names_each_file_listings_leave_out(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    storage = cls(tmp_path)
    storage.upsert(AgentSession(session_id="fine", user_id="u"))
    ext = cls.format.extension
    (tmp_path / f"cut{ext}").write_bytes(b"{\x00[")
    (tmp_path / f"list{ext}").write_text("[1, 2]\n", encoding="utf-8")
    copied = (tmp_path / f"fine{ext}").read_bytes()
    (tmp_path / f"copy{ext}").write_bytes(copied)
    assert storage.get_all_session_ids() == ["fine"]
    found = sorted(storage.unreadable())
    assert len(found) == 3
    assert found[0].startswith(f"{tmp_path / f'copy{ext}'} holds session 'fine'")
    assert found[1] == f"{tmp_path / f'cut{ext}'} is not a readable {cls.format.name} file"
    assert found[2] == f"{tmp_path / f'list{ext}'} does not hold a session"
    for name in ("cut", "list", "copy"):
        (tmp_path / f"{name}{ext}").unlink()
    assert storage.unreadable() == []
    assert cls(tmp_path / "never").unreadable() == []


def _as_a_user_who_cannot_read(folder: Path, hidden: Path, check: Callable[[], None]) -> None:
    """Runs ``check`` as a user who owns ``folder`` and everything in it but ``hidden``, a
    file of another user's that it may not read: root, whom permissions do not stop, runs
    it in a child process as ``nobody``; anyone else with ``hidden`` made mode 000."""
    if os.geteuid() != 0:
        hidden.chmod(0o000)
        try:
            check()
        finally:
            hidden.chmod(0o644)
        return
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    nobody = pwd.getpwnam("nobody")
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    os.chown(hidden, 0, 0)
    hidden.chmod(0o600)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code and the pipe
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            check()
            code = 0
        except BaseException as exc:
            os.write(write_end, f"{type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as report:
        failure = report.read().decode()
    assert wait_child(pid, 60) == 0, failure


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder that any user may reach (the tests' own are their owner's only)."""
    base = Path(tempfile.mkdtemp(prefix="savegame-files-"))
    base.chmod(0o755)
    try:
        yield base / "sessions"
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize("cls", FORMATS)
@pytest.mark.parametrize("index", ["kept", "none"])
def test_a_file_that_cannot_be_read_is_left_out_and_named_as_a_damaged_file_is(
    open_folder: Path, cls: type[FileStorage], index: str
) -> None:
    # Another user's session file, which this process may not read: it broke every listing,
    # unreadable(), the first write into a folder with no mode recorded, and drop().
    folder = open_folder
    storage = cls(folder)
    for i in range(3):
        storage.upsert(AgentSession(session_id=f"s{i}", user_id="u", created_at=i))
    storage.close()
    hidden = folder / f"s1{cls.format.extension}"
    if index == "none":
        shutil.rmtree(folder / ".savegame")
    else:
        # Replaced since it was indexed, by another user's program.
        (folder / "new").write_bytes(hidden.read_bytes() + b"\n")
        os.replace(folder / "new", hidden)

    def check() -> None:
        reader = cls(folder)
        assert reader.get_all_session_ids() == ["s2", "s0"]
        assert [s.session_id for s in reader.get_all_sessions(user_id="u")] == ["s2", "s0"]
        assert [s.session_id for s in reader.get_recent_sessions(limit=5)] == ["s2", "s0"]
        [why] = reader.unreadable()
        assert why.startswith(f"{hidden} cannot be read: ")
        assert "Permission denied" in why
        with pytest.raises(BackendUnavailableError, match=f"cannot read {re.escape(str(hidden))}"):
            reader.read("s1")
        reader.upsert(AgentSession(session_id="s3", user_id="u", created_at=3))
        assert reader.get_all_session_ids(user_id="u") == ["s3", "s2", "s0"]
        reader.drop()
        assert reader.get_all_session_ids() == []
        assert reader.kept_mode() == "agent"  # the file left may be a session of its mode
        assert sorted(p.name for p in folder.iterdir()) == [".savegame", hidden.name]
        reader.close()

    _as_a_user_who_cannot_read(folder, hidden, check)
    assert cls(folder).get_all_session_ids() == ["s1"]


@pytest.mark.parametrize("cls", FORMATS)
def test_unreadable_names_a_session_of_no_mode_that_listings_leave_out(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    # A key added by hand, or an agent's and a team's fields in one file: no mode lists it
    # and its read raises, so a backup that did not name it would miss it without a word.
    storage = cls(tmp_path)
    for sid in ("fine", "edited"):
        storage.upsert(AgentSession(session_id=sid, user_id="u"))
    edited = tmp_path / f"edited{cls.format.extension}"
    record = cls.format.load(edited.read_bytes())
    record.update(note="by hand", team_id="squad")
    edited.write_bytes(cls.format.dump(record))
    storage.rebuild_index()
    assert storage.get_all_session_ids() == ["fine"]
    with pytest.raises(CorruptSessionError):
        storage.read("edited")
    assert storage.unreadable() == [
        f"{edited} holds session 'edited' with note, team_id, which no session class has "
        "beside its other fields"
    ]


@pytest.mark.parametrize("cls", FORMATS)
def test_a_folder_under_the_home_folder_is_named_with_a_tilde(
    tmp_path: Path, cls: type[FileStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As SqliteStorage's db_file and sqlite:///~/... are: the file backends made a folder
    # named "~" in the current folder.
    from savegame import open_storage

    home, elsewhere = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    cls("~/sessions").upsert(AgentSession(session_id="a"))
    url = open_storage(f"{cls.format.name}:///~/sessions", mode="agent")
    assert url.get_all_session_ids() == ["a"]
    assert (home / "sessions" / f"a{cls.format.extension}").is_file()
    assert list(elsewhere.iterdir()) == []


_INTERRUPTED_WRITER = """
import random, signal, sys, time
from savegame.storage.session.agent import AgentSession
from savegame.storage.{module} import {cls}

rng = random.Random(7)
calling = False


def interrupt(signum, frame):
    signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.0002, 0.003))
    if calling:
        raise KeyboardInterrupt


storage = {cls}(sys.argv[1], lock_timeout=5)
acked = {{}}
signal.signal(signal.SIGALRM, interrupt)
signal.setitimer(signal.ITIMER_REAL, 0.001)
deadline = time.monotonic() + 3
for i in range(10**9):
    if time.monotonic() > deadline:
        break
    session_id = f"s{{i % 5}}"
    try:
        calling = True
        storage.upsert(AgentSession(session_id=session_id, user_id="u", session_data={{"i": i}}))
        acked[session_id] = i
        if i % 7 == 0:
            storage.get_all_session_ids(user_id="u")
        if i % 11 == 0:
            del acked[session_id]  # removed, or not if interrupted first
            storage.delete_session(session_id)
        calling = False
    except KeyboardInterrupt:
        calling = False
signal.setitimer(signal.ITIMER_REAL, 0)
print(repr(acked), flush=True)
sys.stdin.readline()  # another process writes meanwhile, as beside a notebook left open
storage.upsert(AgentSession(session_id="late", user_id="u"))
print(sorted(storage.get_all_session_ids(user_id="u")), flush=True)
"""


def test_ctrl_c_at_each_step_of_taking_the_folder_lock_leaves_it_free(tmp_path: Path) -> None:
    # Ctrl-C at the entry of each function filelock runs while it takes the lock, in turn:
    # an interrupt that cut short filelock's own clean-up came out as an ExceptionGroup of
    # KeyboardInterrupts, past the code that gives the lock back, and the folder stayed
    # locked against every other process.
    from filelock import FileLock, Timeout

    storage = JsonStorage(tmp_path)
    storage.upsert(AgentSession(session_id="s"))
    lock_file = tmp_path / ".savegame" / "lock"
    interrupted = 0
    for step in range(1, 500):
        calls = 0

        def trace(frame: Any, event: str, arg: Any, step: int = step) -> Any:
            nonlocal calls
            if event == "call" and "filelock" in frame.f_code.co_filename:
                calls += 1
                if calls == step:
                    raise KeyboardInterrupt
            return None

        previous = sys.gettrace()
        sys.settrace(trace)
        try:
            storage.upsert(AgentSession(session_id="s", session_data={"step": step}))
        except KeyboardInterrupt:
            interrupted += 1
        finally:
            sys.settrace(previous)
        try:
            FileLock(lock_file, timeout=0).acquire().lock.release()
        except Timeout:
            pytest.fail(f"the folder stayed locked after Ctrl-C at filelock's call {step}")
        if calls < step:
            break
    assert interrupted > 5  # the steps were there to interrupt
    storage.upsert(AgentSession(session_id="s", session_data={"step": "after"}))
    got = JsonStorage(tmp_path).read("s")
    assert got is not None
    assert got.session_data == {"step": "after"}  # type: ignore[attr-defined]


@pytest.mark.skipif(sys.platform == "win32", reason="no SIGALRM")
@pytest.mark.parametrize("cls", FORMATS)
def test_a_write_interrupted_by_ctrl_c_leaves_the_folder_to_other_processes(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    # Ctrl-C (here a timer raising KeyboardInterrupt) in a process that goes on running, as
    # a notebook does: it left the folder's lock held, or the index in an open transaction
    # that held its write lock, and every other process's writes failed after the timeout.
    folder = tmp_path / "s"
    code = _INTERRUPTED_WRITER.format(module=cls.format.name, cls=cls.__name__)
    with subprocess.Popen(
        [sys.executable, "-c", code, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            pytest.fail(child.communicate(timeout=10)[1][-3000:])
        acked: dict[str, int] = ast.literal_eval(line)
        other = cls(folder, lock_timeout=2)
        index = sqlite3.connect(other._index_path, timeout=2)
        index.execute("BEGIN IMMEDIATE")  # the child holds no transaction on the index
        index.execute("ROLLBACK")
        index.close()
        other.upsert(AgentSession(session_id="other", user_id="u"))
        for session_id, i in acked.items():
            got = other.read(session_id)
            assert got is not None
            assert got.session_data["i"] >= i  # type: ignore[index]
        out, err = child.communicate("\n", timeout=60)
        assert child.returncode == 0, err[-3000:]
    # A write or removal cut short may or may not have been made; what the index lists is
    # what the files hold, in both processes.
    on_disk = sorted(p.stem for p in folder.glob(f"*{cls.format.extension}"))
    assert {*acked, "late", "other"} <= set(on_disk)
    assert ast.literal_eval(out) == on_disk
    assert sorted(other.get_all_session_ids(user_id="u")) == on_disk
    assert other.unreadable() == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
@pytest.mark.parametrize("cls", FORMATS)
def test_a_storage_made_before_a_fork_writes_in_each_process(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    # A storage made at import time and used by forked workers (a preloading web server):
    # the child's writes raised filelock's RuntimeError that its lock was inherited.
    storage = cls(tmp_path)
    storage.upsert(AgentSession(session_id="parent", user_id="u"))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            for i in range(20):
                storage.upsert(AgentSession(session_id=f"child-{i}", user_id="u"))
            code = 0 if len(storage.get_all_session_ids(user_id="u")) >= 21 else 2
        finally:
            os._exit(code)
    for i in range(20):
        storage.upsert(AgentSession(session_id=f"parent-{i}", user_id="u"))
    assert wait_child(pid, 60) == 0
    assert len(cls(tmp_path).get_all_session_ids(user_id="u")) == 41
    assert len(storage.get_all_session_ids(user_id="u")) == 41


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
@pytest.mark.parametrize("cls", FORMATS)
def test_a_fork_while_another_thread_waits_for_the_folder_leaves_the_child_working(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    # Forked while another thread of the parent waits for the folder's lock (held by
    # another writer): the child, where that thread does not go on, waited for ever for
    # it to give back the storage's thread lock.
    from filelock import FileLock

    storage = cls(tmp_path)
    storage.upsert(AgentSession(session_id="parent", user_id="u"))
    other_writer = FileLock(tmp_path / ".savegame" / "lock")
    other_writer.acquire()
    try:
        waiting = threading.Thread(
            target=storage.upsert, args=(AgentSession(session_id="late", user_id="u"),)
        )
        waiting.start()
        while storage._thread_lock.acquire(blocking=False):  # until the thread holds it
            storage._thread_lock.release()
            time.sleep(0.001)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            code = 1
            try:
                storage.upsert(AgentSession(session_id="child", user_id="u"))
                code = 0
            finally:
                os._exit(code)
    finally:
        other_writer.release()
    waiting.join(timeout=60)
    assert wait_child(pid, 60) == 0
    assert sorted(cls(tmp_path).get_all_session_ids(user_id="u")) == ["child", "late", "parent"]


@pytest.mark.parametrize(
    ("cls", "value"),
    [
        pytest.param(JsonStorage, "NaN", id="json-nan"),
        pytest.param(JsonStorage, "-Infinity", id="json-infinity"),
        pytest.param(JsonStorage, "1e400", id="json-overflow"),
        pytest.param(YamlStorage, ".nan", id="yaml-nan"),
        pytest.param(YamlStorage, "-.inf", id="yaml-infinity"),
        pytest.param(YamlStorage, "!!binary aGVsbG8=", id="yaml-binary"),
        pytest.param(YamlStorage, "!!set {a, b}", id="yaml-set"),
        pytest.param(YamlStorage, "{1: one}", id="yaml-int-key"),
        pytest.param(YamlStorage, "{null: none}", id="yaml-null-key"),
        pytest.param(YamlStorage, "&loop [*loop]", id="yaml-cycle"),
    ],
)
def test_a_file_edited_to_hold_values_json_cannot_hold_is_a_damaged_file(
    tmp_path: Path, cls: type[FileStorage], value: str
) -> None:
    # savegame never writes such a value, and a session holding one could be neither saved
    # again nor copied to another backend: it is a damaged file, named when read.
    storage = cls(tmp_path)
    storage.upsert(AgentSession(session_id="good", user_id="u"))
    ext = cls.format.extension
    if cls is JsonStorage:
        text = f'{{"session_id": "odd", "user_id": "u", "session_data": {{"x": {value}}}}}'
    else:
        text = f"session_id: odd\nuser_id: u\nsession_data:\n  x: {value}\n"
    (tmp_path / f"odd{ext}").write_text(text, encoding="utf-8")
    for reader in (storage, cls(tmp_path)):
        assert reader.get_all_session_ids(user_id="u") == ["good"]
        with pytest.raises(CorruptSessionError, match=re.escape(f"odd{ext} is not a readable")):
            reader.read("odd")
    assert [line.split(": ")[0] for line in storage.unreadable()] == [
        f"{tmp_path / f'odd{ext}'} is not a readable {cls.format.name} file"
    ]
    storage.upsert(AgentSession(session_id="odd", user_id="u", session_data={"x": 1}))
    got = storage.read("odd")
    assert got is not None
    assert got.session_data == {"x": 1}


def test_yaml_timestamps_are_read_in_iso_form(tmp_path: Path) -> None:
    # As savegame stores a datetime it is given, and as the original's files may hold them.
    storage = YamlStorage(tmp_path)
    (tmp_path / "a.yaml").write_text(
        "session_id: a\nsession_data: {day: 2024-01-02, at: 2024-01-02 10:00:00}\n",
        encoding="utf-8",
    )
    got = storage.read("a")
    assert got is not None
    assert got.session_data == {"day": "2024-01-02", "at": "2024-01-02T10:00:00"}
    assert storage.get_all_session_ids() == ["a"]


def test_yaml_anchors_written_by_hand_are_read_as_copies(tmp_path: Path) -> None:
    storage = YamlStorage(tmp_path)
    (tmp_path / "a.yaml").write_text(
        "session_id: a\nsession_data:\n  base: &base {model: m, tags: [x]}\n  copy: *base\n",
        encoding="utf-8",
    )
    got = storage.read("a")
    assert got is not None
    data = got.session_data
    assert data == {"base": {"model": "m", "tags": ["x"]}, "copy": {"model": "m", "tags": ["x"]}}
    assert data is not None
    data["copy"]["tags"].append("y")
    assert data["base"]["tags"] == ["x"]
    storage.upsert(got)
    again = storage.read("a")
    assert again is not None
    assert again.session_data == data


def test_a_yaml_alias_bomb_is_a_damaged_file(tmp_path: Path) -> None:
    # Nine levels of ten aliases each: a file of a few hundred bytes standing for a billion
    # values, which a read, a save or a copy would try to walk.
    storage = YamlStorage(tmp_path)
    storage.upsert(AgentSession(session_id="good"))
    lines = ["session_id: bomb", "session_data:", "  l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        refs = ", ".join([f"*l{level - 1}"] * 10)
        lines.append(f"  l{level}: &l{level} [{refs}]")
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    started = time.monotonic()
    with pytest.raises(CorruptSessionError, match=r"bomb\.yaml .*aliases make it larger"):
        storage.read("bomb")
    assert YamlStorage(tmp_path).get_all_session_ids() == ["good"]
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("cls", FORMATS)
def test_ids_whose_files_are_one_file_never_replace_each_other(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    # On a file system that ignores case (macOS, Windows) "abc.json" opens the file of
    # session "Abc": a write of "abc" would replace that session, and its delete remove
    # it. A link stands in for such a file system here, as the same two names for one file.
    storage = cls(tmp_path)
    ext = cls.format.extension
    storage.upsert(AgentSession(session_id="Abc", user_id="u", memory={"kept": True}))
    os.link(tmp_path / f"Abc{ext}", tmp_path / f"abc{ext}")
    assert storage.read("abc") is None
    with pytest.raises(InvalidIdentifierError, match=f"abc{re.escape(ext)}.*'Abc'"):
        storage.upsert(AgentSession(session_id="abc", memory={"other": True}))
    assert storage.delete_session("abc") is False
    got = storage.read("Abc")
    assert got is not None
    assert got.memory == {"kept": True}
    assert (tmp_path / f"abc{ext}").samefile(tmp_path / f"Abc{ext}")
    # A symbolic link is replaced by a write, not the file it leads to: it stays writable.
    (tmp_path / f"xyz{ext}").symlink_to(tmp_path / f"Abc{ext}")
    storage.upsert(AgentSession(session_id="xyz", memory={"own": True}))
    assert not (tmp_path / f"xyz{ext}").is_symlink()
    got = storage.read("Abc")
    assert got is not None
    assert got.memory == {"kept": True}


@pytest.mark.parametrize("cls", FORMATS)
def test_files_and_folders_of_other_programs_named_like_temporary_files_stay(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    # A folder shared with other programs (a project's root) may hold their own ".tmp-"
    # files and folders: only what a savegame writer that died left behind is removed.
    storage = cls(tmp_path)
    storage.upsert(AgentSession(session_id="a"))
    (tmp_path / ".tmp-cache").mkdir()
    (tmp_path / ".tmp-notes.txt").write_text("mine", encoding="utf-8")
    left = tmp_path / f".tmp-{'0123456789abcdef' * 2}"
    left.write_bytes(b"cut sh")
    (tmp_path / "b.json").write_text("{}", encoding="utf-8")  # the folder's time moves on
    assert cls(tmp_path).get_all_session_ids() == ["a"]
    assert (tmp_path / ".tmp-cache").is_dir()
    assert (tmp_path / ".tmp-notes.txt").read_text(encoding="utf-8") == "mine"
    assert not left.exists()
    cls(tmp_path).rebuild_index()
    assert (tmp_path / ".tmp-cache").is_dir()


_CHURN = """
import sys, time
from savegame.storage.json import JsonStorage
from savegame.storage.session.agent import AgentSession
storage = JsonStorage(sys.argv[1])
end = time.monotonic() + float(sys.argv[2])
i = 0
while time.monotonic() < end:
    i += 1
    storage.upsert(AgentSession(session_id=f"s{i % 20}", user_id="u"))
    storage.delete_session(f"s{(i + 10) % 20}")
"""


def test_a_reader_that_cannot_write_lists_while_the_owner_writes(tmp_path: Path) -> None:
    # One who may only read the folder takes no lock and lists from a copy of the index
    # made for the listing; the owner meanwhile removes files it has just seen and writes
    # the index it copies.
    folder = tmp_path / "sessions"
    JsonStorage(folder).upsert(AgentSession(session_id="kept", user_id="u"))
    (tmp_path / "view").mkdir()
    listings = 0
    with read_only(folder, at=tmp_path / "view") as view:
        reader = JsonStorage(view)
        writer = subprocess.Popen([sys.executable, "-c", _CHURN, str(folder), "4"])
        try:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                assert "kept" in reader.get_all_session_ids(user_id="u")
                listings += 1
            assert writer.wait(timeout=60) == 0
            names = {p.stem for p in folder.glob("*.json")}
            assert set(reader.get_all_session_ids()) == names
        finally:
            writer.kill()
            writer.wait()
            reader.close()  # its index, open in the view, would keep it mounted
    assert listings > 100


@pytest.mark.parametrize(
    "call", ["storage.delete_user('u')", "time.sleep(1.1); storage.purge_expired()"]
)
def test_removing_many_sessions_syncs_the_folder_and_the_index_a_few_times(
    tmp_path: Path, call: str
) -> None:
    # Each session removed on its own synced the folder once and wrote the index twice:
    # erasing a user of 2,000 sessions, or purging as many expired ones, took seconds.
    folder = (tmp_path / "sessions").resolve()
    setup = (
        "import time\n"
        "from savegame.storage.json import JsonStorage\n"
        "from savegame.storage.session.agent import AgentSession\n"
        f"storage = JsonStorage({str(folder)!r}, expire=1)\n"
        "for i in range(60):\n"
        "    storage.upsert(AgentSession(session_id=f's{i}', user_id='u'))\n"
    )
    calls = syscalls_of(setup, call, tmp_path)
    syncs = [c for c in calls if re.match(r"f(data)?sync\(", c)]
    assert len(syncs) < 15, syncs
    assert not list(folder.glob("*.json"))


def _storage_with(cls: type[FileStorage], folder: Path, session_id: str) -> str:
    """Code that makes ``storage``, a ``cls`` of ``folder`` holding session ``session_id``
    of user ``u``: the set-up of a call whose system calls are traced."""
    return (
        f"from savegame.storage.{cls.format.name} import {cls.__name__}\n"
        "from savegame.storage.session.agent import AgentSession\n"
        f"storage = {cls.__name__}({str(folder)!r})\n"
        f"storage.upsert(AgentSession(session_id={session_id!r}, user_id='u'))"
    )


@pytest.mark.parametrize("cls", FORMATS)
def test_a_returned_write_was_synced_renamed_and_its_folder_synced(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    folder = (tmp_path / "sessions").resolve()
    calls = syscalls_of(
        _storage_with(cls, folder, "first"),
        "storage.upsert(AgentSession(session_id='abc'))",
        tmp_path,
    )
    rename, temp = renamed_to(calls, folder / f"abc{cls.format.extension}")
    assert any(i < rename for i in synced(calls, temp)), calls
    assert any(i > rename for i in synced(calls, folder)), calls


@pytest.mark.parametrize("cls", FORMATS)
@pytest.mark.parametrize(
    "call", ["storage.delete_session('abc')", "storage.delete_user('u')", "storage.drop()"]
)
def test_a_returned_removal_was_synced_into_the_folder(
    tmp_path: Path, cls: type[FileStorage], call: str
) -> None:
    # A removal is a change of the folder's entries: without a sync of the folder after the
    # unlink, a session reported removed (an erasure among them) could come back after a
    # crash of the machine.
    folder = (tmp_path / "sessions").resolve()
    calls = syscalls_of(_storage_with(cls, folder, "abc"), call, tmp_path)
    path = folder / f"abc{cls.format.extension}"
    unlink = next(i for i, c in enumerate(calls) if c.startswith("unlink") and str(path) in c)
    assert any(i > unlink for i in synced(calls, folder)), calls
    assert not path.exists()


@pytest.mark.parametrize("cls", FORMATS)
@pytest.mark.parametrize("erase", ["delete_user", "delete_session", "purge_expired", "drop"])
def test_an_erasure_leaves_no_copy_in_the_index_or_its_log(
    tmp_path: Path, cls: type[FileStorage], erase: str
) -> None:
    folder = tmp_path / "store"
    storage = cls(folder, expire=1)
    storage.upsert(AgentSession(session_id="kept", user_id="someone"))
    for turn in range(3):
        for i in range(3):
            storage.upsert(
                AgentSession(
                    session_id=f"{MARK}-{i}",
                    user_id=MARK,
                    agent_id=f"agent-{MARK}",
                    memory={"runs": [{"content": MARK * 50}] * (turn + 1)},
                    session_data={"note": MARK},
                )
            )
    assert marked_files(folder) != []
    if erase == "delete_user":
        assert storage.delete_user(MARK) == 3
    elif erase == "delete_session":
        assert all(storage.delete_session(f"{MARK}-{i}") for i in range(3))
    elif erase == "purge_expired":
        time.sleep(2.1)
        assert storage.purge_expired() == 4
    else:
        storage.drop()
    assert marked_files(folder) == []
    storage.close()
    assert marked_files(folder) == []


@pytest.mark.parametrize("cls", FORMATS)
def test_an_erasure_a_reader_kept_from_clearing_the_index_log_is_cleared_at_close(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    folder = tmp_path / "store"
    storage = cls(folder)
    storage.upsert(AgentSession(session_id=f"{MARK}-0", user_id=MARK))
    storage.upsert(AgentSession(session_id="kept", user_id="someone"))
    index = next((folder / ".savegame").glob("index-*.sqlite3"))
    reader = snapshot(index)
    assert storage.delete_user(MARK) == 1
    assert marked_files(folder) != []
    reader.execute("COMMIT")
    storage.close()
    assert marked_files(folder) == []
    reader.close()


@pytest.mark.parametrize("cls", FORMATS)
def test_closing_after_an_erasure_in_a_folder_removed_since_does_not_make_it_again(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    folder = tmp_path / "store"
    storage = cls(folder)
    storage.upsert(AgentSession(session_id=f"{MARK}-0", user_id=MARK))
    index = next((folder / ".savegame").glob("index-*.sqlite3"))
    reader = snapshot(index)
    assert storage.delete_user(MARK) == 1
    reader.close()
    shutil.rmtree(folder)
    storage.close()
    assert not folder.exists()


@pytest.mark.parametrize("cls", FORMATS)
def test_a_purge_finds_stale_sessions_in_the_index_without_opening_their_files(
    tmp_path: Path, cls: type[FileStorage]
) -> None:
    # The index holds each session's times and version: finding the stale ones opens no
    # session file. An index an earlier savegame wrote holds no times: the first purge reads
    # the files, and records their times for the next.
    folder = tmp_path / "store"
    storage = cls(folder)
    for i in range(6):
        when = 1000 + i if i % 2 else None
        storage.restore(AgentSession(session_id=f"s{i}", created_at=when, updated_at=when))
    stale = ["s5", "s3", "s1"]
    assert transfer.stale_sessions(storage, 3600) == stale
    setup = (
        "from savegame import transfer\n"
        f"from savegame.storage.{cls.format.name} import {cls.__name__}\n"
        f"storage = {cls.__name__}({str(folder)!r})\n"
        "storage.table_exists()"
    )
    call = "assert transfer.stale_sessions(storage, 3600) == " + repr(stale)
    ext = cls.format.extension

    def opened() -> list[str]:
        calls = syscalls_of(setup, call, tmp_path)
        found = re.findall(rf'"{re.escape(f"{folder}/")}(s\d){re.escape(ext)}"', "\n".join(calls))
        return sorted(set(found))

    assert opened() == []
    with sqlite3.connect(storage._index_path) as index:
        index.execute("DELETE FROM stamps")
    index.close()
    assert opened() == [f"s{i}" for i in range(6)]
    assert opened() == []
    storage.close()
