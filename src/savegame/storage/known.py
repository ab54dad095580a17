"""What a storage remembers of the sessions it lately wrote or read, so that a long
conversation is saved by what changed and read back without fetching every run again.

A conversation is saved again and again, one run longer each time. Encoding every run on
every save to find the one that changed costs the length of the conversation, and so does
fetching and decoding every run on every read. The SQL and Redis backends therefore keep,
for each session they lately wrote or read, a :class:`Known`:

- the *token* of the write that made the stored session: random, stored in the session's
  header, and never reused, also when a session is deleted and made again;
- its header (version, created_at, expires_at);
- a digest of each run, as the store holds them;
- the runs themselves, pickled (see :func:`pickle_runs`): exactly the values the store holds;
- the runs the last write was given, marked (see :func:`mark_runs`), when the caller keeps
  them from save to save.

Writes. :func:`encode_runs` marks the runs it is given, when the caller gave the same first
run object last time. When the remembered marks are a prefix of those marks, the remembered
runs are unchanged and are neither checked, encoded, digested nor pickled again: only the
runs after them are, and their pickle is added to the remembered one. Otherwise it pickles
as many of the runs given as are remembered, apart from the rest, and when that pickle is
the remembered one, the remembered runs are unchanged, byte for byte, and only the runs
after them are checked, encoded and digested. A backend writes on the remembered header
only while the store still carries the remembered token, which the write checks atomically;
otherwise it reads the stored header and digests, and writes on those.

Reads. When the stored header carries the remembered token, the runs are unpickled from
memory instead of being fetched and decoded. When it carries another (a write elsewhere),
the read fetches every run's digest but the text of only the runs after those remembered:
where the digests agree (:meth:`Known.leads`), the remembered runs stand for the stored ones
(:meth:`Known.joined`), and their pickle is extended rather than made again.

Why a pickle. Deciding that a run is unchanged must be exact. ``==`` is not: it says
``1 == 1.0 == True`` and ignores the order of keys. The JSON text is exact but costs as much
to make as the save it would spare. Pickle protocol 3 (which has no frames), with its memo
switched off, writes each value as its type and its contents, one value after the other and
independent of what came before: equal bytes mean equal values of the same types in the
same order, and the pickle of a list's first *n* items is a prefix of the pickle of the
whole list. The converse does not hold, as a pickle fills a dict or a list after making it:
the pickle of ``[{}]`` is a prefix of that of ``[{"a": 1}]``, and that of ``[a, b]`` of that
of ``[(a, b)]``, so only whole pickles are compared. Only the exact built-in types are
pickled (a subclass, or any other object, makes :func:`pickle_runs` give None, and those
runs are encoded every time, as without a cache); no code of the caller's runs while
pickling. It costs about a tenth of encoding the same runs as JSON.

Why marks as well. Marshal makes its bytes in half to two thirds of a pickle's time, and
they are as exact where they agree (see :func:`mark_runs`), but they depend on which objects
are referred to from elsewhere: the runs of a caller who keeps them mark alike from save to
save, while a new copy of the same runs may mark otherwise, and the runs read back are such
a copy. So marks only spare the pickle of runs kept, and are neither made for a copy nor
remembered from a read.

Writes sent again. A header also keeps the tokens of the :data:`PAST_TOKENS` writes before its
last. A write whose reply was lost and which is sent again finds out from them whether its
earlier sending was made (:func:`resent_write_made`), so that it is never made twice.

Bounds. A cache holds at most :data:`MAX_SESSIONS` sessions and ``max_bytes`` bytes of
pickles, marks and digests (:data:`DEFAULT_BYTES` unless the storage is told otherwise), least
recently used out first; a session larger than the whole bound is not remembered.
"""

from __future__ import annotations

import marshal
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from savegame.errors import InvalidIdentifierError, StorageError
from savegame.storage.base import HOLDING, Header
from savegame.storage.codec import encode_checked
from savegame.storage.session import set_path

MAX_SESSIONS = 10_000
"""The most sessions one cache remembers."""

DEFAULT_BYTES = 64 * 1024 * 1024
"""The default bound of a cache, in bytes of pickled runs and digests."""

PAST_TOKENS = 8
"""Tokens of earlier writes a header keeps besides its last, newest first: a write sent
again after fewer other writes than this came in knows whether it was made."""


