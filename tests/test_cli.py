"""The ``savegame`` command, run as the console script in real processes, on every backend
that other processes can reach (each entry of ``tests.stores.BACKENDS`` with a URL)."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import typer

from savegame import transfer
from savegame.cli import _moved, app
from savegame.errors import CorruptSessionError
from savegame.storage.base import Storage
from savegame.storage.in_memory import InMemoryStorage
from savegame.storage.json import JsonStorage
from savegame.storage.session import MODES, Session
from savegame.storage.session.agent import AgentSession
from savegame.storage.session.team import TeamSession
from savegame.storage.url import SCHEMES, open_storage, redact
from savegame.testing import Store
from savegame.testing.sample import make_session
from savegame.transfer import session_line
from tests.stores import BACKENDS, Backend, mysql_packet_limit, write_original_table

SAVEGAME = Path(sys.executable).with_name("savegame")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
JSON = next(b for b in BACKENDS if b.name == "json")
# The file backend, the embedded database and a server; the other backends run the same
# library calls in test_transfer.py, and Redis also meets the command in the round trip below.
CLI_BACKENDS = ("json", "sqlite-file", "postgres")
URL_BACKENDS = [pytest.param(b, id=b.name) for b in BACKENDS if b.name in CLI_BACKENDS]
BASE = 1_700_000_000  # created_at of the first seeded session


def savegame(
    *args: str, stdin: bytes | None = None, code: int = 0
) -> subprocess.CompletedProcess[bytes]:
    """Runs the console script; checks its exit code."""
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}
    env.pop("SAVEGAME_STORAGE", None)
    proc = subprocess.run(
        [str(SAVEGAME), *args], input=stdin, capture_output=True, timeout=300, env=env
    )
    assert proc.returncode == code, (
        f"savegame {' '.join(args)} exited {proc.returncode}, not {code}\n"
        f"stdout: {proc.stdout.decode(errors='replace')}\n"
        f"stderr: {proc.stderr.decode(errors='replace')}"
    )
    return proc


def text(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode("utf-8")


def errors(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stderr.decode("utf-8")


@contextmanager
def open_store(
    backend: Backend, tmp_path: Path, mode: str = "agent", name: str = "a"
) -> Iterator[Store]:
    """An isolated store of ``backend`` that other processes can open by its URL."""
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    with backend.make(folder, mode) as store:
        if store.url is None:
            pytest.skip(f"{backend.name} has no URL")
        yield store


def seed(storage: Storage, mode: str, base: int = BASE) -> list[Session]:
    """Five sessions of two users and two entities, created from ``base`` on."""
    storage.create()
    stored = []
    for i in range(5):
        session = make_session(mode, f"s{i}", i % 3, 80, user_id=f"u{i % 2}", entity_id=f"e{i % 2}")
        session.session_data["session_name"] = f"chat ✓ {i}"  # type: ignore[attr-defined]
        session.created_at = base + i  # type: ignore[attr-defined]
        session.updated_at = base + 100 + i  # type: ignore[attr-defined]
        stored.append(storage.restore(session))
    return stored


@pytest.mark.parametrize("backend", URL_BACKENDS)
def test_sessions_list_show_rename_delete(backend: Backend, tmp_path: Path) -> None:
    with open_store(backend, tmp_path) as store:
        seed(store(), "agent")
        url = ["--storage", str(store.url)]

        listed = json.loads(text(savegame("sessions", "list", *url, "--json")))
        assert [r["id"] for r in listed] == ["s4", "s3", "s2", "s1", "s0"]
        assert listed[0] == {
            "id": "s4",
            "user": "u0",
            "entity": "e0",
            "name": "chat ✓ 4",
            "runs": 2,
            "created": 1_700_000_004,
            "updated": 1_700_000_104,
        }
        by_user = json.loads(text(savegame("sessions", "list", *url, "--user", "u1", "--json")))
        assert [r["id"] for r in by_user] == ["s3", "s1"]
        by_entity = json.loads(text(savegame("sessions", "list", *url, "-e", "e0", "--json")))
        assert [r["id"] for r in by_entity] == ["s4", "s2", "s0"]
        page = json.loads(text(savegame("sessions", "list", *url, "-n", "2", "-p", "2", "--json")))
        assert [r["id"] for r in page] == ["s2", "s1"]
        last = json.loads(text(savegame("sessions", "list", *url, "-n", "2", "-p", "3", "--json")))
        assert [r["id"] for r in last] == ["s0"]
        past = savegame("sessions", "list", *url, "-n", "2", "-p", "4", code=2)
        assert errors(past).splitlines() == [
            "error: there is no page 4: the last page is 3 (5 sessions, 2 a page)"
        ]
        assert past.stdout == b""
        # A script paging through --json stops at the first empty page.
        assert (
            json.loads(text(savegame("sessions", "list", *url, "-n", "2", "-p", "4", "--json")))
            == []
        )

        table = text(savegame("sessions", "list", *url))
        for heading in ("id", "user", "entity", "name", "runs", "created", "updated"):
            assert heading in table
        assert "chat ✓ 3" in table
        assert "2023-11-14 22:13:24" in table  # created_at of s4, in UTC
        assert "5 sessions" in table

        shown = text(savegame("sessions", "show", "s2", *url))
        assert "question 1 of s2" in shown
        assert "é✓1" in shown
        assert "chat ✓ 2" in shown
        raw = json.loads(text(savegame("sessions", "show", "s2", *url, "--json")))
        assert raw == json.loads(session_line(store().read("s2")))  # type: ignore[arg-type]

        savegame("sessions", "rename", "s2", "trip to Kyōto", *url)
        renamed = store().read("s2")
        assert renamed is not None
        assert renamed.session_data["session_name"] == "trip to Kyōto"  # type: ignore[attr-defined]
        assert renamed.session_data["round"] == 2  # type: ignore[attr-defined]

        savegame("sessions", "delete", "s0", "s1", *url)
        assert store().get_all_session_ids() == ["s4", "s3", "s2"]
        missing = savegame("sessions", "delete", "s3", "nope", *url, code=2)
        assert store().get_all_session_ids() == ["s4", "s2"]
        assert "nope" in errors(missing)
        assert "Traceback" not in errors(missing)
        absent = savegame("sessions", "show", "nope", *url, code=2)
        assert errors(absent).strip().splitlines() == [
            f"error: no agent session 'nope' in {store.url}"
        ]
        savegame("sessions", "rename", "nope", "x", *url, code=2)


def test_delete_refuses_a_bad_id_before_deleting_any(tmp_path: Path) -> None:
    """``delete a "" b`` deleted a, then stopped at the empty id with b kept and nothing
    said of a; ``delete c c`` deleted c and then said it was not there."""
    url = f"sqlite:///{tmp_path / 'del.db'}"
    with open_storage(url) as storage:
        storage.create()
        for session_id in "abc":
            storage.upsert(AgentSession(session_id=session_id))
    refused = savegame("sessions", "delete", "a", "", "b", "-s", url, code=2)
    assert errors(refused).splitlines() == ["error: session id must not be empty"]
    with open_storage(url) as storage:
        assert sorted(storage.get_all_session_ids()) == ["a", "b", "c"]
    twice = savegame("sessions", "delete", "c", "c", "-s", url)
    assert errors(twice).splitlines() == ["deleted 1 session"]
    with open_storage(url) as storage:
        assert sorted(storage.get_all_session_ids()) == ["a", "b"]


def test_show_gives_a_session_without_runs_as_0_runs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'quiet.db'}"
    with open_storage(url) as storage:
        storage.create()
        storage.upsert(AgentSession(session_id="quiet"))
    shown = text(savegame("sessions", "show", "quiet", "-s", url))
    assert re.search(r"│ runs +0 +│", shown), shown
    assert re.search(r"│ version +1 +│", shown), shown


def test_tables_and_json_show_ids_and_text_as_they_are(tmp_path: Path) -> None:
    """Emoji codes, markup, escape sequences and lone surrogates in ids, names and messages:
    Rich showed "chat:x:1" as "chat❌1", passed a model's escape sequences to the terminal,
    and a lone surrogate made list and show fail with a UnicodeEncodeError, exit code 2."""
    url = f"sqlite:///{tmp_path / 'odd.db'}"
    session_id = "chat:x:1[bold]"
    message = "clear\x1b[2J screen \x9b31m :100: two\nlines"
    with open_storage(url) as storage:
        storage.create()
        storage.restore(
            AgentSession(
                session_id=session_id,
                user_id=":thumbs_up:\u202egnp.exe",
                agent_id="bell\x07",
                memory={
                    "runs": [
                        {"message": message, "response": "half \ud800 a pair"},
                        {"message": "pay 10\rpay 9999", "response": "ok\r\nfine"},
                    ]
                },
                session_data={"session_name": "n\udc00 :red_heart:"},
                created_at=BASE,
                updated_at=BASE,
            )
        )
    url_args = ("-s", url)
    table = text(savegame("sessions", "list", *url_args))
    assert "chat:x:1[bold]" in table
    assert ":thumbs_up:\\u202egnp.exe" in table
    assert "bell\\x07" in table
    assert "n\\udc00 :red_heart:" in table
    shown = text(savegame("sessions", "show", session_id, *url_args))
    assert "clear\\x1b[2J screen \\x9b31m :100: two\nlines" in shown
    assert "half \\ud800 a pair" in shown
    # A carriage return alone, which Rich left out, is shown; one that ends a line is not.
    assert "user: pay 10\\rpay 9999\n" in shown
    assert "assistant: ok\nfine\n" in shown
    purged = text(savegame("purge", "--older-than", "1d", "--dry-run", *url_args))
    assert purged.splitlines() == [session_id]
    for output in (table, shown, purged):
        assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]", output), output

    listed = json.loads(text(savegame("sessions", "list", "--json", *url_args)))
    assert (listed[0]["id"], listed[0]["name"]) == (session_id, "n\udc00 :red_heart:")
    assert listed[0]["user"] == ":thumbs_up:\u202egnp.exe"
    # JSON as the tables: a bidirectional override shown as its escape, not obeyed.
    raw = savegame("sessions", "show", session_id, "--json", *url_args).stdout
    assert not re.search(b"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80\xae", raw)
    assert b":thumbs_up:\\u202egnp.exe" in raw
    with open_storage(url) as storage:
        assert json.loads(raw) == json.loads(session_line(storage.read(session_id)))  # type: ignore[arg-type]


_INVISIBLE = re.compile(
    "[\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\U000e0000-\U000e007f]"
)
"""Format characters and line separators, which a terminal shows as nothing, obeys, or
breaks a line at."""


def test_tables_show_invisible_and_format_characters_as_escapes(tmp_path: Path) -> None:
    """Zero-width characters, the byte order mark, line separators and other format
    characters in ids, users, entities and names were printed as they are: "ab" and
    "a\u200bb" listed as two sessions of one id, and "\u2028" broke a table's row."""
    url = f"sqlite:///{tmp_path / 'odd.db'}"
    odd = {
        "zero-width": "a\u200bb",
        "joiner": "a\u200db",
        "bom": "\ufeffab",
        "line": "a\u2028b",
        "paragraph": "a\u2029b",
        "soft hyphen": "a\u00adb",
        "word joiner": "a\u2060b",
        "tag": "a\U000e0041b",
        "arabic mark": "a\u061cb",
    }
    with open_storage(url) as storage:
        for n, (what, odd_id) in enumerate(odd.items()):
            storage.restore(
                AgentSession(
                    session_id=odd_id,
                    user_id=f"u{odd_id}",
                    agent_id=f"e{odd_id}",
                    memory={
                        "runs": [
                            {"message": f"hi{odd_id}", "response": "a\U0001f469\u200d\U0001f4bb"}
                        ]
                    },
                    session_data={"session_name": f"{what} {odd_id}"},
                    created_at=BASE + n,
                    updated_at=BASE + n,
                )
            )
        storage.restore(AgentSession(session_id="ab", created_at=BASE - 1, updated_at=BASE - 1))
    escaped = {what: odd_id.encode("unicode_escape").decode() for what, odd_id in odd.items()}
    table = text(savegame("sessions", "list", "-s", url))
    for what, shown in escaped.items():
        assert f"│ {shown} " in table, what
        assert f"│ u{shown} " in table, what
        assert f"│ e{shown} " in table, what
        assert f"│ {what} {shown} " in table, what
    # A header of three lines, a line a session, the bottom border and the caption; str's
    # splitlines() also breaks at U+2028 and U+2029.
    assert len(table.splitlines()) == 3 + len(odd) + 1 + 2
    shown = text(savegame("sessions", "show", "a\u200db", "-s", url))
    assert "id       a\\u200db" in shown
    assert '"session_name": "joiner a\\u200db"' in shown
    # Running text keeps the joiner, which makes one emoji of three characters, and no
    # other invisible character.
    assert "user: hia\u200db\n" in shown
    shown = text(savegame("sessions", "show", "a\u2028b", "-s", url))
    assert "id       a\\u2028b" in shown
    assert "name     line a\\u2028b" in shown
    assert "user: hia\\u2028b\n" in shown
    assert "assistant: a\U0001f469\u200d\U0001f4bb" in shown
    purged = text(savegame("purge", "--older-than", "1d", "--dry-run", "-s", url))
    assert sorted(purged.splitlines()) == sorted([*escaped.values(), "ab"])
    missing = errors(savegame("sessions", "show", "a\u2028\u200bb", "-s", url, code=2))
    assert "'a\\u2028\\u200bb'" in missing
    for output in (table, shown, purged, missing):
        assert not _INVISIBLE.search(output.replace("\u200d", "")), output

    # JSON gives every id back exactly, the invisible characters as JSON escapes.
    raw = text(savegame("sessions", "list", "--json", "-s", url))
    assert not _INVISIBLE.search(raw), raw
    assert '"a\\u200bb"' in raw
    assert '"a\\udb40\\udc41b"' in raw
    assert {row["id"] for row in json.loads(raw)} == {*odd.values(), "ab"}
    exported = text(savegame("export", "-s", url)).split("\n")[:-1]
    assert {json.loads(line)["session_id"] for line in exported} == {
        *odd.values(),
        "ab",
    }


