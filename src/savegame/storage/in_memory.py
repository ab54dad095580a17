"""Sessions kept in a dict in this process: for tests, notebooks and throwaway agents."""

from __future__ import annotations

import threading
from typing import Any

from savegame.storage.base import Draft, Header, Record, Storage, is_expired
from savegame.storage.codec import dumps, loads
from savegame.storage.session import Mode, modes_of
from savegame.storage.url import StorageURL


def _copy(record: Record) -> Record:
    """A copy of ``record`` through the JSON text the other backends would store."""
    copy: Record = loads(dumps(record))
    return copy


class InMemoryStorage(Storage):
    """Keeps sessions in ``storage_dict`` (a new dict unless one is given), keyed by session id.

    Each value is a copy of the session's record, so neither the caller's sessions nor the
    dict's values share objects with what ``read`` returns. Listing scans the dict: this
    backend is for small stores.

    Storages of several modes may share one dict: each lists its own mode's sessions only,
    and none reads, replaces or deletes a session of another mode (it raises
    :class:`~savegame.errors.CorruptSessionError`).
    """

    def __init__(
        self,
        mode: Mode | None = "agent",
        storage_dict: dict[str, dict[str, Any]] | None = None,
        expire: int | None = None,
    ) -> None:
        super().__init__(mode, expire)
        self.storage_dict: dict[str, dict[str, Any]] = {} if storage_dict is None else storage_dict
        self._lock = threading.RLock()

    def create(self) -> None:
        """Nothing to make: the dict is there."""

    def drop(self) -> None:
        """Removes every session but those of another mode."""
        with self._lock:
            for sid in [sid for sid, r in self.storage_dict.items() if not self._other_mode(r)]:
                del self.storage_dict[sid]

    def _read(self, session_id: str) -> Record | None:
        with self._lock:
            record = self.storage_dict.get(session_id)
            if record is None:
                return None
            self._refuse_other_mode(record, "read")
            return _copy(record)

    def _write(
        self, draft: Draft, expected_version: int | None, now: int, preserve: bool
    ) -> Record:
        with self._lock:
            old = self.storage_dict.get(draft.session_id)
            if old is not None:
                self._refuse_other_mode(old, "replace")
            header = None if old is None else Header.of(old)
            record = self._stamp(draft.record, header, expected_version, now, preserve)
            self.storage_dict[draft.session_id] = _copy(record)
            return record

    def _list(
        self, user_id: str | None, entity_id: str | None, limit: int | None, now: int | None
    ) -> list[str]:
        field, mode = self.spec.entity_field, self.mode
        with self._lock:
            rows = [
                (r.get("created_at") or 0, sid)
                for sid, r in self.storage_dict.items()
                if (user_id is None or r.get("user_id") == user_id)
                and (entity_id is None or r.get(field) == entity_id)
                and (now is None or not is_expired(r.get("expires_at"), now))
                and mode in modes_of(r)
            ]
        rows.sort(key=lambda row: (-row[0], row[1]))
        return [sid for _, sid in rows[:limit]]

    def _delete(self, session_id: str) -> bool:
        with self._lock:
            record = self.storage_dict.get(session_id)
            if record is None:
                return False
            self._refuse_other_mode(record, "delete")
            del self.storage_dict[session_id]
            return True

    def _purge_expired(self, now: int) -> int:
        with self._lock:
            gone = [
                sid
                for sid, r in self.storage_dict.items()
                if is_expired(r.get("expires_at"), now) and not self._other_mode(r)
            ]
            for sid in gone:
                del self.storage_dict[sid]
        return len(gone)


def from_url(url: StorageURL) -> InMemoryStorage:
    """``memory://``: a new, empty in-memory store."""
    return InMemoryStorage(mode=url.mode, expire=url.pop_int("expire"))  # type: ignore[arg-type]
