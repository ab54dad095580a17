"""Encoding rules that no backend's store decides: the limits of Python itself."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from savegame.errors import CorruptSessionError, SerializationError
from savegame.storage.base import Storage
from savegame.storage.in_memory import InMemoryStorage
from savegame.storage.json import JsonStorage
from savegame.storage.session.agent import AgentSession
from savegame.storage.sqlite import SqliteStorage

LOWEST = 640
"""The lowest limit ``sys.set_int_max_str_digits`` takes."""


@pytest.fixture
def lowest_digit_limit() -> Iterator[None]:
    if not hasattr(sys, "set_int_max_str_digits"):
        pytest.skip("this Python has no limit on converting ints to text")
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(LOWEST)
    try:
        yield
    finally:
        sys.set_int_max_str_digits(before)


@pytest.mark.usefixtures("lowest_digit_limit")
@pytest.mark.parametrize("backend", ["memory", "sqlite", "json"])
def test_an_int_longer_than_a_lowered_digit_limit_is_refused(backend: str, tmp_path: Path) -> None:
    storage: Storage = {
        "memory": lambda: InMemoryStorage(),
        "sqlite": lambda: SqliteStorage("t", db_file=tmp_path / "x.db"),
        "json": lambda: JsonStorage(tmp_path / "j"),
    }[backend]()
    longest = 10**LOWEST - 1  # LOWEST digits: still fine
    assert storage.upsert(AgentSession(session_id="ok", session_data={"n": longest}))
    with pytest.raises(SerializationError, match=f"more than {LOWEST} digits"):
        storage.upsert(AgentSession(session_id="s", session_data={"n": 10**LOWEST}))
    assert storage.read("s") is None


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ({1}, "a set cannot be stored as JSON; convert it to a sorted list"),
        (object(), "an object cannot be stored as JSON"),
        (Ellipsis, "an ellipsis cannot be stored as JSON"),
        (b"x", "a bytes value cannot be stored as JSON; decode it to str"),
    ],
)
def test_a_value_json_cannot_hold_is_named_with_its_article(value: object, said: str) -> None:
    # "a object cannot be stored", "a bytes cannot be stored".
    with pytest.raises(SerializationError) as refused:
        InMemoryStorage().upsert(AgentSession("s", session_data={"v": value}))
    assert f"$['session_data']['v']: {said}" in str(refused.value)


def test_a_key_or_a_session_of_another_kind_is_named_with_its_article(tmp_path: Path) -> None:
    # "dict key 1 is a int", "session 's' is a agent session".
    with pytest.raises(SerializationError, match=r"dict key 1 is an int; only string keys"):
        InMemoryStorage().upsert(AgentSession("s", session_data={1: "one"}))
    JsonStorage(tmp_path, mode="agent").upsert(AgentSession("s"))
    with pytest.raises(CorruptSessionError, match="session 's' is an agent session, which a"):
        JsonStorage(tmp_path, mode="team").read("s")