@pytest.mark.parametrize("backend", URL_BACKENDS)
def test_export_import_is_lossless_across_backends(backend: Backend, tmp_path: Path) -> None:
    """JSON lines out of one store, into an empty store of this backend, and out again."""
    with (
        open_store(JSON, tmp_path, "team", "src") as src,
        open_store(backend, tmp_path, "team", "dst") as dst,
    ):
        seed(src(), "team")
        export = savegame("export", "-s", str(src.url), "--mode", "team")
        exported = export.stdout
        assert len(exported.splitlines()) == 5
        assert "exported 5 sessions" in errors(export)
        (tmp_path / "dump.jsonl").write_bytes(exported)
        savegame("import", str(tmp_path / "dump.jsonl"), "-s", str(dst.url), "-m", "team")
        # PostgreSQL gives the keys inside each field back in JSONB's order.
        ordered = "key_order" in type(dst()).capabilities

        def comparable(lines: bytes) -> list[Any]:
            if ordered:
                return lines.splitlines()
            return [json.dumps(json.loads(line), sort_keys=True) for line in lines.splitlines()]

        redone = savegame("export", "-s", str(dst.url), "-m", "team").stdout
        assert comparable(redone) == comparable(exported)
        one_user = savegame("export", "-s", str(dst.url), "-m", "team", "--user", "u1").stdout
        assert [json.loads(line)["session_id"] for line in one_user.splitlines()] == ["s3", "s1"]

        # Importing again writes nothing and duplicates nothing; from standard input too.
        again = savegame("import", "-", "-s", str(dst.url), "-m", "team", stdin=exported)
        assert "imported 0, already there 5, of 5 sessions" in errors(again)
        assert dst().get_all_session_ids() == ["s4", "s3", "s2", "s1", "s0"]
        assert savegame("export", "-s", str(dst.url), "-m", "team").stdout == redone

        # A file of another mode is refused before anything is written.
        wrong = savegame("import", str(tmp_path / "dump.jsonl"), "-s", str(dst.url), code=2)
        assert "not fields of agent sessions" in errors(wrong)
        assert "Traceback" not in errors(wrong)


@pytest.mark.parametrize("backend", URL_BACKENDS)
def test_stats_purge_delete_user_schema(backend: Backend, tmp_path: Path) -> None:
    with open_store(backend, tmp_path, "workflow_v2") as store:
        storage = store()
        # A day before now for the sessions purge keeps, sixty days for the one it removes.
        recent = int(time.time()) - 86400
        seed(storage, "workflow_v2", recent)
        old = make_session("workflow_v2", "old", 0, 10, user_id="u9", entity_id="e9")
        old.created_at = old.updated_at = recent - 59 * 86400  # type: ignore[attr-defined]
        storage.restore(old)
        url = ["-s", str(store.url), "-m", "workflow_v2"]

        figures = json.loads(text(savegame("stats", *url, "--json")))
        assert figures["sessions"] == 6
        assert figures["users"] == 3
        assert figures["entities"] == 3
        assert figures["oldest"] == recent - 59 * 86400
        assert figures["newest"] == recent + 104
        assert figures["bytes"] > 6 * 80
        assert figures["bytes"] == len(savegame("export", *url).stdout)
        assert "sessions" in text(savegame("stats", *url))

        dry = savegame("purge", "--older-than", "30d", "--dry-run", *url)
        assert text(dry).split() == ["old"]
        assert "would remove 1 session" in errors(dry)
        assert len(storage.get_all_session_ids()) == 6
        savegame("purge", "--older-than", "30d", *url)
        assert "old" not in storage.get_all_session_ids()
        assert len(storage.get_all_session_ids()) == 5
        bad_age = savegame("purge", "--older-than", "soon", *url, code=2)
        assert "not an age" in errors(bad_age)
        assert "Invalid value for '--older-than'" in errors(bad_age)
        for unitless in ("90", "1d2"):
            bare = savegame("purge", "--older-than", unitless, *url, code=2)
            assert "a number without its unit" in errors(bare)
        assert len(storage.get_all_session_ids()) == 5

        erased = text(savegame("delete-user", "u0", *url))
        assert "deleted 3 sessions of user 'u0'" in erased
        assert storage.get_all_session_ids() == ["s3", "s1"]

        savegame("schema", "upgrade", *url)
        assert storage.get_all_session_ids() == ["s3", "s1"]


def test_purge_and_delete_user_print_an_id_longer_than_a_line_on_one_line(
    tmp_path: Path,
) -> None:
    """The ids purge prints, one a line for a script to read, and the report of
    delete-user were broken over lines at 160 columns in a pipe (at the terminal's width on
    a terminal): an id longer than that was read as two ids, neither of them the session's."""
    url = _trip(tmp_path, "trip-" + "0123456789" * 30)
    old = "old-" + "abcdefghij" * 30
    JsonStorage(tmp_path / "s").restore(
        AgentSession(session_id=old, user_id="u" * 300, created_at=BASE, updated_at=BASE)
    )
    dry = text(savegame("purge", "--older-than", "1d", "--dry-run", "-s", url))
    assert sorted(dry.splitlines()) == [old, "trip-" + "0123456789" * 30], dry
    screen = on_terminal("purge", "--older-than", "1d", "--dry-run", "-s", url, columns=40)
    assert sorted(screen.splitlines()) == sorted(dry.splitlines()), screen
    erased = text(savegame("delete-user", "u" * 300, "-s", url))
    every_mode = "agent: 1, team: 0, workflow: 0, workflow_v2: 0"
    assert erased == f"deleted 1 session of user '{'u' * 300}' ({every_mode})\n", erased


@pytest.mark.parametrize("backend", URL_BACKENDS)
def test_copy_into_this_backend_and_again(backend: Backend, tmp_path: Path) -> None:
    with (
        open_store(JSON, tmp_path, "agent", "src") as src,
        open_store(backend, tmp_path, "agent", "dst") as dst,
    ):
        originals = seed(src(), "agent")
        first = savegame("copy", str(src.url), str(dst.url), "--batch-size", "2")
        assert "copied 5, already there 0, of 5 sessions" in errors(first)
        again = savegame("copy", str(src.url), str(dst.url))
        assert "copied 0, already there 5, of 5 sessions" in errors(again)
        for original in originals:
            assert dst().read(original.session_id) == original

        # A user goes on at the destination: copying again keeps what they saved there.
        went_on = dst().read("s2")
        assert went_on is not None
        went_on.session_data = {"went": "on"}  # type: ignore[attr-defined]
        saved = dst().upsert(went_on)
        third = savegame("copy", str(src.url), str(dst.url))
        assert (
            "copied 0, already there 4, kept 1 saved there since (s2; --replace-newer "
            "replaces them), of 5 sessions"
        ) in errors(third)
        assert dst().read("s2") == saved
        forced = savegame("copy", str(src.url), str(dst.url), "--replace-newer")
        assert "copied 1, already there 4, of 5 sessions" in errors(forced)
        assert dst().read("s2").session_data == originals[2].session_data  # type: ignore[union-attr]


def test_delete_user_searches_every_mode_of_a_database(tmp_path: Path) -> None:
    """A SQLite URL without ?table= names one table per mode; delete-user empties each."""
    url = f"sqlite:///{tmp_path / 'all.db'}"
    from savegame.storage.url import open_storage

    for mode in MODES:
        with open_storage(url, mode) as storage:
            seed(storage, mode)
    erased = text(savegame("delete-user", "u1", "-s", url))
    assert "deleted 8 sessions of user 'u1'" in erased
    assert "agent: 2, team: 2, workflow: 2, workflow_v2: 2" in erased
    for mode in MODES:
        with open_storage(url, mode) as storage:
            assert storage.get_all_session_ids() == ["s4", "s2", "s0"]


def test_delete_user_searches_a_folder_in_every_mode(tmp_path: Path) -> None:
    """A folder of team sessions (and one agent session an earlier savegame let in beside
    them): delete-user in the default mode reported 0 and left every team session."""
    folder = tmp_path / "sessions"
    team = JsonStorage(folder, mode="team")
    for i in range(3):
        team.upsert(TeamSession(session_id=f"t{i}", user_id="u"))
    JsonStorage(tmp_path / "other").upsert(AgentSession(session_id="a", user_id="u"))
    os.replace(tmp_path / "other" / "a.json", folder / "a.json")
    erased = text(savegame("delete-user", "u", "-s", f"json:///{folder}"))
    assert erased == (
        "deleted 4 sessions of user 'u' (agent: 1, team: 3, workflow: 0, workflow_v2: 0)\n"
    )
    assert not list(folder.glob("*.json"))


def test_delete_user_says_when_nothing_is_stored_there(tmp_path: Path) -> None:
    """A mistyped path reported "deleted 0 sessions" alone, as if the user's sessions were
    erased; it says that nothing is stored there, and makes nothing."""
    for url, searched in (
        (f"sqlite:///{tmp_path / 'typo.db'}", "any mode"),
        (f"json:///{tmp_path / 'typo'}", "any mode"),
        (f"sqlite:///{tmp_path / 'typo.db'}?table=chats", "agent"),
    ):
        erased = savegame("delete-user", "u", "-s", url)
        assert text(erased).startswith("deleted 0 sessions of user 'u'")
        assert f"note: nothing of {searched} is stored at {url}" in errors(erased)
    assert list(tmp_path.iterdir()) == []
    url = f"sqlite:///{tmp_path / 'all.db'}"
    with open_storage(url, "team") as storage:
        storage.upsert(TeamSession(session_id="t", user_id="u"))
    erased = savegame("delete-user", "u", "-s", url)
    assert "deleted 1 session of user 'u'" in text(erased)
    assert errors(erased) == ""


def test_user_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    assert text(savegame("--version")).startswith("savegame ")
    bad_url = savegame("sessions", "list", "-s", "nowhere", code=2)
    assert errors(bad_url).count("\n") == 1
    assert "sqlite://" in errors(bad_url)
    assert "redis://" in errors(bad_url)
    unknown = savegame("stats", "-s", "ftp://host/x", code=2)
    assert "unknown storage URL scheme 'ftp'" in errors(unknown)
    assert "Traceback" not in errors(unknown)
    debug = savegame("--debug", "stats", "-s", "ftp://host/x", code=2)
    assert "Traceback" in errors(debug)

    bad_mode = savegame("sessions", "list", "--mode", "robot", code=2)
    assert "agent, team, workflow, workflow_v2" in errors(bad_mode)
    no_file = savegame("import", str(tmp_path / "absent.jsonl"), "-s", "memory://", code=2)
    assert "cannot read" in errors(no_file)
    # A file where a folder of the path should be was a failure, told as "[Errno 20] ...".
    (tmp_path / "file").write_text("")
    for path in (tmp_path / "file" / "a.jsonl", tmp_path):
        wrong = savegame("import", str(path), "-s", "memory://", code=2)
        assert errors(wrong).splitlines()[-1] in (
            f"error: cannot read {path}: Not a directory",
            f"error: cannot read {path}: Is a directory",
        )
    (tmp_path / "junk.jsonl").write_text("{not json\n")
    junk = savegame("import", str(tmp_path / "junk.jsonl"), "-s", "memory://", code=2)
    assert f"{tmp_path / 'junk.jsonl'}:1: not JSON" in errors(junk)
    secret = savegame("sessions", "show", "x", "-s", "memory://:hunter2@host", code=2)
    assert "hunter2" not in errors(secret)


