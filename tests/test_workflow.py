"""Workflows keep their progress across runs and processes, on every backend."""

from __future__ import annotations

import contextlib
import datetime
import gc
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from savegame import open_storage, transfer
from savegame.agent import Agent
from savegame.errors import CorruptSessionError, SerializationError
from savegame.models.offline import OfflineModel
from savegame.storage.base import Storage
from savegame.storage.json import JsonStorage
from savegame.storage.session import WorkflowSession, WorkflowSessionV2
from savegame.testing import Store
from savegame.testing.agent_worker import STEPS, Pipeline, StepFailed
from savegame.workflow import Step, StepContext, StepWorkflow, Workflow
from tests.runtime_helpers import new_session_after, run_worker, worker
from tests.stores import Backend


@pytest.fixture
def flows(backend: Backend, tmp_path: Path) -> Iterator[Store]:
    with backend.make(tmp_path / "store", "workflow") as store:
        yield store


@pytest.fixture
def steps_store(backend: Backend, tmp_path: Path) -> Iterator[Store]:
    with backend.make(tmp_path / "store", "workflow_v2") as store:
        yield store


def _computed(markers: Path) -> dict[str, int]:
    return {p.name: len(p.read_text()) for p in sorted(markers.iterdir())}


class Counter(Workflow):
    name = "counter"

    def run(self, by: int = 1) -> int:
        self.session_state["count"] = self.session_state.get("count", 0) + by
        return int(self.session_state["count"])


class Louder(Counter):
    def run(self, by: int = 1) -> int:
        return super().run(by * 10)


def test_state_is_saved_after_every_run(flows: Store) -> None:
    flow = Counter(session_id="w", user_id="ada", storage=flows(), workflow_id="wf")
    assert flow.run() == 1
    assert flow.run(by=2) == 3
    stored = flows().read("w")
    assert isinstance(stored, WorkflowSession)
    assert stored.workflow_id == "wf"
    assert stored.user_id == "ada"
    assert stored.session_data["session_state"] == {"count": 3}  # type: ignore[index]
    runs = stored.memory["runs"]  # type: ignore[index]
    assert [(r["status"], r["output"]) for r in runs] == [("completed", 1), ("completed", 3)]
    assert runs[1]["input"] == {"args": [], "kwargs": {"by": 2}}
    assert stored.workflow_data["name"] == "counter"  # type: ignore[index]
    again = Counter(session_id="w", storage=flows())
    assert again.session_state == {"count": 3}
    assert again.run() == 4


class Recorder(Workflow):
    def run(self, value: Any) -> Any:
        self.session_state["ran"] = True
        return value


def test_a_runs_input_and_output_a_session_may_not_hold_are_recorded_as_their_repr(
    flows: Store,
) -> None:
    flow = Recorder(session_id="w", storage=flows())
    assert flow.run({2}) == {2}
    runs = _runs(flows, "w")
    assert [(r["status"], r["input"], r["output"]) for r in runs] == [
        ("completed", "{'args': [{2}], 'kwargs': {}}", "{2}")
    ]
    assert flows().read("w").session_data["session_state"] == {"ran": True}  # type: ignore[union-attr]


def test_a_subclass_calling_super_run_records_one_run(flows: Store) -> None:
    flow = Louder(session_id="w", storage=flows())
    assert flow.run() == 10
    stored = flows().read("w")
    assert stored is not None
    assert len(stored.memory["runs"]) == 1  # type: ignore[attr-defined]


class Counting:
    """A mixin that is not a workflow, giving one its run."""

    session_state: dict[str, Any]

    def run(self, by: int = 1) -> int:
        self.session_state["count"] = self.session_state.get("count", 0) + by
        return int(self.session_state["count"])


class MixedCounter(Counting, Workflow):
    pass


class LouderMixedCounter(MixedCounter):
    def run(self, by: int = 1) -> int:
        return super().run(by * 10)


@pytest.mark.parametrize("kind", [MixedCounter, LouderMixedCounter])
def test_a_run_taken_from_a_mixin_is_recorded_and_saved(flows: Store, kind: type[Workflow]) -> None:
    count = kind(session_id="w", storage=flows()).run()
    assert count == (1 if kind is MixedCounter else 10)
    assert [r["status"] for r in _runs(flows, "w")] == ["completed"]
    assert kind(session_id="w", storage=flows()).session_state == {"count": count}


class Drafts(Workflow):
    """A run that yields, as the original's workflows do."""

    def run(self, topic: str) -> Iterator[str]:
        yield self.step("outline", lambda: f"outline of {topic}")
        self.session_state["drafts"] = self.session_state.get("drafts", 0) + 1
        yield f"draft {self.session_state['drafts']}"
        if topic == "fail":
            raise RuntimeError("no more ideas")
        return f"{topic} done"


class LouderDrafts(Drafts):
    def run(self, topic: str) -> Iterator[str]:
        for said in super().run(topic):
            yield said.upper()
        return "louder"


def _runs(store: Store, session_id: str) -> list[dict[str, Any]]:
    stored = store().read(session_id)
    assert stored is not None
    runs: list[dict[str, Any]] = stored.memory["runs"]  # type: ignore[attr-defined]
    return runs


def test_a_run_that_yields_is_recorded_and_saved_when_it_ends(flows: Store) -> None:
    flow = Drafts(session_id="g", storage=flows())
    drafts = flow.run("essay")
    assert flows().read("g") is None, "recorded before anything ran"
    assert list(drafts) == ["outline of essay", "draft 1"]
    runs = _runs(flows, "g")
    assert [(r["status"], r["output"]) for r in runs] == [("completed", "essay done")]
    assert Drafts(session_id="g", storage=flows()).session_state == {
        "outline": "outline of essay",
        "drafts": 1,
    }
    with pytest.raises(RuntimeError, match="no more ideas"):
        list(flow.run("fail"))
    failed = _runs(flows, "g")[-1]
    assert failed["status"] == "failed"
    assert failed["error"] == "RuntimeError: no more ideas"
    assert Drafts(session_id="g", storage=flows()).session_state["drafts"] == 2
    for said in flow.run("short"):
        assert said == "outline of essay"
        break
    stopped = _runs(flows, "g")[-1]
    assert stopped["status"] == "failed"
    assert "stopped" in stopped["error"]
    assert len(_runs(flows, "g")) == 3


def test_a_run_that_yields_left_unfinished_when_its_process_exits_is_recorded(
    flows: Store,
) -> None:
    flows.require("processes")
    proc = subprocess.run(worker("yields", flows.url, "g"), capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "draft 1\n", "")
    runs = _runs(flows, "g")
    assert [(r["status"], r["error"]) for r in runs] == [
        ("failed", "stopped: its generator was closed before its end")
    ]
    assert Drafts(session_id="g", storage=flows()).session_state == {"drafts": 1}


