"""The session of one agent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from savegame.storage.session.base import Session


@dataclass
class AgentSession(Session):
    """An agent's saved conversation: ``memory`` holds its runs and messages."""

    user_id: str | None = None
    team_session_id: str | None = None
    workflow_session_id: str | None = None
    memory: dict[str, Any] | None = None
    session_data: dict[str, Any] | None = None
    extra_data: dict[str, Any] | None = None
    created_at: int | None = None
    updated_at: int | None = None
    agent_id: str | None = None
    agent_data: dict[str, Any] | None = None
    version: int | None = None