def resent_write_made(token: str, on: str, current: str, past: str) -> bool | None:
    """Whether a write sent again, with token ``token``, was made by an earlier sending;
    None when that cannot be told.

    ``on`` is the token the write was made on ('': it was to make the session); ``current``
    and ``past`` are the stored header's token ('': no session) and its past tokens,
    concatenated. The header's tokens are its last writes, newest first, each made on the
    one after it. The write was made if its token is among them. It was not if the token it
    wrote on is among them and not followed by its own, or if it was to make the session and
    the tokens go back to the session's making. A session deleted since keeps no tokens:
    then only a write that was to make it is known not made.
    """
    if not current:
        return False if on == "" else None
    width = len(token)
    chain = [current, *(past[i : i + width] for i in range(0, len(past), width))]
    if token in chain:
        return True
    if on in chain:
        return False
    if on == "" and len(chain) <= PAST_TOKENS:
        return False
    return None


def outcome_unknown(
    where: str, session_id: str, why: str = "the session has been written since"
) -> StorageError:
    """The error of a write sent again when :func:`resent_write_made` cannot tell whether
    its earlier sending was made: writing again could make the change twice, and a
    conflict would have ``update()`` make it twice. ``where`` names the store, ``why``
    says why it could not be told."""
    return StorageError(
        f"the connection to {where} was lost while writing session {session_id!r}, and"
        f" {why}: whether this write was made is unknown; read the session to see"
    )


_HEAD = b"\x80\x03("
_TAIL = b"NNNNt."
# pickle_runs pickles the tuple (*runs, None, None, None, None): with more than three items
# a tuple is written as MARK, the items and TUPLE, so every pickle is _HEAD, the runs one
# after the other, and _TAIL, whatever the number of runs.


class Known(NamedTuple):
    """What a storage remembers of one stored session."""

    token: str
    """The token of the write that made the stored session ('': there is no session)."""
    header: Header | None
    digests: str | None
    """The digest of each run, one after the other (all of one width); None when the
    session keeps no list of runs apart from its header."""
    runs: Pickle | None
    """The runs as :func:`pickle_runs` gives them; None when they could not be pickled."""
    listed: tuple[Any, ...] = ()
    """What the backend lists the session by, as stored (for SQL, the indexed columns), so
    that a write can leave alone what it does not change."""
    head: bytes | None = None
    """The rest of the stored record (every field but the runs), as :func:`keep_plain`
    gives it: a read that finds the token unchanged returns a copy of it
    without decoding the stored JSON; None when not remembered."""
    marks: bytes | None = None
    """The runs the last write was given, as :func:`mark_runs` gives them, when they were
    exactly the runs stored (none converted) and marked; None otherwise."""
    first: int = 0
    """The ``id()`` of the first run the last write was given (0: none). A caller who gives
    the same object again keeps its runs from save to save, which is when their marks can
    agree and are worth making; one who gives a new copy each time (read, changed,
    saved) is spared them."""

    @classmethod
    def written(
        cls,
        token: str,
        header: Header,
        runs: Runs | None,
        listed: tuple[Any, ...],
        record: dict[str, Any],
    ) -> Known:
        """What to remember of a write: ``record`` as stamped (its runs apart, when ``runs``
        is set) and the runs as the write encoded them."""
        head = keep_plain(record)
        if runs is None:
            return cls(token, header, None, None, listed, head)
        return cls(token, header, runs.digests, runs.pickled, listed, head, runs.marks, runs.first)

    @classmethod
    def read(
        cls,
        token: str,
        header: Header | None,
        digests: str | None,
        runs: list[Any] | None,
        listed: tuple[Any, ...],
        head: dict[str, Any],
        pickled: Pickle | None = None,
    ) -> Known:
        """What to remember of a read: the stored record ``head`` without its runs, and the
        decoded ``runs`` with their ``digests`` (None: the session keeps no runs apart);
        ``pickled``: the runs as :func:`pickle_runs` gives them, when already made."""
        if pickled is None and runs is not None:
            pickled = Pickle.of(pickle_runs(runs))
        return cls(token, header, digests, pickled, listed, keep_plain(head))

    def leads(self, digests: str) -> bool:
        """Whether stored runs with ``digests`` are the remembered runs wherever both have
        one, so that a read needs to fetch only the runs after those remembered."""
        mine = self.digests or ""
        both = min(len(mine), len(digests))
        return mine[:both] == digests[:both]

    def joined(self, later: list[Any], count: int) -> tuple[list[Any], Pickle | None]:
        """The ``count`` stored runs of a read that fetched only ``later``, the runs after
        those remembered (see :meth:`leads`): new copies of the remembered runs, then
        ``later``; and their pickle, for :meth:`read` (None: to be made)."""
        assert self.runs is not None
        kept = unpickle_runs(self.runs.whole())
        if count <= len(kept):
            return kept[:count], self.runs if count == len(kept) else None
        more = pickle_runs(later)
        if more is None:
            return kept + later, None
        return kept + later, self.runs.extended(more)

    def whole(self) -> bool:
        """Whether all of the stored session is remembered, so that a read may use the copy."""
        return self.head is not None and (self.runs is not None or self.digests is None)

    def record(self, runs_path: tuple[str, ...]) -> dict[str, Any]:
        """A new copy of the remembered record, runs included (see :meth:`whole`)."""
        assert self.head is not None
        record: dict[str, Any] = marshal.loads(self.head)
        if self.digests is not None:
            assert self.runs is not None
            set_path(record, runs_path, unpickle_runs(self.runs.whole()))
        return record

    def size(self) -> int:
        """Bytes this entry counts against its cache's bound."""
        return sum(len(part or "") for part in (self.runs, self.digests, self.head, self.marks))


