"""The conformance suite as a backend written elsewhere runs it, with savegame as installed."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["pytest", "hypothesis"])
def test_without_what_the_suite_needs_its_import_names_the_extra(package: str) -> None:
    code = (
        f"import sys\nsys.modules[{package!r}] = None\n"
        "from savegame.errors import MissingDependencyError\n"
        "try:\n    from savegame.testing import ModeContract\n"
        "except MissingDependencyError as exc:\n    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.startswith(f"the conformance suite (savegame.testing) needs the {package!r}")
    assert 'pip install "savegame[testing]"' in done.stdout


def test_the_testing_extra_brings_what_the_suite_imports() -> None:
    wanted = {
        re.split(r"[<>=;\[ ]", requirement)[0].lower()
        for requirement in importlib.metadata.requires("savegame") or []
        if re.search(r"""extra\s*==\s*["']testing["']""", requirement)
    }
    assert wanted == {"pytest", "hypothesis"}
