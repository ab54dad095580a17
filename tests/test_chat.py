"""``savegame chat`` driven as a person would: a real process, lines on stdin, text on stdout."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from savegame.agent import Agent
from savegame.chat import CHAT_AGENT_ID, unshown
from savegame.models.offline import OfflineModel
from savegame.storage.session import AgentSession
from savegame.storage.url import open_storage
from savegame.testing import Store
from tests.model_server import ModelServer, model_server
from tests.stores import BACKENDS


def chat(*args: str, lines: list[str], cwd: Path | None = None, **env: str) -> list[str]:
    """Runs ``savegame chat ARGS`` with ``lines`` typed in; returns what it printed."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SAVEGAME_"))}
    proc = subprocess.run(
        [sys.executable, "-c", "from savegame.cli import main; main()", "chat", *args],
        input="".join(line + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**clean, **env},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [line.removeprefix("you> ") for line in proc.stdout.splitlines()]


@pytest.fixture
def url(backend_store: Store) -> str:
    """A store of every backend that other processes can open."""
    backend_store.require("processes")
    assert backend_store.url is not None
    return backend_store.url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """A store of the default backend, for what does not depend on the backend."""
    backend = next(b for b in BACKENDS if b.name == "sqlite-file")
    with backend.make(tmp_path, "agent") as store:
        assert store.url is not None
        yield store.url


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with model_server() as running:
        yield running


def test_quitting_and_coming_back_shows_and_continues_the_conversation(url: str) -> None:
    first = chat(
        "--storage", url, "--session", "c1", "--user", "ada", lines=["My name is Ada.", "/quit"]
    )
    assert "model offline" in first[0]
    assert "new session c1" in first
    assert any(line.startswith("assistant> Noted: your name is Ada.") for line in first)
    hint = f"savegame chat --session c1 --user ada --storage {shlex.quote(url)}"
    assert first[-1] == f"bye: resume with  {hint}"
    second = chat("--storage", url, "--session", "c1", "--user", "ada", lines=["What is my name?"])
    at = second.index("resuming session c1: 1 earlier turn")
    assert second[at + 1] == "  you: My name is Ada."
    assert second[at + 2].startswith("  assistant: Noted: your name is Ada.")
    assert any(line.startswith("assistant> Your name is Ada.") for line in second)
    stored = open_storage(url, mode="agent").read("c1")
    assert stored is not None
    assert stored.user_id == "ada"  # type: ignore[attr-defined]
    assert len(stored.memory["runs"]) == 2  # type: ignore[attr-defined]


def test_following_the_resume_hint_comes_back_to_the_same_store(tmp_path: Path) -> None:
    """The hint names the store it was given (by ``-s``, as every command takes it), so
    running it in another folder resumes the conversation instead of starting one."""
    url = f"sqlite:///{tmp_path / 'chats' / 'my chats.db'}"
    (tmp_path / "chats").mkdir()
    first = chat("-s", url, "--session", "trip", lines=["My name is Ada."])
    hint = first[-1].removeprefix("bye: resume with  ")
    assert hint == f"savegame chat --session trip --storage '{url}'"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    words = shlex.split(hint)
    assert words[:2] == ["savegame", "chat"]
    again = chat(*words[2:], lines=["What is my name?"], cwd=elsewhere)
    assert "resuming session trip: 1 earlier turn" in again
    assert any(line.startswith("assistant> Your name is Ada.") for line in again)
    assert not (elsewhere / "savegame.db").exists()
    # A chat in the default store says so by leaving the store out.
    here = chat("--session", "h", "--user", "bo", lines=["hi"], cwd=elsewhere)
    assert here[-1] == "bye: resume with  savegame chat --session h --user bo"
    # ... unless SAVEGAME_STORAGE names another, which would stand in for it.
    default = "sqlite:///savegame.db"
    here = chat("--session", "h", "-s", default, lines=["hi"], cwd=elsewhere, SAVEGAME_STORAGE=url)
    assert here[-1] == f"bye: resume with  savegame chat --session h --user bo --storage {default}"


def test_invisible_characters_in_ids_and_names_are_shown_as_escapes(sqlite_url: str) -> None:
    """A zero-width space in a session id, a line separator in its name: printed as they
    are, the id looked like another and the name broke its line in two."""
    out = chat(
        "--storage",
        sqlite_url,
        "--session",
        "a\u200bb",
        lines=["hello", "/rename x\u2028y\u200d", "/sessions", "/load a\u200bb"],
    )
    assert "new session a\\u200bb" in out
    assert "session a\\u200bb is now called 'x\\u2028y\\u200d'" in out
    (listed,) = [line for line in out if " 1 turn  " in line]
    assert listed.startswith("* a\\u200bb  x\\u2028y\\u200d ")
    assert "resuming session a\\u200bb (x\\u2028y\\u200d): 1 earlier turn" in out
    assert not any(re.search("[\u200b\u200d\u2028]", line) for line in out), out


def test_the_resume_hint_of_a_session_id_with_invisible_characters_comes_back_to_it(
    sqlite_url: str,
) -> None:
    """Shown as escapes inside plain quotes, a zero-width space or a tab reached the shell
    as a backslash and letters: the hint started a new, empty session, shown by the same
    escapes as the one left."""
    session = "a\u200bb\tc'd\\"
    first = chat("--storage", sqlite_url, "--session", session, lines=["My name is Ada."])
    hint = first[-1].removeprefix("bye: resume with  ")
    assert not any(unshown(char) for char in hint), hint
    said = subprocess.run(
        ["bash", "-c", f'printf "%s\\0" {hint}'], capture_output=True, text=True, check=True
    ).stdout.split("\0")[:-1]
    assert said == ["savegame", "chat", "--session", session, "--storage", sqlite_url]
    again = chat(*said[2:], lines=["What is my name?"])
    assert "resuming session a\\u200bb\\tc'd\\: 1 earlier turn" in again
    assert any(line.startswith("assistant> Your name is Ada.") for line in again)


def test_in_chat_commands_list_start_rename_and_load_sessions(sqlite_url: str) -> None:
    url = sqlite_url
    out = chat(
        "--storage",
        url,
        "--session",
        "first",
        lines=[
            "hello",
            "/rename greetings",
            "/new",
            "second hello",
            "/sessions",
            "/load first",
            "/help",
            "/quit",
            "never sent",
        ],
    )
    assert "session first is now called 'greetings'" in out
    new = next(line for line in out if line.startswith("new session ") and "first message" in line)
    second_id = new.split()[2]
    listed = [line for line in out if re.search(r" turns?  ", line)]
    assert len(listed) == 2
    assert listed[0].startswith(f"* {second_id}")
    assert listed[1].startswith("  first  greetings")
    assert "resuming session first (greetings): 1 earlier turn" in out
    assert not any("never sent" in line for line in out)
    storage = open_storage(url, mode="agent")
    assert sorted(storage.get_all_session_ids()) == sorted(["first", second_id])
    named = storage.read("first")
    assert named is not None
    assert named.session_data["session_name"] == "greetings"  # type: ignore[attr-defined]


def test_a_chat_without_a_user_loads_any_users_session_and_starts_new_ones_without_one(
    sqlite_url: str,
) -> None:
    chat("--storage", sqlite_url, "--session", "a1", "--user", "alice", lines=["hi from alice"])
    chat("--storage", sqlite_url, "--session", "b1", "--user", "bob", lines=["hi from bob"])
    out = chat("--storage", sqlite_url, lines=["/load a1", "/new", "new words", "/load b1"])
    assert not any("cannot load" in line for line in out)
    assert "resuming session b1: 1 earlier turn" in out
    storage = open_storage(sqlite_url, mode="agent")
    users = {s.session_id: s.user_id for s in storage.get_all_sessions()}  # type: ignore[attr-defined]
    new = next(sid for sid in users if sid not in ("a1", "b1"))
    assert users == {"a1": "alice", "b1": "bob", new: None}


def test_every_chat_keeps_its_sessions_under_one_agent_id(sqlite_url: str) -> None:
    chat("--storage", sqlite_url, "--session", "a1", lines=["hi"])
    chat("--storage", sqlite_url, lines=["hello"])
    storage = open_storage(sqlite_url, mode="agent")
    assert len(storage.get_all_session_ids()) == 2
    assert len(storage.get_all_session_ids(entity_id=CHAT_AGENT_ID)) == 2


def test_a_session_that_cannot_be_loaded_is_said_so_and_the_chat_goes_on(
    sqlite_url: str,
) -> None:
    long_id = "x" * 600
    out = chat(
        "--storage",
        sqlite_url,
        "--session",
        "kept",
        lines=["hello", f"/load {long_id}", "/load a\x00b", "My name is Ada.", "/quit"],
    )
    assert "cannot load: session id is 600 characters long; the limit is 512" in out
    assert any(line.startswith("cannot load: session id must not contain NUL") for line in out)
    assert any(line.startswith("assistant> Noted: your name is Ada.") for line in out)
    assert (
        out[-1]
        == f"bye: resume with  savegame chat --session kept --storage {shlex.quote(sqlite_url)}"
    )
    stored = open_storage(sqlite_url, mode="agent").read("kept")
    assert stored is not None
    assert len(stored.memory["runs"]) == 2  # type: ignore[attr-defined]


def test_sessions_other_code_stored_oddly_or_damaged_neither_end_the_chat(
    tmp_path: Path,
) -> None:
    """A store the chat shares with other code may hold sessions whose fields are of
    other shapes, or one that cannot be read at all: listed, they are shown as well as
    they can be, or left out with a note, and the conversation goes on."""
    backend = next(b for b in BACKENDS if b.name == "sqlite-file")
    with backend.make(tmp_path, "agent") as store:
        assert store.url is not None
        assert store.spoil_json is not None
        chat("--storage", store.url, "--session", "mine", lines=["My name is Ada."])
        storage = store()
        storage.upsert(AgentSession(session_id="odd", memory=[1, 2], session_data="x"))  # type: ignore[arg-type]
        turn = {"run_id": "r", "messages": [{"role": "user", "content": "hi"}]}
        numbered = {"session_name": 5}
        storage.upsert(
            AgentSession(session_id="numbered", memory={"runs": [turn]}, session_data=numbered)
        )
        storage.upsert(AgentSession(session_id="damaged", session_data={}))
        store.spoil_json(storage, "damaged", "{not json")
        out = chat(
            "--storage",
            store.url,
            "--session",
            "mine",
            lines=["/sessions", "/load numbered", "/load mine", "What is my name?"],
        )
    listed = [line.split()[:2] for line in out if re.search(r" turns?  ", line)]
    assert sorted(listed) == [["*", "mine"], ["numbered", "1"], ["odd", "0"]]
    note = "note: 1 stored item(s) could not be read and are left out; savegame export names them"
    assert note in out
    assert "resuming session numbered: 1 earlier turn" in out
    assert any(line.startswith("assistant> Your name is Ada.") for line in out)


def test_the_configured_model_is_used_and_its_failures_end_only_a_turn(
    sqlite_url: str, server: ModelServer
) -> None:
    url = sqlite_url
    out = chat(
        "--storage",
        url,
        "--session",
        "m",
        lines=["hello"],
        OPENAI_BASE_URL=server.base_url,
        OPENAI_MODEL="echo",
    )
    assert "model echo (openai, from the environment)" in out[0]
    assert "assistant> echo: hello [1 messages]" in out
    failing = chat(
        "--storage",
        url,
        "--session",
        "m",
        lines=["again", "/history"],
        OPENAI_BASE_URL=server.base_url,
        OPENAI_MODEL="fail-500",
    )
    assert any(line.startswith("model error: model server answered 500") for line in failing)
    stored = open_storage(url, mode="agent").read("m")
    assert stored is not None
    assert len(stored.memory["runs"]) == 1  # type: ignore[attr-defined]


@pytest.mark.skipif(
    importlib.util.find_spec("savegame.storage.sqlite") is None, reason="no SQLite backend yet"
)
def test_the_default_store_is_savegame_db_in_the_current_folder(tmp_path: Path) -> None:
    chat("--session", "here", lines=["My name is Ada."], cwd=tmp_path)
    assert (tmp_path / "savegame.db").exists()
    again = chat("--session", "here", lines=["What is my name?"], cwd=tmp_path)
    assert any(line.startswith("assistant> Your name is Ada.") for line in again)


def test_stored_text_is_shown_as_it_is_and_never_obeyed_by_the_terminal(
    sqlite_url: str,
) -> None:
    # An escape sequence that would clear the screen, a lone surrogate UTF-8 cannot carry,
    # and the original's system, tool and history-copy messages beside the turns.
    runs = [
        {
            "run_id": "r0",
            "messages": [
                {"role": "system", "content": "You are agno."},
                {"role": "user", "content": "My name is Ada.\x1b[2J"},
                {"role": "assistant", "content": None, "tool_calls": []},
                {"role": "tool", "content": "looked up", "tool_call_id": "c1"},
                {"role": "assistant", "content": "Hello \ud800 Ada.\nTwo lines."},
            ],
        },
        {
            "run_id": "r1",
            "messages": [
                {"role": "user", "content": "Pay 10 dollars.\rPay 9999"},
                {"role": "assistant", "content": "Paid.\r\nDone."},
            ],
        },
    ]
    with open_storage(sqlite_url, mode="agent") as storage:
        storage.upsert(AgentSession(session_id="odd", memory={"runs": runs}))
    out = chat("--storage", sqlite_url, "--session", "odd", lines=["/history", "/quit"])
    text = "\n".join(out)
    assert "\x1b" not in text
    assert "  you: My name is Ada.\\x1b[2J" in out
    assert "  assistant: Hello \\ud800 Ada." in out
    assert "Two lines." in out
    # A carriage return alone would have the terminal write "Pay 9999" over "Pay 10".
    assert "  you: Pay 10 dollars.\\rPay 9999" in out
    assert out[out.index("  assistant: Paid.") + 1] == "Done."
    assert "You are agno." not in text
    assert "looked up" not in text
    assert "None" not in text


def _start_chat(*args: str, **env: str) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SAVEGAME_"))}
    return subprocess.Popen(
        [sys.executable, "-c", "from savegame.cli import main; main()", "chat", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**clean, **env},
    )


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, seen: bytes = b"") -> bytes:
    """What ``proc`` printed, read until ``marker`` appears after ``seen``."""
    assert proc.stdout is not None
    text = seen
    deadline = time.monotonic() + 30
    while marker not in text[len(seen) :]:
        assert time.monotonic() < deadline, text
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, text
        text += chunk
    return text


