"""The agent saves after every run and resumes, on every backend, across processes too."""

from __future__ import annotations

import importlib.util
import os
import shlex
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from savegame.agent import Agent
from savegame.errors import (
    BackendUnavailableError,
    CorruptSessionError,
    InvalidIdentifierError,
    SerializationError,
)
from savegame.models import Message, ModelConnectionError, ModelResponse
from savegame.models.offline import OfflineModel
from savegame.models.openai import OpenAIChat
from savegame.runtime import SessionOwnerError
from savegame.storage.in_memory import InMemoryStorage
from savegame.storage.json import JsonStorage
from savegame.storage.session import AgentSession
from savegame.storage.sqlite import SqliteStorage
from savegame.testing import Store
from tests.model_server import model_server
from tests.runtime_helpers import new_session_after, run_worker


class Flaky:
    """A model whose server goes away when told: what a real outage looks like to an agent."""

    id = "flaky"
    provider = "test"

    def __init__(self) -> None:
        self.down = False

    def respond(self, messages: list[Message]) -> ModelResponse:
        if self.down:
            raise ModelConnectionError("the model server went away")
        return OfflineModel().respond(messages)


def _agent(store: Store, **kwargs: object) -> Agent:
    return Agent(model=OfflineModel(), storage=store(), **kwargs)  # type: ignore[arg-type]


def test_every_run_is_saved_with_its_messages(backend_store: Store) -> None:
    agent = _agent(
        backend_store,
        session_id="s1",
        user_id="ada",
        agent_id="helper",
        name="Helper",
        session_name="first chat",
        session_state={"topic": "names"},
        extra_data={"source": "test"},
    )
    first = agent.run("My name is Ada.")
    second = agent.run("What is my name?")
    assert first.session_id == second.session_id == "s1"
    assert first.run_id != second.run_id
    assert second.messages[-1] == {"role": "assistant", "content": second.content}
    assert second.duration >= 0
    stored = backend_store().read("s1")
    assert isinstance(stored, AgentSession)
    assert stored.version == 2
    assert stored.user_id == "ada"
    assert stored.agent_id == "helper"
    assert stored.extra_data == {"source": "test"}
    assert stored.agent_data == {
        "name": "Helper",
        "agent_id": "helper",
        "role": None,
        "model": {"id": "offline", "provider": "offline"},
    }
    assert stored.memory is not None
    runs = stored.memory["runs"]
    assert [r["run_id"] for r in runs] == [first.run_id, second.run_id]
    assert [r["status"] for r in runs] == ["completed", "completed"]
    assert runs[1]["messages"] == [
        {"role": "user", "content": "What is my name?"},
        {"role": "assistant", "content": second.content},
    ]
    assert stored.memory["messages"] == runs[0]["messages"] + runs[1]["messages"]
    assert agent.messages == stored.memory["messages"]
    assert stored.session_data is not None
    assert stored.session_data["session_name"] == "first chat"
    assert stored.session_data["session_state"] == {"topic": "names"}
    metrics = stored.session_data["metrics"]
    assert metrics["runs"] == 2
    assert metrics["total_tokens"] == sum(r["metrics"]["total_tokens"] for r in runs)


def test_a_session_with_the_originals_message_list_gets_the_runs_messages(
    backend_store: Store,
) -> None:
    earlier = {"run_id": "r0", "messages": [{"role": "user", "content": "I am Ada."}]}
    system = {"role": "system", "content": "Be brief."}
    backend_store().upsert(
        AgentSession(
            session_id="old",
            memory={"runs": [earlier], "messages": [system, *earlier["messages"]], "x": 1},
        )
    )
    agent = _agent(backend_store, session_id="old")
    assert agent.messages == earlier["messages"]
    agent.run("Who am I?")
    stored = backend_store().read("old")
    assert isinstance(stored, AgentSession)
    assert stored.memory is not None
    assert set(stored.memory) == {"runs", "messages", "x"}
    assert [r["run_id"] for r in stored.memory["runs"]][:1] == ["r0"]
    assert len(stored.memory["runs"]) == 2
    assert stored.memory["messages"] == agent.messages
    assert agent.messages[:1] == earlier["messages"]
    assert len(agent.messages) == 3


def test_a_new_agent_with_the_session_id_resumes_it(backend_store: Store) -> None:
    first = _agent(
        backend_store,
        user_id="ada",
        name="Helper",
        session_name="names",
        add_history_to_messages=True,
    )
    first.session_state["count"] = 1
    first.run("My name is Ada.")
    again = _agent(backend_store, session_id=first.session_id, add_history_to_messages=True)
    assert again.user_id == "ada"
    assert again.name == "Helper"
    assert again.session_name == "names"
    assert again.session_state == {"count": 1}
    assert again.agent_id == first.agent_id
    assert again.get_messages_for_session() == first.get_messages_for_session()
    answer = again.run("What is my name?")
    assert answer.content.startswith("Your name is Ada.")
    assert [m["content"] for m in answer.messages[:2]] == [
        "My name is Ada.",
        first.runs[0]["content"],
    ]


def test_initial_state_fills_a_resumed_session_but_never_returns_after_a_save(
    backend_store: Store,
) -> None:
    agent = _agent(backend_store, session_id="s", session_state={"a": 1, "b": 2})
    del agent.session_state["a"]
    agent.run("hello")
    assert agent.session_state == {"b": 2}
    again = _agent(backend_store, session_id="s", session_state={"b": 0, "c": 3})
    assert again.session_state == {"b": 2, "c": 3}