def test_a_folder_that_cannot_be_made_is_named_in_one_line(tmp_path: Path) -> None:
    # A line separator or a no-break space in the path was shown as a plain space.
    for name, shown in (("file", "file"), ("f\u2028i\xa0le", "f\\u2028i\xa0le")):
        (tmp_path / name).write_text("")
        folder = tmp_path / name / "sessions"
        for url in (f"json:///{folder}", f"sqlite:///{folder / 'app.db'}"):
            proc = savegame("import", "-", "-s", url, stdin=b'{"session_id":"s"}\n', code=1)
            assert errors(proc).split("\n") == [
                f"error: cannot make the folder {tmp_path / shown / 'sessions'}: Not a directory",
                "",
            ]


def test_a_folder_that_a_file_stands_in_the_place_of_is_said_so(tmp_path: Path) -> None:
    """The system's "File exists" read as if the folder were there."""
    (tmp_path / "file").write_text("")
    for url in (f"json:///{tmp_path / 'file'}", f"sqlite:///{tmp_path / 'file' / 'app.db'}"):
        proc = savegame("import", "-", "-s", url, stdin=b'{"session_id":"s"}\n', code=1)
        assert errors(proc) == (
            f"error: cannot make the folder {tmp_path / 'file'}: a file of that name is there\n"
        )
    assert (tmp_path / "file").read_text() == ""


def test_an_unreachable_server_is_a_failure_in_one_line() -> None:
    down = savegame("stats", "-s", "redis://:hunter2@127.0.0.1:1/0", code=1)
    assert errors(down).startswith("error: ")
    assert errors(down).count("\n") == 1
    assert "unavailable" in errors(down)
    assert "hunter2" not in errors(down)


@pytest.mark.parametrize(
    ("driver", "url", "extra"),
    [
        ("redis", "redis://127.0.0.1:6379/0?prefix=absent", "redis"),
        ("psycopg", "postgresql+psycopg://u@127.0.0.1/db", "postgres"),
        ("pymysql", "mysql+pymysql://u@127.0.0.1/db", "mysql"),
    ],
)
def test_a_driver_not_installed_is_a_failure_naming_the_extra(
    driver: str, url: str, extra: str, tmp_path: Path
) -> None:
    code = (
        f"import sys\nsys.modules[{driver!r}] = None\n"
        "from savegame.cli import main\n"
        "sys.argv = ['savegame', *sys.argv[1:]]\nmain()\n"
    )
    for args in (["stats", "-s", url], ["copy", url, f"json:///{tmp_path / 'copy'}"]):
        proc = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.splitlines() == [
            f'error: this backend needs the {driver!r} package: pip install "savegame[{extra}]"'
        ]
    assert not (tmp_path / "copy").exists()


def test_copy_shows_its_progress_on_a_terminal_only(tmp_path: Path) -> None:
    source = JsonStorage(tmp_path / "from")
    for i in range(30):
        source.upsert(AgentSession(session_id=f"s{i}"))
    command = ["copy", f"json:///{tmp_path / 'from'}", "--batch-size", "7"]
    screen = on_terminal(*command, f"json:///{tmp_path / 'to'}", columns=80, stream="stderr")
    assert "copying" in screen
    assert "30/30" in screen
    assert "copied 30, already there 0, of 30 sessions" in screen
    piped = savegame(*command, f"json:///{tmp_path / 'again'}")
    assert errors(piped) == "copied 30, already there 0, of 30 sessions\n"


def test_an_ascii_standard_output_shows_escapes_and_exact_json(tmp_path: Path) -> None:
    """Text its encoding lacks is written as escapes: Python's in tables, JSON's under --json,
    rather than the command failing with a message about a codec (and exit code 2)."""
    store = JsonStorage(tmp_path / "s")
    store.restore(
        AgentSession(
            session_id="trip-😀",
            user_id="çarla",
            agent_id="helper",
            created_at=BASE,
            updated_at=BASE,
            session_data={"session_name": "Évora"},
        )
    )
    url = f"json:///{tmp_path / 's'}"
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "NO_COLOR": "1", "COLUMNS": "250"}

    def run(*args: str) -> str:
        proc = subprocess.run(
            [str(SAVEGAME), *args, "-s", url], capture_output=True, timeout=60, env=env
        )
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout.decode("ascii")

    table = run("sessions", "list")
    assert "trip-\\U0001f600 | \\xe7arla | helper | \\xc9vora |" in table.replace("│", "|")
    assert json.loads(run("sessions", "list", "--json"))[0]["user"] == "çarla"
    assert json.loads(run("sessions", "show", "trip-😀", "--json"))["user_id"] == "çarla"
    assert "\\xe7arla" in run("sessions", "show", "trip-😀")


def on_terminal(*args: str, columns: int, stream: str = "stdout", code: int = 0) -> str:
    """What the command shows on a terminal ``columns`` wide, its ``stream`` (stdout or
    stderr) there and the other one left out (colours and moves left out too); it must exit
    with ``code``."""
    controller, terminal = os.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"}
    streams: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    streams[stream] = terminal
    try:
        proc = subprocess.Popen(
            [str(SAVEGAME), *args], stdin=subprocess.DEVNULL, env=env, **streams
        )
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal's other end is closed: the command ended
                break
            if not chunk:
                break
            shown += chunk
        assert proc.wait(timeout=60) == code
    finally:
        os.close(controller)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode()).replace("\r\n", "\n")


def _trip(tmp_path: Path, session_id: str) -> str:
    """The URL of a new folder holding one session, ``session_id`` of user alice, agent
    helper, named Lisbon, made at BASE and updated a minute later."""
    JsonStorage(tmp_path / "s").restore(
        AgentSession(
            session_id=session_id,
            user_id="alice",
            agent_id="helper",
            created_at=BASE,
            updated_at=BASE + 60,
            session_data={"session_name": "Lisbon"},
        )
    )
    return f"json:///{tmp_path / 's'}"


def test_sessions_list_shows_every_field_on_a_narrow_terminal(tmp_path: Path) -> None:
    """The table's times, which it never wraps, take most of 40 columns: the sessions are
    then shown one below the other rather than in columns squeezed to nothing."""
    url = _trip(tmp_path, "trip-42")
    for columns in (40, 100):
        screen = on_terminal("sessions", "list", "-s", url, columns=columns)
        assert all(len(line) <= columns for line in screen.splitlines()), screen
        for shown in (
            "trip-42",
            "alice",
            "helper",
            "Lisbon",
            "2023-11-14 22:13:20",
            "2023-11-14 22:14:20",
            "page 1 of 1, 1 session",
        ):
            assert shown in screen, (columns, screen)


@pytest.mark.parametrize("columns", [0, 1, 12])
def test_a_terminal_of_almost_no_columns_still_shows_every_field(
    tmp_path: Path, columns: int
) -> None:
    """Rich lays tables out in the columns it is given: at COLUMNS=1 sessions list and show
    printed blank lines where the ids were, and at COLUMNS=0 (which Python reads as not
    set) list printed nothing at all, exiting 0."""
    session_id = "trip-" + "0123456789" * 3
    url = _trip(tmp_path, session_id)
    for command in (["sessions", "list"], ["sessions", "show", session_id]):
        screen = on_terminal(*command, "-s", url, columns=columns)
        # The values, as one text: each line's after its label (and the panel's borders).
        values = "".join(
            re.sub(r"^[│ ]*(id|user|entity|name|runs|created|updated|version)?\s+|[│ ]*$", "", line)
            for line in screen.splitlines()
        )
        for shown in (session_id, "alice", "helper", "Lisbon", "2023-11-1422:13:20"):
            assert shown in values.replace(" ", ""), (command, screen)


def test_columns_0_is_read_as_not_set_and_every_message_is_shown(tmp_path: Path) -> None:
    """At COLUMNS=0 (which Python reads as not set) Rich laid every message out in no
    columns: an error, a note, a bad flag's usage and the help printed nothing at all."""
    url = f"sqlite:///{tmp_path / 'a.db'}"
    env = {**os.environ, "COLUMNS": "0", "NO_COLOR": "1"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SAVEGAME), *args], capture_output=True, text=True, timeout=60, env=env
        )

    missing = run("sessions", "show", "nope", "-s", url)
    assert missing.returncode == 2
    assert missing.stderr.endswith(f"\nerror: no agent session 'nope' in {url}\n")
    note = run("stats", "-s", url)
    assert note.stderr.startswith(f"note: nothing of mode agent is stored at {url}"), note.stderr
    assert "sessions  0" in note.stdout
    bad_flag = run("sessions", "list", "--mode", "robot")
    assert bad_flag.returncode == 2
    assert "Invalid value for '--mode'" in bad_flag.stderr
    shown = run("--help")
    assert "Usage: savegame" in shown.stdout
    assert "delete-user" in shown.stdout


def test_sessions_show_gives_ids_longer_than_a_line_whole(tmp_path: Path) -> None:
    """An id or user wider than the terminal (or than the 160 columns piped output gets)
    was cut short with "…" in show's panel, and could not be copied into the next command."""
    session_id = "trip-" + "0123456789" * 10
    user_id = "user-" + "abcdefghij" * 20
    store = JsonStorage(tmp_path / "s")
    store.restore(AgentSession(session_id=session_id, user_id=user_id, created_at=BASE))
    url = f"json:///{tmp_path / 's'}"
    for columns in (30, 80, None):
        if columns is None:
            screen = text(savegame("sessions", "show", session_id, "-s", url))
        else:
            screen = on_terminal("sessions", "show", session_id, "-s", url, columns=columns)
        assert "…" not in screen, screen
        cells = [re.findall(r"│ (.*?) *│", line) for line in screen.splitlines()]
        values = "".join(cell[0].removeprefix(cell[0].split()[0]).strip() for cell in cells if cell)
        assert session_id in values, (columns, screen)
        assert user_id in values, (columns, screen)
        assert "2023-11-14" in values, (columns, screen)


def test_json_on_a_terminal_is_never_broken_over_lines(tmp_path: Path) -> None:
    """On a terminal, --json broke a value longer than a line (a long id, a name with
    spaces) over several lines, a line break inside a JSON string: what the terminal showed
    was no longer JSON, nor gave the values back when copied."""
    session_id = "trip-" + "0123456789" * 10
    name = "a name " * 20
    url = _trip(tmp_path, session_id)
    savegame("sessions", "rename", session_id, name, "-s", url)
    listed = on_terminal("sessions", "list", "--json", "-s", url, columns=40)
    assert json.loads(listed)[0]["id"] == session_id, listed
    assert json.loads(listed)[0]["name"] == name, listed
    shown = on_terminal("sessions", "show", session_id, "--json", "-s", url, columns=40)
    assert json.loads(shown)["session_data"] == {"session_name": name}, shown
    figures = on_terminal("stats", "--json", "-s", url, columns=20)
    assert json.loads(figures)["sessions"] == 1, figures


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(("sessions", "list"), id="list"),
        pytest.param(("stats",), id="stats"),
        pytest.param(("export",), id="export"),
    ],
)
def test_reading_a_store_that_was_never_created(path: tuple[str, ...], tmp_path: Path) -> None:
    for url in (f"json:///{tmp_path / 'never'}", f"sqlite:///{tmp_path / 'deeper' / 'never.db'}"):
        proc = savegame(*path, "-s", url)
        assert "nothing of mode agent is stored at" in errors(proc)
    assert list(tmp_path.iterdir()) == []


def test_copying_from_a_store_that_is_not_there_fails_and_makes_nothing(tmp_path: Path) -> None:
    for source in (f"json:///{tmp_path / 'never'}", f"sqlite:///{tmp_path / 'deep' / 'never.db'}"):
        for destination in (f"json:///{tmp_path / 'dst'}", f"sqlite:///{tmp_path / 'dst.db'}"):
            proc = savegame("copy", source, destination, code=2)
            assert errors(proc).splitlines() == [
                f"error: nothing of mode agent is stored at {source}: there is nothing to copy "
                "(check the URL and --mode)"
            ]
    assert list(tmp_path.iterdir()) == []


