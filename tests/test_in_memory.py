"""What is particular to the in-memory storage: the dict it is given may hold anything."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

import pytest

from savegame.errors import CorruptSessionError, InvalidIdentifierError
from savegame.storage.in_memory import InMemoryStorage
from savegame.storage.session.agent import AgentSession
from savegame.storage.session.team import TeamSession

DAMAGED: dict[str, Any] = {
    "not a dict": "garbage",
    "a list": [{"session_id": "s"}],
    "no session_id": {"user_id": "u"},
    "a session_id that is not a string": {"session_id": 5},
    "another session_id": {"session_id": "other"},
    "a user_id that is not a string": {"session_id": "s", "user_id": 5},
    "an agent_id that is not a string": {"session_id": "s", "agent_id": ["a"]},
    "a created_at that is not a number": {"session_id": "s", "created_at": "yesterday"},
    "a version that is not a number": {"session_id": "s", "version": "2"},
    "an expires_at that is not a number": {"session_id": "s", "expires_at": "soon"},
}
"""Entries under the key ``"s"`` that no savegame storage writes."""

CALLS: dict[str, Callable[[InMemoryStorage], Any]] = {
    "read": lambda s: s.read("s"),
    "read_many": lambda s: s.read_many(["s"]),
    "upsert": lambda s: s.upsert(AgentSession(session_id="s")),
    "update": lambda s: s.update("s", lambda session: session),
    "get_all_session_ids": lambda s: s.get_all_session_ids(),
    "get_all_session_ids of a user": lambda s: s.get_all_session_ids(user_id="u"),
    "get_all_sessions": lambda s: s.get_all_sessions(),
    "get_recent_sessions": lambda s: s.get_recent_sessions(),
    "delete_user": lambda s: s.delete_user("u"),
    "purge_expired": lambda s: s.purge_expired(),
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("damage", list(DAMAGED))
def test_an_entry_that_is_no_session_fails_each_call_and_is_left_as_it_was(
    damage: str, call: str
) -> None:
    stored = {"s": copy.deepcopy(DAMAGED[damage]), "fine": {"session_id": "fine"}}
    before = copy.deepcopy(stored)
    storage = InMemoryStorage(storage_dict=stored)
    with pytest.raises(CorruptSessionError, match="entry 's'"):
        CALLS[call](storage)
    assert stored == before


@pytest.mark.parametrize("call", ["get_all_sessions", "purge_expired", "delete_user"])
def test_a_key_that_is_no_session_id_fails_the_listings(call: str) -> None:
    stored: dict[Any, Any] = {1: {"session_id": "s"}}
    with pytest.raises(CorruptSessionError, match="entry 1 "):
        CALLS[call](InMemoryStorage(storage_dict=stored))
    assert stored == {1: {"session_id": "s"}}


@pytest.mark.parametrize("call", ["read", "get_all_sessions", "update"])
def test_a_value_json_cannot_hold_fails_the_read_naming_its_path(call: str) -> None:
    stored: dict[str, Any] = {"s": {"session_id": "s", "memory": {"tags": {"a", "b"}}}}
    with pytest.raises(CorruptSessionError, match=r"entry 's'.*\$\['memory'\]\['tags'\]"):
        CALLS[call](InMemoryStorage(storage_dict=stored))
    assert stored == {"s": {"session_id": "s", "memory": {"tags": {"a", "b"}}}}


def test_delete_session_and_drop_remove_entries_that_are_no_session() -> None:
    stored: dict[Any, Any] = {
        "s": "garbage",
        "t": {"session_id": "other"},
        2: None,
        "team": TeamSession(session_id="team", team_id="x").to_dict(),
    }
    storage = InMemoryStorage(storage_dict=stored)
    assert storage.delete_session("s") is True
    assert "s" not in stored
    storage.drop()
    assert list(stored) == ["team"]


@pytest.mark.parametrize("given", ["sessions", [("s", {"session_id": "s"})], 5])
def test_a_storage_dict_that_is_not_a_dict_is_refused(given: Any) -> None:
    with pytest.raises(InvalidIdentifierError, match="storage_dict must be a dict"):
        InMemoryStorage(storage_dict=given)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_after_writes_has_a_copy_of_its_own() -> None:
    storage = InMemoryStorage()
    storage.upsert(AgentSession(session_id="before", user_id="u"))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            storage.upsert(AgentSession(session_id="child", user_id="u"))
            storage.delete_session("before")
            code = 0 if storage.get_all_session_ids(user_id="u") == ["child"] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert storage.get_all_session_ids(user_id="u") == ["before"]
