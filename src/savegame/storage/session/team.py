"""The session of a team of agents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from savegame.storage.session.base import Session


@dataclass
class TeamSession(Session):
    """A team's saved conversation; its members' turns live in their own agent sessions."""

    team_session_id: str | None = None
    workflow_session_id: str | None = None
    team_id: str | None = None
    user_id: str | None = None
    memory: dict[str, Any] | None = None
    team_data: dict[str, Any] | None = None
    session_data: dict[str, Any] | None = None
    extra_data: dict[str, Any] | None = None
    created_at: int | None = None
    updated_at: int | None = None
    version: int | None = None