def test_copying_into_a_table_of_another_mode_says_nothing_was_stored(tmp_path: Path) -> None:
    """It said "having stored 0 of 1 sessions (...), which running it again skips"."""
    source, destination = (
        f"sqlite:///{tmp_path / name}?table=sessions" for name in ("a.db", "t.db")
    )
    backup = tmp_path / "s.jsonl"
    backup.write_text(json.dumps({"session_id": "s1", "memory": {"runs": []}}) + "\n")
    savegame("import", str(backup), "-s", source)
    savegame("import", str(backup), "-s", destination, "--mode", "team")
    before = (tmp_path / "t.db").read_bytes()
    (line,) = errors(savegame("copy", source, destination, code=1)).splitlines()
    # Refused at the first look at the destination, before any session is read or written.
    assert line.startswith("error: table 'sessions' at "), line
    assert "it holds team sessions: open it with mode team" in line, line
    assert "having stored" not in line, line
    assert (tmp_path / "t.db").read_bytes() == before


@pytest.mark.parametrize("cluster", [False, True], ids=["redis", "redis-cluster"])
def test_commands_on_a_redis_store_that_is_not_there_say_so_and_leave_no_key(
    cluster: bool, tmp_path: Path
) -> None:
    from tests.redis_servers import server_url
    from tests.stores import redis_client, unique

    server = server_url(cluster)
    prefix = unique("sgt")
    source = f"{server}?prefix={prefix}"
    proc = savegame("copy", source, f"sqlite:///{tmp_path / 'dest.db'}", code=2)
    assert "there is nothing to copy" in errors(proc)
    assert list(tmp_path.iterdir()) == []
    for command in (["sessions", "list"], ["stats"], ["purge", "--older-than", "1d"]):
        proc = savegame(*command, "-s", source)
        assert f"nothing of mode agent is stored at {source} yet" in errors(proc)
    client = redis_client(server)
    try:
        assert list(client.scan_iter(match=f"*{prefix}*", count=1000)) == []
    finally:
        client.close()


def test_upgrading_a_redis_prefix_of_the_originals_layout_says_it_is_up_to_date() -> None:
    # Such a prefix is not there as a savegame store until upgraded: the command must not
    # say it made a new, empty one.
    from tests.redis_servers import server_url
    from tests.stores import redis_client, unique

    server = server_url(False)
    prefix = unique("sgt")
    url = f"{server}?prefix={prefix}"
    client = redis_client(server)
    try:
        client.set(f"{prefix}:old", json.dumps({"session_id": "old", "user_id": "u"}))
        proc = savegame("schema", "upgrade", "-s", url)
        assert errors(proc).splitlines() == [f"agent store at {url} is up to date"]
        assert open_storage(url).get_all_session_ids() == ["old"]
    finally:
        open_storage(url).drop()
        client.close()


def test_a_redis_prefix_holding_only_the_originals_sessions_is_said_to_await_an_upgrade(
    tmp_path: Path,
) -> None:
    # Listed before the upgrade, it looked like an empty store, or a mistyped URL.
    from tests.redis_servers import server_url
    from tests.stores import redis_client, unique

    server = server_url(False)
    prefix = unique("sgt")
    url = f"{server}?prefix={prefix}"
    command = f"savegame schema upgrade -s '{url}'"
    upgrade = f"`{command}` moves them"
    client = redis_client(server)
    try:
        client.set(f"{prefix}:other", "a string of another application")
        proc = savegame("sessions", "list", "-s", url)
        assert "nothing of mode agent is stored" in errors(proc)
        assert "original" not in errors(proc)
        client.set(f"{prefix}:old", json.dumps({"session_id": "old", "user_id": "u"}))
        proc = savegame("sessions", "list", "-s", url)
        assert errors(proc).splitlines() == [
            f"note: nothing of mode agent is stored at {url} in savegame's layout, but "
            f"sessions of the original RedisStorage under the prefix '{prefix}' are: {upgrade}"
        ]
        proc = savegame("copy", url, f"sqlite:///{tmp_path / 'c.db'}", code=2)
        assert upgrade in errors(proc)
        assert not (tmp_path / "c.db").exists()
        proc = savegame("sessions", "list", "-s", url, "--mode", "team")
        assert f"`{command} --mode team` moves them" in errors(proc)
        savegame("schema", "upgrade", "-s", url)
        assert b"old" in savegame("sessions", "list", "-s", url).stdout
    finally:
        open_storage(url).drop()
        client.delete(f"{prefix}:other", f"{prefix}:old")
        client.close()


def test_upgrading_from_a_redis_prefix_the_original_shared_between_modes(tmp_path: Path) -> None:
    # The agent sessions move within the prefix; the team sessions beside them are named,
    # and --original-prefix moves them to a team store's prefix of its own.
    from tests.redis_servers import server_url
    from tests.stores import redis_client, unique

    server = server_url(False)
    prefix = unique("sgt")
    shared, teams = f"{server}?prefix={prefix}", f"{server}?prefix={prefix}-teams"
    client = redis_client(server)
    try:
        client.set(f"{prefix}:a", json.dumps({"session_id": "a", "agent_id": "A"}))
        client.set(f"{prefix}:t", json.dumps({"session_id": "t", "team_id": "T"}))
        proc = savegame("schema", "upgrade", "-s", shared, code=2)
        assert f"'{prefix}:t'" in errors(proc)
        assert open_storage(shared).get_all_session_ids() == ["a"]
        savegame("schema", "upgrade", "-s", teams, "--mode", "team", "--original-prefix", prefix)
        assert open_storage(teams, mode="team").get_all_session_ids() == ["t"]
        assert not client.exists(f"{prefix}:t")
        sqlite = f"sqlite:///{tmp_path / 's.db'}"
        proc = savegame("schema", "upgrade", "-s", sqlite, "--original-prefix", prefix, code=2)
        assert "--original-prefix is for a Redis store" in errors(proc)
        assert not (tmp_path / "s.db").exists()
    finally:
        open_storage(shared).drop()
        open_storage(teams, mode="team").drop()
        client.delete(f"{prefix}:a", f"{prefix}:t")
        client.close()


def test_upgrading_a_store_that_is_not_there_makes_it_and_says_so(tmp_path: Path) -> None:
    # A first deployment's upgrade makes the store; a mistyped path must not pass unseen.
    url = f"sqlite:///{tmp_path / 'never.db'}"
    proc = savegame("schema", "upgrade", "-s", url)
    assert errors(proc).splitlines() == [
        f"nothing of mode agent was stored at {url}: made it, empty, at the latest layout "
        "(check the URL and --mode if a store was meant to be there)"
    ]
    assert (tmp_path / "never.db").exists()
    proc = savegame("schema", "upgrade", "-s", url)
    assert errors(proc).splitlines() == [f"agent store at {url} is up to date"]


def test_a_backup_of_a_folder_names_the_damaged_files_it_left_out_and_fails(
    tmp_path: Path,
) -> None:
    # Listings leave a damaged file out so that it breaks none of them; an export or a
    # copy that left it out without a word would be a backup missing a session.
    folder = tmp_path / "f"
    url = f"json:///{folder}"
    with open_storage(url) as storage:
        for sid in ("s1", "s2"):
            storage.upsert(AgentSession(session_id=sid, user_id="u"))
    (folder / "bad.json").write_text("{cut sho", encoding="utf-8")
    said = [
        f"left out: {folder / 'bad.json'} is not a readable json file",
        f"error: 1 stored item(s) at {url} could not be read and were left out; fix or delete "
        "them, then run again",
    ]
    proc = savegame("export", "-s", url, code=1)
    assert len(proc.stdout.decode().splitlines()) == 2
    assert errors(proc).splitlines() == ["exported 2 sessions", *said]
    copied = f"sqlite:///{tmp_path / 'copy.db'}"
    proc = savegame("copy", url, copied, code=1)
    assert errors(proc).splitlines() == ["copied 2, already there 0, of 2 sessions", *said]
    with open_storage(copied) as storage:
        assert sorted(storage.get_all_session_ids()) == ["s1", "s2"]
    note = "note: 1 stored item(s) could not be read and are left out; savegame export names them"
    for command in (["sessions", "list"], ["stats"]):
        assert errors(savegame(*command, "-s", url)).splitlines() == [note]
    (folder / "bad.json").unlink()
    assert errors(savegame("export", "-s", url)).splitlines() == ["exported 2 sessions"]


@pytest.mark.parametrize(
    "backend", [pytest.param(b, id=b.name) for b in BACKENDS if b.name in ("sqlite-file", "redis")]
)
def test_a_backup_of_a_store_with_a_damaged_session_names_it_and_takes_the_rest(
    backend: Backend, tmp_path: Path
) -> None:
    # One session whose run was removed behind savegame's back: every read of it raises.
    # The backups go on past it and fail at the end naming it; counts and listings say
    # they left it out. A purge, which reads headers only, judges it by its header (it is
    # stale, and removed), and keeps a session whose header's time cannot be read, its
    # age unknown, saying so.
    with open_store(backend, tmp_path) as store:
        seed(store(), "agent")
        assert store.lose_run is not None
        storage = store()
        store.lose_run(storage, "s2", 0)
        url = str(store.url)
        with pytest.raises(CorruptSessionError):
            storage.read("s2")
        proc = savegame("export", "-s", url, code=1)
        exported = [json.loads(line)["session_id"] for line in proc.stdout.decode().splitlines()]
        assert exported == ["s4", "s3", "s1", "s0"]
        said = errors(proc).splitlines()
        assert said[0] == "exported 4 sessions"
        assert said[1].startswith("left out: session 's2'")
        assert said[2].startswith(f"error: 1 stored item(s) at {redact(url)} could not be read")
        copied = f"json:///{tmp_path / 'copy'}"
        proc = savegame("copy", url, copied, code=1)
        assert errors(proc).splitlines()[0] == "copied 4, already there 0, of 5 sessions"
        with open_storage(copied) as copy:
            assert sorted(copy.get_all_session_ids()) == ["s0", "s1", "s3", "s4"]
        note = (
            "note: 1 stored item(s) could not be read and are left out; savegame export names them"
        )
        stats = savegame("stats", "-s", url, "--json")
        assert json.loads(stats.stdout)["sessions"] == 4
        assert errors(stats).splitlines() == [note]
        listed = savegame("sessions", "list", "-s", url, "--json")
        assert [row["id"] for row in json.loads(listed.stdout)] == ["s4", "s3", "s1", "s0"]
        assert errors(listed).splitlines() == [note]
        spoil = next(f for name, f in store.spoil_number.items() if name.endswith("updated_at"))
        spoil(storage, "s3", "many")
        purged = savegame("purge", "--older-than", "1s", "-s", url)
        assert sorted(purged.stdout.decode().split()) == ["s0", "s1", "s2", "s4"]
        assert errors(purged).splitlines()[1].startswith("note: 1 stored item(s) could not be read")
        assert storage.get_all_session_ids() == ["s3"]


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_an_import_of_a_backup_replaces_a_torn_file_and_says_so(tmp_path: Path, fmt: str) -> None:
    # Restoring a backup over a folder in which a session's file was torn is what an
    # import is for: it is written over, named, and the other sessions left as they are.
    folder = tmp_path / "f"
    url = f"{fmt}:///{folder}"
    backup = tmp_path / "backup.jsonl"
    lines = [json.dumps({"session_id": sid, "session_data": {"n": sid}}) for sid in ("a", "b")]
    backup.write_text("\n".join(lines) + "\n", encoding="utf-8")
    savegame("import", str(backup), "-s", url)
    torn = next(folder.glob("a.*"))
    torn.write_bytes(torn.read_bytes()[:12])
    proc = savegame("import", str(backup), "-s", url)
    assert errors(proc) == "imported 1 (1 over a damaged copy: a), already there 1, of 2 sessions\n"
    with open_storage(url) as storage:
        restored = storage.read("a")
        assert restored is not None
        assert restored.session_data == {"n": "a"}  # type: ignore[attr-defined]
    proc = savegame("import", str(backup), "-s", url)
    assert errors(proc) == "imported 0, already there 2, of 2 sessions\n"


# Characters that str.splitlines() breaks a line at and JSON writes as they are...
SEPARATORS = "\u2028 \u2029 \x85"
# ... and those it escapes.
CONTROLS = "\x1c \x1d \x1e \x0b \x0c"


