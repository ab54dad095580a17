"""What the JSON and YAML backends share: one readable file per session in a folder.

The files are the truth. Beside them, in ``.savegame/``, sit a lock file and an index (a
small SQLite database) of each session's user, entity, times, version and expiry, so that
listing one user's sessions, or finding the stale ones to purge, reads the index instead of
every file. The index can always be rebuilt from the files, and is:

* when it is missing, or was made for another mode;
* when SQLite finds it damaged (cut short, pages overwritten, no database at all): the call
  that finds it removes it, with its log, and runs again on a new one;
* when the folder changed behind savegame's back: every write through savegame records the
  folder's modification time in the index (when the index recorded the time before the
  write: a change it does not know stays visible), so a file added, replaced or removed by
  anything else shows up as a different time (edits in place by other programs that keep the
  folder's time are picked up by :meth:`FileStorage.rebuild_index`);
* when a write was interrupted: a write marks its session *pending* in the index before it
  renames its new file into place and clears the mark after, so a process killed in between
  leaves a mark that the next reader repairs.

A full disk. The index is written only after what can fail for want of space (the temporary
file of a write), so a write that fails leaves no mark; a write whose file is in place
returns even when the index cannot be written after it, leaving its mark. A listing that
finds the index stale and cannot write it lists from a private copy in memory, brought up to
date with the files as a rebuild would. ``delete_session`` (``delete_user`` and
``purge_expired`` go through it) and ``drop`` remove files whether or not the index can be
written, and when it cannot, make sure the folder's modification time shows the change, so
that every process rebuilds the index (or lists from such a copy) before it lists again.
The first listing or write that can write the index brings it up to date.

One mode. A folder keeps the sessions of one mode per format: the first write records its
mode in ``.savegame/mode-json`` (or ``mode-yaml``), and a storage of another mode may not
write there (:class:`~savegame.errors.CorruptSessionError`, naming both modes). A folder
without that marker (written by the original, or by an earlier savegame) is taken by the
first writer whose mode its files fit. Listings leave out files of another mode's sessions,
as they leave out damaged files, so that sessions of two modes an earlier savegame let into
one folder break no listing: each mode lists its own. ``read`` and ``delete_session`` of
another mode's session raise, and ``drop`` leaves such files.

Files that cannot be read. A session file this process may not read (another user's, made
readable to that user only) is left out of listings, as a damaged file is, and named by
:meth:`FileStorage.unreadable`; its ``read`` raises
:class:`~savegame.errors.BackendUnavailableError`, and ``drop`` leaves it. While the index
lacks such a file it records no state of the folder, so that every listing, in any process,
reads the files it lacks again: its owner's listings find it.

Guarantees. A write takes the folder's lock (threads and processes), writes a temporary file,
fsyncs it, renames it over the session's file and fsyncs the folder, so a reader sees either
the old or the new file, never a half-written one, and a returned write survives a crash.
Reads take no lock.

File names. A session id made only of letters, digits, ``-``, ``_`` and ``.`` (not starting
with a dot, at most 128 characters, not a Windows device name) keeps the plain
``<id>.json`` name the original used; any other id is stored as ``~<sha256 of the id>.json``.
No id can name a path outside the folder. The original named the files of those other ids
``<id>.json`` too (``.x.json`` of session ``.x``, hidden): such a file is read and listed
while no file of savegame's name is there, and renamed to it by a write or removal of its
session, or by :meth:`FileStorage.upgrade_schema`. On a file system that ignores case (macOS's and
Windows' by default), ``abc.json`` is also the file of session ``Abc``: where one of two such
ids is stored, the other reads as missing, and its write raises
:class:`~savegame.errors.InvalidIdentifierError` rather than replace the session there.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from filelock import FileLock, Timeout

from savegame.errors import (
    BackendUnavailableError,
    CorruptSessionError,
    InvalidIdentifierError,
    SerializationError,
    StorageError,
)
from savegame.storage.base import (
    HOLDING,
    MAX_WAIT,
    USER_BATCH,
    Draft,
    Header,
    Record,
    Stamp,
    Still,
    Storage,
    check_stored,
    check_update,
    is_expired,
    kept_from_delete,
    local_path,
    make_folder,
    once_more_on,
    path_text,
    sync_folder,
    unwritable,
)
from savegame.storage.session import MODES, Mode, modes_of
from savegame.storage.wal import clear_log, erase_deleted, use_wal

if TYPE_CHECKING:
    from savegame.storage.url import StorageURL

_PLAIN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)]
)
_NOT_IN_A_NAME = frozenset("/\\:" if os.name == "nt" else "/")
"""Characters that would make an id, as a file name, name another folder (or, on Windows,
a drive or a stream of another file)."""
_META_DIR = ".savegame"
_TEMP_PREFIX = ".tmp-"
_TEMP_NAME = re.compile(re.escape(_TEMP_PREFIX) + "[0-9a-f]{32}")
"""The names of savegame's temporary files (a uuid4's hex after the prefix): other programs
sharing the folder may have ``.tmp-`` files and folders of their own."""


@dataclass(frozen=True)
class FileFormat:
    """How one file backend writes and reads a record.

    Attributes:
        name: the format's name, used for the index file.
        extension: the session files' suffix, with its dot.
        dump: a record to the bytes of its file.
        load: the bytes of a file to a record (or anything, when the file is foreign).
    """

    name: str
    extension: str
    dump: Callable[[Record], bytes]
    load: Callable[[bytes], Any]


_STAMP_BATCH = 500
"""Sessions whose stamps one statement on the index reads (fewer than SQLite's 999
parameters)."""

_INDEX_TIMEOUT = 60.0
"""Seconds a process waits for another one holding the index's database (SQLite)."""

_TICK_TIMEOUT = 5.0
"""Seconds to wait for the folder's modification time to move on (see :meth:`_show_change`);
file systems whose clock is the coarsest count in steps of 2 seconds."""

_INDEX_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    file TEXT NOT NULL,
    user_id TEXT,
    entity_id TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    version INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_created ON sessions (created_at DESC, session_id);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user_id, created_at DESC, session_id);
CREATE INDEX IF NOT EXISTS sessions_by_entity ON sessions (entity_id, created_at DESC, session_id);
CREATE TABLE IF NOT EXISTS pending (session_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stamps (
    session_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    created_at INTEGER,
    updated_at INTEGER
);
"""

_SET_ROW = "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"

_SET_STAMP = "INSERT OR REPLACE INTO stamps VALUES (?, ?, ?, ?, ?, ?)"
"""A session's times as stored (``created_at`` may be None, which ``sessions`` keeps as 0),
for a purge (:meth:`FileStorage._read_stamps`). A table of its own, rather than columns of
``sessions``, which an earlier savegame sharing the folder fills by position: it leaves
this one alone, and a row here is believed only while its version, modification time and
size are those of the session's row in ``sessions`` (a write by that earlier savegame
changes them)."""

_STAMPS = """
SELECT s.session_id, s.file, s.mtime_ns, s.size, s.expires_at, s.version,
    t.session_id IS NOT NULL, t.created_at, t.updated_at
FROM sessions AS s LEFT JOIN stamps AS t ON t.session_id = s.session_id
    AND t.version = s.version AND t.mtime_ns = s.mtime_ns AND t.size = s.size
