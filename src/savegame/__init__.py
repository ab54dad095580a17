"""savegame: save and resume the sessions of AI agents, teams and workflows."""

from __future__ import annotations

from savegame.errors import (
    BackendUnavailableError,
    ConflictError,
    CorruptSessionError,
    InvalidIdentifierError,
    MissingDependencyError,
    SerializationError,
    StorageError,
)
from savegame.storage.url import open_storage

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "ConflictError",
    "CorruptSessionError",
    "InvalidIdentifierError",
    "MissingDependencyError",
    "SerializationError",
    "StorageError",
    "__version__",
    "open_storage",
]
