"""Working on whole stores: export and import as JSON lines, copy between backends, statistics,
purge by age, and erasure of everything one user has.

These are the library functions behind the ``savegame`` command; they raise the errors of
:mod:`savegame.errors` and leave messages and exit codes to the command line.

The export format is JSON lines: one session a line, a JSON object of every field of the
session (``version``, ``created_at`` and ``updated_at`` included), in UTF-8. The session's
fields are sorted; the dicts inside them keep their keys in the order they were stored, since
that order is part of the session (a run written as ``{"role", "content"}`` reads back so).
A line ends at ``"\\n"`` only: text in a session may hold U+2028, U+0085 and the other
characters that :meth:`str.splitlines` also breaks at, and the line holds them as they are.
Importing it with :func:`import_sessions` into an empty store of a backend that keeps key
order (every one but PostgreSQL, whose JSONB orders keys its own way) and exporting again
gives the same lines, because import goes through
:meth:`~savegame.storage.base.Storage.restore`, which keeps timestamps and version.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from savegame.errors import (
    BackendUnavailableError,
    ConflictError,
    CorruptSessionError,
    InvalidIdentifierError,
    SerializationError,
    StorageError,
)
from savegame.storage.base import USER_BATCH, Stamp, Still, Storage
from savegame.storage.codec import MAX_DEPTH, check_id, dumps, encode
from savegame.storage.session import MODES, ModeSpec, Session, get_path
from savegame.storage.url import open_storage, parse_url

DEFAULT_BATCH_SIZE = 100
"""How many sessions :func:`copy_sessions` reads and writes between two progress reports."""

STAMP_BATCH = USER_BATCH
"""How many sessions' headers a purge reads at a time (:func:`read_stamps`)."""

BYTE_ORDER_MARK = "\ufeff"
"""What Notepad and PowerShell write at the start of a UTF-8 file; :func:`import_sessions`
skips it."""

SESSION_NAME = ("session_data", "session_name")
"""Where a session keeps the name a person gave it."""


def session_line(session: Session) -> str:
    """One line of the export format for ``session``, without the newline.

    Text that is not valid Unicode (a lone surrogate) is written as a JSON escape, so the
    line always encodes to UTF-8.

    Raises:
        SerializationError: when the session holds a value JSON cannot carry, or a string
            that it would give back changed (a surrogate pair as two code points), as a
            write to a store would.
    """
    encoded = encode(session.to_dict())
    # The fields alone are sorted: ``sort_keys`` would sort every dict inside them too, and
    # the order of those keys is the session's own.
    return dumps({key: encoded[key] for key in sorted(encoded)})


_ONE_A_LINE = (
    "; the export format is one session a line, as savegame export writes it, not indented "
    "JSON nor an array (as sessions show --json and sessions list --json print)"
)
"""Said of a line that starts a JSON value spread over lines, or holds an array."""


