"""Workflows whose progress survives a restart.

Two kinds, one per storage mode:

- :class:`Workflow` (mode ``"workflow"``): a subclass writes ``run(...)`` by hand and keeps
  its progress in ``self.session_state``, which is saved after every run (failed runs too)
  and is there again when the workflow is made with the same session id, in any process.
  :meth:`Workflow.step` computes a result once: when the state already holds it, it is not
  computed again.
- :class:`StepWorkflow` (mode ``"workflow_v2"``): a list of steps; each run is recorded in
  ``WorkflowSession.runs`` with the status and output of every step, saved after every step.
  A run that failed (or whose process died) part-way is resumed by :meth:`StepWorkflow.resume`
  from the first step that did not complete. Two processes resuming one run at once may both
  compute the step neither has completed (there is no lock, so that a run whose process died
  can always be resumed); the first result saved is kept, a step one of them completed is not
  run by the other, and a completed step or run is never stored again as failed or pending.
"""

from __future__ import annotations

import atexit
import copy
import functools
import inspect
import os
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from savegame.errors import CorruptSessionError, SerializationError
from savegame.runtime import Run, SessionKeeper, new_id
from savegame.storage.base import Storage, after_held
from savegame.storage.codec import encode
from savegame.storage.session import get_path

T = TypeVar("T")

_MISSING = object()
"""No result saved for a step."""


def _storable(value: Any) -> Any:
    """``value`` when the store can hold it as it is, else its ``repr`` (for the run record)."""
    try:
        return encode(value)
    except SerializationError:
        return repr(value)


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _not_saved(error: str | None, unstorable: SerializationError) -> str:
    """The error of a run or step whose save was refused with ``unstorable``."""
    unsaved = f"not saved: {_failure(unstorable)}"
    # A run that failed with this very refusal (a step's save) says it once.
    return f"{error}; {unsaved}" if error and error != _failure(unstorable) else unsaved