WHERE s.session_id IN ({})
"""

_INDEX_VERSION = 1
"""The index's ``PRAGMA user_version``: 0 for an index of an earlier savegame, whose rows may
be of sessions of several modes and whose meta does not say which."""


def _forget_earlier_rows(conn: sqlite3.Connection) -> None:
    """Empties an index an earlier savegame made, once: it let sessions of several modes into
    one folder and listed them all, so its rows cannot be trusted to be one mode's. The next
    listing reads every file again."""
    if conn.execute("PRAGMA user_version").fetchone()[0] >= _INDEX_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] < _INDEX_VERSION:
            for table in ("sessions", "pending", "meta", "stamps"):
                conn.execute(f"DELETE FROM {table}")
            conn.execute(f"PRAGMA user_version = {_INDEX_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _uninterrupted(step: Callable[[], None]) -> None:
    """Runs ``step``, which must be safe to run again, to its end: a KeyboardInterrupt that
    lands in it runs it again, and is raised once it is done."""
    interrupted: KeyboardInterrupt | None = None
    while True:
        try:
            step()
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


def file_name(session_id: str, extension: str) -> str:
    """The name of the file that holds ``session_id`` (see the module docstring)."""
    if _PLAIN.fullmatch(session_id) and session_id.split(".")[0].upper() not in _DEVICES:
        return session_id + extension
    digest = hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"~{digest}{extension}"


class _IndexDamaged(BackendUnavailableError):
    """The index was found damaged (SQLite says its file is malformed, or no database), and
    removed: the call that found it runs again, and makes it anew from the files."""


_again_if_index_damaged = once_more_on(_IndexDamaged)
"""A method of a :class:`FileStorage`, run once more when it found the index damaged and
removed it: the second run makes the index anew from the files. The first run must have
changed nothing (a write fails on the index before its file is in place)."""


class FileStorage(Storage):
    """Sessions as files in ``dir_path``, one per session, in :attr:`format`.

    Args:
        dir_path: the folder, ``~`` standing for the home folder; made on :meth:`create` or
            the first write.
        mode: the storage mode (see :class:`~savegame.storage.base.Storage`).
        expire: seconds after its last write that a session expires.
        lock_timeout: seconds to wait for the folder's lock before raising
            :class:`~savegame.errors.BackendUnavailableError`.

    Raises:
        InvalidIdentifierError: for a ``dir_path`` that is not a path, an empty one (``"."``
            names the current folder), one holding a NUL character or starting with the
            ``~user`` of an unknown user; for a ``lock_timeout`` that is not a number of
            seconds from 0 to :data:`~savegame.storage.base.MAX_WAIT`.
    """

    capabilities = frozenset({"persistent", "processes", "key_order"})
    format: ClassVar[FileFormat]

    def __init__(
        self,
        dir_path: str | os.PathLike[str],
        mode: Mode | None = "agent",
        expire: int | None = None,
        lock_timeout: float = 30.0,
    ) -> None:
        super().__init__(mode, expire)
        if type(lock_timeout) not in (int, float) or not 0 <= lock_timeout <= MAX_WAIT:
            # filelock waits for ever on a negative or infinite one, and refuses NaN or a
            # bool only at the first write, with errors of its own.
            raise InvalidIdentifierError(
                f"lock_timeout must be a number of seconds from 0 to {MAX_WAIT}, "
                f"not {lock_timeout!r}"
            )
        if path_text(dir_path, "dir_path") == "":
            # What "json:///$DIR" gives when DIR is unset: Path("") is the current folder,
            # which would take the sessions beside whatever else is there.
            raise InvalidIdentifierError(
                f"{type(self).__name__} needs a folder, and dir_path is empty (as is the path "
                f"of {self.format.name}:/// with none): name it, '.' for the current folder"
            )
        self.dir_path = local_path(dir_path, "dir_path")
        self._meta = self.dir_path / _META_DIR
        self._index_path = self._meta / f"index-{self.format.name}.sqlite3"
        self._mode_path = self._meta / f"mode-{self.format.name}"
        self._lock_timeout = lock_timeout
        self._file_lock = self._new_file_lock()
        self._lock_pid = os.getpid()
        self._owner: int | None = None
        self._thread_lock = threading.RLock()
        self._local = threading.local()
        self._uncleared = False

    def _forked(self) -> None:
        self._thread_lock = threading.RLock()
        self._owner = None

    def _new_file_lock(self) -> FileLock:
        # filelock polls; a short interval keeps writers from idling while the lock is free.
        return FileLock(
            self._meta / "lock", timeout=self._lock_timeout, thread_local=False, poll_interval=0.002
        )

    # -- the folder and its lock ----------------------------------------------------------

    def create(self) -> None:
        self._make_meta()
        with self._index_errors():
            self._index()

    def table_exists(self) -> bool:
        """Whether the folder exists.

        Raises:
            BackendUnavailableError: when something else than a folder is at its path.
        """
        return self._made()

    def _made(self) -> bool:
        """Whether the folder is there; False when nothing is at its path yet (it is made
        by the first write).

        Raises:
            BackendUnavailableError: when a file is at its path, or at a path above it:
                reads and listings would otherwise say that nothing is stored, of a folder
                that was mistyped or replaced, and writes could never be made.
        """
        try:
            mode = os.stat(self.dir_path).st_mode
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise BackendUnavailableError(
                f"the folder {self.dir_path} cannot be reached: {exc.strerror or exc}"
            ) from exc
        if not stat.S_ISDIR(mode):
            raise BackendUnavailableError(
                f"{self.dir_path} is a file, not a folder: give the folder the sessions are in"
            )
        return True

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """Holds the folder's lock (threads and processes) and yields the index."""
        with self._folder_locked(), self._index_errors():
            yield self._index()

    @contextmanager
    def _folder_locked(self) -> Iterator[None]:
        """Holds the folder's lock (threads and processes), without opening the index.

        The outermost of the calls that nest in one thread takes the file lock, and gives it
        back whatever cut the call short: a KeyboardInterrupt (Ctrl-C in a notebook, which
        goes on running) landing in the release is let finish it first, or the folder would
        stay locked against every other process for as long as this one lives. A lock made
        before a fork is the parent's, which filelock refuses in the child: the child makes
        its own.
        """
        self._make_meta()
        with HOLDING, self._thread_lock:
            me = threading.get_ident()
            if self._owner == me:
                yield
                return
            if self._lock_pid != os.getpid():
                self._file_lock, self._lock_pid = self._new_file_lock(), os.getpid()
            lock = self._file_lock
            interrupted: KeyboardInterrupt | None = None
            try:
                # Inside the block that releases: an interrupt landing in acquire() may leave
                # the file locked, with filelock's count of it not yet taken.
                try:
                    lock.acquire()
                except Timeout as exc:
                    raise BackendUnavailableError(
                        f"the folder {self.dir_path} stayed locked by another writer for "
                        f"{lock.timeout} s"
                    ) from exc
                except OSError as exc:
                    raise self._failed(
                        f"cannot lock the folder {self.dir_path} ({lock.lock_file})", exc
                    ) from exc
                except BaseException as exc:
                    # filelock groups the interrupts that cut short its own clean-up of a
                    # failed acquire (an ExceptionGroup): Ctrl-C is raised as Ctrl-C.
                    if _only_interrupts(exc) and not isinstance(exc, KeyboardInterrupt):
                        raise KeyboardInterrupt from exc
                    raise
                self._owner = me
                yield
            finally:
                # Inline, not a call: an interrupt can land between a call and its first step.
                while True:
                    try:
                        self._owner = None
                        # Every level: one that an interrupt left taken after acquire()
                        # returned, before this block began, goes too.
                        lock.release(force=True)
                        break
                    except KeyboardInterrupt as exc:
                        interrupted = exc
            if interrupted is not None:
                raise interrupted

    def _index(self) -> sqlite3.Connection:
        """This thread's connection to the index, made (with its tables) on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid != os.getpid():
            # The parent's, inherited across fork: its SQLite locks are the parent's, and
            # the child never uses (nor closes) it.
            conn = self._local.conn = None
        if conn is not None:
            # One left open by a call that an interrupt cut short where nothing could end
            # it: no transaction spans calls, and an open one holds the index's write lock.
            self._roll_back()
        if conn is not None and self._index_identity() != self._local.identity:
            # The index file was removed or replaced since this thread opened it (the folder
            # deleted and made again, say): the connection would go on reading and writing a
            # file no other process sees, and list sessions whose files are gone.
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            conn = self._local.conn = None
        if conn is None:
            seen = self._index_identity()
            try:
                conn = self._connect()
            except BackendUnavailableError as exc:
                if not _damaged(exc.__cause__) or not self._discard_index(seen):
                    raise
                conn = self._connect()
            # The connection last: Ctrl-C before it is stored leaves none without the pid
            # and identity the next call reads.
            self._local.conn = conn
        return conn

    def _connect(self) -> sqlite3.Connection:
        """A new connection to the index, which it makes (with its tables) when missing.

        Raises:
            BackendUnavailableError: when the index cannot be opened, its cause the SQLite
                error (a damaged schema, which SQLite reports in text Python cannot decode,
                as a ``sqlite3.DatabaseError``).
        """
        self._make_meta()
        conn = sqlite3.connect(self._index_path, timeout=_INDEX_TIMEOUT, isolation_level=None)
        try:
            with self._index_errors():
                try:
                    use_wal(conn, _INDEX_TIMEOUT)
                    # The index is rebuilt from the files whenever it disagrees with them,
                    # so it need not survive a power loss on its own.
                    conn.execute("PRAGMA synchronous=NORMAL")
                    erase_deleted(conn)
                    conn.executescript(_INDEX_SCHEMA)
                    _forget_earlier_rows(conn)
                except UnicodeDecodeError as exc:
                    raise sqlite3.DatabaseError(f"malformed database schema ({exc})") from exc
            self._local.pid = os.getpid()
            self._local.identity = self._index_identity()
        except BaseException:
            # Ctrl-C too: a connection cut short in its setup may hold the index's
            # write lock, which only closing it lets go at once (not whenever the
            # garbage collector gets to it).
            conn.close()
            raise
        return conn

    def _discard_index(self, seen: tuple[int, int] | None) -> bool:
        """Removes the index, found damaged as the file ``seen`` (its device and inode),
        with its log, so that the next connection makes it anew; the next listing then
        reads every file (the index records no mode). False when it cannot be removed (a
        folder this process cannot write to); True too when another process replaced it
        meanwhile.

        The log goes first: a new index must never find the old one's log beside it.
        """
        try:
            with self._folder_locked():
                conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
                if conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
                    self._local.conn = None
                if self._index_identity() != seen:
                    return True
                for suffix in ("-wal", "-shm", "-journal", ""):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{self._index_path}{suffix}")
        except (BackendUnavailableError, OSError):
            return False
        return True

    def _open_index(self) -> sqlite3.Connection | None:
        """The index as :meth:`_index` gives it; None when it cannot be opened (a full disk
        leaves no room for the files SQLite makes beside it)."""
        try:
            return self._index()
        except (BackendUnavailableError, sqlite3.Error):
            return None

    def _index_identity(self) -> tuple[int, int] | None:
        """The device and inode of the index file; None when it is not there."""
        try:
            stat = os.stat(self._index_path)
        except OSError:
            return None
        return (stat.st_dev, stat.st_ino)

    def _make_meta(self) -> None:
        """Makes the folder and its ``.savegame`` folder when missing."""
        # The folder first, so that what cannot be made is reported as the folder the store
        # was given, not as the ``.savegame`` inside it.
        make_folder(self.dir_path)
        make_folder(self._meta)

    def _roll_back(self) -> None:
        """Ends the transaction this thread had begun on the index, if any."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    @contextmanager
    def _index_errors(self) -> Iterator[None]:
        """Turns an error of the index (a SQLite database beside the files) into savegame's,
        after rolling back what this thread had begun on the index."""
        try:
            yield
        except BaseException as exc:
            # Ctrl-C too: a transaction left open would hold the index's write lock against
            # every other process for as long as this one runs.
            _uninterrupted(self._roll_back)
            if not isinstance(exc, (sqlite3.Error, OSError)):
                raise
            if isinstance(exc, OSError):
                # The files themselves (a session file that became a folder, a folder made
                # read-only or removed meanwhile): savegame's error, as for the index.
                raise self._failed(f"the folder {self.dir_path}", exc) from exc
            if (
                _damaged(exc)
                and getattr(self._local, "conn", None) is not None
                and self._discard_index(self._local.identity)
            ):
                raise _IndexDamaged(
                    f"the index of the folder {self.dir_path} ({self._index_path}) is "
                    f"damaged ({exc}): it was removed, and the next call makes it anew from "
                    "the files"
                ) from exc
            raise self._failed(
                f"the index of the folder {self.dir_path} ({self._index_path}) failed", exc
            ) from exc

    def _failed(self, what: str, exc: BaseException) -> BackendUnavailableError:
        """The error of ``what`` that failed with ``exc``, saying so when the folder, or the
        ``.savegame`` folder in it, cannot be written to: the system's words ("Read-only
        file system" of a lock file, SQLite's "unable to open database file" of the index)
        name neither the folder nor the cause."""
        for folder in (self.dir_path, self._meta):
            why = unwritable(folder) if folder.is_dir() else None
            if why is not None:
                return BackendUnavailableError(
                    f"{what}: {exc}; the folder {folder} cannot be written to ({why}): its "
                    "sessions can be read and listed, not written, removed or indexed"
                )
        return BackendUnavailableError(f"{what}: {exc}")

    def close(self) -> None:
        """Closes this thread's connection to the index, clearing first what an erasure
        left in the index's log (see :meth:`_erased`)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            try:
                # On this connection as it is: opening the index anew would make the folder
                # again, were it removed since.
                if self._uncleared and self._local.pid == os.getpid():
                    self._clear_log(conn)
            finally:
                conn.close()
                self._local.conn = None

    def _erased(self) -> None:
        # The files removed are the file system's; the index's rows of them are zeroed in
        # its file (secure_delete), and its log is cleared here.
        if self._uncleared:
            self._clear_log(self._open_index())

    def _clear_log(self, conn: sqlite3.Connection | None) -> None:
        """Clears the index's log on ``conn`` (None: the index could not be opened), or
        leaves it to the next erasure, or :meth:`close`, when another connection keeps it
        from completing, or the index cannot be written (a full disk): as an erasure's
        write of the index, which the files' removal does not wait for (see the module's
        docstring)."""
        # Unset first: an erasure of another thread that begins meanwhile sets it again,
        # and clears after this one.
        self._uncleared = False
        cleared = False
        with contextlib.suppress(sqlite3.Error):
            cleared = conn is not None and clear_log(conn)
        if not cleared:
            self._uncleared = True

    # -- files ----------------------------------------------------------------------------

    def _path(self, session_id: str) -> Path:
        return self.dir_path / file_name(session_id, self.format.extension)

    def _originals_path(self, session_id: str) -> Path | None:
        """Where the original kept ``session_id`` when savegame names its file otherwise
        (``my chat.json``, ``.x.json``); None when the names agree, or the original's name
        is no file of this folder (an id holding a separator, or one too long for a file
        name). Savegame's temporary files have no extension, so no such name is one."""
        name = session_id + self.format.extension
        if name == file_name(session_id, self.format.extension):
            return None
        if not _NOT_IN_A_NAME.isdisjoint(name):
            return None
        try:
            if len(os.fsencode(name)) > 255:
                return None
        except UnicodeEncodeError:  # a lone surrogate
            return None
        return self.dir_path / name

    def _load_originals(self, session_id: str) -> Record | None:
        """The session ``session_id`` from the file the original named after it; None when
        there is none, or the file holds something else (another program's, or damaged:
        :meth:`unreadable` names it)."""
        path = self._originals_path(session_id)
        if path is None:
            return None
        try:
            return self._load(path, session_id)
        except CorruptSessionError:
            return None

    def _adopt(self, session_id: str) -> None:
        """Renames the original's file of ``session_id``, when it has one and no file of
        savegame's name is there, to savegame's name, so that a write keeps its
        ``created_at`` and version and a removal removes it. Holds the folder's lock."""
        own = self._path(session_id)
        if own.exists():
            return
        record = self._load_originals(session_id)
        if record is None or self.mode not in modes_of(record):
            return
        path = self._originals_path(session_id)
        assert path is not None
        os.replace(path, own)
        sync_folder(self.dir_path)

    def _load(self, path: Path, session_id: str | None) -> Record | None:
        """The record in ``path``; None when the file is not there.

        Raises:
            CorruptSessionError: when the file cannot be parsed, holds another session, or
                ids or numbers savegame does not write
                (:func:`~savegame.storage.base.check_stored`).
            BackendUnavailableError: when the file cannot be read (another user's that
                this process may not read, a folder in its place).
        """
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                self._made()  # the folder, not the file, is what is wrong: it says so
            raise _CannotRead(f"cannot read {path}: {exc}") from exc
        try:
            record = self.format.load(raw)
        except (ValueError, StorageError) as exc:
            # A value the file holds is named; the parser's own message (several lines for
            # YAML) stays in the cause.
            why = f": {exc}" if isinstance(exc, SerializationError) else ""
            raise CorruptSessionError(
                f"{path} is not a readable {self.format.name} file{why}"
            ) from exc
        if not isinstance(record, dict) or not isinstance(record.get("session_id"), str):
            raise CorruptSessionError(f"{path} does not hold a session")
        if session_id is not None and record["session_id"] != session_id:
            other = self._path(record["session_id"])
            if other != path and _same_file(path, other):
                raise _FileOfAnother(
                    f"session id {session_id!r} cannot be stored in the folder "
                    f"{self.dir_path}: its file {path.name} is the file of session "
                    f"{record['session_id']!r} there, {other.name} (the folder's file system "
                    "takes the two names for one, as one that ignores case does)"
                )
            raise CorruptSessionError(f"{path} holds session {record['session_id']!r}")
        check_stored(record, self.spec, f"in {path}")
        return record

    def _temp_file(self, path: Path, content: bytes) -> Path:
        """A new temporary file holding ``content``, on disk, to be renamed to ``path``.

        A write stopped half-way, by a failure or by Ctrl-C (a KeyboardInterrupt, most
        likely while the file is written or synced), removes it: only a rescan of the
        whole folder would.
        """
        temp = self.dir_path / f"{_TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            with open(temp, "xb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException as exc:
            temp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise self._failed(f"cannot write {path}", exc) from exc
            raise
        return temp

    def _session_files(self) -> Iterator[os.DirEntry[str]]:
        """The folder's files of this format, hidden ones too: the original kept session
        ``.x`` in ``.x.json``. Other programs keep hidden files of their own there
        (``.eslintrc.json``), which :meth:`unreadable` does not name (:func:`_hidden`)."""
        ext = self.format.extension
        with os.scandir(self.dir_path) as entries:
            for entry in entries:
                if entry.name.endswith(ext) and entry.is_file():
                    yield entry

    # -- the folder's mode ----------------------------------------------------------------

    def _folder_mode(self) -> str | None:
        """The mode recorded for this format's sessions in the folder; None when none is.

        A marker that is not a mode's name (cut short by a crash before its rename was on
        disk, or edited by hand) counts as none: the next write infers the mode again from
        the files and writes the marker anew.
        """
        try:
            text = self._mode_path.read_bytes().decode("ascii", "replace").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendUnavailableError(f"cannot read {self._mode_path}: {exc}") from exc
        return text if text in MODES else None

    def kept_mode(self) -> str | None:
        """The mode this format's sessions in the folder are kept in, as its first write
        recorded it; None when none is recorded (see "One mode" above).

        Raises:
            BackendUnavailableError: when the record cannot be read.
        """
        return self._folder_mode()

    def _claim(self) -> None:
        """Makes sure the folder keeps this mode's sessions before a write; must hold the lock.

        The first write records the mode in a marker beside the index. A folder without one
        (written by the original, by an earlier savegame, or not at all) is this mode's
        unless its files are another mode's only: the mode is inferred from them once. The
        check of every later write reads the small marker; it costs no fsync. Writers hold
        the folder's lock, so of two processes of different modes writing first into one
        folder, the second finds the first one's marker.

        Raises:
            CorruptSessionError: when the folder keeps another mode's sessions; nothing is
                written.
        """
        recorded = self._folder_mode()
        if recorded == self.mode:
            return
        if recorded is None:
            recorded = self._mode_among(self._loadable())
            why = "its files are, and no mode is recorded"
            if recorded in (None, self.mode):
                temp = self._temp_file(self._mode_path, f"{self.mode}\n".encode("ascii"))
                try:
                    os.replace(temp, self._mode_path)
                except BaseException as exc:
                    temp.unlink(missing_ok=True)
                    if isinstance(exc, OSError):
                        raise self._failed(f"cannot write {self._mode_path}", exc) from exc
                    raise
                # No fsync of the folder it is in: a marker lost in a crash is inferred
                # again from the files, which the write that follows puts on disk.
                return
        else:
            why = f"as {self._mode_path} records"
        raise self._kept_by_another(
            f"the folder {self.dir_path}", recorded, why, "in another folder"
        )

    def _loadable(self) -> Iterator[Record]:
        """The records of the folder's session files that can be read (must hold the lock);
        damaged ones, and those this process may not read, are passed over."""
        for entry in self._session_files():
            try:
                record = self._load(Path(entry.path), None)
            except (CorruptSessionError, _CannotRead):
                continue
            if record is not None:
                yield record

    # -- the index ------------------------------------------------------------------------

    def _rows(self, record: Record, path: Path) -> list[tuple[str, tuple[Any, ...]]]:
        """The statements that index ``record``, stored in ``path``: its row in
        ``sessions`` and in ``stamps`` (:data:`_SET_STAMP`).

        Raises:
            FileNotFoundError: when ``path`` is gone.
        """
        stat = path.stat()
        session_id, version = record["session_id"], record.get("version") or 1
        row = (
            session_id,
            path.name,
            record.get("user_id"),
            record.get(self.spec.entity_field),
            record.get("created_at") or 0,
            record.get("expires_at"),
            version,
            stat.st_mtime_ns,
            stat.st_size,
        )
        times = (record.get("created_at"), record.get("updated_at"))
        stamp = (session_id, version, stat.st_mtime_ns, stat.st_size, *times)
        return [(_SET_ROW, row), (_SET_STAMP, stamp)]

    def _stamp_folder(self, conn: sqlite3.Connection, whole: bool = True) -> None:
        """Records the folder's state as savegame left it, and the mode it indexed.

        ``whole``: whether the index holds every file it could; when it does not (a file
        this process may not read, which another user's process can), no state of the
        folder is recorded, so that the next listing, in any process, reads again the files
        the index does not hold, and the owner of that file finds it listed.
        """
        mtime = str(os.stat(self.dir_path).st_mtime_ns) if whole else ""
        conn.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            # entity_field: what an earlier savegame sharing the folder checks.
            [
                ("folder_mtime_ns", mtime),
                ("mode", self.mode),
                ("entity_field", self.spec.entity_field),
            ],
        )

    def _note_mode(self, conn: sqlite3.Connection) -> None:
        """Records in the index that it holds a row of this mode's, added without recording
        the folder's state (see :meth:`_index_write`).

        The index's ``mode`` says whose sessions its rows are: a listing of that mode reads
        again only the files that changed, one of any other mode reads every file. An index
        with no mode yet takes this one; an index of another mode's rows (a storage of that
        mode listed last) now holds rows of two modes, and is marked so (``""``).
        """
        row = conn.execute("SELECT value FROM meta WHERE key = 'mode'").fetchone()
        if row is None or row[0] != self.mode:
            mode = self.mode if row is None else ""
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('mode', ?)", (mode,))

    def _recorded(self, conn: sqlite3.Connection, mtime_ns: int | None) -> bool:
        """Whether the index was made for this mode and recorded the folder at ``mtime_ns``
        (None: at any time)."""
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("mode") != self.mode:
            return False
        return mtime_ns is None or meta.get("folder_mtime_ns") == str(mtime_ns)

    def _is_fresh(self, conn: sqlite3.Connection) -> bool:
        if conn.execute("SELECT 1 FROM pending LIMIT 1").fetchone():
            return False
        try:
            mtime: int | None = os.stat(self.dir_path).st_mtime_ns
        except FileNotFoundError:
            mtime = None
        return self._recorded(conn, mtime)

    def _fresh_index(self) -> sqlite3.Connection:
        """The index, brought up to date with the files first when it is stale.

        When it cannot be brought up to date (a full disk: it cannot be written, or even
        opened), a private copy in memory of what it holds, brought up to date instead, the
        way :meth:`_reindex` does it; it serves the one listing that holds it.
        """
        conn = self._open_index()
        if conn is not None:
            with self._index_errors():
                fresh = self._is_fresh(conn)
            if fresh:
                return conn
        try:
            with self._folder_locked(), self._index_errors():
                conn = self._open_index()
                if conn is None:
                    return self._index_copy(None)
                if not self._is_fresh(conn):
                    try:
                        self._reindex(conn, full=False)
                    except sqlite3.Error as error:
                        if _damaged(error):
                            raise  # the index is made anew, and the listing runs again
                        if conn.in_transaction:
                            with contextlib.suppress(sqlite3.Error):
                                conn.execute("ROLLBACK")
                        return self._index_copy(conn)
        except BackendUnavailableError as exc:
            if not _not_writable(exc):
                raise
            # A folder this process cannot write to (a read-only mount, another user's):
            # no lock can be taken there, nor is one needed to read whole files, which every
            # writer puts in place by a rename.
            with self._index_errors():
                return self._index_copy(self._open_index(), tidy=False)
        return conn

    def _index_copy(self, conn: sqlite3.Connection | None, tidy: bool = True) -> sqlite3.Connection:
        """A copy in memory of the index (an empty one when ``conn`` is None, or cannot be
        copied), brought up to date with the files; must hold the lock unless ``tidy`` is
        False (see :meth:`_reindex`).

        An index in WAL mode that this process cannot write to can refuse to be copied
        while another process writes it ("attempt to write a readonly database"): the copy
        is then made from the files alone.
        """
        copy = sqlite3.connect(":memory:", isolation_level=None)
        try:
            copied = False
            if conn is not None:
                try:
                    conn.backup(copy)
                    copied = True
                except sqlite3.Error:
                    copy.close()
                    copy = sqlite3.connect(":memory:", isolation_level=None)
            if not copied:
                copy.executescript(_INDEX_SCHEMA)
            self._reindex(copy, full=False, tidy=tidy)
        except BaseException:
            copy.close()
            raise
        return copy

    def _show_change(self, before: int) -> None:
        """Makes a change to the folder that the index could not record visible to every
        process; must hold the lock.

        ``before`` is the folder's modification time before the change, which is the time the
        index recorded or a later one: while the folder's time differs from it, every process
        finds the index stale and brings it up to date (or lists from a copy) before it lists.
        A change within one tick of the file system's clock leaves the time as it was, so the
        folder is touched again once the clock has moved on.
        """
        deadline = time.monotonic() + _TICK_TIMEOUT
        while os.stat(self.dir_path).st_mtime_ns == before:
            if time.monotonic() > deadline:
                raise BackendUnavailableError(
                    f"the modification time of the folder {self.dir_path} stays at "
                    f"{before} ns: a change the index could not record would not be seen"
                )
            time.sleep(0.001)
            os.utime(self.dir_path)

    def _index_write(
        self,
        conn: sqlite3.Connection | None,
        statements: list[tuple[str, tuple[Any, ...]]],
        stamp: bool = True,
        before: int | None = None,
        adds: bool = False,
        whole: bool = True,
    ) -> bool:
        """Runs ``statements`` on the index in one transaction, recording the folder's state
        too when ``stamp``; False, having changed nothing, when the index cannot be written
        (or is None: it could not be opened).

        ``before``, the folder's modification time before this change: the folder's state is
        recorded only when the index recorded that one. Otherwise the folder changed in a way
        the index does not know (a removal it could not record on a full disk, another
        program's edit), and recording the time now would hide that change from every
        process; the index stays stale, and the next listing brings it up to date. ``adds``:
        ``statements`` add a row of this storage's mode, which the index then records
        (:meth:`_note_mode`). ``whole``: as for :meth:`_stamp_folder`.
        """
        if conn is None:
            return False
        try:
            conn.execute("BEGIN")
            for sql, args in statements:
                conn.execute(sql, args)
            if stamp and self.dir_path.is_dir():
                if before is None or self._recorded(conn, before):
                    self._stamp_folder(conn, whole)
                elif adds:
                    self._note_mode(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            _uninterrupted(self._roll_back)
            if not isinstance(exc, sqlite3.Error):
                raise
            return False
        return True

    @_again_if_index_damaged
    def unreadable(self) -> list[str]:
        """Why each file of this format that listings leave out is left out, one line a
        file naming it: a file that cannot be parsed, holds no session, holds a session
        whose file it is not, holds a time or an id savegame cannot read, or holds fields
        that no one mode's session has together.

        Listings leave such files out, so that one damaged file never breaks them: a backup
        (``savegame export``, ``copy``) asks this to say what it left behind. A file of
        another mode's session is not counted; it is that mode's (see "One mode" above).

        Raises:
            BackendUnavailableError: when the folder or its index cannot be read.
        """
        if not self._made():
            return []
        conn = self._fresh_index()
        with self._index_errors():
            listed = {file for (file,) in conn.execute("SELECT file FROM sessions")}
        found: list[str] = []
        ext = self.format.extension
        for entry in self._session_files():
            if entry.name in listed:
                continue
            path = Path(entry.path)
            hidden = _hidden(entry.name)
            try:
                record = self._load(path, None)
            except CorruptSessionError as exc:
                if not hidden:
                    found.append(str(exc))
                continue
            except _CannotRead as exc:
                if not hidden:
                    found.append(f"{path} cannot be read: {exc.__cause__}")
                continue
            if record is None:
                continue  # removed since the listing
            if hidden and entry.name != record["session_id"] + ext:
                continue
            own = file_name(record["session_id"], self.format.extension)
            if entry.name != own:
                found.append(f"{path} holds session {record['session_id']!r}, whose file is {own}")
            elif not modes_of(record):
                # Fields no one mode's session has together (a key added by hand, another
                # program's): no storage lists it, and its read raises.
                odd = sorted(
                    k for k, v in record.items() if v is not None and k not in self.spec.fields
                )
                found.append(
                    f"{path} holds session {record['session_id']!r} with {', '.join(odd)}, "
                    "which no session class has beside its other fields"
                )
        return found

    def upgrade_schema(self) -> None:
        """Renames each file the original named after a session id that savegame names
        otherwise (``my chat.json``, ``a@b.com.json``: see the module docstring) to
        savegame's name. Such a session is read and listed before too, and a write or a
        removal of it renames it first; a session savegame keeps under its own name beside
        it is kept, and the original's file left as it was (:meth:`unreadable` names it).
        Sessions of another mode stay as they are.

        Raises:
            BackendUnavailableError: when the folder cannot be locked, read or written.
        """
        if not self._made():
            return
        ext = self.format.extension
        with self._locked() as conn:
            with os.scandir(self.dir_path) as entries:
                names = [e.name for e in entries if e.name.endswith(ext) and e.is_file()]
            for name in names:
                path = self._originals_path(name[: -len(ext)])
                if path is not None and path.name == name:
                    self._adopt(name[: -len(ext)])
            self._reindex(conn, full=False)

    @_again_if_index_damaged
    def rebuild_index(self) -> None:
        """Reads every file again and rebuilds the index from them.

        Needed only after other programs edited session files in place; savegame notices
        files added, replaced or removed by itself. A damaged index is made anew.
        """
        with self._locked() as conn:
            self._reindex(conn, full=True)

    def _reindex(self, conn: sqlite3.Connection, full: bool, tidy: bool = True) -> None:
        """Makes the index agree with the files; must hold the lock when ``tidy``, which
        removes the temporary files of writers that died.

        Files whose size and modification time match their index row are not opened again
        (unless ``full``, or the index was made for another mode). Files that cannot be
        parsed, and sessions of another mode (:func:`~savegame.storage.session.modes_of`),
        are left out of the index, so one damaged file, or a session of another mode that an
        earlier savegame let into the folder, never breaks a listing; ``read`` of it raises
        CorruptSessionError. Temporary files can only be left by a writer that died, since
        writers hold the lock.
        """
        if not self._recorded(conn, None):
            full = True  # its rows are of another mode's sessions, or of several modes'

        if not self.dir_path.is_dir():
            conn.execute("DELETE FROM sessions")
            conn.execute("DELETE FROM pending")
            conn.execute("DELETE FROM stamps")
            return
        if tidy:
            for entry in os.scandir(self.dir_path):
                if _TEMP_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    Path(entry.path).unlink(missing_ok=True)
        known = {
            row[0]: row[1:]
            for row in conn.execute("SELECT file, session_id, mtime_ns, size FROM sessions")
        }
        pending = {row[0] for row in conn.execute("SELECT session_id FROM pending")}
        conn.execute("BEGIN")
        seen: set[str] = set()
        whole = True
        for entry in self._session_files():
            old = known.get(entry.name)
            indexed = self._index_file(conn, entry, None if full else old, pending)
            if indexed is None:
                whole = False
            elif indexed:
                seen.add(entry.name)
        gone = [(name,) for name in known if name not in seen]
        conn.executemany("DELETE FROM sessions WHERE file = ?", gone)
        if gone:
            conn.execute(
                "DELETE FROM stamps WHERE session_id NOT IN (SELECT session_id FROM sessions)"
            )
        conn.execute("DELETE FROM pending")
        self._stamp_folder(conn, whole)
        conn.execute("COMMIT")

    def _index_file(
        self,
        conn: sqlite3.Connection,
        entry: os.DirEntry[str],
        old: tuple[Any, ...] | None,
        pending: set[str],
    ) -> bool | None:
        """Indexes the session file ``entry``, unless its size and modification time match
        ``old``, its index row (None: read it anyway), and its session is not ``pending``.

        Returns:
            True when the file is indexed; False when it is left out (removed since the
            folder was listed, damaged, not named for its session, or of another mode);
            None when it could not be read now, and the index is not whole.
        """
        try:
            stat = entry.stat()
        except FileNotFoundError:
            return False  # removed since the folder was listed (see below)
        if (
            old is not None
            and old[0] not in pending
            and (old[1], old[2]) == (stat.st_mtime_ns, stat.st_size)
        ):
            return True
        try:
            record = self._load(Path(entry.path), None)
        except CorruptSessionError:
            return False
        except _CannotRead:
            return None
        if (
            record is None
            or not self._named_for(entry.name, record["session_id"])
            or self.mode not in modes_of(record)
        ):
            return False
        try:
            rows = self._rows(record, Path(entry.path))
        except FileNotFoundError:
            # Removed since it was read: only by another process when this one does not
            # hold the lock (a folder it cannot write to), or by hand.
            return False
        for sql, row in rows:
            conn.execute(sql, row)
        return True

    def _named_for(self, name: str, session_id: str) -> bool:
        """Whether the file ``name`` is the one ``session_id`` is read from: savegame's
        name for it, or the original's while there is no file of savegame's name."""
        if name == file_name(session_id, self.format.extension):
            return True
        originals = self._originals_path(session_id)
        return (
            originals is not None and originals.name == name and not self._path(session_id).exists()
        )

    def update(self, session_id: str, fn: Callable[[Any], Any], *, max_attempts: int = 50) -> Any:
        """:meth:`Storage.update` holding the folder's lock from the read to the write.

        Other writers wait while ``fn`` runs, so the write never meets a conflict and never
        runs again: with many processes on one folder, a retrying writer could lose every
        race to the others, who write faster than it reads and writes again. What ``fn``
        raises (an ``OSError`` of a file of its own, say) is raised as it is: the read and
        the write turn only their own failures into savegame's errors.
        """
        # Before the lock: a call that cannot run waits for no other writer.
        check_update(session_id, fn, max_attempts)
        with self._folder_locked():
            return super().update(session_id, fn, max_attempts=max_attempts)

    # -- primitives -----------------------------------------------------------------------

    def _read(self, session_id: str) -> Record | None:
        path = self._path(session_id)
        try:
            record = self._load(path, session_id)
            if record is None and self._originals_path(session_id) is not None:
                # Again after the original's file: a writer may have renamed it meanwhile.
                record = self._load_originals(session_id) or self._load(path, session_id)
        except _FileOfAnother:
            return None
        if record is not None:
            self._refuse_other_mode(record, "read")
        return record

    def _header(self, conn: sqlite3.Connection, path: Path, session_id: str) -> Header | None:
        """The stored header, from the index when it matches the file, else from the file.

        A row marked pending is never trusted: the file was replaced after it (a write whose
        index could not be written, or was killed), and on a file system whose clock counts
        in seconds the new file can have the old one's time and size.

        Raises:
            CorruptSessionError: when the file holds a session of another mode, which a
                write must not replace.
            InvalidIdentifierError: when the file is another session's file under another
                name (see the module docstring).
        """
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        row = conn.execute(
            "SELECT version, created_at, expires_at, mtime_ns, size FROM sessions "
            "WHERE session_id = ? AND session_id NOT IN (SELECT session_id FROM pending)",
            (session_id,),
        ).fetchone()
        if row is not None and (row[3], row[4]) == (stat.st_mtime_ns, stat.st_size):
            return Header(row[0], row[1], row[2])
        try:
            record = self._load(path, session_id)
        except _FileOfAnother as exc:
            raise InvalidIdentifierError(str(exc)) from None
        except CorruptSessionError:
            return None  # a damaged file is replaced by the write, as if it were not there
        if record is None:
            return None
        # The index never holds a session of another mode (an earlier savegame let some
        # into the folder), so one is met here: it stays, to be read in its own mode.
        self._refuse_other_mode(record, "replace")
        return Header.of(record)

    @_again_if_index_damaged
    def _write(
        self, draft: Draft, expected_version: int | None, now: int, preserve: bool
    ) -> Record:
        session_id = draft.session_id
        path = self._path(session_id)
        with self._locked() as conn:
            self._claim()
            self._adopt(session_id)
            header = self._header(conn, path, session_id)
            record = self._stamp(draft.record, header, expected_version, now, preserve)
            before = os.stat(self.dir_path).st_mtime_ns
            # The file first: a write that fails for want of space leaves the index as it was.
            temp = self._temp_file(path, self.format.dump(record))
            try:
                conn.execute("INSERT OR REPLACE INTO pending VALUES (?)", (session_id,))
                os.replace(temp, path)
            except BaseException as exc:
                # The mark stays: it may be an earlier write's, whose index update failed,
                # and costs the next listing no more than reading this file again.
                temp.unlink(missing_ok=True)
                if isinstance(exc, OSError):
                    raise self._failed(f"cannot write {path}", exc) from exc
                raise
            sync_folder(self.dir_path)
            # The session is written: an index that cannot record it now keeps the mark,
            # and the next listing reads the file again.
            self._index_write(
                conn,
                [
                    *self._rows(record, path),
                    ("DELETE FROM pending WHERE session_id = ?", (session_id,)),
                ],
                before=before,
                adds=True,
            )
        return record

    def _delete(
        self, session_id: str, owner: str | None = None, version: int | None = None
    ) -> bool:
        removed: list[str] = []
        self._remove(
            [session_id], lambda _, record: kept_from_delete(record, owner, version), removed
        )
        return bool(removed)

    def _delete_many(self, session_ids: list[str], removed: list[str], still: Still) -> None:
        versions = still.versions

        def kept(session_id: str, record: Record) -> bool:
            version = None if versions is None else versions[session_id]
            return kept_from_delete(record, still.owner, version)

        self._remove(session_ids, kept, removed)

    @_again_if_index_damaged
    def _remove(
        self,
        session_ids: list[str],
        kept: Callable[[str, Record], bool],
        removed: list[str],
        damaged_too: bool = True,
    ) -> None:
        """Removes the files of ``session_ids`` but those whose stored record ``kept`` keeps,
        under one hold of the lock, with two index writes and one sync of the folder for
        them all; appends the id of each file to ``removed`` as it is removed, so that a
        caller stopped half-way (Ctrl-C) knows how far the removal got. A file removed
        before the index records it is marked pending there, as for one removal.

        A damaged file is removed like any other, unless ``damaged_too`` is False: its
        CorruptSessionError is then raised, before anything is removed.
        """
        if not self._made():
            return  # nothing to remove: the folder is not made for it
        with self._folder_locked(), self._index_errors():
            doomed: list[str] = []
            for session_id in session_ids:
                self._adopt(session_id)
                try:
                    record = self._load(self._path(session_id), session_id)
                except _FileOfAnother:
                    continue
                except CorruptSessionError:
                    if not damaged_too:
                        raise
                    record = None
                if record is not None:
                    self._refuse_other_mode(record, "delete")
                    if kept(session_id, record):
                        continue
                doomed.append(session_id)
            if not doomed:
                return
            conn = self._open_index()
            self._uncleared = True
            # An index that cannot be written (a full disk) does not keep the files: removing
            # them frees space, and the folder's time tells every process of it.
            before = os.stat(self.dir_path).st_mtime_ns
            marked = self._index_write(
                conn,
                [("INSERT OR REPLACE INTO pending VALUES (?)", (sid,)) for sid in doomed],
                stamp=False,
            )
            start = len(removed)
            for session_id in doomed:
                with contextlib.suppress(FileNotFoundError):
                    self._path(session_id).unlink()
                    removed.append(session_id)
            gone = len(removed) > start
            if gone:
                sync_folder(self.dir_path)
            recorded = self._index_write(
                conn,
                [
                    (f"DELETE FROM {table} WHERE session_id = ?", (sid,))
                    for sid in doomed
                    for table in ("sessions", "stamps", "pending")
                ],
                before=before,
            )
            if gone and not recorded and not marked:
                self._show_change(before)

    @_again_if_index_damaged
    def _list(
        self, user_id: str | None, entity_id: str | None, limit: int | None, now: int | None
    ) -> list[str]:
        if not self._made():
            return []
        conn = self._fresh_index()
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("user_id", user_id), ("entity_id", entity_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if now is not None:
            where.append("(expires_at IS NULL OR expires_at > ?)")
            args.append(now)
        sql = "SELECT session_id FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, session_id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._index_errors():
            return [row[0] for row in conn.execute(sql, args)]

    @_again_if_index_damaged
    def _read_stamps(self, ids: list[str], now: int) -> list[Stamp | None]:
        """The stamps from the index, brought up to date as a listing brings it.

        Each file is looked at (its modification time and size, not its text): one edited
        in place since it was indexed (by another program, keeping the folder's time) is
        read, as are those whose times the index does not hold (:meth:`_file_stamps`)."""
        if not ids or not self._made():
            return [None] * len(ids)
        conn = self._fresh_index()
        found: dict[str, Stamp | None] = {}
        unknown: dict[str, str] = {}
        with self._index_errors():
            for start in range(0, len(ids), _STAMP_BATCH):
                chunk = ids[start : start + _STAMP_BATCH]
                sql = _STAMPS.format(", ".join("?" * len(chunk)))
                for row in conn.execute(sql, chunk).fetchall():
                    session_id, file, mtime_ns, size, expires, version, held = row[:7]
                    try:
                        stat = os.stat(self.dir_path / file)
                    except FileNotFoundError:
                        continue  # removed since the listing
                    if (stat.st_mtime_ns, stat.st_size) != (mtime_ns, size) or not held:
                        unknown[session_id] = file
                    elif not is_expired(expires, now):
                        found[session_id] = Stamp(session_id, row[7], row[8], version)
        if unknown:
            found.update(self._file_stamps(unknown, now))
        return [found.get(session_id) for session_id in ids]

    def _file_stamps(self, files: dict[str, str], now: int) -> dict[str, Stamp | None]:
        """The stamps of the sessions of ``files`` (each session's file, by id), whose times
        the index does not hold (an index an earlier savegame wrote), read from the files;
        recorded in the index for the next purge where the folder can be locked (not one
        this process cannot write to)."""
        try:
            with self._folder_locked():
                return self._stamps_read(files, now, self._open_index())
        except BackendUnavailableError as exc:
            if not _not_writable(exc):
                raise
        return self._stamps_read(files, now, None)

    def _stamps_read(
        self, files: dict[str, str], now: int, index: sqlite3.Connection | None
    ) -> dict[str, Stamp | None]:
        """:meth:`_file_stamps`, recording them in ``index`` (must hold the lock) when set."""
        found: dict[str, Stamp | None] = {}
        statements: list[tuple[str, tuple[Any, ...]]] = []
        for session_id, file in files.items():
            path = self.dir_path / file
            try:
                record = self._load(path, session_id)
            except _FileOfAnother:
                record = None
            if record is None or is_expired(record.get("expires_at"), now):
                found[session_id] = None
                continue
            self._refuse_other_mode(record, "read")
            if index is not None:
                with contextlib.suppress(FileNotFoundError):
                    statements.append(self._rows(record, path)[1])
            found[session_id] = self._stamp_of(record)
        if statements:
            self._index_write(index, statements, stamp=False)
        return found

    def _purge_expired(self, now: int) -> int:
        if not self._made():
            return 0
        ids = self._expired(now)
        purged: list[str] = []
        for start in range(0, len(ids), USER_BATCH):
            self._remove(
                ids[start : start + USER_BATCH],
                lambda _, record: not is_expired(record.get("expires_at"), now),
                purged,
                damaged_too=False,
            )
        return len(purged)

    @_again_if_index_damaged
    def _expired(self, now: int) -> list[str]:
        """The ids of the sessions the index holds as expired at ``now``."""
        conn = self._fresh_index()
        with self._index_errors():
            return [
                row[0]
                for row in conn.execute(
                    "SELECT session_id FROM sessions WHERE expires_at <= ?", (now,)
                )
            ]

    @_again_if_index_damaged
    def drop(self) -> None:
        """Removes this format's session files and its index; other files stay: the files
        of sessions of another mode (a storage of the wrong mode drops none of them), and
        files of this format that are no session's file (see :meth:`_dropped`). The
        folder's mode is forgotten with its last session file."""
        if not self._made():
            return
        with self._folder_locked(), self._index_errors():
            conn = self._open_index()
            before = os.stat(self.dir_path).st_mtime_ns
            # Files the index holds, fresh and of this mode, are this mode's sessions; only
            # the others are read to find those of another mode.
            ours: set[str] = set()
            if conn is not None and self._recorded(conn, before):
                ours = {
                    file
                    for (file,) in conn.execute(
                        "SELECT file FROM sessions"
                        " WHERE session_id NOT IN (SELECT session_id FROM pending)"
                    )
                }
            removed: list[os.DirEntry[str]] = []
            kept = 0
            whole = True
            for entry in self._session_files():
                try:
                    dropped = entry.name in ours or self._dropped(Path(entry.path))
                except _CannotRead:
                    # Another user's, say: it may be a session of this mode or another,
                    # and keeps the folder's mode; unreadable() names it.
                    dropped, whole = False, False
                if dropped is None:
                    continue
                if dropped:
                    removed.append(entry)
                else:
                    kept += 1
            for entry in removed:
                Path(entry.path).unlink(missing_ok=True)
            if not kept:
                self._mode_path.unlink(missing_ok=True)
            sync_folder(self.dir_path)
            emptied = [
                ("DELETE FROM sessions", ()),
                ("DELETE FROM stamps", ()),
                ("DELETE FROM pending", ()),
            ]
            self._uncleared = True
            if not self._index_write(conn, emptied, whole=whole) and removed:
                self._show_change(before)
        self._erased()

    def _dropped(self, path: Path) -> bool | None:
        """Whether :meth:`drop` removes ``path``, a file the index does not hold as one of
        this mode's sessions: True for a session's own file (named after the session it
        holds, by savegame or by the original, damaged or not) of this mode; False for one
        of another mode's session, which keeps the folder's mode; None for a file that is no
        session's file, which stays.

        A file that holds no session (another program's ``package.json``, one cut short)
        or a session under another name (a copy made by hand) is not the storage's: it
        never listed or read it, and a folder shared with other files (a project's root)
        must lose none of them.

        Raises:
            BackendUnavailableError: when ``path`` cannot be read.
        """
        try:
            data = self.format.load(path.read_bytes())
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _CannotRead(f"cannot read {path}: {exc}") from exc
        except (ValueError, StorageError):
            return None
        session_id = data.get("session_id") if isinstance(data, dict) else None
        if not isinstance(session_id, str) or not self._named_for(path.name, session_id):
            return None
        return self._other_mode(data) is None

    def store_names(self) -> tuple[object, ...]:
        return (os.path.realpath(self.dir_path),)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.dir_path)!r}, mode={self.mode!r})"


