"""The storage contract, written once over a few primitives that each backend implements.

The public methods (``read``, ``upsert``, ``update``, the listings, ``delete_session``,
``delete_user``, ``purge_expired``) check their input, apply the rules that hold for every
backend, and call the primitives:

===========================  ==============================================================
``_read(session_id)``        the stored record, or None
``_write(draft, expected,    atomically: find the stored header, let :meth:`Storage._stamp`
now, preserve)``             check the version and stamp ``draft.record``, write it, return
                             the record as stored (:meth:`Draft.whole`)
``_list(user, entity,        ids newest ``created_at`` first (ties by id); ``now=None``
limit, now)``                includes expired sessions
``_read_many(ids,            records for ids (default: one ``_read`` each); ``remember``:
remember)``                  whether the storage may remember them (see ``_read_sessions``)
``_delete(session_id,        True when something was removed (with ``owner``: only a
owner, version)``            session of that user; with ``version``: only a session still
                             at that version), in one atomic step
``_purge_expired(now)``      removes expired sessions, returns how many
===========================  ==============================================================

A *record* is a session's dict as the storage keeps it: the encoded fields of the session
(``version`` included) plus ``expires_at`` (unix seconds or None). A *draft* is a session
checked and encoded for writing; a backend that keeps one row or entry per run sets
:attr:`Storage._run_codec`, and its drafts carry the runs apart, encoded only where they
changed since the storage last saw the session (:mod:`savegame.storage.known`). A backend
that keeps a record as JSON text writes it with :func:`~savegame.storage.codec.object_text`
(``draft.texts`` holds the texts already made) and reads it with
:func:`~savegame.storage.codec.loads`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import marshal
import math
import os
import pickle
import random
import re
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

from savegame.errors import (
    BackendUnavailableError,
    ConflictError,
    CorruptSessionError,
    InvalidIdentifierError,
    SerializationError,
)
from savegame.storage.codec import (
    check_id,
    check_text_field,
    encode,
    encode_text,
    with_article,
)
from savegame.storage.session import (
    MESSAGES_OF_RUNS,
    MODES,
    Mode,
    ModeSpec,
    Session,
    beside_runs,
    fold_messages,
    mode_spec,
    modes_of,
    split_runs,
    unfold_messages,
    with_runs,
)

if TYPE_CHECKING:
    from savegame.storage.known import RunEncoder, Runs

Record = dict[str, Any]

_SCALARS = frozenset({str, int, bool, type(None)})
"""Field values stored as they are; anything else is checked and encoded."""

STAMPED = frozenset({"version", "created_at", "updated_at", "expires_at"})
"""The fields :meth:`Storage._stamp` sets: a text made of them before stamping is stale."""

LAST_TIME = 253402300799
"""The largest ``created_at`` or ``updated_at`` savegame stores: 9999-12-31 23:59:59 UTC,
in unix seconds. A time in milliseconds (or any later) is refused rather than stored."""

MAX_EXPIRE = 10**10
"""The largest ``expire`` (about 317 years): every ``expires_at`` then fits each backend's
integers, Redis's ``EXPIRE`` and the doubles of its sorted sets exactly."""

MAX_VERSION = 2**53 - 1
"""The largest version: exact as a double, which Redis's scripts compute with."""


@dataclass(frozen=True)
class Still:
    """What a session must still be for a removal of many (:meth:`Storage._delete_many`)
    to take it: ``owner``'s (when set), and at the version ``versions`` gives for its id
    (when set; one stored without a version being at 1)."""

    owner: str | None = None
    versions: dict[str, int] | None = None


USER_BATCH = 500
"""Sessions :meth:`Storage.delete_user` and a purge remove in one step
(:meth:`Storage._delete_many`): those of a step done are reported removed before the next
begins."""

MAX_LIMIT = 2**31 - 1
"""The largest listing limit passed on to a backend (a 32-bit integer in some databases);
a larger one asks for more sessions than a list in memory could hold, and is taken as None."""

_WHOLE = {
    "created_at": LAST_TIME,
    "updated_at": LAST_TIME,
    "expires_at": LAST_TIME + MAX_EXPIRE,
    "version": MAX_VERSION,
}


def _check_expected(expected_version: int | None) -> None:
    """Refuses an ``expected_version`` (of :meth:`Storage.upsert` or :meth:`Storage.restore`)
    that no stored version could equal: a bool, a float, a string, a negative number.

    Raises:
        TypeError: naming the value.
    """
    if expected_version is not None and (type(expected_version) is not int or expected_version < 0):
        raise TypeError(
            f"expected_version must be None or an int of 0 or more, not {expected_version!r}"
        )


def whole_number_problem(record: Record, fields: Iterable[str] = _WHOLE) -> str | None:
    """What is wrong with the record's ``created_at``, ``updated_at``, ``expires_at`` or
    ``version`` (those of ``fields`` present): each is None or an int (not a bool) from 0
    to its bound. None when nothing is."""
    for field in fields:
        value = record.get(field)
        if value is not None and (type(value) is not int or not 0 <= value <= _WHOLE[field]):
            kind = "version" if field == "version" else "time in unix seconds"
            return (
                f"{field} must be None or a whole number (int) from 0 to {_WHOLE[field]}, "
                f"the {kind}; not {value!r}"
            )
    return None


def stored_problem(record: Record, spec: ModeSpec) -> str | None:
    """What keeps the stored session ``record`` of the mode ``spec`` from being read: a
    field kept as plain text (``user_id``, the entity's id, ``team_session_id``…) that is
    not a string or None, which listings compare with the ids asked for and a save would
    refuse, or what :func:`whole_number_problem` finds. None when nothing does."""
    for field in spec.plain_fields:
        value = record.get(field)
        if value is not None and not isinstance(value, str):
            return f"{field} must be a string or null, not {value!r}"
    return whole_number_problem(record)


def whole_seconds(record: Record, fields: Iterable[str] = ("created_at", "updated_at")) -> None:
    """Cuts the finite float times among ``fields`` to whole seconds, in place: an earlier
    savegame stored ``time.time()`` as it came, and such a session must stay readable and
    savable again."""
    for field in fields:
        value = record.get(field)
        if type(value) is float and math.isfinite(value):
            record[field] = int(value)