def parse_line(spec: ModeSpec, line: str, where: str = "line") -> Session:
    """The session that one line of the export format holds.

    Raises:
        SerializationError: when the line is not a JSON object, has no ``session_id``, holds
            an object with a key twice (at any depth), nests too deeply for a session
            (:data:`~savegame.storage.codec.MAX_DEPTH`) to be read at all, or has fields
            that sessions of ``spec.mode`` do not have (an export of another mode).
    """
    try:
        data = json.loads(line, object_pairs_hook=_unique_keys)
    except RecursionError:
        # The parser recurses once a level: a line nested some thousand levels deep, which
        # no session can hold, ends it before the session's own check can say so.
        raise SerializationError(f"{where}: nested deeper than {MAX_DEPTH} levels") from None
    except _KeyTwiceError as exc:
        raise SerializationError(
            f"{where}: the key {exc.key!r} is in one JSON object twice; which value is meant "
            "cannot be told, and an export never writes a key twice"
        ) from None
    except ValueError as exc:
        indented = line.strip() in ("{", "[")
        raise SerializationError(
            f"{where}: not JSON ({exc}){_ONE_A_LINE if indented else ''}"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("session_id"), str):
        raise SerializationError(
            f"{where}: not a session (a JSON object with a session_id)"
            f"{_ONE_A_LINE if isinstance(data, list) else ''}"
        )
    known = {f.name for f in fields(spec.session_class)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SerializationError(
            f"{where}: fields {', '.join(unknown)} are not fields of {spec.mode} sessions; "
            "is this an export of another mode?"
        )
    session = spec.session_class.from_dict(data)
    assert session is not None
    return session


class _KeyTwiceError(Exception):
    """Raised out of :func:`json.loads` by :func:`_unique_keys`; not a ValueError, which
    would be taken for text that is not JSON."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The object of ``pairs``; :func:`json.loads` alone keeps the last value of a key given
    twice and drops the others unseen."""
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _KeyTwiceError(key)
            seen.add(key)
    return data


def iter_sessions(
    storage: Storage,
    user_id: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    damaged: list[str] | None = None,
) -> Iterator[Session]:
    """Every session of ``storage`` (of ``user_id``), newest first, read a batch at a time.

    Sessions deleted while the iteration runs are left out. A store whose table does not
    exist yet holds no sessions.

    Args:
        damaged: where given, a session that cannot be read (a row edited by hand, a run
            lost) is left out and why is added to it, one line a session; otherwise its
            CorruptSessionError is raised.
    """
    if not storage.table_exists():
        return
    ids = storage.get_all_session_ids(user_id=user_id)
    for start in range(0, len(ids), batch_size):
        yield from read_sessions(storage, ids[start : start + batch_size], damaged)


def read_sessions(storage: Storage, ids: list[str], damaged: list[str] | None) -> list[Session]:
    """The sessions among ``ids`` that are stored, in order (see :func:`iter_sessions` for
    ``damaged``): read together, or one by one once one of them cannot be read.

    Raises:
        CorruptSessionError: for a store that cannot be read as a whole (a SQL table of
            another mode, opened with the wrong ``mode``), even with ``damaged``: after the
            failed read, its listings fail too, where a damaged session fails only its own.
    """
    return _each_readable(
        storage, ids, damaged, lambda some: storage._read_sessions(some, remember=False)
    )


_T = TypeVar("_T")


def _each_readable(
    storage: Storage,
    ids: list[str],
    damaged: list[str] | None,
    read: Callable[[list[str]], Sequence[_T | None]],
) -> list[_T]:
    """What ``read(ids)`` gives of each of ``ids`` that is stored, in order, None left out;
    with ``damaged``, once ``read`` meets a session that cannot be read, ``read`` of each id
    alone, and why each such session was left out added to ``damaged`` (see
    :func:`read_sessions`)."""
    try:
        return [found for found in read(ids) if found is not None]
    except CorruptSessionError:
        if damaged is None:
            raise
        # Each session of such a store would be told as damaged, and a count, listing or
        # purge of it would end as if it held none.
        storage.get_recent_sessions(limit=0)
    kept: list[_T] = []
    for session_id in ids:
        try:
            kept.extend(found for found in read([session_id]) if found is not None)
        except CorruptSessionError as exc:
            damaged.append(str(exc))
    return kept


def export_sessions(
    storage: Storage,
    write: Callable[[str], Any],
    user_id: str | None = None,
    damaged: list[str] | None = None,
) -> int:
    """Writes every session of ``storage`` (of ``user_id``) as export lines; returns how many.

    Args:
        storage: where the sessions are.
        write: called with each line, newline included (``sys.stdout.write``, say).
        user_id: only this user's sessions.
        damaged: as for :func:`iter_sessions`.

    Raises:
        SerializationError: naming the first session that holds a value JSON lines cannot
            carry (a NaN in a table the original wrote), after the lines before it.
    """
    count = 0
    for session in iter_sessions(storage, user_id, damaged=damaged):
        write(export_line(session))
        count += 1
    return count


def export_line(session: Session, done: str = "exported") -> str:
    """What an export writes for ``session``: its line and the newline that ends it.

    Raises:
        SerializationError: as :func:`session_line`, naming the session: ``session 'x'
            cannot be {done}: ...``.
    """
    try:
        return session_line(session) + "\n"
    except SerializationError as exc:
        raise SerializationError(f"session {session.session_id!r} cannot be {done}: {exc}") from exc


@dataclass
class Report:
    """What :func:`copy_sessions` or :func:`import_sessions` did.

    Attributes:
        total: sessions found in the source.
        copied: sessions written to the destination.
        unchanged: sessions the destination already held exactly as in the source.
        vanished: sessions deleted from the source while the copy ran.
        repaired: the ids of sessions written over a stored copy that could not be read
            (a damaged file), which the destination replaced (among ``copied``).
        kept: the ids of sessions the destination holds saved later than the source's
            copy (users went on there), which were left as they are.
    """

    total: int = 0
    copied: int = 0
    unchanged: int = 0
    vanished: int = 0
    repaired: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def how_far(self, verb: str) -> str:
        """How far an import or copy (``verb``) that stopped got: how many sessions it had
        stored or found there, which running it again skips."""
        done = self.copied + self.unchanged + len(self.kept)
        if done == 0:
            return f"the {verb} stopped before storing any session"
        whole = f"{self.total} session{'s' * (self.total != 1)}"
        kept = f", {len(self.kept)} newer there kept" if self.kept else ""
        return (
            f"the {verb} stopped having stored {done} of {whole} ({self.copied} written, "
            f"{self.unchanged} already there{kept}), which running it again skips"
        )


def _exact_text(session: Session, ordered: bool = True) -> str:
    """The JSON text of ``session`` but its version, which two sessions share only when
    they hold the same.

    ``==`` would call ``1``, ``1.0`` and ``True`` equal and ignore the order of keys; the
    text keeps every type apart. ``ordered``: the order of keys counts too; pass False for a
    store that does not keep it (PostgreSQL's JSONB), whose sessions then compare with their
    keys sorted and ``-0.0`` as ``0.0``, which JSONB gives back for it.

    Raises:
        SerializationError: when the session holds a value JSON cannot carry.
    """
    data = encode(session.to_dict())
    data.pop("version", None)
    text = json.dumps(data, sort_keys=not ordered, separators=(",", ":"))
    if ordered or "-0" not in text:
        return text
    unsigned = json.loads(text, parse_float=_unsigned_zero)
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"))


def _timed_as(session: Session, stored: Session) -> Session:
    """``session`` with the times it lacks (a line written by hand may have none) taken
    from ``stored``, as :meth:`Storage.restore` gave them when it stored it: otherwise it
    would never be found already there, and each run of the import would write it again."""
    missing = {
        name: getattr(stored, name)
        for name in ("created_at", "updated_at")
        if getattr(session, name, None) is None
    }
    return replace(session, **missing) if missing else session


def _unsigned_zero(text: str) -> float:
    """A float of JSON text, with ``-0.0`` (and ``-0e5``, ...) read as ``0.0``."""
    return float(text) or 0.0


def _saved_since(spec: ModeSpec, stored: Session, session: Session) -> bool:
    """Whether ``stored`` was saved after ``session``, the copy of it being moved: users
    went on with the conversation at the destination, and replacing it would lose that.

    It was when it holds a run (by ``run_id``) that ``session`` lacks, whatever the times
    say: they come from the clocks of two machines, which need not agree, and a turn saved
    in the second the copy was made has its ``updated_at``. Otherwise when its
    ``updated_at`` is later: ``restore`` keeps a session's ``updated_at``, so a session
    that an import or a copy wrote, and that nobody saved since, is never newer than its
    source. A line without ``updated_at`` counts as new.
    """
    moved = {_run_id(run) for run in runs_of(spec, session)}
    if any(_run_id(run) not in moved for run in runs_of(spec, stored) if _run_id(run)):
        return True
    updated = session.updated_at  # type: ignore[attr-defined]
    return updated is not None and (stored.updated_at or 0) > updated  # type: ignore[attr-defined]


def _run_id(run: Any) -> str | None:
    """The ``run_id`` of a stored run; None for a run without one (or not an object), which
    cannot be told apart from another."""
    run_id = run.get("run_id") if isinstance(run, dict) else None
    return run_id if isinstance(run_id, str) and run_id else None


def _put_all(
    destination: Storage,
    sessions: list[Session],
    report: Report,
    verb: str,
    where: Callable[[Session], str],
    replace_newer: bool,
) -> None:
    """Restores each session unless ``destination`` holds it already, exactly (see
    :func:`_exact_text`) and at its version or a later one: a session replaced once (whose
    version then went past the source's, see :meth:`Storage.restore`) is not written again
    by the next run. A session that ``destination`` holds saved later than the one given
    (see :func:`_saved_since`) is kept and its id added to ``report.kept``, unless
    ``replace_newer``; so is one saved there while the import or copy runs (see
    :func:`_put`).

    Raises:
        StorageError: of the class of what ``destination`` raised, its message told again
            with the session it refused (named by ``where``) and what the import or copy
            (``verb``) had stored before it, which running it again skips: the user can
            tell what to fix, and that the rest is safe to run again.
    """
    ordered = "key_order" in type(destination).capabilities
    damaged: set[str] = set()
    try:
        there = _held(destination, [s.session_id for s in sessions], damaged)
    except StorageError as exc:
        raise _stopped(exc, f"{exc}", report, verb) from exc
    before = report.copied
    written: list[str] = []
    for session in sessions:
        session_id = session.session_id
        try:
            outcome = _put(
                destination, session, there.get(session_id), ordered, replace_newer, damaged
            )
        except StorageError as exc:
            refused = f"{where(session)} was not stored: {exc}"
            raise _stopped(exc, refused, report, verb) from exc
        if outcome == "unchanged":
            report.unchanged += 1
        elif outcome == "kept":
            report.kept.append(session_id)
        else:
            report.copied += 1
            written.append(session_id)
            if session_id in damaged:
                report.repaired.append(session_id)
    destination._forget_written(written)
    try:
        destination._bulk_written(report.copied - before)
    except StorageError as exc:
        raise _stopped(exc, f"{exc}", report, verb) from exc


_LOOKS = 5
"""How many times :func:`_put` looks at a session that is saved at the destination each time
between its look and its write, before it stops."""


def _put(
    destination: Storage,
    session: Session,
    stored: Session | None,
    ordered: bool,
    replace_newer: bool,
    damaged: set[str],
) -> str:
    """What became of ``session``, which ``destination`` holds as ``stored`` (None: not at
    all, or damaged, its id then in ``damaged``): ``"unchanged"`` or ``"kept"`` (see
    :func:`_put_all`), or ``"copied"``, restored.

    The write is made only over what ``stored`` is (a damaged copy, over whatever is there):
    a session saved at the destination since it was read (by an application already moved
    there) is read again and judged afresh, never written over unseen.

    Raises:
        StorageError: what ``destination`` raised; a ConflictError when the session was
            saved there again each of :data:`_LOOKS` times.
    """
    session_id = session.session_id
    conflict: ConflictError | None = None
    for _ in range(_LOOKS):
        if stored is not None and (
            (stored.version or 1) >= (session.version or 1)  # type: ignore[attr-defined]
            and _exact_text(stored, ordered) == _exact_text(_timed_as(session, stored), ordered)
        ):
            return "unchanged"
        if (
            stored is not None
            and not replace_newer
            and _saved_since(destination.spec, stored, session)
        ):
            return "kept"
        seen = 0 if stored is None else stored.version or 1  # type: ignore[attr-defined]
        try:
            # A damaged copy, which nothing could read, is written over whatever is there.
            destination.restore(session, expected_version=None if session_id in damaged else seen)
        except ConflictError as exc:
            conflict = exc
            stored = _held(destination, [session_id], damaged).get(session_id)
            continue
        return "copied"
    assert conflict is not None
    raise conflict


def _held(destination: Storage, ids: list[str], damaged: set[str]) -> dict[str, Session]:
    """The sessions of ``ids`` that ``destination`` holds, by id. One it holds but cannot
    read (a damaged file) is left out and its id added to ``damaged``: restoring the good
    copy over it is what an import of a backup is for, and ``restore`` itself refuses to
    write over what it must not (a session of another mode).

    Raises:
        StorageError: when the destination cannot be read at all.
    """
    try:
        return {s.session_id: s for s in destination._read_sessions(ids, remember=False)}
    except CorruptSessionError:
        pass
    held: dict[str, Session] = {}
    for session_id in ids:
        try:
            session = destination.read(session_id)
        except CorruptSessionError:
            damaged.add(session_id)
            continue
        if session is not None:
            held[session_id] = session
    return held


_RETOLD = (
    SerializationError,
    InvalidIdentifierError,
    BackendUnavailableError,
    CorruptSessionError,
    StorageError,
)
"""The public errors whose message an import or a copy that stopped tells again, most
particular first."""


def _stopped(exc: StorageError, what: str, report: Report, verb: str) -> StorageError:
    """An error of ``exc``'s public class saying ``what`` happened, and how far the import
    or copy (``verb``) had got."""
    message = f"{what}; {report.how_far(verb)}"
    if isinstance(exc, ConflictError):
        return ConflictError(exc.session_id, exc.expected, exc.actual, message)
    kind = next(k for k in _RETOLD if isinstance(exc, k))
    return kind(message)


def import_sessions(
    storage: Storage,
    lines: Iterable[str | bytes],
    source: str = "line",
    *,
    report: Report | None = None,
    replace_newer: bool = False,
) -> Report:
    """Stores the session of each line, keeping timestamps and versions.

    Blank lines are skipped. Every line is checked before the first one is written, with the
    checks :meth:`~savegame.storage.base.Storage.upsert` makes, so a file with a bad line
    changes nothing. A session already stored exactly as in the file (the same JSON text:
    ``1``, ``1.0`` and ``true`` differ, and so does the order of keys where the store keeps
    it) is left alone, so importing a file again (after an interruption, say) writes only
    what is missing; one that differs is replaced, unless the store's was saved later than
    the line's (it holds a run the line lacks, or its ``updated_at`` is later): that one is
    kept, and listed in the report's
    ``kept``, so that an old backup never takes back what users did since. A session saved
    in the store while the import runs (by an application already using it) is never
    written over unseen: it is read again and judged as above.

    Args:
        storage: where to store them; its table or folder is created when missing.
        lines: lines of the export format, as text or as UTF-8 bytes, split at ``"\\n"``
            only (see the module docstring); a ``"\\r"`` left at the end of a line, or a
            byte order mark at the start of the first, does no harm.
        source: a name for the lines (a file name) in error messages.
        report: where given, the report to fill in and return, kept up to date as the
            import goes on (its ``total`` set once every line is checked), so that a caller
            cut short (by Ctrl-C, say) can tell how far it got.
        replace_newer: replace the sessions the store holds saved later than the line's
            too (to go back to a backup on purpose).

    Raises:
        SerializationError: naming the first line that is not UTF-8, holds a JSON object
            with a key twice (naming the key), is not a session of this mode, holds a value
            the storage cannot store, or holds a session that an earlier line holds too
            (naming both lines).
        InvalidIdentifierError: naming the first line whose session id, user id or entity id
            the storage refuses.
        StorageError: (the class the storage raised) when a session that passed the checks
            is refused as it is written (one larger than the server takes, say), naming its
            line and id and how many sessions were stored before it; those stay stored.
    """
    sessions: list[Session] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(lines, 1):
        where = f"{source}:{number}"
        line = _decoded(raw, where)
        if number == 1:
            line = line.removeprefix(BYTE_ORDER_MARK)
        if not line.strip():
            continue
        session = parse_line(storage.spec, line, where)
        earlier = first_line.setdefault(session.session_id, number)
        if earlier != number:
            raise SerializationError(
                f"{where}: session {session.session_id!r} is on line {earlier} too; an export "
                "holds each session once"
            )
        _check(storage, session, where)
        sessions.append(session)
    storage.create()
    report = _started(report, len(sessions))

    def line_of(session: Session) -> str:
        return f"{source}:{first_line[session.session_id]}: session {session.session_id!r}"

    for start in range(0, len(sessions), DEFAULT_BATCH_SIZE):
        batch = sessions[start : start + DEFAULT_BATCH_SIZE]
        _put_all(storage, batch, report, "import", line_of, replace_newer)
    return report


def _started(report: Report | None, total: int) -> Report:
    """``report`` (a new one when None), set to count from zero towards ``total``."""
    if report is None:
        return Report(total=total)
    report.total = total
    report.copied = report.unchanged = report.vanished = 0
    report.repaired.clear()
    report.kept.clear()
    return report


def _decoded(line: str | bytes, where: str) -> str:
    """``line`` as text: bytes are decoded as UTF-8, the encoding of an export.

    Raises:
        SerializationError: naming ``where`` and the first byte that is not UTF-8.
    """
    if isinstance(line, str):
        return line
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = line[exc.start : exc.end]
        raise SerializationError(
            f"{where}: not UTF-8 ({exc.reason}: {bad!r} at byte {exc.start + 1} of the line); "
            "an export is UTF-8"
        ) from None


def _check(storage: Storage, session: Session, where: str) -> None:
    """Raises what ``storage.upsert(session)`` would raise for the session itself, writing
    nothing, with ``where`` (a file and line) in front of the message."""
    # ``_prepare`` is the part of every write that checks and encodes the session, before
    # any store is touched; calling it here is the only way to be sure the check is the
    # write's own and cannot drift from it.
    try:
        storage._prepare(session)
        session_line(session)  # what a store would give back changed (a surrogate pair)
    except SerializationError as exc:
        raise SerializationError(f"{where}: {exc}") from exc
    except InvalidIdentifierError as exc:
        raise InvalidIdentifierError(f"{where}: {exc}") from exc


def copy_sessions(
    source: Storage,
    destination: Storage,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_start: Callable[[int], Any] | None = None,
    on_batch: Callable[[int], Any] | None = None,
    damaged: list[str] | None = None,
    report: Report | None = None,
    replace_newer: bool = False,
) -> Report:
    """Copies every session of ``source`` into ``destination``, keeping timestamps and versions.

    Each session is written with one atomic ``restore``, so a copy that is interrupted leaves
    whole sessions only; running it again skips the sessions that arrived (exactly: the
    same JSON text, as :func:`import_sessions` compares them) and copies the rest. A
    session that differs at the destination is replaced by the source's, unless the
    destination's was saved later (users went on with it there, after an earlier copy: it
    holds a run the source's lacks, or its ``updated_at`` is later): that one is kept, and
    listed in the report's ``kept``. A session saved at the
    destination while the copy runs (by an application already moved there) is never
    written over unseen: it is read again and judged as above.

    Args:
        source: the store to read; its mode must be the destination's.
        destination: the store to write; created when missing.
        batch_size: sessions handled between two ``on_batch`` calls.
        on_start: called once with the number of sessions to copy.
        on_batch: called after each batch with the number of sessions it handled.
        damaged: as for :func:`iter_sessions`: a session of the source that cannot be read
            is then left out, said there, and not counted as deleted meanwhile.
        report: as for :func:`import_sessions`: filled in as the copy goes on.
        replace_newer: replace the sessions the destination holds saved later too.

    Raises:
        InvalidIdentifierError: (a ValueError) when the stores are of different modes, or
            ``batch_size`` is below 1; nothing is written.
        StorageError: (the class the destination raised) when it refuses a session as it is
            written, naming the session and how many were stored before it; those stay
            stored.
    """
    if source.mode != destination.mode:
        raise InvalidIdentifierError(
            f"cannot copy {source.mode} sessions into a store of {destination.mode} sessions"
        )
    if batch_size < 1:
        raise InvalidIdentifierError(f"batch size must be at least 1, not {batch_size}")
    ids = source.get_all_session_ids() if source.table_exists() else []
    destination.create()
    report = _started(report, len(ids))
    if on_start is not None:
        on_start(len(ids))
    # Oldest first, so that an interrupted copy leaves the destination a prefix of history
    # and the newest-first listings there never show a session whose elders are missing.
    ids.reverse()
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        before = 0 if damaged is None else len(damaged)
        sessions = read_sessions(source, batch, damaged)
        left_out = 0 if damaged is None else len(damaged) - before
        report.vanished += len(batch) - len(sessions) - left_out
        _put_all(
            destination,
            sessions,
            report,
            "copy",
            lambda s: f"session {s.session_id!r}",
            replace_newer,
        )
        if on_batch is not None:
            on_batch(len(batch))
    return report


@dataclass
class Stats:
    """Figures about one store.

    Attributes:
        sessions: how many sessions it holds (expired ones left out).
        users: distinct user ids among them (sessions without one not counted).
        entities: distinct agent, team or workflow ids among them.
        bytes: the size of their export, in UTF-8: the lines and the newlines that end them,
            as many bytes as :func:`export_sessions` writes.
        oldest: the earliest ``created_at``, or None for an empty store.
        newest: the latest ``updated_at``, or None for an empty store.
    """

    sessions: int = 0
    users: int = 0
    entities: int = 0
    bytes: int = 0
    oldest: int | None = None
    newest: int | None = None


def stats(storage: Storage, user_id: str | None = None, damaged: list[str] | None = None) -> Stats:
    """Counts the sessions of ``storage`` (of ``user_id``); reads each session once.
    ``damaged``: as for :func:`iter_sessions`.

    Raises:
        SerializationError: naming the first session whose export line, which its size is
            counted as, cannot be written (a NaN in a table the original wrote).
    """
    result = Stats()
    users: set[str] = set()
    entities: set[str] = set()
    for session in iter_sessions(storage, user_id, damaged=damaged):
        result.sessions += 1
        result.bytes += len(export_line(session, "measured as an export line").encode("utf-8"))
        user = getattr(session, "user_id", None)
        entity = getattr(session, storage.spec.entity_field, None)
        if user is not None:
            users.add(user)
        if entity is not None:
            entities.add(entity)
        created = getattr(session, "created_at", None)
        updated = getattr(session, "updated_at", None)
        if created is not None and (result.oldest is None or created < result.oldest):
            result.oldest = created
        if updated is not None and (result.newest is None or updated > result.newest):
            result.newest = updated
    result.users = len(users)
    result.entities = len(entities)
    return result


def stale_sessions(storage: Storage, older_than: int, now: int | None = None) -> list[str]:
    """Ids of the sessions not updated for ``older_than`` seconds, newest ``created_at``
    first (ties by id), as listings give them.

    A session without ``updated_at`` is judged by its ``created_at``; one with neither is
    never stale. Only the sessions' headers are read, never their runs (see :func:`purge`).

    Raises:
        InvalidIdentifierError: (a ValueError) for a negative ``older_than``.
    """
    return [session_id for session_id, _ in _stale(storage, older_than, now)]


def _stale(
    storage: Storage, older_than: int, now: int | None = None, damaged: list[str] | None = None
) -> list[tuple[str, int]]:
    """:func:`stale_sessions`, each id with the version it was found at; judged by each
    session's header alone (:func:`read_stamps`)."""
    if older_than < 0:
        raise InvalidIdentifierError(f"the age must not be negative, not {older_than}")
    cutoff = (int(time.time()) if now is None else now) - older_than
    if not storage.table_exists():
        return []
    ids = storage.get_all_session_ids()
    stale = []
    for start in range(0, len(ids), STAMP_BATCH):
        for stamp in read_stamps(storage, ids[start : start + STAMP_BATCH], damaged):
            when = stamp.updated_at if stamp.updated_at is not None else stamp.created_at
            if when is not None and when < cutoff:
                stale.append((stamp.session_id, stamp.version))
    return stale


def read_stamps(storage: Storage, ids: list[str], damaged: list[str] | None) -> list[Stamp]:
    """The :class:`~savegame.storage.base.Stamp` (id, times and version) of each session
    among ``ids`` that is stored and has not expired, in order, read from the sessions'
    headers without their runs (see :func:`read_sessions` for ``damaged``, and for a
    store that cannot be read as a whole). A session whose header can be read is given
    even when its runs are damaged: its age is known."""
    now = int(time.time())
    return _each_readable(storage, ids, damaged, lambda some: storage._read_stamps(some, now))


def purge(
    storage: Storage,
    older_than: int,
    dry_run: bool = False,
    damaged: list[str] | None = None,
    removed: list[str] | None = None,
) -> list[str]:
    """Removes the sessions not updated for ``older_than`` seconds, and the expired ones.

    A session saved again after it was found stale (its user came back while the purge ran)
    is kept: each is removed only while it is still at the version it was found at.

    Each session is judged by its header alone (its times and version, see
    :func:`read_stamps`): a purge reads no run. With ``damaged`` (see
    :func:`iter_sessions`), a session whose header cannot be read (a time or version
    edited by hand into text), whose age is therefore unknown, is kept and said there. One
    whose header is sound but whose runs are damaged (a run lost or edited by hand) has a
    known age, and is removed when stale, as ``delete_session`` removes it, and kept
    unsaid otherwise (a read, an export or a listing of it names the damage).

    With ``removed``, each id is appended to it once removed (the list returned), so that a
    caller stopped half-way (Ctrl-C) knows how far the purge got.

    Returns:
        The ids removed (with ``dry_run``, the ids that would be, and nothing is removed).
        Expired sessions removed on the way are not listed: they were already invisible.

    Raises:
        InvalidIdentifierError: (a ValueError) for a negative ``older_than``; nothing is
            removed.
    """
    stale = _stale(storage, older_than, damaged=damaged)
    if dry_run:
        return [session_id for session_id, _ in stale]
    if removed is None:
        removed = []
    storage._delete_batches(
        [session_id for session_id, _ in stale], removed, Still(versions=dict(stale))
    )
    if storage.table_exists():
        storage.purge_expired()
    return removed


def rename_session(storage: Storage, session_id: str, name: str) -> Session | None:
    """Sets the session's name (``session_data["session_name"]``); None when it is not there.

    Safe against concurrent writers: the change is made with ``update``.
    """

    def rename(session: Session | None) -> Session | None:
        if session is None:
            return None
        data = dict(getattr(session, "session_data", None) or {})
        data[SESSION_NAME[1]] = name
        session.session_data = data  # type: ignore[attr-defined]
        return session

    if not storage.table_exists():
        return None
    result: Session | None = storage.update(session_id, rename)
    return result


def session_name(session: Session) -> str | None:
    """The name a person gave the session, if any."""
    name = get_path(session.to_dict(), SESSION_NAME)
    return name if isinstance(name, str) else None


def runs_of(spec: ModeSpec, session: Session) -> list[Any]:
    """The session's runs (an empty list when it has none)."""
    runs = get_path(session.to_dict(), spec.runs_path)
    return runs if isinstance(runs, list) else []


def left_out(storage: Storage, damaged: list[str]) -> str | None:
    """What to tell a person of the damaged sessions (``damaged``, as :func:`iter_sessions`
    fills it) and the files of ``storage`` that a listing or a count left out; None when
    it left out none."""
    count = len(damaged) + len(storage.unreadable())
    if not count:
        return None
    return (
        f"note: {count} stored item(s) could not be read and are left out; "
        "savegame export names them"
    )


@dataclass
class UserErasure:
    """What :func:`delete_user` removed: how many sessions, per mode searched; and the modes
    whose store was not there (``absent``: a mistyped URL, when it is every mode); and the ids
    removed (``ids``), every mode's, each appended once removed, so that an erasure stopped
    half-way (Ctrl-C) says how far it got."""

    removed: dict[str, int] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Sessions removed in every mode together."""
        return sum(self.removed.values())


def delete_user(
    url: str,
    user_id: str,
    mode: str = "agent",
    erasure: UserErasure | None = None,
    **options: Any,
) -> UserErasure:
    """Removes every session of ``user_id`` from the stores ``url`` names; fills in
    ``erasure`` as it goes, when given, and returns it.

    A SQL or Redis URL without a table or prefix names one store per mode, and each of them
    is searched; so is a folder in every mode, which keeps each mode's sessions apart (a
    folder of team sessions, erased in mode ``"agent"`` only, would keep the user's). A URL
    that names its table or prefix names one store of one mode, searched in ``mode``.

    A store that fails (a table of that name that is not a session table, say) does not stop
    the search of the others: the user's sessions there are removed all the same.

    Raises:
        InvalidIdentifierError: for a bad URL or user id.
        StorageError: (the class the first failing store raised) when the store of a mode
            could not be searched, after the others were, naming each mode that failed and
            what was removed from the rest.
    """
    check_id(user_id, "user id")
    parsed = parse_url(url, mode, **options)
    modes = list(MODES) if parsed.per_mode or parsed.modes_apart else [mode]
    if erasure is None:
        erasure = UserErasure()
    failed: dict[str, StorageError] = {}
    for each in modes:
        try:
            with open_storage(url, each, **options) as storage:
                found = storage.table_exists()
                erasure.removed[each] = storage.delete_user(user_id, erasure.ids) if found else 0
                if not found:
                    erasure.absent.append(each)
        except StorageError as exc:
            failed[each] = exc
    if not failed:
        return erasure
    first = next(iter(failed.values()))
    if not erasure.removed:
        raise first  # every store failed (a server that is down): its error says it all
    kind = next(k for k in _RETOLD if isinstance(first, k))
    reasons = "; ".join(f"{each}: {exc}" for each, exc in failed.items())
    done = ", ".join(f"{each}: {n}" for each, n in erasure.removed.items())
    raise kind(
        f"the sessions of user {user_id!r} in mode {', '.join(failed)} could not be deleted "
        f"({reasons}); in the other modes they were, {erasure.total} in all ({done})"
    ) from first
