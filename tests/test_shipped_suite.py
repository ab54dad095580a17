"""The conformance suite as a backend written elsewhere runs it, with savegame as installed."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from typing import Any, ClassVar

import pytest

from savegame.storage.in_memory import InMemoryStorage
from savegame.testing import BackendContract, Store


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


class _Misspelt(InMemoryStorage):
    capabilities: ClassVar[frozenset[str]] = frozenset({"key_order", "persistant"})


def test_a_capability_the_suite_does_not_know_fails_the_contract() -> None:
    def opener(mode: str, **options: Any) -> InMemoryStorage:
        return _Misspelt(mode=mode, **options)  # type: ignore[arg-type]

    store = Store("misspelt", "agent", opener)
    with pytest.raises(AssertionError, match=r"\['persistant'\]"):
        BackendContract().test_declared_capabilities_are_known(store)
    store.close_all()


def test_a_skip_names_the_capability_and_what_it_promises() -> None:
    store = Store("memory", "agent", lambda mode, **options: InMemoryStorage(mode=mode))
    with pytest.raises(pytest.skip.Exception) as skipped:
        store.require("persistent")
    assert str(skipped.value.msg).startswith(
        "memory does not declare 'persistent' in InMemoryStorage.capabilities (a new storage"
    )
    store.close_all()
