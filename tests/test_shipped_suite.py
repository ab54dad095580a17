"""The conformance suite as a backend written elsewhere runs it: the README's test file, run
by pytest in a folder of its own, with savegame as installed and none of this repository's
tests, fixtures or pytest plugins."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

import savegame
from savegame.storage.base import Header
from savegame.storage.codec import copy_through_text
from savegame.storage.in_memory import InMemoryStorage
from savegame.testing import BackendContract, ModeContract, Store

README = Path(__file__).resolve().parent.parent / "README.md"
TEST_FILES = re.findall(
    r"```python\n(# (test_\w+\.py)\n.*?)```", README.read_text(encoding="utf-8"), re.S
)

MY_STORAGE = '''
"""Someone else's backend: SQLite under another name, at a path."""

import sys
import time
from pathlib import Path

from savegame.storage.sqlite import SqliteStorage

assert not any((Path(p) / "tests" / "stores.py").exists() for p in sys.path), sys.path


class MyStorage(SqliteStorage):
    def __init__(self, path, mode="agent", **options):
        super().__init__("sessions", db_file=path, mode=mode, **options)
'''

SELECTION = (
    "test_read_missing_is_none or test_reopened_store_keeps_sessions"
    " or test_any_json_value_round_trips or test_declared_capabilities_are_known"
    " or test_another_process_reads_what_this_one_wrote"
)
"""Tests of each kind: of every mode, of a declared capability, drawn by Hypothesis, and one
that needs ``Store.url``, which the README's store has not."""


def _summary(output: str) -> dict[str, int]:
    """The counts of pytest's last line: ``{"passed": 10, "skipped": 1, "deselected": 2}``."""
    last = output.strip().splitlines()[-1]
    return {word: int(count) for count, word in re.findall(r"(\d+) (\w+)", last)}


def _pytest_elsewhere(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest run on ``folder`` as a backend's own repository runs it: savegame as
    installed, none of this repository's conftest or pytest plugins."""
    (folder / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "PYTHON"))}
    env["PYTHONPATH"] = str(Path(savegame.__file__).resolve().parents[1])
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # no xdist, no timeout: the extra has none
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_the_readme_has_one_test_file() -> None:
    assert [name for _, name in TEST_FILES] == ["test_my_storage.py"]


def test_the_readmes_test_file_runs_the_suite_outside_this_repository(tmp_path: Path) -> None:
    code, name = TEST_FILES[0]
    (tmp_path / name).write_text(code, encoding="utf-8")
    (tmp_path / "my_storage.py").write_text(MY_STORAGE, encoding="utf-8")
    done = _pytest_elsewhere(tmp_path, "-rs", "-k", SELECTION)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    # Every mode reads and reopens; one draw of values; one check of the capabilities.
    counts = _summary(output)
    counts.pop("deselected")
    assert counts == {"passed": 10, "skipped": 1}, output[-3000:]
    assert "declares 'processes' but its Store has no url" in output, output[-3000:]


DIRTY_STORE = """
from savegame.storage.in_memory import InMemoryStorage
from savegame.testing import ModeContract, Store
from savegame.testing.sample import make_session


def test_a_store_that_is_not_empty():
    kept = {}
    InMemoryStorage(storage_dict=kept).upsert(make_session("agent", "left-over"))
    store = Store("dirty", "agent", lambda mode, **_: InMemoryStorage(mode, kept))
    ModeContract().test_read_missing_is_none(store)
"""


def test_a_failed_check_of_the_suite_says_what_it_compared(tmp_path: Path) -> None:
    # pytest rewrites the asserts of test modules only: the contract's, installed with
    # savegame, failed with a bare AssertionError unless registered for rewriting.
    (tmp_path / "test_dirty.py").write_text(DIRTY_STORE, encoding="utf-8")
    done = _pytest_elsewhere(tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    assert "AssertionError: assert ['left-over'] == []" in output, output[-3000:]


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


class _Processes(InMemoryStorage):
    capabilities: ClassVar[frozenset[str]] = frozenset({"key_order", "processes"})


def test_processes_skip_naming_a_url_that_open_storage_cannot_open() -> None:
    # The worker processes open the store with savegame.open_storage, which knows its own
    # schemes only: a backend of another scheme would fail in the worker, far from the cause.
    # The tests that fork, and need no worker, still run.
    store = Store("mine", "agent", lambda mode, **_: _Processes(mode=mode), url="mine:///s.db")
    assert isinstance(store.require("processes"), _Processes)
    with pytest.raises(pytest.skip.Exception) as skipped:
        store.worker_url()
    message = str(skipped.value.msg)
    assert "Store.url 'mine:///s.db'" in message
    assert "knows no such scheme (only sqlite, json" in message
    store.close_all()


def test_processes_without_a_url_skip_saying_that_the_tests_that_fork_skip_too() -> None:
    # A Store without a url is one of a store that lives in one process: the test that
    # forks, which starts no worker, skips with the others, and ran only with a url.
    store = Store("mine", "agent", lambda mode, **_: _Processes(mode=mode))
    with pytest.raises(pytest.skip.Exception) as skipped:
        store.require("processes")
    message = str(skipped.value.msg)
    assert message.startswith("mine declares 'processes' but its Store has no url")
    assert "the tests that fork skip too (with a url of a scheme of your own, they run)" in message
    store.close_all()


class _AlwaysThere(InMemoryStorage):
    capabilities: ClassVar[frozenset[str]] = frozenset({"key_order", "persistent"})


def test_a_persistent_backend_is_told_to_override_table_exists() -> None:
    kept: dict[str, Any] = {}
    store = Store("there", "agent", lambda mode, **_: _AlwaysThere(mode=mode, storage_dict=kept))
    check = ModeContract().test_a_store_is_there_from_its_first_write_and_never_from_a_read
    with pytest.raises(AssertionError, match=r"overrides Storage\.table_exists\(\)"):
        check(store)
    store.close_all()


class _OwnWrite(InMemoryStorage):
    """An in-memory storage with a write of its own, as a backend written from scratch has:
    the stored header read, then (after :meth:`_between`) the record stamped over it and
    kept as :meth:`_kept` makes it, without the store's lock. The tests' backends each get
    one step of it wrong."""

    def _write(self, draft: Any, expected_version: Any, now: int, preserve: bool) -> Any:
        old = self.storage_dict.get(draft.session_id)
        header = None if old is None else Header.of(old)
        self._between()
        record = self._stamp(draft.record, header, expected_version, now, preserve)
        self.storage_dict[draft.session_id] = self._kept(record)
        return record

    def _between(self) -> None:
        """What happens between reading the header and writing the record."""

    def _kept(self, record: Any) -> Any:
        """What is stored of ``record``: a copy through JSON text, as savegame writes it."""
        return copy_through_text(record)


def test_a_backend_writing_json_dumps_is_told_to_write_object_text() -> None:
    # json.dumps writes a surrogate pair held as two code points, which comes back as one
    # character: the backend fails the contract with a bare "DID NOT RAISE" unless told.
    kept: dict[str, Any] = {}

    class Dumps(_OwnWrite):
        def _kept(self, record: Any) -> Any:
            return json.loads(json.dumps(record))

    store = Store("dumps", "agent", lambda mode, **_: Dumps(mode=mode, storage_dict=kept))
    check = BackendContract().test_unstorable_values_are_refused_and_the_store_is_unchanged
    with pytest.raises(pytest.fail.Exception, match=r"codec\.object_text, which refuses it"):
        check(store, {"text": "smile \ud83d\ude00"}, "surrogate pair")
    store.close_all()


def test_storages_that_name_no_store_are_told_to_override_store_names() -> None:
    # Each opener call a new object on one dict, but names kept by object, as the default.
    kept: dict[str, Any] = {}

    class Unnamed(InMemoryStorage):
        def store_names(self) -> tuple[object, ...]:
            return (id(self),)

    store = Store("unnamed", "agent", lambda mode, **_: Unnamed(mode=mode, storage_dict=kept))
    with pytest.raises(AssertionError, match=r"Unnamed overrides Storage\.store_names\(\)"):
        BackendContract().test_storages_of_one_store_have_its_names_and_a_neighbours_others(store)
    store.close_all()


def test_a_backend_that_lets_another_mode_replace_a_session_is_told_what_to_do() -> None:
    kept: dict[str, Any] = {}

    class Mixing(InMemoryStorage):
        def _refuse_other_mode(self, record: dict[str, Any], doing: str) -> None:
            return None

    store = Store("mixing", "agent", lambda mode, **_: Mixing(mode=mode, storage_dict=kept))
    contract = BackendContract()
    check = contract.test_a_storage_of_another_mode_never_breaks_or_joins_the_listings_of_the_first
    with pytest.raises(AssertionError, match=r"Storage\._refuse_other_mode\), or the Store"):
        check(store, "agent", "team", False)
    store.close_all()


def test_a_write_that_checks_the_version_apart_from_writing_it_fails_the_contract() -> None:
    # The version read, then the record written, in two steps (with a store's round trip
    # between them, which lets other threads run): another thread's write between the two
    # is lost, with no conflict raised.
    kept: dict[str, Any] = {}

    class TwoSteps(_OwnWrite):
        def _between(self) -> None:
            time.sleep(0)

    store = Store("two steps", "agent", lambda mode, **_: TwoSteps(mode=mode, storage_dict=kept))
    with pytest.raises(AssertionError, match="'counter': "):
        BackendContract().test_threads_update_one_counter(store, True)
    store.close_all()
