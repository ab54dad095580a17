"""Running :mod:`savegame.testing.agent_worker` in subprocesses, for the runtime's tests."""

from __future__ import annotations

import subprocess
import sys
from typing import Any


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
