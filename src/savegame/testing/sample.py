"""Deterministic sessions for tests, and a check that a session read back is whole.

A sample session in round ``r`` holds ``r + 1`` runs where the mode keeps runs, and its
``session_data`` says how many, so a reader can tell a torn or half-written session from a
whole one without knowing which round it should see.
"""

from __future__ import annotations

from typing import Any

from savegame.storage.session import MODES, Session, get_path, set_path


def make_run(session_id: str, round_: int, k: int, size: int) -> dict[str, Any]:
    """Run ``k`` of a sample session; its text depends only on the arguments."""
    return {
        "run_id": f"{session_id}/{k}",
        "round": round_ if k == round_ else k,
        "messages": [
            {"role": "user", "content": f"question {k} of {session_id}"},
            {"role": "assistant", "content": ("é✓" + str(k)) * max(1, size // 4)},
        ],
    }


def make_session(
    mode: str,
    session_id: str,
    round_: int = 0,
    size: int = 64,
    user_id: str | None = "user-1",
    entity_id: str | None = "entity-1",
) -> Session:
    """A sample session of ``mode`` in round ``round_``."""
    spec = MODES[mode]
    data: dict[str, Any] = {
        "session_id": session_id,
        "user_id": user_id,
        spec.entity_field: entity_id,
        "session_data": {"round": round_, "n_runs": round_ + 1, "session_name": "sample"},
        "extra_data": {"tags": ["a", "b"], "nested": {"x": [1, 2.5, None, True]}},
    }
    runs = [make_run(session_id, round_, k, size) for k in range(round_ + 1)]
    set_path(data, spec.runs_path, runs)
    if spec.runs_path[0] == "memory":
        data["memory"]["summary"] = f"round {round_}"
    session = spec.session_class.from_dict(data)
    assert session is not None
    return session


def check_session(mode: str, session: Session, size: int = 64) -> int:
    """Checks that a sample session is whole; returns its round.

    Raises:
        AssertionError: when the session is torn (runs and header of different rounds) or
            its content differs from what :func:`make_session` wrote.
    """
    spec = MODES[mode]
    data = session.to_dict()
    round_ = data["session_data"]["round"]
    assert data["session_data"]["n_runs"] == round_ + 1, data["session_data"]
    expected = make_session(mode, session.session_id, round_, size).to_dict()
    got_runs = get_path(data, spec.runs_path)
    want_runs = get_path(expected, spec.runs_path)
    assert got_runs == want_runs, f"runs of {session.session_id!r} differ in round {round_}"
    for key in ("session_data", "extra_data", "user_id", spec.entity_field):
        assert data[key] == expected[key], key
    return int(round_)
