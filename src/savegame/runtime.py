"""What agents, teams and workflows share: a session that is saved after every run.

:class:`SessionKeeper` holds the state of one session (its runs, name, state, metrics) and
saves it through :meth:`savegame.storage.base.Storage.update`: each save reads the stored
session, adds this run to the runs already there and writes with the version it read. When
another process saved the same session in between, the write conflicts and is redone over
the newer session, so two processes running one session lose no run. The stored session is
then taken back as the keeper's own, so its history includes the other process's runs. Runs
are merged, and so are the session's name, state and ``extra_data``: a save writes the name,
and the keys of the state and of ``extra_data``, that this object changed since it last read
or saved the session, over what is stored then. A change another process saved meanwhile is
kept, unless this object changed the same thing (the last writer wins).

Where the runs sit in a session (``memory["runs"]`` or ``runs``) and which field names the
agent, team or workflow come from the storage's mode spec, never from a branch on the mode.

A failed read is never taken for a missing session: every error of the store propagates, and
a keeper that could not load its session never saves over it.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

from savegame.errors import CorruptSessionError, SerializationError
from savegame.storage.base import Storage
from savegame.storage.codec import check_id, dumps, encode_text
from savegame.storage.known import pickle_plain
from savegame.storage.session import Session, get_path, messages_of, mode_spec, set_path

Run = dict[str, Any]


def new_id() -> str:
    """A fresh session or run id."""
    return str(uuid.uuid4())


class SessionOwnerError(ValueError):
    """The session id names a session that belongs to another user."""


class SessionKeeper:
    """Loads a session when made with the id of a stored one, and saves it after every run.

    Subclasses set :attr:`mode` and :attr:`data_field`, describe themselves in
    :meth:`_entity_data` and may add to the stored dict in :meth:`_extend`.

    Args:
        storage: where sessions are saved; None keeps them in this object only.
        session_id: the session to resume or start; a new id when None.
        user_id: the user the session belongs to; when None, each session loaded has the
            user stored with it, and a new session none.
        entity_id: the agent, team or workflow id; taken from the stored session when None.
        session_name: a name for the session; a stored name is kept unless one is given.
        session_state: the state a new session starts with; a resumed session's stored
            state wins for the keys it has.
        extra_data: stored as the session's ``extra_data``.

    Raises:
        InvalidIdentifierError: when an id given is one savegame cannot store (empty, not a
            str, holding NUL); raised before anything is read.
        ValueError: when ``storage`` is not in this keeper's mode.
        TypeError: when ``storage`` is a URL (a string) rather than a storage, or
            ``session_state`` or ``extra_data`` is not a dict.
        SessionOwnerError: when the stored session belongs to another ``user_id``.
        CorruptSessionError: when a field of the stored session is not of the shape a
            session of this kind has (see :meth:`_fields`).
        StorageError: when the stored session cannot be read (never taken for a new one).
    """

    mode: ClassVar[str] = "agent"
    data_field: ClassVar[str] = "agent_data"
    made_with: ClassVar[tuple[str, ...]] = ()
    """Attributes a subclass sets before this class's ``__init__`` and fills in from a stored
    session where they are None (a name from ``agent_data``, say). Every session started or
    switched to begins with them as the object was made, as it does with the user: what was
    taken from one session is that session's, not the next one's."""

    session_id: str
    session_name: str | None
    session_state: dict[str, Any]
    runs: list[Run]
    """The session's runs as last saved or loaded, this process's and others', in order."""
    metrics: dict[str, Any]
    version: int | None
    _stored: Session | None

    def __init__(
        self,
        storage: Storage | None,
        session_id: str | None,
        user_id: str | None,
        entity_id: str | None,
        session_name: str | None,
        session_state: dict[str, Any] | None,
        extra_data: dict[str, Any] | None,
    ) -> None:
        self.spec = mode_spec(self.mode)
        ids = {"session_id": session_id, "user_id": user_id, self.spec.entity_field: entity_id}
        for field, value in ids.items():
            if value is not None:
                # An empty one (an unset variable) would start a session under an id, or
                # save it under a user, nobody asked for; one no store holds would fail
                # only at the first save, after the model had answered.
                check_id(value, field.replace("_", " "))
        for field, given in (("session_state", session_state), ("extra_data", extra_data)):
            if given is not None and not isinstance(given, dict):
                raise TypeError(f"{field} must be a dict, not {type(given).__name__}")
        self._stored_from: Storage | None = None
        self.storage = storage
        self._initial_user = user_id
        self.user_id = user_id
        self.entity_id = entity_id
        self.entity_id_made = entity_id is None
        """Whether this object was made without an entity id: it then takes the id of each
        stored session it loads, and makes one up for sessions that have none."""
        self._made_up_id: str | None = None
        self._initial_extra = copy.deepcopy(extra_data)
        self.extra_data: dict[str, Any] | None = None
        self._base_state: dict[str, Any] = {}
        """The stored ``session_state`` as last read or saved, that changes are made on."""
        self._base_name: str | None = None
        """The stored session name as last read or saved."""
        self._base_extra: Any = None
        """The stored ``extra_data`` as last read or saved, that changes are made on."""
        self._renaming = False
        """Whether the save under way is a rename, which writes the name even when it is the
        one last read (another process having renamed the session since)."""
        self._initial_state = copy.deepcopy(session_state or {})
        self._made_with = {name: getattr(self, name) for name in self.made_with}
        self.session_id = session_id or new_id()
        self._reset()
        if session_id is not None:
            self.load_session()
        if session_name is not None:
            self.session_name = session_name
        if self.entity_id is None:
            self.entity_id = self._made_up_id = new_id()

    @property
    def storage(self) -> Storage | None:
        """Where the session is saved; None keeps it in this object only.

        Another storage may be set at any time (a move from SQLite to PostgreSQL, say, or
        from none to one): the session goes with it. The next save writes the whole session
        as this object has it into the new storage when that one does not hold it yet.
        When it does (copied there beforehand by ``savegame copy``, or a storage the session
        was moved from and is now moved back to), the save adds the runs this object has
        and it lacks, and writes this object's state and name over it. The storage set
        before is left as it was. A storage of the same store as the one before (equal
        :meth:`~savegame.storage.base.Storage.store_names`: a new object opened on the same
        table, folder or prefix) is no move: a session deleted there meanwhile (an erasure)
        starts afresh, and is never written back.

        Raises:
            TypeError: when set to a URL (a string) rather than a storage.
            ValueError: when set to a storage in another mode than this object's.
        """
        return self._storage

    @storage.setter
    def storage(self, storage: Storage | None) -> None:
        if isinstance(storage, str):
            raise TypeError(
                f"storage={storage!r} is a URL, not a storage: pass "
                f"savegame.open_storage({storage!r}, mode={self.mode!r})"
            )
        if storage is not None and storage.mode != self.mode:
            raise ValueError(
                f"{type(self).__name__} saves {self.mode!r} sessions; this storage is in mode "
                f"{storage.mode!r}: open it with mode={self.mode!r}"
            )
        self._storage = storage

    # -- the session ----------------------------------------------------------------------

    def new_session(self) -> str:
        """Starts a new, empty session (saved with its first run) and returns its id."""
        self._leaving()
        self.session_id = new_id()
        self._reset()
        return self.session_id

    def load_session(self, session_id: str | None = None) -> bool:
        """Loads ``session_id`` (default: the current one) from the store.

        Returns:
            True when the session was stored and is now loaded; False when there is no such
            session yet, which leaves an empty session with that id, but for the current
            session carried from another storage (see :attr:`storage`): this object keeps
            it, to save it into this storage.

        Raises:
            SessionOwnerError: when the session belongs to another user.
            CorruptSessionError: when a field of the stored session is of another shape.
            StorageError: when the store cannot be read.
        """
        target = self._named(session_id)
        switching = target != self.session_id
        stored = self.storage.read(target) if self.storage is not None else None
        if stored is not None:
            self._check_owner(stored, switching)
        carried = self._stored is not None and not _same_store(self._stored_from, self.storage)
        # Switch only once the read succeeded: a failed load leaves the current session.
        if switching or (stored is None and self.storage is not None and not carried):
            # Another session, or this one deleted from the store: start it empty.
            if switching:
                self._leaving()
            self.session_id = target
            self._reset()
        if stored is None:
            return self.storage is None and self._stored is not None
        self._restore(stored, loading=True)
        return True

    def _named(self, session_id: str | None) -> str:
        """The session ``session_id`` names: the current one when None.

        Raises:
            InvalidIdentifierError: when it is an id no store holds (``""``, as an unset
                variable gives), rather than taken for the current session.
        """
        return self.session_id if session_id is None else check_id(session_id)

    def _check_owner(self, stored: Session, switching: bool = False) -> None:
        """Raises SessionOwnerError when ``stored`` belongs to another user than the current
        session's, or, when ``switching`` to it from another session, than the user this
        object was made with (a user taken from the session before was that session's)."""
        user_id = self._owner_to_check(switching)
        owner = getattr(stored, "user_id", None)
        if user_id is not None and owner is not None and owner != user_id:
            raise SessionOwnerError(
                f"session {stored.session_id!r} belongs to another user than {user_id!r}"
            )

    def _owner_to_check(self, switching: bool) -> str | None:
        """The user a stored session must belong to (see :meth:`_check_owner`); None: any."""
        return self._initial_user if switching else self.user_id

    def _check_stored_owner(self, session_id: str) -> Session | None:
        """The stored session ``session_id`` (None when there is none), once checked to
        belong to this object's user, as :meth:`load_session` checks it.

        Raises:
            SessionOwnerError: when it belongs to another user.
        """
        stored = self.storage.read(session_id) if self.storage is not None else None
        if stored is not None:
            self._check_owner(stored, switching=session_id != self.session_id)
        return stored

    def rename_session(self, name: str) -> None:
        """Names the current session and saves the name.

        The name is kept only once saved: whatever stops the save leaves the old one.

        Raises:
            TypeError: when ``name`` is not a str (``""`` clears the name); nothing is saved.
            SessionOwnerError: when the session id names another user's session.
            StorageError: when the name could not be saved.
        """
        if not isinstance(name, str):
            raise TypeError(f"a session's name must be a str, not {type(name).__name__}")
        before, self.session_name = self.session_name, name
        self._renaming = True
        try:
            self._save(None)
        except BaseException:
            self.session_name = before
            raise
        finally:
            self._renaming = False

    def delete_session(self, session_id: str | None = None) -> bool:
        """Deletes a stored session (default: the current one, which then starts afresh).

        Returns:
            Whether there was such a session.

        Raises:
            SessionOwnerError: when the session belongs to another user (as for
                :meth:`load_session`); nothing is deleted.
            CorruptSessionError: when there is a user to check the session's owner against
                and the session cannot be read; nothing is deleted.
            InvalidIdentifierError: when ``session_id`` is one no store holds (``""``, as an
                unset variable gives); nothing is deleted, the current session neither.
            StorageError: when the store could not be reached.
        """
        session_id = self._named(session_id)
        if self._owner_to_check(session_id != self.session_id) is not None:
            # Read only to check the owner: a session that cannot be read is deleted all
            # the same when there is no user to check it against.
            self._check_stored_owner(session_id)
        if session_id == self.session_id:
            self._leaving()  # before the delete, which what it saves would undo
        deleted = self.storage.delete_session(session_id) if self.storage is not None else False
        if session_id == self.session_id:
            self.new_session()
        return deleted

    def get_session(self) -> Session | None:
        """The session as it is stored now (None before its first save): a copy of the
        caller's, as a storage's read gives, also without a storage, where changing the
        session this object keeps would change what it saves next."""
        if self.storage is None:
            return copy.deepcopy(self._stored)
        return self.storage.read(self.session_id)

    def _current_runs(self) -> list[Run]:
        """The session's runs as the store has them now, with those another process saved
        since this object last read or saved the session: what a run's history is made of.

        A session carried from another storage (see :attr:`storage`) and not in this one
        yet has this object's runs, and one this storage holds an older copy of has the
        runs of that copy and then those of this object's that it lacks; one its own store
        held and no longer does (deleted elsewhere, an erasure) has none, as its next save
        starts it afresh.

        Raises:
            SessionOwnerError: when the stored session belongs to another user.
            CorruptSessionError: when a field of the stored session is of another shape.
            StorageError: when the store cannot be read.
        """
        if self.storage is None:
            return self.runs
        stored = self.storage.read(self.session_id)
        carried = self._stored is not None and not _same_store(self._stored_from, self.storage)
        if stored is None:
            return self.runs if carried else []
        self._check_owner(stored)
        runs = list(get_path(self._fields(stored), self.spec.runs_path) or [])
        if carried:
            # An older copy of this object's session: its next save adds the runs it lacks.
            have = {r.get("run_id") for r in runs}
            runs += [
                r for r in self.runs if r.get("run_id") is not None and r["run_id"] not in have
            ]
        return runs

    # -- saving ---------------------------------------------------------------------------

    def _check_storable(self, message: str) -> None:
        """Checks, before a run calls a model, that its save can store what this object
        writes of its own: ``message``, the ``session_state``, the session's name,
        ``extra_data`` and the ``*_data`` field. Found only by the save, such a value would
        fail the run after the model had answered (and, in a team, after the member had
        saved its turn in its own session, which the team's runs would then never record).

        Raises:
            TypeError: when ``message`` is not a str.
            SerializationError: naming the first value that cannot be stored (a set in the
                state, a ``session_state`` that is not a dict); nothing is sent or saved.
        """
        if not isinstance(message, str):
            raise TypeError(f"the message must be a str, not {type(message).__name__}")
        _check_state_is_dict(self.session_state)
        for path, value, level in (
            ("the message", message, 1),
            ("$['session_data']['session_state']", self.session_state, 3),
            ("$['session_data']['session_name']", self.session_name, 3),
            ("$['extra_data']", self.extra_data, 2),
            (f"$['{self.data_field}']", self._entity_data(), 2),
        ):
            dumps(*encode_text(value, path, level))

    def _save(self, run: Run | None, replace: bool = False, keep_state: bool = False) -> Session:
        """Adds ``run`` (or replaces the stored run with its ``run_id``) and saves.

        With ``keep_state``, the stored ``session_state`` is written back as it is, without
        this object's changes (which are then dropped from it, as from every save's state):
        a failed run whose state cannot be stored is recorded all the same.

        Raises:
            StorageError: when the store refused the write; this object is left as it was.
        """

        # A session this object had from another store (or from none) is carried into this
        # one, which does not hold it yet; a session its store held and no longer does
        # (deleted elsewhere, an erasure) starts afresh, also through another storage
        # object of that store.
        carried = None if _same_store(self._stored_from, self.storage) else self._stored

        def merge(current: Session | None) -> Session:
            if current is None and carried is not None:
                return self._merged(copy.deepcopy(carried), run, replace, keep_state)
            return self._merged(current, run, replace, keep_state, carried)

        if self.storage is None:
            stored = merge(copy.deepcopy(self._stored))
        else:
            # A session read from the store is a new copy each time: merged in place.
            stored = self.storage.update(self.session_id, merge)
        self._restore(stored)
        return stored

    def _merged(
        self,
        current: Session | None,
        run: Run | None,
        replace: bool,
        keep_state: bool = False,
        carried: Session | None = None,
    ) -> Session:
        """The session to store: what is stored now, with this keeper's changes over it.

        With ``carried``, the session as this object last saved or loaded it in another
        store, ``current`` is an older copy of it (one it was moved from, or one copied
        there): the runs of ``carried`` that ``current`` lacks (by ``run_id``) are added,
        and the state and name are this object's, where the changes since the last save
        alone would put back the older copy's.

        ``current`` is taken apart and built on, so it must be a copy of this save's own:
        copying a long conversation again would cost more than the rest of the save. It
        may be called more than once per save (after a conflict, with a new copy), so it
        changes nothing else.
        """
        if current is not None:
            self._check_owner(current)
        data = self._fields(current) if current is not None else {}
        data["session_id"] = self.session_id
        runs = list(get_path(data, self.spec.runs_path) or [])
        session_data = dict(data.get("session_data") or {})
        metrics = dict(session_data.get("metrics") or {})
        state = dict(session_data.get("session_state") or {})
        base_state, base_name, base_extra = self._base_state, self._base_name, self._base_extra
        if carried is not None and current is not None:
            have = {r.get("run_id") for r in runs}
            for theirs in get_path(self._fields(carried), self.spec.runs_path) or []:
                if theirs.get("run_id") is not None and theirs.get("run_id") not in have:
                    _add_run(runs, metrics, copy.deepcopy(theirs))
            base_state, base_name = state, session_data.get("session_name")
            base_extra = data.get("extra_data")
        if run is not None:
            at = _index(runs, run["run_id"]) if replace else None
            if at is None:
                _add_run(runs, metrics, run)
            else:
                runs[at] = self._replacing(runs[at], run)
        set_path(data, self.spec.runs_path, runs)
        changed_name = self._renaming or self.session_name != base_name
        session_data.update(
            session_name=self.session_name if changed_name else session_data.get("session_name"),
            session_state=state if keep_state else self._state_to_store(state, base_state),
            metrics=metrics,
        )
        data["session_data"] = session_data
        data["user_id"] = self.user_id or data.get("user_id")
        data[self.spec.entity_field] = self.entity_id or data.get(self.spec.entity_field)
        # Keys other code keeps there (the original's instructions, an application's own)
        # stay; those this object describes itself by are its own.
        data[self.data_field] = {**(data.get(self.data_field) or {}), **self._entity_data()}
        data["extra_data"] = self._extra_to_store(data.get("extra_data"), base_extra)
        self._extend(data, run)
        session = self.spec.session_class.from_dict(data)
        assert session is not None
        return session

    def _restore(self, stored: Session, loading: bool = False) -> None:
        """Takes the stored session as this keeper's state.

        When ``loading``, keys of the initial ``session_state`` that the stored state lacks
        are added; after a save the stored state is exactly what was saved. The state is
        refilled in place, not replaced, and keeps this object's values that the store holds
        as they are: a reference to ``session_state``, or to a value in it, taken before a
        run or a step (by the caller, or inside a workflow's ``run``) goes on seeing, and
        changing, the state that the next save writes.
        """
        data = self._fields(stored)
        self._stored = stored
        self._stored_from = self.storage
        self.version = getattr(stored, "version", None)
        self.runs = list(get_path(data, self.spec.runs_path) or [])
        session_data = data.get("session_data") or {}
        stored_name = session_data.get("session_name")
        if stored_name or not loading or self.session_name == self._base_name:
            # The stored name is the one this object keeps, an empty one (cleared by another
            # process) too; a session loaded without one keeps a name given to this object
            # since it last read or saved the session, which its next save writes.
            self.session_name = stored_name
        state = copy.deepcopy(self._initial_state) if loading else {}
        state.update(session_data.get("session_state") or {})
        if isinstance(self.session_state, dict):
            # This object's own values where the store holds them as they are: a reference
            # taken to one (a list a run appends to across its steps) goes on changing it.
            kept = {
                key: value
                for key, value in self.session_state.items()
                if key in state and not _changed(state[key], value)
            }
            self.session_state.clear()
            self.session_state.update(state)
            self.session_state.update(kept)
        else:
            self.session_state = state
        self._base_state = copy.deepcopy(session_data.get("session_state") or {})
        self._base_name = session_data.get("session_name")
        self.metrics = dict(session_data.get("metrics") or {})
        self.user_id = self.user_id or data.get("user_id")
        stored_entity = data.get(self.spec.entity_field)
        if loading and self.entity_id_made:
            # The id of another session loaded before is not this one's: saved, it would
            # take the session from the agent, team or workflow it is listed under.
            self.entity_id = stored_entity or self._made_up_id or self.entity_id
        else:
            self.entity_id = self.entity_id or stored_entity
        self._restore_extra(data.get("extra_data"), loading)
        self._restored(data)

    def _fields(self, stored: Session) -> dict[str, Any]:
        """The fields of a stored session, once those this object works on are of the shape
        it needs: the runs a list of objects, ``session_data``, its ``session_state`` and
        ``metrics``, and the ``*_data`` field objects (dicts), each value of ``metrics`` a
        number, to which a save adds the run's. A store holds any JSON there, which a
        session written by other code (or imported from it) may use otherwise; found only
        as a run is saved, such a value would fail the run after its model call.

        Raises:
            CorruptSessionError: naming the session and the first field of another shape.
        """
        data = stored.to_dict()
        runs_path = self.spec.runs_path
        shapes = {
            **{runs_path[:depth]: dict for depth in range(1, len(runs_path))},
            runs_path: list,
            ("session_data",): dict,
            ("session_data", "session_state"): dict,
            ("session_data", "metrics"): dict,
            (self.data_field,): dict,
        }
        for path, kind in shapes.items():
            value = get_path(data, path)
            if value is not None and not isinstance(value, kind):
                raise _misshapen(stored, ".".join(path), value, kind)
        for at, run in enumerate(get_path(data, runs_path) or []):
            if not isinstance(run, dict):
                raise _misshapen(stored, f"{'.'.join(runs_path)}[{at}]", run, dict)
        for key, value in (get_path(data, ("session_data", "metrics")) or {}).items():
            if not isinstance(value, (int, float)):
                raise _misshapen(stored, f"session_data.metrics.{key}", value, "number")
        return data

    def _reset(self) -> None:
        """Starts an empty session: nothing of the one before is carried into it but what
        this object was made with."""
        self._stored = None
        self.version = None
        self.user_id = self._initial_user
        self.runs = []
        self.session_name = None
        self.session_state = copy.deepcopy(self._initial_state)
        self._base_state = {}
        self._base_name = None
        self.extra_data = copy.deepcopy(self._initial_extra)
        self._base_extra = None
        self.metrics = {}
        for name, value in self._made_with.items():
            setattr(self, name, value)

    # -- hooks ----------------------------------------------------------------------------

    def _leaving(self) -> None:
        """Called before this object leaves its session for another one (or deletes it),
        with the session still current: what is under way in it ends there."""

    def _state_to_store(
        self, stored: dict[str, Any], base: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The ``session_state`` a save writes: the ``stored`` one with this object's changes
        since it last read or saved it (or since ``base``), key by key. A key another
        process saved meanwhile and this object left alone is kept, where writing this
        object's whole state would put back what it had read, erasing the other's change
        without a word."""
        _check_state_is_dict(self.session_state)
        base = self._base_state if base is None else base
        return _merge_changes(stored, base, self.session_state, self._stored_wins)

    def _extra_to_store(self, stored: Any, base: Any) -> Any:
        """The ``extra_data`` a save writes: the ``stored`` one with this object's changes
        since ``base`` (as it last read or saved it), key by key, as for the state; all of
        this object's when one of them is not a dict (``extra_data`` is any JSON there). None
        on this object writes none: the stored one stays."""
        mine = self.extra_data
        if mine is None:
            return stored
        stored_keys = {} if stored is None else stored
        base_keys = {} if base is None else base
        if all(isinstance(value, dict) for value in (mine, stored_keys, base_keys)):
            return _merge_changes(stored_keys, base_keys, mine)
        return copy.deepcopy(mine) if _changed(base, mine) else stored

    def _restore_extra(self, stored: Any, loading: bool) -> None:
        """Takes the stored ``extra_data`` as this object's (refilled in place, as the state
        is), but when ``loading`` a session into an object whose ``extra_data`` is its own
        (made with it, or changed since it last read or saved the session), which its next
        save writes over it. One it took from the store before is no change of its own:
        kept, it would write back what another process changed since."""
        mine = self.extra_data
        own = loading and mine is not None and _changed(self._base_extra, mine)
        self._base_extra = copy.deepcopy(stored)
        if own:
            return
        if isinstance(self.extra_data, dict) and isinstance(stored, dict):
            self.extra_data.clear()
            self.extra_data.update(copy.deepcopy(stored))
        else:
            self.extra_data = copy.deepcopy(stored)

    def _stored_wins(self, key: str) -> bool:
        """Whether ``key``, added to the state by this object and stored meanwhile by
        another process, keeps the stored value (the first writer's): when this object
        holds it as the ``session_state`` it was made with gives it, which a stored state
        wins over as at a load (two processes starting one session, each with the state a
        new session starts with, keep what the first saved); otherwise no, the last writer
        wins."""
        initial = self._initial_state
        return key in initial and not _changed(initial[key], self.session_state[key])

    def _replacing(self, stored: Run, run: Run) -> Run:
        """The run a save stores in place of the ``stored`` run with the same id: ``run``."""
        return run

    def _entity_data(self) -> dict[str, Any]:
        """What is stored in the session's ``*_data`` field about the agent, team or workflow."""
        return {}

    def _extend(self, data: dict[str, Any], run: Run | None) -> None:
        """Adds what a subclass stores beyond the shared fields to the session's dict."""

    def _restored(self, data: dict[str, Any]) -> None:
        """Takes what a subclass stores beyond the shared fields back from a stored session."""


def list_messages(data: dict[str, Any]) -> None:
    """Sets ``memory["messages"]``, the whole conversation, to the messages of the runs.

    The list holds the runs' own message objects, so that the SQL and Redis backends store
    it as a mark rather than a second copy of the conversation that every save would
    rewrite (:func:`savegame.storage.session.fold_messages`). A list written by the
    original is replaced by the messages of the runs.
    """
    memory = data.get("memory")
    memory = dict(memory) if isinstance(memory, dict) else {}
    runs = memory.get("runs")
    memory["messages"] = messages_of(runs if isinstance(runs, list) else [])
    data["memory"] = memory


def _check_state_is_dict(state: object) -> None:
    """Raises SerializationError when ``state``, a ``session_state`` that code replaced,
    is not a dict: a session's state is stored as an object of keys."""
    if not isinstance(state, dict):
        raise SerializationError(
            f"$['session_data']['session_state']: session_state must be a dict, not "
            f"{type(state).__name__}: a session's state is stored as an object of keys"
        )


def _merge_changes(
    stored: dict[str, Any],
    base: dict[str, Any],
    mine: dict[str, Any],
    stored_wins: Callable[[str], bool] = lambda key: False,
) -> dict[str, Any]:
    """``stored`` with the changes ``mine`` made to ``base`` (keys added, changed or removed),
    key by key: a key changed in ``stored`` since ``base`` and left alone in ``mine`` keeps
    the stored value. A key ``mine`` added that ``stored`` has too is ``mine``'s unless
    ``stored_wins`` says otherwise."""
    merged = copy.deepcopy(stored)
    for key in base.keys() - mine.keys():
        merged.pop(key, None)
    for key, value in mine.items():
        if key not in base and key in stored and stored_wins(key):
            continue
        if key not in base or _changed(base[key], value):
            merged[key] = copy.deepcopy(value)
    return merged


def _same_store(before: Storage | None, now: Storage | None) -> bool:
    """Whether two storages (None: none) use the same store (see
    :meth:`~savegame.storage.base.Storage.store_names`)."""
    if before is None or now is None or before is now:
        return before is now
    return type(before) is type(now) and before.store_names() == now.store_names()


def _changed(before: Any, after: Any) -> bool:
    """Whether a value of the state changed, exactly (``==`` calls 1, 1.0 and True equal)."""
    old, new = pickle_plain(before), pickle_plain(after)
    return old is None or old != new


def _misshapen(stored: Session, field: str, value: Any, kind: type | str) -> CorruptSessionError:
    """The error for a stored session whose ``field`` holds ``value`` where a ``kind`` (a
    type, or what it is called) belongs."""
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    wanted = kind if isinstance(kind, str) else kind.__name__
    return CorruptSessionError(
        f"stored session {stored.session_id!r} cannot be used: its {field} should be a "
        f"{wanted}, not {type(value).__name__} {shown}"
    )


def _add_run(runs: list[Run], metrics: dict[str, Any], run: Run) -> None:
    """Appends ``run`` to ``runs``, adding it to the session's summed ``metrics``."""
    runs.append(run)
    metrics["runs"] = metrics.get("runs", 0) + 1
    for key, value in (run.get("metrics") or {}).items():
        if isinstance(value, (int, float)):
            metrics[key] = metrics.get(key, 0) + value


def _index(runs: list[Run], run_id: str) -> int | None:
    for i, run in enumerate(runs):
        if run.get("run_id") == run_id:
            return i
    return None