class Pickle:
    """The pickle of a list of runs, as :func:`pickle_runs` makes it, kept as the pieces it
    was made of until it is needed whole.

    A save that adds a run to a long conversation adds the run's piece: copying the whole
    pickle instead would cost, besides the copy, the mapping of a fresh block of memory of
    its size, page by page (measured at about 200 µs for 1,000 runs, more than the rest of
    the save). Pieces are joined when the pickle is needed whole (a read from memory, a
    comparison) or become too many.
    """

    __slots__ = ("_parts", "_size")

    _MOST_PARTS = 64

    def __init__(self, parts: tuple[bytes | memoryview, ...], size: int | None = None) -> None:
        self._parts = parts
        self._size = sum(len(part) for part in parts) if size is None else size

    @classmethod
    def of(cls, blob: bytes | None) -> Pickle | None:
        """``blob``, a pickle made by :func:`pickle_runs`, or None for None."""
        return None if blob is None else cls((blob,))

    def whole(self) -> bytes:
        """The pickle in one piece (joined once, then kept so)."""
        parts = self._parts
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]
        blob = b"".join(parts)
        self._parts = (blob,)
        return blob

    def extended(self, more: bytes) -> Pickle:
        """The pickle of these runs followed by those of ``more``, a pickle made by
        :func:`pickle_runs`; this one is left as it is."""
        *before, last = self._parts
        parts = (*before, memoryview(last)[: -len(_TAIL)], memoryview(more)[len(_HEAD) :])
        extended = Pickle(parts, self._size - len(_TAIL) + len(more) - len(_HEAD))
        if len(parts) > self._MOST_PARTS:
            extended.whole()
        return extended

    def __len__(self) -> int:
        return self._size


class _NotPlain(Exception):
    """Raised while pickling on meeting a value that is not of an exact built-in type."""


class _Kept:
    """A file that keeps what is written to it. The pickler writes a pickle in one piece,
    which is kept without a copy, unless it holds large strings: those it writes apart.
    ``busy`` while a dump into it is under way, or was cut short."""

    __slots__ = ("busy", "parts")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.busy = False

    def write(self, data: bytes) -> int:
        self.parts.append(data)
        return len(data)

    def take(self) -> bytes:
        """What was written since the last call."""
        parts, self.parts = self.parts, []
        return parts[0] if len(parts) == 1 else b"".join(parts)


class _PlainPickler(pickle.Pickler):
    """Pickles the exact built-in types only, without a memo, so equal values pickle equally.

    Without a memo, a dict or list that stands twice in the runs is written twice, and comes
    back as two, as it would from the store's JSON.
    """

    def __init__(self, file: _Kept) -> None:
        super().__init__(file, protocol=3)
        self.fast = True
        self.file = file

    def reducer_override(self, obj: Any) -> Any:
        # Called for every object but None, bools and exact int, float, str, bytes, dict,
        # list, tuple, set and frozenset: everything else is refused, before its own code
        # (``__reduce__``) could run.
        raise _NotPlain