def test_export_import_keeps_line_separators_in_text_and_the_order_of_keys(
    tmp_path: Path,
) -> None:
    src = f"sqlite:///{tmp_path / 'src.db'}"
    with open_storage(src) as storage:
        storage.create()
        storage.restore(
            AgentSession(
                session_id="ls",
                memory={"runs": [{"role": "user", "content": f"one{SEPARATORS}{CONTROLS}two"}]},
                session_data={"z": 1, "a": {"y": 2, "b": 3}},
                created_at=BASE,
                updated_at=BASE + 1,
            )
        )
    exported = savegame("export", "-s", src).stdout
    assert exported.count(b"\n") == 1
    assert SEPARATORS.encode() in exported  # written as they are, not escaped
    assert b'"runs":[{"role":"user","content":' in exported
    (tmp_path / "dump.jsonl").write_bytes(exported)

    dst = f"sqlite:///{tmp_path / 'dst.db'}"
    imported = savegame("import", str(tmp_path / "dump.jsonl"), "-s", dst)
    assert "imported 1, already there 0, of 1 session" in errors(imported)
    assert savegame("export", "-s", dst).stdout == exported
    with open_storage(dst) as storage:
        arrived = storage.read("ls")
        assert arrived is not None
        assert list(arrived.memory["runs"][0]) == ["role", "content"]  # type: ignore[attr-defined]
        content = arrived.memory["runs"][0]["content"]  # type: ignore[attr-defined]
        assert content == f"one{SEPARATORS}{CONTROLS}two"
        assert list(arrived.session_data) == ["z", "a"]  # type: ignore[attr-defined]

    # A file whose lines end in "\r\n" is read the same way.
    crlf = savegame("import", "-", "-s", dst, stdin=exported.replace(b"\n", b"\r\n"))
    assert "imported 0, already there 1, of 1 session" in errors(crlf)


def test_import_checks_every_line_before_writing_anything(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    file = tmp_path / "p.jsonl"
    file.write_text(
        '{"session_id":"ok1"}\n{"session_id":"ok2"}\n'
        '{"session_id":"bad","memory":{"v":NaN}}\n{"session_id":"ok3"}\n'
    )
    nan = savegame("import", str(file), "-s", url, code=2)
    assert errors(nan).splitlines() == [
        f"error: {file}:3: $['memory']['v']: nan cannot be stored as JSON"
    ]
    assert json.loads(text(savegame("sessions", "list", "-s", url, "--json"))) == []

    file.write_bytes('{"session_id":"ok1"}\n{"session_id":"café"}\n'.encode("latin-1"))
    latin = savegame("import", str(file), "-s", url, code=2)
    assert errors(latin).splitlines() == [
        f"error: {file}:2: not UTF-8 (invalid continuation byte: b'\\xe9' at byte 19 of the "
        "line); an export is UTF-8"
    ]
    assert json.loads(text(savegame("sessions", "list", "-s", url, "--json"))) == []

    file.write_text('{"session_id":"ok1"}\n{"session_id":"ok2","created_at":1.5}\n')
    when = savegame("import", str(file), "-s", url, code=2)
    assert f"error: {file}:2: session 'ok2': created_at must be None" in errors(when)

    twice = savegame(
        "import", "-", "-s", url, code=2, stdin=b'{"session_id":"d"}\n\n{"session_id":"d"}\n'
    )
    assert errors(twice).splitlines() == [
        "error: <stdin>:3: session 'd' is on line 1 too; an export holds each session once"
    ]
    assert json.loads(text(savegame("sessions", "list", "-s", url, "--json"))) == []


def test_import_replaces_a_session_changed_only_in_type(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'eq.db'}"
    line = (
        '{"agent_id":"x","created_at":1700000000,"memory":{"runs":[{"content":"hi","n":1}]},'
        '"session_data":{"flag":1},"session_id":"s1","updated_at":1700000000,"version":3}\n'
    )
    savegame("import", "-", "-s", url, stdin=line.encode())
    retyped = line.replace('"flag":1', '"flag":true').replace('"n":1}', '"n":1.0}')
    again = savegame("import", "-", "-s", url, stdin=retyped.encode())
    assert "imported 1, already there 0, of 1 session" in errors(again)
    stored = json.loads(text(savegame("export", "-s", url)))
    assert stored["session_data"] == {"flag": True}
    assert stored["memory"]["runs"][0]["n"] == 1.0
    assert type(stored["memory"]["runs"][0]["n"]) is float


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("export",), id="export"),
        pytest.param(("sessions", "list", "--json"), id="list-json"),
        pytest.param(("sessions", "list"), id="list"),
        pytest.param(("sessions", "show", "s1"), id="show"),
        pytest.param(("stats",), id="stats"),
    ],
)
def test_a_closed_standard_output_ends_the_command_quietly(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    """``savegame export | head -1``: the reader has gone; no message, exit code 141."""
    url = f"sqlite:///{tmp_path / 'pipe.db'}"
    many = "".join(f'{{"session_id":"s{i}","session_data":{{"n":{i}}}}}\n' for i in range(300))
    savegame("import", "-", "-s", url, stdin=many.encode())
    proc = _into_a_closed_pipe(*command, "-s", url)
    assert (proc.returncode, proc.stderr) == (141, b"")


@pytest.mark.parametrize("command", [("--help",), ("export", "--help"), ("sessions", "--help")])
def test_help_into_a_closed_pipe_ends_quietly(command: tuple[str, ...]) -> None:
    """``savegame --help | head -1``: the help, which typer prints through its own console,
    ends as the other commands do: no message, exit code 141."""
    proc = _into_a_closed_pipe(*command)
    assert (proc.returncode, proc.stderr) == (141, b"")


def _into_a_closed_pipe(*args: str) -> subprocess.CompletedProcess[bytes]:
    """The command run with its standard output a pipe whose reader is gone before the
    first byte is written."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        return subprocess.run(
            [str(SAVEGAME), *args],
            stdout=writer,
            stderr=subprocess.PIPE,
            timeout=300,
            env={**os.environ, "NO_COLOR": "1"},
        )
    finally:
        os.close(writer)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("stdout", ["closed", "full"])
@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("stats", "-s", "URL"), id="stats"),
        pytest.param(("export", "-s", "URL"), id="export"),
        pytest.param(("sessions", "list", "-s", "URL"), id="list"),
        pytest.param(("sessions", "show", "s1", "--json", "-s", "URL"), id="show-json"),
        pytest.param(("--version",), id="version"),
        pytest.param(("--help",), id="help"),
    ],
)
def test_a_standard_output_that_cannot_be_written_fails_in_one_line(
    command: tuple[str, ...], stdout: str, tmp_path: Path
) -> None:
    """``savegame stats >&-`` (from cron, say) or ``savegame export > /full/disk``: one
    error line and exit code 1, where a closed one raised a traceback as savegame started,
    and a full disk one under --version or --help."""
    if (stdout, command) == ("closed", ("--help",)):
        pytest.skip("typer prints help to Rich's null file, and exits 0")
    url = f"sqlite:///{tmp_path / 'out.db'}"
    savegame("import", "-", "-s", url, stdin=b'{"session_id": "s1"}\n')
    args = [url if arg == "URL" else arg for arg in command]
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            [str(SAVEGAME), *args],
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=300,
            env={**os.environ, "NO_COLOR": "1"},
            preexec_fn=(lambda: os.close(1)) if stdout == "closed" else None,
        )
    (line,) = proc.stderr.decode().splitlines()
    assert proc.returncode == 1, line
    assert line.startswith("error: "), line
    assert "standard output" in line, line


@pytest.mark.parametrize("url", ["memory://", "sqlite://", "sqlite:///:memory:"])
def test_a_store_in_the_commands_memory_is_said_to_end_with_it(url: str, tmp_path: Path) -> None:
    # "imported 1" into a store that is gone when the command ends, without a word, reads
    # as an import that was kept.
    backup = tmp_path / "one.jsonl"
    backup.write_bytes(b'{"session_id": "s1"}\n')
    proc = savegame("import", str(backup), "-s", url)
    assert errors(proc).splitlines() == [
        f"note: {url} is a store in this command's memory: what is stored there is gone when "
        "the command ends",
        "imported 1, already there 0, of 1 session",
    ]
    assert "memory" not in errors(savegame("stats", "-s", f"sqlite:///{tmp_path / 'a.db'}"))


def test_a_sqlite_url_naming_no_file_is_not_said_to_be_in_memory() -> None:
    """The note that the store is in memory came before the error that no file was named."""
    refused = savegame("stats", "-s", "sqlite:///", code=2)
    assert errors(refused).splitlines() == [
        "error: sqlite:/// names no file; give its path (sqlite:///app.db), or sqlite:// for a "
        "database in memory"
    ]


def test_commands_that_print_nothing_work_with_standard_output_closed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'out.db'}"
    savegame("import", "-", "-s", url, stdin=b'{"session_id": "s1"}\n{"session_id": "s2"}\n')
    closed = subprocess.run(
        [str(SAVEGAME), "sessions", "delete", "s1", "-s", url],
        capture_output=True,
        timeout=300,
        preexec_fn=lambda: os.close(1),
    )
    assert (closed.returncode, closed.stderr) == (0, b"deleted 1 session\n")
    assert json.loads(text(savegame("export", "-s", url)))["session_id"] == "s2"
    for fd in (0, 1):
        chat = subprocess.run(
            [str(SAVEGAME), "chat", "-s", url],
            capture_output=True,
            timeout=300,
            preexec_fn=lambda fd=fd: os.close(fd),  # type: ignore[misc]
        )
        assert (chat.returncode, chat.stderr.decode()) == (
            1,
            "error: [Errno 9] a chat needs standard input and output, and one is closed\n",
        )
    no_input = subprocess.run(
        [str(SAVEGAME), "import", "-", "-s", url],
        capture_output=True,
        timeout=300,
        preexec_fn=lambda: os.close(0),
    )
    assert no_input.returncode == 2
    assert no_input.stderr.decode().splitlines() == [
        "error: cannot read standard input: it is closed"
    ]


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("sessions", "list", "--json"), id="list-json"),
        pytest.param(("sessions", "list"), id="list"),
        pytest.param(("export",), id="export"),
    ],
)
def test_output_cut_short_by_a_closed_pipe_ends_the_command_quietly(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    """``savegame sessions list | head -c 1``: the reader goes away while the command writes
    more than the pipe holds; no message, exit code 141, and not 0 with the output cut."""
    url = f"sqlite:///{tmp_path / 'pipe.db'}"
    big = {"session_id": "big", "session_data": {"session_name": "x" * 300_000}}
    savegame("import", "-", "-s", url, stdin=json.dumps(big).encode() + b"\n")
    proc = subprocess.Popen(
        [str(SAVEGAME), *command, "-s", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.stdout is not None
    assert proc.stdout.read(1)
    proc.stdout.close()
    _, stderr = proc.communicate(timeout=300)
    assert (proc.returncode, stderr) == (141, b"")


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> Iterator[str]:
    for name, command in getattr(group, "commands", {}).items():
        path = (*prefix, name)
        if getattr(command, "commands", None):
            yield from _commands(command, path)
        else:
            yield " ".join(path)


def test_every_command_is_documented() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    commands = sorted(_commands(typer.main.get_command(app)))
    assert "sessions list" in commands
    for command in commands:
        assert re.search(rf"^#+ `savegame {re.escape(command)}\b", docs, re.M), (
            f"docs/cli.md has no section for `savegame {command}`"
        )


def test_every_option_is_documented() -> None:
    """docs/cli.md names every option of every command (``--original-prefix`` was missing)."""
    docs = DOCS.read_text(encoding="utf-8")
    root = typer.main.get_command(app)
    commands = [root, *(_command(root, path) for path in _commands(root))]
    options = {
        name
        for command in commands
        for param in command.params
        for name in getattr(param, "opts", [])
        if name.startswith("--")
    }
    assert {"--storage", "--batch-size", "--original-prefix"} <= options
    undocumented = sorted(
        name for name in options if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", docs)
    )
    assert undocumented == [], f"docs/cli.md does not name {', '.join(undocumented)}"


def test_every_url_scheme_is_documented() -> None:
    """docs/cli.md names every scheme a storage URL may have (``redis+cluster://`` was
    missing from its table of URLs)."""
    docs = DOCS.read_text(encoding="utf-8")
    assert "redis+cluster" in SCHEMES
    undocumented = sorted(s for s in SCHEMES if not re.search(rf"`{re.escape(s)}://", docs))
    assert undocumented == [], f"docs/cli.md does not name {', '.join(undocumented)}"


def _documented_command_lines() -> list[str]:
    """Every ``savegame ...`` line of the command's docs: the shell blocks of the README and
    docs/cli.md, and their inline code, cut at a comment, a pipe or a redirection."""
    lines = set()
    for doc in (DOCS, DOCS.parent.parent / "README.md", DOCS.parent / "backends.md"):
        text = doc.read_text(encoding="utf-8")
        spans = re.findall(r"`(savegame [^`]+)`", text)
        for block in re.findall(r"```(?:sh|console)\n(.*?)```", text, re.S):
            spans += [line.strip().removeprefix("$ ") for line in block.splitlines()]
        for span in spans:
            line = re.split(r"\s(?:#|\\?\||>|<)", " ".join(span.split()))[0]
            if line.startswith("savegame ") and "..." not in line:
                lines.add(line)
    return sorted(lines)


def test_every_documented_command_line_parses(capsys: pytest.CaptureFixture[str]) -> None:
    """The commands and options the docs write are the command's: each line, given
    ``--help``, is parsed by the real command line, which refuses an unknown command or
    option."""
    lines = _documented_command_lines()
    assert len(lines) > 20
    root = typer.main.get_command(app)
    wrong = []
    for line in lines:
        capsys.readouterr()
        # A usage error is reported (on stderr) and given as the exit code, 2.
        code = root.main([*shlex.split(line)[1:], "--help"], "savegame", standalone_mode=False)
        if code:
            wrong.append(f"{line}: {capsys.readouterr().err}")
    assert wrong == []


def _console_examples() -> dict[str, list[str]]:
    """The ``$ savegame ...`` lines of docs/cli.md's console blocks that show what they print,
    each with the lines it shows."""
    examples = {}
    for block in re.findall(r"```console\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S):
        for line, shown in re.findall(r"^\$ (savegame .*)\n((?:[^$\n].*\n)+)", block, re.M):
            examples[line] = shown.splitlines()
    return examples


def _seed_alice(folder: Path) -> None:
    """Five agent sessions and two team sessions of alice in app.db."""
    for mode, count in (("agent", 5), ("team", 2)):
        with open_storage(f"sqlite:///{folder}/app.db", mode) as storage:
            for i in range(count):
                storage.restore(make_session(mode, f"{mode}-{i}", 1, 10, user_id="alice"))


def _seed_1200_teams(folder: Path) -> None:
    """1,200 team sessions in agents.db."""
    with open_storage(f"sqlite:///{folder}/agents.db", "team") as storage:
        for i in range(1200):
            storage.restore(make_session("team", f"t{i}", 1, 10))


# Each example of docs/cli.md that shows what it prints, with what makes the store it reads.
CONSOLE_EXAMPLES: dict[str, Callable[[Path], None]] = {
    "savegame stats --mode robot": lambda folder: None,
    "savegame delete-user alice -s sqlite:///app.db": _seed_alice,
    'savegame copy sqlite:///agents.db "redis://localhost:6379/0" --mode team': _seed_1200_teams,
}


def test_every_console_example_that_shows_its_output_is_run() -> None:
    assert sorted(_console_examples()) == sorted(CONSOLE_EXAMPLES)


@pytest.mark.parametrize("line", sorted(CONSOLE_EXAMPLES))
def test_console_example_prints_what_the_docs_show(line: str, tmp_path: Path) -> None:
    """What docs/cli.md shows an example printing (stdout, then stderr) is what it prints. It
    runs as written, in a folder of its own, but that the Redis it names is a store of the
    tests' own (a prefix of the shared server)."""
    shown = _console_examples()[line]
    CONSOLE_EXAMPLES[line](tmp_path)
    with ExitStack() as stack:
        if "redis://localhost:6379/0" in line:
            redis = next((b for b in BACKENDS if b.name == "redis"), None)
            if redis is None:
                pytest.skip("redis is not available")
            store = stack.enter_context(open_store(redis, tmp_path, "team"))
            line = line.replace("redis://localhost:6379/0", str(store.url))
        env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}
        env.pop("SAVEGAME_STORAGE", None)
        proc = subprocess.run(
            [str(SAVEGAME), *shlex.split(line)[1:]],
            capture_output=True,
            timeout=300,
            cwd=tmp_path,
            env=env,
        )
    assert (proc.stdout + proc.stderr).decode("utf-8").splitlines() == shown