class Workflow(SessionKeeper):
    """A workflow written as a ``run`` method; its ``session_state`` is saved after every run.

    Subclass it and write ``run``; every call of ``run`` is recorded in the session's
    ``memory["runs"]`` (status, duration, input and output where storable) and saves
    ``session_state``, also when ``run`` raises (the run is then recorded as failed and the
    exception propagates). A run whose ``session_state`` holds what the store cannot hold is
    recorded as failed, with the state as stored, and raises ``SerializationError``. A
    ``run`` that yields, as the original's workflows do, is recorded and saved when its
    generator ends (its return value is the output), or fails or is closed before its end
    (at the latest, as the process exits). Inside ``run``, :meth:`step` saves as soon as a
    result is known, so even a killed process keeps the results it had::

        class Report(Workflow):
            def run(self, topic: str) -> str:
                notes = self.step("notes", lambda: research(topic))
                return self.step("report", lambda: write(notes))

    Args:
        session_id: the session to resume or start; a new id when None.
        user_id: whose session it is; a resumed session's own when None.
        storage: a storage in mode ``"workflow"``; None keeps the session in this object.
        workflow_id: stored in the session's ``workflow_id``.
        name: stored in ``workflow_data`` (default: the class's ``name`` or its name).
        session_name: a name for the session.
        session_state: the state a new session starts with (resumed state wins).
        extra_data: stored as the session's ``extra_data``.

    Raises:
        SessionOwnerError: when ``session_id`` belongs to another ``user_id``.
        StorageError: when the stored session cannot be read.
    """

    mode = "workflow"
    data_field = "workflow_data"
    name: str | None = None
    description: str | None = None

    def __init__(
        self,
        session_id: str | None = None,
        user_id: str | None = None,
        storage: Storage | None = None,
        workflow_id: str | None = None,
        *,
        name: str | None = None,
        session_name: str | None = None,
        session_state: dict[str, Any] | None = None,
        extra_data: dict[str, Any] | None = None,
    ) -> None:
        self.name = name or self.name or type(self).__name__
        self._in_run = False
        self._new_steps: set[str] = set()
        """Keys of step results being saved: a result stored meanwhile by another process
        is kept rather than overwritten (the first result saved wins)."""
        self._failed_step: tuple[BaseException, str] | None = None
        """The error a step of the run under way raised, with the step's key, for the run's
        record."""
        super().__init__(
            storage, session_id, user_id, workflow_id, session_name, session_state, extra_data
        )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wraps the subclass's ``run`` so that each call is recorded and saved: its own, or
        the one it takes from a class that is not a workflow (a mixin listed before
        :class:`Workflow`), which would otherwise run unrecorded and unsaved.

        Raises:
            TypeError: for an ``async def run``, whose calls would only make a coroutine
                (or an asynchronous generator) and be recorded before any of it ran.
        """
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run") or inspect.getattr_static(cls, "run")
        if run is Workflow.__dict__["run"] or getattr(run, "_recorded_run", False):
            return
        if inspect.iscoroutinefunction(run) or inspect.isasyncgenfunction(run):
            raise TypeError(
                f"{cls.__name__}.run is async; savegame's Workflow records and saves "
                "synchronous runs only: write run() with def, and run coroutines inside it"
            )
        cls.run = _recorded(run)  # type: ignore[method-assign]

    @property
    def workflow_id(self) -> str | None:
        """The id stored in the session's ``workflow_id``."""
        return self.entity_id

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """The workflow's work; subclasses write it.

        Raises:
            NotImplementedError: always, on the base class.
        """
        raise NotImplementedError(f"{type(self).__name__} must define run()")

    def step(self, key: str, compute: Callable[[], T]) -> T:
        """``session_state[key]`` when it is there; otherwise computes it, stores and saves it.

        Raises:
            StorageError: when the result could not be saved (it is then not in the state).
            SerializationError: when the result is not a value the store can hold.
        """
        if key in self.session_state:
            done: T = self.session_state[key]
            return done
        saved = self._saved_step(key)
        if saved is not _MISSING:
            return saved  # type: ignore[no-any-return]
        try:
            value = compute()
        except BaseException as exc:
            failed = self._failed_step
            if self._in_run and (failed is None or failed[0] is not exc):
                self._failed_step = (exc, key)  # the innermost step that raised it
            raise
        self.session_state[key] = value
        self._new_steps.add(key)
        try:
            self.save()
        except Exception:
            del self.session_state[key]
            raise
        finally:
            self._new_steps.discard(key)
        # Another process may have saved this step first: its result is the one kept.
        kept: T = self.session_state.get(key, value)
        return kept

    def _saved_step(self, key: str) -> Any:
        """The result another process saved for ``key`` since this object last read the
        session (taken into this object's state), or :data:`_MISSING`.

        A result this object read and then took out of its state (to compute it again) is
        not taken back from the store."""
        if self.storage is None or key in self._base_state:
            return _MISSING
        stored = self.storage.read(self.session_id)
        if stored is None:
            return _MISSING
        self._check_owner(stored)
        state = get_path(self._fields(stored), ("session_data", "session_state")) or {}
        if key not in state:
            return _MISSING
        self.session_state[key] = copy.deepcopy(state[key])
        self._base_state[key] = copy.deepcopy(state[key])
        return self.session_state[key]

    def save(self) -> None:
        """Saves ``session_state`` now, without recording a run.

        Raises:
            StorageError: when the store refused the write.
        """
        self._checkpoint(None)

    def _checkpoint(self, record: Run | None) -> None:
        # The save refills session_state in place: references taken inside run() keep
        # seeing the saved state.
        self._save(record)

    def _entity_data(self) -> dict[str, Any]:
        return {"name": self.name, "workflow_id": self.entity_id, "description": self.description}

    def _leaving(self) -> None:
        """Closes this object's runs that wait at a ``yield``, each recorded as stopped in
        the session it ran in: iterated on, it would go on in the next session, changing
        that one's state and being recorded among its runs.

        Raises:
            Exception: the first error of a run's close (a save refused, say); the session
                is then not left.
        """
        _close([run for run, flow in list(_UNFINISHED.items()) if flow() is self])

    def _stored_wins(self, key: str) -> bool:
        """A step result another process saved meanwhile is kept (the first result saved
        wins), where this object's would replace it after being computed twice; and so is
        a value this object still holds as it was made with (see the base class)."""
        return key in self._new_steps or super()._stored_wins(key)


