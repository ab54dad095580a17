"""An agent that saves its conversation after every run and resumes it in a new process.

::

    storage = open_storage("sqlite:///savegame.db", mode="agent")
    agent = Agent(model=OfflineModel(), storage=storage, session_id="chat-1",
                  add_history_to_messages=True)
    agent.run("My name is Ada.")

    # later, in another process or on another machine
    agent = Agent(model=OfflineModel(), storage=storage, session_id="chat-1",
                  add_history_to_messages=True)
    agent.run("What is my name?").content   # 'Your name is Ada. ...'

The stored :class:`~savegame.storage.session.agent.AgentSession` holds, in ``memory``, the
runs (each with its messages, model, status and metrics) and the message list (the runs'
messages, in order); in
``session_data`` the session's name, state and summed metrics; in ``agent_data`` the agent's
name, id and model.

A run whose model call fails raises the model's error and saves nothing: the stored session
stays exactly as it was before the run, and so does the agent, so the message can be sent
again. A run is saved only once it has an answer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from savegame.models import Message, Model, default_model, describe
from savegame.models import message as make_message
from savegame.runtime import Run, SessionKeeper, list_messages, new_id
from savegame.storage.base import Storage
from savegame.storage.session import messages_of


@dataclass
class RunResponse:
    """The outcome of one run.

    Attributes:
        content: the answer.
        run_id: the run's id, as stored in the session's runs.
        session_id: the session the run was saved in.
        messages: every message sent to the model (instructions and history included)
            followed by its answer.
        model: the model that answered.
        created_at: when the run started, unix seconds.
        duration: how long the run took, seconds (the model call and the save).
        metrics: token counts when the model reported them, and the model call's duration.
        member: for a team run, the member that answered.
    """

    content: str
    run_id: str
    session_id: str
    messages: list[Message]
    model: str
    created_at: int
    duration: float
    metrics: dict[str, Any] = field(default_factory=dict)
    member: str | None = None


class Agent(SessionKeeper):
    """A model with a conversation that is saved after every run.

    Args:
        model: the model to answer with; when None, the model the environment configures
            (see :func:`savegame.models.default_model`).
        storage: a storage in mode ``"agent"``; None keeps the session in this object only.
            Set to another later, it gets the whole session at the next save (see
            :attr:`~savegame.runtime.SessionKeeper.storage`).
        session_id: the session to resume or start; a new id when None.
        user_id: whose session it is; a resumed session's own when None.
        agent_id: stored in the session's ``agent_id``; a resumed session's own, or a new
            id, when None.
        name: the agent's name (stored in ``agent_data``; a team tells members by it); when
            None, each session loaded has the name stored with it, and a new session none.
        session_name: a name for the session.
        session_state: the state a new session starts with (resumed state wins).
        add_history_to_messages: send the earlier turns of the session to the model.
        num_history_runs: how many earlier runs to send when history is on.
        instructions: sent as the system message of every run; a list of them (as the
            original took) is sent as one message, a line ``- ...`` each.
        extra_data: stored as the session's ``extra_data``.
        role: what the agent is for; a team's leader chooses members by it. When None, as
            for ``name``.
        team_session_id: links the session to the team session it answers for.
        workflow_session_id: links the session to a workflow session.

    Raises:
        TypeError: when ``instructions`` is neither a str nor a list of str, or
            ``num_history_runs`` is not an int of 0 or more.
        ModelNotConfiguredError: when ``model`` is None and no model is configured; the
            message says how to configure one.
        SessionOwnerError: when ``session_id`` belongs to another ``user_id``.
        StorageError: when the stored session cannot be read; the agent never starts afresh
            over a session it could not read.
    """

    mode = "agent"
    data_field = "agent_data"
    made_with = ("name", "role", "team_session_id", "workflow_session_id")

    def __init__(
        self,
        model: Model | None = None,
        storage: Storage | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
        agent_id: str | None = None,
        name: str | None = None,
        session_name: str | None = None,
        session_state: dict[str, Any] | None = None,
        add_history_to_messages: bool = False,
        num_history_runs: int = 3,
        instructions: str | Sequence[str] | None = None,
        extra_data: dict[str, Any] | None = None,
        *,
        role: str | None = None,
        team_session_id: str | None = None,
        workflow_session_id: str | None = None,
    ) -> None:
        self.instructions = joined_instructions(instructions)
        if type(num_history_runs) is not int or num_history_runs < 0:
            raise TypeError(
                f"num_history_runs must be an int of 0 or more, not {num_history_runs!r}"
            )
        self.model: Model = model if model is not None else default_model()
        self.name = name
        self.role = role
        self.add_history_to_messages = add_history_to_messages
        self.num_history_runs = num_history_runs
        self.team_session_id = team_session_id
        self.workflow_session_id = workflow_session_id
        super().__init__(
            storage, session_id, user_id, agent_id, session_name, session_state, extra_data
        )

    @property
    def agent_id(self) -> str | None:
        """The id stored in the session's ``agent_id``."""
        return self.entity_id

    def run(self, message: str) -> RunResponse:
        """Sends ``message`` to the model, saves the run, and returns the answer.

        With ``add_history_to_messages``, the history is read from the store as the run
        starts: turns another process saved in this session meanwhile are sent too.

        Raises:
            TypeError: when ``message`` is not a str; nothing was sent or saved.
            SerializationError: when the message, ``session_state``, the session's name or
                ``extra_data`` holds what the store cannot hold (see
                :meth:`~savegame.runtime.SessionKeeper._check_storable`), naming it;
                checked before the model is called, and nothing was sent or saved.
            ModelError: when the model call failed; nothing was saved.
            SessionOwnerError: when the session id names another user's session.
            StorageError: when the session could not be read for its history, or the run
                could not be saved; the agent is left as before.
        """
        self._check_storable(message)
        created_at = int(time.time())
        started = time.perf_counter()
        user = make_message("user", message)
        sent = [*self._system(), *self._history(), user]
        response = self.model.respond(sent)
        answer = make_message("assistant", response.content)
        metrics: dict[str, Any] = {
            **response.usage,
            "model_duration": round(time.perf_counter() - started, 6),
        }
        run: Run = {
            "run_id": new_id(),
            "created_at": created_at,
            "input": message,
            "content": response.content,
            "messages": [user, answer],
            "model": response.model,
            "status": "completed",
            "metrics": metrics,
        }
        self._save(run)
        return RunResponse(
            content=response.content,
            run_id=run["run_id"],
            session_id=self.session_id,
            messages=[*sent, answer],
            model=response.model,
            created_at=created_at,
            duration=time.perf_counter() - started,
            metrics=metrics,
        )

    def get_messages_for_session(self, session_id: str | None = None) -> list[Message]:
        """The user and assistant messages of a session's runs, in order.

        Args:
            session_id: another stored session to read; the current one when None.

        Raises:
            SessionOwnerError: when the other session belongs to another user than the one
                this agent was made with (as for :meth:`load_session`).
            StorageError: when the other session cannot be read.
        """
        if session_id is None or session_id == self.session_id:
            runs = self.runs
        else:
            other = Agent(
                model=self.model,
                storage=self.storage,
                session_id=session_id,
                user_id=self._initial_user,
            )
            runs = other.runs
        return messages_of(runs)

    @property
    def messages(self) -> list[Message]:
        """The current session's user and assistant messages, in order (from its runs)."""
        return self.get_messages_for_session()

    def attach(
        self,
        session_id: str,
        team_session_id: str | None,
        user_id: str | None,
        workflow_session_id: str | None = None,
    ) -> None:
        """Switches to ``session_id`` on behalf of a team, loading it when it is stored; the
        team's ``user_id`` becomes this agent's, as if it had been made with it. The team's
        ``workflow_session_id`` links the session too, unless this agent was made with a
        link of its own or its session has one."""
        self._initial_user = self.user_id = user_id
        self.load_session(session_id)
        self.team_session_id = team_session_id
        self.workflow_session_id = self.workflow_session_id or workflow_session_id

    def _system(self) -> list[Message]:
        return [make_message("system", self.instructions)] if self.instructions else []

    def _history(self) -> list[Message]:
        """The earlier turns sent with a run: those of the last runs as the store has them
        when the run starts, so that a turn another process saved meanwhile is among them."""
        if not self.add_history_to_messages or self.num_history_runs <= 0:
            return []
        return turns_of(messages_of(self._current_runs()[-self.num_history_runs :]))

    def _entity_data(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "agent_id": self.entity_id,
            "role": self.role,
            "model": describe(self.model),
        }

    def _extend(self, data: dict[str, Any], run: Run | None) -> None:
        list_messages(data)
        data["team_session_id"] = self.team_session_id or data.get("team_session_id")
        data["workflow_session_id"] = self.workflow_session_id or data.get("workflow_session_id")

    def _restored(self, data: dict[str, Any]) -> None:
        self.team_session_id = self.team_session_id or data.get("team_session_id")
        self.workflow_session_id = self.workflow_session_id or data.get("workflow_session_id")
        agent_data = data.get("agent_data") or {}
        self.name = self.name or agent_data.get("name")
        self.role = self.role or agent_data.get("role")


