"""The storage chapter's example runs as printed, with savegame in place of the original."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "seed_example.py"
MEMORY = (
    "{'history': [{'role': 'user', 'content': 'Hello!'}, "
    "{'role': 'assistant', 'content': 'Hi there! How can I help?'}], "
    "'user_prefs': {'theme': 'dark'}}"
)


def _run(code: str, cwd: Path) -> str:
    script = cwd / "example.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, capture_output=True, text=True, timeout=120
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