_PICKLERS = threading.local()
_REUSED_BELOW = 64 * 1024


def pickle_runs(runs: list[Any]) -> bytes | None:
    """The runs as one pickle whose prefixes are the pickles of the runs' prefixes.

    Returns None when a run holds anything but exact built-in types, is cyclic, or nests
    too deeply to pickle.
    """
    return pickle_plain((*runs, None, None, None, None))


def pickle_plain(value: Any) -> bytes | None:
    """``value`` pickled as described in the module docstring; None when it cannot be."""
    # A pickler per thread, reused: making one costs more than pickling a few small runs.
    # One that is busy is not: a pickle made while a dump is under way in this thread (by
    # a finalizer the garbage collector runs, as a workflow's save of a run dropped
    # half-way; a dump within another on one pickler crashes the process), or after a dump
    # was cut short by an interrupt (whose file still holds what it wrote, which the next
    # pickle would begin with), makes a pickler of its own.
    # A pickler starts each dump with a buffer as large as its largest pickle yet, so one
    # that made a large pickle is let go: kept after a 1,000-run session's save, it made
    # each later save of a small session about 35 microseconds slower.
    pickler: _PlainPickler | None = getattr(_PICKLERS, "pickler", None)
    if pickler is None or pickler.file.busy:
        pickler = _PICKLERS.pickler = _PlainPickler(_Kept())
    file = pickler.file
    file.busy = True
    try:
        pickler.dump(value)
    except (_NotPlain, ValueError, RecursionError, pickle.PicklingError):
        _PICKLERS.pickler = None  # a dump cut short may leave the pickler's state behind
        return None
    blob = file.take()
    if len(blob) > _REUSED_BELOW:
        _PICKLERS.pickler = None
    file.busy = False
    return blob


def unpickle_runs(blob: bytes) -> list[Any]:
    """The runs of a pickle made by :func:`pickle_runs` (in this process: never stored)."""
    runs: tuple[Any, ...] = unpickle_plain(blob)
    return list(runs[:-4])


def unpickle_plain(blob: bytes) -> Any:
    """A value pickled by :func:`pickle_plain`: a new copy each time."""
    # Safe to unpickle: the blob was made in this process by pickle_plain, never read from
    # a store.
    return pickle.loads(blob)


def keep_plain(value: Any) -> bytes | None:
    """``value``, a record of JSON-native values, as bytes that ``marshal.loads`` makes a
    new copy of, each time; None when it cannot be (a subclass of a built-in type, or
    nesting too deep).

    Marshal's version 2 writes no references: a dict that stands twice in ``value`` comes
    back as two, as it would from the store's JSON. Its copies are quicker to make than
    unpickled ones.
    """
    try:
        return marshal.dumps(value, 2)
    except ValueError:
        return None


def mark_runs(runs: list[Any]) -> bytes | None:
    """The runs marshalled: bytes that tell, cheaper than a pickle, that runs are exactly
    the runs of an earlier write (see :func:`_marked_count`); None when they cannot be
    marshalled (a subclass of a built-in type, an object of any other type, or nesting too
    deep).

    Marshal refuses every subclass, and writes each value as its type and contents, but
    with its version 4 it writes an object referred to from elsewhere (by the count of its
    references) once, with a flag, and later occurrences as references to it. Equal bytes
    therefore still mean equal values; equal values may give other bytes, which only costs
    the pickle that marks spare.
    """
    try:
        return marshal.dumps(runs, 4)
    except ValueError:
        return None


_LIST_HEAD = 5
# A marshalled list is its type code (with the flag of an object referred to from
# elsewhere), its length as 4 bytes, then its items one after the other.


def _marked_count(marks: bytes | None, known: Known | None, width: int) -> int:
    """How many runs of ``marks`` are, by their marks, exactly the remembered ones: all of
    those remembered, or 0.

    The list's own flag must agree too: it numbers the objects referred to, so item bytes
    that refer back mean the same objects only under the same flag. No run refers back to
    the list itself, as the runs marked at a write could be stored, which a cycle forbids.
    """
    if marks is None or known is None or known.marks is None or known.runs is None:
        return 0
    old = known.marks
    count = len(known.digests or "") // width
    if (
        not count
        or len(marks) < len(old)
        or marks[0] != old[0]
        or not marks.startswith(memoryview(old)[_LIST_HEAD:], _LIST_HEAD)
    ):
        return 0
    return count


