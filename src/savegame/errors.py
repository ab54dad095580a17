"""The errors savegame raises.

Every error a storage raises is a :class:`StorageError`, so ``except StorageError`` catches
all of them (but the ``TypeError`` of an ``expected_version`` that is not a whole number)::

    StorageError
    ├── InvalidIdentifierError   (ValueError)   an id, table, schema, prefix, path, URL or
    │                                           option refused
    ├── SerializationError       (ValueError)   a value JSON cannot hold; a wrong session class
    ├── ConflictError                           the stored version moved on since it was read
    ├── BackendUnavailableError                 the store is unreachable or locked too long
    ├── CorruptSessionError                     a stored session cannot be decoded
    └── MissingDependencyError   (ImportError)  a backend's driver is not installed

Backends translate their driver's exceptions into these at one boundary and re-raise them
``from`` the original, so the driver's error stays available as ``__cause__``. Reading a session
that is not there is not an error: ``read`` returns None.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error a storage raises. The agent runtime's own are apart: a
    model that failed (:class:`savegame.models.ModelError`), a session of another user
    (:class:`savegame.runtime.SessionOwnerError`)."""


class InvalidIdentifierError(StorageError, ValueError):
    """A session id, user id, table, schema or key prefix that savegame refuses; or a
    storage URL, a file or folder path, or an option of a storage (``mode``, ``expire``,
    ``shards``, ...), that it refuses."""


class SerializationError(StorageError, ValueError):
    """A session holds a value that cannot be stored faithfully, or is of the wrong class."""


class ConflictError(StorageError):
    """A write named the version it read, and another write had advanced it first.

    Attributes:
        session_id: the session that was being written.
        expected: the version the caller said it read (0: "the session must not exist yet").
        actual: the version found in the store (0: the session is not there).

    ``message`` replaces the one made of those, for a call that tells more (an import or a
    copy that stopped says how far it got).
    """

    def __init__(
        self, session_id: str, expected: int, actual: int, message: str | None = None
    ) -> None:
        super().__init__(
            message
            or f"session {session_id!r} is at version {actual}, not {expected}: "
            "another writer changed it since it was read"
        )
        self.session_id = session_id
        self.expected = expected
        self.actual = actual


class BackendUnavailableError(StorageError):
    """The store could not be reached, or stayed locked past its timeout.

    Nothing was written when a write raises this; retrying later is safe.
    """


class CorruptSessionError(StorageError):
    """A stored session exists but cannot be decoded (a foreign or damaged record)."""


class MissingDependencyError(StorageError, ImportError):
    """A package that a backend (its driver) or the conformance suite needs is not
    installed; the message names the extra to install.

    ``needed_by`` names what needs it in the message.
    """

    def __init__(self, package: str, extra: str, needed_by: str = "this backend") -> None:
        super().__init__(
            f'{needed_by} needs the {package!r} package: pip install "savegame[{extra}]"'
        )
        self.package = package
        self.extra = extra


__all__ = [
    "BackendUnavailableError",
    "ConflictError",
    "CorruptSessionError",
    "InvalidIdentifierError",
    "MissingDependencyError",
    "SerializationError",
    "StorageError",
]
