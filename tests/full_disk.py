"""A disk that fills under a subprocess's writes, for the tests of what a full disk does, and
a folder that cannot be written to.

Each way of filling is a *prologue*: Python code that defines ``full()``, which makes every
later write fail as on a full disk, and ``free()``, which ends that; the test's subprocess
runs it before its checks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

FILE_SIZE_LIMIT = (
    "import resource, signal\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)\n"
    "def full(): resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))\n"
    "def free(): resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))\n"
)
"""A file-size limit of one byte: every write of data past the first byte of a file fails
(EFBIG, where a full disk gives ENOSPC; SQLite reports it as an I/O error)."""


@contextmanager
def full_tmpfs(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A 1 MB tmpfs mounted under ``tmp_path``, and the prologue that fills it to its last
    byte (and empties it); unmounted afterwards. Skips the test where no tmpfs can be
    mounted (not Linux, not root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if sys.platform != "linux" or os.geteuid() != 0 or mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    filler = disk / "filler"
    prologue = (
        "import os\n"
        "def full():\n"
        f"    fd = os.open({str(filler)!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND)\n"
        "    for size in (65536, 4096, 1):\n"
        "        try:\n"
        "            while True: os.write(fd, bytes(size))\n"
        "        except OSError: pass\n"
        "    os.close(fd)\n"
        f"def free(): os.unlink({str(filler)!r})\n"
    )
    try:
        yield disk, prologue
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@contextmanager
def read_only(folder: Path, at: Path | None = None) -> Iterator[Path]:
    """``folder`` as a folder that cannot be written to: mounted again read-only for root
    (whom permissions do not stop), made mode 555 for others; undone afterwards. Skips the
    test where root cannot mount.

    With ``at`` (an empty folder), ``folder`` stays writable and ``at`` is a read-only view
    of it, for root only (others skip): what a user who may only read a folder sees while
    its owner writes there.
    """
    if os.geteuid() != 0:
        if at is not None:
            pytest.skip("only root can mount a read-only view of a folder")
        # Every folder under it too, as a read-only mount has them (the index's among them).
        folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
        for each in folders:
            each.chmod(0o555)
        try:
            yield folder
        finally:
            for each in folders:
                each.chmod(0o755)
        return
    target = folder if at is None else at
    mounted = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(folder), str(target)], capture_output=True
    )
    if sys.platform != "linux" or mounted.returncode != 0:
        pytest.skip("cannot mount a folder read-only here")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)
