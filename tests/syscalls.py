"""What a process asks of the kernel, seen with strace: the syncs, renames and unlinks that make a
write durable, which no test of what a store holds can see short of cutting the power."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_MARKS = ("/nonexistent/savegame-begin", "/nonexistent/savegame-end")
_TRACED = "trace=openat,fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat"


def _mark(path: str) -> str:
    # An open that fails: a system call strace shows, with a path no other call has.
    return f"try:\n    os.open({path!r}, os.O_RDONLY)\nexcept OSError:\n    pass\n"


def syscalls_of(setup: str, call: str, tmp_path: Path) -> list[str]:
    """The opens, syncs and renames of the Python statements ``call``, run after ``setup``
    in a new process, each file descriptor shown with its path (``fsync(3</dir/x>)``)."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    code = f"import os\n{setup}\n{_mark(_MARKS[0])}{call}\n{_mark(_MARKS[1])}"
    log = tmp_path / "strace.log"
    done = subprocess.run(
        [strace, "-f", "-y", "-e", _TRACED, "-o", str(log), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    lines = [line.split(None, 1)[1] for line in log.read_text().splitlines() if " " in line]
    begin = next(i for i, line in enumerate(lines) if _MARKS[0] in line)
    end = next(i for i, line in enumerate(lines) if _MARKS[1] in line)
    return lines[begin + 1 : end]


def synced(calls: list[str], path: Path | str) -> list[int]:
    """The positions in ``calls`` of the fsyncs and fdatasyncs of ``path``."""
    pattern = re.compile(rf"f(data)?sync\(\d+<{re.escape(str(path))}>\)")
    return [i for i, call in enumerate(calls) if pattern.match(call)]


def renamed_to(calls: list[str], path: Path | str) -> tuple[int, str]:
    """The position in ``calls`` of the rename onto ``path``, and the file renamed."""
    for i, call in enumerate(calls):
        names = re.findall(r'"([^"]*)"', call)
        if call.startswith("rename") and len(names) == 2 and names[1] == str(path):
            return i, names[0]
    raise AssertionError(f"no rename onto {path} in {calls}")
