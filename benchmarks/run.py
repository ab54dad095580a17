"""``make bench``: every backend against a hand-written baseline, written to docs/benchmarks.md.

Each section comes from a module of this folder and runs in this one process, savegame and
its baseline one after the other on the same machine, so the ratios compare like with like.
A section whose server cannot be reached is reported as skipped.

Usage: ``python benchmarks/run.py [--quick] [section ...]``; ``--quick`` uses smaller counts
and does not write the document.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import redis_bench  # noqa: E402
import sql_bench  # noqa: E402

OUTPUT = HERE.parent / "docs" / "benchmarks.md"

SECTIONS: list[tuple[str, Callable[[bool], str]]] = [
    *[
        (title, lambda quick, t=title, n=name, p=part: sql_bench.report(t, n, p(quick)))
        for title, name, part in sql_bench.PARTS
    ],
    ("Redis", lambda quick: redis_bench.report(redis_bench.run(quick))),
]
"""(title, run(quick) -> Markdown) for each section, in the order of the document."""

INTRO = """\
# Benchmarks

Written by `make bench` (`benchmarks/run.py`); every figure below comes from the run recorded
here. Each table times savegame and a hand-written baseline doing the same work with the
database driver alone, in the same process, in turns (savegame, baseline, savegame, ...), so
that a slow spell of the machine falls on both; the ratio is savegame / baseline (below 1:
savegame is faster). Times are the best of several repeats.
`.venv/bin/python benchmarks/run.py --quick` (with section names, `sqlite redis`, to run only
those) prints smaller runs and writes nothing here; the servers come from
`SAVEGAME_TEST_POSTGRES_URL`, `SAVEGAME_TEST_MYSQL_URL` and `SAVEGAME_TEST_REDIS_URL`, as for
the tests, and a section whose server is down says so.

The baselines keep each session in one row (or one hash), written whole by one prepared
statement, with no validation, no version check and no runs table: what a careful person
writes for one database. savegame additionally checks every value it has not seen before,
checks versions atomically, and keeps one row per run so that a save writes what changed:
the *bytes written* rows show the cost of that on disk, where the baseline's save grows with
the conversation and savegame's does not.

"Upserts" and "reads" are made by the storage that wrote the sessions, which remembers them
(README, "Remembered sessions"); the rows "by a storage just opened" are made by a new
storage object, as in a new process, which knows nothing of them yet. A new session costs
savegame one row per run besides the header. The save at turn N adds one run to a
conversation of N runs, kept by the caller from save to save; savegame's save at turn 1000
still marks the 1000 runs it is given (marshals them), to prove them unchanged: that is the
row "of which marking the runs". The "read of a
1000-run session that another storage just added a run to" is made by a storage that read
the session before another one (another process, in a deployment) saved it again: it
fetches the digests of the runs and the text of the new one only."""


def machine() -> str:
    """A description of the machine and the software versions, as a Markdown list."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kib = int(meminfo.read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.1f} GiB RAM"
    import sqlalchemy

    return "\n".join(
        [
            f"- run: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- machine: {cpu}, {os.cpu_count()} CPUs{memory}, {platform.platform()}",
            f"- Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
            f"SQLAlchemy {sqlalchemy.__version__}",
            "- servers on the same machine, over loopback: PostgreSQL "
            f"({sql_bench.POSTGRES_URL.split('@')[-1]}), MariaDB "
            f"({sql_bench.MYSQL_URL.split('@')[-1]}), Redis ({redis_bench.URL.split('//')[-1]})",
        ]
    )


def main(argv: list[str]) -> int:
    """Runs the sections asked for (all by default); see the module docstring."""
    quick = "--quick" in argv
    wanted = [a.lower() for a in argv if not a.startswith("--")]
    parts = [INTRO, "## Machine\n\n" + machine()]
    for title, section in SECTIONS:
        if wanted and not any(w in title.lower() for w in wanted):
            continue
        print(f"## {title}", flush=True)
        try:
            body = section(quick)
        except Exception as exc:  # noqa: BLE001 - a server that is down skips its section
            body = f"skipped: {type(exc).__name__}: {exc}"
        print(body + "\n", flush=True)
        parts.append(f"## {title}\n\n{body}")
    if not quick and not wanted:
        OUTPUT.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
        print(f"written to {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