def _pickled(runs: list[Any], known: Known | None, width: int) -> tuple[int, Pickle | None]:
    """The runs pickled (None: they cannot be), and how many leading runs are, by their
    pickle, exactly the remembered ones: all of those remembered, or 0.

    The runs in the place of those remembered are pickled apart from the rest and compared
    whole with the remembered pickle, which may be a prefix of the pickle of other runs.
    """
    if known is None or known.runs is None or not known.digests:
        return 0, Pickle.of(pickle_runs(runs))
    count = len(known.digests) // width
    if len(runs) < count:
        return 0, Pickle.of(pickle_runs(runs))
    lead = pickle_runs(runs[:count])
    rest = pickle_runs(runs[count:])
    if lead is None or rest is None:
        return 0, None
    if lead == known.runs.whole():
        return count, known.runs.extended(rest)
    return 0, Pickle((lead,)).extended(rest)


class Runs:
    """The runs of one write: each as stored, with its text where made and its digest.

    Attributes:
        items: the runs as the store will hold them. The leading runs that
            :func:`encode_runs` found unchanged are the caller's own objects; the others
            are encoded copies.
        texts: the stored text of each run; None for the unchanged runs, whose text was not
            made (see :meth:`changes`).
        digests: the digest of each run, concatenated.
        pickled: the runs as stored, pickled, to remember; None when they cannot be.
        marks: the runs given, marked by :func:`mark_runs`, when they were marked and are
            exactly the runs as stored; None otherwise.
        first: the ``id()`` of the first run given (see :attr:`Known.first`).
    """

    def __init__(
        self,
        items: list[Any],
        texts: list[str | None],
        digests: str,
        pickled: Pickle | None,
        text_of: Callable[[Any, str | None], str],
        digest: Callable[[str], str],
        width: int,
        marks: bytes | None = None,
        first: int = 0,
    ) -> None:
        self.items = items
        self.texts = texts
        self.digests = digests
        self.pickled = pickled
        self.marks = marks
        self.first = first
        self._text_of = text_of
        self._digest = digest
        self._width = width

    def __len__(self) -> int:
        return len(self.items)

    def changes(self, stored: str | None) -> list[tuple[int, str, str]]:
        """(position, digest, text) of each run that differs from the ``stored`` digests.

        The common case, runs added after the stored ones, is found by comparing the
        digests as two strings. A run whose text was not made (unchanged since the storage
        last saw it, while the store now holds something else there) is encoded now, and
        its digest is taken again from that text.
        """
        width = self._width
        old = stored or ""
        new = self.digests
        first = min(len(old), len(new)) // width if new.startswith(old[: len(new)]) else 0
        out: list[tuple[int, str, str]] = []
        remade: list[str] | None = None
        for i in range(first, len(self.items)):
            at = slice(i * width, (i + 1) * width)
            digest = new[at]
            if old[at] == digest:
                continue
            text = self.texts[i]
            if text is None:
                text = self.texts[i] = self._text_of(self.items[i], None)
                digest = self._digest(text)
                if remade is None:
                    remade = [new[j * width : (j + 1) * width] for j in range(len(self.items))]
                remade[i] = digest
                if old[at] == digest:
                    continue
            out.append((i, digest, text))
        if remade is not None:
            self.digests = "".join(remade)
        return out


