"""A process that runs agents, teams and workflows on a store, for the runtime's tests.

Run as ``python -m savegame.testing.agent_worker COMMAND ARGS...``; every model is the
offline one, so it needs no network. Each command prints what the parent checks.

Commands:
    turns URL SESSION_ID COUNT TAG      run one agent COUNT times on the session, saying
                                        "TAG i"; prints "done"
    say URL SESSION_ID MESSAGE          one run of an agent with history on; prints the answer
    team AGENT_URL TEAM_URL SESSION_ID MESSAGE
                                        one run of a two-member team (a chef and a coder);
                                        prints "MEMBER<TAB>ANSWER"
    workflow URL SESSION_ID MARKERS FAIL
                                        runs :class:`Pipeline`, which touches a file in the
                                        folder MARKERS for each step it computes, and fails
                                        in step FAIL ("none": no failure; "kill:STEP": the
                                        process kills itself with SIGKILL in step STEP)
    steps URL SESSION_ID MARKERS FAIL run|resume
                                        the same as a step workflow, starting a run or
                                        resuming the last unfinished one
    yields URL SESSION_ID [END]         starts a run of :class:`Drafts` that yields, takes
                                        its first draft and exits with the run unfinished;
                                        prints the draft. END "term": the process then
                                        sends itself SIGTERM; "term-exit": the same, with a
                                        handler that turns SIGTERM into ``sys.exit()``
    chat URL SESSION_ID COUNT TAG       COUNT runs of an agent with its whole history on,
                                        saying "TAG i" and counting the runs in
                                        ``session_state["turns"]``; prints "TAG i N" once
                                        each run returned, N the messages the model was sent

The environment variable :data:`KILL_AT`, ``MODE:save:K`` or ``MODE:saved:K``, makes the
process kill itself with SIGKILL in the K-th save of a storage of mode MODE that it opened:
once the session to write is made but before it is written (``save``), or once the write
has returned (``saved``).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from savegame.agent import Agent
from savegame.models.offline import OfflineModel
from savegame.storage.url import open_storage
from savegame.team import Team
from savegame.workflow import StepContext, StepWorkflow, Workflow

STEPS = ("fetch", "clean", "report")

KILL_AT = "SAVEGAME_WORKER_KILL_AT"
"""The environment variable that names the save the process dies in (see above)."""


class StepFailed(RuntimeError):
    """Raised by a step told to fail, standing for any error in real work."""


def _work(markers: Path, fail: str, name: str, value: str) -> str:
    """One step's work: leaves a marker (so the parent can count computations) or fails."""
    markers.mkdir(parents=True, exist_ok=True)
    with (markers / name).open("a") as f:
        f.write("x")
    if fail == f"kill:{name}":
        os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of the step
    if name == fail:
        raise StepFailed(f"step {name} failed as told")
    return f"{name}({value})"


def _open(url: str, mode: str) -> Any:
    """The storage of ``url`` in ``mode``, set to kill the process where :data:`KILL_AT` says."""
    storage = open_storage(url, mode=mode)
    kill_mode, _, when = os.environ.get(KILL_AT, "").partition(":")
    if kill_mode != mode:
        return storage
    moment, _, nth = when.partition(":")
    update = storage.update
    saves = 0

    def killing_update(session_id: str, fn: Any, **kwargs: Any) -> Any:
        nonlocal saves
        saves += 1
        dies = saves == int(nth)

        def made(current: Any) -> Any:
            session = fn(current)
            if dies and moment == "save":
                _die()
            return session

        stored = update(session_id, made, **kwargs)
        if dies and moment == "saved":
            _die()
        return stored

    storage.update = killing_update  # type: ignore[method-assign]
    return storage


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class Pipeline(Workflow):
    """Three steps whose results are kept in ``session_state``, so none is computed twice."""

    def __init__(self, markers: Path, fail: str, **kwargs: Any) -> None:
        self.markers = markers
        self.fail = fail
        super().__init__(**kwargs)

    def run(self, topic: str) -> str:
        value = topic
        for name in STEPS:
            value = self.step(name, functools.partial(self._do, name, value))
        return value

    def _do(self, name: str, value: str) -> str:
        return _work(self.markers, self.fail, name, value)


