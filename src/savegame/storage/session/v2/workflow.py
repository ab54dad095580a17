"""The session of a workflow made of steps, with one entry per run in ``runs``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from savegame.storage.session.base import Session


@dataclass
class WorkflowSession(Session):
    """A step workflow's saved runs, each recording the status of every step."""

    user_id: str | None = None
    workflow_id: str | None = None
    workflow_name: str | None = None
    runs: list[dict[str, Any]] | None = None
    session_data: dict[str, Any] | None = None
    workflow_data: dict[str, Any] | None = None
    extra_data: dict[str, Any] | None = None
    created_at: int | None = None
    updated_at: int | None = None
    version: int | None = None