def test_history_shows_the_turns_another_chat_on_the_session_saved(sqlite_url: str) -> None:
    # Two terminals on one conversation: each message is sent with the turns the other
    # saved, and /history showed the conversation as this chat had last saved it.
    chat("--storage", sqlite_url, "--session", "two", lines=["My name is Ada."])
    proc = _start_chat("--storage", sqlite_url, "--session", "two")
    try:
        _read_until(proc, b"you> ")
        chat("--storage", sqlite_url, "--session", "two", lines=["I live in Oslo."])
        out, err = proc.communicate(b"/history\n", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    lines = [line.removeprefix("you> ") for line in out.decode().splitlines()]
    shown = [line for line in lines if line.startswith("  you: ")]
    assert shown[-2:] == ["  you: My name is Ada.", "  you: I live in Oslo."], out


def test_a_store_failing_mid_chat_ends_it_with_the_resume_hint_and_the_error(
    tmp_path: Path,
) -> None:
    """A chat started without ``--session`` is under an id made up for it: ended by the
    error alone, it left no way back to the conversation saved before."""
    pytest.importorskip("savegame.storage.sqlite")
    path = tmp_path / "chats.db"
    proc = _start_chat("--storage", f"sqlite:///{path}?busy_timeout=0.2")
    assert proc.stdin is not None
    holder = None
    try:
        proc.stdin.write(b"My name is Ada.\n")
        proc.stdin.flush()
        _read_until(proc, b"assistant> ")
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        out, err = proc.communicate(b"What is my name?\n", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        if holder is not None:
            holder.close()
    assert proc.returncode == 1, err
    assert b"database is locked" in err
    last = out.decode().splitlines()[-1]
    assert last.startswith("bye: resume with  savegame chat --session "), out
    again = chat(*shlex.split(last.removeprefix("bye: resume with  "))[2:], lines=["/history"])
    assert "  you: My name is Ada." in again
    assert "  you: What is my name?" not in again


@pytest.mark.parametrize("when", ["at the prompt", "while the model answers"])
def test_ctrl_c_ends_the_chat_with_the_resume_hint_and_keeps_the_conversation(
    sqlite_url: str, server: ModelServer, when: str
) -> None:
    chat("--storage", sqlite_url, "--session", "c", lines=["My name is Ada."])
    model = "hang" if when == "while the model answers" else "echo"
    proc = _start_chat(
        "--storage",
        sqlite_url,
        "--session",
        "c",
        OPENAI_BASE_URL=server.base_url,
        OPENAI_MODEL=model,
    )
    assert proc.stdin is not None
    try:
        seen = _read_until(proc, b"you> ")
        if model == "hang":
            proc.stdin.write(b"What is my name?\n")
            proc.stdin.flush()
            deadline = time.monotonic() + 30
            while not server.requests:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = (seen + out).decode().splitlines()
    assert proc.returncode == 130
    hint = f"savegame chat --session c --storage {shlex.quote(sqlite_url)}"
    assert lines[-1] == f"bye: resume with  {hint}"
    if model == "hang":
        assert lines[-2] == (
            "interrupted before the answer was shown: a message is saved only with its answer"
        )
    stored = open_storage(sqlite_url, mode="agent").read("c")
    assert stored is not None
    assert [r["input"] for r in stored.memory["runs"]] == ["My name is Ada."]  # type: ignore[attr-defined]


@pytest.mark.parametrize("flag", ["--session", "--user"])
def test_an_empty_session_or_user_id_is_refused_before_anything_is_made(
    tmp_path: Path, flag: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SAVEGAME_"))}
    db = tmp_path / "chat.db"
    proc = subprocess.run(
        [sys.executable, "-c", "from savegame.cli import main; main()", "chat", flag, ""],
        input="hello\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "SAVEGAME_STORAGE": f"sqlite:///{db}"},
    )
    assert proc.returncode == 2
    assert f"error: {flag[2:]} id must not be empty" in proc.stderr
    assert not db.exists()


def test_a_session_of_another_agent_resumed_in_the_chat_stays_that_agents(
    sqlite_url: str,
) -> None:
    with open_storage(sqlite_url, mode="agent") as storage:
        bot = Agent(OfflineModel(), storage, session_id="s1", agent_id="support-bot", name="Sam")
        bot.run("My name is Ada.")
    out = chat("--storage", sqlite_url, "--session", "s1", lines=["What is my name?", "/new", "hi"])
    assert any(line.startswith("Sam> Your name is Ada.") for line in out)
    assert any(line.startswith('assistant> You said: "hi".') for line in out)
    with open_storage(sqlite_url, mode="agent") as storage:
        assert storage.get_all_session_ids(entity_id="support-bot") == ["s1"]
        stored = storage.read("s1")
        assert stored is not None
        assert stored.agent_data["name"] == "Sam"  # type: ignore[attr-defined]
        assert len(stored.memory["runs"]) == 2  # type: ignore[attr-defined]
        assert len(storage.get_all_session_ids(entity_id=CHAT_AGENT_ID)) == 1
    out = chat("--storage", sqlite_url, lines=["/load s1", "/new", "hello"])
    with open_storage(sqlite_url, mode="agent") as storage:
        assert storage.get_all_session_ids(entity_id="support-bot") == ["s1"]
        assert len(storage.get_all_session_ids(entity_id=CHAT_AGENT_ID)) == 2


def test_text_that_standard_outputs_encoding_lacks_is_shown_as_escapes(sqlite_url: str) -> None:
    """In an ASCII locale a stored "é" ended the chat with exit code 2 and a message about
    the ascii codec, before the conversation or the resume hint was shown; the hint now
    holds what the encoding lacks as the escapes of ``$'...'``, which the shell reads back
    as the id it is."""
    messages = [
        {"role": "user", "content": "Où est Zoë?"},
        {"role": "assistant", "content": "À Paris ✓"},
    ]
    runs = [{"run_id": "r0", "messages": messages}]
    with open_storage(sqlite_url, mode="agent") as storage:
        storage.upsert(AgentSession(session_id="café", memory={"runs": runs}))
    out = chat(
        "--storage",
        sqlite_url,
        "--session",
        "café",
        lines=["/history", "/sessions"],
        PYTHONIOENCODING="ascii",
    )
    assert "resuming session caf\\xe9: 1 earlier turn" in out
    assert "  you: O\\xf9 est Zo\\xeb?" in out
    assert "  assistant: \\xc0 Paris \\u2713" in out
    assert any(line.startswith("* caf\\xe9 ") for line in out), out
    hint = out[-1].removeprefix("bye: resume with  ")
    said = subprocess.run(
        ["bash", "-c", f'printf "%s\\0" {hint}'],
        capture_output=True,
        check=True,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    ).stdout.split(b"\0")[:-1]
    assert said[:4] == [b"savegame", b"chat", b"--session", "café".encode()], hint


def test_the_chat_runs_with_a_standard_output_that_names_no_encoding(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An application that runs the chat in its own process with standard output taken
    into a StringIO (contextlib.redirect_stdout), whose encoding is None, gets the chat's
    lines, "é" included, rather than a TypeError from the first line written."""
    from savegame.chat import chat as run_chat

    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "SAVEGAME_MODEL"):
        monkeypatch.delenv(name, raising=False)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdin", io.StringIO("bonjour\n"))
    monkeypatch.setattr(sys, "stdout", out)
    run_chat(session="café", user=None, storage=sqlite_url)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("savegame chat: model offline"), lines
    assert lines[-1].startswith("bye: resume with  savegame chat --session 'café'"), lines


def test_a_chat_that_saved_nothing_gives_no_command_to_resume_it(sqlite_url: str) -> None:
    # It gave one, for a session no store held.
    out = chat("--storage", sqlite_url, "--session", "quiet", lines=["/quit"])
    assert out[-1] == "bye: nothing was said in session quiet; none was saved"
    assert open_storage(sqlite_url, mode="agent").read("quiet") is None
    # A session left for a new one is resumable, and the new one, still empty, is not.
    out = chat("--storage", sqlite_url, "--session", "said", lines=["hi", "/new"])
    assert out[-1].startswith("bye: nothing was said in session "), out
    # One with no runs but a name given is stored, and comes back.
    out = chat("--storage", sqlite_url, "--session", "named", lines=["/rename Trip"])
    assert out[-1].startswith("bye: resume with  savegame chat --session named"), out