class _CannotRead(BackendUnavailableError):
    """A file of the folder that this process cannot read: one of another user's, made
    readable to that user only, say. Listings leave it out as they leave out a damaged file,
    and :meth:`FileStorage.unreadable` names it; its ``read`` raises this."""


class _FileOfAnother(CorruptSessionError):
    """The file of a session id is, under another name, the file of another session: the
    folder's file system takes two names for one (one that ignores case takes ``abc.json``
    for ``Abc.json``). The id's session is not there, and its write or delete would replace
    or remove the other session."""


_Folder = TypeVar("_Folder", bound=FileStorage)


def open_folder(cls: type[_Folder], url: StorageURL) -> _Folder:
    """A ``cls`` storage of the folder ``url`` names, with the URL's ``expire`` and
    ``lock_timeout`` (the constructor's default when absent)."""
    options: dict[str, Any] = {}
    lock_timeout = url.pop_number("lock_timeout")
    if lock_timeout is not None:
        options["lock_timeout"] = lock_timeout
    return cls(url.path, mode=url.mode, expire=url.pop_int("expire"), **options)  # type: ignore[arg-type]


def _hidden(name: str) -> bool:
    """Whether the file ``name`` is hidden: one of the original's sessions (``.x.json``)
    is listed, but :meth:`FileStorage.unreadable` names one only when it holds the session
    it is named after, as other programs keep hidden files of their own in a folder."""
    return name.startswith(".")