def test_a_run_that_yields_left_unfinished_is_recorded_at_sigterm_only_when_it_exits(
    flows: Store,
) -> None:
    flows.require("processes")
    killed = subprocess.run(worker("yields", flows.url, "k", "term"), capture_output=True)
    assert killed.returncode == -signal.SIGTERM
    assert flows().read("k") is None
    ended = subprocess.run(worker("yields", flows.url, "e", "term-exit"), capture_output=True)
    assert ended.returncode == 128 + signal.SIGTERM
    assert [r["status"] for r in _runs(flows, "e")] == ["failed"]
    assert Drafts(session_id="e", storage=flows()).session_state == {"drafts": 1}


def test_a_run_that_yields_held_by_its_dropped_workflow_is_recorded_when_collected(
    flows: Store,
) -> None:
    flow = Drafts(session_id="g", storage=flows())
    flow.current = flow.run("essay")  # type: ignore[attr-defined]
    next(flow.current)  # type: ignore[attr-defined]
    del flow
    gc.collect()
    assert [r["status"] for r in _runs(flows, "g")] == ["failed"]


class Outlines(Workflow):
    """A run that yields, and one that does not and fails in its second step."""

    def run(self, kind: str) -> Any:
        if kind == "yields":
            return self._outlines()
        self.step("outline", lambda: "outline")
        return self.step("draft", lambda: 1 / 0)

    def _outlines(self) -> Iterator[str]:
        yield self.step("first", lambda: "first outline")
        yield "second outline"


def test_a_run_that_yields_collected_in_the_middle_of_another_run_leaves_it_as_it_was() -> None:
    flow = Outlines()
    cycle: list[Any] = [flow.run("yields")]
    cycle.append(cycle)
    next(cycle[0])
    del cycle
    save = flow.save

    def save_after_a_collection() -> None:
        gc.collect()
        save()

    flow.save = save_after_a_collection  # type: ignore[method-assign]
    enabled = gc.isenabled()
    gc.disable()  # the collection in the step's save, not one at an earlier allocation
    try:
        with pytest.raises(ZeroDivisionError):
            flow.run("fails")
    finally:
        if enabled:
            gc.enable()
    assert [(r["input"]["args"], r["error"]) for r in flow.runs] == [
        (["yields"], "stopped: its generator was closed before its end"),
        (["fails"], "ZeroDivisionError: division by zero (in step 'draft')"),
    ]


_SHORT_WAIT: dict[str, dict[str, Any]] = {
    "sqlite-file": {"busy_timeout": 0.5},
    "json": {"lock_timeout": 0.5},
    "yaml": {"lock_timeout": 0.5},
}
"""Options that have a storage give up soon on a lock its own thread holds."""

_SHORT_LOCK_WAIT = {
    "postgres": "SET lock_timeout = '500ms'",
    "mysql": "SET SESSION innodb_lock_wait_timeout = 1",
}
"""What has a server give up soon on a row lock another connection of the thread holds."""


def _impatient(flows: Store, backend: Backend) -> Storage:
    """A storage of ``flows`` that gives up soon on a lock its own thread holds."""
    storage = flows(**_SHORT_WAIT.get(backend.name, {}))
    statement = _SHORT_LOCK_WAIT.get(backend.name)
    if statement is not None:

        def impatient(connection: Any, _: Any) -> None:
            with contextlib.closing(connection.cursor()) as cursor:
                cursor.execute(statement)
            connection.commit()

        event.listen(storage.db_engine, "connect", impatient)  # type: ignore[attr-defined]
    return storage


def _drop_inside_a_write(
    flows: Store,
    backend: Backend,
    state: dict[str, Any],
    written: str = "other",
    collecting: Callable[[Storage, Callable[[], None]], None] | None = None,
    one_storage: bool = False,
) -> list[int]:
    """Drops, in a reference cycle, a workflow whose run waits at a ``yield`` (its state
    changed to ``state``), and marks the session ``written`` as touched, in the middle of
    whose write the garbage collector closes the run; returns what the collection found.

    ``collecting(writer, collect)`` has ``collect`` called where the collection is to
    happen in the write of ``writer``; by default, as the write stamps the session. With
    ``one_storage``, the workflow saves through the writer's storage object."""
    writer = _impatient(flows, backend) if one_storage else flows()
    collected: list[int] = []
    armed = threading.Event()

    def collect() -> None:
        # Only in the write of ``written``: a full collection costs more the more a long
        # test process holds, and the calls before it take the same lock many times.
        if armed.is_set():
            collected.append(gc.collect())

    (collecting or _collecting_at_stamp)(writer, collect)
    enabled = gc.isenabled()
    gc.disable()  # the collection in the write, not one at an earlier allocation
    try:
        storage = writer if one_storage else _impatient(flows, backend)
        flow = Drafts(session_id="g", storage=storage)
        flow.current = flow.run("essay")  # type: ignore[attr-defined]
        next(flow.current)  # type: ignore[attr-defined]
        flow.session_state.update(state)
        del flow
        armed.set()
        writer.update(written, _touched(written))
    finally:
        armed.clear()
        if enabled:
            gc.enable()
    stored = writer.read(written)
    assert stored is not None
    assert stored.session_data["session_state"]["touched"] is True  # type: ignore[index]
    return collected


def _collecting_at_stamp(writer: Storage, collect: Callable[[], None]) -> None:
    stamp = writer._stamp

    def stamp_after_a_collection(*args: Any) -> Any:
        collect()
        return stamp(*args)

    writer._stamp = stamp_after_a_collection  # type: ignore[method-assign]


def _touched(session_id: str) -> Callable[[Any], WorkflowSession]:
    """An ``update`` function that sets ``touched`` in the state of ``session_id``."""

    def touch(current: Any) -> WorkflowSession:
        if current is None:
            state = {"touched": True}
            return WorkflowSession(session_id=session_id, session_data={"session_state": state})
        current.session_data["session_state"]["touched"] = True
        return current  # type: ignore[no-any-return]

    return touch


@pytest.mark.parametrize("written", ["other", "g"])
def test_a_run_that_yields_collected_in_the_middle_of_a_write_is_saved_after_it(
    flows: Store, backend: Backend, written: str
) -> None:
    # Saved at once, the run would wait for the lock its own thread holds, or write into
    # the middle of that write, which would then write over it: either way it is lost.
    assert _drop_inside_a_write(flows, backend, {"noted": True}, written)[0] > 0
    [run] = _runs(flows, "g")
    assert (run["status"], run["error"]) == (
        "failed",
        "stopped: its generator was closed before its end",
    )
    touched = {"touched": True} if written == "g" else {}
    assert Drafts(session_id="g", storage=flows()).session_state == {
        "outline": "outline of essay",
        "noted": True,
        **touched,
    }


