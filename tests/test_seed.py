"""The storage chapter's example runs as printed, with savegame in place of the original."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.model_server import model_server
from tests.stores import BACKENDS

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE = EXAMPLES / "seed_example.py"
UNDER_THE_HOOD = EXAMPLES / "seed_under_the_hood.py"
SERVERS = [pytest.param(b, id=b.name) for b in BACKENDS if b.name in ("postgres", "mysql", "redis")]
MEMORY = (
    "{'history': [{'role': 'user', 'content': 'Hello!'}, "
    "{'role': 'assistant', 'content': 'Hi there! How can I help?'}], "
    "'user_prefs': {'theme': 'dark'}}"
)


def _run(code: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    script = cwd / "example.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _check(out: str) -> None:
    assert "Session 'chat_session_123' saved successfully." in out
    assert f"It contains memory: {MEMORY}" in out
    assert "Successfully loaded session 'chat_session_123'." in out
    assert "User ID: user_jane_doe" in out
    assert "Agent ID: helper_bot_v1" in out
    assert f"Retrieved memory: {MEMORY}" in out


def test_the_chapter_example_runs_on_sqlite(tmp_path: Path) -> None:
    out = _run(EXAMPLE.read_text(encoding="utf-8"), tmp_path)
    assert out.startswith("SqliteStorage initialized and table created")
    _check(out)
    assert (tmp_path / "my_agent_sessions.db").is_file()
    again = _run(EXAMPLE.read_text(encoding="utf-8"), tmp_path)
    _check(again)


@pytest.mark.parametrize(("cls", "module"), [("JsonStorage", "json"), ("YamlStorage", "yaml")])
def test_the_chapter_example_runs_on_files(tmp_path: Path, cls: str, module: str) -> None:
    code = EXAMPLE.read_text(encoding="utf-8")
    code = code.replace(
        "from savegame.storage.sqlite import SqliteStorage",
        f"from savegame.storage.{module} import {cls}",
    )
    code = code.replace(
        'SqliteStorage(\n    table_name="my_chat_sessions",\n    db_file="my_agent_sessions.db",',
        f'{cls}(\n    dir_path="my_agent_sessions",',
    )
    assert cls + "(" in code
    _check(_run(code, tmp_path))
    assert (tmp_path / "my_agent_sessions" / f"chat_session_123.{module}").is_file()


@pytest.mark.parametrize("backend", SERVERS)
def test_the_chapter_example_runs_on_the_servers(tmp_path: Path, backend: Any) -> None:
    """Steps 2 and 3 on Redis, which the chapter names, and on the SQL servers."""
    with backend.make(tmp_path, "agent") as store:
        code = EXAMPLE.read_text(encoding="utf-8")
        code = code.replace(
            "from savegame.storage.sqlite import SqliteStorage",
            "from savegame import open_storage",
        )
        made = (
            'SqliteStorage(\n    table_name="my_chat_sessions",\n'
            '    db_file="my_agent_sessions.db",'
        )
        assert made in code
        code = code.replace(made, f"open_storage(\n    {store.url!r},")
        _check(_run(code, tmp_path))
        assert store().read("chat_session_123") is not None


def test_the_chapters_look_under_the_hood_runs(tmp_path: Path) -> None:
    """The chapter's sketches of the base class and of SqliteStorage import what they name,
    and the real base class has the interface they describe."""
    code = EXAMPLE.read_text(encoding="utf-8") + UNDER_THE_HOOD.read_text(encoding="utf-8")
    code += """
import inspect
import savegame.storage.base as real

conceptual = SqliteStorageConceptual("my_chat_sessions", "my_agent_sessions.db")
print("conceptual upsert:", conceptual.upsert(retrieved_session).session_id)
print("conceptual read:", conceptual.read("chat_session_123").memory)
print("sketch:", Storage.__abstractmethods__ == {"upsert", "read"})
methods = ["create", "read", "upsert", "delete_session", "drop"]
print("real:", [m for m in methods if callable(getattr(real.Storage, m, None))] == methods)
print("read:", str(inspect.signature(real.Storage.read)))
print("mode:", SqliteStorage(table_name="t", mode=None).mode)
"""
    out = _run(code, tmp_path)
    _check(out)
    assert "UPSERTING session chat_session_123 to SQLite (conceptual)" in out
    assert "conceptual upsert: chat_session_123" in out
    assert "conceptual read: {'status': 'loaded'}" in out
    assert "sketch: True" in out
    assert "real: True" in out
    assert "read: (self, session_id: 'str', user_id: 'str | None' = None)" in out
    assert "mode: agent" in out


AGENT = """
from savegame.agent import Agent
from savegame.models.openai import OpenAIChat
from savegame.storage.sqlite import SqliteStorage

storage = SqliteStorage(table_name="agent_sessions", db_file="agents.db", mode="agent")
agent = Agent(
    model=OpenAIChat(id="echo"),
    storage=storage,
    session_id="chat_session_123",
    add_history_to_messages=True,
)
print(agent.run(MESSAGE).content)
"""


def test_an_agent_keeps_its_conversation_in_sqlite_across_runs_and_processes(
    tmp_path: Path,
) -> None:
    """What the chapter says its original's integration test shows: an Agent that saves its
    history to SqliteStorage, with a model spoken to over the OpenAI protocol (the base URL
    pointed at a local server, as the README says)."""
    with model_server() as server:
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-test"}
        first = _run(AGENT.replace("MESSAGE", "'My name is Ada.'"), tmp_path, env)
        second = _run(AGENT.replace("MESSAGE", "'Who am I?'"), tmp_path, env)
    assert first.strip() == "echo: My name is Ada. [1 messages]"
    assert second.strip() == "echo: Who am I? [3 messages]"
    assert server.requests[-1]["body"]["messages"] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "echo: My name is Ada. [1 messages]"},
        {"role": "user", "content": "Who am I?"},
    ]