_CORRUPT, _NOTADB = 11, 26
"""SQLite's result codes for a database file that is damaged, or is no database."""


def _damaged(exc: BaseException | None) -> bool:
    """Whether ``exc`` is SQLite's report of a damaged database (Python 3.10's sqlite3
    gives the message only)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (_CORRUPT, _NOTADB):
        return True
    text = str(exc)
    if "Could not decode" in text:
        return True  # text of the index, damaged, that Python cannot decode
    return code is None and ("malformed" in text or "not a database" in text)


def _same_file(path: Path, other: Path) -> bool:
    """Whether ``path`` and ``other`` name one file, not counting symbolic links (a write
    replaces a link, not the file it leads to)."""
    try:
        a, b = os.lstat(path), os.lstat(other)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _not_writable(exc: BaseException) -> bool:
    """Whether ``exc`` was raised because a file or folder could not be written to: on a
    read-only file system, or without the permission."""
    cause = exc.__cause__
    return isinstance(cause, OSError) and cause.errno in (errno.EROFS, errno.EACCES, errno.EPERM)


def _only_interrupts(exc: BaseException) -> bool:
    """Whether ``exc`` is a KeyboardInterrupt, or a group of exceptions (an
    ``ExceptionGroup``, nested or not) that holds nothing else."""
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, tuple) and inner:
        return all(_only_interrupts(e) for e in inner)
    return isinstance(exc, KeyboardInterrupt)
