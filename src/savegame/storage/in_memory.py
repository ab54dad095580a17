"""Sessions kept in a dict in this process: for tests, notebooks and throwaway agents."""

from __future__ import annotations

import threading
from typing import Any

from savegame.errors import CorruptSessionError, InvalidIdentifierError, SerializationError
from savegame.storage.base import (
    HOLDING,
    Draft,
    Header,
    Record,
    Stamp,
    Storage,
    is_expired,
    kept_from_delete,
    stored_problem,
)
from savegame.storage.codec import copy_through_text, with_article
from savegame.storage.session import Mode, modes_of
from savegame.storage.url import StorageURL, redact

_LOCK = threading.RLock()
"""Held by every call of every in-memory storage: storages given one dict take turns on it,
whichever objects they are (a lock of each object's own let their checks and writes
interleave). The calls are short and in memory, so one lock for all of them costs little."""


class InMemoryStorage(Storage):
    """Keeps sessions in ``storage_dict`` (a new dict unless one is given), keyed by session id.

    Each value is a copy of the session's record, so neither the caller's sessions nor the
    dict's values share objects with what ``read`` returns. Listing scans the dict: this
    backend is for small stores.

    Storages of several modes may share one dict: each lists its own mode's sessions only,
    and none reads, replaces or deletes a session of another mode (it raises
    :class:`~savegame.errors.CorruptSessionError`).

    An entry that is not a session's record (put in the dict by other code: a value that is
    not a dict, one whose ``session_id`` is not its key, ids or times of the wrong type,
    values JSON cannot hold) makes each call that meets it raise
    :class:`~savegame.errors.CorruptSessionError` naming it, and leave the dict as it was;
    only ``delete_session`` of its key and ``drop`` remove it.

    Raises:
        InvalidIdentifierError: (a ``ValueError``) for a ``storage_dict`` that is not a dict.
    """

    def __init__(
        self,
        mode: Mode | None = "agent",
        storage_dict: dict[str, dict[str, Any]] | None = None,
        expire: int | None = None,
    ) -> None:
        super().__init__(mode, expire)
        if storage_dict is not None and not isinstance(storage_dict, dict):
            raise InvalidIdentifierError(
                "storage_dict must be a dict of session records by session id, or None, "
                f"not {type(storage_dict).__name__}"
            )
        self.storage_dict: dict[str, dict[str, Any]] = {} if storage_dict is None else storage_dict

    def _forked(self) -> None:
        # Another thread of the parent may have held it at the fork, for good in the child.
        global _LOCK
        _LOCK = threading.RLock()

    def create(self) -> None:
        """Nothing to make: the dict is there."""

    def drop(self) -> None:
        """Removes every entry but the sessions of another mode."""
        with HOLDING, _LOCK:
            for sid in [sid for sid, r in self.storage_dict.items() if not self._of_other(r)]:
                del self.storage_dict[sid]

    def _of_other(self, value: Any) -> bool:
        """Whether the entry ``value`` is a session of another mode (not one of no mode)."""
        return isinstance(value, dict) and self._other_mode(value) is not None

    def _checked(self, key: Any, value: Any) -> Record:
        """The entry ``value`` of the dict's ``key``, once it is found to be a session's
        record.

        Raises:
            CorruptSessionError: naming the entry, when it is not a session's record.
        """
        problem: str | None
        if not isinstance(value, dict):
            problem = f"it is {with_article(type(value).__name__)}, not a dict"
        elif value.get("session_id") != key or not isinstance(key, str):
            problem = f"it holds session_id {value.get('session_id')!r}"
        else:
            problem = stored_problem(value, self.spec)
        if problem is not None:
            raise CorruptSessionError(
                f"the entry {key!r} of the dict of {self!r} is not a session savegame can "
                f"read: {problem}; it was put there or changed outside savegame"
            )
        record: Record = value
        return record

    def _copy(self, key: str, record: Record) -> Record:
        """A copy of the stored, checked record (:meth:`_checked`) through the JSON text the
        other backends would store.

        Raises:
            CorruptSessionError: when it holds a value savegame cannot store.
        """
        try:
            copy: Record = copy_through_text(record)
        except SerializationError as exc:
            raise CorruptSessionError(
                f"the entry {key!r} of the dict of {self!r} holds a value savegame cannot "
                f"store ({exc}); it was put there or changed outside savegame"
            ) from exc
        return copy

    def _read(self, session_id: str) -> Record | None:
        with HOLDING, _LOCK:
            record = self.storage_dict.get(session_id)
            if record is None:
                return None
            self._refuse_other_mode(self._checked(session_id, record), "read")
            return self._copy(session_id, record)

    def _read_stamps(self, ids: list[str], now: int) -> list[Stamp | None]:
        # Straight from the dict: no copy of the sessions is made.
        stamps: list[Stamp | None] = []
        with HOLDING, _LOCK:
            for session_id in ids:
                record = self.storage_dict.get(session_id)
                if record is None:
                    stamps.append(None)
                    continue
                checked = self._checked(session_id, record)
                self._refuse_other_mode(checked, "read")
                if is_expired(checked.get("expires_at"), now):
                    stamps.append(None)
                    continue
                stamps.append(self._stamp_of(dict(checked)))
        return stamps

    def _write(
        self, draft: Draft, expected_version: int | None, now: int, preserve: bool
    ) -> Record:
        with HOLDING, _LOCK:
            old = self.storage_dict.get(draft.session_id)
            if old is not None:
                self._refuse_other_mode(self._checked(draft.session_id, old), "replace")
            header = None if old is None else Header.of(old)
            record = self._stamp(draft.record, header, expected_version, now, preserve)
            self.storage_dict[draft.session_id] = copy_through_text(record)
            return record

    def _list(
        self, user_id: str | None, entity_id: str | None, limit: int | None, now: int | None
    ) -> list[str]:
        field, mode = self.spec.entity_field, self.mode
        rows = []
        with HOLDING, _LOCK:
            for sid, value in self.storage_dict.items():
                modes = modes_of(value) if isinstance(value, dict) else frozenset()
                if modes and mode not in modes:
                    continue  # another mode's session
                r = self._checked(sid, value)
                if (
                    modes
                    and (user_id is None or r.get("user_id") == user_id)
                    and (entity_id is None or r.get(field) == entity_id)
                    and (now is None or not is_expired(r.get("expires_at"), now))
                ):
                    rows.append((r.get("created_at") or 0, sid))
        rows.sort(key=lambda row: (-row[0], row[1]))
        return [sid for _, sid in rows[:limit]]

    def _delete(
        self, session_id: str, owner: str | None = None, version: int | None = None
    ) -> bool:
        with HOLDING, _LOCK:
            record = self.storage_dict.get(session_id)
            if record is None:
                return False
            if isinstance(record, dict):
                self._refuse_other_mode(record, "delete")
                if kept_from_delete(record, owner, version):
                    return False
            del self.storage_dict[session_id]
            return True

    def store_names(self) -> tuple[object, ...]:
        return (id(self.storage_dict),)

    def _purge_expired(self, now: int) -> int:
        with HOLDING, _LOCK:
            gone = [
                sid
                for sid, r in self.storage_dict.items()
                if not self._of_other(r)
                and is_expired(self._checked(sid, r).get("expires_at"), now)
            ]
            for sid in gone:
                del self.storage_dict[sid]
        return len(gone)


def from_url(url: StorageURL) -> InMemoryStorage:
    """``memory://``: a new, empty in-memory store.

    Raises:
        InvalidIdentifierError: for a URL with anything between ``memory://`` and its
            query: ``memory://shared`` would look like the name of a store that two
            opens share, and each open is a new store.
    """
    if url.path:
        raise InvalidIdentifierError(
            f"{redact(url.raw)!r}: memory:// names a new, empty store each time it is "
            "opened, and takes no name or address: give memory:// alone"
        )
    return InMemoryStorage(mode=url.mode, expire=url.pop_int("expire"))  # type: ignore[arg-type]
