"""The session of a workflow whose ``run`` is written by hand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from savegame.storage.session.base import Session


@dataclass
class WorkflowSession(Session):
    """A workflow's saved state: ``session_data`` carries its ``session_state``."""

    user_id: str | None = None
    memory: dict[str, Any] | None = None
    session_data: dict[str, Any] | None = None
    extra_data: dict[str, Any] | None = None
    created_at: int | None = None
    updated_at: int | None = None
    workflow_id: str | None = None
    workflow_data: dict[str, Any] | None = None
    version: int | None = None