def _recorded(run: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps a subclass's ``run`` so that each outermost call is recorded and saved.

    A ``run`` that yields (a generator function, as the original's workflows are written)
    has done nothing when it returns its generator: the run is recorded and saved when the
    generator ends, with what it returned as the output, or fails (also when the caller
    stops before its end, closing it)."""

    @functools.wraps(run)
    def recorded(self: Workflow, *args: Any, **kwargs: Any) -> Any:
        if self._in_run:  # a subclass's run calling super().run(): the outer call records
            return run(self, *args, **kwargs)
        record: Run = {
            "run_id": new_id(),
            "created_at": int(time.time()),
            "input": _storable({"args": list(args), "kwargs": kwargs}),
            "status": "running",
        }
        started = time.perf_counter()
        self._in_run = True
        try:
            result = run(self, *args, **kwargs)
        except BaseException as exc:
            self._in_run = False
            _finish(self, record, started, exc)
            raise
        self._in_run = False
        if inspect.isgenerator(result):
            generator = _recorded_generator(self, result, record, started)
            _left_open(self, generator)
            return generator
        _finish(self, record, started, None, result)
        return result

    recorded._recorded_run = True  # type: ignore[attr-defined]
    return recorded


_UNFINISHED: weakref.WeakKeyDictionary[
    Generator[Any, Any, Any], weakref.ReferenceType[Workflow]
] = weakref.WeakKeyDictionary()
"""The generator runs of this process, by the workflow they are runs of: closed when it
leaves its session (:meth:`Workflow._leaving`) and at the process's exit
(:func:`_close_unfinished`). Kept here rather than in the workflow, which stays a plain
object that pickles; weakly on both sides, so that a run dropped, or a workflow holding
its run, is still closed, and saved, by the garbage collector."""


def _left_open(flow: Workflow, generator: Generator[Any, Any, Any]) -> None:
    """Has ``generator``, a run of ``flow``, closed (so recorded and saved) when ``flow``
    leaves its session or the process exits, if it has not ended by then."""
    _close_at_exit()
    _UNFINISHED[generator] = weakref.ref(flow)


@functools.cache
def _close_at_exit() -> None:
    # At the first run rather than at import, so that it runs before the exit handlers of
    # the drivers and storages made until then (the last registered runs first).
    atexit.register(_close_unfinished)


def _close_unfinished() -> None:
    """Closes the generator runs still waiting at a ``yield`` as the process exits, which
    records and saves them as stopped.

    Left to the interpreter's shutdown, they would be closed after it has begun to take
    modules apart, and their saves would fail (``open`` or an import no longer there) and
    be lost, with only a note on stderr.

    Raises:
        Exception: the first error of a save, once every run has been closed.
    """
    _close(list(_UNFINISHED))


def _close(runs: Iterable[Generator[Any, Any, Any]]) -> None:
    """Closes the generator runs of ``runs`` that wait at a ``yield``, recording each.

    Raises:
        Exception: the first error of a save, once every run has been closed.
    """
    failures: list[BaseException] = []
    for generator in list(runs):
        if inspect.getgeneratorstate(generator) != inspect.GEN_SUSPENDED:
            continue  # not started (nothing ran), ended, or running (the caller, say)
        try:
            generator.close()
        except Exception as exc:  # noqa: BLE001 - raised below, once every run is closed
            failures.append(exc)
    if failures:
        raise failures[0]


if hasattr(os, "register_at_fork"):
    # A forked child's copies are its parent's runs, not its own to record.
    os.register_at_fork(after_in_child=_UNFINISHED.clear)


def _recorded_generator(
    flow: Workflow, generator: Generator[Any, Any, Any], record: Run, started: float
) -> Generator[Any, Any, Any]:
    """``generator``, recorded as one run when it ends; a ``super().run()`` it calls is
    part of that run.

    It is driven as ``yield from`` would drive it (values sent and exceptions thrown in are
    passed on, a close closes it), but the workflow counts as inside a run only while the
    generator's own code runs: while it waits at a ``yield``, its caller may call ``run``
    again (another run, or the next of two generators taken turn about), and that call is a
    run of its own, recorded and saved, not part of this one.
    """
    sent: Any = None
    thrown: BaseException | None = None
    while True:
        flow._in_run = True
        try:
            value = generator.send(sent) if thrown is None else generator.throw(thrown)
        except StopIteration as stop:
            flow._in_run = False
            _finish(flow, record, started, None, stop.value)
            return stop.value
        except BaseException as exc:
            flow._in_run = False
            _finish(flow, record, started, exc)
            raise
        flow._in_run = False
        sent, thrown = None, None
        try:
            sent = yield value
        except GeneratorExit as exc:
            closing = functools.partial(_stop, flow, generator, record, started, exc)
            saving = f"the save of run {record['run_id']} of session {flow.session_id!r}"
            if not after_held(closing, saving):
                closing()
            raise
        except BaseException as exc:  # noqa: BLE001 - thrown into the generator next
            thrown = exc


def _stop(
    flow: Workflow,
    generator: Generator[Any, Any, Any],
    record: Run,
    started: float,
    exc: GeneratorExit,
) -> None:
    """Closes ``generator``, the run of ``flow`` closed with ``exc``, and records it: as
    failed with what its close raised, if it raised, or as stopped.

    The garbage collector may close it in the middle of another run of ``flow``, which
    then goes on as it was: inside its run, with the step that failed in it, if one did."""
    under_way = flow._in_run, flow._failed_step
    flow._in_run, flow._failed_step = True, None
    try:
        try:
            generator.close()
        except BaseException as failure:
            flow._in_run = False
            _finish(flow, record, started, failure)
            raise
        flow._in_run = False
        _finish(flow, record, started, exc)
    finally:
        flow._in_run, flow._failed_step = under_way


def _finish(
    flow: Workflow, record: Run, started: float, exc: BaseException | None, result: Any = None
) -> None:
    """Records the run as failed with ``exc`` (naming the step of :meth:`Workflow.step` that
    raised it, if one did), or as completed with ``result``, and saves."""
    failed, flow._failed_step = flow._failed_step, None
    if exc is None:
        record.update(status="completed", output=_storable(result))
    elif isinstance(exc, GeneratorExit):
        record.update(status="failed", error="stopped: its generator was closed before its end")
    else:
        step = f" (in step {failed[1]!r})" if failed is not None and failed[0] is exc else ""
        record.update(status="failed", error=_failure(exc) + step)
    record["metrics"] = {"duration": time.perf_counter() - started}
    try:
        flow._checkpoint(record)
    except SerializationError as unstorable:
        # The run is recorded as failed rather than not at all: without its output (larger
        # than the store takes, say), and else without the state, which then holds what
        # the store cannot hold.
        record.pop("output", None)
        record.update(status="failed", error=_not_saved(record.get("error"), unstorable))
        try:
            flow._checkpoint(record)
        except SerializationError:
            flow._save(record, keep_state=True)
        raise


@dataclass
class Step:
    """One step of a :class:`StepWorkflow`.

    Attributes:
        name: unique in its workflow; the run record and ``outputs`` are keyed by it.
        fn: called with a :class:`StepContext`; returns the step's output, which must be a
            value the store can hold (JSON-like).
    """

    name: str
    fn: Callable[[StepContext], Any]


@dataclass
class StepContext:
    """What a step is called with.

    Attributes:
        input: the run's input.
        outputs: the outputs of the steps completed so far in this run, by step name
            (including those completed before a resume).
        session_state: the workflow's state, saved with every step.
        run_id: the run's id.
        session_id: the workflow's session, for the ``workflow_session_id`` of an agent
            the step runs (None only in a context made by hand).
    """

    input: Any
    outputs: dict[str, Any]
    session_state: dict[str, Any]
    run_id: str
    session_id: str | None = None


@dataclass
class WorkflowRunResponse:
    """The outcome of a step workflow's run.

    Attributes:
        run_id: the run's id in ``WorkflowSession.runs``.
        session_id: the session the run was saved in.
        status: ``"completed"``.
        outputs: every step's output, by name.
        content: the last step's output.
        steps: the stored record of every step (name, status, output, duration).
        resumed: the steps completed in an earlier attempt and not run again.
    """

    run_id: str
    session_id: str
    status: str
    outputs: dict[str, Any]
    content: Any
    steps: list[dict[str, Any]]
    resumed: list[str] = field(default_factory=list)


class StepWorkflow(SessionKeeper):
    """A workflow of steps, each run recorded with the status of every step.

    Args:
        steps: :class:`Step` objects or functions (named by their ``__name__``).
        storage: a storage in mode ``"workflow_v2"``; None keeps the session in this object.
        session_id: the session to resume or start.
        user_id: whose session it is.
        workflow_id: stored in the session's ``workflow_id``.
        name: stored as the session's ``workflow_name``; when None, each session loaded
            has the name stored with it, and a new session none.
        session_name: a name for the session.
        session_state: the state a new session starts with (resumed state wins).
        extra_data: stored as the session's ``extra_data``.

    Raises:
        ValueError: when there are no steps or two share a name.
        SessionOwnerError: when ``session_id`` belongs to another ``user_id``.
        StorageError: when the stored session cannot be read.
    """

    mode = "workflow_v2"
    data_field = "workflow_data"
    made_with = ("name",)

    def __init__(
        self,
        steps: Sequence[Step | Callable[[StepContext], Any]],
        storage: Storage | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
        workflow_id: str | None = None,
        name: str | None = None,
        session_name: str | None = None,
        session_state: dict[str, Any] | None = None,
        extra_data: dict[str, Any] | None = None,
    ) -> None:
        self.steps = [s if isinstance(s, Step) else Step(s.__name__, s) for s in steps]
        names = [s.name for s in self.steps]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"a step workflow needs steps with distinct names, not {names}")
        self.name = name
        super().__init__(
            storage, session_id, user_id, workflow_id, session_name, session_state, extra_data
        )

    @property
    def workflow_id(self) -> str | None:
        """The id stored in the session's ``workflow_id``."""
        return self.entity_id

    def run(self, input: Any = None) -> WorkflowRunResponse:
        """Runs every step in order, saving after each.

        Steps are given ``input`` as stored (a tuple as a list, a ``datetime`` as its ISO
        text), as they are when the run is resumed.

        Raises:
            BaseException: whatever a step raised (``KeyboardInterrupt`` included); the run
                is stored as failed, with that step failed and the steps before it
                completed, ready for :meth:`resume`.
            SerializationError: when the input cannot be stored (nothing is stored then),
                or a step's output or ``session_state``: the step is then stored as failed
                with this error, the state as it was before the step, ready for
                :meth:`resume`.
            StorageError: when a save failed.
        """
        record: Run = {
            "run_id": new_id(),
            "created_at": int(time.time()),
            "input": input,
            "status": "running",
            "steps": [{"name": s.name, "status": "pending"} for s in self.steps],
        }
        self._save(record)
        # The input as stored (a tuple as a list, a date as its ISO text), as a resumed run
        # gives it to its steps: a step that works on the first attempt works on a resume.
        saved = next(r for r in self.runs if r.get("run_id") == record["run_id"])
        record["input"] = copy.deepcopy(saved.get("input"))
        return self._execute(record)

    def resume(self, run_id: str | None = None) -> WorkflowRunResponse:
        """Continues a run from the first step that did not complete, as the store has it.

        Another process resuming the same run at once is not waited for: a step neither
        completed may be computed by both, the first result saved being the one kept, and a
        step the other completed meanwhile is taken from the store rather than run.

        Args:
            run_id: the run to continue; the latest run that did not complete when None.
                A run given by id that completed already (another process resumed it) is
                given back with every step taken from the store, none run again.

        Raises:
            LookupError: when there is no such run, or no run left unfinished (the message
                says whether the session has any run stored).
            CorruptSessionError: when the run to continue is not of the shape savegame
                stores (no ``run_id``, ``steps`` that are not a list of named steps), naming
                the field; nothing is run or saved.
            BaseException: whatever a step raised, as for :meth:`run`.
        """
        # The runs as the store has them: another process may have resumed (and completed)
        # the run since this one saw it. Not a load of the session, which would drop the
        # changes made to session_state since the last save (what the failed step lacked).
        runs = self._current_runs()
        unfinished = [r for r in runs if r.get("status") != "completed"]
        if run_id is not None:
            unfinished = [r for r in runs if r.get("run_id") == run_id]
        if not unfinished:
            if run_id is not None:
                told = f"no run {run_id!r} in session {self.session_id!r}"
            elif runs:
                told = f"every run of session {self.session_id!r} completed: nothing to resume"
            else:
                # A run whose process died before its first save left none, as does a
                # mistyped id: "completed" would say that a run finished.
                told = f"session {self.session_id!r} has no runs stored: nothing to resume"
            raise LookupError(told)
        self._check_resumable(unfinished[-1], runs)
        return self._execute(copy.deepcopy(unfinished[-1]))

    def _check_resumable(self, run: Run, runs: list[Run]) -> None:
        """Raises CorruptSessionError when the stored ``run``, one of ``runs``, cannot be
        continued: it has no ``run_id`` (its saves could not find it again), or its ``steps``
        are not a list of objects each with a string ``name``. A run without ``input``
        continues with None."""
        where = f"runs[{next(i for i, r in enumerate(runs) if r is run)}]"
        steps = run.get("steps")
        problem: tuple[str, Any] | None = None
        if run.get("run_id") is None:
            problem = f"{where} has no run_id", run
        elif steps is not None and not isinstance(steps, list):
            problem = f"{where}.steps should be a list, not {type(steps).__name__}", steps
        else:
            for number, step in enumerate(steps or []):
                if not isinstance(step, dict) or not isinstance(step.get("name"), str):
                    problem = f"{where}.steps[{number}] should be a step with a name", step
                    break
        if problem is not None:
            told, value = problem
            raise CorruptSessionError(
                f"stored session {self.session_id!r} cannot be resumed: its {told}: {_shown(value)}"
            )

    def pending_runs(self) -> list[Run]:
        """The stored runs that did not complete, oldest first, as the store has them now:
        the runs :meth:`resume` looks among (see
        :meth:`~savegame.runtime.SessionKeeper._current_runs`). A run another process
        resumed and completed since this object last read or saved the session is not among
        them; one of a session carried to another storage is.

        Raises:
            SessionOwnerError: when the stored session belongs to another user.
            CorruptSessionError: when a field of the stored session is of another shape.
            StorageError: when the store cannot be read.
        """
        return [r for r in self._current_runs() if r.get("status") != "completed"]

    def _execute(self, record: Run) -> WorkflowRunResponse:
        by_name = {s["name"]: s for s in record.get("steps") or []}
        record["steps"] = [by_name.pop(s.name, None) or {"name": s.name} for s in self.steps]
        outputs = {
            s["name"]: s.get("output") for s in record["steps"] if s.get("status") == "completed"
        }
        # Steps of the run that this workflow no longer has (its list changed since) stay
        # in the record, after its own: what they did is the run's history.
        record["steps"] += by_name.values()
        resumed = list(outputs)
        record["status"] = "running"
        for at, step in enumerate(self.steps):
            # Another process resuming this run at once may have completed steps meanwhile.
            self._take_completed(record, outputs)
            stored = record["steps"][at]
            if stored.get("status") == "completed":
                continue
            started = time.perf_counter()
            context = StepContext(
                record.get("input"),
                dict(outputs),
                self.session_state,
                record["run_id"],
                self.session_id,
            )
            try:
                output = step.fn(context)
            except BaseException as exc:  # Ctrl-C too: a run left "running" would never end
                stored.update(status="failed", error=_failure(exc))
                stored["duration"] = time.perf_counter() - started
                record["status"] = "failed"
                self._save_failed(record, stored)
                raise
            stored.update(status="completed", output=output)
            stored.pop("error", None)
            stored["duration"] = time.perf_counter() - started
            if step is self.steps[-1]:
                record["status"] = "completed"
            try:
                self._save(record, replace=True)
            except SerializationError as exc:
                # Its output (or its change to the state) cannot be stored: the step failed,
                # and resume() runs it again, where a run left "running" would hide why.
                del stored["output"]
                stored.update(status="failed", error=_failure(exc))
                record["status"] = "failed"
                try:
                    self._save(record, replace=True)
                except SerializationError:  # the state, which the error names already
                    self._save(record, replace=True, keep_state=True)
                raise
            outputs[step.name] = output
        # The last step's output as stored, as the steps before it are taken (a tuple is
        # stored as a list): what the run gives is what a read of it gives.
        self._take_completed(record, outputs)
        record["status"] = "completed"
        saved = next((r for r in self.runs if r.get("run_id") == record["run_id"]), None)
        if saved is None or saved.get("status") != "completed":
            # No step was left to run (the one that failed was taken out of the workflow,
            # say), so no step's save stored the run as completed.
            self._save(record, replace=True)
        return WorkflowRunResponse(
            run_id=record["run_id"],
            session_id=self.session_id,
            status="completed",
            outputs=outputs,
            content=outputs.get(self.steps[-1].name),
            steps=record["steps"],
            resumed=resumed,
        )

    def _save_failed(self, record: Run, step: dict[str, Any]) -> None:
        """Saves ``record``, whose ``step`` failed; when the state holds what the store cannot
        hold, saves it with the stored state instead, adding the refusal to the step's
        error, and raises.

        Raises:
            SerializationError: when ``session_state`` cannot be stored (the run is then
                stored as failed all the same, without this object's changes to the state).
            StorageError: when the store refused the write.
        """
        try:
            self._save(record, replace=True)
        except SerializationError as exc:
            step["error"] = _not_saved(step["error"], exc)
            self._save(record, replace=True, keep_state=True)
            raise

    def _take_completed(self, record: Run, outputs: dict[str, Any]) -> None:
        """Takes into ``record`` and ``outputs`` the steps of its run that the session, as last
        saved or loaded, has completed: a step another process completed first is not run
        again, and its saved result is the one this run goes on with."""
        saved = next((r for r in self.runs if r.get("run_id") == record["run_id"]), None)
        done = _completed_steps(saved)
        for at, step in enumerate(record["steps"]):
            theirs = done.get(step.get("name"))
            if theirs is not None:
                record["steps"][at] = copy.deepcopy(theirs)
                outputs[theirs["name"]] = copy.deepcopy(theirs.get("output"))

    def _replacing(self, stored: Run, run: Run) -> Run:
        """``run`` over the ``stored`` one, except for the steps stored as completed: the first
        result saved for a step is kept (two processes resuming one run at once may both
        compute a step), and a step completed is never stored again as failed or pending."""
        done = _completed_steps(stored)
        steps = [done.get(s.get("name")) or s for s in run.get("steps") or []]
        merged = {**run, "steps": steps}
        if steps and all(s.get("status") == "completed" for s in steps):
            merged["status"] = "completed"
        return merged

    def _entity_data(self) -> dict[str, Any]:
        return {"name": self.name, "steps": [s.name for s in self.steps]}

    def _extend(self, data: dict[str, Any], run: Run | None) -> None:
        data["workflow_name"] = self.name or data.get("workflow_name")

    def _restored(self, data: dict[str, Any]) -> None:
        self.name = self.name or data.get("workflow_name")


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _completed_steps(run: Run | None) -> dict[str, dict[str, Any]]:
    """The steps of a stored run that completed, by name."""
    steps = run.get("steps") if run is not None else None
    if not isinstance(steps, list):
        return {}
    return {
        s["name"]: s
        for s in steps
        if isinstance(s, dict) and isinstance(s.get("name"), str) and s.get("status") == "completed"
    }