def joined_instructions(given: str | Sequence[str] | None) -> str | None:
    """The system message of ``instructions``: a list of them as one line ``- ...`` each
    (one alone as it is), where a model would be sent a list it cannot read.

    Raises:
        TypeError: when ``given`` is neither a str nor a list (or tuple) of str.
    """
    if given is None or isinstance(given, str):
        return given
    if isinstance(given, (list, tuple)) and all(isinstance(line, str) for line in given):
        return given[0] if len(given) == 1 else "\n".join(f"- {line}" for line in given)
    raise TypeError(
        f"instructions must be a str or a list of str, not {type(given).__name__} {given!r}"[:200]
    )


_TURN_ROLES = ("user", "assistant")


def turns_of(messages: list[Any]) -> list[Message]:
    """The earlier turns among a session's run messages, as a model is sent them: each
    user message (one without text as ``""``, as its own run sent it: left out, its answer
    would follow the answer before it) and each answer with text, its role and content
    alone.

    A session the original library saved holds more in its runs' messages: each run's system
    prompt, copies of the history it sent (``from_history``), tool calls and their results,
    keys of its own (``metrics``, ``created_at``). A chat API refuses keys it does not know,
    and would be sent the instructions and the history twice. Content given as parts (text
    beside an image) is sent as its text.
    """
    turns: list[Message] = []
    for m in messages:
        if type(m) is not dict or m.get("from_history") or m.get("role") not in _TURN_ROLES:
            continue
        content = m.get("content")
        if isinstance(content, list):
            content = "\n".join(
                p["text"]
                for p in content
                if isinstance(p, dict)
                and p.get("type") == "text"
                and isinstance(p.get("text"), str)
            )
        if content is None and m["role"] == "user":
            content = ""
        if isinstance(content, str) and (content or m["role"] == "user"):
            turns.append(make_message(m["role"], content))
    return turns