def encode_runs(
    runs: list[Any],
    known: Known | None,
    text_of: Callable[[Any, str | None], str],
    digest: Callable[[str], str],
    path: str,
    level: int,
    width: int | None = None,
) -> Runs:
    """Checks and encodes ``runs`` for writing, skipping those ``known`` shows unchanged.

    Args:
        runs: the session's list of runs, as the caller gave it.
        known: what the storage remembers of the stored session, or None.
        text_of: the stored text of an encoded run, given the compact text
            :func:`~savegame.storage.codec.encode_text` made of it (or None: make it).
        digest: the digest of a stored text; all digests of one storage have one width.
        path: where the runs are in the session, for error messages (``$['memory']['runs']``).
        level: the nesting level of each run in the session (the session is level 1).
        width: the length of a digest, when the caller knows it.

    Raises:
        SerializationError: for a run that cannot be stored, naming its path.
    """
    if width is None:
        width = len(digest(""))
    first = id(runs[0]) if runs else 0
    marks = mark_runs(runs) if first and known is not None and known.first == first else None
    start = min(_marked_count(marks, known, width), len(runs))
    marked = start > 0
    pickled: Pickle | None = None
    if not marked:
        start, pickled = _pickled(runs, known, width)
    items: list[Any] = runs[:start]
    texts: list[str | None] = [None] * start
    digests = [known.digests[: start * width]] if start and known and known.digests else []
    converted = False
    for i in range(start, len(runs)):
        copy, compact, same = encode_checked(runs[i], f"{path}[{i}]", level)
        converted = converted or not same
        text = text_of(copy, compact)
        items.append(copy)
        texts.append(text)
        digests.append(digest(text))
    if marked and start == len(items):
        assert known is not None
        pickled = known.runs  # no run after those remembered: their pickle is the whole
    elif marked or converted:
        # The remembered runs' pickle stands for the runs before ``start``; the new runs
        # are pickled after it as stored, which differs from the runs given where encoding
        # converted a value (a tuple became a list, say). Copies equal to runs of the exact
        # built-in types alone, which is all that pickles, pickle as they do.
        fresh = pickle_runs(items[start:])
        if fresh is None:
            pickled = None
        elif start:
            assert known is not None
            assert known.runs is not None
            pickled = known.runs.extended(fresh)
        else:
            pickled = Pickle.of(fresh)
    # The runs given are exactly the runs stored when none was converted and they pickled
    # as the store's copies do.
    exact = not converted and pickled is not None
    if pickled is None:
        pickled = Pickle.of(pickle_runs(items))
    marks = marks if exact else None
    return Runs(items, texts, "".join(digests), pickled, text_of, digest, width, marks, first)


class KnownSessions:
    """The :class:`Known` of a storage's recent sessions, least recently used out first.

    Safe to share between threads. ``max_bytes=0`` remembers nothing. Its calls are marked
    as holding a lock (see :data:`~savegame.storage.base.HOLDING`): the garbage collector
    may close a workflow's run under it, whose save would wait for it.
    """

    def __init__(self, max_bytes: int = DEFAULT_BYTES) -> None:
        if type(max_bytes) is not int or max_bytes < 0:
            raise InvalidIdentifierError(
                f"cache_bytes must be a whole number >= 0, not {max_bytes!r}"
            )
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Known] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, session_id: str) -> Known | None:
        """What is remembered of the session, or None."""
        with HOLDING, self._lock:
            known = self._items.get(session_id)
            if known is not None:
                self._items.move_to_end(session_id)
            return known

    def put(self, session_id: str, known: Known | None) -> None:
        """Remembers ``known`` for the session; None forgets it."""
        with HOLDING, self._lock:
            old = self._items.pop(session_id, None)
            if old is not None:
                self._bytes -= old.size()
            size = 0 if known is None else known.size()
            if known is None or size > self.max_bytes:
                return
            self._items[session_id] = known
            self._bytes += size
            while len(self._items) > MAX_SESSIONS or self._bytes > self.max_bytes:
                _, gone = self._items.popitem(last=False)
                self._bytes -= gone.size()

    def forget(self, session_ids: Iterable[str]) -> None:
        """Forgets each of the sessions."""
        for session_id in session_ids:
            self.put(session_id, None)

    def forked(self) -> None:
        """Forgets every session, with a new lock, in a child just forked (see
        :meth:`~savegame.storage.base.Storage._forked`): the parent may have been
        half-way through remembering one."""
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        """Forgets every session."""
        with HOLDING, self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)


class RunEncoder:
    """Encodes the runs of a storage's writes against what it remembers (see the module
    docstring); the run codec of :class:`~savegame.storage.base.Storage`."""

    def __init__(
        self,
        known: KnownSessions,
        text_of: Callable[[Any, str | None], str],
        digest: Callable[[str], str],
    ) -> None:
        self.known = known
        self.text_of = text_of
        self.digest = digest
        self.width = len(digest(""))

    def encode(self, session_id: str, runs: list[Any], path: str, level: int) -> Runs:
        """The runs checked and encoded, reusing what is remembered of the session.

        Raises:
            SerializationError: for a run that cannot be stored, naming its path.
        """
        known = self.known.get(session_id)
        return encode_runs(runs, known, self.text_of, self.digest, path, level, self.width)