def _command(root: Any, path: str) -> Any:
    command = root
    for name in path.split():
        command = command.commands[name]
    return command


# -- moving sessions through every kind of store ----------------------------------------------

CHAIN = ["sqlite-file", "postgres", "redis", "json", "sqlite-file"]


def awkward_session(mode: str, session_id: str, i: int) -> Session:
    """A session with unicode of every kind and a memory of about a megabyte."""
    session = make_session(mode, session_id, 3 + i, 4000, user_id=f"użytkownik-{i % 2}")
    data = session.to_dict()
    data["session_data"] = {
        "unicode": "日本語 עברית 🎮👾 e\u0301 \u200d\ufeff",
        "nul": "a\x00b",
        "surrogate": "lone \ud800 half",
        "big": "x" * 1_000_000,
        "deep": {"a": [{"b": [1, 2.5, None, True, False, -0.0, 10**18]}]},
        "round": 3 + i,
        "n_runs": 4 + i,
    }
    data["extra_data"] = {"empty": {}, "list": [], "emoji_key_🎲": "ok"}
    data["created_at"] = 1_600_000_000 + i
    data["updated_at"] = 1_600_000_500 + i
    result = MODES[mode].session_class.from_dict(data)
    assert result is not None
    return result


@pytest.mark.parametrize("mode", list(MODES))
def test_round_trip_through_every_backend(mode: str, tmp_path: Path) -> None:
    """SQLite → PostgreSQL → Redis → JSON → SQLite by ``savegame copy``; nothing changes."""
    by_name = {b.name: b for b in BACKENDS}
    missing = [name for name in CHAIN if name not in by_name]
    if missing:
        pytest.skip(f"backends not available: {', '.join(missing)}")
    with ExitStack() as stack:
        stores = [
            stack.enter_context(open_store(by_name[name], tmp_path, mode, f"{i}-{name}"))
            for i, name in enumerate(CHAIN)
        ]
        first = stores[0]()
        first.create()
        originals = [first.restore(awkward_session(mode, f"rt-{i}", i)) for i in range(3)]
        originals.append(first.restore(make_session(mode, "plain/../x", 0, 10, None, None)))
        for src, dst in itertools.pairwise(stores):
            savegame("copy", str(src.url), str(dst.url), "--mode", mode, "--batch-size", "2")
        last = stores[-1]()
        assert sorted(last.get_all_session_ids()) == sorted(s.session_id for s in originals)
        for original in originals:
            arrived = last.read(original.session_id)
            assert arrived is not None
            for key, value in original.to_dict().items():
                assert getattr(arrived, key) == value, f"{key} of {original.session_id} changed"


def test_a_session_deleted_from_the_source_during_a_copy_is_counted_and_said() -> None:
    """The closing line said "copied 2, already there 0, of 3 sessions", one unaccounted."""
    source = InMemoryStorage()
    for session_id in ("a", "b", "c"):
        source.upsert(AgentSession(session_id=session_id))
    report = transfer.copy_sessions(
        source, InMemoryStorage(), on_start=lambda _: source.delete_session("b")
    )
    assert (report.total, report.copied, report.vanished) == (3, 2, 1)
    assert _moved("copied", report) == (
        "copied 2, already there 0, deleted at the source meanwhile 1, of 3 sessions"
    )


