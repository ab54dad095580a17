"""savegame in one minute: an agent remembers a fact across two separate processes.

Run it with ``make demo`` (or ``python examples/demo.py``). Process 1 tells an agent a fact and
exits; process 2, a new Python process, makes an agent with the same session id, which loads
the conversation from the SQLite file ``savegame.db`` and recalls the fact. Then the stored
session is printed. It uses the offline model, so it needs no network and no API key.

``python examples/demo.py --storage URL`` runs it on any other store (``json:///sessions``,
``redis://localhost:6379/0``, ...).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from savegame import open_storage
from savegame.agent import Agent
from savegame.models.offline import OfflineModel

DEFAULT_STORAGE = "sqlite:///savegame.db"
FACT = "My favourite colour is teal."
QUESTION = "What is my favourite colour?"


def agent(url: str, session_id: str) -> Agent:
    """The agent both processes make: the same session id is all it takes to resume."""
    storage = open_storage(url, mode="agent")
    storage.create()
    return Agent(
        model=OfflineModel(),
        storage=storage,
        session_id=session_id,
        user_id="demo-user",
        agent_id="demo-agent",
        name="Demo agent",
        session_name="a fact to remember",
        add_history_to_messages=True,
    )


def turn(url: str, session_id: str, text: str) -> None:
    """One process's part: a single message to the agent."""
    answer = agent(url, session_id).run(text)
    print(f"  you:   {text}")
    print(f"  agent: {answer.content}")


def command() -> str:
    """How to run the ``savegame`` command from here: by its name where it is on the PATH,
    else by the path of the script installed beside this Python (``make demo`` runs
    ``.venv/bin/python``, whose folder a shell has not on its PATH)."""
    beside = Path(sys.executable).parent / "savegame"
    if shutil.which("savegame") or not beside.exists():
        return "savegame"
    relative = os.path.relpath(beside)
    return shlex.quote(str(beside) if relative.startswith("..") else relative)


def main(argv: list[str]) -> int:
    """Runs the two processes, checks the second recalled the fact, prints the session."""
    url = argv[argv.index("--storage") + 1] if "--storage" in argv else DEFAULT_STORAGE
    session_id = f"demo-{uuid.uuid4().hex[:8]}"
    outputs = []
    for step, text in enumerate((FACT, QUESTION), start=1):
        print(f"process {step}: a new Python process, session {session_id}")
        proc = subprocess.run(
            [sys.executable, __file__, "--turn", url, session_id, text],
            capture_output=True,
            text=True,
            timeout=120,
        )
        print(proc.stdout, end="")
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        outputs.append(proc.stdout)
    if "teal" not in outputs[1]:
        print("the second process did not recall the fact", file=sys.stderr)
        return 1
    print("process 2 recalled what process 1 was told.\n")
    stored = open_storage(url, mode="agent").read(session_id)
    assert stored is not None
    print(f"the session as stored in {url}:")
    print(json.dumps(stored.to_dict(), indent=2, ensure_ascii=False))
    show = f"{command()} sessions show {session_id} --storage {shlex.quote(url)}"
    print(f"\nsee it again with:  {show}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--turn"]:
        turn(*sys.argv[2:5])
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
