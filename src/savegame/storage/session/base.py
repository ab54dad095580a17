"""What every session class shares: the dataclass shape and the dict round trip."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

S = TypeVar("S", bound="Session")


@dataclass
class Session:
    """A saved session: the state an agent, team or workflow needs to pick up where it stopped.

    Subclasses add their fields; all of them but ``session_id`` are optional. ``version`` is
    None until the session has been stored, and is advanced by every write (see
    :meth:`savegame.storage.base.Storage.upsert`).
    """

    session_id: str

    def to_dict(self) -> dict[str, Any]:
        """The session's fields as a dict.

        The dict is shallow: nested dicts and lists are the session's own objects. Storages
        copy what they are given, so changing either afterwards never changes the store.
        """
        return {name: getattr(self, name) for name in _ordered(type(self))}

    @classmethod
    def from_dict(cls: type[S], data: dict[str, Any] | None) -> S | None:
        """Builds a session from a dict, ignoring keys that are not fields of the class.

        Returns None when ``data`` is None or has no ``session_id``, so a missing row maps to
        a missing session.
        """
        if not data or data.get("session_id") is None:
            return None
        names = _names(cls)
        if names.issuperset(data):
            return cls(**data)
        return cls(**{k: v for k, v in data.items() if k in names})


_NAMES: dict[type, frozenset[str]] = {}
_ORDERED: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> frozenset[str]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = frozenset(_ordered(cls))
    return names


def _ordered(cls: type) -> tuple[str, ...]:
    """The field names of a session class, in order (``fields()`` is slow on a hot path)."""
    names = _ORDERED.get(cls)
    if names is None:
        names = _ORDERED[cls] = tuple(f.name for f in fields(cls))
    return names