def test_copy_killed_half_way_then_run_again(tmp_path: Path) -> None:
    """kill -9 in the middle of a copy leaves whole sessions only; a second run finishes it."""
    by_name = {b.name: b for b in BACKENDS}
    source_backend = by_name.get("sqlite-file", JSON)
    with (
        open_store(source_backend, tmp_path, "agent", "src") as src,
        open_store(JSON, tmp_path, "agent", "dst") as dst,
    ):
        source = src()
        source.create()
        total = 300
        for i in range(total):
            source.upsert(make_session("agent", f"k{i:03}", i % 4, 2000))
        proc = subprocess.Popen(
            [str(SAVEGAME), "copy", str(src.url), str(dst.url), "--batch-size", "5"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        destination = dst()
        try:
            for _ in range(3000):
                if destination.table_exists() and destination.get_all_session_ids():
                    break
                time.sleep(0.01)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        partial = destination.get_all_session_ids()
        assert 0 < len(partial) < total, "the copy was not interrupted half-way"
        for session_id in partial:
            assert destination.read(session_id) == source.read(session_id)

        again = savegame("copy", str(src.url), str(dst.url), "--batch-size", "5")
        assert f"of {total} sessions" in errors(again)
        ids = dst().get_all_session_ids()
        assert len(ids) == len(set(ids)) == total
        assert ids == source.get_all_session_ids()
        for session_id in ids:
            assert dst().read(session_id) == source.read(session_id)


@pytest.mark.xdist_group("max_allowed_packet")
def test_a_session_the_server_refuses_stops_an_import_or_a_copy_saying_which_and_how_far(
    tmp_path: Path,
) -> None:
    """A session larger than MySQL's max_allowed_packet, refused as it is written: the error
    names its line and id and says what was stored before it, which the next run skips;
    it said "nothing was written", with the sessions before it stored."""
    mysql = next(b for b in BACKENDS if b.name == "mysql")
    with (
        open_store(mysql, tmp_path, "agent", "dst") as dst,
        mysql_packet_limit(str(dst.url).partition("?")[0]) as limit,
    ):
        lines = []
        for i, session_id in enumerate(("s0", "s1", "big", "s3")):
            content = "x" * (limit if session_id == "big" else 10)
            runs = [{"messages": [{"role": "user", "content": content}]}]
            times = {"created_at": BASE + i, "updated_at": BASE + i}
            lines.append(json.dumps({"session_id": session_id, "memory": {"runs": runs}, **times}))
        backup = tmp_path / "backup.jsonl"
        backup.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        refused = f"error: {backup}:3: session 'big' was not stored: a statement of "
        for written, there in ((2, 0), (0, 2)):
            (line,) = errors(
                savegame("import", str(backup), "-s", str(dst.url), code=2)
            ).splitlines()
            assert line.startswith(refused), line
            assert "max_allowed_packet" in line, line
            assert line.endswith(
                f"; the import stopped having stored 2 of 4 sessions ({written} written, "
                f"{there} already there), which running it again skips"
            ), line
            assert dst().get_all_session_ids() == ["s1", "s0"]

        source = f"sqlite:///{tmp_path / 'src.db'}"
        savegame("import", str(backup), "-s", source)
        (line,) = errors(savegame("copy", source, str(dst.url), code=2)).splitlines()
        assert line.startswith("error: session 'big' was not stored: a statement of "), line
        assert line.endswith(
            "; the copy stopped having stored 2 of 4 sessions (0 written, 2 already "
            "there), which running it again skips"
        ), line
        assert dst().get_all_session_ids() == ["s1", "s0"]


def test_an_import_into_a_folder_stopped_by_ctrl_c_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    """Ctrl-C while a session's file is being written removed the session but left its
    temporary file (as large as the session) in the folder, which no later write removed."""
    backup = tmp_path / "big.jsonl"
    runs = [{"messages": [{"role": "user", "content": "x" * 60_000_000}]}]
    backup.write_text(json.dumps({"session_id": "big", "memory": {"runs": runs}}) + "\n")
    folder = tmp_path / "sessions"
    url = f"json:///{folder}"

    def writing() -> bool:
        return folder.is_dir() and any(p.name.startswith(".tmp-") for p in folder.iterdir())

    outcome = _interrupted(["import", str(backup), "-s", url], writing)
    assert outcome == (
        130,
        "interrupted: the import stopped before storing any session\n",
    )
    assert [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")] == []
    assert not (folder / "big.json").exists()
    again = savegame("import", str(backup), "-s", url)
    assert "imported 1, already there 0, of 1 session" in errors(again)


def test_show_gives_a_workflows_input_output_and_steps(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    workflow = MODES["workflow"].session_class.from_dict(
        {
            "session_id": "wf",
            "memory": {
                "runs": [
                    {"input": {"args": ["cats"], "kwargs": {}}, "output": "report on cats"},
                    {"input": {"args": []}, "status": "failed", "error": "TypeError: no topic"},
                ]
            },
        }
    )
    steps = MODES["workflow_v2"].session_class.from_dict(
        {
            "session_id": "st",
            "runs": [
                {
                    "input": {"topic": "dogs"},
                    "steps": [
                        {"name": "fetch", "status": "completed", "output": "3 pages"},
                        {"name": "write", "status": "pending"},
                    ],
                },
                {
                    "input": {"topic": "owls"},
                    "status": "failed",
                    "steps": [{"name": "fetch", "status": "failed", "error": "OSError: offline"}],
                },
            ],
        }
    )
    assert workflow is not None
    assert steps is not None
    open_storage(url, mode="workflow").upsert(workflow)
    open_storage(url, mode="workflow_v2").upsert(steps)
    shown = text(savegame("sessions", "show", "wf", "-s", url, "-m", "workflow"))
    assert 'user: {"args": ["cats"], "kwargs": {}}' in shown
    assert "assistant: report on cats" in shown
    assert "run failed: TypeError: no topic" in shown
    shown = text(savegame("sessions", "show", "st", "-s", url, "-m", "workflow_v2"))
    assert 'user: {"topic": "dogs"}' in shown
    assert "step fetch: 3 pages" in shown
    assert "step write" not in shown
    assert "step fetch failed: OSError: offline" in shown


def test_show_gives_each_turns_question_and_answer_in_every_run_shape(tmp_path: Path) -> None:
    """The runs savegame writes, and those the original wrote: an agent's run with its
    ``message`` and ``response``, a run that is the model's response (its ``content`` and
    ``messages``, earlier turns among them marked ``from_history``), a team's run with its
    members' responses, a workflow's run with its ``input`` and ``response``, and a step
    workflow's run that is its response."""
    url = f"sqlite:///{tmp_path / 'shapes.db'}"
    agent_runs = [
        {"input": "hi", "content": "yo"},
        {
            "input": "q2",
            "content": "a2",
            "messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}],
        },
        {
            "message": {"role": "user", "content": "q3"},
            "response": {"content": "a3", "messages": [{"role": "user", "content": "q3"}]},
        },
        {
            "run_id": "r4",
            "content": "a4",
            "messages": [
                {"role": "system", "content": "be kind"},
                {"role": "user", "content": "q2", "from_history": True},
                {"role": "user", "content": "q4"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "t"}]},
                {"role": "tool", "content": "42"},
                {"role": "assistant", "content": "a4"},
            ],
        },
        {"run_id": "r5", "content": "a5", "content_type": "str"},
        {"message": {"role": "user", "content": "q6"}, "response": {"run_id": "r6"}},
        {"input": "q7", "content": {"city": "Oslo"}},
    ]
    team_runs = [
        {
            "message": {"role": "user", "content": "tq1"},
            "member_responses": [{"response": {"content": "member said"}}],
            "response": {"content": "ta1", "team_id": "t"},
        },
        {"input": "tq2", "content": "ta2", "member": "writer", "leader_answer": "writer"},
    ]
    workflow_runs = [{"input": {"topic": "cats"}, "response": {"content": "on cats"}}]
    step_runs = [{"run_id": "w1", "content": "wa1", "workflow_name": "w", "status": "COMPLETED"}]
    sessions = {
        "agent": {"session_id": "a", "memory": {"runs": agent_runs}},
        "team": {"session_id": "t", "memory": {"runs": team_runs}},
        "workflow": {"session_id": "w", "memory": {"runs": workflow_runs}},
        "workflow_v2": {"session_id": "s", "runs": step_runs},
    }
    shown = {}
    for mode, data in sessions.items():
        session = MODES[mode].session_class.from_dict(data)
        assert session is not None
        open_storage(url, mode=mode).upsert(session)
        shown[mode] = text(savegame("sessions", "show", data["session_id"], "-s", url, "-m", mode))
    conversation = shown["agent"].split("Conversation", 1)[1].split("memory", 1)[0]
    assert [line for line in conversation.splitlines() if line.strip()] == [
        "user: hi",
        "assistant: yo",
        "user: q2",
        "assistant: a2",
        "user: q3",
        "assistant: a3",
        "system: be kind",
        "user: q4",
        "assistant: (no text)",
        "tool: 42",
        "assistant: a4",
        "assistant: a5",
        "user: q6",
        "assistant: (no text)",
        "user: q7",
        'assistant: {"city": "Oslo"}',
    ]
    for said in ("user: tq1", "assistant: ta1", "user: tq2", "assistant: ta2"):
        assert said in shown["team"]
    assert 'user: {"topic": "cats"}' in shown["workflow"]
    assert "assistant: on cats" in shown["workflow"]
    assert "assistant: wa1" in shown["workflow_v2"]


def test_a_table_of_the_originals_layout_is_upgraded_by_the_command_it_names(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    row = {"session_id": "s", "user_id": "u", "memory": {"runs": [{"run_id": "0"}]}}
    write_original_table(url, "agent_sessions", None, [row])
    refused = savegame("sessions", "rename", "s", "Trip", "-s", url, code=1)
    assert "savegame schema upgrade, with the same --storage and --mode" in errors(refused)
    savegame("schema", "upgrade", "-s", url)
    savegame("sessions", "rename", "s", "Trip", "-s", url)
    got = open_storage(url).read("s")
    assert got is not None
    assert got.memory == {"runs": [{"run_id": "0"}]}  # type: ignore[attr-defined]
    assert got.session_data == {"session_name": "Trip"}  # type: ignore[attr-defined]


def test_an_export_stopped_by_a_session_json_lines_cannot_carry_names_it(tmp_path: Path) -> None:
    # The original's SQLite tables hold the NaN of json.dumps, which savegame reads as it is.
    url = f"sqlite:///{tmp_path / 'old.db'}"
    rows = [
        {"session_id": "fine", "memory": {"runs": []}, "created_at": 2},
        {"session_id": "odd", "memory": {"runs": [{"ratio": float("nan")}]}, "created_at": 1},
    ]
    write_original_table(url, "agent_sessions", None, rows)
    stopped = savegame("export", "-s", url, code=2)
    assert [json.loads(line)["session_id"] for line in text(stopped).splitlines()] == ["fine"]
    assert "session 'odd' cannot be exported: $['memory']['runs'][0]['ratio']: nan" in errors(
        stopped
    )
    assert "having written 1 session: what it wrote is not a whole backup" in errors(stopped)


def test_a_count_or_json_of_a_session_json_lines_cannot_carry_names_it(tmp_path: Path) -> None:
    # stats measures each session by its export line, and show --json prints that line:
    # both ended with the value's path alone, naming no session, stats on a whole store.
    url = f"sqlite:///{tmp_path / 'old.db'}"
    rows = [{"session_id": "odd", "memory": {"runs": [{"ratio": float("inf")}]}, "created_at": 1}]
    write_original_table(url, "agent_sessions", None, rows)
    value = "$['memory']['runs'][0]['ratio']: inf cannot be stored as JSON"
    counted = savegame("stats", "-s", url, code=2)
    measured = "error: session 'odd' cannot be measured as an export line"
    assert errors(counted) == f"{measured}: {value}\n"
    shown = savegame("sessions", "show", "odd", "--json", "-s", url, code=2)
    assert errors(shown) == f"error: session 'odd' cannot be shown as JSON: {value}\n"
    assert "inf" in text(savegame("sessions", "show", "odd", "-s", url)).lower()


def test_a_folder_of_another_mode_is_said_so_and_never_exported_as_empty(tmp_path: Path) -> None:
    # Another mode lists none of a folder's sessions: without a word, an export in the
    # default mode of a folder of team sessions would be an empty backup that looks made.
    folder = tmp_path / "f"
    url = f"json:///{folder}"
    with open_storage(url, mode="team") as storage:
        storage.upsert(TeamSession(session_id="t1", team_id="squad", user_id="u"))
    note = f"note: {url} keeps team sessions, and none of mode agent; pass --mode team to see them"
    proc = savegame("export", "-s", url, code=2)
    assert proc.stdout == b""
    assert errors(proc).splitlines() == [
        note,
        "exported 0 sessions",
        f"error: exported nothing: {url} keeps team sessions (pass --mode team)",
    ]
    proc = savegame("copy", url, f"sqlite:///{tmp_path / 'copy.db'}", code=2)
    assert errors(proc).splitlines() == [
        f"error: {url} keeps team sessions, and none of mode agent: there is nothing to copy "
        "(pass --mode team)"
    ]
    assert not (tmp_path / "copy.db").exists()
    for command in (["sessions", "list"], ["stats"]):
        assert errors(savegame(*command, "-s", url)).splitlines()[0] == note
    assert len(savegame("export", "-s", url, "-m", "team").stdout.splitlines()) == 1


def test_a_url_of_one_store_per_mode_names_the_mode_its_sessions_are_in(tmp_path: Path) -> None:
    # sqlite:///app.db holds a team_sessions table and no agent_sessions: the commands in
    # the default mode said to pass --storage, which had been passed, rather than --mode.
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with open_storage(url, mode="team") as storage:
        storage.upsert(TeamSession(session_id="t1", team_id="squad", user_id="u"))
    note = f"note: {url} keeps team sessions, and none of mode agent; pass --mode team to see them"
    for command in (["sessions", "list"], ["stats"], ["purge", "--older-than", "1d"]):
        assert errors(savegame(*command, "-s", url)).splitlines()[0] == note
    shown = savegame("sessions", "show", "t1", "-s", url, code=2)
    assert errors(shown).splitlines() == [note, f"error: no agent session 't1' in {url}"]
    proc = savegame("export", "-s", url, code=2)
    assert proc.stdout == b""
    assert errors(proc).splitlines()[-1] == (
        f"error: exported nothing: {url} keeps team sessions (pass --mode team)"
    )
    proc = savegame("copy", url, f"sqlite:///{tmp_path / 'copy.db'}", code=2)
    assert errors(proc).splitlines() == [
        f"error: {url} keeps team sessions, and none of mode agent: there is nothing to copy "
        "(pass --mode team)"
    ]
    assert not (tmp_path / "copy.db").exists()
    named = f"{url}?table=agent_sessions"
    assert "nothing of mode agent is stored" in errors(savegame("stats", "-s", named))
    with open_storage(url, mode="team") as storage:
        storage.delete_session("t1")
    assert "nothing of mode agent is stored" in errors(savegame("stats", "-s", url))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


def test_an_import_of_a_line_nested_too_deeply_to_parse_is_refused_naming_the_line(
    tmp_path: Path,
) -> None:
    """A line nested some thousand levels deep ended the import with a RecursionError's
    traceback and exit code 1, where one nested 600 levels deep is refused in one line."""
    backup = tmp_path / "deep.jsonl"
    for depth in (600, 100_000):
        nested = "[" * depth + "]" * depth
        backup.write_text(f'{{"session_id": "ok"}}\n{{"session_id": "d", "memory": {nested}}}\n')
        url = f"sqlite:///{tmp_path / 'a.db'}"
        (line,) = errors(savegame("import", str(backup), "-s", url, code=2)).splitlines()
        assert line.startswith(f"error: {backup}:2: "), line
        assert line.endswith("nested deeper than 512 levels"), line
        assert open_storage(url).get_all_session_ids() == []


def test_an_import_of_a_line_with_a_key_twice_is_refused_naming_the_key(tmp_path: Path) -> None:
    backup = tmp_path / "dup.jsonl"
    backup.write_text('{"session_id": "s", "user_id": "alice", "user_id": "bob"}\n')
    url = f"sqlite:///{tmp_path / 'a.db'}"
    (line,) = errors(savegame("import", str(backup), "-s", url, code=2)).splitlines()
    assert line.startswith(f"error: {backup}:1: the key 'user_id' is in one JSON object twice")
    assert open_storage(url).get_all_session_ids() == []


def _interrupted(
    args: list[str], ready: Callable[[], bool], stdout: Any = subprocess.DEVNULL
) -> tuple[int, str]:
    """Runs savegame with ``args`` (its standard output to ``stdout``), sends it SIGINT
    (Ctrl-C) once ``ready()`` says it has got far enough, and gives its exit code and
    stderr."""
    proc = subprocess.Popen([str(SAVEGAME), *args], stdout=stdout, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready():
            assert proc.poll() is None, "it ended before it was interrupted"
            assert time.monotonic() < deadline, "it never got that far"
            time.sleep(0.001)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr.decode()


_HOW_FAR = re.compile(
    r"interrupted: the (import|copy) stopped having stored (\d+) of 1500 sessions "
    r"\((\d+) written, (\d+) already there\), which running it again skips\n"
)


@pytest.mark.parametrize("command", ["import", "copy"])
def test_an_import_or_copy_stopped_by_ctrl_c_says_how_far_it_got(
    tmp_path: Path, command: str
) -> None:
    """Ctrl-C ended them with exit code 130 and nothing on stderr, so a user could not tell
    whether anything had been stored."""
    backup = tmp_path / "all.jsonl"
    with backup.open("w") as f:
        for i in range(1500):
            runs = [{"messages": [{"role": "user", "content": "x" * 2000}]}]
            when = 1_700_000_000 + i
            line = {"session_id": f"s{i:04}", "created_at": when, "updated_at": when}
            f.write(json.dumps({**line, "memory": {"runs": runs}}) + "\n")
    folder = tmp_path / "sessions"
    url = f"json:///{folder}"
    if command == "import":
        args = ["import", str(backup), "-s", url]
    else:
        source = f"sqlite:///{tmp_path / 'src.db'}"
        savegame("import", str(backup), "-s", source)
        args = ["copy", source, url, "--batch-size", "10"]
    # Some sessions there already, so that the count tells them apart from the new ones.
    head = tmp_path / "head.jsonl"
    head.write_text("".join(backup.read_text().splitlines(keepends=True)[:5]))
    savegame("import", str(head), "-s", url)

    code, stderr = _interrupted(
        args, lambda: folder.is_dir() and len(list(folder.glob("*.json"))) >= 300
    )
    assert code == 130, stderr
    told = _HOW_FAR.fullmatch(stderr)
    assert told is not None, stderr
    verb, done, written, there = told[1], *map(int, told.groups()[1:])
    assert (verb, done) == (command, written + there)
    stored = len(open_storage(url).get_all_session_ids())
    # A session whose file is in place may not be counted yet: its write had not returned.
    assert 300 - 1 <= done <= stored <= done + 1 < 1500
    assert there == 5  # the oldest first, as the copy goes; the file's order, as the import does
    again = errors(savegame(*args))
    assert f"already there {stored}, of 1500 sessions" in again, again


def test_an_export_stopped_by_ctrl_c_says_its_output_is_no_whole_backup(tmp_path: Path) -> None:
    """Ctrl-C ended it with exit code 130 and nothing on stderr, leaving in the file it was
    sent to what looks like a backup, without the sessions after."""
    url = f"sqlite:///{tmp_path / 'src.db'}"
    storage = open_storage(url)
    runs = [{"run_id": str(j), "content": "y" * 200} for j in range(50)]
    for i in range(3000):
        storage.upsert(AgentSession(session_id=f"s{i:04}", memory={"runs": runs}))
    storage.close()
    backup = tmp_path / "backup.jsonl"

    def lines() -> int:
        return backup.read_bytes().count(b"\n") if backup.exists() else 0

    with backup.open("wb") as out:
        code, stderr = _interrupted(["export", "-s", url], lambda: lines() >= 300, out)
    assert code == 130, stderr
    told = re.fullmatch(
        r"interrupted: the export stopped having written (\d+) sessions: what it wrote is "
        r"not a whole backup\n",
        stderr,
    )
    assert told is not None, stderr
    written = int(told[1])
    assert 300 <= written < 3000
    # Counted once handed to the output: one more may be out before the count.
    assert written <= lines() <= written + 1


_IDS = [f"s{i:04}" for i in range(1500)]

_CTRL_C_AFTER_REMOVALS = """
import os, signal, sys

from savegame.cli import main

left = int(sys.argv[1])
unlink = os.unlink


def counted(path, *args, **kwargs):
    global left
    unlink(path, *args, **kwargs)
    if str(path).endswith(".json"):
        left -= 1
        if left == 0:
            os.kill(os.getpid(), signal.SIGINT)


os.unlink = counted
sys.argv = ["savegame", *sys.argv[2:]]
sys.exit(main())
"""
"""Runs savegame with the arguments after the first, and sends its own process SIGINT
(Ctrl-C) right after it has removed as many session files as the first says."""


@pytest.mark.parametrize(
    ("command", "told"),
    [
        (
            ["purge", "--older-than", "1d"],
            "the purge stopped having removed (\\d+) sessions; running it again removes the rest",
        ),
        (
            ["delete-user", "u"],
            "the deletion of user 'u' stopped having removed (\\d+) sessions; running it again "
            "removes the rest",
        ),
        (
            ["sessions", "delete", *_IDS],
            "the deletion stopped having deleted (\\d+) of 1500 sessions; the others are still "
            "there",
        ),
    ],
    ids=["purge", "delete-user", "sessions-delete"],
)
def test_a_purge_or_erasure_stopped_by_ctrl_c_says_how_many_it_removed(
    tmp_path: Path, command: list[str], told: str
) -> None:
    """Ctrl-C ended them with exit code 130 and nothing on stderr (``sessions delete`` said
    only how many it had deleted), so a user could not tell whether any session had been
    removed, nor that the rest were still there."""
    backup = tmp_path / "old.jsonl"
    with backup.open("w") as f:
        for i, session_id in enumerate(_IDS):
            when = BASE + i
            line = {"session_id": session_id, "user_id": "u", "created_at": when}
            f.write(json.dumps({**line, "updated_at": when}) + "\n")
    folder = tmp_path / "sessions"
    url = f"json:///{folder}"
    savegame("import", str(backup), "-s", url)

    # Ctrl-C right after the 300th session file is removed: sent by the test once it had
    # seen them go, it could come after the command, on a busy machine, had removed them all.
    ended = subprocess.run(
        [sys.executable, "-c", _CTRL_C_AFTER_REMOVALS, "300", *command, "-s", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=120,
    )
    code, stderr = ended.returncode, ended.stderr.decode()
    assert code == 130, stderr
    said = re.fullmatch(f"interrupted: {told}\n", stderr)
    assert said is not None, stderr
    left = open_storage(url).get_all_session_ids()
    removed = 1500 - len(left)
    # A session whose file is gone may not be counted yet: its removal had not returned.
    assert 300 - 1 <= int(said[1]) <= removed <= int(said[1]) + 1 < 1500
    # Run again, each removes the rest (sessions delete: those still there).
    savegame(*([*command[:2], *left] if command[0] == "sessions" else command), "-s", url)
    assert open_storage(url).get_all_session_ids() == []


@pytest.mark.parametrize(
    ("command", "usage"),
    [(("sessions", "rename"), "ID} {NAME}"), (("sessions", "delete"), "{ID}...")],
)
def test_the_usage_names_the_arguments_as_the_docs_do(command: tuple[str, ...], usage: str) -> None:
    """The usage read ``{ID} {name}`` and ``{ID...}...``, where the docs write ``ID NAME`` and
    ``ID [ID...]``."""
    shown = savegame(*command, "--help").stdout.decode()
    line = next(line for line in shown.splitlines() if "Usage:" in line)
    assert usage in line, line
    assert "{name}" not in line, line
    assert "ID..." not in line, line


@pytest.mark.parametrize("name", ["", "  ", "\t"])
def test_a_rename_to_no_name_is_refused(tmp_path: Path, name: str) -> None:
    """``sessions rename s "$NAME"`` with NAME unset stored an empty name."""
    url = f"sqlite:///{tmp_path / 'names.db'}"
    with open_storage(url) as storage:
        storage.upsert(AgentSession(session_id="s", session_data={"session_name": "Trip"}))
    refused = savegame("sessions", "rename", "s", name, "-s", url, code=2)
    assert "Invalid value for 'NAME': a session's name cannot be empty or only spaces" in " ".join(
        errors(refused).replace("│", " ").split()
    )
    with open_storage(url) as storage:
        kept = storage.read("s")
        assert kept is not None
        assert kept.session_data == {"session_name": "Trip"}  # type: ignore[attr-defined]


ROOT_USAGE = "Usage: savegame [OPTIONS] COMMAND [ARGS]..."

USAGE_ERRORS = [
    (
        ("stats", "--mode", "robot"),
        "Usage: savegame stats [OPTIONS]",
        "error: Invalid value for '--mode' / '-m' (env var: 'SAVEGAME_MODE'): 'robot' is not a "
        "mode; use one of agent, team, workflow, workflow_v2",
    ),
    (
        ("sessions", "list", "--usr", "alice"),
        "Usage: savegame sessions list [OPTIONS]",
        "error: No such option: --usr (Possible options: --user)",
    ),
    (
        ("purge", "--older-than", "90"),
        "Usage: savegame purge [OPTIONS]",
        "error: Invalid value for '--older-than': '90' has a number without its unit; write 90d "
        "for days, 90s for seconds (units: s, m, h, d, w)",
    ),
    (("purge",), "Usage: savegame purge [OPTIONS]", "error: Missing option '--older-than'."),
    (
        ("sessions", "show"),
        "Usage: savegame sessions show [OPTIONS] {ID}",
        "error: Missing argument 'ID'.",
    ),
    (("stat",), ROOT_USAGE, "error: No such command 'stat'. Did you mean 'stats'?"),
    (
        ("sessions", "lists"),
        "Usage: savegame sessions [OPTIONS] COMMAND [ARGS]...",
        "error: No such command 'lists'. Did you mean 'list'?",
    ),
    (("--debug=yes", "stats"), ROOT_USAGE, "error: Option '--debug' does not take a value."),
    (
        ("export", "--storage"),
        "Usage: savegame export [OPTIONS]",
        "error: Option '--storage' requires an argument.",
    ),
    (
        ("sessions", "rename", "s", " "),
        "Usage: savegame sessions rename [OPTIONS] {ID} {NAME}",
        "error: Invalid value for 'NAME': a session's name cannot be empty or only spaces",
    ),
]


@pytest.mark.parametrize(
    ("args", "usage", "error"), USAGE_ERRORS, ids=[" ".join(a) for a, _, _ in USAGE_ERRORS]
)
def test_a_usage_error_is_the_usage_and_one_error_line(
    args: tuple[str, ...], usage: str, error: str
) -> None:
    """A bad flag or value, a missing argument and an unknown command were told in typer's
    Rich panel, the message broken over lines 80 columns wide between box characters,
    which a script could not grep."""
    proc = savegame(*args, code=2)
    assert (errors(proc), proc.stdout) == (f"{usage}\n{error}\n", b"")


@pytest.mark.parametrize("number", ["9" * 5000, "\u0661\u0662"], ids=["5000 digits", "arabic"])
def test_an_age_of_digits_int_reads_apart_is_refused_as_not_an_age(number: str) -> None:
    """``int()`` reads digits of other scripts, which an age was taken in, and raises its
    own ValueError past 4,300 digits, which ended a purge with Python's message."""
    proc = savegame("purge", "--older-than", f"{number}d", "-s", "memory://", code=2)
    assert errors(proc) == (
        "Usage: savegame purge [OPTIONS]\n"
        f"error: Invalid value for '--older-than': '{number}d' is not an age; write it like "
        "30d, 12h, 90m or 1w2d\n"
    )


def test_a_usage_error_stays_on_one_line_on_a_narrow_terminal() -> None:
    args, usage, error = USAGE_ERRORS[0]
    assert on_terminal(*args, columns=30, stream="stderr", code=2) == f"{usage}\n{error}\n"


def test_a_flag_without_its_value_shows_the_usage_of_its_command() -> None:
    """Click's parser names no command in the error of a flag that lacks its value or has
    one it does not take, which then showed no usage."""
    root = typer.main.get_command(app)
    for path in ["", "sessions", *_commands(root)]:
        proc = savegame(*path.split(), "--help=yes", code=2)
        usage, error = errors(proc).splitlines()
        assert usage.startswith(" ".join(["Usage: savegame", *path.split(), "[OPTIONS]"])), path
        assert error == "error: Option '--help' does not take a value."


def test_a_usage_error_hides_the_password_of_a_url_it_quotes() -> None:
    """``savegame stats postgresql://app:secret@db/app``, --storage forgotten, showed the
    password in its error."""
    for args in (
        ("stats", "postgresql+psycopg://app:hunter2@db/app"),
        ("copy", "memory://", "memory://", "redis://:hunter2@db:6379/0"),
        ("sessions", "list", "--mode", "mysql://root:hunter2@db/app"),
    ):
        proc = savegame(*args, code=2)
        assert "hunter2" not in errors(proc)
        assert ":***@" in errors(proc)


def test_a_sqlite_file_whose_path_is_not_utf8_is_a_store_like_any(tmp_path: Path) -> None:
    """A path whose bytes are not UTF-8 (``caf\\xe9``, which Python reads as ``caf\\udce9``)
    was refused as a bad URL: "'utf-8' codec can't encode character '\\udce9'"."""
    folder = tmp_path / "caf\udce9"
    url = f"sqlite:///{folder / 'app.db'}"
    savegame("import", "-", "-s", url, stdin=b'{"session_id":"s1","user_id":"u"}\n')
    assert os.listdir(os.fsencode(tmp_path)) == [b"caf\xe9"]
    listed = json.loads(text(savegame("sessions", "list", "-s", url, "--json")))
    assert [row["id"] for row in listed] == ["s1"]
    missing = savegame("sessions", "show", "s2", "-s", url, code=2)
    shown = url.replace("\udce9", "\\udce9")
    assert errors(missing) == f"error: no agent session 's2' in {shown}\n"


@pytest.mark.parametrize("ignored", [False, True], ids=["default", "ignored"])
def test_ctrl_c_as_the_command_exits_ends_it_quietly_unless_ignored(
    tmp_path: Path, ignored: bool
) -> None:
    # Pressed as the interpreter shut down (the drivers' pools closing, after an import had
    # said what it stored), it printed a KeyboardInterrupt's traceback. A command started
    # with it ignored (one a shell script runs in the background) goes on ignoring it.
    url = f"sqlite:///{tmp_path / 'a.db'}"
    pressed = (
        "import atexit, os, signal, time\n"
        + ("signal.signal(signal.SIGINT, signal.SIG_IGN)\n" if ignored else "")
        + "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(1)))\n"
        "from savegame.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", pressed, "stats", "-s", url],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == (0 if ignored else 130), proc.stderr
    assert b"Traceback" not in proc.stderr
    assert b"sessions" in proc.stdout