def test_a_reference_to_the_session_state_stays_the_agents_after_a_run(
    backend_store: Store,
) -> None:
    agent = _agent(backend_store, session_id="s", session_state={"count": 0})
    state = agent.session_state
    state["count"] = 1
    agent.run("hello")
    assert agent.session_state is state
    state["count"] = 2
    agent.run("hello")
    assert agent.session_state == {"count": 2}
    stored = backend_store().read("s")
    assert stored is not None
    assert stored.session_data["session_state"] == {"count": 2}  # type: ignore[attr-defined]


def test_a_reference_to_a_value_in_the_session_state_stays_the_agents_after_a_run(
    backend_store: Store,
) -> None:
    agent = _agent(backend_store, session_id="s", session_state={"seen": [], "other": {}})
    seen = agent.session_state["seen"]
    seen.append("one")
    agent.run("hello")
    seen.append("two")
    elsewhere = _agent(backend_store, session_id="s")
    elsewhere.session_state["other"]["changed"] = True
    elsewhere.run("hello")
    other = agent.session_state["other"]
    agent.run("hello")
    assert agent.session_state["seen"] is seen
    assert agent.session_state == {"seen": ["one", "two"], "other": {"changed": True}}
    assert agent.session_state["other"] is not other, "changed elsewhere: the stored value"
    stored = backend_store().read("s")
    assert stored is not None
    assert stored.session_data["session_state"] == agent.session_state  # type: ignore[attr-defined]


def test_history_is_sent_only_when_asked_and_only_the_last_runs(backend_store: Store) -> None:
    agent = _agent(backend_store, add_history_to_messages=False)
    agent.run("My name is Ada.")
    assert agent.run("What is my name?").content.startswith("You have not told me")
    windowed = _agent(backend_store, add_history_to_messages=True, num_history_runs=2)
    windowed.run("My name is Ada.")
    windowed.run("one")
    assert windowed.run("What is my name?").content.startswith("Your name is Ada.")
    windowed.run("two")
    answer = windowed.run("What is my name?")
    assert answer.content.startswith("You have not told me")
    assert len(answer.messages) == 2 * 2 + 2


def test_a_failed_model_call_raises_and_leaves_the_session_as_it_was(
    backend_store: Store,
) -> None:
    model = Flaky()
    agent = Agent(
        model=model, storage=backend_store(), session_id="s", add_history_to_messages=True
    )
    agent.run("My name is Ada.")
    before = backend_store().read("s")
    model.down = True
    with pytest.raises(ModelConnectionError):
        agent.run("What is my name?")
    assert backend_store().read("s") == before
    assert len(agent.runs) == 1
    model.down = False
    assert agent.run("What is my name?").content.startswith("Your name is Ada.")
    after = backend_store().read("s")
    assert after is not None
    assert after.version == 2
    assert len(after.memory["runs"]) == 2  # type: ignore[attr-defined]