def check_stored(record: Record, spec: ModeSpec, where: str) -> None:
    """Refuses a record read from the store that savegame cannot have written (an id that
    is not text, a version or time that is text or negative: :func:`stored_problem`), which
    a hand changed. Float times an earlier savegame stored are first cut to whole seconds,
    in place (:func:`whole_seconds`).

    Args:
        record: the stored record, with its ``session_id``.
        spec: the storage's mode.
        where: where the store keeps the session, for the message (``"in table 't'"``).

    Raises:
        CorruptSessionError: naming the session and the field.
    """
    whole_seconds(record, ("created_at", "updated_at", "expires_at"))
    problem = stored_problem(record, spec)
    if problem is not None:
        raise CorruptSessionError(
            f"session {record.get('session_id')!r} {where} cannot be read ({problem}): it "
            "was changed outside savegame"
        )


class Header(NamedTuple):
    """The part of a stored session a write needs to see before it writes."""

    version: int
    created_at: int | None
    expires_at: int | None

    @classmethod
    def of(cls, record: Record) -> Header:
        """The header of a stored record (a record from before versions counts as version 1)."""
        return cls(record.get("version") or 1, record.get("created_at"), record.get("expires_at"))


class Stamp(NamedTuple):
    """What tells how old a stored session is, read from its header alone
    (:meth:`Storage._read_stamps`): a purge judges sessions by it."""

    session_id: str
    created_at: int | None
    updated_at: int | None
    version: int
    """The stored version (1 for a session stored without one)."""


class Draft(NamedTuple):
    """A session checked and encoded for writing, made by :meth:`Storage._prepare`."""

    record: Record
    """The session's fields, encoded, without ``version``; without the runs when
    :attr:`runs` is set."""
    texts: dict[str, str]
    """The compact JSON text (:func:`~savegame.storage.codec.encode_text`) of each field
    that is not a plain string, number or None, where the backend asked for texts."""
    runs: Runs | None
    """The runs, for backends with a :attr:`Storage._run_codec` whose sessions keep a list
    of runs; None otherwise."""
    runs_path: tuple[str, ...]

    @property
    def session_id(self) -> str:
        """The id of the session."""
        session_id: str = self.record["session_id"]
        return session_id

    def whole(self, stamped: Record) -> Record:
        """``stamped`` (made from :attr:`record` by :meth:`Storage._stamp`) with its runs."""
        if self.runs is None:
            return stamped
        record = with_runs(stamped, self.runs_path, self.runs.items)
        unfold_messages(record, self.runs_path, _same)
        return record


@functools.lru_cache(maxsize=256)
def _json_path(keys: tuple[str, ...]) -> str:
    """Where ``keys`` lead in a session, as error messages name it: ``$['memory']['runs']``
    (the fields of sessions are few: each path is made once)."""
    return "$" + "".join(f"[{key!r}]" for key in keys)


def _same(value: Any) -> Any:
    return value


def _copy(value: Any) -> Any:
    """A deep copy of data a read decoded (plain JSON types), through marshal: quicker than
    pickle (by about a third for a long conversation's messages), and as exact for those
    types. Its version 4 keeps an object that stands twice in ``value`` one object, as
    pickle's memo does; pickle copies what marshal cannot write."""
    try:
        return marshal.loads(marshal.dumps(value, 4))
    except ValueError:
        return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))


CONNECT_RETRIES = 3
"""Times a server backend tries to connect again, after a short, growing pause, when the
server that was there a moment ago cannot be reached (it may be restarting)."""


T = TypeVar("T")


