"""What the runtime's tests share: running :mod:`savegame.testing.agent_worker` in
subprocesses, and switching an agent, team or workflow from one session to a new one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

from savegame.runtime import SessionKeeper


def worker(*args: Any) -> list[str]:
    """The command line of an agent worker."""
    return [sys.executable, "-m", "savegame.testing.agent_worker", *(str(a) for a in args)]


def run_worker(*args: Any, ok: bool = True, timeout: float = 120) -> list[str]:
    """Runs one worker to its end and returns its output lines.

    With ``ok`` it must succeed; without, it must fail (a step told to fail).
    """
    proc = subprocess.run(worker(*args), capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        assert proc.returncode != 0, proc.stdout
    return proc.stdout.splitlines()


def new_session_after(
    keeper: SessionKeeper, stored: str, taken: dict[str, Any], run: Callable[[], Any]
) -> dict[str, Any]:
    """Loads the session ``stored``, from which ``keeper`` (made without the attributes of
    ``taken``) takes their values, then starts a new session, which has none of them, and
    saves it with ``run``; returns the new session as stored, as a dict."""
    keeper.load_session(stored)
    assert {name: getattr(keeper, name) for name in taken} == taken
    keeper.new_session()
    assert {name: getattr(keeper, name) for name in taken} == dict.fromkeys(taken)
    run()
    made = keeper.get_session()
    assert made is not None
    return made.to_dict()
