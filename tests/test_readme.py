"""The README's Python examples run, each in a fresh process and folder, so they cannot go stale.

The fenced ``python`` blocks run, and so do the indented ones (the constructors of the SQL and
Redis backends, which connect on first use, not when made); what a ``print`` line says in its
comment that it prints is what it prints. A block that is a test file (its first line
``# test_NAME.py``) is run by pytest instead, in ``tests/test_shipped_suite.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
TEXT = README.read_text(encoding="utf-8")
BLOCKS = [
    block
    for block in re.findall(r"```python\n(.*?)```", TEXT, re.S)
    if not re.match(r"# test_\w+\.py\n", block)
]
INDENTED = [
    "\n".join(line[4:] for line in block.splitlines())
    for block in re.findall(r"\n\n((?:    \S.*\n)(?:    .*\n|\n)*)", TEXT)
    if "import" in block
]


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 3
    assert len(INDENTED) >= 2


def _printed(code: str) -> list[str]:
    """What the ``print(...)  # text`` lines of ``code`` say they print: ``text`` up to a
    ``...`` that stands for the rest."""
    return [
        said.split("...")[0].strip()
        for said in re.findall(r"^\s*print\(.*\)\s*#\s*(.+)$", code, re.M)
    ]


@pytest.mark.parametrize(
    "code",
    BLOCKS + INDENTED,
    ids=[f"block{i}" for i in range(len(BLOCKS))] + [f"indented{i}" for i in range(len(INDENTED))],
)
def test_readme_example_runs(code: str, tmp_path: Path) -> None:
    # The Redis block passes a ready client, made with redis.Redis(...).
    code = f"import redis\n{code}" if "redis.Redis(" in code else code
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for said in _printed(code):
        assert said in done.stdout, (
            f"the README says it prints {said!r}; it printed {done.stdout!r}"
        )


def test_the_printed_lines_are_checked() -> None:
    said = [s for code in BLOCKS for s in _printed(code)]
    assert any(s.startswith("Your name is Ada.") for s in said), said
    printing = [code for code in BLOCKS if re.search(r"^\s*print\(", code, re.M)]
    assert all(_printed(code) for code in printing), "a print without what it prints"
