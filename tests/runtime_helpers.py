"""What the runtime's tests share: running :mod:`savegame.testing.agent_worker` in
subprocesses, and switching an agent, team or workflow from one session to a new one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from savegame.runtime import SessionKeeper
from savegame.testing.agent_worker import KILL_AT


def worker(*args: Any) -> list[str]:
    """The command line of an agent worker."""
    return [sys.executable, "-m", "savegame.testing.agent_worker", *(str(a) for a in args)]


def run_worker(
    *args: Any, ok: bool = True, kill_at: str | None = None, timeout: float = 120
) -> list[str]:
    """Runs one worker to its end and returns its output lines.

    With ``ok`` it must succeed; without, it must fail (a step told to fail). With
    ``kill_at`` (``MODE:save:K`` or ``MODE:saved:K``, see
    :mod:`savegame.testing.agent_worker`) it must die by SIGKILL in that save.
    """
    env = {**os.environ, KILL_AT: kill_at} if kill_at else None
    proc = subprocess.run(worker(*args), capture_output=True, text=True, timeout=timeout, env=env)
    if kill_at:
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    elif ok:
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