class Drafts(Workflow):
    """A run that yields one draft at a time, as the original's workflows do."""

    def run(self, count: int) -> Iterator[str]:
        for at in range(count):
            self.session_state["drafts"] = at + 1
            yield f"draft {at + 1}"


_LEFT_OPEN: list[Iterator[str]] = []
"""Runs left unfinished until the process exits."""


def step_workflow(url: str, session_id: str, markers: Path, fail: str) -> StepWorkflow:
    """The step-workflow version of :class:`Pipeline`."""

    def make(name: str) -> Any:
        def fn(ctx: StepContext) -> str:
            previous = ctx.outputs[STEPS[STEPS.index(name) - 1]] if name != STEPS[0] else ctx.input
            return _work(markers, fail, name, previous)

        fn.__name__ = name
        return fn

    return StepWorkflow(
        [make(name) for name in STEPS],
        storage=_open(url, "workflow_v2"),
        session_id=session_id,
        name="pipeline",
    )


def team(agent_url: str, team_url: str, session_id: str) -> Team:
    """A chef and a coder, led by the offline model."""
    agents = _open(agent_url, "agent")
    members = [
        Agent(
            OfflineModel(),
            agents,
            name="chef",
            role="cooking, recipes and food",
            add_history_to_messages=True,
        ),
        Agent(
            OfflineModel(),
            agents,
            name="coder",
            role="python programming and code",
            add_history_to_messages=True,
        ),
    ]
    return Team(
        members,
        OfflineModel(),
        _open(team_url, "team"),
        session_id=session_id,
        name="kitchen",
    )


def main(argv: list[str]) -> int:
    """Runs one command; see the module docstring."""
    command, *args = argv
    if command == "turns":
        url, session_id, count, tag = args
        agent = Agent(OfflineModel(), open_storage(url, mode="agent"), session_id=session_id)
        for i in range(int(count)):
            agent.run(f"{tag} {i}")
        print("done", flush=True)
    elif command == "say":
        url, session_id, text = args
        agent = Agent(
            OfflineModel(),
            open_storage(url, mode="agent"),
            session_id=session_id,
            add_history_to_messages=True,
        )
        print(agent.run(text).content, flush=True)
    elif command == "chat":
        url, session_id, count, tag = args
        agent = Agent(
            OfflineModel(),
            _open(url, "agent"),
            session_id=session_id,
            add_history_to_messages=True,
            num_history_runs=1000,
        )
        for i in range(int(count)):
            agent.session_state["turns"] = agent.session_state.get("turns", 0) + 1
            sent = agent.run(f"{tag} {i}").messages[:-1]
            print(f"{tag} {i} {len(sent)}", flush=True)
    elif command == "team":
        agent_url, team_url, session_id, text = args
        answer = team(agent_url, team_url, session_id).run(text)
        print(f"{answer.member}\t{answer.content}", flush=True)
    elif command == "workflow":
        url, session_id, markers, fail = args
        pipeline = Pipeline(
            Path(markers), fail, session_id=session_id, storage=_open(url, "workflow")
        )
        print(pipeline.run("data"), flush=True)
    elif command == "steps":
        url, session_id, markers, fail, how = args
        flow = step_workflow(url, session_id, Path(markers), fail)
        result = flow.run("data") if how == "run" else flow.resume()
        print(result.content, ",".join(result.resumed), flush=True)
    elif command == "yields":
        url, session_id, *end = args
        if end == ["term-exit"]:
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        drafts = Drafts(session_id=session_id, storage=open_storage(url, mode="workflow")).run(3)
        print(next(drafts), flush=True)
        _LEFT_OPEN.append(drafts)
        if end:
            os.kill(os.getpid(), signal.SIGTERM)
    else:
        print(f"unknown command {command!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