def once_more_on(
    kind: type[BaseException],
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """A decorator: the method, run once more when it raised ``kind``, which a backend
    raises where a call met its store changed behind its back in a way the second run
    sees and deals with (a SQL table dropped: it is then missing; a folder's index found
    damaged: it was removed, and is made anew). The first run must have changed nothing."""

    def wrap(method: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(method)
        def again(self: Any, *args: Any, **kwargs: Any) -> T:
            try:
                return method(self, *args, **kwargs)
            except kind:
                return method(self, *args, **kwargs)

        return again

    return wrap


def with_retries(attempt: Callable[[], T], retryable: Callable[[Exception], bool]) -> T:
    """What ``attempt()`` returns, trying it again up to :data:`CONNECT_RETRIES` times
    while it fails with an error ``retryable`` accepts; the last error is raised.

    Each pause is 50-100 ms after the first failure, doubling (100-200, then 200-400 ms):
    random within each range, so that clients that failed together do not try again together.
    """
    failures = 0
    while True:
        try:
            return attempt()
        except Exception as exc:
            failures += 1
            if failures > CONNECT_RETRIES or not retryable(exc):
                raise
        pause = min(0.5, 0.05 * 2**failures)
        time.sleep(pause * (1 + random.random()) / 2)


MAX_WAIT = 31_536_000
"""The longest wait for a server a storage takes, in seconds (a year; PyMySQL's limit)."""


WHOLE_NUMBER = re.compile(r"-?[0-9]+")
"""How a whole number is written in a URL: ASCII digits, maybe a minus sign."""

_NUMBER_TEXT = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
"""How a number of 0 or more is written in a URL: ASCII digits, maybe a decimal point and an
exponent."""


def whole_number(text: str) -> int | None:
    """The whole number ``text`` (a URL's) writes as :data:`WHOLE_NUMBER` says; None for
    other text, which ``int()`` may read too ("1_000", " 5", digits of other scripts), or for
    more digits than ``int()`` reads (``sys.get_int_max_str_digits()``)."""
    if not WHOLE_NUMBER.fullmatch(text):
        return None
    try:
        return int(text)
    except ValueError:
        return None


def number_text(text: str, whole: bool = False) -> float:
    """The number that ``text`` (a URL's option) writes, a whole one where ``whole`` (see
    :func:`whole_number`); NaN for anything else. ``float()`` would also read "1_0" (as 10),
    " 1" and digits of other scripts; too many digits give an infinity."""
    if whole:
        number = whole_number(text)
        return math.nan if number is None else number
    return float(text) if _NUMBER_TEXT.fullmatch(text) else math.nan


def check_seconds(value: object, what: str, *, whole: bool = False) -> float:
    """``value``, the seconds a storage waits for a server (``what`` names it in messages).

    Checked when the storage is made: the drivers find a bad one at the first call, with a
    ``TypeError`` or a ``ValueError`` of their own, or take 0 for "wait for ever".

    Args:
        value: a number, or the text of one (a URL's query option).
        what: the argument's name, for messages.
        whole: whether only whole seconds are taken (libpq's ``connect_timeout``).

    Raises:
        InvalidIdentifierError: unless ``value`` is a number above 0 and at most
            :data:`MAX_WAIT` (a whole one when ``whole``).
    """
    number: float = math.nan
    if isinstance(value, str):
        number = number_text(value, whole)
    elif type(value) is int or (type(value) is float and not whole):
        number = value
    if not 0 < number <= MAX_WAIT:
        kind = "whole number" if whole else "number"
        raise InvalidIdentifierError(
            f"{what} must be a {kind} of seconds above 0 and at most {MAX_WAIT}, not {value!r}"
        )
    return number


def path_text(value: str | os.PathLike[str], what: str) -> str:
    """The text of ``value``, a file or folder named by ``what`` (for messages).

    Raises:
        InvalidIdentifierError: for what is not a ``str`` or a ``str`` path (None, a number,
            bytes), which :mod:`os` would refuse with a bare ``TypeError``.
    """
    text = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    if not isinstance(text, str):
        raise InvalidIdentifierError(f"{what} must be a str or a path, not {value!r}")
    return text


def local_path(value: str | os.PathLike[str], what: str) -> Path:
    """``value`` (a file or folder named by ``what``, for messages) as a path, a leading
    ``~`` or ``~user`` standing for that home folder.

    Raises:
        InvalidIdentifierError: for what is not a path (see :func:`path_text`), a path
            holding a NUL character, which no file system takes, or a ``~user`` of a user
            this machine does not know; checked here so that a storage is refused when it
            is made, not at its first call.
    """
    text = path_text(value, what)
    if "\0" in text:
        raise InvalidIdentifierError(f"{what} {text!r} holds a NUL character")
    try:
        return Path(text).expanduser()
    except RuntimeError:
        raise InvalidIdentifierError(
            f"{what} {text!r} starts with a home folder this machine does not know"
        ) from None


def check_update(session_id: str, fn: object, max_attempts: object) -> None:
    """Refuses the arguments of :meth:`Storage.update` that it could not use.

    Raises:
        InvalidIdentifierError: of a session id :func:`check_id` refuses, an ``fn`` that
            cannot be called, or a ``max_attempts`` that is not a whole number of at least 1.
    """
    check_id(session_id)
    if not callable(fn):
        raise InvalidIdentifierError(
            f"update needs fn, a function of the session read (or None) that returns the "
            f"session to write (or None), not {fn!r}"
        )
    if type(max_attempts) is not int or max_attempts < 1:
        raise InvalidIdentifierError(
            f"max_attempts must be an int of at least 1, not {max_attempts!r}"
        )


def unwritable(folder: str | os.PathLike[str]) -> str | None:
    """Why this process cannot write to ``folder`` ("it is on a read-only file system", or
    it lacks the permission); None when it can. Said beside a driver's or the system's words
    ("unable to open database file", "Read-only file system" of one file in it), which name
    neither the folder nor the cause."""
    if os.access(folder, os.W_OK):
        return None
    statvfs = getattr(os, "statvfs", None)
    with contextlib.suppress(OSError):
        if statvfs is not None and statvfs(folder).f_flag & os.ST_RDONLY:
            return "it is on a read-only file system"
    return "this process lacks the permission to write there"


def make_folder(path: Path) -> None:
    """Makes the folder ``path``, and the folders above it, when missing, and syncs the
    folder each one made is in: a write into a new folder that returns then survives a
    crash with the folder that holds it.

    Raises:
        BackendUnavailableError: naming the folder that could not be made (``path`` or one
            above it) and why.
    """
    missing = list(itertools.takewhile(lambda p: not p.is_dir(), (path, *path.parents)))
    try:
        path.mkdir(parents=True, exist_ok=True)
        for made in reversed(missing):
            sync_folder(made.parent)
    except FileExistsError as exc:
        # What the system says, "File exists", reads as if the folder were there.
        raise BackendUnavailableError(
            f"cannot make the folder {exc.filename or path}: a file of that name is there"
        ) from exc
    except OSError as exc:
        raise BackendUnavailableError(
            f"cannot make the folder {exc.filename or path}: {exc.strerror or exc}"
        ) from exc


def sync_folder(path: Path) -> None:
    """Makes the entries of the folder ``path`` durable (an fsync of the folder itself).

    Raises:
        OSError: when the folder cannot be opened or synced.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def kept_from_delete(record: Record, owner: str | None, version: int | None) -> bool:
    """Whether a ``_delete`` given ``owner`` and ``version`` (see :meth:`Storage._delete`)
    leaves the stored session ``record`` in place: it is another user's, or at another
    version (one stored without a version being at 1)."""
    return (owner is not None and record.get("user_id") != owner) or (
        version is not None and (record.get("version") or 1) != version
    )


def is_expired(expires_at: int | None, now: int) -> bool:
    """Whether a session with this expiry time is gone at ``now``."""
    return expires_at is not None and expires_at <= now


_MADE: weakref.WeakSet[Storage] = weakref.WeakSet()
"""Every storage of this process, for :func:`_after_fork`."""


class _Held(threading.local):
    """How many storage locks, connections or transactions this thread holds, and the
    actions kept for when it holds none (see :func:`after_held`)."""

    depth = 0
    kept: list[_Kept] | None = None


_HELD = _Held()


class _Holding:
    """Marks, around the part of a storage call that holds a lock, a connection or a
    transaction, that this thread is inside it: at the end of the outermost, the actions
    :func:`after_held` kept meanwhile are run."""

    __slots__ = ()

    def __enter__(self) -> None:
        _HELD.depth += 1

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        held = _HELD
        held.depth -= 1
        if held.kept and not held.depth:
            kept = held.kept
            while kept:
                kept.pop(0).ready = True  # run as it is dropped, here


HOLDING = _Holding()


class _Kept:
    """An action kept by :func:`after_held`, which runs as the object is dropped once
    ``ready``: an error of the action is reported as Python reports one of a finalizer
    (``Exception ignored in``, through ``sys.unraisablehook``), since no caller is there to
    be given it; from Python 3.11 a note on it says what the action was."""

    __slots__ = ("action", "ready", "what")

    def __init__(self, action: Callable[[], None], what: str) -> None:
        self.action = action
        self.what = what
        self.ready = False

    def __del__(self) -> None:
        if not self.ready:
            return
        try:
            self.action()
        except BaseException as exc:
            if hasattr(exc, "add_note"):
                exc.add_note(f"in {self.what}, made once a storage call had ended")
            raise


def after_held(action: Callable[[], None], what: str) -> bool:
    """Keeps ``action`` (``what`` it does, for the report of its error), and returns True,
    when this thread is inside a storage call that holds a lock, a connection or a
    transaction: ``action`` then runs, in this thread, once the outermost such call has
    ended, however it ended, and given its locks back. False when the thread holds none:
    the caller runs ``action`` itself.

    For the saves of finalizers (a run the garbage collector closes at any allocation,
    which may be in the middle of another save): made at once, such a save would wait for
    the lock its own thread holds, or write into the middle of that thread's write. A
    thread that never ends its call (a daemon thread the process's exit stops in it) never
    runs them: made by another thread, they would wait for the locks it holds."""
    held = _HELD
    if not held.depth:
        return False
    if held.kept is None:
        held.kept = []
    held.kept.append(_Kept(action, what))
    return True


CAPABILITIES: dict[str, str] = {
    "persistent": "a new storage object on the same location sees what an earlier one wrote",
    "processes": "several processes may use one store at once (it can be named by a URL)",
    "key_order": "dicts come back with their keys in the order they were written",
    "cache_bytes": (
        "the constructor takes cache_bytes=, how many bytes of recent sessions a storage "
        "may remember (0: none)"
    ),
}
"""What each capability a :class:`Storage` may declare in :attr:`Storage.capabilities`
promises."""


def _after_fork() -> None:
    """Runs in the child of every ``os.fork()``: see :meth:`Storage._forked`."""
    for storage in list(_MADE):
        storage._forked()
    _HELD.kept = None  # the parent's, not the child's to make


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class Storage(ABC):
    """Saves and loads the sessions of one mode.

    A storage object may be shared between threads. Sessions are values: what ``read``
    returns and what ``upsert`` was given belong to the caller, and changing them never
    changes the store.

    Args:
        mode: ``"agent"``, ``"team"``, ``"workflow"`` or ``"workflow_v2"``; decides the
            session class and the field ``entity_id`` filters on.
        expire: when set, a session expires this many seconds after its last write; an
            expired session is never returned, even before :meth:`purge_expired` removes it.
    """

    _run_codec: RunEncoder | None = None
    """Set by backends that keep one row or entry per run (see :class:`Draft`)."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"key_order"})
    """Optional behaviour this backend declares, among the names of :data:`CAPABILITIES`;
    the conformance suite tests what is declared and skips the rest, naming what was not."""

    def __init__(self, mode: Mode | None = "agent", expire: int | None = None) -> None:
        self._spec = mode_spec(mode)
        if expire is not None and (type(expire) is not int or not 0 < expire <= MAX_EXPIRE):
            raise InvalidIdentifierError(
                f"expire must be None (sessions never expire) or a whole number of seconds "
                f"from 1 to {MAX_EXPIRE}, not {expire!r}"
            )
        self.expire = expire
        _MADE.add(self)

    def _forked(self) -> None:
        """Called in a child just forked from the process that made this storage.

        Only the thread that forked goes on in the child: a lock that another thread held
        at that moment stays held for good, and a count of calls in progress never comes
        down. A backend makes such state anew here, so that the child's calls neither wait
        for ever nor act on what the parent was half-way through.
        """

    @property
    def mode(self) -> str:
        """The kind of sessions this storage holds."""
        return self._spec.mode

    @mode.setter
    def mode(self, value: Mode | None) -> None:
        self._spec = mode_spec(value)
        self._mode_changed()

    def _mode_changed(self) -> None:
        """Called when :attr:`mode` is set: a backend that keeps what it learnt of the store
        in the mode before (tables, the store's layout, sessions remembered) lets it go, so
        that the storage acts as one opened in the new mode."""

    @property
    def spec(self) -> ModeSpec:
        """The row of :data:`savegame.storage.session.MODES` for this storage's mode."""
        return self._spec

    # -- the contract ---------------------------------------------------------------------

    @abstractmethod
    def create(self) -> None:
        """Makes the table, folder or index this storage needs; does nothing if it is there."""

    def table_exists(self) -> bool:
        """Whether the table (or folder) exists; backends with neither always have one.

        A backend whose stores are made by their first write (or :meth:`create`) overrides
        it: a store never written is not there, and a read, listing or removal on it makes
        nothing."""
        return True

    @abstractmethod
    def drop(self) -> None:
        """Removes every session of this storage, and nothing that belongs to another."""

    def upgrade_schema(self) -> None:
        """Brings a table or layout written by an older version up to date, keeping every row.

        Backends whose layout has never changed have nothing to do.
        """

    def read(self, session_id: str, user_id: str | None = None) -> Session | None:
        """The stored session, or None when there is none (or it belongs to another user).

        Raises:
            InvalidIdentifierError: for a session or user id savegame cannot store (as the
                listings do for a user id).
            BackendUnavailableError: when the store cannot be reached; never None for that.
            CorruptSessionError: when the stored data cannot be decoded.
        """
        check_id(session_id)
        self._filters(user_id, None)
        record = self._read(session_id)
        if record is None or is_expired(record.get("expires_at"), _now()):
            return None
        if user_id is not None and record.get("user_id") != user_id:
            return None
        return self._session(record)

    def upsert(self, session: Session, *, expected_version: int | None = None) -> Session:
        """Stores ``session``, inserting it or replacing the stored one, and returns what is stored.

        ``created_at`` of a session already stored is kept (a new one keeps its own, or gets
        now); ``updated_at`` becomes now; ``version`` advances by one. When the call returns
        the session is durable.

        Args:
            session: a session of this storage's mode.
            expected_version: the version the caller read (0 for "not stored yet"); when the
                stored version differs, nothing is written and :class:`ConflictError` is
                raised. None writes unconditionally (last writer wins).

        Raises:
            SerializationError: for a value that cannot be stored, or a session of another
                mode's class; nothing is written.
            InvalidIdentifierError: for an id savegame cannot store.
            ConflictError: see ``expected_version``.
            CorruptSessionError: when the store keeps sessions of another mode (a table,
                or a folder, written in another mode), or the stored session of this id is
                of another mode; nothing is written.
            BackendUnavailableError: when the store cannot be reached or stays locked.
            TypeError: for an ``expected_version`` that is not None or a whole number of 0
                or more (a bool, a float, a string), which no stored version could equal.
        """
        _check_expected(expected_version)
        draft = self._prepare(session)
        return self._session(self._write(draft, expected_version, _now(), False))

    def restore(self, session: Session, *, expected_version: int | None = None) -> Session:
        """Stores ``session`` keeping its ``created_at``, ``updated_at`` and (at least) version.

        For moving sessions between stores (import, copy): the stored version is the larger
        of the session's and the one after what is stored, so versions never go back. A
        session without ``created_at`` keeps the stored one's, as :meth:`upsert` does (or is
        made now); one without ``updated_at`` is updated now. ``expected_version``: as for
        :meth:`upsert`, the stored version the caller saw (0: none stored), so that a session
        saved since is never written over.

        Raises:
            The same errors as :meth:`upsert`.
        """
        _check_expected(expected_version)
        draft = self._prepare(session)
        draft.record["version"] = getattr(session, "version", None)
        return self._session(self._write(draft, expected_version, _now(), True))

    def update(
        self,
        session_id: str,
        fn: Callable[[Any], Any],
        *,
        max_attempts: int = 50,
    ) -> Any:
        """Read-modify-write that never loses another writer's change.

        Reads the session (None when absent), calls ``fn`` with it and writes what ``fn``
        returns, stating the version it read. When another write came first, it waits a
        short, random, growing time and does it all again, up to ``max_attempts`` times.
        ``fn`` may therefore run more than once and should only compute. When ``fn`` returns
        None nothing is written and the session read is returned.

        Returns:
            The stored session (or what was read, when ``fn`` returned None).

        Raises:
            ConflictError: when every attempt met a conflict.
            SerializationError: when ``fn`` returns anything but None or a session of this
                storage's mode (a dict, say); nothing is written.
            InvalidIdentifierError: when ``fn`` returns a session with another id.
            InvalidIdentifierError: when ``max_attempts`` is not a whole number of at least 1,
                or ``fn`` cannot be called; nothing is read or written.
        """
        check_update(session_id, fn, max_attempts)
        conflict: ConflictError | None = None
        for attempt in range(max_attempts):
            current = self.read(session_id)
            expected = 0 if current is None else (getattr(current, "version", None) or 1)
            new = fn(current)
            if new is None:
                return current
            self._check_class(new)
            if new.session_id != session_id:
                raise InvalidIdentifierError(
                    f"update of {session_id!r} returned a session with id {new.session_id!r}"
                )
            try:
                return self.upsert(new, expected_version=expected)
            except ConflictError as exc:
                conflict = exc
                time.sleep(random.uniform(0, min(0.2, 0.001 * 2**attempt)))
        assert conflict is not None
        raise conflict

    def get_all_session_ids(
        self, user_id: str | None = None, entity_id: str | None = None
    ) -> list[str]:
        """Ids of the sessions that match, newest ``created_at`` first (ties by id)."""
        return self._list(*self._filters(user_id, entity_id), None, _now())

    def get_all_sessions(
        self, user_id: str | None = None, entity_id: str | None = None
    ) -> list[Session]:
        """The sessions that match, newest ``created_at`` first (ties by id)."""
        user_id, entity_id = self._filters(user_id, entity_id)
        return self._list_sessions(user_id, entity_id, None, _now())

    def read_many(self, session_ids: Iterable[str]) -> list[Session]:
        """The stored sessions among ``session_ids``, in that order, read in one round trip
        where the backend can; ids with no session (or an expired one) are left out.

        Raises:
            InvalidIdentifierError: for an id savegame cannot store, one id given alone
                (a string), whose characters would be taken for ids, or anything else that
                is no iterable of ids (None).
        """
        if isinstance(session_ids, (str, bytes)):
            raise InvalidIdentifierError(
                f"read_many takes a list of session ids, not one id ({session_ids!r}); "
                "read(session_id) reads one"
            )
        if not isinstance(session_ids, Iterable):
            raise InvalidIdentifierError(
                f"read_many takes a list of session ids, not {type(session_ids).__name__}"
            )
        return self._read_sessions(session_ids)

    def _read_sessions(self, session_ids: Iterable[str], remember: bool = True) -> list[Session]:
        """:meth:`read_many`; ``remember=False``: the sessions read are not added to what
        the storage remembers of its recent sessions (:mod:`savegame.storage.known`), so
        that reading a whole store (an export, a copy) neither pushes out the sessions an
        application goes on with nor spends time keeping what it will not read again."""
        ids = [check_id(session_id) for session_id in session_ids]
        records = self._read_many(ids, remember)
        # An id asked for twice may come back as one record twice: each session read is a
        # copy of its own (the first one made of a record takes it apart).
        seen: set[int] = set()
        for i, record in enumerate(records):
            if record is not None:
                if id(record) in seen:
                    records[i] = _copy(record)
                seen.add(id(record))
        return self._sessions_of(records, None, None, _now())

    def get_recent_sessions(
        self, user_id: str | None = None, entity_id: str | None = None, limit: int | None = 2
    ) -> list[Session]:
        """The ``limit`` newest sessions that match (all of them when ``limit`` is None)."""
        if limit is not None and (type(limit) is not int or limit < 0):
            raise InvalidIdentifierError(f"limit must be a non-negative int or None, not {limit!r}")
        if limit is not None and limit > MAX_LIMIT:
            limit = None  # more sessions than one list could hold: the answer of "all"
        user_id, entity_id = self._filters(user_id, entity_id)
        return self._list_sessions(user_id, entity_id, limit, _now())

    def delete_session(
        self, session_id: str | None = None, *, expected_version: int | None = None
    ) -> bool:
        """Removes exactly that session; returns whether there was one.

        Args:
            session_id: the session to remove.
            expected_version: the version the caller read: the session is removed only
                while it is still at that version, in the same atomic step as the removal,
                so that a save made since it was read is never lost. None removes it
                whatever its version.

        Raises:
            ConflictError: when the session is at another version than ``expected_version``
                (it was saved since); nothing is removed.
            CorruptSessionError: when the store, or that session, is of another mode; nothing
                is removed.
            TypeError: for an ``expected_version`` that is not None or a whole number of 1
                or more.
        """
        if expected_version is not None and (
            type(expected_version) is not int or expected_version < 1
        ):
            raise TypeError(
                f"expected_version must be None or an int of 1 or more, not {expected_version!r}"
            )
        if session_id is None:
            return False
        session_id = check_id(session_id)
        removed = self._delete_version(session_id, expected_version)
        self._erased()
        return removed

    def _delete_version(self, session_id: str, expected_version: int | None) -> bool:
        """:meth:`delete_session` of a checked id, before :meth:`_erased`."""
        if expected_version is None:
            return self._delete(session_id)
        # A session removed and made again up to that version between the removal that
        # found another version and the read is removed on the next try.
        for _ in range(3):
            if self._delete(session_id, version=expected_version):
                return True
            current = self.read(session_id)
            if current is None:
                return False
            actual = getattr(current, "version", None) or 1
            if actual != expected_version:
                break
        raise ConflictError(session_id, expected_version, actual)

    def delete_user(self, user_id: str, removed: list[str] | None = None) -> int:
        """Removes every session of ``user_id`` (expired ones too); returns how many.

        A session saved under another user between the listing of this user's sessions and
        its removal is kept: each is removed only while it is still this user's. With
        ``removed``, each id is appended to it once removed, so that a caller stopped half-way
        (Ctrl-C) knows how far the removal got.
        """
        check_id(user_id, "user id")
        done = [] if removed is None else removed
        before = len(done)
        self._delete_batches(self._list(user_id, None, None, None), done, Still(owner=user_id))
        return len(done) - before

    def _delete_batches(self, session_ids: list[str], removed: list[str], still: Still) -> None:
        """Removes ``session_ids`` :data:`USER_BATCH` at a time (:meth:`_delete_many`),
        then clears what the store keeps of them (:meth:`_erased`) once for all."""
        for start in range(0, len(session_ids), USER_BATCH):
            self._delete_many(session_ids[start : start + USER_BATCH], removed, still)
        self._erased()

    def purge_expired(self) -> int:
        """Removes the sessions whose time has run out; returns how many."""
        removed = self._purge_expired(_now())
        self._erased()
        return removed

    def _erased(self) -> None:
        """Called when a call that removes sessions (``delete_session``, ``delete_user``,
        ``purge_expired``, ``drop``) has removed them: a backend whose store keeps copies of
        removed data where savegame can clear them (SQLite's write-ahead log) clears them
        here. One that cannot clear them yet (another connection needs them) leaves them to
        the next erasure, or to :meth:`close`; that is no error."""

    def unreadable(self) -> list[str]:
        """Why each stored entry that listings leave out is left out, one line each. Only
        the file backends leave entries out (a damaged file must not break a listing); the
        others raise on such an entry, so they have none."""
        return []

    def kept_mode(self) -> str | None:
        """The mode the store records its sessions to be of, where listings in another mode
        find nothing rather than raise (a JSON or YAML folder); None elsewhere."""
        return None

    def awaiting_upgrade(self) -> str | None:
        """What the store holds in a layout that reads do not see until
        :meth:`upgrade_schema` moves it (``"sessions of the original RedisStorage under the
        prefix 'app'"``), for a message about a store found empty; None when it holds
        nothing of the kind, or when telling would cost more than a look at a small part
        of the server."""
        return None

    def close(self) -> None:
        """Releases connections and handles; the object must not be used afterwards.

        The SQL storages raise :class:`~savegame.errors.StorageError` on any later call;
        the others connect again (Redis), or hold nothing to release.
        """

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what backends share --------------------------------------------------------------

    def _check_class(self, session: object) -> None:
        """Refuses anything but a session of this storage's mode.

        Raises:
            SerializationError: naming the class this storage stores.
        """
        cls = self._spec.session_class
        if not isinstance(session, cls):
            raise SerializationError(
                f"this storage is in mode {self.mode!r} and stores {cls.__name__} objects, "
                f"not {type(session).__name__}"
            )

    def _prepare(self, session: Session) -> Draft:
        """Checks ``session`` against the mode and the rules for ids, and encodes it.

        Backends without a run codec get the whole session encoded in one piece; the others
        get each field encoded with its text, and the runs apart.
        """
        spec = self._spec
        self._check_class(session)
        check_id(session.session_id)
        for field in ("user_id", spec.entity_field):
            value = getattr(session, field, None)
            if value is not None:
                check_id(value, field.replace("_", " "))
        data = session.to_dict()
        problem = whole_number_problem(data, ("created_at", "updated_at", "version"))
        if problem is not None:
            raise SerializationError(f"session {session.session_id!r}: {problem}")
        for key in spec.text_fields:
            value = data.get(key)
            if value is not None:
                check_text_field(value, key)
        data.pop("version", None)
        holder = beside_runs(data, spec.runs_path)
        if isinstance(holder, dict) and holder.get("messages") == MESSAGES_OF_RUNS:
            raise SerializationError(
                f"{_json_path((*spec.runs_path[:-1], 'messages'))}: this string is what "
                "savegame stores in place of a message list made of the runs' messages; a "
                "session may not hold it"
            )
        run_codec = self._run_codec
        if run_codec is None:
            return Draft(encode(data), {}, None, spec.runs_path)
        head, runs = split_runs(data, spec.runs_path)
        encoded = None
        if runs is not None:
            path = _json_path(spec.runs_path)
            encoded = run_codec.encode(session.session_id, runs, path, len(spec.runs_path) + 2)
            # Decided on the runs as stored, from which a read makes the list again: there
            # a run or a message list of another type (an OrderedDict, a tuple), which
            # :func:`messages_of` passes over, is a plain dict or list.
            fold_messages(head, encoded.items, spec.runs_path)
        record: Record = {}
        texts: dict[str, str] = {}
        for key, value in head.items():
            if type(value) in _SCALARS:
                record[key] = value
            else:
                record[key], texts[key] = encode_text(value, _json_path((key,)), 2)
        return Draft(record, texts, encoded, spec.runs_path)

    def _stamp(
        self,
        data: Record,
        current: Header | None,
        expected_version: int | None,
        now: int,
        preserve: bool,
    ) -> Record:
        """The record to write over ``current``; backends call it inside their atomic step.

        An expired session counts as absent.

        Raises:
            ConflictError: when ``expected_version`` is set and is not the stored version.
        """
        # The write's time is its atomic step's: ``now``, read when the call began, may be
        # seconds old by then (the write waited for another writer's lock), and a session
        # stamped with it would expire that much early, even as it is written.
        now = max(now, _now())
        if current is not None and is_expired(current.expires_at, now):
            current = None
        actual = 0 if current is None else current.version
        if expected_version is not None and expected_version != actual:
            raise ConflictError(data["session_id"], expected_version, actual)
        record = dict(data)
        kept = None if current is None else current.created_at
        if preserve:
            record["version"] = max(int(data.get("version") or 1), actual + 1)
            record["created_at"] = _first(data.get("created_at"), kept, now)
            record["updated_at"] = _first(data.get("updated_at"), now)
        else:
            record["version"] = actual + 1
            record["created_at"] = _first(kept, data.get("created_at"), now)
            record["updated_at"] = now
        if record["version"] > MAX_VERSION:
            # Stored, it would be refused by every later read that checks it (the file
            # backends) and computed inexactly where versions are doubles (Redis's scripts).
            raise SerializationError(
                f"session {data['session_id']!r} would be at version {record['version']}, past "
                f"the largest savegame stores ({MAX_VERSION}); nothing was written"
            )
        # From the write, as documented: a session restored with its old updated_at (an
        # import of a backup) would otherwise arrive expired, unreadable though reported
        # stored, and replace a live session of its id.
        record["expires_at"] = now + self.expire if self.expire else None
        return record

    def _session(self, record: Record) -> Session:
        """The session of a record this storage owns (it is changed and taken apart).

        Raises:
            CorruptSessionError: when the record holds a value under a name the mode's
                session class has no field for (a session of another mode, in a folder or
                a Redis prefix opened with the wrong ``mode``): the session built without
                it, saved again, would lose it.
        """
        record.pop("expires_at", None)
        whole_seconds(record)
        fields = self._spec.fields
        if not fields.issuperset(record):
            extra = record.keys() - fields
            if any(record[key] is not None for key in extra):
                raise CorruptSessionError(self._of_another_mode(record, extra))
            for key in extra:
                del record[key]
        if record.get("version") is None:
            record["version"] = 1
        unfold_messages(record, self._spec.runs_path, _copy)
        return self._spec.session_class(**record)

    def _of_another_mode(self, record: Record, extra: set[str]) -> str:
        """Why ``record``, holding values under the names ``extra``, is not read as a session."""
        held = sorted(key for key in extra if record[key] is not None)
        present = {key for key, value in record.items() if value is not None}
        # The modes with a field for each value this one lacks, the closest fit first.
        fits = [(len(present - s.fields), m) for m, s in MODES.items() if s.fields.issuperset(held)]
        modes = [m for _, m in sorted(fits)]
        likely = (
            f"a {modes[0]} session: open the store with mode={modes[0]!r}"
            if modes
            else ("not a session savegame knows")
        )
        return (
            f"session {record.get('session_id')!r} holds {', '.join(held)}, which "
            f"{self._spec.session_class.__name__} has no field for; it looks like {likely}. "
            f"Read in mode {self.mode!r} and saved again, it would lose them"
        )

    def _other_mode(self, record: Record) -> str | None:
        """The mode of ``record`` when it is a session of another mode only
        (:func:`~savegame.storage.session.modes_of`); None when it can be one of this mode,
        or is of none."""
        modes = modes_of(record)
        if not modes or self.mode in modes:
            return None
        return next(mode for mode in MODES if mode in modes)

    def _mode_among(self, records: Iterable[Any]) -> str | None:
        """The mode a store holding ``records`` (stored sessions' dicts, read until one
        settles it) keeps: this mode when one of them can be a session of it (a store that
        holds sessions of this mode is this mode's, even when an earlier savegame let
        another mode's in beside them), else the other mode one of them is a session of;
        None when none tells (none is a session of any mode)."""
        found = None
        for record in records:
            if not isinstance(record, dict):
                continue
            if self.mode in modes_of(record):
                return self.mode
            found = found or self._other_mode(record)
        return found

    def _kept_by_another(
        self, store: str, kept: str, why: str, elsewhere: str
    ) -> CorruptSessionError:
        """The error of a storage of this mode on ``store``, which keeps ``kept`` sessions
        (``why``: what says so); ``elsewhere``: where this mode's sessions may go instead."""
        return CorruptSessionError(
            f"{store} keeps {kept} sessions ({why}), and a storage of mode={self.mode!r} may "
            f"not use it: open it with mode={kept!r}, or keep {self.mode} sessions {elsewhere}"
        )

    def _refuse_other_mode(self, record: Record, doing: str) -> None:
        """Refuses to ``doing`` (a verb: "read", "replace") ``record`` when it is a session
        of another mode (:func:`~savegame.storage.session.modes_of`), in a store that keeps
        each session's fields with it (the files, the in-memory dict).

        Raises:
            CorruptSessionError: naming the record's mode and the mode to open the store with.
        """
        other = self._other_mode(record)
        if other is not None:
            raise CorruptSessionError(
                f"session {record.get('session_id')!r} is {with_article(other)} session, which "
                f"a storage of mode {self.mode!r} cannot {doing}: open the store with "
                f"mode={other!r}"
            )

    def _filters(self, user_id: str | None, entity_id: str | None) -> tuple[str | None, str | None]:
        if user_id is not None:
            check_id(user_id, "user id")
        if entity_id is not None:
            check_id(entity_id, self._spec.entity_field.replace("_", " "))
        return user_id, entity_id

    def _list_sessions(
        self, user_id: str | None, entity_id: str | None, limit: int | None, now: int
    ) -> list[Session]:
        """The sessions of :meth:`_list`; a backend may list and read in fewer steps."""
        records = self._read_many(self._list(user_id, entity_id, limit, now))
        return self._sessions_of(records, user_id, entity_id, now)

    def _sessions_of(
        self, records: Iterable[Record | None], user_id: str | None, entity_id: str | None, now: int
    ) -> list[Session]:
        """Sessions of listed records, dropping any that vanished or changed since listing."""
        field = self._spec.entity_field
        out = []
        for record in records:
            if record is None or is_expired(record.get("expires_at"), now):
                continue
            if user_id is not None and record.get("user_id") != user_id:
                continue
            if entity_id is not None and record.get(field) != entity_id:
                continue
            out.append(self._session(record))
        return out

    # -- primitives -----------------------------------------------------------------------

    @abstractmethod
    def _read(self, session_id: str) -> Record | None:
        """The stored record of ``session_id``, expired or not, or None."""

    @abstractmethod
    def _write(
        self, draft: Draft, expected_version: int | None, now: int, preserve: bool
    ) -> Record:
        """Atomically stamps ``draft.record`` over the stored header (:meth:`_stamp`) and
        stores it with its runs.

        Returns the record as stored (:meth:`Draft.whole`); the backend keeps no reference
        to the dicts and lists in it that are not the caller's own.
        """

    @abstractmethod
    def _list(
        self, user_id: str | None, entity_id: str | None, limit: int | None, now: int | None
    ) -> list[str]:
        """Matching ids, newest ``created_at`` first, ties by id; ``now=None``: expired too."""

    def _bulk_written(self, count: int) -> None:
        """Told by a copy or an import that it has written ``count`` more sessions in bulk.

        A backend whose database plans queries by statistics of its tables refreshes them
        once the sessions so written have grown past what they were last gathered for: a
        table just filled is taken for an empty one until the server's background task comes
        by, and each batch's look-up of the sessions already there would scan it whole. By
        default nothing is done.
        """

    def _forget_written(self, session_ids: Iterable[str]) -> None:
        """Told by a copy or an import which sessions it has just written in bulk: a backend
        that remembers the sessions it writes (:mod:`savegame.storage.known`) forgets these,
        which nothing is about to save again, so that a copy of a large store holds one
        batch of them at a time rather than as many as the cache takes. By default nothing
        is done.
        """

    def _read_many(self, ids: Iterable[str], remember: bool = True) -> list[Record | None]:
        """The records of ``ids``, in order, None where there is none; ``remember``: as for
        :meth:`_read_sessions`, which a backend that remembers nothing ignores."""
        return [self._read(sid) for sid in ids]

    @abstractmethod
    def _delete(
        self, session_id: str, owner: str | None = None, version: int | None = None
    ) -> bool:
        """Removes the session (with ``owner``: only while its user id is ``owner``; with
        ``version``: only while it is at that version, a stored session without one being at
        version 1; either checked in the same atomic step as the removal); True when there
        was one to remove."""

    def _delete_many(self, session_ids: list[str], removed: list[str], still: Still) -> None:
        """Removes those of ``session_ids`` that are still as ``still`` says, appending each
        id to ``removed`` once its removal is done.

        By default one :meth:`_delete` each; a backend that can remove many in one step
        does, so that erasing a user or purging thousands of sessions costs a few
        statements a batch rather than a transaction a session."""
        versions = still.versions
        for session_id in session_ids:
            version = None if versions is None else versions[session_id]
            if self._delete(session_id, still.owner, version):
                removed.append(session_id)

    def _read_stamps(self, ids: list[str], now: int) -> list[Stamp | None]:
        """The :class:`Stamp` of each of ``ids`` (ids already checked), in that order; None
        for one not stored, or expired at ``now``.

        A backend reads each session's header only (its id, times and version), never its
        runs, so that finding the stale sessions of a store of long conversations reads
        kilobytes a session rather than the conversations; it checks what it reads as a
        read checks the header (:meth:`_stamp_of`). This default reads the sessions whole,
        for a backend that keeps nothing apart from its runs.

        Raises:
            CorruptSessionError: naming the first session whose header cannot be read (a
                time or version edited by hand into text, a session of another mode); one
                whose runs alone are damaged raises it only where the backend reads them.
        """
        stamps: list[Stamp | None] = []
        for record in self._read_many(ids):
            if record is None or is_expired(record.get("expires_at"), now):
                stamps.append(None)
                continue
            session = self._session(record)
            stamps.append(
                Stamp(
                    session.session_id,
                    getattr(session, "created_at", None),
                    getattr(session, "updated_at", None),
                    getattr(session, "version", None) or 1,
                )
            )
        return stamps

    def _stamp_of(self, record: Record) -> Stamp:
        """The :class:`Stamp` of a stored session's header ``record`` (any of its fields but
        its runs, with ``session_id``), whose values the backend has checked as it checks
        those of a read (:func:`check_stored`); float times an earlier savegame stored are
        cut to whole seconds, in place.

        Raises:
            CorruptSessionError: when the record holds a value under a name the mode's
                session class has no field for, as :meth:`_session` does.
        """
        whole_seconds(record)
        extra = record.keys() - self._spec.fields - {"expires_at"}
        if any(record[key] is not None for key in extra):
            raise CorruptSessionError(self._of_another_mode(record, extra))
        return Stamp(
            record["session_id"],
            record.get("created_at"),
            record.get("updated_at"),
            record.get("version") or 1,
        )

    @abstractmethod
    def _purge_expired(self, now: int) -> int:
        """Removes every session expired at ``now``; returns how many."""

    def store_names(self) -> tuple[object, ...]:
        """What names this storage's store: two storages of one class with equal names use
        the same store (two objects opened on one table, folder or prefix); by default,
        this object alone. An agent told of another storage tells by it whether its session
        moves to another store, or was deleted in its own (see
        :attr:`~savegame.runtime.SessionKeeper.storage`)."""
        return (id(self),)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


def _now() -> int:
    return int(time.time())


def _first(*values: int | None) -> int:
    """The first value that is not None (0 is a time like any other)."""
    for value in values:
        if value is not None:
            return value
    raise ValueError("no value")