class _CollectingLock:
    """A lock under which the garbage collector runs each time it is taken, and which gives
    up, raising TimeoutError, where one its own thread holds would be waited for for ever."""

    def __init__(self, collect: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._collect = collect

    def __enter__(self) -> None:
        if not self._lock.acquire(timeout=10):
            raise TimeoutError("waited for a lock held all along")
        self._collect()

    def __exit__(self, *_: object) -> None:
        self._lock.release()


def test_a_run_that_yields_collected_as_a_storage_remembers_a_session_is_saved_after_it(
    flows: Store, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A storage remembers sessions under a lock of its own, which the run's save takes
    # too: saved at once, it would wait for it for ever.
    if not hasattr(flows(), "_known"):
        pytest.skip("the storage remembers no sessions")
    reported: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)

    def collecting(writer: Storage, collect: Callable[[], None]) -> None:
        writer._known._lock = _CollectingLock(collect)  # type: ignore[attr-defined]

    collected = _drop_inside_a_write(
        flows, backend, {"noted": True}, collecting=collecting, one_storage=True
    )
    assert any(collected)
    assert reported == []
    [run] = _runs(flows, "g")
    assert run["error"] == "stopped: its generator was closed before its end"
    assert Drafts(session_id="g", storage=flows()).session_state == {
        "outline": "outline of essay",
        "noted": True,
    }


def test_an_error_of_a_save_made_after_a_write_is_reported_as_a_finalizers(
    flows: Store, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    reported: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    _drop_inside_a_write(flows, backend, {"unstorable": {"a set"}})
    [report] = reported
    assert report.exc_type is SerializationError
    if backend.name.startswith("redis"):
        # Redis sends a write's script in one call, after stamping it: there the run was
        # saved at once, and its generator is what the report names.
        assert "_recorded_generator" in repr(report.object)
    elif sys.version_info >= (3, 11):
        [note] = report.exc_value.__notes__
        assert note.startswith("in the save of run ")
        assert note.endswith(" of session 'g', made once a storage call had ended")
    [run] = _runs(flows, "g")
    assert run["status"] == "failed"
    assert "not saved: SerializationError" in run["error"]


@pytest.mark.parametrize("leave", ["load_session", "new_session", "delete_session"])
def test_a_run_that_yields_is_stopped_in_its_session_when_the_workflow_leaves_it(
    flows: Store, leave: str
) -> None:
    flows().upsert(WorkflowSession(session_id="other", session_data={"session_state": {}}))
    flow = Drafts(session_id="g", storage=flows())
    drafts = flow.run("essay")
    assert next(drafts) == "outline of essay"
    switch = getattr(flow, leave)
    switch("other") if leave == "load_session" else switch()
    assert list(drafts) == []
    if leave == "delete_session":
        assert flows().read("g") is None
    else:
        [run] = _runs(flows, "g")
        assert (run["status"], run["error"]) == (
            "failed",
            "stopped: its generator was closed before its end",
        )
        assert Drafts(session_id="g", storage=flows()).session_state == {
            "outline": "outline of essay"
        }
    assert flow.session_state == {}
    for session_id in flows().get_all_session_ids():
        if session_id != "g":
            stored = flows().read(session_id)
            assert stored is not None
            assert stored.memory is None or stored.memory.get("runs") in (None, [])
            assert stored.session_data["session_state"] == {}  # type: ignore[index]


def test_a_run_that_yields_from_super_run_records_one_run(flows: Store) -> None:
    flow = LouderDrafts(session_id="g", storage=flows())
    assert list(flow.run("essay")) == ["OUTLINE OF ESSAY", "DRAFT 1"]
    assert [(r["status"], r["output"]) for r in _runs(flows, "g")] == [("completed", "louder")]


def test_a_run_while_another_waits_at_a_yield_is_recorded_and_saved(flows: Store) -> None:
    # A caller who looks at the first thing a run yields and keeps its generator may run
    # the workflow again meanwhile: that run is a run of its own, not part of the first.
    flow = Drafts(session_id="g", storage=flows())
    first = flow.run("first")
    assert next(first) == "outline of first"
    assert list(flow.run("second")) == ["outline of first", "draft 1"]
    assert [(r["status"], r["output"]) for r in _runs(flows, "g")] == [("completed", "second done")]
    assert Drafts(session_id="g", storage=flows()).session_state["drafts"] == 1
    assert list(first) == ["draft 2"]
    runs = _runs(flows, "g")
    assert [(r["status"], r["output"]) for r in runs] == [
        ("completed", "second done"),
        ("completed", "first done"),
    ]


class Echo(Workflow):
    """A run that takes what it is sent, and carries on after an error thrown into it."""

    def run(self) -> Iterator[str]:
        heard = []
        while True:
            try:
                said = yield f"heard {len(heard)}"
            except KeyError as exc:
                heard.append(f"error {exc}")
                continue
            if said is None:
                return heard
            heard.append(said)


def test_a_run_that_yields_is_sent_values_and_thrown_errors_as_yield_from_would(
    flows: Store,
) -> None:
    flow = Echo(session_id="e", storage=flows())
    echo = flow.run()
    assert next(echo) == "heard 0"
    assert echo.send("a") == "heard 1"
    assert echo.throw(KeyError("k")) == "heard 2"
    with pytest.raises(StopIteration) as stop:
        echo.send(None)
    assert stop.value.value == ["a", "error 'k'"]
    assert [(r["status"], r["output"]) for r in _runs(flows, "e")] == [
        ("completed", ["a", "error 'k'"])
    ]
    echo = flow.run()
    next(echo)
    with pytest.raises(ValueError, match="bad"):
        echo.throw(ValueError("bad"))
    assert _runs(flows, "e")[-1]["error"] == "ValueError: bad"
    echo = flow.run()
    next(echo)
    echo.close()
    assert "stopped" in _runs(flows, "e")[-1]["error"]
    assert len(_runs(flows, "e")) == 3


def test_an_async_run_is_refused_when_the_class_is_made() -> None:
    with pytest.raises(TypeError, match="async"):

        class Coroutine(Workflow):
            async def run(self) -> str:
                return "never recorded"

    with pytest.raises(TypeError, match="async"):

        class Stream(Workflow):
            async def run(self) -> Any:
                yield "never recorded"


def test_a_failed_run_keeps_the_steps_it_completed(flows: Store, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    with pytest.raises(StepFailed):
        Pipeline(markers, "clean", session_id="p", storage=flows()).run("data")
    stored = flows().read("p")
    assert stored is not None
    assert stored.memory["runs"][0]["status"] == "failed"  # type: ignore[attr-defined]
    error = stored.memory["runs"][0]["error"]  # type: ignore[attr-defined]
    assert error == "StepFailed: step clean failed as told (in step 'clean')"
    result = Pipeline(markers, "none", session_id="p", storage=flows()).run("data")
    assert result == "report(clean(fetch(data)))"
    assert _computed(markers) == {"clean": 2, "fetch": 1, "report": 1}


class Hoarder(Workflow):
    def run(self, keep: Any = None, fail: bool = False) -> str:
        self.session_state["count"] = self.session_state.get("count", 0) + 1
        if keep is not None:
            self.session_state["kept"] = keep
        if fail:
            raise ValueError("nothing found")
        return "done"


@pytest.mark.parametrize("fail", [False, True])
def test_a_run_whose_state_cannot_be_stored_is_recorded_as_failed(flows: Store, fail: bool) -> None:
    flow = Hoarder(session_id="w", storage=flows())
    flow.run()
    with pytest.raises(SerializationError, match=r"session_state'\]\['kept'\].*set"):
        flow.run({1, 2}, fail=fail)
    runs = _runs(flows, "w")
    assert [r["status"] for r in runs] == ["completed", "failed"]
    assert "output" not in runs[1]
    error = "not saved: SerializationError: "
    assert runs[1]["error"].startswith(("ValueError: nothing found; " if fail else "") + error)
    # The state is as stored: the run's changes, which could not be saved, are dropped.
    assert flow.session_state == {"count": 1}
    assert Hoarder(session_id="w", storage=flows()).session_state == {"count": 1}
    assert flow.run() == "done"
    assert flows().read("w").session_data["session_state"] == {"count": 2}  # type: ignore[union-attr]


class Replacer(Workflow):
    def run(self, state: Any) -> str:
        self.session_state["count"] = self.session_state.get("count", 0) + 1
        if state is not None:
            self.session_state = state
        return "done"


def test_a_run_that_replaces_its_state_with_no_dict_is_recorded_as_failed(flows: Store) -> None:
    flow = Replacer(session_id="w", storage=flows())
    flow.run(None)
    with pytest.raises(SerializationError, match="session_state must be a dict, not list"):
        flow.run([1, 2])
    runs = _runs(flows, "w")
    assert [r["status"] for r in runs] == ["completed", "failed"]
    assert runs[1]["error"].startswith("not saved: SerializationError: ")
    assert flow.session_state == {"count": 1}
    assert flow.run({"count": 5}) == "done"
    assert flows().read("w").session_data["session_state"] == {"count": 5}  # type: ignore[union-attr]


class Tagger(Workflow):
    def run(self, tags: Any) -> str:
        self.step("first", lambda: "one")

        def second() -> str:
            self.session_state["tags"] = tags
            return "two"

        return self.step("second", second)


def test_a_step_whose_state_cannot_be_stored_fails_its_run_and_is_computed_again(
    flows: Store,
) -> None:
    with pytest.raises(SerializationError, match=r"\['tags'\]: a set"):
        Tagger(session_id="w", storage=flows()).run({"b", "a"})
    [run] = _runs(flows, "w")
    assert run["status"] == "failed"
    assert run["error"].startswith("not saved: SerializationError: ")
    assert run["error"].count("SerializationError") == 1
    assert flows().read("w").session_data["session_state"] == {"first": "one"}  # type: ignore[union-attr]
    flow = Tagger(session_id="w", storage=flows())
    assert flow.run(["a", "b"]) == "two"
    assert flow.session_state == {"first": "one", "tags": ["a", "b"], "second": "two"}


def test_a_new_process_does_not_compute_a_saved_step_again(flows: Store, tmp_path: Path) -> None:
    flows.require("processes")
    markers = tmp_path / "markers"
    run_worker("workflow", flows.url, "p", markers, "report", ok=False)
    assert _computed(markers) == {"clean": 1, "fetch": 1, "report": 1}
    out = run_worker("workflow", flows.url, "p", markers, "none")
    assert out == ["report(clean(fetch(data)))"]
    assert _computed(markers) == {"clean": 1, "fetch": 1, "report": 2}
    stored = flows().read("p")
    assert stored is not None
    assert [r["status"] for r in stored.memory["runs"]] == ["failed", "completed"]  # type: ignore[attr-defined]


class Collector(Workflow):
    def run(self, keys: list[str]) -> dict[str, str]:
        results = self.session_state.setdefault("results", {})
        for key in keys:
            results[key] = self.step(key, key.upper)
        return dict(results)


def test_a_value_of_the_state_changed_across_steps_is_saved_whole(flows: Store) -> None:
    flow = Collector(session_id="c", storage=flows())
    assert flow.run(["a", "b", "c"]) == {"a": "A", "b": "B", "c": "C"}
    stored = flows().read("c")
    assert stored is not None
    assert stored.session_data["session_state"]["results"] == {"a": "A", "b": "B", "c": "C"}  # type: ignore[index]


def test_a_step_saved_by_another_workflow_object_is_kept_by_this_ones_save(flows: Store) -> None:
    # Two processes on one session, each saving a step result: the second save keeps the
    # first one's, so no later process computes it again. A key this one removed goes.
    first = Counter(session_id="w", storage=flows(), session_state={"old": 1})
    second = Counter(session_id="w", storage=flows())
    first.save()
    second.load_session()
    computed: list[str] = []

    def result(name: str) -> Any:
        return lambda: computed.append(name) or name.upper()

    assert first.step("x", result("x")) == "X"
    del second.session_state["old"]
    assert second.step("y", result("y")) == "Y"
    stored = flows().read("w")
    assert stored is not None
    assert stored.session_data["session_state"] == {"x": "X", "y": "Y"}  # type: ignore[index]
    later = Counter(session_id="w", storage=flows())
    assert later.step("x", result("x")) == "X"
    assert computed == ["x", "y"]


def test_a_step_saved_since_this_object_loaded_is_not_computed_again(flows: Store) -> None:
    # Two workers hold the session; one saves a step: the other, made before that save and
    # not reloaded, takes the saved result instead of computing it again and overwriting it.
    first = Counter(session_id="w", storage=flows())
    second = Counter(session_id="w", storage=flows())
    computed: list[str] = []
    assert second.step("x", lambda: computed.append("second") or "from second") == "from second"
    assert first.step("x", lambda: computed.append("first") or "from first") == "from second"
    assert computed == ["second"]
    stored = flows().read("w")
    assert stored is not None
    assert stored.session_data["session_state"] == {"x": "from second"}  # type: ignore[index]


def test_a_step_taken_out_of_the_state_is_computed_again(flows: Store) -> None:
    flow = Counter(session_id="w", storage=flows())
    assert flow.step("x", lambda: "old") == "old"
    del flow.session_state["x"]  # to compute it again
    assert flow.step("x", lambda: "new") == "new"
    stored = flows().read("w")
    assert stored is not None
    assert stored.session_data["session_state"] == {"x": "new"}  # type: ignore[index]


def test_of_two_workers_computing_one_step_at_once_the_first_saved_result_is_kept(
    flows: Store,
) -> None:
    first = Counter(session_id="w", storage=flows())
    second = Counter(session_id="w", storage=flows())

    def slow() -> str:
        # While this one computes, the other worker computes and saves the same step.
        assert second.step("x", lambda: "from second") == "from second"
        return "from first"

    assert first.step("x", slow) == "from second"
    assert first.session_state["x"] == "from second"
    stored = flows().read("w")
    assert stored is not None
    assert stored.session_data["session_state"] == {"x": "from second"}  # type: ignore[index]


def _steps(markers: Path, fail: str, store: Store, **kwargs: Any) -> StepWorkflow:
    def make(name: str) -> Step:
        def fn(ctx: StepContext) -> str:
            before = ctx.outputs[STEPS[STEPS.index(name) - 1]] if name != STEPS[0] else ctx.input
            markers.mkdir(exist_ok=True)
            with (markers / name).open("a") as f:
                f.write("x")
            ctx.session_state[name] = True
            if name == fail:
                raise StepFailed(name)
            return f"{name}({before})"

        return Step(name, fn)

    return StepWorkflow([make(n) for n in STEPS], storage=store(), name="pipeline", **kwargs)


def test_each_step_workflow_run_records_every_step(steps_store: Store, tmp_path: Path) -> None:
    flow = _steps(tmp_path / "m", "none", steps_store, session_id="s", user_id="ada")
    result = flow.run("data")
    assert result.content == "report(clean(fetch(data)))"
    assert result.resumed == []
    flow.run("more")
    stored = steps_store().read("s")
    assert isinstance(stored, WorkflowSessionV2)
    assert stored.workflow_name == "pipeline"
    assert stored.user_id == "ada"
    assert stored.runs is not None
    assert [r["input"] for r in stored.runs] == ["data", "more"]
    assert [s["status"] for s in stored.runs[0]["steps"]] == ["completed"] * 3
    assert stored.runs[0]["steps"][1]["output"] == "clean(fetch(data))"
    assert stored.session_data["session_state"] == dict.fromkeys(STEPS, True)  # type: ignore[index]
    with pytest.raises(LookupError, match="nothing to resume"):
        flow.resume()


def test_an_agent_run_in_a_step_is_linked_to_the_workflow_session(
    steps_store: Store, tmp_path: Path
) -> None:
    agents = open_storage(f"sqlite:///{tmp_path / 'agents.db'}", mode="agent")

    def ask(ctx: StepContext) -> str | None:
        agent = Agent(OfflineModel(), agents, workflow_session_id=ctx.session_id)
        return agent.run(str(ctx.input)).content

    flow = StepWorkflow([ask], steps_store(), session_id="s")
    assert "hello" in str(flow.run("hello").content)
    [linked] = agents.get_all_sessions()
    assert linked.workflow_session_id == "s"  # type: ignore[attr-defined]


def test_a_failed_step_run_resumes_from_the_first_step_not_done(
    steps_store: Store, tmp_path: Path
) -> None:
    markers = tmp_path / "m"
    first = _steps(markers, "clean", steps_store, session_id="s")
    with pytest.raises(StepFailed):
        first.run("data")
    stored = steps_store().read("s")
    assert stored is not None
    run = stored.runs[0]  # type: ignore[attr-defined]
    assert run["status"] == "failed"
    assert [s["status"] for s in run["steps"]] == ["completed", "failed", "pending"]
    again = _steps(markers, "none", steps_store, session_id="s")
    assert [r["run_id"] for r in again.pending_runs()] == [run["run_id"]]
    result = again.resume()
    assert result.run_id == run["run_id"]
    assert result.resumed == ["fetch"]
    assert result.content == "report(clean(fetch(data)))"
    assert _computed(markers) == {"clean": 2, "fetch": 1, "report": 1}
    stored = steps_store().read("s")
    assert stored is not None
    assert len(stored.runs) == 1  # type: ignore[attr-defined]
    assert stored.runs[0]["status"] == "completed"  # type: ignore[attr-defined]
    assert "error" not in stored.runs[0]["steps"][1]  # type: ignore[attr-defined]
    # The object whose run failed sees that another completed it: nothing to run again.
    assert first.pending_runs() == []
    with pytest.raises(LookupError, match="nothing to resume"):
        first.resume()
    assert _computed(markers) == {"clean": 2, "fetch": 1, "report": 1}


def test_a_state_changed_before_a_resume_is_what_the_steps_see_and_is_saved(
    steps_store: Store,
) -> None:
    def fetch(ctx: StepContext) -> str:
        ctx.session_state["fetched"] = True
        return "page"

    def send(ctx: StepContext) -> str:
        if "token" not in ctx.session_state:
            raise PermissionError("no token")
        return f"sent with {ctx.session_state['token']}"

    flow = StepWorkflow([fetch, send], storage=steps_store(), session_id="s")
    with pytest.raises(PermissionError):
        flow.run()
    flow.session_state["token"] = "t-1"  # what the failed step lacked
    state = flow.session_state
    assert flow.resume().content == "sent with t-1"
    assert flow.session_state is state
    assert state == {"fetched": True, "token": "t-1"}
    stored = steps_store().read("s")
    assert stored is not None
    assert stored.session_data["session_state"] == {"fetched": True, "token": "t-1"}  # type: ignore[index]


def test_a_run_resumed_by_a_workflow_whose_steps_changed_keeps_the_steps_it_had(
    steps_store: Store,
) -> None:
    # The pipeline's code changed between the failure and the resume: the step it no longer
    # has stays in the run's record, output and all, after the steps it has now.
    def fetch(ctx: StepContext) -> str:
        return "fetched"

    def enrich(ctx: StepContext) -> str:
        return "enriched"

    def parse(ctx: StepContext) -> str:
        raise StepFailed("parse")

    with pytest.raises(StepFailed):
        StepWorkflow([fetch, enrich, parse], steps_store(), session_id="s").run("data")

    def parse_again(ctx: StepContext) -> str:
        return f"parsed {ctx.outputs['fetch']}"

    parse_again.__name__ = "parse"
    result = StepWorkflow([fetch, parse_again], steps_store(), session_id="s").resume()
    assert (result.content, result.resumed) == ("parsed fetched", ["fetch"])
    stored = steps_store().read("s")
    assert stored is not None
    [run] = stored.runs  # type: ignore[attr-defined]
    assert run["status"] == "completed"
    assert [(s["name"], s["status"], s.get("output")) for s in run["steps"]] == [
        ("fetch", "completed", "fetched"),
        ("parse", "completed", "parsed fetched"),
        ("enrich", "completed", "enriched"),
    ]


def test_a_step_runs_outputs_are_given_as_stored(steps_store: Store) -> None:
    # A tuple is stored as a list: the next step, the run's outputs and its content all
    # give the list, as a read of the run does and a resumed run would.
    seen = []

    def pair(ctx: StepContext) -> tuple[str, int]:
        return ("a", 1)

    def last(ctx: StepContext) -> tuple[str, ...]:
        seen.append(ctx.outputs["pair"])
        return ("b",)

    result = StepWorkflow([pair, last], steps_store(), session_id="s").run()
    assert seen == [["a", 1]]
    assert result.outputs == {"pair": ["a", 1], "last": ["b"]}
    assert result.content == ["b"]
    stored = steps_store().read("s")
    assert stored is not None
    assert [s["output"] for s in stored.runs[0]["steps"]] == [["a", 1], ["b"]]  # type: ignore[attr-defined]


def test_a_step_runs_input_is_given_as_stored_on_its_first_attempt_as_on_a_resume(
    steps_store: Store,
) -> None:
    # A step that worked on the tuple and the date of the first attempt would fail on a
    # resume, which is given the list and the ISO text the store holds.
    seen: list[Any] = []
    failing = [True]

    def first(ctx: StepContext) -> str:
        seen.append(ctx.input)
        return "one"

    def second(ctx: StepContext) -> str:
        seen.append(ctx.input)
        if failing:
            raise StepFailed("second failed as told")
        return "two"

    given = ("a", datetime.date(2024, 1, 2))
    with pytest.raises(StepFailed):
        StepWorkflow([first, second], steps_store(), session_id="s").run(given)
    failing.clear()
    StepWorkflow([first, second], steps_store(), session_id="s").resume()
    assert seen == [["a", "2024-01-02"]] * 3


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_a_step_run_interrupted_is_stored_as_failed(
    steps_store: Store, stop: type[BaseException]
) -> None:
    def fetch(ctx: StepContext) -> str:
        return "fetched"

    def wait(ctx: StepContext) -> str:
        raise stop()

    with pytest.raises(stop):
        StepWorkflow([fetch, wait], steps_store(), session_id="s").run()
    stored = steps_store().read("s")
    assert stored is not None
    [run] = stored.runs  # type: ignore[attr-defined]
    assert run["status"] == "failed"
    assert [(s["status"], s.get("error")) for s in run["steps"]] == [
        ("completed", None),
        ("failed", f"{stop.__name__}: "),
    ]


def test_a_run_resumed_with_nothing_left_to_run_is_stored_as_completed(
    steps_store: Store,
) -> None:
    fetched: list[str] = []

    def fetch(ctx: StepContext) -> str:
        fetched.append("fetched")
        return "fetched"

    def flaky(ctx: StepContext) -> str:
        raise StepFailed("flaky")

    with pytest.raises(StepFailed):
        StepWorkflow([fetch, flaky], steps_store(), session_id="s").run()
    # The step that failed is taken out of the workflow: what is left was done before.
    fewer = StepWorkflow([fetch], steps_store(), session_id="s")
    result = fewer.resume()
    assert (result.status, result.resumed) == ("completed", ["fetch"])
    stored = steps_store().read("s")
    assert stored is not None
    assert [r["status"] for r in stored.runs] == ["completed"]  # type: ignore[attr-defined]
    assert fewer.pending_runs() == []
    with pytest.raises(LookupError, match="nothing to resume"):
        fewer.resume()
    # Named by its id, the completed run is given back (a resume retried after another
    # process finished it), no step run again.
    again = StepWorkflow([fetch], steps_store(), session_id="s").resume(result.run_id)
    assert (again.run_id, again.status, again.content) == (result.run_id, "completed", "fetched")
    assert fetched == ["fetched"]
    # An empty id names no run: it was told that every run completed.
    with pytest.raises(LookupError, match="no run '' in session 's'"):
        fewer.resume("")


@pytest.mark.parametrize("output", [{"a set"}, float("nan"), object()])
def test_a_step_whose_output_cannot_be_stored_fails_and_is_resumed(
    steps_store: Store, output: Any
) -> None:
    outputs = [output, "fixed"]

    def fetch(ctx: StepContext) -> str:
        return "fetched"

    def parse(ctx: StepContext) -> Any:
        ctx.session_state["parsed"] = True
        return outputs.pop(0)

    flow = StepWorkflow([fetch, parse], steps_store(), session_id="s")
    with pytest.raises(SerializationError, match=r"\['steps'\]\[1\]\['output'\]"):
        flow.run("data")
    stored = steps_store().read("s")
    assert stored is not None
    [run] = stored.runs  # type: ignore[attr-defined]
    assert run["status"] == "failed"
    assert [s["status"] for s in run["steps"]] == ["completed", "failed"]
    assert "output" not in run["steps"][1]
    assert run["steps"][1]["error"].startswith("SerializationError: ")
    assert stored.session_data["session_state"] == {"parsed": True}  # type: ignore[index]
    result = StepWorkflow([fetch, parse], steps_store(), session_id="s").resume()
    assert (result.run_id, result.content, result.resumed) == (run["run_id"], "fixed", ["fetch"])


@pytest.mark.parametrize("fail", [False, True])
def test_a_step_whose_state_cannot_be_stored_fails_without_its_state(
    steps_store: Store, fail: bool
) -> None:
    def fetch(ctx: StepContext) -> str:
        ctx.session_state["fetched"] = True
        return "fetched"

    def parse(ctx: StepContext) -> str:
        ctx.session_state["seen"] = {"a set"}
        if fail:
            raise StepFailed("parse")
        return "parsed"

    flow = StepWorkflow([fetch, parse], steps_store(), session_id="s")
    with pytest.raises(SerializationError, match=r"session_state'\]\['seen'\]"):
        flow.run("data")
    stored = steps_store().read("s")
    assert stored is not None
    [run] = stored.runs  # type: ignore[attr-defined]
    assert (run["status"], run["steps"][1]["status"]) == ("failed", "failed")
    failed = "StepFailed: parse; not saved: " if fail else ""
    assert run["steps"][1]["error"].startswith(failed + "SerializationError: ")
    assert stored.session_data["session_state"] == {"fetched": True}  # type: ignore[index]
    assert flow.session_state == {"fetched": True}


def test_a_new_process_resumes_a_failed_step_run(steps_store: Store, tmp_path: Path) -> None:
    steps_store.require("processes")
    markers = tmp_path / "m"
    run_worker("steps", steps_store.url, "s", markers, "report", "run", ok=False)
    out = run_worker("steps", steps_store.url, "s", markers, "none", "resume")
    assert out == ["report(clean(fetch(data))) fetch,clean"]
    assert _computed(markers) == {"clean": 1, "fetch": 1, "report": 2}


def test_a_step_run_whose_process_was_killed_is_resumed(steps_store: Store, tmp_path: Path) -> None:
    steps_store.require("processes")
    markers = tmp_path / "m"
    run_worker("steps", steps_store.url, "s", markers, "kill:clean", "run", ok=False)
    stored = steps_store().read("s")
    assert stored is not None
    [run] = stored.runs  # type: ignore[attr-defined]
    assert run["status"] == "running"
    assert [s["status"] for s in run["steps"]] == ["completed", "pending", "pending"]
    out = run_worker("steps", steps_store.url, "s", markers, "none", "resume")
    assert out == ["report(clean(fetch(data))) fetch"]
    assert _computed(markers) == {"clean": 2, "fetch": 1, "report": 1}


@pytest.mark.parametrize(
    ("kill_at", "resumed", "clean"),
    [("workflow_v2:save:3", "fetch", 2), ("workflow_v2:saved:3", "fetch,clean", 1)],
)
def test_a_step_run_killed_in_a_steps_save_is_resumed_from_the_last_step_saved(
    steps_store: Store, tmp_path: Path, kill_at: str, resumed: str, clean: int
) -> None:
    # The third save is the one that records the step clean as completed.
    steps_store.require("processes")
    markers = tmp_path / "m"
    run_worker("steps", steps_store.url, "s", markers, "none", "run", kill_at=kill_at)
    out = run_worker("steps", steps_store.url, "s", markers, "none", "resume")
    assert out == [f"report(clean(fetch(data))) {resumed}"]
    assert _computed(markers) == {"clean": clean, "fetch": 1, "report": 1}
    stored = steps_store().read("s")
    assert stored is not None
    assert [r["status"] for r in stored.runs] == ["completed"]  # type: ignore[attr-defined]


def test_a_step_run_killed_before_its_first_save_leaves_no_run_to_resume(
    steps_store: Store, tmp_path: Path
) -> None:
    steps_store.require("processes")
    markers = tmp_path / "m"
    run_worker("steps", steps_store.url, "s", markers, "none", "run", kill_at="workflow_v2:save:1")
    assert steps_store().read("s") is None
    flow = _steps(markers, "none", steps_store, session_id="s")
    with pytest.raises(LookupError, match="'s' has no runs stored: nothing to resume"):
        flow.resume()


def test_a_workflow_whose_process_was_killed_keeps_the_steps_it_saved(
    flows: Store, tmp_path: Path
) -> None:
    flows.require("processes")
    markers = tmp_path / "markers"
    run_worker("workflow", flows.url, "p", markers, "kill:clean", ok=False)
    out = run_worker("workflow", flows.url, "p", markers, "none")
    assert out == ["report(clean(fetch(data)))"]
    assert _computed(markers) == {"clean": 2, "fetch": 1, "report": 1}
    assert [r["status"] for r in _runs(flows, "p")] == ["completed"]


def test_a_workflow_killed_once_a_steps_save_returned_does_not_compute_it_again(
    flows: Store, tmp_path: Path
) -> None:
    # The second save is the one that stores the step clean.
    flows.require("processes")
    markers = tmp_path / "markers"
    run_worker("workflow", flows.url, "p", markers, "none", kill_at="workflow:saved:2")
    stored = flows().read("p")
    assert stored is not None
    assert stored.session_data["session_state"] == {  # type: ignore[index]
        "fetch": "fetch(data)",
        "clean": "clean(fetch(data))",
    }
    out = run_worker("workflow", flows.url, "p", markers, "none")
    assert out == ["report(clean(fetch(data)))"]
    assert _computed(markers) == {"clean": 1, "fetch": 1, "report": 1}
    assert [r["status"] for r in _runs(flows, "p")] == ["completed"]


def test_a_step_run_resumes_in_another_storage_given_to_the_workflow(
    steps_store: Store, tmp_path: Path
) -> None:
    markers = tmp_path / "m"
    flow = _steps(markers, "clean", steps_store, session_id="s")
    flow.storage = JsonStorage(tmp_path / "before", mode="workflow_v2")
    with pytest.raises(StepFailed):
        flow.run("data")
    flow.storage = steps_store()
    flow.steps = _steps(markers, "none", steps_store).steps
    result = flow.resume()
    assert (result.content, result.resumed) == ("report(clean(fetch(data)))", ["fetch"])
    stored = steps_store().read("s")
    assert stored is not None
    assert [r["status"] for r in stored.runs] == ["completed"]  # type: ignore[attr-defined]
    assert stored.session_data["session_state"] == dict.fromkeys(STEPS, True)  # type: ignore[index]
    assert [
        r["status"] for r in JsonStorage(tmp_path / "before", mode="workflow_v2").read("s").runs
    ] == ["failed"]  # type: ignore[union-attr]


def test_pending_runs_are_those_resume_finds_after_a_move_or_a_deletion(
    steps_store: Store, tmp_path: Path
) -> None:
    # Moved to a store holding an older copy of its session (copied there before the run
    # failed), a workflow's pending_runs() read that copy alone and said nothing was left,
    # where resume() went on with the failed run; deleted elsewhere, the session's runs
    # were still pending, where resume() said there were none.
    markers = tmp_path / "m"
    flow = _steps(markers, "none", steps_store, session_id="s")
    older = flow.storage = JsonStorage(tmp_path / "before", mode="workflow_v2")
    flow.run("first")
    transfer.copy_sessions(older, steps_store())
    flow.steps = _steps(markers, "clean", steps_store).steps
    with pytest.raises(StepFailed):
        flow.run("second")
    flow.storage = steps_store()
    assert [r["input"] for r in flow.pending_runs()] == ["second"]
    flow.steps = _steps(markers, "none", steps_store).steps
    assert flow.resume().content == "report(clean(fetch(second)))"
    assert flow.pending_runs() == []

    with pytest.raises(StepFailed):
        _steps(markers, "clean", steps_store, session_id="gone").run("data")
    gone = _steps(markers, "none", steps_store, session_id="gone")
    assert steps_store().delete_session("gone")
    assert gone.pending_runs() == []
    with pytest.raises(LookupError, match="has no runs stored"):
        gone.resume()


def _two_resumers(markers: Path, failing: str, store: Store) -> tuple[StepWorkflow, StepWorkflow]:
    """Two objects of the session "s", whose run failed at step ``failing``."""
    with pytest.raises(StepFailed):
        _steps(markers, failing, store, session_id="s").run("data")
    return (
        _steps(markers, "none", store, session_id="s"),
        _steps(markers, "none", store, session_id="s"),
    )


def test_of_two_objects_resuming_one_run_at_once_neither_undoes_the_others_steps(
    steps_store: Store, tmp_path: Path
) -> None:
    markers = tmp_path / "m"
    first, second = _two_resumers(markers, "fetch", steps_store)
    fetch = first.steps[0].fn

    def slow(ctx: StepContext) -> str:
        # While this one computes, the other resumes the same run and completes it.
        assert second.resume().content == "report(clean(fetch(data)))"
        fetch(ctx)
        return "fetch(late)"

    first.steps[0] = Step("fetch", slow)
    result = first.resume()
    # The first result saved is kept, and the steps the other completed are not run again.
    assert result.outputs == {
        "fetch": "fetch(data)",
        "clean": "clean(fetch(data))",
        "report": "report(clean(fetch(data)))",
    }
    assert _computed(markers) == {"clean": 1, "fetch": 3, "report": 1}
    stored = steps_store().read("s")
    assert stored is not None
    [run] = stored.runs  # type: ignore[attr-defined]
    assert run["status"] == "completed"
    assert [s["output"] for s in run["steps"]] == list(result.outputs.values())


def test_a_resume_failing_after_another_completed_the_run_leaves_it_completed(
    steps_store: Store, tmp_path: Path
) -> None:
    markers = tmp_path / "m"
    first, second = _two_resumers(markers, "clean", steps_store)

    def failing(ctx: StepContext) -> str:
        second.resume()
        raise StepFailed("clean")

    first.steps[1] = Step("clean", failing)
    with pytest.raises(StepFailed):
        first.resume()
    stored = steps_store().read("s")
    assert stored is not None
    [run] = stored.runs  # type: ignore[attr-defined]
    assert run["status"] == "completed"
    assert [s["status"] for s in run["steps"]] == ["completed"] * 3
    with pytest.raises(LookupError, match="nothing to resume"):
        _steps(markers, "none", steps_store, session_id="s").resume()


def test_a_workflow_session_of_another_shape_is_corrupt(flows: Store) -> None:
    flows().upsert(WorkflowSession(session_id="w", session_data={"session_state": [1]}))
    with pytest.raises(CorruptSessionError, match=r"'w'.* session_data.session_state"):
        Counter(session_id="w", storage=flows())
    flow = Counter(session_id="v", storage=flows())
    flow.run()
    flows().upsert(WorkflowSession(session_id="v", session_data={"session_state": "x"}))
    with pytest.raises(CorruptSessionError, match=r"'v'.* session_data.session_state"):
        flow.step("later", lambda: 1)


@pytest.mark.parametrize(("field", "runs"), [("runs", {"run_id": "r"}), (r"runs\[0\]", ["a run"])])
def test_a_step_workflow_session_of_another_shape_is_corrupt(
    steps_store: Store, field: str, runs: Any
) -> None:
    steps_store().upsert(WorkflowSessionV2(session_id="s", runs=runs))
    with pytest.raises(CorruptSessionError, match=rf"'s'.* {field} should be a"):
        StepWorkflow([Step("one", lambda context: 1)], steps_store(), session_id="s")


def test_a_step_workflow_made_without_a_name_takes_none_from_one_session_to_the_next(
    steps_store: Store,
) -> None:
    def only(ctx: StepContext) -> str:
        return "done"

    StepWorkflow([only], storage=steps_store(), session_id="named", name="pipeline").run()
    flow = StepWorkflow([only], storage=steps_store())
    made = new_session_after(flow, "named", {"name": "pipeline"}, flow.run)
    assert made["workflow_name"] is None
    assert made["workflow_data"] == {"name": None, "steps": ["only"]}


def test_step_names_must_be_distinct() -> None:
    with pytest.raises(ValueError, match="distinct names"):
        StepWorkflow([Step("a", lambda ctx: 1), Step("a", lambda ctx: 2)])


@pytest.mark.parametrize(
    ("run", "told"),
    [
        ({"status": "failed", "input": 1}, r"runs\[0\] has no run_id"),
        ({"run_id": "r", "status": "failed", "steps": "one"}, r"runs\[0\]\.steps should be a list"),
        ({"run_id": "r", "status": "failed", "steps": [1]}, r"runs\[0\]\.steps\[0\] should be a"),
        ({"run_id": "r", "steps": [{"status": "completed"}]}, r"runs\[0\]\.steps\[0\] should be"),
    ],
)
def test_a_stored_run_of_another_shape_is_not_resumed(
    steps_store: Store, run: dict[str, Any], told: str
) -> None:
    steps_store().upsert(WorkflowSessionV2(session_id="s", runs=[run]))
    flow = StepWorkflow([Step("one", lambda context: 1)], steps_store(), session_id="s")
    assert flow.pending_runs() == [run]
    with pytest.raises(CorruptSessionError, match=rf"'s' cannot be resumed: its {told}"):
        flow.resume()
    assert steps_store().read("s").runs == [run]  # type: ignore[union-attr]


def test_a_stored_run_without_input_is_resumed_with_none(steps_store: Store) -> None:
    steps_store().upsert(WorkflowSessionV2(session_id="s", runs=[{"run_id": "r"}]))
    flow = StepWorkflow([Step("one", lambda context: context.input)], steps_store(), session_id="s")
    assert (flow.resume().content, [r["status"] for r in flow.runs]) == (None, ["completed"])


def test_pending_runs_of_a_session_changed_to_another_shape_is_corrupt(steps_store: Store) -> None:
    flow = StepWorkflow([Step("one", lambda context: 1)], steps_store(), session_id="s")
    flow.run()
    steps_store().upsert(WorkflowSessionV2(session_id="s", runs=["a run"]))
    with pytest.raises(CorruptSessionError, match=r"'s'.* runs\[0\] should be a"):
        flow.pending_runs()