class Counted(OfflineModel):
    """The offline model, counting its calls: a model paid for each one."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def respond(self, messages: list[Message]) -> ModelResponse:
        self.calls += 1
        return super().respond(messages)


def test_what_the_store_cannot_hold_is_refused_before_the_model_is_called(
    backend_store: Store,
) -> None:
    model = Counted()
    agent = Agent(model=model, storage=backend_store(), session_id="s", session_state={"n": 1})
    agent.run("hello")
    before = backend_store().read("s")
    agent.session_state["seen"] = {"a", "b"}
    with pytest.raises(SerializationError, match=r"\['session_state'\]\['seen'\]: a set"):
        agent.run("again")
    agent.session_state.pop("seen")
    agent.extra_data = {"at": object()}
    with pytest.raises(SerializationError, match=r"\['extra_data'\]\['at'\]"):
        agent.run("again")
    agent.extra_data = None
    agent.session_state = None  # type: ignore[assignment]
    with pytest.raises(SerializationError, match="session_state must be a dict, not NoneType"):
        agent.run("again")
    agent.session_state = {"n": 1}
    with pytest.raises(SerializationError, match="surrogate pair"):
        agent.run("\ud83d\ude00")
    for message in (None, 42, {"content": "hi"}):
        with pytest.raises(TypeError, match="message must be a str"):
            agent.run(message)  # type: ignore[arg-type]
    assert model.calls == 1
    assert backend_store().read("s") == before
    assert agent.run("again").content.startswith('You said: "again"')
    assert len(backend_store().read("s").memory["runs"]) == 2  # type: ignore[union-attr]


def test_a_session_state_or_extra_data_that_is_not_a_dict_is_refused() -> None:
    with pytest.raises(TypeError, match="session_state must be a dict, not list"):
        Agent(model=OfflineModel(), session_state=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="extra_data must be a dict, not str"):
        Agent(model=OfflineModel(), extra_data="note")  # type: ignore[arg-type]


def test_session_commands(backend_store: Store) -> None:
    agent = _agent(backend_store, user_id="ada")
    agent.run("hello")
    first = agent.session_id
    agent.rename_session("greetings")
    stored = backend_store().read(first)
    assert stored is not None
    assert stored.session_data["session_name"] == "greetings"  # type: ignore[attr-defined]
    second = agent.new_session()
    assert second != first
    assert agent.runs == []
    assert agent.session_name is None
    agent.run("again")
    assert sorted(backend_store().get_all_session_ids(user_id="ada")) == sorted([first, second])
    assert agent.get_messages_for_session(first)[0]["content"] == "hello"
    assert agent.load_session(first)
    assert agent.session_id == first
    assert agent.session_name == "greetings"
    assert agent.delete_session(first)
    assert agent.session_id not in (first, second)
    assert backend_store().read(first) is None
    assert backend_store().read(second) is not None
    assert not agent.delete_session("nothing-here")


def test_a_session_of_another_user_is_refused(backend_store: Store) -> None:
    _agent(backend_store, session_id="s", user_id="ada").run("My name is Ada.")
    with pytest.raises(SessionOwnerError):
        _agent(backend_store, session_id="s", user_id="bob")
    stored = backend_store().read("s")
    assert stored is not None
    assert stored.user_id == "ada"  # type: ignore[attr-defined]


def test_loading_another_users_session_keeps_the_current_one(backend_store: Store) -> None:
    _agent(backend_store, session_id="bobs", user_id="bob").run("My name is Bob.")
    agent = _agent(backend_store, session_id="adas", user_id="ada")
    agent.run("My name is Ada.")
    with pytest.raises(SessionOwnerError):
        agent.load_session("bobs")
    assert agent.session_id == "adas"
    assert len(agent.runs) == 1
    agent.session_id = "bobs"
    with pytest.raises(SessionOwnerError):
        agent.run("hello")
    stored = backend_store().read("bobs")
    assert stored is not None
    assert len(stored.memory["runs"]) == 1  # type: ignore[attr-defined]


def test_a_rename_refused_for_another_users_session_leaves_the_old_name(
    backend_store: Store,
) -> None:
    _agent(backend_store, session_id="bobs", user_id="bob").run("My name is Bob.")
    agent = _agent(backend_store, session_id="adas", user_id="ada", session_name="Old")
    agent.run("My name is Ada.")
    agent.session_id = "bobs"
    with pytest.raises(SessionOwnerError):
        agent.rename_session("New")
    assert agent.session_name == "Old"
    stored = backend_store().read("bobs")
    assert stored is not None
    assert stored.user_id == "bob"  # type: ignore[attr-defined]


def test_another_users_session_is_neither_read_nor_deleted(backend_store: Store) -> None:
    _agent(backend_store, session_id="adas", user_id="ada").run("My secret is 42.")
    bob = _agent(backend_store, user_id="bob")
    with pytest.raises(SessionOwnerError):
        bob.get_messages_for_session("adas")
    with pytest.raises(SessionOwnerError):
        bob.delete_session("adas")
    stored = backend_store().read("adas")
    assert stored is not None
    assert len(stored.memory["runs"]) == 1  # type: ignore[attr-defined]
    anyone = _agent(backend_store)
    assert anyone.get_messages_for_session("adas")[0]["content"] == "My secret is 42."


def test_a_damaged_session_is_deleted_when_there_is_no_owner_to_check(tmp_path: Path) -> None:
    # delete_session reads a session only to check its owner: an agent made without a user
    # deletes one that cannot be read, as it did before the check; one made with a user
    # cannot tell whose it is, and leaves it.
    storage = JsonStorage(tmp_path)
    storage.upsert(AgentSession(session_id="bad", user_id="ada"))
    (tmp_path / "bad.json").write_text("{cut sho", encoding="utf-8")
    with pytest.raises(CorruptSessionError):
        Agent(model=OfflineModel(), storage=storage, user_id="ada").delete_session("bad")
    assert (tmp_path / "bad.json").exists()
    assert Agent(model=OfflineModel(), storage=storage).delete_session("bad")
    assert not (tmp_path / "bad.json").exists()


def test_a_storage_of_another_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mode='agent'"):
        Agent(model=OfflineModel(), storage=InMemoryStorage(mode="team"))


def test_a_storage_url_in_place_of_a_storage_is_refused_naming_how_to_open_it(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    with pytest.raises(
        TypeError, match=r"pass savegame\.open_storage\('sqlite:.*', mode='agent'\)"
    ):
        Agent(model=OfflineModel(), storage=url)  # type: ignore[arg-type]
    assert not (tmp_path / "a.db").exists()


def test_an_agent_without_storage_keeps_its_session_in_memory() -> None:
    agent = Agent(model=OfflineModel(), add_history_to_messages=True)
    agent.run("My name is Ada.")
    assert agent.run("What is my name?").content.startswith("Your name is Ada.")
    session = agent.get_session()
    assert session is not None
    assert len(session.memory["runs"]) == 2  # type: ignore[attr-defined]
    # The session given is the caller's, as a storage's read is: changing it changes
    # neither the agent nor what it saves next.
    session.memory["runs"].clear()  # type: ignore[attr-defined]
    session.session_data["session_state"]["seen"] = True  # type: ignore[index]
    assert (len(agent.runs), agent.session_state) == (2, {})
    agent.run("What did I say?")
    again = agent.get_session()
    assert again is not None
    assert len(again.memory["runs"]) == 3  # type: ignore[attr-defined]
    assert again.session_data["session_state"] == {}  # type: ignore[index]


def test_instructions_given_as_a_list_are_sent_as_one_system_message() -> None:
    sent: list[list[Message]] = []

    class Recording(OfflineModel):
        def respond(self, messages: list[Message]) -> ModelResponse:
            sent.append(messages)
            return super().respond(messages)

    agent = Agent(model=Recording(), instructions=["Be brief.", "Use metric units."])
    agent.run("hi")
    assert sent[-1][0] == {"role": "system", "content": "- Be brief.\n- Use metric units."}
    Agent(model=Recording(), instructions=("Be brief.",)).run("hi")
    assert sent[-1][0] == {"role": "system", "content": "Be brief."}
    for wrong in (["Be brief.", 3], 42, {"a": "b"}):
        with pytest.raises(TypeError, match="instructions must be a str or a list of str"):
            Agent(model=OfflineModel(), instructions=wrong)  # type: ignore[arg-type]


@pytest.mark.parametrize("wrong", [None, -1, 2.5, True, "3"])
def test_a_number_of_history_runs_that_is_no_count_is_refused_when_made(wrong: object) -> None:
    # None failed at the first run with history on, comparing None with 0.
    with pytest.raises(TypeError, match="num_history_runs must be an int of 0 or more"):
        Agent(model=OfflineModel(), add_history_to_messages=True, num_history_runs=wrong)  # type: ignore[arg-type]
    assert Agent(model=OfflineModel(), num_history_runs=0).run("hi").content


def test_an_unreadable_session_raises_and_is_never_overwritten(tmp_path: Path) -> None:
    storage = JsonStorage(tmp_path, mode="agent")
    Agent(model=OfflineModel(), storage=storage, session_id="s").run("My name is Ada.")
    path = tmp_path / "s.json"
    damaged = path.read_bytes()[:40]
    path.write_bytes(damaged)
    with pytest.raises(CorruptSessionError):
        Agent(model=OfflineModel(), storage=storage, session_id="s")
    assert path.read_bytes() == damaged


def test_a_store_that_is_down_raises_instead_of_starting_afresh() -> None:
    pytest.importorskip("redis")
    from savegame.storage.redis import RedisStorage

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = RedisStorage("down", host="127.0.0.1", port=port, connect_timeout=2)
    with pytest.raises(BackendUnavailableError):
        Agent(model=OfflineModel(), storage=down, session_id="s")
    agent = Agent(model=OfflineModel(), storage=down)
    with pytest.raises(BackendUnavailableError):
        agent.run("hello")
    assert agent.runs == []
    assert agent.version is None


def test_a_save_blocked_by_a_lock_raises_and_changes_nothing(tmp_path: Path) -> None:
    sqlite = pytest.importorskip("savegame.storage.sqlite")
    path = tmp_path / "locked.db"
    storage = sqlite.SqliteStorage("agent_sessions", db_file=str(path), busy_timeout=0.2)
    storage.create()
    agent = Agent(model=OfflineModel(), storage=storage, session_id="s")
    agent.run("My name is Ada.")
    before = storage.read("s")
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(BackendUnavailableError):
            agent.run("What is my name?")
        assert storage.read("s") == before
        assert len(agent.runs) == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    agent.run("What is my name?")
    assert len(agent.runs) == 2
    assert agent.version == 2


def test_a_new_process_resumes_the_conversation(backend_store: Store) -> None:
    backend_store.require("processes")
    told = run_worker("say", backend_store.url, "restart", "Hi! My name is Ada.")
    assert told[0].startswith("Noted: your name is Ada.")
    asked = run_worker("say", backend_store.url, "restart", "What is my name?")
    assert asked[0].startswith("Your name is Ada.")
    assert "2 earlier messages" in asked[0]


def test_an_agent_killed_in_a_save_keeps_each_saved_run_once(backend_store: Store) -> None:
    # Each line says how many messages the run sent: its history and its own.
    backend_store.require("processes")
    url = backend_store.url
    assert run_worker("chat", url, "k", 2, "a") == ["a 0 1", "a 1 3"]
    # Killed with its second run's session made but not written: the first one is kept.
    assert run_worker("chat", url, "k", 3, "b", kill_at="agent:save:2") == ["b 0 5"]
    # Killed once its run was written, before run() returned: the run is kept all the same.
    assert run_worker("chat", url, "k", 2, "c", kill_at="agent:saved:1") == []
    assert run_worker("chat", url, "k", 1, "d") == ["d 0 9"]
    stored = backend_store().read("k")
    assert isinstance(stored, AgentSession)
    said = ["a 0", "a 1", "b 0", "c 0", "d 0"]
    assert [r["input"] for r in stored.memory["runs"]] == said  # type: ignore[index]
    assert [m["content"] for m in stored.memory["messages"][::2]] == said  # type: ignore[index]
    assert stored.session_data["session_state"] == {"turns": 5}  # type: ignore[index]
    assert stored.session_data["metrics"]["runs"] == 5  # type: ignore[index]


DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


@pytest.mark.parametrize("url", ["sqlite:///savegame.db", "json:///sessions"])
def test_the_demo_recalls_a_fact_in_a_second_process(tmp_path: Path, url: str) -> None:
    if url.startswith("sqlite") and importlib.util.find_spec("savegame.storage.sqlite") is None:
        pytest.skip("no SQLite backend yet")
    args = [] if url.startswith("sqlite") else ["--storage", url]
    proc = subprocess.run(
        [sys.executable, str(DEMO), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "agent: Your favourite colour is teal." in proc.stdout
    assert "process 2 recalled what process 1 was told." in proc.stdout
    assert (tmp_path / url.split(":///")[1]).exists()
    # The command it gives runs in a shell whose PATH is a fresh one's, without .venv/bin
    # (as after "make demo"), and shows the conversation.
    show = proc.stdout.rsplit("see it again with:", 1)[1].strip()
    shown = subprocess.run(
        shlex.split(show),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PATH": os.defpath},
    )
    assert shown.returncode == 0, shown.stderr
    assert "Your favourite colour is teal." in shown.stdout


def test_switching_sessions_carries_nothing_of_the_one_before(backend_store: Store) -> None:
    storage = backend_store()
    storage.upsert(AgentSession(session_id="c", user_id="u", extra_data={"tenant": "C"}))
    agent = _agent(backend_store, user_id="u")
    agent.load_session("a")
    agent.extra_data = {"tenant": "A"}
    agent.team_session_id = "team-A"
    agent.run("hello")
    agent.load_session("c")
    agent.run("hello")
    c = storage.read("c")
    assert c is not None
    assert (c.extra_data, c.team_session_id) == ({"tenant": "C"}, None)
    fresh = agent.new_session()
    agent.run("hello")
    made = storage.read(fresh)
    assert made is not None
    assert (made.extra_data, made.team_session_id) == (None, None)


def test_an_agent_made_without_a_user_takes_no_user_from_one_session_to_the_next(
    backend_store: Store,
) -> None:
    _agent(backend_store, session_id="adas", user_id="ada").run("My name is Ada.")
    _agent(backend_store, session_id="bobs", user_id="bob").run("My name is Bob.")
    agent = _agent(backend_store)
    agent.load_session("adas")
    assert agent.user_id == "ada"
    fresh = agent.new_session()
    assert agent.user_id is None
    agent.run("hello")
    made = backend_store().read(fresh)
    assert made is not None
    assert made.user_id is None  # type: ignore[attr-defined]
    agent.load_session("adas")
    assert agent.load_session("bobs")
    assert agent.user_id == "bob"
    mine = _agent(backend_store, user_id="ada")
    mine.load_session("adas")
    mine.new_session()
    assert mine.user_id == "ada"


def test_an_agent_made_without_a_name_or_role_takes_none_from_one_session_to_the_next(
    backend_store: Store,
) -> None:
    _agent(backend_store, session_id="helpers", name="Helper", role="helps").run("hi")
    agent = _agent(backend_store)
    taken = {"name": "Helper", "role": "helps"}
    made = new_session_after(agent, "helpers", taken, lambda: agent.run("hello"))
    assert (made["agent_data"]["name"], made["agent_data"]["role"]) == (None, None)
    agent.load_session("helpers")
    assert not agent.load_session("elsewhere")
    assert (agent.name, agent.role) == (None, None)
    mine = _agent(backend_store, name="Mine", role="mine")
    mine.load_session("helpers")
    mine.new_session()
    assert (mine.name, mine.role) == ("Mine", "mine")


def test_an_agent_made_without_an_id_keeps_the_id_of_a_session_it_loads(
    backend_store: Store,
) -> None:
    _agent(backend_store, session_id="bots", agent_id="bot").run("hello")
    agent = _agent(backend_store)
    agent.run("a session of its own, under a made-up id")
    own, made = agent.session_id, agent.agent_id
    agent.load_session("bots")
    assert agent.agent_id == "bot"
    agent.run("hello again")
    stored = backend_store().read("bots")
    assert stored is not None
    assert stored.agent_id == "bot"  # type: ignore[attr-defined]
    assert backend_store().get_all_session_ids(entity_id="bot") == ["bots"]
    # Back on a session of its own: its made-up id again, not the last session's.
    agent.load_session(own)
    agent.run("back")
    stored = backend_store().read(own)
    assert stored is not None
    assert stored.agent_id == made  # type: ignore[attr-defined]
    assert backend_store().get_all_session_ids(entity_id="bot") == ["bots"]


def test_loading_a_session_deleted_elsewhere_starts_it_empty(backend_store: Store) -> None:
    agent = _agent(backend_store, session_id="s")
    agent.run("My name is Ada.")
    assert backend_store().delete_session("s")
    assert agent.load_session() is False
    assert agent.runs == []
    answer = agent.run("What is my name?")
    assert "Ada" not in answer.content


def test_a_rename_that_could_not_be_saved_leaves_the_old_name(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    storage = SqliteStorage("agent_sessions", db_file=str(path), busy_timeout=0.2)
    agent = Agent(model=OfflineModel(), storage=storage, session_id="s", session_name="Old")
    agent.run("hello")
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(BackendUnavailableError):
            agent.rename_session("New")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert agent.session_name == "Old"
    agent.run("next")
    stored = storage.read("s")
    assert stored is not None
    assert stored.session_data["session_name"] == "Old"  # type: ignore[index]


@pytest.mark.parametrize(
    ("field", "fields"),
    [
        ("session_data", {"session_data": [1]}),
        ("session_data", {"session_data": "text"}),
        ("session_data.session_state", {"session_data": {"session_state": "x"}}),
        ("session_data.metrics", {"session_data": {"metrics": 5}}),
        ("session_data.metrics.runs", {"session_data": {"metrics": {"runs": None}}}),
        ("session_data.metrics.input_tokens", {"session_data": {"metrics": {"input_tokens": "9"}}}),
        ("memory", {"memory": [1]}),
        ("memory.runs", {"memory": {"runs": {"run_id": "r"}}}),
        (r"memory.runs\[1\]", {"memory": {"runs": [{"run_id": "r"}, "a run"]}}),
        ("agent_data", {"agent_data": ["helper"]}),
    ],
)
def test_a_stored_session_of_another_shape_is_corrupt_and_left_as_it_is(
    backend_store: Store, field: str, fields: dict[str, Any]
) -> None:
    storage = backend_store()
    stored = storage.upsert(AgentSession(session_id="odd", **fields))
    with pytest.raises(CorruptSessionError, match=rf"'odd'.* {field} should be a"):
        _agent(backend_store, session_id="odd")
    agent = _agent(backend_store, session_id="fine")
    agent.run("hello")
    storage.upsert(AgentSession(session_id="fine", **fields))
    with pytest.raises(CorruptSessionError, match=rf"'fine'.* {field} should be a"):
        agent.run("hello again")
    assert storage.read("odd") == stored


def test_an_agent_given_another_storage_carries_its_whole_session_there(
    backend_store: Store, tmp_path: Path
) -> None:
    agent = Agent(
        model=OfflineModel(), session_id="moved", add_history_to_messages=True, user_id="ada"
    )
    agent.session_state["topic"] = "names"
    agent.run("My name is Ada.")
    agent.storage = JsonStorage(tmp_path / "before", mode="agent")
    agent.run("My colour is red.")
    before = agent.storage.read("moved")
    agent.storage = backend_store()
    assert agent.run("What is my name?").content.startswith("Your name is Ada.")
    assert [r["input"] for r in agent.runs] == [
        "My name is Ada.",
        "My colour is red.",
        "What is my name?",
    ]
    stored = backend_store().read("moved")
    assert isinstance(stored, AgentSession)
    assert stored.memory is not None
    assert [r["input"] for r in stored.memory["runs"]] == [r["input"] for r in agent.runs]
    assert stored.memory["messages"] == agent.messages
    assert stored.session_data is not None
    assert stored.session_data["session_state"] == {"topic": "names"}
    assert stored.session_data["metrics"]["runs"] == 3
    assert stored.user_id == "ada"
    assert JsonStorage(tmp_path / "before", mode="agent").read("moved") == before
    again = _agent(backend_store, session_id="moved", add_history_to_messages=True)
    assert again.run("What is my colour?").content.startswith("Your colour is red.")


def test_an_agent_given_another_storage_keeps_its_session_when_it_loads_it(
    backend_store: Store, tmp_path: Path
) -> None:
    agent = Agent(model=OfflineModel(), session_id="moved")
    agent.run("My name is Ada.")
    agent.storage = JsonStorage(tmp_path / "before", mode="agent")
    agent.run("My colour is red.")
    agent.storage = backend_store()
    assert agent.load_session() is False
    assert [r["input"] for r in agent.runs] == ["My name is Ada.", "My colour is red."]
    agent.run("What is my name?")
    stored = backend_store().read("moved")
    assert stored is not None
    assert len(stored.memory["runs"]) == 3  # type: ignore[index]
    backend_store().delete_session("moved")
    assert agent.load_session() is False
    assert agent.runs == []


def test_an_agent_given_a_storage_that_holds_its_session_adds_to_it(
    backend_store: Store, tmp_path: Path
) -> None:
    old = JsonStorage(tmp_path / "old", mode="agent")
    agent = Agent(model=OfflineModel(), storage=old, session_id="s")
    agent.run("one")
    agent.run("two")
    backend_store().restore(old.read("s"))  # type: ignore[arg-type]
    agent.storage = backend_store()
    agent.run("three")
    stored = backend_store().read("s")
    assert stored is not None
    assert [r["input"] for r in stored.memory["runs"]] == ["one", "two", "three"]  # type: ignore[attr-defined]


def test_an_agent_moved_back_to_a_storage_brings_the_runs_and_state_it_had_elsewhere(
    backend_store: Store, tmp_path: Path
) -> None:
    agent = Agent(
        model=OfflineModel(),
        storage=backend_store(),
        session_id="s",
        add_history_to_messages=True,
        num_history_runs=10,
    )
    agent.session_state["step"] = "start"
    agent.run("My name is Ada.")
    agent.storage = JsonStorage(tmp_path / "elsewhere", mode="agent")
    agent.session_state["step"] = "moved"
    agent.rename_session("moved away")
    agent.run("My colour is red.")
    agent.storage = backend_store()  # back: it holds the session as it was before the move
    answer = agent.run("What is my colour?")
    assert answer.content.startswith("Your colour is red.")
    stored = backend_store().read("s")
    assert isinstance(stored, AgentSession)
    assert stored.memory is not None
    assert stored.session_data is not None
    assert [r["input"] for r in stored.memory["runs"]] == [
        "My name is Ada.",
        "My colour is red.",
        "What is my colour?",
    ]
    assert stored.memory["messages"] == agent.messages
    assert stored.session_data["session_state"] == {"step": "moved"}
    assert stored.session_data["session_name"] == "moved away"
    assert stored.session_data["metrics"]["runs"] == 3
    assert agent.session_state == {"step": "moved"}
    assert [r["input"] for r in agent.runs] == [r["input"] for r in stored.memory["runs"]]


def test_a_storage_set_on_an_agent_is_checked_as_one_given_to_it() -> None:
    agent = Agent(model=OfflineModel())
    with pytest.raises(ValueError, match="mode='agent'"):
        agent.storage = InMemoryStorage(mode="team")
    with pytest.raises(TypeError, match="is a URL"):
        agent.storage = "sqlite:///x.db"  # type: ignore[assignment]
    assert agent.storage is None


def test_keys_other_code_keeps_in_agent_data_stay(backend_store: Store) -> None:
    # The original kept the agent's instructions there, an application may keep its own
    # keys: the agent's save replaced the whole field with its name, id, role and model.
    backend_store().upsert(
        AgentSession(
            session_id="s",
            agent_id="old",
            agent_data={"instructions": ["Be brief."], "name": "Old name", "app": {"v": 1}},
        )
    )
    agent = _agent(backend_store, session_id="s", name="Helper")
    agent.run("hello")
    stored = backend_store().read("s")
    assert stored is not None
    data = stored.agent_data  # type: ignore[attr-defined]
    assert data["instructions"] == ["Be brief."]
    assert data["app"] == {"v": 1}
    assert (data["name"], data["agent_id"]) == ("Helper", "old")


def test_two_agents_on_one_session_keep_each_others_state_and_name(
    backend_store: Store,
) -> None:
    first = _agent(backend_store, session_id="s", session_state={"shared": 0})
    first.run("hello")
    second = _agent(backend_store, session_id="s")
    first.session_state["cart"] = ["tea"]
    first.session_state["shared"] = 1
    first.run("add tea to my cart")
    second.rename_session("Shopping")
    second.run("what is the weather?")
    stored = backend_store().read("s")
    assert stored is not None
    assert stored.session_data["session_state"] == {"shared": 1, "cart": ["tea"]}  # type: ignore[index]
    assert second.session_state == {"shared": 1, "cart": ["tea"]}
    first.run("anything else?")
    assert first.session_name == "Shopping"
    second.session_state["shared"] = 2
    del second.session_state["cart"]
    first.session_state["shared"] = 3
    second.run("empty my cart")
    first.run("one more")
    stored = backend_store().read("s")
    assert stored is not None
    assert stored.session_data["session_state"] == {"shared": 3}  # type: ignore[index]
    assert stored.session_data["session_name"] == "Shopping"  # type: ignore[index]
    assert len(stored.memory["runs"]) == 6  # type: ignore[attr-defined]
    second.rename_session("Groceries")
    first.rename_session("Shopping")
    stored = backend_store().read("s")
    assert stored is not None
    assert stored.session_data["session_name"] == "Shopping"  # type: ignore[index]
    # A name cleared by one stays cleared: the other, saving after it, took the empty name
    # for none and wrote its own back at its next save.
    for name in (123, None, ["a"]):
        with pytest.raises(TypeError, match="must be a str"):
            second.rename_session(name)  # type: ignore[arg-type]
        assert second.session_name == "Groceries"
    second.rename_session("")
    first.run("still there?")
    first.run("and now?")
    stored = backend_store().read("s")
    assert stored is not None
    assert stored.session_data["session_name"] == ""  # type: ignore[index]
    assert first.session_name == ""


@pytest.mark.parametrize("between", [None, "saved without a name"])
def test_a_name_cleared_by_another_agent_stays_cleared_when_the_session_is_loaded_again(
    between: str | None,
) -> None:
    storage = InMemoryStorage()
    first = Agent(OfflineModel(), storage, session_id="s")
    first.run("hello")
    first.rename_session("Trip")
    second = Agent(OfflineModel(), storage, session_id="s")
    first.rename_session("")
    if between:
        # A third agent made on the session afterwards saves it with no name at all.
        Agent(OfflineModel(), storage, session_id="s").run("hi")
    second.load_session()  # as the chat's /history does
    assert not second.session_name
    second.run("and now?")
    stored = storage.read("s")
    assert stored is not None
    assert not stored.session_data["session_name"]  # type: ignore[index]
    # A name this agent was given and has not saved yet is kept, and saved.
    second.session_name = "Oslo"
    second.load_session()
    second.run("one more")
    assert storage.read("s").session_data["session_name"] == "Oslo"  # type: ignore[union-attr]


def test_a_state_an_agent_started_with_never_replaces_what_another_saved_meanwhile(
    backend_store: Store,
) -> None:
    # Two processes start one session, each with the state a new session starts with.
    first = _agent(backend_store, session_id="s", session_state={"cart": [], "visits": 0})
    second = _agent(backend_store, session_id="s", session_state={"cart": [], "visits": 0})
    second.session_state["cart"].append("tea")
    second.run("add tea")
    first.session_state["visits"] += 1
    first.run("hello")  # the cart is still the one it started with: the saved one wins
    stored = backend_store().read("s")
    assert stored is not None
    assert stored.session_data["session_state"] == {"cart": ["tea"], "visits": 1}  # type: ignore[index]
    assert first.session_state == {"cart": ["tea"], "visits": 1}
    # A value it changed is its own, the last writer's, as for any key.
    third = _agent(backend_store, session_id="t", session_state={"cart": []})
    fourth = _agent(backend_store, session_id="t", session_state={"cart": []})
    fourth.session_state["cart"].append("tea")
    fourth.run("add tea")
    third.session_state["cart"].append("milk")
    third.run("add milk")
    stored = backend_store().read("t")
    assert stored is not None
    assert stored.session_data["session_state"] == {"cart": ["milk"]}  # type: ignore[index]


def test_two_agents_on_one_session_keep_each_others_extra_data(backend_store: Store) -> None:
    first = _agent(backend_store, session_id="s", extra_data={"plan": "free", "tz": "UTC"})
    first.run("hello")
    second = _agent(backend_store, session_id="s")
    assert second.extra_data == {"plan": "free", "tz": "UTC"}
    second.extra_data["plan"] = "pro"  # type: ignore[index]
    second.extra_data["seen"] = True  # type: ignore[index]
    second.run("upgrade me")
    first.extra_data["tz"] = "CET"  # type: ignore[index]
    first.run("I moved")  # changed only tz: the plan and seen saved meanwhile stay
    stored = backend_store().read("s")
    assert stored is not None
    assert stored.extra_data == {"plan": "pro", "tz": "CET", "seen": True}  # type: ignore[attr-defined]
    assert first.extra_data == {"plan": "pro", "tz": "CET", "seen": True}
    del second.extra_data["seen"]  # type: ignore[index]
    second.run("forget it")
    first.run("anything else?")
    stored = backend_store().read("s")
    assert stored is not None
    assert stored.extra_data == {"plan": "pro", "tz": "CET"}  # type: ignore[attr-defined]


def test_extra_data_another_agent_changed_is_kept_when_the_session_is_loaded_again() -> None:
    storage = InMemoryStorage()
    first = Agent(OfflineModel(), storage, session_id="s", extra_data={"plan": "free", "n": 1})
    first.run("hello")
    second = Agent(OfflineModel(), storage, session_id="s")
    first.extra_data["plan"] = "pro"  # type: ignore[index]
    first.run("upgrade me")
    second.load_session()
    assert second.extra_data == {"plan": "pro", "n": 1}
    second.run("thanks")
    assert storage.read("s").extra_data == {"plan": "pro", "n": 1}  # type: ignore[union-attr]
    # What this agent changed and has not saved yet is its own: kept, and saved.
    second.extra_data["n"] = 2  # type: ignore[index]
    second.load_session()
    second.run("one more")
    assert storage.read("s").extra_data == {"plan": "pro", "n": 2}  # type: ignore[union-attr]


def test_the_originals_run_messages_are_sent_as_the_turns_they_hold() -> None:
    # Runs as the original library saved them: each run's system prompt, a tool call and its
    # result, copies of the history it had sent, keys of its own, content given as parts.
    system = {"role": "system", "content": "You are agno.", "created_at": 1}
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    picture = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    runs = [
        {
            "run_id": "quiet",
            "messages": [
                {"role": "user", "content": ""},
                {"role": "assistant", "content": "Say something."},
            ],
        },
        {
            "run_id": "r0",
            "messages": [
                system,
                {"role": "user", "content": "My name is Ada.", "add_to_agent_memory": True},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "content": "found", "tool_call_id": "c1"},
                {"role": "assistant", "content": "Hello, Ada.", "metrics": {"time": 0.1}},
            ],
        },
        {
            "run_id": "r1",
            "messages": [
                system,
                {"role": "user", "content": "My name is Ada.", "from_history": True},
                {"role": "assistant", "content": "Hello, Ada.", "from_history": True},
                {"role": "user", "content": picture},
                {"role": "assistant", "content": "A cat."},
            ],
        },
    ]
    storage = InMemoryStorage(mode="agent")
    storage.upsert(AgentSession(session_id="old", memory={"runs": runs}))
    with model_server() as server:
        model = OpenAIChat(id="echo", api_key="sk-test", base_url=server.base_url)
        agent = Agent(model=model, storage=storage, session_id="old", add_history_to_messages=True)
        assert agent.run("Who am I?").content == "echo: Who am I? [7 messages]"
        # An empty message is a turn too: left out, two answers came one after the other.
        assert server.requests[-1]["body"]["messages"] == [
            {"role": "user", "content": ""},
            {"role": "assistant", "content": "Say something."},
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello, Ada."},
            {"role": "user", "content": "What is in this picture?"},
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "Who am I?"},
        ]
    offline = Agent(
        model=OfflineModel(), storage=storage, session_id="old", add_history_to_messages=True
    )
    assert offline.run("What is my name?").content.startswith("Your name is Ada.")
    stored = storage.read("old")
    assert stored is not None
    assert stored.memory["runs"][:3] == runs  # type: ignore[attr-defined]


def test_an_agent_given_a_new_storage_of_its_own_store_never_brings_back_a_deleted_session(
    backend_store: Store,
) -> None:
    # An erasure while the agent lived: a new storage object on the same store is no move
    # to another store, and the session starts afresh there rather than coming back whole.
    agent = _agent(backend_store, session_id="erased", user_id="ada")
    agent.run("My name is Ada.")
    agent.run("My colour is red.")
    assert backend_store().delete_user("ada") == 1
    agent.storage = backend_store()
    agent.run("What is my name?")
    stored = backend_store().read("erased")
    assert stored is not None
    assert [r["input"] for r in stored.memory["runs"]] == ["What is my name?"]  # type: ignore[attr-defined]


def test_two_agents_on_one_session_each_send_the_turns_the_other_saved(
    backend_store: Store,
) -> None:
    """Two workers answering one conversation: each run's history is the session as stored
    when it starts, not as this object last saved it."""
    first = _agent(backend_store, session_id="s", add_history_to_messages=True)
    second = _agent(backend_store, session_id="s", add_history_to_messages=True)
    first.run("My name is Ada.")
    answer = second.run("What is my name?")
    assert answer.content.startswith("Your name is Ada.")
    assert answer.messages[0]["content"] == "My name is Ada."
    second.run("My name is Grace.")
    assert first.run("What is my name?").content.startswith("Your name is Grace.")
    stored = backend_store().read("s")
    assert stored is not None
    assert [r["input"] for r in stored.memory["runs"]] == [  # type: ignore[attr-defined]
        "My name is Ada.",
        "What is my name?",
        "My name is Grace.",
        "What is my name?",
    ]


def test_a_session_erased_elsewhere_sends_none_of_its_turns(backend_store: Store) -> None:
    agent = _agent(backend_store, session_id="s", add_history_to_messages=True)
    agent.run("My name is Ada.")
    assert backend_store().delete_session("s")
    answer = agent.run("What is my name?")
    assert answer.content.startswith("You have not told me")
    stored = backend_store().read("s")
    assert stored is not None
    assert [r["input"] for r in stored.memory["runs"]] == ["What is my name?"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("field", ["session_id", "user_id", "agent_id"])
@pytest.mark.parametrize("value", ["", "a\x00b", 7])
def test_an_id_savegame_cannot_store_is_refused_before_anything_runs(
    tmp_path: Path, field: str, value: object
) -> None:
    storage = SqliteStorage("agents", db_file=str(tmp_path / "a.db"))
    with pytest.raises(InvalidIdentifierError, match=field.replace("_", " ")):
        Agent(model=OfflineModel(), storage=storage, **{field: value})  # type: ignore[arg-type]
    assert storage.get_all_session_ids() == []


@pytest.mark.parametrize("value", ["", "a\x00b"])
def test_loading_an_id_savegame_cannot_store_is_refused_and_keeps_the_session(
    tmp_path: Path, value: str
) -> None:
    agent = Agent(
        model=OfflineModel(),
        storage=SqliteStorage("agents", db_file=str(tmp_path / "a.db")),
        session_id="s1",
    )
    agent.run("My name is Ada.")
    with pytest.raises(InvalidIdentifierError, match="session id"):
        agent.load_session(value)
    assert agent.session_id == "s1"
    assert len(agent.runs) == 1


def test_deleting_an_empty_id_is_refused_rather_than_taken_for_the_current_session(
    tmp_path: Path,
) -> None:
    # delete_session(os.environ.get("SESSION", "")) must not delete the session in use.
    storage = SqliteStorage("agents", db_file=str(tmp_path / "a.db"))
    agent = Agent(model=OfflineModel(), storage=storage, session_id="s1")
    agent.run("My name is Ada.")
    with pytest.raises(InvalidIdentifierError, match="session id"):
        agent.delete_session("")
    assert agent.session_id == "s1"
    assert len(agent.runs) == 1
    assert storage.read("s1") is not None
