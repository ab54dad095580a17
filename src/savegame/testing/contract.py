"""The contract tests; see :mod:`savegame.testing` for how to run them on a backend."""

from __future__ import annotations

import collections
import datetime as dt
import enum
import json
import math
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from operator import methodcaller
from typing import Any

from savegame.errors import (
    BackendUnavailableError,
    ConflictError,
    CorruptSessionError,
    InvalidIdentifierError,
    MissingDependencyError,
    SerializationError,
    StorageError,
)

try:
    import pytest
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis.stateful import run_state_machine_as_test
except ModuleNotFoundError as exc:
    package = (exc.name or "").partition(".")[0]
    if package not in ("pytest", "hypothesis"):
        raise
    raise MissingDependencyError(
        package, "testing", needed_by="the conformance suite (savegame.testing)"
    ) from exc

from savegame.storage import base
from savegame.storage.base import Storage
from savegame.storage.codec import MAX_DEPTH
from savegame.storage.known import PAST_TOKENS
from savegame.storage.session import (
    MESSAGES_OF_RUNS,
    MODES,
    Mode,
    Session,
    get_path,
    set_path,
)
from savegame.storage.url import SCHEMES
from savegame.testing.sample import check_session, make_session
from savegame.testing.worker import ENDED, PID


@dataclass
class LossyLink:
    """Two storages of one store, in agent mode, and a way to lose a reply to the first,
    as when a connection dies after the server did what it was asked.

    The store may be one of its own, on a server set up so that replies can be lost.

    Attributes:
        storage: the storage whose replies can be lost.
        other: a storage of the same store whose replies are never lost.
        lose_reply: ``lose_reply(meanwhile)`` arms the link: the reply that makes the next
            write of ``storage`` known to it (the commit, the write script) is lost and its
            connection cut; ``meanwhile`` (if not None) runs after the server has done the
            write and before the connection is cut.
        lost: whether a reply was lost since the link was last armed.
        refuse_connection: ``refuse_connection(n)`` cuts the connections of ``storage``
            and makes its next ``n`` attempts to connect fail before anything reaches the
            server; None where the link cannot.
        refused: whether all the connections ``refuse_connection`` was to refuse were.
        hold_reply: ``hold_reply(marker, meanwhile)`` arms the link: the reply to the next
            request of ``storage`` whose bytes hold ``marker`` is held back while
            ``meanwhile()`` runs, ``storage`` waiting for it, and then delivered; None where
            the link cannot.
    """

    storage: Storage
    other: Storage
    lose_reply: Callable[[Callable[[], object] | None], None]
    lost: Callable[[], bool]
    refuse_connection: Callable[[int], None] | None = None
    refused: Callable[[], bool] = lambda: False
    hold_reply: Callable[[bytes, Callable[[], object]], None] | None = None


@dataclass
class Store:
    """One isolated store under test.

    Attributes:
        backend: a short name for reports.
        mode: the mode the store is tested in.
        opener: ``opener(mode, **options)`` opens the *same* store each call, so that a test
            can close it, open it again and find what it wrote.
        url: a URL that :func:`savegame.open_storage` opens the same store with in another
            process; None for stores that live in one process only.
        original: writes agent sessions (dicts) into the store the way the original library
            (agno 1.x) stored them, before savegame has touched it; None where the backend
            has no such past.
        lossy: opens a :class:`LossyLink`, to test writes whose reply is lost; None where
            no reply can be lost (an embedded store).
        lose_runs: ``lose_runs(storage, session_id)`` removes, behind savegame's back, what
            ``storage`` (one of this store's) keeps of a session's runs apart from its
            header, as a cache evicting keys or a partial restore would; None where the runs
            are kept with the rest of the session.
        lose_run: ``lose_run(storage, session_id, position)`` removes, behind savegame's
            back, the one run at ``position`` that ``storage`` keeps apart from the header,
            the runs after it keeping theirs (a row deleted by hand); None where the runs
            are kept with the rest of the session.
        null_run: ``null_run(storage, session_id, position)`` sets the stored text of the
            run at ``position`` to NULL, behind savegame's back, its digest and every other
            run as they were (a row edited by hand); None where no run can be NULL.
        change_run: ``change_run(storage, session_id, position, run)`` changes the stored
            run at ``position`` into ``run`` the way the README says to change a session by
            hand: its digest left as it was and, in the same transaction, the session's
            write token cleared; None where the runs are kept with the rest of the session.
        spoil_number: the places where the store keeps a number of a session (its version,
            a time, its run count) that an edit by hand can make text, each named (for
            reports) with ``spoil(storage, session_id, text)``, which writes ``text`` there
            behind savegame's back; empty where the store's types refuse text there (the
            number columns of a SQL server).
        spoil_text: as ``spoil_number``, the places where the store keeps a field of a
            session as plain text (its user's or agent's id, ``team_session_id``,
            ``workflow_session_id``) that an edit by hand can make a number, each with
            ``spoil(storage, session_id, value)``; empty where the store's types make a
            number given there text (the text columns of SQL).
        spoil_json: ``spoil_json(storage, session_id, text)`` writes the JSON ``text``, as
            it stands, in place of the session's ``session_data`` behind savegame's back
            (and clears its write token, as the README says an edit by hand must); None
            where the store keeps no JSON text there, or refuses such text.
        mixed_modes: why storages of two modes on this store still list or break each
            other's sessions, for a backend that cannot keep them apart yet: the tests of
            it skip, giving this reason. None (the contract) where it can.
        neighbour: ``neighbour(mode, **options)`` opens a storage of another store whose
            name extends this one's (a key prefix ``P:sub``, a folder inside this store's
            folder, a table ``t_sub`` beside ``t``), which this store must never see, list,
            remove or drop; the fixture removes it with the store. None where stores are
            not named (an in-memory dict).
    """

    backend: str
    mode: str
    opener: Callable[..., Storage]
    url: str | None = None
    original: Callable[[list[dict[str, Any]]], None] | None = None
    lossy: Callable[[], AbstractContextManager[LossyLink]] | None = None
    lose_runs: Callable[[Storage, str], None] | None = None
    lose_run: Callable[[Storage, str, int], None] | None = None
    null_run: Callable[[Storage, str, int], None] | None = None
    change_run: Callable[[Storage, str, int, Any], None] | None = None
    spoil_number: dict[str, Callable[[Storage, str, str], None]] = field(default_factory=dict)
    spoil_text: dict[str, Callable[[Storage, str, Any], None]] = field(default_factory=dict)
    spoil_json: Callable[[Storage, str, str], None] | None = None
    mixed_modes: str | None = None
    neighbour: Callable[..., Storage] | None = None
    opened: list[Storage] = field(default_factory=list)

    def __call__(self, mode: str | None = None, **options: Any) -> Storage:
        storage = self.opener(mode or self.mode, **options)
        self.opened.append(storage)
        return storage

    def neighbouring(self, mode: str | None = None, **options: Any) -> Storage:
        """A storage of the :attr:`neighbour` store, skipping the test where there is none."""
        if self.neighbour is None:
            pytest.skip(
                f"{self.backend} stores have no names that one can extend (no Store.neighbour)"
            )
        storage = self.neighbour(mode or self.mode, **options)
        self.opened.append(storage)
        return storage

    def close_all(self) -> None:
        """Closes every storage the tests opened."""
        for storage in self.opened:
            storage.close()
        self.opened.clear()

    def require(self, capability: str) -> Storage:
        """A storage of this store, skipping the test unless it declares ``capability``."""
        storage = self()
        if capability not in type(storage).capabilities:
            pytest.skip(
                f"{self.backend} does not declare {capability!r} in "
                f"{type(storage).__name__}.capabilities ({base.CAPABILITIES[capability]})"
            )
        if capability == "processes" and self.url is None:
            pytest.skip(
                f"{self.backend} declares 'processes' but its Store has no url, which the "
                "processes of savegame.testing.worker open with savegame.open_storage; "
                "without one the store is taken to live in one process only, and the "
                "tests that fork skip too (with a url of a scheme of your own, they run)"
            )
        return storage

    def worker_url(self) -> str:
        """:attr:`url`, which the worker processes open with savegame.open_storage, skipping
        the test where that knows no such scheme (a backend savegame does not ship)."""
        url = str(self.url)
        if url.partition("://")[0].lower() not in SCHEMES:
            pytest.skip(
                f"{self.backend} declares 'processes' but savegame.open_storage, which the "
                f"processes of savegame.testing.worker open its Store.url {url!r} with, "
                f"knows no such scheme (only {', '.join(SCHEMES)})"
            )
        return url


def _spec(store: Store) -> Any:
    return MODES[store.mode]


def _session(store: Store, session_id: str, **fields: Any) -> Session:
    spec = _spec(store)
    entity = fields.pop("entity_id", None)
    data: dict[str, Any] = {"session_id": session_id, **fields}
    if entity is not None:
        data[spec.entity_field] = entity
    session: Session | None = spec.session_class.from_dict(data)
    assert session is not None
    return session


def _dated(mode: str, session_id: str, created_at: int) -> Session:
    """A sample session of ``mode`` made at ``created_at``."""
    session = make_session(mode, session_id)
    session.created_at = created_at  # type: ignore[attr-defined]
    return session


def _names_mode(message: str, mode: str) -> bool:
    """Whether an error refusing a storage of another mode says which mode the store is in
    (or, for a SQL table, which column of the storage's mode it lacks)."""
    return f"mode={mode!r}" in message or bool(re.search("lacks (a|the) column", message))


def _outcome(call: Callable[[], Any]) -> Any:
    """What ``call()`` returns, or the :class:`CorruptSessionError` it raises."""
    try:
        return call()
    except CorruptSessionError as exc:
        return exc


def _stored_runs(store: Store, session_id: str) -> Any:
    """The runs of ``session_id`` as a storage just opened on the store reads them; the
    session must be there."""
    got = store().read(session_id)
    assert got is not None, session_id
    return _runs_of(store, got)


def _read_both(store: Store, storage: Storage, session_id: str) -> list[Session]:
    """``session_id`` read by ``storage``, which wrote it and may remember it, and by a
    storage just opened on the same store, which has to decode what is stored."""
    found = [storage.read(session_id), store().read(session_id)]
    assert None not in found, found
    return [got for got in found if got is not None]


def _bump(by: int) -> Callable[[Session | None], Session]:
    def bump(session: Session | None) -> Session:
        if session is None:
            return _agent("c", session_data={"n": by})
        session.session_data["n"] += by  # type: ignore[attr-defined]
        return session

    return bump


def _agent(session_id: str, **fields: Any) -> Session:
    from savegame.storage.session.agent import AgentSession

    return AgentSession(session_id=session_id, **fields)


def check_lost_reply(link: LossyLink, writes: int) -> None:
    """The check of the conformance test of lost replies, for tests of a backend's own that
    lose a reply another way: the write is found made, or (after more than
    :data:`~savegame.storage.known.PAST_TOKENS` other ``writes``) said to be of unknown
    outcome, and never made twice."""
    if writes:
        _lost_after_others(link, writes)
    else:
        _lost_alone(link)


def _lost_alone(link: LossyLink, connections_cut: bool = False, refused: int = 0) -> None:
    """A write whose reply is lost, with no other write before it is sent again, is found
    made and reported done: not as a conflict with itself, and not made twice.

    With ``connections_cut``, every pooled connection is cut first, so the write goes out
    on a connection just made, whose reply is the one lost: it is still found made, not
    reported "unavailable" (which says nothing was written, and has the caller make the
    change a second time). With ``refused``, the server then refuses that many
    connections (it is restarting): the write waits for it, as a write whose pooled
    connection was found dead does, and is found made."""
    link.storage.upsert(_agent("c", session_data={"n": 1}))
    session = link.storage.read("c")
    assert session is not None
    session.session_data["n"] += 1  # type: ignore[attr-defined]
    if connections_cut:
        assert link.refuse_connection is not None
        link.refuse_connection(0)  # every connection cut, none refused: new ones are made
    restart = link.refuse_connection
    link.lose_reply(None if not refused or restart is None else lambda: restart(refused))
    saved = link.storage.upsert(session, expected_version=session.version)  # type: ignore[attr-defined]
    assert link.lost(), "no reply was lost: the test did not test"
    assert not refused or link.refused(), "no connection was refused: the test did not test"
    assert saved.version == session.version + 1, saved.version  # type: ignore[attr-defined]
    got = link.other.read("c")
    assert got is not None
    stored = (got.session_data, got.version)  # type: ignore[attr-defined]
    assert stored == ({"n": 2}, session.version + 1), stored  # type: ignore[attr-defined]


def _lost_after_others(link: LossyLink, writes: int) -> None:
    """As :func:`_lost_alone`, by ``update``, with ``writes`` writes of the other storage
    before the write is sent again."""
    link.storage.update("c", _bump(1))

    def meanwhile() -> None:
        for _ in range(writes):
            link.other.update("c", _bump(10))

    link.lose_reply(meanwhile)
    unknown: StorageError | None = None
    try:
        link.storage.update("c", _bump(1))
    except StorageError as exc:
        unknown = exc
    assert link.lost(), "no reply was lost: the test did not test"
    assert unknown is None or "unknown" in str(unknown), unknown
    assert (unknown is not None) == (writes > PAST_TOKENS), unknown
    got = link.other.read("c")
    assert got is not None
    assert got.session_data == {"n": 2 + 10 * writes}, got.session_data  # type: ignore[attr-defined]


def check_refused_connection(link: LossyLink) -> None:
    """A write whose connection is dead, and whose next two attempts to connect are
    refused (a server restarting), is made once: the storage connects again after a pause.
    It never reached the store before, so it is never said to be of unknown outcome, not
    even when more writes than a header keeps tokens of
    (:data:`~savegame.storage.known.PAST_TOKENS`) came in since the storage last saw the
    session."""
    assert link.refuse_connection is not None
    link.storage.update("c", _bump(1))
    session = link.storage.read("c")
    assert session is not None
    for _ in range(PAST_TOKENS + 1):
        link.other.update("c", _bump(10))
    before = link.other.read("c")
    assert before is not None
    session.session_data["n"] = -1  # type: ignore[attr-defined]
    link.refuse_connection(2)
    saved = link.storage.upsert(session)
    assert link.refused(), "no connection was refused twice: the test did not test"
    got = link.other.read("c")
    assert got is not None
    assert saved.version == before.version + 1, (saved.version, before.version)  # type: ignore[attr-defined]
    assert (got.session_data, got.version) == ({"n": -1}, saved.version), got  # type: ignore[attr-defined]


def check_call_cut_short(link: LossyLink) -> None:
    """Calls cut short while they wait for the server's reply (Ctrl-C) leave nothing
    behind for the calls after them: a reply left unread on a connection used again would
    be taken for the answer to the next request, another session's. A write cut short is
    made whole or not at all. Runs in the main thread, the one signals reach."""
    assert link.hold_reply is not None
    hold = link.hold_reply
    main = threading.main_thread()
    if threading.current_thread() is not main:
        pytest.skip("only the main thread can be interrupted by a signal")
    for i in range(4):
        link.storage.upsert(_agent(f"cut-{i}", session_data={"n": i}))

    def interrupt() -> None:
        # While the reply is held the main thread waits for it; the reply goes on after.
        signal.pthread_kill(main.ident or 0, signal.SIGUSR1)
        time.sleep(0.2)

    def cut_short(call: Callable[[], object], marker: bytes) -> None:
        def ctrl_c(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGUSR1, ctrl_c)
        try:
            hold(marker, interrupt)
            with pytest.raises(KeyboardInterrupt):
                call()
        finally:
            signal.signal(signal.SIGUSR1, previous)

    found: dict[int, Any] = {}

    def read(i: int) -> None:
        got = link.storage.read(f"cut-{i}")
        found[i] = None if got is None else got.session_data  # type: ignore[attr-defined]

    def check_reads(expected: dict[int, Any]) -> None:
        # Reads at once draw every connection the storage has, one cut short if it was kept.
        for _ in range(3):
            in_threads(4, read)
            assert found == expected, found
            found.clear()

    cut_short(lambda: link.storage.read("cut-0"), b"cut-0")
    check_reads({i: {"n": i} for i in range(4)})
    runs = [{"run_id": f"r{i}", "messages": [{"role": "user", "content": "hi"}]} for i in range(3)]
    cut_short(
        lambda: link.storage.upsert(
            _agent("cut-1", session_data={"n": 100}, memory={"runs": runs})
        ),
        b"cut-1",
    )
    got = link.other.read("cut-1")
    assert got is not None
    stored = (got.session_data, got.memory)  # type: ignore[attr-defined]
    assert stored in [({"n": 1}, None), ({"n": 100}, {"runs": runs})], stored
    check_reads({i: {"n": 100 if i == 1 and stored[1] else i} for i in range(4)})
    link.storage.upsert(_agent("cut-1", session_data={"n": 1}))
    check_reads({i: {"n": i} for i in range(4)})


@contextmanager
def _hinted(hint: str | None) -> Iterator[None]:
    """Adds ``hint``, when given, to the failure of a ``pytest.raises`` in the block that
    saw nothing raised, whose own message names the error alone."""
    try:
        yield
    except pytest.fail.Exception as exc:
        if hint is None:
            raise
        raise pytest.fail.Exception(f"{exc.msg}: {hint}") from None


_TEXT_HINT = (
    "a surrogate pair held as two code points comes back from JSON text as the one "
    "character they encode; a backend that keeps JSON text writes it with "
    "savegame.storage.codec.object_text, which refuses it, not with json.dumps"
)


@contextmanager
def _lossy(store: Store, needs: str) -> Iterator[LossyLink]:
    """The store's :class:`LossyLink`; the test is skipped where there is none, or where
    the link's ``needs`` (one of its fields) is None."""
    if store.lossy is None:
        pytest.skip(
            f"{store.backend} has no link whose replies can be lost or held (no Store.lossy)"
        )
    with store.lossy() as link:
        if getattr(link, needs) is None:
            pytest.skip(f"{store.backend}'s link has no {needs} (LossyLink.{needs} is None)")
        yield link


def _runs_of(store: Store, session: Session) -> Any:
    return get_path(session.to_dict(), _spec(store).runs_path)


def _with_runs(store: Store, session_id: str, runs: Any, **fields: Any) -> Session:
    data = _session(store, session_id, **fields).to_dict()
    set_path(data, _spec(store).runs_path, runs)
    session: Session | None = _spec(store).session_class.from_dict(data)
    assert session is not None
    return session


def _every_read_refuses(reader: Storage, damaged: str, kept: str, user_id: str) -> None:
    """Reading the ``damaged`` session alone, beside the ``kept`` one, or in the listing of
    their ``user_id`` raises CorruptSessionError naming it, twice: the first failure must
    leave nothing remembered for the second."""
    for _ in range(2):
        with pytest.raises(CorruptSessionError, match=damaged):
            reader.read(damaged)
        with pytest.raises(CorruptSessionError, match=damaged):
            reader.read_many([kept, damaged])
        with pytest.raises(CorruptSessionError, match=damaged):
            reader.get_all_sessions(user_id=user_id)


def _exact(value: Any, ordered: bool = True) -> str:
    """``value`` as JSON text, which tells 1, 1.0, True and -0.0 apart (and, when
    ``ordered``, the orders of keys)."""
    return json.dumps(value, sort_keys=not ordered)


def _fields(session: Session) -> dict[str, Any]:
    data = session.to_dict()
    for key in ("created_at", "updated_at", "version"):
        data.pop(key, None)
    return data


def _worker(store: Store, *args: Any) -> list[str]:
    return [sys.executable, "-m", "savegame.testing.worker", store.worker_url(), store.mode] + [
        str(a) for a in args
    ]


def in_threads(count: int, work: Callable[[int], object]) -> None:
    """Runs ``work(0)`` … ``work(count - 1)`` in threads at once and waits for them all.

    The first error a thread raised fails the caller, its traceback in the message: a
    thread's own exception would otherwise only be printed.
    """
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            work(n)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise AssertionError(
            f"{len(errors)} of {count} threads failed; the first:\n"
            + "".join(traceback.format_exception(errors[0]))
        )


class _Forks:
    """A fork server of :mod:`savegame.testing.worker` on a store: children of a process
    that imported savegame once run the worker's commands, so that a test spends its time
    working, not importing."""

    def __init__(self, store: Store) -> None:
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by __exit__
        self._proc = subprocess.Popen(
            _worker(store, "serve"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            text=True,
            start_new_session=True,  # a group of its own, with its children
        )

    def __enter__(self) -> _Forks:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        assert self._proc.stdin is not None
        try:
            if kind is not None:  # a test that failed may leave children working
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.stdin.close()
            self._proc.wait(timeout=60)
        finally:
            self._errors.close()

    def start(self, commands: list[list[Any]]) -> None:
        """Has the server fork a child for each command, all at once."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(" | ".join(" ".join(map(str, c)) for c in commands) + "\n")
        self._proc.stdin.flush()

    def readline(self) -> str:
        """The next line the children or the server printed."""
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        assert line, f"the fork server ended: {self.errors()}"
        return line

    def finish(self, count: int) -> tuple[list[str], list[int]]:
        """Reads until ``count`` children have ended: the lines they printed (but their
        process ids, and a line a kill cut short) and their exit codes."""
        said: list[str] = []
        codes: list[int] = []
        while len(codes) < count:
            line = self.readline()
            if ENDED in line:
                codes.append(int(line.split()[-1]))
            elif not line.startswith(PID):
                said.append(line.rstrip("\n"))
        return said, codes

    def pid(self) -> int:
        """The process id that a child just started prints first."""
        line = self.readline()
        assert line.startswith(PID), line
        return int(line.split()[1])

    def errors(self) -> str:
        """The end of what the server and its children wrote to standard error."""
        self._errors.seek(0)
        return self._errors.read().decode(errors="replace")[-3000:]


def _forked_child(store: Store, storage: Storage, said: int, go: int) -> None:
    """The child of the fork test: calls ``storage``, made and used by the parent, while
    the parent calls it too, then writes on after the parent closed it (``go``); prints
    ``k<i>`` to ``said`` for each write that returned, a traceback if one failed."""
    code = 1
    try:
        with os.fdopen(said, "w", buffering=1) as out:
            try:
                for i in range(40):
                    if i == 20:
                        os.read(go, 2)
                    got = storage.read(f"s{i % 4}")
                    assert got is not None
                    assert got.session_data == {"n": i % 4}  # type: ignore[attr-defined]
                    storage.upsert(_session(store, f"k{i}", user_id="k"))
                    print(f"k{i}", file=out)
                    storage.update("c", _bump(10))
                    assert len(storage.get_all_session_ids(user_id="u")) == 4
                code = 0
            except BaseException:  # noqa: BLE001 - told to the parent, which fails the test
                traceback.print_exc(file=out)
    finally:
        os._exit(code)


def wait_child(pid: int, bound: float) -> int:
    """The exit code of child ``pid``, which is killed if it has not ended within ``bound``
    seconds (it hung)."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _run_workers(store: Store, commands: list[list[Any]]) -> list[str]:
    """Runs the worker's ``commands`` in processes at once; the lines they printed."""
    with _Forks(store) as forks:
        forks.start(commands)
        out, codes = forks.finish(len(commands))
        assert codes == [0] * len(commands), forks.errors()
    return out


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


class Color(enum.Enum):
    """An enum for the value tests."""

    RED = "red"


class ModeContract:
    """Behaviour every backend shows in every mode; runs on the ``store`` fixture."""

    def test_read_missing_is_none(self, store: Store) -> None:
        storage = store()
        storage.create()
        assert storage.read("no-such-session") is None
        assert storage.get_all_session_ids() == []
        assert storage.get_all_sessions() == []

    def test_round_trip_every_field(self, store: Store) -> None:
        storage = store()
        storage.create()
        original = make_session(store.mode, "s1", round_=3)
        data = original.to_dict()
        for key in data:
            if key.endswith("session_id") and key != "session_id":
                data[key] = f"linked-{key}"
            if key == "workflow_name":
                data[key] = "nightly report"
            if key.endswith("_data") and data[key] is None:
                data[key] = {"model": "gpt-4o-mini", "nested": {"ünï": ["cödé", 1, 2.0]}}
        original = type(original).from_dict(data)  # type: ignore[assignment]
        stored = storage.upsert(original)
        assert stored.version == 1  # type: ignore[attr-defined]
        got = storage.read("s1")
        assert got is not None
        assert type(got) is _spec(store).session_class
        assert _fields(got) == _fields(original)
        assert got.created_at == stored.created_at  # type: ignore[attr-defined]
        assert got.updated_at == stored.updated_at  # type: ignore[attr-defined]
        assert isinstance(got.created_at, int)  # type: ignore[attr-defined]
        check_session(store.mode, got)

    def test_upsert_keeps_created_at_and_sets_updated_at(self, store: Store) -> None:
        storage = store()
        first = storage.upsert(_session(store, "s", created_at=1_000, updated_at=1_000))
        assert first.created_at == 1_000  # type: ignore[attr-defined]
        assert first.updated_at >= int(time.time()) - 5  # type: ignore[attr-defined]
        second = storage.upsert(_session(store, "s", created_at=5_000, user_id="u"))
        assert second.created_at == 1_000  # type: ignore[attr-defined]
        assert second.updated_at >= first.updated_at  # type: ignore[attr-defined]
        got = storage.read("s")
        assert got is not None
        assert got.created_at == 1_000  # type: ignore[attr-defined]
        assert got.user_id == "u"  # type: ignore[attr-defined]

    def test_new_session_without_created_at_gets_now(self, store: Store) -> None:
        before = int(time.time())
        storage = store()
        stored = storage.upsert(_session(store, "s"))
        assert before <= stored.created_at <= int(time.time())  # type: ignore[attr-defined]
        assert storage.upsert(_session(store, "zero", created_at=0)).created_at == 0  # type: ignore[attr-defined]
        assert storage.get_all_session_ids() == ["s", "zero"]

    def test_read_checks_user_id(self, store: Store) -> None:
        storage = store()
        storage.upsert(_session(store, "s", user_id="alice"))
        assert storage.read("s", user_id="alice") is not None
        assert storage.read("s", user_id="bob") is None
        storage.upsert(_session(store, "t"))
        assert storage.read("t", user_id="alice") is None

    def test_listing_filters_and_orders_newest_first(self, store: Store) -> None:
        storage = store()
        rows = [
            ("a", "u1", "e1", 100),
            ("b", "u1", "e2", 300),
            ("c", "u2", "e1", 200),
            ("d", "u1", "e1", 400),
            ("e", None, None, 50),
        ]
        for sid, user, entity, created in rows:
            storage.upsert(_session(store, sid, user_id=user, entity_id=entity, created_at=created))
        assert storage.get_all_session_ids() == ["d", "b", "c", "a", "e"]
        assert storage.get_all_session_ids(user_id="u1") == ["d", "b", "a"]
        assert storage.get_all_session_ids(entity_id="e1") == ["d", "c", "a"]
        assert storage.get_all_session_ids(user_id="u1", entity_id="e1") == ["d", "a"]
        assert storage.get_all_session_ids(user_id="nobody") == []
        assert [s.session_id for s in storage.get_all_sessions(user_id="u1")] == ["d", "b", "a"]
        recent = storage.get_recent_sessions(user_id="u1")
        assert [s.session_id for s in recent] == ["d", "b"]
        assert [s.session_id for s in storage.get_recent_sessions(limit=4)] == [
            "d",
            "b",
            "c",
            "a",
        ]
        assert storage.get_recent_sessions(limit=0) == []
        everyone = storage.get_all_sessions()
        assert [s.session_id for s in everyone] == ["d", "b", "c", "a", "e"]
        assert all(type(s) is _spec(store).session_class for s in everyone)

    def test_listing_ties_are_ordered_by_id(self, store: Store) -> None:
        storage = store()
        for sid in ["m", "k", "z", "a"]:
            storage.upsert(_session(store, sid, created_at=777))
        assert storage.get_all_session_ids() == ["a", "k", "m", "z"]

    def test_ties_are_ordered_by_id_in_code_point_order_in_every_listing(
        self, store: Store
    ) -> None:
        # Python's order of str: code points, neither a locale's order nor one that folds
        # case; a limit that cuts through a tie keeps the first ids of it.
        storage = store()
        ids = ["b", "B", "a", "a b", "ab", "A", "_", "é", "e\u0301", "Z", "10", "9", "😀", "\uff41"]
        for sid in ids:
            storage.upsert(_session(store, sid, user_id="u", entity_id="e", created_at=777))
        storage.upsert(_session(store, "newer", user_id="u", entity_id="e", created_at=778))
        storage.upsert(_session(store, "older", user_id="u", entity_id="e", created_at=776))
        want = ["newer", *sorted(ids), "older"]
        for reader in (storage, store()):
            assert reader.get_all_session_ids() == want
            assert reader.get_all_session_ids(user_id="u", entity_id="e") == want
            assert [s.session_id for s in reader.get_all_sessions(entity_id="e")] == want
            for limit in (1, 4, 9):
                recent = reader.get_recent_sessions(user_id="u", limit=limit)
                assert [s.session_id for s in recent] == want[:limit], limit

    def test_ids_that_differ_only_in_case_spaces_or_normal_form_are_apart(
        self, store: Store
    ) -> None:
        # Compared as the strings they are: never folded, trimmed or normalized, whether
        # session ids, user ids or entity ids.
        storage = store()
        kin = ["alice", "Alice", "ALICE", "alice ", " alice", "alicé", "alice\u0301", "\uff41lice"]
        for n, name in enumerate(kin):
            storage.upsert(
                _session(store, name, user_id=name, entity_id=name, session_data={"n": n})
            )
        for reader in (storage, store()):
            for n, name in enumerate(kin):
                got = reader.read(name)
                assert got is not None
                assert got.session_data == {"n": n}, name  # type: ignore[attr-defined]
                assert reader.read(name, user_id=name) is not None
                others = [k for k in kin if k != name]
                assert all(reader.read(name, user_id=k) is None for k in others), name
                assert reader.get_all_session_ids(user_id=name) == [name]
                assert reader.get_all_session_ids(entity_id=name) == [name]
        assert storage.delete_user("alice") == 1
        assert storage.delete_session("Alice") is True
        assert sorted(store().get_all_session_ids()) == sorted(kin[2:])

    def test_listings_by_odd_user_and_entity_ids_never_mix(self, store: Store) -> None:
        # Ids that a store might join into one key or path: pairs whose texts run together
        # alike, separators, patterns and names of other index keys.
        storage = store()
        pairs = [
            ("ab", "c"),
            ("a", "bc"),
            ("a:b", "c"),
            ("a", "b:c"),
            ("u:x", "e:y"),
            ("*", "?"),
            ("{tag}", "../up"),
            ("line\nbreak", "a/b"),
            ("%", "_"),
        ]
        for n, (user, entity) in enumerate(pairs):
            storage.upsert(_session(store, f"s{n}", user_id=user, entity_id=entity))
        for reader in (storage, store()):
            for n, (user, entity) in enumerate(pairs):
                mine = {f"s{k}" for k, pair in enumerate(pairs) if pair[0] == user}
                assert set(reader.get_all_session_ids(user_id=user)) == mine, user
                theirs = {f"s{k}" for k, pair in enumerate(pairs) if pair[1] == entity}
                assert set(reader.get_all_session_ids(entity_id=entity)) == theirs, entity
                both = reader.get_all_session_ids(user_id=user, entity_id=entity)
                assert both == [f"s{n}"], (user, entity)
        assert storage.delete_user("a") == 2
        assert store().get_all_session_ids(entity_id="bc") == []
        assert store().get_all_session_ids(entity_id="b:c") == []
        assert sorted(store().get_all_session_ids(entity_id="c")) == ["s0", "s2"]

    def test_listing_follows_changed_user_and_entity(self, store: Store) -> None:
        storage = store()
        storage.upsert(_session(store, "s", user_id="u1", entity_id="e1"))
        storage.upsert(_session(store, "s", user_id="u2", entity_id="e2"))
        assert storage.get_all_session_ids(user_id="u1") == []
        assert storage.get_all_session_ids(entity_id="e1") == []
        assert storage.get_all_session_ids(user_id="u2", entity_id="e2") == ["s"]

    def test_delete_session_removes_exactly_one(self, store: Store) -> None:
        storage = store()
        for sid in ["a", "b", "c"]:
            storage.upsert(_session(store, sid, user_id="u"))
        assert storage.delete_session("b") is True
        assert storage.read("b") is None
        assert storage.delete_session("b") is False
        assert sorted(storage.get_all_session_ids()) == ["a", "c"]
        assert sorted(storage.get_all_session_ids(user_id="u")) == ["a", "c"]
        assert storage.read("a") is not None

    def test_a_delete_naming_the_version_it_read_keeps_a_session_saved_since(
        self, store: Store
    ) -> None:
        storage, other = store(), store()
        first = storage.upsert(_session(store, "s", user_id="u"))
        version = first.version  # type: ignore[attr-defined]
        other.upsert(_session(store, "s", user_id="u", session_data={"saved": "since"}))
        with pytest.raises(ConflictError) as raised:
            storage.delete_session("s", expected_version=version)
        assert (raised.value.expected, raised.value.actual) == (version, version + 1)
        kept = other.read("s")
        assert kept is not None
        assert kept.session_data == {"saved": "since"}  # type: ignore[attr-defined]
        assert other.get_all_session_ids(user_id="u") == ["s"]
        assert storage.delete_session("s", expected_version=version + 1) is True
        assert other.read("s") is None
        assert other.get_all_session_ids() == []
        assert storage.delete_session("s", expected_version=1) is False
        for bad in (0, True, 1.0, "1"):
            with pytest.raises(TypeError):
                storage.delete_session("s", expected_version=bad)  # type: ignore[arg-type]

    def test_a_delete_naming_a_version_removes_a_session_made_again_at_it_meanwhile(
        self, store: Store
    ) -> None:
        # Found at version 2, then removed and made again at version 1 (by another process)
        # before the version it has is read: it is at the version named, and goes.
        storage, other = store(), store()
        storage.upsert(_session(store, "s", user_id="u"))
        storage.upsert(_session(store, "s", user_id="u"))
        reads = storage.read

        def made_again_first(session_id: str) -> Session | None:
            storage.read = reads  # type: ignore[method-assign]
            other.delete_session("s")
            other.upsert(_session(store, "s", user_id="u", session_data={"again": True}))
            return reads(session_id)

        storage.read = made_again_first  # type: ignore[assignment]
        assert storage.delete_session("s", expected_version=1) is True
        assert other.read("s") is None

    def test_read_many_keeps_the_order_asked_and_leaves_out_what_is_not_there(
        self, store: Store
    ) -> None:
        storage = store()
        storage.create()
        for sid in ["a", "b", "c"]:
            storage.upsert(_session(store, sid, user_id="u"))
        got = storage.read_many(["c", "missing", "a", "b"])
        assert [s.session_id for s in got] == ["c", "a", "b"]
        assert got == [storage.read("c"), storage.read("a"), storage.read("b")]
        assert storage.read_many([]) == []
        with pytest.raises(InvalidIdentifierError):
            storage.read_many(["a", ""])
        # One id given as it is read as the ids of its characters: "ab" gave sessions a and b.
        for one in ("ab", b"ab"):
            with pytest.raises(InvalidIdentifierError, match="read_many"):
                storage.read_many(one)  # type: ignore[arg-type]
        # None (a variable left unset) raised TypeError: 'NoneType' object is not iterable.
        for none in (None, 5):
            with pytest.raises(InvalidIdentifierError, match="read_many takes a list"):
                storage.read_many(none)  # type: ignore[arg-type]
        assert [s.session_id for s in storage.read_many(iter(("b", "a")))] == ["b", "a"]

    def test_read_many_of_an_id_asked_twice_gives_two_copies(self, store: Store) -> None:
        storage = store()
        storage.upsert(_session(store, "a", session_data={"state": {"seen": [1]}}))
        for reader in (storage, store()):
            first, second = reader.read_many(["a", "a"])
            first.session_data["state"]["seen"].append(2)  # type: ignore[attr-defined]
            assert second.session_data == {"state": {"seen": [1]}}  # type: ignore[attr-defined]
            assert reader.read("a") == second

    def test_a_read_for_a_user_id_savegame_cannot_store_is_refused(self, store: Store) -> None:
        storage = store()
        storage.upsert(_session(store, "a", user_id="u"))
        for odd in ("", "a\x00b"):
            with pytest.raises(InvalidIdentifierError):
                storage.read("a", user_id=odd)
            with pytest.raises(InvalidIdentifierError):
                storage.get_all_session_ids(user_id=odd)
        assert storage.read("a", user_id="u") is not None

    def test_an_expected_version_of_another_type_is_refused(self, store: Store) -> None:
        storage = store()
        storage.upsert(_session(store, "a"))
        for odd in (True, 1.0, "1", -1):
            with pytest.raises(TypeError, match="expected_version"):
                storage.upsert(_session(store, "a"), expected_version=odd)  # type: ignore[arg-type]
        assert storage.read("a").version == 1  # type: ignore[union-attr]

    def test_update_refuses_fewer_than_one_attempt(self, store: Store) -> None:
        storage = store()
        storage.upsert(_session(store, "a"))
        for attempts in (0, -1, 1.5, None):
            with pytest.raises(InvalidIdentifierError, match="max_attempts"):
                storage.update("a", lambda s: s, max_attempts=attempts)  # type: ignore[arg-type]
        assert storage.read("a").version == 1  # type: ignore[union-attr]

    def test_update_refuses_an_fn_it_cannot_call(self, store: Store) -> None:
        storage = store()
        storage.upsert(_session(store, "a"))
        for odd in (None, "s", _session(store, "a")):
            with pytest.raises(InvalidIdentifierError, match="update needs fn"):
                storage.update("a", odd)  # type: ignore[arg-type]
        assert storage.read("a").version == 1  # type: ignore[union-attr]

    def test_reads_and_removals_on_a_store_not_made_make_nothing(self, store: Store) -> None:
        storage = store()
        existed = storage.table_exists()
        assert storage.read("a") is None
        assert storage.get_all_session_ids() == []
        assert storage.delete_session("a") is False
        assert storage.delete_user("u") == 0
        assert storage.purge_expired() == 0
        assert storage.table_exists() == existed

    def test_a_store_is_there_from_its_first_write_and_never_from_a_read(
        self, store: Store
    ) -> None:
        # The command line tells a mistyped store from an empty one by table_exists(): a
        # store never written is not there, and reading, listing or removing on it, as the
        # command line does, must not make it so (nor leave anything behind to find).
        storage = store.require("persistent")
        assert not storage.table_exists(), (
            f"{type(storage).__name__}.table_exists() says a store never written is there: a "
            "persistent backend overrides Storage.table_exists() (True by default), and its "
            "constructor makes nothing"
        )
        assert storage.read("a") is None
        assert storage.read_many(["a", "b"]) == []
        assert storage.get_all_sessions() == []
        assert storage.get_all_session_ids(user_id="u", entity_id="e") == []
        assert storage.get_recent_sessions(user_id="u") == []
        assert storage.delete_session("a") is False
        assert storage.delete_user("u") == 0
        assert storage.purge_expired() == 0
        storage.drop()
        assert not storage.table_exists()
        assert not store().table_exists()
        storage.upsert(_session(store, "a"))
        assert storage.table_exists()
        assert store().table_exists()

    def test_drop_then_create_gives_an_empty_store(self, store: Store) -> None:
        storage = store()
        storage.create()
        storage.upsert(_session(store, "a"))
        storage.drop()
        storage.create()
        storage.create()
        assert storage.table_exists()
        assert storage.read("a") is None
        assert storage.get_all_session_ids() == []
        storage.upsert(_session(store, "b"))
        assert storage.get_all_session_ids() == ["b"]

    def test_a_store_dropped_by_another_storage_is_empty_and_takes_writes(
        self, store: Store
    ) -> None:
        # The storage that saw the store never acts on what it knew of it: it reads and lists
        # nothing, as a storage just opened would, and its next write makes the store again.
        storage, other = store(), store()
        storage.upsert(_session(store, "a", user_id="u"))
        assert storage.read("a") is not None
        other.drop()
        assert storage.read("a") is None
        assert storage.get_all_session_ids() == []
        assert storage.get_recent_sessions(user_id="u") == []
        assert storage.read_many(["a"]) == []
        assert storage.delete_session("a") is False
        storage.upsert(_session(store, "b", user_id="u"))
        assert store().get_all_session_ids(user_id="u") == ["b"]
        assert storage.read("a") is None
        assert storage.table_exists()
        assert store().table_exists()

    @pytest.mark.parametrize(
        ("call", "empty"),
        [
            (methodcaller("delete_session", "a"), False),
            (methodcaller("delete_session", "a", expected_version=1), False),
            (methodcaller("delete_user", "u"), 0),
            (methodcaller("purge_expired"), 0),
            (methodcaller("read", "a"), None),
            (methodcaller("read_many", ["a"]), []),
            (methodcaller("get_recent_sessions", user_id="u"), []),
            (methodcaller("get_all_session_ids"), []),
        ],
        ids=[
            "delete_session",
            "delete_session_at_a_version",
            "delete_user",
            "purge_expired",
            "read",
            "read_many",
            "get_recent_sessions",
            "get_all_session_ids",
        ],
    )
    def test_the_first_call_after_another_storage_drops_the_store_finds_it_empty(
        self, store: Store, call: Callable[[Storage], Any], empty: Any
    ) -> None:
        # Each call, made first after the drop, meets the store as it is gone: none may act
        # on, or fail on, what the storage knew of it before.
        storage, other = store(), store()
        storage.upsert(_session(store, "a", user_id="u"))
        assert storage.read("a") is not None
        other.drop()
        assert call(storage) == empty
        assert storage.read("a") is None

    def test_reopened_store_keeps_sessions(self, store: Store) -> None:
        storage = store.require("persistent")
        storage.upsert(make_session(store.mode, "kept", round_=2))
        storage.close()
        again = store()
        got = again.read("kept")
        assert got is not None
        assert check_session(store.mode, got) == 2
        assert again.get_all_session_ids(user_id="user-1") == ["kept"]

    def test_wrong_session_class_is_refused(self, store: Store) -> None:
        storage = store()
        other = next(m for m in MODES if MODES[m].session_class is not _spec(store).session_class)
        wrong = MODES[other].session_class(session_id="x")
        with pytest.raises(SerializationError, match=_spec(store).session_class.__name__):
            storage.upsert(wrong)
        assert storage.read("x") is None

    def test_plain_text_fields_refuse_nul_and_lone_surrogates(self, store: Store) -> None:
        # Kept in text columns as they are, where no SQL database can hold these; any other
        # text round-trips.
        fields = _spec(store).text_fields
        if not fields:
            pytest.skip(f"{store.mode} sessions have no plain text field but ids")
        storage = store()
        for name in fields:
            for bad in ("a\x00b", "x\ud800y"):
                with pytest.raises(SerializationError, match=name):
                    storage.upsert(_session(store, "s", **{name: bad}))
            assert storage.read("s") is None
            text = "ü 😀 \u2028 \ufdd0 " + "x" * 2000
            storage.upsert(_session(store, name, **{name: text}))
            for got in _read_both(store, storage, name):
                assert getattr(got, name) == text

    def test_plain_text_fields_refuse_what_is_not_text(self, store: Store) -> None:
        # A text column refused some of these only as the write ran (in the middle of an
        # import, once the lines before were stored) or kept them as another type, while
        # the file backends stored them as JSON.
        fields = _spec(store).text_fields
        if not fields:
            pytest.skip(f"{store.mode} sessions have no plain text field but ids")
        storage = store()
        for name in fields:
            for bad in ({"x": 1}, ["a"], 5, 1.5, True, uuid.UUID(int=1)):
                with pytest.raises(SerializationError, match=f"{name} must be a str"):
                    storage.upsert(_session(store, "s", **{name: bad}))
            assert storage.read("s") is None

    def test_versions_advance_and_stale_writes_conflict(self, store: Store) -> None:
        storage = store()
        assert storage.upsert(_session(store, "s"), expected_version=0).version == 1  # type: ignore[attr-defined]
        with pytest.raises(ConflictError) as info:
            storage.upsert(_session(store, "s", user_id="late"), expected_version=0)
        assert (info.value.expected, info.value.actual) == (0, 1)
        v2 = storage.upsert(_session(store, "s", user_id="u2"), expected_version=1)
        assert v2.version == 2  # type: ignore[attr-defined]
        with pytest.raises(ConflictError):
            storage.upsert(_session(store, "s", user_id="stale"), expected_version=1)
        got = storage.read("s")
        assert got is not None
        assert (got.user_id, got.version) == ("u2", 2)  # type: ignore[attr-defined]
        assert storage.upsert(_session(store, "s", user_id="plain")).version == 3  # type: ignore[attr-defined]
        with pytest.raises(ConflictError):
            storage.upsert(_session(store, "missing"), expected_version=4)
        assert storage.read("missing") is None

    def test_a_write_naming_the_version_of_a_session_deleted_since_conflicts(
        self, store: Store
    ) -> None:
        # What update() meets when another process deleted the session it read: the write
        # must not make the session again, whether the writer remembers it or not.
        for n, writer in enumerate((store(), store())):
            sid = f"s{n}"
            read = writer.upsert(_with_runs(store, sid, [{"run_id": "0"}], user_id="u"))
            if n:
                writer = store()
            store().delete_session(sid)
            with pytest.raises(ConflictError) as info:
                writer.upsert(read, expected_version=read.version)  # type: ignore[attr-defined]
            assert (info.value.expected, info.value.actual) == (1, 0)
            for reader in (writer, store()):
                assert reader.read(sid) is None
                assert reader.get_all_session_ids(user_id="u") == []

    def test_create_on_a_store_holding_sessions_keeps_them(self, store: Store) -> None:
        storage = store()
        stored = storage.upsert(_with_runs(store, "s", [{"run_id": "0"}], user_id="u"))
        for creator in (storage, store()):
            creator.create()
            creator.create()
        for reader in (storage, store()):
            assert reader.read("s") == stored
            assert reader.get_all_session_ids(user_id="u") == ["s"]

    def test_update_reads_modifies_and_writes(self, store: Store) -> None:
        storage = store()

        def bump(session: Any) -> Any:
            if session is None:
                return _session(store, "c", session_data={"counter": 1})
            session.session_data["counter"] += 1
            return session

        for _ in range(3):
            result = storage.update("c", bump)
        assert result.session_data == {"counter": 3}
        assert result.version == 3
        assert storage.update("c", lambda s: None).version == 3
        with pytest.raises(InvalidIdentifierError):
            storage.update("c", lambda s: _session(store, "other"))
        # A dict of the session (fn working on data rather than on the session) is refused
        # as upsert refuses it, naming the class to return.
        with pytest.raises(SerializationError, match="objects, not dict"):
            storage.update("c", lambda s: s.to_dict())
        assert storage.read("c") == result

    def test_update_raises_what_fn_raises_as_it_is(self, store: Store) -> None:
        # fn is the caller's code: what it raises (a file of its own that is missing, its
        # own database failing) is the caller's error, never taken for the store's.
        import sqlite3

        storage = store()
        stored = storage.upsert(_session(store, "c"))
        raised: list[BaseException] = [
            FileNotFoundError(2, "No such file or directory", "prompt.txt"),
            PermissionError(13, "Permission denied"),
            sqlite3.OperationalError("no such table: prompts"),
            UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        ]
        for exc in raised:

            def fail(session: Any, exc: BaseException = exc) -> Any:
                raise exc

            with pytest.raises(type(exc)) as caught:
                storage.update("c", fail)
            assert caught.value is exc
        assert storage.read("c") == stored
        assert storage.upsert(_session(store, "c")).version == stored.version + 1  # type: ignore[attr-defined]

    def test_sessions_are_values(self, store: Store) -> None:
        storage = store()
        given = make_session(store.mode, "v", round_=1)
        stored = storage.upsert(given)
        _runs_of(store, given).append({"run_id": "sneaky"})
        given.session_data["round"] = 99  # type: ignore[attr-defined]
        _runs_of(store, stored).clear()
        first = storage.read("v")
        assert first is not None
        first.session_data["round"] = 42  # type: ignore[attr-defined]
        _runs_of(store, first).append({"run_id": "sneaky"})
        again = storage.read("v")
        assert again is not None
        assert check_session(store.mode, again) == 1
        listed = storage.get_all_sessions()
        listed[0].session_data.clear()  # type: ignore[attr-defined]
        final = storage.read("v")
        assert final is not None
        assert check_session(store.mode, final) == 1

    def test_nothing_a_call_gives_or_is_given_is_shared_with_the_store(self, store: Store) -> None:
        # Changed deep inside (a run's nested list, a nested dict of the state), not only at
        # the top: a storage that remembers a session must remember a copy, whatever call
        # handed the session out.
        storage = store()

        def given() -> Session:
            runs = [{"run_id": "0", "said": {"words": ["hi"]}}, {"run_id": "1"}]
            return _with_runs(store, "v", runs, user_id="u", session_data={"deep": {"seen": [1]}})

        want = given()

        def spoil(session: Session | None) -> None:
            assert session is not None
            session.session_data["deep"]["seen"].append("spoilt")  # type: ignore[attr-defined]
            runs = _runs_of(store, session)
            runs[0]["said"]["words"].append("spoilt")
            runs[1]["added"] = "spoilt"
            runs.append({"run_id": "spoilt"})

        def unchanged() -> None:
            for reader in (storage, store()):
                got = reader.read("v")
                assert got is not None
                assert got.session_data == want.session_data  # type: ignore[attr-defined]
                assert _runs_of(store, got) == _runs_of(store, want)

        session = given()
        stored = storage.upsert(session)
        spoil(session)
        unchanged()
        spoil(stored)
        unchanged()
        spoil(storage.read("v"))
        unchanged()
        for listing in (
            methodcaller("get_all_sessions", user_id="u"),
            methodcaller("get_recent_sessions", limit=1),
            methodcaller("read_many", ["v"]),
        ):
            spoil(listing(storage)[0])
            unchanged()
        spoil(storage.restore(given()))
        unchanged()
        spoil(storage.update("v", lambda s: None))
        unchanged()
        spoil(storage.update("v", lambda s: s))
        unchanged()

    def test_a_storage_whose_mode_is_set_acts_as_one_opened_in_it(self, store: Store) -> None:
        # It has looked at the store in the mode it was opened in (a read, a listing) but
        # written nothing: the store takes the new mode's sessions as if opened in it.
        before = next(m for m in MODES if MODES[m].session_class is not _spec(store).session_class)
        storage = store(mode=before)
        assert storage.read("s") is None
        assert storage.get_all_session_ids(user_id="user-1") == []
        storage.mode = store.mode  # type: ignore[assignment]
        assert storage.mode == store.mode
        stored = storage.upsert(make_session(store.mode, "s", round_=2))
        for reader in (storage, store()):
            got = reader.read("s")
            assert got is not None
            assert type(got) is _spec(store).session_class
            assert check_session(store.mode, got) == 2
            assert got.version == stored.version  # type: ignore[attr-defined]
            assert reader.get_all_session_ids(user_id="user-1", entity_id="entity-1") == ["s"]

    def test_every_json_field_refuses_what_json_cannot_hold(self, store: Store) -> None:
        # Each field is encoded on its own where a backend keeps it in a column or entry of
        # its own: every one refuses, naming itself, before anything is written.
        spec = _spec(store)
        names = [n for n, kind in spec.kinds.items() if kind in (dict, list)]
        assert names
        storage = store()
        before = storage.upsert(_session(store, "s", user_id="u"))
        for name in names:
            for bad in ({"x": {1, 2}}, {"x": [math.nan]}, {"x": object()}, {"x": b"b"}):
                value = [bad] if spec.kinds[name] is list else bad
                for sid in ("s", "new"):
                    with pytest.raises(SerializationError, match=name):
                        storage.upsert(_session(store, sid, **{name: value}))
        for reader in (storage, store()):
            assert reader.read("s") == before
            assert reader.get_all_session_ids() == ["s"]

    def test_runs_round_trip_as_they_grow_change_and_shrink(self, store: Store) -> None:
        storage = store()

        def check(runs: Any) -> None:
            session = _with_runs(store, "r", runs, user_id="u")
            storage.upsert(session)
            got = storage.read("r")
            assert got is not None
            assert _runs_of(store, got) == runs
            assert _fields(got) == _fields(session)

        runs = [{"run_id": str(i), "content": f"turn {i}", "n": i} for i in range(5)]
        check(runs)
        runs = [*runs, {"run_id": "5", "content": "ünïcödé ✓ 🎲"}]
        check(runs)
        runs = [*runs, {"run_id": "6", "content": "long " * 30_000}]
        check(runs)
        check([*runs, {"run_id": "7"}])
        runs[2] = {"run_id": "2", "content": "edited in place", "extra": {"deep": [1, [2]]}}
        check(runs)
        check(runs[:2])
        check([])
        check([{"run_id": "x"}, "not a dict", 7, None, ["nested", "list"], {"run_id": "x"}])
        check(list(reversed(runs)))
        check(None)

    def test_a_run_that_is_itself_unstorable_is_refused_and_the_store_is_unchanged(
        self, store: Store
    ) -> None:
        # Backends that store each run on its own encode it alone, not inside the session.
        storage = store()
        storage.upsert(_with_runs(store, "r", [{"run_id": "0"}]))
        ran = []

        def generator() -> Iterator[Any]:
            ran.append(True)
            yield {"run_id": "from a generator"}

        for run, words in [
            (math.nan, "nan"),
            (math.inf, "inf"),
            (object(), "object"),
            ({1, 2}, "set"),
            (generator(), "generator"),
            (iter([{"run_id": "i"}]), "iterator"),
        ]:
            for session_id in ("r", "new"):
                with pytest.raises(SerializationError, match=words):
                    storage.upsert(_with_runs(store, session_id, [{"run_id": "0"}, run]))
        assert not ran, "a generator given as a run was run"
        got = storage.read("r")
        assert got is not None
        assert _runs_of(store, got) == [{"run_id": "0"}]
        assert storage.get_all_session_ids() == ["r"]

    def test_a_reader_that_remembers_the_runs_sees_every_change_another_storage_made(
        self, store: Store
    ) -> None:
        # The reader remembers the runs it read last; what the writer changes must reach it
        # whether runs were added, edited, retyped, reordered, dropped, or left as they were.
        reader, writer = store(), store()
        ordered = "key_order" in type(reader).capabilities
        runs: list[Any] = [{"run_id": str(i), "n": i, "content": f"turn {i}"} for i in range(6)]

        def check(new_runs: Any, **fields: Any) -> None:
            session = _with_runs(store, "w", new_runs, **fields)
            writer.upsert(session)
            got = reader.read("w")
            assert got is not None
            assert _exact(_runs_of(store, got), ordered) == _exact(new_runs, ordered)
            assert _fields(got) == _fields(session)

        check(runs)
        check([*runs, {"run_id": "6"}, {"run_id": "7"}])
        check([*runs, {"run_id": "6"}, {"run_id": "7"}], session_data={"only": "the header"})
        runs[1] = {"run_id": "1", "n": 1.0, "content": "turn 1"}
        check(runs)
        runs[4] = {"content": "turn 4", "n": 4, "run_id": "4"}
        check([*runs, {"run_id": "8"}])
        check(runs[:3])
        check([runs[1], runs[0], runs[2], {"run_id": "9"}])
        check([])
        check(runs)

    def test_a_run_changed_only_in_type_or_key_order_is_saved(self, store: Store) -> None:
        # ``==`` calls these equal; what is stored must not.
        storage = store()
        runs: list[Any] = [
            {"run_id": "0", "n": 1, "x": 0, "ok": True, "a": 1, "b": 2},
            {"run_id": "1", "text": "unchanged"},
        ]
        storage.upsert(_with_runs(store, "t", runs))
        runs[0]["n"] = True
        runs[0]["x"] = 0.0
        runs[0]["ok"] = 1
        runs[0] = {"b": 2, **{k: v for k, v in runs[0].items() if k != "b"}}
        runs.append({"run_id": "2"})
        storage.upsert(_with_runs(store, "t", runs))
        ordered = "key_order" in type(storage).capabilities
        for reader in (storage, store()):
            got = reader.read("t")
            assert got is not None
            assert _exact(_runs_of(store, got), ordered) == _exact(runs, ordered)

    @pytest.mark.parametrize("copied", [False, True], ids=["kept", "read-back"])
    def test_a_run_grown_in_place_or_runs_joined_into_one_are_saved(
        self, store: Store, copied: bool
    ) -> None:
        # Changes after which the runs begin with the bytes the runs before them were
        # written as by a format that fills a dict or a list after making it (as pickle
        # does, in batches of 1,000 items for a list): an empty run filled, a run of 1,000
        # items given one more, two runs made into one pair.
        storage = store()
        ordered = "key_order" in type(storage).capabilities

        def fill(runs: list[Any]) -> None:
            runs[-1]["content"] = "filled in later"

        def append(runs: list[Any]) -> None:
            runs[-1].append("one more")

        def pair(runs: list[Any]) -> None:
            runs[1:] = [(runs[1], runs[2])]

        cases: list[tuple[list[Any], Callable[[list[Any]], None]]] = [
            ([{"run_id": "0"}, {}], fill),
            ([{"run_id": "0"}, []], append),
            ([{"run_id": "0"}, list(range(1000))], append),
            ([{"run_id": "0"}, {"run_id": "1"}, {"run_id": "2"}], pair),
        ]
        for n, (runs, change) in enumerate(cases):
            sid = f"grown-{n}"
            storage.upsert(_with_runs(store, sid, runs))
            if copied:
                got = storage.read(sid)
                assert got is not None
                runs = _runs_of(store, got)
            change(runs)
            storage.upsert(_with_runs(store, sid, runs))
            want = _exact(json.loads(json.dumps(runs)), ordered)
            for reader in (storage, store()):
                read = reader.read(sid)
                assert read is not None
                assert _exact(_runs_of(store, read), ordered) == want, sid

    def test_runs_kept_by_the_caller_and_changed_in_place_save_after_save(
        self, store: Store
    ) -> None:
        # The same objects saved again and again, as a caller that keeps its conversation
        # does: each save changes an old run in place, to a value ``==`` calls equal or
        # into a value it shares with another run.
        storage = store()
        shared: dict[str, Any] = {"deep": [1]}
        runs: list[Any] = [
            {"run_id": "0", "n": 1, "x": 0.0, "a": 1, "b": 2, "shared": shared},
            {"run_id": "1", "also": shared},
        ]

        def to_true() -> None:
            runs[0]["n"] = True

        def to_int() -> None:
            runs[0]["x"] = 0

        def reordered() -> None:
            items = list(runs[0].items())
            runs[0].clear()
            runs[0].update(reversed(items))

        def through_the_other_run() -> None:
            runs[1]["also"]["deep"].append(2)

        ordered = "key_order" in type(storage).capabilities
        for change in (None, None, to_true, to_int, reordered, through_the_other_run):
            if change is not None:
                change()
            runs.append({"run_id": str(len(runs))})
            storage.upsert(_with_runs(store, "kept", runs))
            for reader in (storage, store()):
                got = reader.read("kept")
                assert got is not None
                assert _exact(_runs_of(store, got), ordered) == _exact(runs, ordered)

    def test_a_session_made_again_elsewhere_is_not_taken_for_the_one_remembered(
        self, store: Store
    ) -> None:
        mine, theirs = store(), store()
        old = [{"run_id": f"old-{i}", "content": f"turn {i}"} for i in range(3)]
        mine.upsert(_with_runs(store, "s", old, user_id="u1"))
        theirs.delete_session("s")
        new = [{"run_id": f"new-{i}"} for i in range(2)]
        for _ in range(2):  # the same version as the one remembered, with other content
            theirs.upsert(_with_runs(store, "s", new, user_id="u2"))
        got = mine.read("s")
        assert got is not None
        assert (_runs_of(store, got), got.user_id) == (new, "u2")  # type: ignore[attr-defined]
        mine.upsert(_with_runs(store, "s", [*old, {"run_id": "more"}], user_id="u1"))
        theirs.delete_session("s")
        again = [{"run_id": "again"}]
        theirs.upsert(_with_runs(store, "s", again))
        mine.upsert(_with_runs(store, "s", [*old, {"run_id": "more"}, {"run_id": "last"}]))
        for reader in (mine, store()):
            got = reader.read("s")
            assert got is not None
            assert _runs_of(store, got) == [*old, {"run_id": "more"}, {"run_id": "last"}]
        assert store().get_all_session_ids(user_id="u2") == []

    def test_listings_and_read_many_see_what_another_storage_wrote(self, store: Store) -> None:
        mine, theirs = store(), store()
        for sid in ("a", "b", "c"):
            mine.upsert(_with_runs(store, sid, [{"run_id": f"{sid}-0"}], user_id="u"))
        assert len(mine.get_all_sessions(user_id="u")) == 3  # now remembered
        theirs.upsert(_with_runs(store, "b", [{"run_id": "b-0"}, {"run_id": "b-1"}], user_id="u"))
        theirs.delete_session("c")
        theirs.upsert(_with_runs(store, "c", [{"run_id": "c-new"}], user_id="u"))
        listed = {s.session_id: _runs_of(store, s) for s in mine.get_all_sessions(user_id="u")}
        assert listed == {
            "a": [{"run_id": "a-0"}],
            "b": [{"run_id": "b-0"}, {"run_id": "b-1"}],
            "c": [{"run_id": "c-new"}],
        }
        recent = mine.get_recent_sessions(user_id="u", limit=3)
        assert {s.session_id: _runs_of(store, s) for s in recent} == listed
        theirs.delete_session("a")
        assert [s.session_id for s in mine.read_many(["a", "b", "c"])] == ["b", "c"]
        assert [_runs_of(store, s) for s in mine.read_many(["c", "b"])] == [
            listed["c"],
            listed["b"],
        ]

    def test_the_runs_keep_their_place_among_the_keys(self, store: Store) -> None:
        storage = store.require("key_order")
        path = _spec(store).runs_path
        if len(path) == 1:
            pytest.skip("this mode keeps its runs in a field of the session")
        data = _session(store, "k").to_dict()
        set_path(data, path[:-1], {"first": 1, "runs": [{"run_id": "0"}], "last": 2})
        session = _spec(store).session_class.from_dict(data)
        assert session is not None
        storage.upsert(session)
        for reader in (storage, store()):
            got = reader.read("k")
            assert got is not None
            assert list(get_path(got.to_dict(), path[:-1])) == ["first", "runs", "last"]

    def _conversation(self, store: Store, turns: int) -> tuple[Session, list[Any]]:
        """A session whose message list holds its runs' own messages, as an agent's does."""
        if _spec(store).runs_path != ("memory", "runs"):
            pytest.skip("this mode keeps no message list beside its runs")
        runs = [
            {"run_id": f"r{i}", "messages": [{"role": "user", "content": f"turn {i}"}, {"n": i}]}
            for i in range(turns)
        ]
        messages = [m for run in runs for m in run["messages"]]
        memory = {"summary": "s", "runs": runs, "messages": messages, "after": [1]}
        return _session(store, "talk", memory=memory), messages

    def test_a_message_list_made_of_the_runs_messages_round_trips(self, store: Store) -> None:
        session, messages = self._conversation(store, 3)
        storage = store()
        ordered = "key_order" in type(storage).capabilities
        expected = _exact(session.to_dict()["memory"], ordered)
        stored = storage.upsert(session)
        assert _exact(stored.to_dict()["memory"], ordered) == expected
        for reader in (storage, store()):
            got = reader.read("talk")
            assert got is not None
            memory = got.to_dict()["memory"]
            assert _exact(memory, ordered) == expected
            memory["messages"][0]["content"] = "changed"  # a copy, not the runs' messages
            assert memory["runs"][0]["messages"][0]["content"] == "turn 0"
            (listed,) = reader.get_all_sessions()
            assert _exact(listed.to_dict()["memory"], ordered) == expected
        messages.append({"role": "user", "content": "not in any run"})
        storage.upsert(session)
        for reader in (storage, store()):
            got = reader.read("talk")
            assert got is not None
            assert got.to_dict()["memory"]["messages"] == messages

    def test_a_message_list_that_copies_the_runs_messages_round_trips(self, store: Store) -> None:
        session, _ = self._conversation(store, 2)
        memory = session.to_dict()["memory"]
        memory["messages"] = json.loads(json.dumps(memory["messages"]))  # equal, not the same
        storage = store()
        storage.upsert(session)
        got = store().read("talk")
        assert got is not None
        ordered = "key_order" in type(storage).capabilities
        assert _exact(got.to_dict()["memory"], ordered) == _exact(memory, ordered)

    def test_a_message_list_of_runs_stored_as_other_types_round_trips(self, store: Store) -> None:
        # The list holds the messages of the plain runs only, as an agent's would list them;
        # stored, the OrderedDict run and the tuple of messages are a dict and a list, whose
        # messages must not join the list on a read.
        session, messages = self._conversation(store, 1)
        memory = session.to_dict()["memory"]
        later = {"role": "user", "content": "later"}
        memory["runs"] += [
            collections.OrderedDict(run_id="r1", messages=[later]),
            {"run_id": "r2", "messages": (later,)},
        ]
        storage = store()
        stored = storage.upsert(session)
        for got in (stored, storage.read("talk"), store().read("talk")):
            assert got is not None
            assert got.to_dict()["memory"]["messages"] == messages

    def test_the_mark_of_a_message_list_is_refused_as_data(self, store: Store) -> None:
        self._conversation(store, 0)
        storage = store()
        with pytest.raises(SerializationError, match="messages"):
            storage.upsert(_session(store, "m", memory={"messages": MESSAGES_OF_RUNS}))
        assert storage.read("m") is None

    @pytest.mark.parametrize("cache_bytes", [0, 3000])
    def test_storages_remembering_little_or_nothing_keep_the_contract(
        self, store: Store, cache_bytes: int
    ) -> None:
        store.require("cache_bytes")
        small, other = store(cache_bytes=cache_bytes), store()
        runs = {f"s{i}": [{"run_id": f"{i}-0", "text": "x" * 500}] for i in range(8)}
        for _ in range(3):
            for sid, session_runs in runs.items():
                stored = small.upsert(_with_runs(store, sid, session_runs, user_id="u"))
                assert _runs_of(store, stored) == session_runs
                session_runs.append({"run_id": f"{sid}-{len(session_runs)}"})
        for sid, session_runs in runs.items():
            got = small.read(sid)
            assert got is not None
            assert _runs_of(store, got) == session_runs[:-1]
            with pytest.raises(ConflictError):
                small.upsert(got, expected_version=got.version - 1)  # type: ignore[attr-defined]
            other.upsert(_with_runs(store, sid, session_runs[:1], user_id="v"))
            got = small.read(sid)
            assert got is not None
            assert (_runs_of(store, got), got.user_id) == (session_runs[:1], "v")  # type: ignore[attr-defined]
        assert sorted(small.get_all_session_ids(user_id="v")) == sorted(runs)

    def test_runs_of_converted_types_round_trip_save_after_save(self, store: Store) -> None:
        storage = store()
        when = dt.datetime(2026, 1, 2, 3, 4, 5)
        runs: list[Any] = [{"run_id": "0", "at": when, "pair": (1, 2)}]
        for i in range(1, 4):
            stored = storage.upsert(_with_runs(store, "c", runs))
            assert _runs_of(store, stored)[0] == {
                "run_id": "0",
                "at": when.isoformat(),
                "pair": [1, 2],
            }
            runs.append({"run_id": str(i), "pair": (i,)})
        got = store().read("c")
        assert got is not None
        assert _runs_of(store, got)[-1] == {"run_id": "2", "pair": [2]}
        assert len(_runs_of(store, got)) == 3

    def test_a_write_by_another_storage_is_read(self, store: Store) -> None:
        mine, theirs = store(), store()
        mine.upsert(_session(store, "w", session_data={"by": "mine"}))
        assert mine.read("w").session_data == {"by": "mine"}  # type: ignore[union-attr]
        theirs.upsert(_session(store, "w", session_data={"by": "theirs"}))
        got = mine.read("w")
        assert got is not None
        assert got.session_data == {"by": "theirs"}  # type: ignore[attr-defined]
        assert got.version == 2  # type: ignore[attr-defined]

    def test_memory_without_runs_round_trips(self, store: Store) -> None:
        if _spec(store).runs_path[0] != "memory":
            pytest.skip("this mode keeps runs outside memory")
        storage = store()
        memories: list[Any] = [{"history": [1, 2]}, {}, None, {"runs": "inline text"}, {"runs": {}}]
        for memory in memories:
            session = _session(store, "m", memory=memory)
            storage.upsert(session)
            got = storage.read("m")
            assert got is not None
            assert got.memory == memory  # type: ignore[attr-defined]

    def test_delete_user_erases_every_session_of_that_user(self, store: Store) -> None:
        storage = store()
        for i in range(5):
            storage.upsert(_session(store, f"gone{i}", user_id="erase-me", entity_id="e"))
        storage.upsert(_session(store, "kept", user_id="keep-me", entity_id="e"))
        assert storage.delete_user("erase-me") == 5
        assert storage.get_all_session_ids(user_id="erase-me") == []
        assert storage.get_all_session_ids(entity_id="e") == ["kept"]
        assert all(storage.read(f"gone{i}") is None for i in range(5))
        assert storage.delete_user("erase-me") == 0
        assert storage.read("kept") is not None

    def test_delete_user_keeps_a_session_given_to_another_user_once_listed(
        self, store: Store
    ) -> None:
        storage, other = store(), store()
        for session_id in ("given", "erased"):
            storage.upsert(_session(store, session_id, user_id="leaving"))
        listed = storage._list

        def list_then_give(*args: Any) -> list[str]:
            ids = listed(*args)
            other.upsert(_session(store, "given", user_id="staying"))
            return ids

        storage._list = list_then_give  # type: ignore[assignment]
        assert storage.delete_user("leaving") == 1
        kept = other.read("given")
        assert kept is not None
        assert kept.user_id == "staying"  # type: ignore[attr-defined]
        assert other.get_all_session_ids(user_id="staying") == ["given"]
        assert other.read("erased") is None


ODD_IDS = [
    "../escape",
    "a/b",
    "/abs",
    "..",
    ".",
    "line\nbreak",
    "tab\there",
    "emoji 🎲 ✓",
    "x" * 300,
    "C:\\windows\\path",
    "spaces and 'quotes' \"double\"",
    "%2e%2e%2f",
    "CON",
    "ends with dot.",
    "-leading-dash",
    "{hash}:tag",
    "*",
]


def _apart(store: Store, mode: Mode) -> Storage:
    """A storage of ``mode`` on ``store``, skipping the test where the store keeps the
    sessions of every mode together (:attr:`Store.mixed_modes`)."""
    if store.mixed_modes is not None:
        pytest.skip(store.mixed_modes)
    return store(mode=mode)


_MODE_PAIRS: list[tuple[Mode, Mode]] = [
    ("agent", "team"),
    ("team", "agent"),
    ("workflow", "workflow_v2"),
    ("workflow_v2", "workflow"),
]
"""Pairs of modes whose sessions differ little (in the entity's id, or where the runs are),
for the tests of a storage of the second mode on the store of the first."""


class BackendContract:
    """Behaviour that does not depend on the mode; runs on the ``backend_store`` fixture."""

    def test_declared_capabilities_are_known(self, backend_store: Store) -> None:
        # A misspelt capability ("persistant") would skip the tests of the one meant, silently.
        declared = type(backend_store()).capabilities
        unknown = sorted(set(declared) - set(base.CAPABILITIES))
        assert not unknown, (
            f"{backend_store.backend} declares capabilities the suite does not know: "
            f"{unknown}; known: {sorted(base.CAPABILITIES)}"
        )

    @pytest.mark.parametrize("session_id", ODD_IDS)
    def test_any_session_id_round_trips(self, backend_store: Store, session_id: str) -> None:
        storage = backend_store()
        session = make_session(backend_store.mode, session_id, round_=1)
        storage.upsert(session)
        for got in _read_both(backend_store, storage, session_id):
            assert got.session_id == session_id
            assert check_session(backend_store.mode, got) == 1
        assert storage.get_all_session_ids(user_id="user-1") == [session_id]
        assert storage.delete_session(session_id) is True
        assert storage.read(session_id) is None

    def test_odd_ids_live_side_by_side(self, backend_store: Store) -> None:
        storage = backend_store()
        for i, sid in enumerate(ODD_IDS):
            storage.upsert(_session(backend_store, sid, created_at=1000 + i))
        assert storage.get_all_session_ids() == list(reversed(ODD_IDS))

    @pytest.mark.parametrize("bad", ["", "nul\x00byte", "\x00", "lone \udc80 surrogate"])
    def test_invalid_ids_are_refused(self, backend_store: Store, bad: str) -> None:
        storage = backend_store()
        storage.upsert(_session(backend_store, "ok"))
        with pytest.raises(InvalidIdentifierError):
            storage.upsert(_session(backend_store, bad))
        with pytest.raises(InvalidIdentifierError):
            storage.read(bad)
        with pytest.raises(InvalidIdentifierError):
            storage.delete_session(bad)
        with pytest.raises(InvalidIdentifierError):
            storage.upsert(_session(backend_store, "s", user_id=bad))
        with pytest.raises(InvalidIdentifierError):
            storage.get_all_session_ids(user_id=bad)
        assert storage.get_all_session_ids() == ["ok"]

    def test_documented_conversions(self, backend_store: Store) -> None:
        storage = backend_store()
        when = dt.datetime(2024, 5, 17, 13, 45, 30, 123456, tzinfo=dt.timezone.utc)
        ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
        data = {"when": when, "day": when.date(), "id": ident, "color": Color.RED, "pair": (1, 2)}
        storage.upsert(_session(backend_store, "conv", session_data=data))
        for got in _read_both(backend_store, storage, "conv"):
            assert got.session_data == {  # type: ignore[attr-defined]
                "when": "2024-05-17T13:45:30.123456+00:00",
                "day": "2024-05-17",
                "id": "12345678-1234-5678-1234-567812345678",
                "color": "red",
                "pair": [1, 2],
            }

    def test_documented_conversions_in_runs_and_state_of_every_kind(
        self, backend_store: Store
    ) -> None:
        # Runs are encoded one by one where a backend keeps them apart: each documented
        # form must come out of a run as out of the state.
        storage = backend_store()
        when = dt.datetime(2024, 5, 17, 13, 45, 30)
        data = {
            "naive": when,
            "time": dt.time(13, 45, 30, 500),
            "path": pathlib.PurePosixPath("/tmp/a b/c.txt"),
            "uuid": uuid.UUID(int=7),
            "color": Color.RED,
            "tuple": (1, (2, "x")),
        }
        written = {
            "naive": "2024-05-17T13:45:30",
            "time": "13:45:30.000500",
            "path": "/tmp/a b/c.txt",
            "uuid": "00000000-0000-0000-0000-000000000007",
            "color": "red",
            "tuple": [1, [2, "x"]],
        }
        session = _with_runs(backend_store, "conv", [{"run_id": "0", **data}], session_data=data)
        stored = storage.upsert(session)
        for got in [stored, *_read_both(backend_store, storage, "conv")]:
            assert got.session_data == written  # type: ignore[attr-defined]
            assert _runs_of(backend_store, got) == [{"run_id": "0", **written}]

    def test_ids_of_up_to_512_characters_round_trip_and_longer_are_refused(
        self, backend_store: Store
    ) -> None:
        # Characters, not bytes: 512 of four bytes each in UTF-8 and two code units in
        # UTF-16, in every id a store keeps and indexes.
        storage = backend_store()
        longest = "🎲" * 511 + "x"
        session = _session(backend_store, longest, user_id=longest, entity_id=longest)
        storage.upsert(session)
        for got in _read_both(backend_store, storage, longest):
            assert (got.session_id, got.user_id) == (longest, longest)  # type: ignore[attr-defined]
        for reader in (storage, backend_store()):
            assert reader.get_all_session_ids(user_id=longest, entity_id=longest) == [longest]
        too_long = longest + "y"
        with pytest.raises(InvalidIdentifierError, match="512"):
            storage.upsert(_session(backend_store, too_long))
        with pytest.raises(InvalidIdentifierError, match="512"):
            storage.upsert(_session(backend_store, "s", user_id=too_long))
        with pytest.raises(InvalidIdentifierError, match="512"):
            storage.read(too_long)
        with pytest.raises(InvalidIdentifierError, match="512"):
            storage.get_all_session_ids(user_id=too_long)
        assert storage.get_all_session_ids() == [longest]
        assert storage.delete_session(longest) is True
        assert backend_store().read(longest) is None

    def test_values_nested_as_deep_as_documented_round_trip_in_state_and_runs(
        self, backend_store: Store
    ) -> None:
        # 512 levels counted from the session itself (level 1): its state is level 2, a run
        # level 4 (memory, its runs, the run).
        storage = backend_store()

        def nested(levels: int) -> Any:
            value: Any = "bottom"
            for i in range(levels):
                value = {"k": value} if i % 2 else [value]
            return value

        state = {"x": nested(MAX_DEPTH - 2)}
        run = {"run_id": "0", "x": nested(MAX_DEPTH - 4)}
        storage.upsert(_with_runs(backend_store, "deep", [run], session_data=state))
        for got in _read_both(backend_store, storage, "deep"):
            assert got.session_data == state  # type: ignore[attr-defined]
            assert _runs_of(backend_store, got) == [run]
        for too_deep in (
            _session(backend_store, "deeper", session_data={"x": nested(MAX_DEPTH - 1)}),
            _with_runs(backend_store, "deeper", [{"run_id": "0", "x": nested(MAX_DEPTH - 3)}]),
        ):
            with pytest.raises(SerializationError, match="deeper"):
                storage.upsert(too_deep)
        assert storage.get_all_session_ids() == ["deep"]

    def test_values_to_convert_nested_as_deep_as_documented_are_stored(
        self, backend_store: Store
    ) -> None:
        # A value JSON does not hold as it is (a date, a tuple) is converted by a walk in
        # Python, a call a level: one that took two calls a level ran out of Python's
        # recursion limit, with RecursionError, past some 490 levels of the 512 allowed.
        storage = backend_store()

        def nested(levels: int, bottom: Any) -> Any:
            value = bottom
            for i in range(levels):
                value = {"k": value} if i % 2 else [value]
            return value

        day = dt.date(2026, 1, 2)
        state = {"x": nested(MAX_DEPTH - 2, day)}
        run = {"run_id": "0", "x": nested(MAX_DEPTH - 5, (day,))}
        storage.upsert(_with_runs(backend_store, "walked", [run], session_data=state))
        for got in _read_both(backend_store, storage, "walked"):
            assert got.session_data == {"x": nested(MAX_DEPTH - 2, "2026-01-02")}  # type: ignore[attr-defined]
            assert _runs_of(backend_store, got) == [
                {"run_id": "0", "x": nested(MAX_DEPTH - 5, ["2026-01-02"])}
            ]

    def test_restore_keeps_times_and_version_and_never_takes_a_version_back(
        self, backend_store: Store
    ) -> None:
        # What import and copy rely on to keep timestamps and versions.
        storage = backend_store()
        # The second restore is of an older copy: its times are taken, its version is not.
        for copied, expected in (
            ((1_000, 2_000, 7), (1_000, 2_000, 7)),
            ((500, 600, 3), (500, 600, 8)),
        ):
            created, updated, version = copied
            copy = _session(backend_store, "r", user_id="u", created_at=created, updated_at=updated)
            copy.version = version  # type: ignore[attr-defined]
            stored = storage.restore(copy)
            for got in (stored, *_read_both(backend_store, storage, "r")):
                assert (got.created_at, got.updated_at, got.version) == expected  # type: ignore[attr-defined]
        assert storage.get_all_session_ids(user_id="u") == ["r"]

    def test_a_restore_given_the_version_it_saw_never_writes_over_a_later_save(
        self, backend_store: Store
    ) -> None:
        # What a copy or an import relies on not to write the source's session over one
        # saved at the destination after it looked there (0: it found none).
        storage, user = backend_store(), backend_store()
        copy = _session(backend_store, "r", created_at=1_000, updated_at=2_000)
        copy.version = 7  # type: ignore[attr-defined]
        with pytest.raises(ConflictError) as raised:
            storage.restore(copy, expected_version=3)
        assert (raised.value.expected, raised.value.actual) == (3, 0)
        assert storage.read("r") is None
        stored = storage.restore(copy, expected_version=0)
        assert (stored.created_at, stored.updated_at, stored.version) == (1_000, 2_000, 7)  # type: ignore[attr-defined]
        saved = user.upsert(_session(backend_store, "r", user_id="u"))
        for seen in (0, 7):
            with pytest.raises(ConflictError) as raised:
                storage.restore(copy, expected_version=seen)
            assert (raised.value.expected, raised.value.actual) == (seen, 8)
            assert _read_both(backend_store, storage, "r") == [saved, saved]
        stored = storage.restore(copy, expected_version=8)
        for got in (stored, *_read_both(backend_store, storage, "r")):
            assert (got.created_at, got.updated_at, got.version) == (1_000, 2_000, 9)  # type: ignore[attr-defined]
        with pytest.raises(TypeError, match="expected_version"):
            storage.restore(copy, expected_version=True)

    def test_a_restore_without_created_at_keeps_the_stored_one(self, backend_store: Store) -> None:
        # A line written by hand for an import may lack it: the session replaced is as old as
        # before, as upsert keeps it, rather than made now and listed as the newest.
        storage = backend_store()
        storage.restore(_session(backend_store, "old", created_at=1_000, updated_at=2_000))
        storage.restore(_session(backend_store, "new", created_at=3_000, updated_at=3_000))
        before = int(time.time())
        stored = storage.restore(_session(backend_store, "old", user_id="u"))
        for got in (stored, *_read_both(backend_store, storage, "old")):
            assert got.created_at == 1_000  # type: ignore[attr-defined]
            assert got.updated_at >= before  # type: ignore[attr-defined]
        assert storage.get_all_session_ids() == ["new", "old"]

    def test_a_store_never_sees_or_drops_a_store_whose_name_extends_its_own(
        self, backend_store: Store
    ) -> None:
        # Prefix P and P:sub, folder F and F/sub, table t and t_sub: each store sees, lists,
        # removes and drops its own sessions only, with the same ids and users in both.
        outer, inner = backend_store(), backend_store.neighbouring()

        def fill(storage: Storage, side: str) -> None:
            for sid in ("both", f"only-{side}"):
                storage.upsert(
                    _with_runs(
                        backend_store,
                        sid,
                        [{"run_id": f"{side}-0"}],
                        user_id="u",
                        entity_id="e",
                        session_data={"side": side},
                    )
                )

        def holds(storage: Storage, side: str) -> None:
            ids = ["both", f"only-{side}"]
            for reader in (
                storage,
                backend_store.neighbouring() if side == "inner" else backend_store(),
            ):
                assert sorted(reader.get_all_session_ids()) == ids, side
                assert sorted(reader.get_all_session_ids(user_id="u", entity_id="e")) == ids
                for got in reader.get_all_sessions(user_id="u"):
                    assert got.session_data == {"side": side}, (side, got)  # type: ignore[attr-defined]
                    assert _runs_of(backend_store, got) == [{"run_id": f"{side}-0"}]
                assert reader.read("only-outer" if side == "inner" else "only-inner") is None

        fill(outer, "outer")
        fill(inner, "inner")
        holds(outer, "outer")
        holds(inner, "inner")
        assert outer.delete_session("only-inner") is False
        assert outer.delete_user("u") == 2
        assert outer.get_all_session_ids() == []
        holds(inner, "inner")
        fill(outer, "outer")
        outer.drop()
        assert outer.get_all_session_ids() == []
        holds(inner, "inner")
        assert inner.table_exists()
        fill(outer, "outer")
        inner.drop()
        holds(outer, "outer")
        assert inner.get_all_session_ids() == []

    @pytest.mark.parametrize(
        ("value", "words"),
        [
            ({1, 2}, "set"),
            (b"bytes", "bytes"),
            (math.nan, "nan"),
            (math.inf, "inf"),
            (object(), "object"),
            ({1: "int key"}, "key"),
            ({"deep": [{"x": frozenset()}]}, "frozenset"),
            ({"text": "smile \ud83d\ude00"}, "surrogate pair"),
            ({"\ud83d\ude00": "as a key"}, "surrogate pair"),
            # More digits than Python writes an int with (4300 by default): in a dict, so
            # that pytest does not turn it into text for the test's id.
            ({"n": 10**5000}, "digits"),
        ],
    )
    def test_unstorable_values_are_refused_and_the_store_is_unchanged(
        self, backend_store: Store, value: Any, words: str
    ) -> None:
        storage = backend_store()
        before = storage.upsert(_session(backend_store, "s", session_data={"ok": 1}))
        hint = _TEXT_HINT if words == "surrogate pair" else None
        with _hinted(hint), pytest.raises(SerializationError, match=words):
            storage.upsert(_session(backend_store, "s", session_data={"bad": value}))
        with _hinted(hint), pytest.raises(SerializationError):
            storage.upsert(_session(backend_store, "new", session_data={"bad": value}))
        got = storage.read("s")
        assert got is not None
        assert got.session_data == {"ok": 1}  # type: ignore[attr-defined]
        assert got.version == before.version  # type: ignore[attr-defined]
        assert storage.read("new") is None
        assert storage.get_all_session_ids() == ["s"]

    def test_a_value_that_holds_itself_is_refused_naming_where(self, backend_store: Store) -> None:
        # It was refused as nested deeper than 512 levels, which sent the reader looking
        # for deep data, and one that holds itself twice took time exponential in that
        # depth to refuse. One object held in many places is no cycle, and is stored.
        storage = backend_store()
        before = storage.upsert(_session(backend_store, "s", session_data={"ok": 1}))
        shared: dict[str, Any] = {"n": 1}
        loop: dict[str, Any] = {"a": shared, "b": [shared, shared]}
        loop["b"].append({"up": loop})
        loop["again"] = loop
        run: dict[str, Any] = {"run_id": "0", "a": shared}
        run["also"] = [shared, run, run]
        for session, where in (
            (_session(backend_store, "s", session_data={"loop": loop}), "['loop']['b'][2]['up']"),
            (_with_runs(backend_store, "s", [run]), "['runs'][0]['also'][1]"),
        ):
            with pytest.raises(SerializationError, match="cycle") as info:
                storage.upsert(session)
            assert where in str(info.value), str(info.value)
        for reader in (storage, backend_store()):
            got = reader.read("s")
            assert got is not None
            assert (got.session_data, got.version) == ({"ok": 1}, before.version)  # type: ignore[attr-defined]
        twice = {"a": shared, "b": [shared, {"c": shared}]}
        storage.upsert(_with_runs(backend_store, "s", [twice, twice], session_data=twice))
        for got in _read_both(backend_store, storage, "s"):
            assert got.session_data == twice  # type: ignore[attr-defined]
            assert _runs_of(backend_store, got) == [twice, twice]

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("created_at", 1796514405.3036094),  # time.time()
            ("created_at", "2024-01-01"),
            ("created_at", True),
            ("created_at", -1),
            ("created_at", 1796514405303),  # in milliseconds
            ("created_at", 2**63),
            ("updated_at", 1.5),
            ("version", "3"),
            ("version", 2**53),
        ],
    )
    def test_times_and_versions_must_be_whole_numbers_in_range(
        self, backend_store: Store, field: str, value: Any
    ) -> None:
        # A time in milliseconds, a float from time.time(), a string: refused before anything
        # is written, since a backend would round it, or fail on it at a later listing.
        storage = backend_store()
        before = storage.upsert(_session(backend_store, "s", user_id="u", created_at=5))
        for sid in ("s", "new"):
            bad = _session(backend_store, sid, user_id="u")
            setattr(bad, field, value)
            with pytest.raises(SerializationError, match=f"{field} must be"):
                storage.restore(bad)
            if field != "version":
                with pytest.raises(SerializationError, match=f"{field} must be"):
                    storage.upsert(bad)
        for reader in (storage, backend_store()):
            assert reader.read("new") is None
            got = reader.read("s")
            assert got is not None
            assert (got.created_at, got.version) == (5, before.version)  # type: ignore[attr-defined]
            assert reader.get_all_session_ids(user_id="u") == ["s"]
        storage.restore(_session(backend_store, "edge", created_at=253402300799))
        edge = backend_store().read("edge")
        assert edge is not None
        assert edge.created_at == 253402300799  # type: ignore[attr-defined]

    def test_a_version_never_passes_the_largest_stored(self, backend_store: Store) -> None:
        # restore() takes versions up to 2**53 - 1; a write after it would store one more,
        # which readers refuse (or Redis's doubles round): it is refused, nothing written.
        storage = backend_store()
        top = 2**53 - 1
        storage.restore(_session(backend_store, "top", created_at=5, version=top))
        for write in (
            lambda: storage.upsert(_session(backend_store, "top")),
            lambda: storage.restore(_session(backend_store, "top", version=top)),
            lambda: storage.update("top", lambda s: s),
        ):
            with pytest.raises(SerializationError, match="version"):
                write()
        for reader in (storage, backend_store()):
            got = reader.read("top")
            assert got is not None
            assert got.version == top  # type: ignore[attr-defined]
            assert [s.session_id for s in reader.get_all_sessions()] == ["top"]
        assert storage.upsert(_session(backend_store, "next")).version == 1  # type: ignore[attr-defined]

    def test_odd_limits_and_expiries(self, backend_store: Store) -> None:
        storage = backend_store()
        for sid in ("a", "b"):
            storage.upsert(_session(backend_store, sid, user_id="u"))
        # Refused as every error of savegame's is, with a StorageError (they were plain
        # ValueErrors, which ``except StorageError`` let through).
        for limit in (True, -1, 1.0, "2"):
            with pytest.raises(InvalidIdentifierError, match="limit"):
                storage.get_recent_sessions(user_id="u", limit=limit)  # type: ignore[arg-type]
        for limit in (2**31, 2**63, 10**30):
            assert len(storage.get_recent_sessions(user_id="u", limit=limit)) == 2
        for expire in (0, -5, True, 1.5, 10**16):
            with pytest.raises(InvalidIdentifierError, match="expire"):
                backend_store(expire=expire)
        with pytest.raises(InvalidIdentifierError, match="unknown mode 'robot'"):
            backend_store("robot")
        # A mode in a list or set raised TypeError (unhashable type), no StorageError.
        for mode in (["agent"], {"agent"}, {"mode": "agent"}, b"agent"):
            with pytest.raises(InvalidIdentifierError, match="unknown mode"):
                backend_store(mode)  # type: ignore[arg-type]
            with pytest.raises(InvalidIdentifierError, match="unknown mode"):
                storage.mode = mode  # type: ignore[assignment]
        assert storage.mode == backend_store.mode
        lasting = backend_store(expire=10**10)
        stored = lasting.upsert(_session(backend_store, "long"))
        assert lasting.read("long") == stored

    @pytest.mark.parametrize(
        ("written", "fields"),
        [
            ("team", {"team_id": "squad", "team_data": {"size": 2}}),
            ("workflow", {"workflow_id": "w", "memory": {"runs": [{"run_id": "0"}]}}),
            # Its runs, kept apart from its header, must not be taken for the runs of
            # memory["runs"] by a storage of another mode.
            ("workflow_v2", {"workflow_id": "w", "runs": [{"run_id": "0"}]}),
            ("workflow_v2", {"runs": []}),
        ],
    )
    def test_a_store_opened_in_the_wrong_mode_never_gives_a_session_short(
        self, backend_store: Store, written: str, fields: dict[str, Any]
    ) -> None:
        # A team session read as an agent session would lose team_id and team_data, and a
        # save would make that loss permanent: the read raises, naming the mode to open the
        # store in (or a table's column it lacks), or finds nothing.
        session = MODES[written].session_class.from_dict(
            {"session_id": "s", "user_id": "u", **fields}
        )
        assert session is not None
        stored = backend_store(mode=written).upsert(session)
        for mode in MODES.keys() - {written}:
            wrong = backend_store(mode=mode)
            for read in (
                methodcaller("read", "s"),
                methodcaller("get_all_sessions", user_id="u"),
                methodcaller("read_many", ["s"]),
            ):
                try:
                    got = read(wrong)
                except CorruptSessionError as exc:
                    got = str(exc)
                told = isinstance(got, str) and (
                    f"mode={written!r}" in got or re.search("lacks (a|the) column", got)
                )
                assert got in (None, []) or told, (mode, got)
        assert backend_store(mode=written).read("s") == stored

    @pytest.mark.parametrize(
        ("first", "second"),
        [*_MODE_PAIRS, ("team", "workflow")],
    )
    @pytest.mark.parametrize("switched", [False, True], ids=["opened", "switched"])
    def test_a_storage_of_another_mode_never_breaks_or_joins_the_listings_of_the_first(
        self, backend_store: Store, first: Mode, second: Mode, switched: bool
    ) -> None:
        # The README's agent and team examples run against one store: the second storage's
        # writes are refused, naming the store's mode, or kept apart. Either way the first
        # mode's listings go on working and list its own sessions only, and the second
        # storage never lists them, reads them short, replaces, deletes or drops them. The
        # second storage is opened in its mode, or (switched) is one of the first mode that
        # has read the store and remembers its session, whose ``mode`` is then set.
        one = _apart(backend_store, first)
        mine = [one.upsert(_dated(first, "s1", 1))]
        if switched:
            other = backend_store(mode=first)
            assert other.read("s1") == mine[0]
            other.mode = second
        else:
            other = backend_store(mode=second)
        theirs: list[str] = []
        written = _outcome(lambda: other.upsert(_dated(second, "s2", 2)))
        if isinstance(written, CorruptSessionError):
            assert _names_mode(str(written), first), written
        else:
            theirs.append("s2")
        replaced = _outcome(lambda: other.upsert(_dated(second, "s1", 3)))
        assert isinstance(replaced, CorruptSessionError), (
            f"a storage of mode {second!r} replaced the {first} session 's1': its _write "
            "refuses a stored session of another mode (Storage._refuse_other_mode), or the "
            "Store gives mixed_modes, why this backend cannot keep modes apart"
        )
        assert _names_mode(str(replaced), first), replaced

        def other_lists() -> None:
            for listing in (
                methodcaller("get_all_session_ids"),
                methodcaller("get_all_session_ids", user_id="user-1"),
                methodcaller("get_all_sessions"),
                methodcaller("get_recent_sessions", limit=10),
                methodcaller("read_many", ["s2"]),
            ):
                got = _outcome(partial(listing, other))
                if isinstance(got, CorruptSessionError):
                    assert _names_mode(str(got), first), got
                else:
                    ids = [s if isinstance(s, str) else s.session_id for s in got]
                    assert ids == theirs, (listing, got)
            got = _outcome(lambda: other.read("s1"))
            refused = isinstance(got, CorruptSessionError) and _names_mode(str(got), first)
            assert got is None or refused, got

        def first_lists() -> None:
            newest = sorted(mine, key=lambda s: -s.created_at)  # type: ignore[attr-defined]
            ids = [s.session_id for s in newest]
            for storage in (one, backend_store(mode=first)):
                assert storage.get_all_session_ids() == ids
                assert storage.get_all_session_ids(user_id="user-1") == ids
                assert storage.get_all_session_ids(entity_id="entity-1") == ids
                assert storage.get_all_sessions(user_id="user-1") == newest
                assert storage.get_recent_sessions(limit=10) == newest
                assert storage.read_many(ids) == newest

        other_lists()
        first_lists()
        # A write of the first mode after the other one listed is listed too.
        mine.append(one.upsert(_dated(first, "s3", 4)))
        other_lists()
        first_lists()
        for removal in (
            methodcaller("delete_session", "s1"),
            methodcaller("delete_user", "user-1"),
            methodcaller("purge_expired"),
            methodcaller("drop"),
        ):
            got = _outcome(partial(removal, other))
            assert not isinstance(got, CorruptSessionError) or _names_mode(str(got), first), got
        theirs.clear()
        first_lists()

    @pytest.mark.parametrize(
        ("first", "second"),
        _MODE_PAIRS,
    )
    @pytest.mark.parametrize("removal", ["delete_session", "delete_user", "drop"])
    def test_a_removal_first_of_a_storage_of_another_mode_removes_nothing_of_the_first(
        self, backend_store: Store, first: Mode, second: Mode, removal: str
    ) -> None:
        # The command line opens a storage per command, so `savegame sessions delete` or
        # `delete-user` with the wrong --mode makes a removal the first call of a storage of
        # another mode: on a SQL table recorded at the latest layout, it named none of the
        # mode's columns and removed the first mode's sessions.
        one = _apart(backend_store, first)
        mine = [one.upsert(_dated(first, f"s{i}", i)) for i in (1, 2)]
        args = {"delete_session": ("s1",), "delete_user": ("user-1",)}.get(removal, ())
        got = _outcome(lambda: getattr(backend_store(mode=second), removal)(*args))
        assert not isinstance(got, CorruptSessionError) or _names_mode(str(got), first), got
        again = backend_store(mode=first)
        assert again.get_all_session_ids() == ["s2", "s1"], (removal, got)
        assert again.read_many(["s1", "s2"]) == mine

    def test_numbers_and_keys_at_the_edges_round_trip_with_their_types(
        self, backend_store: Store
    ) -> None:
        # Compared as JSON text, which ``==`` is not: it takes 1.0 for 1 and True, and
        # 2**64 for 1.8446744073709552e19. Ints past 64 bits, floats at their limits and
        # of 17 digits, and keys that mean something in the JSON paths of PostgreSQL and
        # MySQL, or look like numbers, in the state, the runs and a listing.
        numbers = [
            *(2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 2**53 + 1, 10**600, -(10**600)),
            *(1, 1.0, True, 0, 0.0, 5e-324, 1.7976931348623157e308, -2.2250738585072014e-308),
            *(0.1 + 0.2, 1e16, 1e16 + 2, 1e22, 123456789012345678.0),
        ]
        names = ["", ".", "$", "$.a", "a.b", "[", "]", "[0]", "{", "}", "'", '"', "\\", "*"]
        names += ["0", "-1", "1e3", "null", "true", "\x00", "\udc80", "\ufdd0", "\uffff"]
        names += ["\u2028", "\U0010ffff"]
        keys = {name: i for i, name in enumerate(names)}
        value = {"numbers": numbers, "keys": keys, "nested": {"0": {"": [keys]}}}
        runs = [{"run_id": "0", **value}, {"run_id": "1", "numbers": numbers}]
        storage = backend_store()
        storage.upsert(_with_runs(backend_store, "edge", runs, session_data=value, user_id="u"))
        ordered = "key_order" in type(storage).capabilities
        for got in [
            *_read_both(backend_store, storage, "edge"),
            *backend_store().get_all_sessions(user_id="u"),
        ]:
            assert _exact(got.session_data, ordered) == _exact(value, ordered)  # type: ignore[attr-defined]
            assert _exact(_runs_of(backend_store, got), ordered) == _exact(runs, ordered)

    def test_awkward_strings_round_trip(self, backend_store: Store) -> None:
        storage = backend_store()
        awkward = {
            "nul": "before\x00after",
            "lone": "half \udc80 a pair \ud83d",
            "keys": {"k\x00ey": 1, "\udcff": 2, "\ufdd0marked": 3},
            "mark": "\ufdd0 looks escaped",
            "marked json": '\ufdd0"x"',
            "controls": "".join(chr(i) for i in range(32)),
            "unicode": "日本語 العربية עברית 🎲👩‍👩‍👧 e\u0301",
            "big": 2**62,
            "neg": -(2**53) - 1,
            "float": 0.1,
            "tiny": 5e-324,
            "bools": [True, False, None],
            "empty": ["", {}, []],
        }
        storage.upsert(_session(backend_store, "awk", session_data=awkward, user_id="ü 🎲"))
        for got in _read_both(backend_store, storage, "awk"):
            assert got.session_data == awkward  # type: ignore[attr-defined]
            assert got.user_id == "ü 🎲"  # type: ignore[attr-defined]
        assert storage.get_all_session_ids(user_id="ü 🎲") == ["awk"]

    def test_a_user_beyond_the_bmp_is_listed_and_erased_beside_lone_surrogates(
        self, backend_store: Store
    ) -> None:
        # A lone surrogate in a session's data has the whole of it written as ASCII in
        # some stores' JSON, an emoji in the user id as a pair of escapes: erasing the
        # user reported 0 sessions removed and left them all.
        user, agent = "ü 🎲", "🤖"
        storage = backend_store()
        for sid in ("a", "b"):
            storage.upsert(
                _with_runs(
                    backend_store,
                    sid,
                    [{"run_id": "0", "text": "cut \udc80"}],
                    session_data={"note": "lone \ud800"},
                    user_id=user,
                    entity_id=agent,
                    created_at={"a": 1, "b": 2}[sid],
                )
            )
        storage.upsert(_session(backend_store, "other", user_id="🎲", entity_id=agent))
        # The escapes' text itself, in an id: not the character.
        literal = "\\ud83c\\udfb2 \\\\ud800"
        storage.upsert(
            _session(backend_store, "lit", user_id=literal, session_data={"x": "\udc80"})
        )
        assert backend_store().get_all_session_ids(user_id=user, entity_id=agent) == ["b", "a"]
        assert backend_store().delete_user(user) == 2
        for reader in (storage, backend_store()):
            assert sorted(reader.get_all_session_ids()) == ["lit", "other"]
            assert reader.get_all_session_ids(user_id=user) == []
            assert reader.get_all_session_ids(entity_id=agent) == ["other"]
        assert backend_store().delete_user(literal) == 1
        assert storage.get_all_session_ids() == ["other"]

    def test_runs_lost_behind_savegames_back_fail_the_read(self, backend_store: Store) -> None:
        # Never a session read short: the header says how many runs there are.
        if backend_store.lose_runs is None:
            pytest.skip(
                f"{backend_store.backend} keeps the runs with the rest of a session "
                "(no Store.lose_runs)"
            )
        writer = backend_store()
        said = [{"role": "user", "content": "hi"}]
        runs = [{"run_id": f"r{i}", "messages": said} for i in range(3)]
        for session_id in ("lost", "kept"):
            writer.upsert(_with_runs(backend_store, session_id, runs, user_id="u"))
        backend_store.lose_runs(writer, "lost")
        reader = backend_store()
        _every_read_refuses(reader, "lost", "kept", "u")
        kept = reader.read("kept")
        assert kept is not None
        assert _runs_of(backend_store, kept) == runs
        assert reader.delete_session("lost") is True
        assert reader.read("lost") is None
        assert reader.get_all_session_ids(user_id="u") == ["kept"]

    def test_a_save_over_a_run_lost_behind_savegames_back_is_whole_or_refused(
        self, backend_store: Store
    ) -> None:
        # The runs after the lost one are stored, each where the next was: a save of the
        # session as it was must not take them for its own and report a write that left
        # the session short.
        if backend_store.lose_run is None:
            pytest.skip(
                f"{backend_store.backend} keeps the runs with the rest of a session "
                "(no Store.lose_run)"
            )
        runs = [{"run_id": "a"}, {"run_id": "b"}, {"run_id": "b"}]
        session = _with_runs(backend_store, "hurt", runs, user_id="u")
        backend_store().upsert(session)
        backend_store().upsert(_with_runs(backend_store, "kept", runs, user_id="u"))
        backend_store.lose_run(backend_store(), "hurt", 1)
        with pytest.raises(CorruptSessionError, match="hurt"):
            backend_store().read("hurt")
        try:
            backend_store().upsert(session)
        except CorruptSessionError as exc:
            refused: str | None = str(exc)
        else:
            refused = None
        if refused is not None:
            assert "hurt" in refused
        else:
            assert _stored_runs(backend_store, "hurt") == runs
        assert _stored_runs(backend_store, "kept") == runs

    def test_a_run_set_to_null_behind_savegames_back_fails_the_read_until_saved_again(
        self, backend_store: Store
    ) -> None:
        # Never None in the place of a run: savegame writes a run of None as JSON's null.
        if backend_store.null_run is None:
            pytest.skip(
                f"{backend_store.backend} keeps no run that can be NULL (no Store.null_run)"
            )
        runs = [{"run_id": "a"}, None, {"run_id": "c"}]
        session = _with_runs(backend_store, "nulled", runs, user_id="u")
        writer = backend_store()
        writer.upsert(session)
        writer.upsert(_with_runs(backend_store, "kept", runs, user_id="u"))
        backend_store.null_run(writer, "nulled", 2)
        reader = backend_store()
        _every_read_refuses(reader, "nulled", "kept", "u")
        # A save by a storage that does not remember the session makes it whole again.
        reader.upsert(session)
        for got in _read_both(backend_store, reader, "nulled"):
            assert _runs_of(backend_store, got) == runs
        assert _stored_runs(backend_store, "kept") == runs

    def test_a_run_changed_by_hand_as_the_readme_says_is_read_by_every_storage(
        self, backend_store: Store
    ) -> None:
        if backend_store.change_run is None:
            pytest.skip(
                f"{backend_store.backend} keeps no runs apart from the session "
                "(no Store.change_run)"
            )
        runs = [{"run_id": f"r{i}"} for i in range(3)]
        writer, reader = backend_store(), backend_store()
        writer.upsert(_with_runs(backend_store, "s", runs))
        assert reader.read("s") is not None  # now remembered, as by the writer
        backend_store.change_run(writer, "s", 0, {"run_id": "by hand"})
        for storage in (writer, reader, backend_store(), reader):
            got = storage.read("s")
            assert got is not None
            assert _runs_of(backend_store, got) == [{"run_id": "by hand"}, *runs[1:]]

    @pytest.mark.parametrize("saver", ["the writer, remembering it", "a storage just opened"])
    def test_a_save_over_a_run_changed_by_hand_as_the_readme_says_is_whole(
        self, backend_store: Store, saver: str
    ) -> None:
        # The run changed by hand keeps its old digest, which the save's run has too: the
        # save must not take the stored run for it.
        if backend_store.change_run is None:
            pytest.skip(
                f"{backend_store.backend} keeps no runs apart from the session "
                "(no Store.change_run)"
            )
        runs = [{"run_id": f"r{i}"} for i in range(3)]
        session = _with_runs(backend_store, "s", runs)
        writer = backend_store()
        writer.upsert(session)
        backend_store.change_run(writer, "s", 1, {"run_id": "by hand"})
        storage = writer if saver.startswith("the writer") else backend_store()
        storage.upsert(session)
        for got in _read_both(backend_store, storage, "s"):
            assert _runs_of(backend_store, got) == runs

    def test_a_number_made_text_by_hand_fails_the_read_naming_the_session(
        self, backend_store: Store
    ) -> None:
        # Never a raw TypeError or ValueError, a command the server refused, nor a session
        # whose version or time is text; a listing or a purge raises the same or leaves the
        # session out (a folder leaves out a damaged file; a purge takes it for one that has
        # not expired), a save is refused or stores the session whole, and it can be deleted.
        if not backend_store.spoil_number:
            pytest.skip(
                f"{backend_store.backend}'s numbers are of types that refuse text "
                "(Store.spoil_number is empty)"
            )
        _spoilt_reads_fail(backend_store, backend_store.spoil_number, ("many", ""))

    def test_a_text_field_made_a_number_by_hand_fails_the_read_naming_the_session(
        self, backend_store: Store
    ) -> None:
        # A team_session_id of 5 was read as it was: the next save of the session refused
        # it, and a copy or export stopped there rather than going past a damaged session.
        if not backend_store.spoil_text:
            pytest.skip(
                f"{backend_store.backend}'s text fields turn a number into text "
                "(Store.spoil_text is empty)"
            )
        _spoilt_reads_fail(backend_store, backend_store.spoil_text, (5, 2.5, ["a"]))

    def test_json_nested_past_the_parsers_depth_fails_the_read_naming_the_session(
        self, backend_store: Store
    ) -> None:
        # Edited in by hand (savegame refuses values nested deeper than 512 levels): Python's
        # parser gave up with a raw RecursionError, from every read of the session, and a
        # folder's listings failed with it.
        if backend_store.spoil_json is None:
            pytest.skip(
                f"{backend_store.backend} keeps no JSON text of a session's fields, or refuses "
                "such text (Store.spoil_json is None)"
            )
        storage = backend_store()
        for session_id in ("deep", "good"):
            storage.upsert(_session(backend_store, session_id, user_id="u"))
        backend_store.spoil_json(storage, "deep", "[" * 5000 + "]" * 5000)
        fresh = backend_store()
        for reader in (storage, fresh):
            with pytest.raises(CorruptSessionError, match="deep"):
                reader.read("deep")
            assert "good" in reader.get_all_session_ids(user_id="u")
            assert reader.read("good") is not None

    def test_large_and_deep_values(self, backend_store: Store) -> None:
        storage = backend_store()
        # Megabytes, and under the 16 MB that MariaDB takes in one statement by default in
        # every backend's stored form (the text-safe JSON of PostgreSQL and MySQL spells a
        # unit in 21 bytes, 24 once PyMySQL escapes them): servers as installed hold it.
        big = "🎲abc\x00" * (512 * 1024)
        storage.upsert(_session(backend_store, "big", session_data={"blob": big}))
        for got in _read_both(backend_store, storage, "big"):
            assert got.session_data["blob"] == big  # type: ignore[attr-defined]
        deep: Any = "bottom"
        for i in range(500):
            deep = {f"k{i % 3}": deep}
        storage.upsert(_session(backend_store, "deep", session_data=deep))
        for got in _read_both(backend_store, storage, "deep"):
            assert got.session_data == deep  # type: ignore[attr-defined]
        too_deep: Any = []
        for _ in range(600):
            too_deep = [too_deep]
        with pytest.raises(SerializationError, match="deeper"):
            storage.upsert(_session(backend_store, "deep", session_data={"x": too_deep}))
        storage.upsert(_session(backend_store, "after", session_data={"fine": True}))
        assert storage.read("after") is not None
        assert sorted(storage.get_all_session_ids()) == ["after", "big", "deep"]

    def test_a_20_mb_string_round_trips_or_is_refused_before_anything_is_written(
        self, backend_store: Store
    ) -> None:
        # 20 MB of text (30 MB in UTF-8), in the state and in a run: stored whole, or, on a
        # server that takes less in one statement (MariaDB's max_allowed_packet is 16 MB by
        # default), refused saying so, the store as it was.
        storage = backend_store()
        big = "a\u00e9" * (10 * 1024 * 1024)
        sessions = {
            "state": _session(backend_store, "state", session_data={"blob": big}),
            "run": _with_runs(backend_store, "run", [{"run_id": "0", "blob": big}]),
        }
        for sid, session in sessions.items():
            storage.upsert(_session(backend_store, sid, session_data={"small": True}))
            try:
                storage.upsert(session)
            except SerializationError as exc:
                refused: str | None = str(exc)
            else:
                refused = None
            if refused is not None:
                assert "larger than" in refused, refused[:500]
                got = backend_store().read(sid)
                assert got is not None
                assert (got.session_data, got.version) == ({"small": True}, 1)  # type: ignore[attr-defined]
                continue
            for got in _read_both(backend_store, storage, sid):
                if sid == "state":
                    assert got.session_data == {"blob": big}  # type: ignore[attr-defined]
                else:
                    assert _runs_of(backend_store, got) == [{"run_id": "0", "blob": big}]

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(value=JSON_VALUES)
    def test_any_json_value_round_trips(self, backend_store: Store, value: Any) -> None:
        storage = backend_store()
        storage.upsert(_session(backend_store, "prop", session_data={"v": value}))
        for got in _read_both(backend_store, storage, "prop"):
            assert got.session_data == {"v": value}  # type: ignore[attr-defined]

    def test_negative_zero_keeps_its_sign_where_the_store_keeps_json_as_written(
        self, backend_store: Store
    ) -> None:
        # ``-0.0 == 0.0``, so only the text tells them apart. A store that keeps the order of
        # keys keeps JSON as written and so the sign. PostgreSQL's JSONB keeps numbers as
        # NUMERIC, which has no negative zero: a storage that reads the session from the
        # store gets 0.0 (the one that wrote it gives it back as written while it
        # remembers it, as it does the order of keys).
        storage = backend_store()
        kept = "key_order" in type(storage).capabilities
        runs = [{"run_id": "0", "z": -0.0}]
        storage.upsert(_with_runs(backend_store, "nz", runs, session_data={"z": -0.0}))
        readers = _read_both(backend_store, storage, "nz")
        for got in readers if kept else readers[1:]:
            assert json.dumps(got.session_data["z"]) == json.dumps(-0.0 if kept else 0.0)  # type: ignore[attr-defined]
            assert json.dumps(_runs_of(backend_store, got)[0]["z"]) == json.dumps(
                -0.0 if kept else 0.0
            )

    def test_random_histories_of_two_storages_match_a_model(self, backend_store: Store) -> None:
        from savegame.testing.history import history_machine  # it builds on this module

        run_state_machine_as_test(
            history_machine(backend_store),
            settings=settings(
                max_examples=int(os.environ.get("SAVEGAME_HISTORIES", "40")),
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )

    @pytest.mark.parametrize(
        "writes",
        [0, 1, PAST_TOKENS, PAST_TOKENS + 1],
        ids=["alone", "another-writes", "past-tokens-full", "too-many-writes"],
    )
    def test_a_write_whose_reply_is_lost_is_never_made_twice(
        self, backend_store: Store, writes: int
    ) -> None:
        # Found made while at most PAST_TOKENS writes came in before it is sent again (the
        # past tokens a header keeps); after more, it says its outcome is unknown. Either
        # way update() must not make its change a second time.
        with _lossy(backend_store, "lose_reply") as link:
            check_lost_reply(link, writes)

    def test_a_lost_reply_on_a_connection_just_made_is_found_made(
        self, backend_store: Store
    ) -> None:
        with _lossy(backend_store, "refuse_connection") as link:
            _lost_alone(link, connections_cut=True)

    def test_a_write_that_could_not_connect_is_made_once(self, backend_store: Store) -> None:
        with _lossy(backend_store, "refuse_connection") as link:
            check_refused_connection(link)

    def test_a_call_cut_short_leaves_nothing_for_the_next(self, backend_store: Store) -> None:
        with _lossy(backend_store, "hold_reply") as link:
            check_call_cut_short(link)

    def test_a_delete_that_finds_nothing_leaves_a_session_saved_meanwhile_whole(
        self, backend_store: Store
    ) -> None:
        # A delete of a session that is not there yet, while another storage saves it: the
        # reply to the delete's first request is held until the save is made. A SQL
        # server's delete, finding no header, went on to remove the runs by their session
        # id, those of the save made meanwhile, and left a header that every read refused.
        # The id holds its first word in hex, the marker, which the request holds whether
        # the driver sends the id as text or in hex (MySQL).
        session_id = "meanwhile-" + b"meanwhile".hex()
        with _lossy(backend_store, "hold_reply") as link:
            assert link.hold_reply is not None
            runs = [{"run_id": f"r{i}", "content": f"turn {i}"} for i in range(3)]
            link.storage.upsert(_agent("there"))
            saved: list[Session] = []

            def save() -> None:
                saved.append(link.other.upsert(_agent(session_id, memory={"runs": runs})))

            link.hold_reply(b"meanwhile".hex().encode(), save)
            link.storage.delete_session(session_id)
            assert saved, "the delete's reply was not held: the test did not test"
            for reader in (link.other, link.storage, backend_store()):
                got = _outcome(partial(reader.read, session_id))
                assert not isinstance(got, CorruptSessionError), got
                assert got is None or got.memory == {"runs": runs}, got

    def test_a_fork_while_another_thread_waits_in_a_call_leaves_the_child_working(
        self, backend_store: Store
    ) -> None:
        # A worker pool forked while another thread of the parent is in the middle of a
        # call (its reply held back): only the forking thread goes on in the child, and
        # nothing that thread had taken or counted may make the child's calls wait for
        # it. Redis's close() waited for ever for the call to end.
        if not hasattr(os, "fork"):
            pytest.skip("no fork on this platform")
        with _lossy(backend_store, "hold_reply") as link:
            assert link.hold_reply is not None
            link.storage.upsert(_agent("before", session_data={"n": 1}))
            held, forked = threading.Event(), threading.Event()

            def meanwhile() -> None:
                held.set()
                forked.wait(timeout=60)

            link.hold_reply(b"before", meanwhile)
            reader = threading.Thread(target=partial(link.storage.read, "before"))
            reader.start()
            assert held.wait(timeout=60), "the read's reply was not held"
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child reports through its exit code
                code = 1
                try:
                    got = link.storage.read("before")
                    link.storage.upsert(_agent("child"))
                    ids = link.storage.get_all_session_ids()
                    link.storage.close()
                    code = 0 if got is not None and sorted(ids) == ["before", "child"] else 2
                finally:
                    os._exit(code)
            forked.set()
            reader.join(timeout=60)
            assert wait_child(pid, 60) == 0
            assert link.other.read("child") is not None
            assert link.storage.read("before") is not None

    def test_expiry_hides_then_purges(self, backend_store: Store) -> None:
        # Times are whole seconds, so a session lives between expire - 1 and expire seconds:
        # with expire=1 a read in the next millisecond may already find it gone.
        storage = backend_store(expire=2)
        storage.upsert(_session(backend_store, "short", user_id="u"))
        assert storage.read("short") is not None
        time.sleep(3.1)
        assert storage.read("short") is None
        assert storage.get_all_session_ids() == []
        assert storage.get_all_session_ids(user_id="u") == []
        assert storage.get_recent_sessions(user_id="u") == []
        storage.purge_expired()
        assert storage.read("short") is None
        storage.upsert(_session(backend_store, "fresh"))
        assert storage.get_all_session_ids() == ["fresh"]
        lasting = backend_store()
        lasting.upsert(_session(backend_store, "lasting"))
        assert storage.purge_expired() == 0
        assert sorted(lasting.get_all_session_ids()) == ["fresh", "lasting"]

    def test_an_expired_session_is_gone_for_every_call(self, backend_store: Store) -> None:
        # Not returned by any read or listing before purge_expired() removes it, and not in
        # the way of a write either: update() finds none and makes the session anew, as a
        # write that names version 0 ("not stored yet") does.
        # The expired sessions are the newest: a listing with a limit must look past them.
        storage = backend_store(expire=2)
        for sid, created in (("gone", 300), ("again", 200)):
            storage.upsert(
                _session(backend_store, sid, user_id="u", entity_id="e", created_at=created)
            )
        lasting = backend_store()
        lasting.upsert(_session(backend_store, "kept", user_id="u", entity_id="e", created_at=100))
        time.sleep(3.1)
        for reader in (storage, backend_store(expire=2), lasting):
            for sid in ("gone", "again"):
                assert reader.read(sid) is None
                assert reader.read(sid, user_id="u") is None
            assert [s.session_id for s in reader.read_many(["gone", "kept", "again"])] == ["kept"]
            assert reader.get_all_session_ids(entity_id="e") == ["kept"]
            assert [s.session_id for s in reader.get_all_sessions()] == ["kept"]
            assert [s.session_id for s in reader.get_all_sessions(user_id="u", entity_id="e")] == [
                "kept"
            ]
            for limit in (1, 2):
                recent = reader.get_recent_sessions(user_id="u", entity_id="e", limit=limit)
                assert [s.session_id for s in recent] == ["kept"]
        seen: list[Any] = []

        def anew(session: Session | None) -> Session:
            seen.append(session)
            return _session(backend_store, "gone", user_id="v", session_data={"n": 1})

        made = storage.update("gone", anew)
        assert seen == [None]
        assert (made.session_data, made.version) == ({"n": 1}, 1)
        assert made.created_at > 300
        storage.upsert(_session(backend_store, "again", user_id="v"), expected_version=0)
        for reader in (storage, backend_store()):
            assert sorted(reader.get_all_session_ids(user_id="v")) == ["again", "gone"]
            assert reader.get_all_session_ids(user_id="u") == ["kept"]
            got = reader.read("gone")
            assert got is not None
            assert got.session_data == {"n": 1}  # type: ignore[attr-defined]

    def test_an_expiry_counts_from_the_last_write(self, backend_store: Store) -> None:
        # Each write, by a storage with an expiry, gives the session that long again; a
        # write by one without (expire=None) keeps it until it is deleted.
        # The checks wait for deadlines, not for fixed pauses: a slow write on a busy
        # machine would otherwise push the first check past the second writes' expiry,
        # which a backend keeping whole seconds may put 3 s after them.
        expiring = backend_store(expire=4)
        for sid in ("written again", "kept for good", "updated"):
            expiring.upsert(_session(backend_store, sid, user_id="u"))
        first_expired = time.monotonic() + 4.05
        time.sleep(2.5)
        expiring.upsert(_session(backend_store, "written again", user_id="u"))
        expiring.update("updated", lambda s: s)
        backend_store().upsert(_session(backend_store, "kept for good", user_id="u"))
        second_expired = time.monotonic() + 4.05
        time.sleep(max(0.0, first_expired - time.monotonic()))
        for reader in (expiring, backend_store()):
            assert sorted(reader.get_all_session_ids(user_id="u")) == [
                "kept for good",
                "updated",
                "written again",
            ]
        time.sleep(max(0.0, second_expired - time.monotonic()))
        assert expiring.purge_expired() >= 0
        for reader in (expiring, backend_store()):
            assert reader.get_all_session_ids(user_id="u") == ["kept for good"]
            assert reader.read("kept for good") is not None

    def test_a_restored_session_expires_that_long_after_its_write(
        self, backend_store: Store
    ) -> None:
        # restore() keeps updated_at (an import of last month's backup): the expiry still
        # counts from the write, or the session would arrive expired, reported stored.
        storage = backend_store(expire=3600)
        month_ago = int(time.time()) - 30 * 24 * 3600
        old = _session(
            backend_store, "old", user_id="u", created_at=month_ago, updated_at=month_ago
        )
        storage.upsert(_session(backend_store, "old", user_id="u"))
        stored = storage.restore(old)
        assert stored.updated_at == month_ago  # type: ignore[attr-defined]
        for got in _read_both(backend_store, storage, "old"):
            assert got.updated_at == month_ago  # type: ignore[attr-defined]
        assert storage.get_all_session_ids(user_id="u") == ["old"]
        assert storage.purge_expired() == 0
        assert backend_store(expire=3600).read("old") is not None

    def test_a_purge_keeps_a_session_saved_again_while_it_runs(self, backend_store: Store) -> None:
        # Each round, an expired session (the purge is asked as if long after its expiry) is
        # saved again by a storage whose sessions never expire, while another purges: the
        # purge comes before the save or after it, never in between, and the save returned,
        # so the session is there, whole, with its runs. Another expired session goes.
        expiring, purger, keeper = backend_store(expire=3600), backend_store(), backend_store()
        later = int(time.time()) + 10**6
        rounds = 30
        start = threading.Barrier(2)
        purged: list[int] = []

        def work(t: int) -> None:
            for i in range(rounds):
                if t == 1:
                    for session_id in (f"s{i}", f"gone{i}"):
                        runs = [{"old": i, "n": n} for n in range(3)]
                        expiring.upsert(_with_runs(backend_store, session_id, runs, user_id="u"))
                start.wait(timeout=60)
                if t == 0:
                    purged.append(purger._purge_expired(later))
                else:
                    runs = [{"new": i, "n": n} for n in range(4)]
                    keeper.upsert(_with_runs(backend_store, f"s{i}", runs, user_id="u"))

        in_threads(2, work)
        for reader in (keeper, backend_store()):
            for i in range(rounds):
                got = reader.read(f"s{i}")
                assert got is not None, i
                assert _runs_of(backend_store, got) == [{"new": i, "n": n} for n in range(4)]
                assert reader.read(f"gone{i}") is None
            assert sorted(reader.get_all_session_ids(user_id="u")) == sorted(
                f"s{i}" for i in range(rounds)
            )
        assert purger._purge_expired(later) == 0
        assert rounds <= sum(purged) <= 2 * rounds

    def test_delete_user_racing_saves_leaves_no_session_of_that_user_and_every_moved_one(
        self, backend_store: Store
    ) -> None:
        # Each round, while one storage erases user "u", another moves one of u's sessions
        # to user "v" and saves another of u's again: the moved session stays whole (its
        # save returned), the one saved again is whole or gone, and the erasure takes u's
        # untouched session. A last erasure, with no save beside it, leaves nothing of u.
        eraser, writer = backend_store(), backend_store()
        rounds = 25
        start = threading.Barrier(2)

        def work(t: int) -> None:
            for r in range(rounds):
                if t == 1:
                    for kind in ("moved", "saved", "untouched"):
                        runs = [{"old": r, "n": n} for n in range(3)]
                        writer.upsert(_with_runs(backend_store, f"{kind}{r}", runs, user_id="u"))
                start.wait(timeout=60)
                if t == 0:
                    eraser.delete_user("u")
                    continue
                runs = [{"new": r, "n": n} for n in range(4)]
                writer.upsert(_with_runs(backend_store, f"moved{r}", runs, user_id="v"))
                writer.upsert(_with_runs(backend_store, f"saved{r}", runs, user_id="u"))

        in_threads(2, work)
        for r in range(rounds):
            saved = backend_store().read(f"saved{r}")
            assert saved is None or _runs_of(backend_store, saved) == [
                {"new": r, "n": n} for n in range(4)
            ]
        eraser.delete_user("u")
        for reader in (writer, backend_store()):
            assert reader.get_all_session_ids(user_id="u") == []
            assert len(reader.get_all_session_ids(user_id="v")) == rounds
            for r in range(rounds):
                assert reader.read(f"untouched{r}") is None
                assert reader.read(f"saved{r}") is None
                got = reader.read(f"moved{r}")
                assert got is not None, r
                assert got.user_id == "v"  # type: ignore[attr-defined]
                assert _runs_of(backend_store, got) == [{"new": r, "n": n} for n in range(4)]

    def test_a_session_read_as_it_expires_is_whole_or_absent(self, backend_store: Store) -> None:
        # Reads and listings from the write until the session has expired (a bound of
        # calls, not of time): each finds the session whole, or none; never an error.
        storage, reader = backend_store(expire=1), backend_store()
        runs = [{"n": n, "text": "x" * 100} for n in range(5)]
        storage.upsert(_with_runs(backend_store, "s", runs, user_id="u", entity_id="e"))
        storage.upsert(_with_runs(backend_store, "t", runs, user_id="u", entity_id="e"))
        deadline = time.monotonic() + 5
        gone = False
        while not gone and time.monotonic() < deadline:
            got = [reader.read("s"), *reader.read_many(["s", "t"])]
            listed = reader.get_all_sessions(user_id="u")
            ids = reader.get_all_session_ids(entity_id="e")
            for session in [*got, *listed]:
                if session is not None:
                    assert _runs_of(backend_store, session) == runs
            assert set(ids) <= {"s", "t"}
            gone = got[0] is None and not listed
        assert gone
        assert reader.read("t") is None
        assert reader.get_all_session_ids() == []
        storage.purge_expired()
        assert backend_store().get_all_session_ids() == []

    @pytest.mark.parametrize("skew", [-7200, 7200], ids=["behind", "ahead"])
    def test_a_writer_whose_clock_is_off_keeps_its_sessions_as_long_as_it_says(
        self, backend_store: Store, monkeypatch: pytest.MonkeyPatch, skew: int
    ) -> None:
        # Every time is the calling machine's, never the server's: a machine whose clock is
        # two hours behind (or ahead of) the store's server writes sessions that expire in
        # an hour, and reads, lists and keeps them through its purges for that hour. Redis,
        # which drops the keys itself, must not drop them by its own clock (an EXPIREAT at
        # the writer's time is two hours in its past, and removes them as they are written).
        monkeypatch.setattr(base, "_now", lambda: int(time.time()) + skew)
        storage = backend_store(expire=3600)
        runs = [{"n": n} for n in range(3)]
        storage.upsert(_with_runs(backend_store, "s", runs, user_id="u"))
        storage.update("t", lambda _: _with_runs(backend_store, "t", runs, user_id="u"))
        for reader in (storage, backend_store(expire=3600)):
            assert reader.purge_expired() == 0
            for session_id in ("s", "t"):
                got = reader.read(session_id)
                assert got is not None, session_id
                assert _runs_of(backend_store, got) == runs
            assert sorted(reader.get_all_session_ids(user_id="u")) == ["s", "t"]
            assert len(reader.get_recent_sessions(user_id="u")) == 2

    def test_storages_of_one_store_have_its_names_and_a_neighbours_others(
        self, backend_store: Store
    ) -> None:
        first, second = backend_store(), backend_store()
        assert first.store_names() == second.store_names(), (
            f"two storages of one store give other store_names(): {type(first).__name__} "
            "overrides Storage.store_names(), which by default takes each object for a store "
            "of its own, to give what names the store (its path, table, prefix)"
        )
        assert backend_store.neighbouring().store_names() != first.store_names()

    def test_threads_share_one_storage(self, backend_store: Store) -> None:
        storage = backend_store()

        def work(t: int) -> None:
            for i in range(25):
                storage.upsert(make_session(backend_store.mode, f"t{t}-{i}", round_=i % 3))
                got = storage.read(f"t{t}-{i}")
                assert got is not None
                check_session(backend_store.mode, got)

        in_threads(6, work)
        assert len(storage.get_all_session_ids(user_id="user-1")) == 150

    def test_threads_reading_while_another_writes_never_see_a_torn_session(
        self, backend_store: Store
    ) -> None:
        # Rounds of 1 to 8 runs, so that a session both grows and shrinks under the readers:
        # one through the writer's storage, which may remember what it wrote, one through a
        # storage of its own.
        mode = backend_store.mode
        storage = backend_store()
        storage.upsert(make_session(mode, "torn", 0, 256))
        written = threading.Event()

        def work(t: int) -> None:
            if t == 0:
                try:
                    for r in range(1, 60):
                        storage.upsert(make_session(mode, "torn", r % 8, 256))
                finally:
                    written.set()
                return
            reader = storage if t == 1 else backend_store()
            while not written.is_set():
                got = reader.read("torn")
                assert got is not None
                check_session(mode, got, 256)
                for listed in reader.get_all_sessions(user_id="user-1"):
                    check_session(mode, listed, 256)

        in_threads(3, work)

    def test_storages_opened_together_on_a_new_store_all_write(self, backend_store: Store) -> None:
        start = threading.Barrier(6)

        def work(t: int) -> None:
            storage = backend_store()
            start.wait(timeout=30)
            for i in range(5):
                storage.upsert(make_session(backend_store.mode, f"t{t}-{i}"))
                assert storage.read(f"t{t}-{i}") is not None

        in_threads(6, work)
        assert len(backend_store().get_all_session_ids()) == 30

    def test_threads_keep_calling_while_another_drops_the_store(self, backend_store: Store) -> None:
        # drop() on a storage that other threads are reading, writing and listing through,
        # in rounds that start together: each call sees the store before or after a drop,
        # or raises one of savegame's errors (a SQL table gone under a statement), never
        # what a storage half reset meets (a raw KeyError, say), nor waits out a lock.
        storage = backend_store()
        start = threading.Barrier(5)
        made: list[str] = []
        unexpected: list[str] = []

        def calls(t: int, i: int) -> None:
            if t == 0:
                storage.drop()
                return
            session_id = f"t{t}-{i % 3}"
            stored = storage.upsert(_session(backend_store, session_id, user_id="u"))
            assert stored.session_id == session_id
            got = storage.read(session_id)
            assert got is None or got.session_id == session_id
            listed = storage.get_all_sessions(user_id="u")
            assert all(s.user_id == "u" for s in listed)  # type: ignore[attr-defined]
            made.append(session_id)

        def work(t: int) -> None:
            for i in range(60):
                start.wait(timeout=60)
                try:
                    calls(t, i)
                except BackendUnavailableError:
                    # The store is there: a lock held past the busy timeout ("database is
                    # locked") is this storage's own doing.
                    unexpected.append(traceback.format_exc())
                except StorageError:
                    continue
                except Exception:  # noqa: BLE001 - reported below, the rounds go on
                    unexpected.append(traceback.format_exc())

        in_threads(5, work)
        assert not unexpected, unexpected[0]
        assert made
        storage.drop()
        assert storage.get_all_session_ids() == []

    def test_storages_saving_and_deleting_one_session_at_once_never_fail(
        self, backend_store: Store
    ) -> None:
        # Six storages each save the session (their runs naming the write, as many as the
        # storage's number) and, every third call, delete it. A plain upsert is last-writer-
        # wins and a delete removes what is there: neither may fail because another made
        # or removed the session a moment before (two first inserts meeting at the primary
        # key, InnoDB's deadlock on a row just deleted), and the session is always absent
        # or one write's whole. A MySQL delete that found no session removed the runs of
        # a save committed while it looked for them, once in some 20,000 calls here: the
        # soak runs this test longer.
        start = threading.Barrier(6)
        seen: list[Session | None] = []
        rounds = int(os.environ.get("SAVEGAME_CONTENTION_ROUNDS", "120"))

        def work(t: int) -> None:
            storage = backend_store()
            start.wait(timeout=60)
            for i in range(rounds):
                if (i + t) % 3 == 0:
                    storage.delete_session("s")
                else:
                    runs = [{"writer": f"{t}-{i}", "n": n} for n in range(t + 1)]
                    stored = storage.upsert(_with_runs(backend_store, "s", runs, user_id="u"))
                    assert _runs_of(backend_store, stored) == runs
                seen.append(storage.read("s"))

        in_threads(6, work)
        seen.append(backend_store().read("s"))
        for got in seen:
            if got is not None:
                runs = _runs_of(backend_store, got)
                writer = runs[0]["writer"]
                assert runs == [{"writer": writer, "n": n} for n in range(int(writer[0]) + 1)]
        assert len(seen) == 6 * rounds + 1

    @pytest.mark.parametrize("each", [False, True], ids=["one storage", "a storage each"])
    def test_threads_update_one_counter(self, backend_store: Store, each: bool) -> None:
        # A storage each: in-memory storages given one dict each took a lock of their own,
        # so their checks and writes interleaved. Threads switch as often as they can, and
        # start each update together: a write that reads the stored version and then
        # writes, in two steps rather than one atomic one, lost an update in 3 runs of 5
        # when the threads ran 20 updates each as they came, and in every run of 20 so.
        storage = backend_store()
        rounds = 60
        together = threading.Barrier(4)

        def bump(session: Any) -> Any:
            if session is None:
                return _session(backend_store, "counter", session_data={"counter": 1})
            session.session_data["counter"] += 1
            return session

        def work(_: int) -> None:
            mine = backend_store() if each else storage
            try:
                for _ in range(rounds):
                    together.wait(timeout=60)
                    mine.update("counter", bump)
            except threading.BrokenBarrierError:
                return  # another thread failed, and says why
            except BaseException:
                together.abort()
                raise

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            in_threads(4, work)
        finally:
            sys.setswitchinterval(interval)
        got = storage.read("counter")
        assert got is not None
        assert got.session_data == {"counter": 4 * rounds}  # type: ignore[attr-defined]

    def test_another_process_reads_what_this_one_wrote(self, backend_store: Store) -> None:
        storage = backend_store.require("processes")
        _run_workers(backend_store, [["write", "restart-", 20, 2, 256]])
        ids = storage.get_all_session_ids(user_id="user-1")
        assert sorted(ids) == sorted(f"restart-{i}" for i in range(20))
        for sid in ids:
            got = storage.read(sid)
            assert got is not None
            assert check_session(backend_store.mode, got, 256) == 1

    def test_four_processes_write_1200_sessions(self, backend_store: Store) -> None:
        storage = backend_store.require("processes")
        out = _run_workers(backend_store, [["write", f"p{p}-", 300, 1, 64] for p in range(4)])
        assert len(out) == 1200
        ids = storage.get_all_session_ids()
        assert len(ids) == 1200
        assert sorted(ids) == sorted(f"p{p}-{i}" for p in range(4) for i in range(300))
        assert len(storage.get_all_session_ids(user_id="user-1", entity_id="entity-1")) == 1200

    def test_processes_purging_while_another_saves_expired_sessions_again_lose_no_save(
        self, backend_store: Store
    ) -> None:
        # Sessions written to expire, saved again (round 1, for good: the URL gives no
        # expiry) by one process while two others purge as if long after their expiry:
        # every save that returned is there, whole, and what is purged is only the rest.
        backend_store.require("processes")
        expiring = backend_store(expire=3600)
        for i in range(150):
            expiring.upsert(make_session(backend_store.mode, f"x{i}", 0, 64))
        out = _run_workers(
            backend_store,
            [["write", "x", 150, 2, 64], ["purge", 40], ["purge", 40]],
        )
        # The purges' lines ("purged 1") are not the writer's.
        saved = {line.split()[0] for line in out if line.startswith("x") and line.endswith(" 1")}
        assert len(saved) == 150
        reader = backend_store()
        for session_id in sorted(saved):
            got = reader.read(session_id)
            assert got is not None, session_id
            assert check_session(backend_store.mode, got, 64) == 1
        assert len(reader.get_all_session_ids(user_id="user-1")) == 150

    def test_processes_erasing_a_user_keep_every_session_saved_under_another(
        self, backend_store: Store
    ) -> None:
        # One process moves user-1's sessions to another user (the worker's sessions are
        # user-1's; these are first saved under "leaving") while two others erase
        # "leaving": each moved session stays whole, and none of "leaving" is left.
        backend_store.require("processes")
        first = backend_store()
        for i in range(150):
            session = make_session(backend_store.mode, f"m{i}", 0, 64)
            session.user_id = "leaving"  # type: ignore[attr-defined]
            first.upsert(session)
        out = _run_workers(
            backend_store,
            [["write", "m", 150, 2, 64], ["erase", "leaving", 20], ["erase", "leaving", 20]],
        )
        assert sum(line.endswith(" 1") and line.startswith("m") for line in out) == 150
        reader = backend_store()
        assert reader.delete_user("leaving") == 0
        for i in range(150):
            got = reader.read(f"m{i}")
            assert got is not None, i
            assert got.user_id == "user-1"  # type: ignore[attr-defined]
            assert check_session(backend_store.mode, got, 64) == 1

    def test_four_processes_increment_one_counter(self, backend_store: Store) -> None:
        storage = backend_store.require("processes")
        storage.upsert(_session(backend_store, "counter", session_data={"counter": 0}))
        _run_workers(backend_store, [["increment", "counter", 200, "safe"]] * 4)
        got = storage.read("counter")
        assert got is not None
        assert got.session_data == {"counter": 800}  # type: ignore[attr-defined]
        assert got.version == 801  # type: ignore[attr-defined]

    def test_plain_upserts_lose_updates_that_update_keeps(self, backend_store: Store) -> None:
        storage = backend_store.require("processes")
        storage.upsert(_session(backend_store, "plain", session_data={"counter": 0}))
        _run_workers(backend_store, [["increment", "plain", 200, "plain"]] * 4)
        got = storage.read("plain")
        assert got is not None
        counter = got.session_data["counter"]  # type: ignore[attr-defined]
        assert 1 <= counter <= 800  # how many survive depends on timing; none is guaranteed
        assert got.version == 801  # type: ignore[attr-defined]
        print(f"{backend_store.backend}: plain read+upsert kept {counter} of 800 increments")

    def test_two_processes_running_one_agent_session_lose_no_run(
        self, backend_store: Store
    ) -> None:
        storage = backend_store.require("processes")
        turns = 50
        worker = [sys.executable, "-m", "savegame.testing.agent_worker", "turns"]
        procs = [
            subprocess.Popen(
                [*worker, backend_store.worker_url(), "agent-shared", str(turns), f"p{p}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for p in range(2)
        ]
        for proc in procs:
            _, stderr = proc.communicate(timeout=240)
            assert proc.returncode == 0, stderr[-3000:]
        got = storage.read("agent-shared")
        assert got is not None
        runs = got.memory["runs"]  # type: ignore[attr-defined]
        assert len(runs) == 2 * turns
        assert len({run["run_id"] for run in runs}) == 2 * turns
        for p in range(2):
            said = [run["input"] for run in runs if run["input"].startswith(f"p{p} ")]
            assert said == [f"p{p} {i}" for i in range(turns)], "a process's runs out of order"
        assert got.version == 2 * turns  # type: ignore[attr-defined]

    def test_kill_9_never_loses_an_acknowledged_write(self, backend_store: Store) -> None:
        backend_store.require("processes")
        rng = random.Random(os.getpid())
        acked: dict[str, int] = {}
        with _Forks(backend_store) as forks:
            for attempt in range(int(os.environ.get("SAVEGAME_KILLS", "20"))):
                forks.start([["write", f"k{attempt}-", 8, 1000, 2048]])
                pid = forks.pid()
                first = forks.readline()
                assert ENDED not in first, f"the writer wrote nothing: {forks.errors()}"
                time.sleep(rng.uniform(0, 0.15))
                os.kill(pid, signal.SIGKILL)
                rest, codes = forks.finish(1)
                assert codes == [-signal.SIGKILL], forks.errors()
                for line in [first.rstrip("\n"), *rest]:
                    sid, acked_round = line.rsplit(" ", 1)
                    acked[sid] = max(acked.get(sid, -1), int(acked_round))
        storage = backend_store()
        listed = set(storage.get_all_session_ids())
        for sid, last in acked.items():
            got = storage.read(sid)
            assert got is not None, f"{sid} was acknowledged and is gone"
            assert check_session(backend_store.mode, got, 2048) >= last
            assert sid in listed
        storage.get_all_sessions(user_id="user-1")

    def test_a_storage_used_before_a_fork_works_in_both_processes_and_loses_nothing(
        self, backend_store: Store
    ) -> None:
        # A storage used before a worker pool forks (a preloading web server): the child's
        # calls must not go out on the parent's connections, whose replies the two
        # processes would then read in turn, nor rely on the parent's database locks, which
        # a child does not inherit (SQLite then took a child's writes for no one's when
        # the parent closed its storage, and dropped them).
        if not hasattr(os, "fork"):
            pytest.skip("no fork on this platform")
        storage = backend_store.require("processes")
        for i in range(4):
            storage.upsert(_session(backend_store, f"s{i}", user_id="u", session_data={"n": i}))
        storage.update("c", _bump(0))
        assert storage.read("s0") is not None
        said_r, said_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            os.close(said_r)
            os.close(go_w)
            _forked_child(backend_store, storage, said_w, go_r)
        os.close(said_w)
        os.close(go_r)
        try:
            for i in range(40):
                got = storage.read(f"s{i % 4}")
                assert got is not None
                assert got.session_data == {"n": i % 4}  # type: ignore[attr-defined]
                storage.upsert(_session(backend_store, f"p{i}", user_id="p"))
                storage.update("c", _bump(1))
                assert len(storage.get_all_session_ids(user_id="u")) == 4
            storage.close()
        finally:
            os.write(go_w, b"go")
            os.close(go_w)
            code = wait_child(pid, 120)
            with os.fdopen(said_r) as said:
                lines = said.read().splitlines()
        assert code == 0, "\n".join(lines[-40:])
        reopened = backend_store()
        acked = [line for line in lines if line.startswith("k")]
        assert len(acked) == 40
        lost = [sid for sid in acked if reopened.read(sid) is None]
        assert lost == [], f"acknowledged in the child and lost: {lost}"
        assert len(reopened.get_all_session_ids(user_id="p")) == 40
        got = reopened.read("c")
        assert got is not None
        assert got.session_data == {"n": 40 + 40 * 10}  # type: ignore[attr-defined]

    def test_readers_never_see_a_torn_session(self, backend_store: Store) -> None:
        storage = backend_store.require("processes")
        storage.upsert(make_session(backend_store.mode, "torn", 0, 512))
        proc = subprocess.Popen(
            _worker(backend_store, "churn", "torn", 300, 512),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        reads = 0
        while proc.poll() is None and reads < 5000:
            got = storage.read("torn")
            assert got is not None
            check_session(backend_store.mode, got, 512)
            for listed in storage.get_recent_sessions(limit=1):
                check_session(backend_store.mode, listed, 512)
            reads += 1
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr[-3000:]
        assert reads > 0

    def test_upgrade_schema_keeps_what_the_original_wrote(self, backend_store: Store) -> None:
        if backend_store.original is None:
            pytest.skip(
                f"{backend_store.backend} has no original layout to upgrade (no Store.original)"
            )
        rows: list[dict[str, Any]] = [
            {
                "session_id": f"old-{i}",
                "user_id": f"user-{i % 2}",
                "team_session_id": None,
                "agent_id": "agent-1",
                "memory": {"runs": [{"run_id": f"r{k}", "content": "ü" * k} for k in range(i)]},
                "agent_data": {"model": "gpt-4o-mini"},
                "session_data": {"n": i},
                "extra_data": None,
                "created_at": 1_700_000_000 + i,
                "updated_at": 1_700_000_100 + i,
            }
            for i in range(6)
        ]
        backend_store.original(rows)
        storage = backend_store()
        for row in rows:
            before = storage.read(row["session_id"])
            assert before is None or before.memory == row["memory"]  # type: ignore[attr-defined]
        storage.upgrade_schema()
        storage.upgrade_schema()
        for row in rows:
            got = storage.read(row["session_id"])
            assert got is not None, row["session_id"]
            assert {k: getattr(got, k) for k in row} == row
            assert got.version == 1  # type: ignore[attr-defined]
        assert storage.get_all_session_ids(user_id="user-1") == ["old-5", "old-3", "old-1"]
        assert storage.get_all_session_ids(entity_id="agent-1")[0] == "old-5"
        session = storage.read("old-4")
        assert session is not None
        session.memory["runs"].append({"run_id": "new"})  # type: ignore[attr-defined]
        assert storage.upsert(session, expected_version=1).version == 2  # type: ignore[attr-defined]
        with pytest.raises(ConflictError):
            storage.upsert(session, expected_version=1)
        got = storage.read("old-4")
        assert got is not None
        assert got.memory["runs"][-1] == {"run_id": "new"}  # type: ignore[attr-defined]
        assert len(storage.get_all_session_ids()) == 6

    def test_reads_while_another_storage_upgrades_are_never_short(
        self, backend_store: Store
    ) -> None:
        # A reader meets each session as the original stored it or as upgraded (or, where
        # the original layout is not read, not yet there): never with its runs missing.
        if backend_store.original is None:
            pytest.skip(
                f"{backend_store.backend} has no original layout to upgrade (no Store.original)"
            )
        memories = {
            f"old-{i}": {"runs": [{"run_id": f"r{k}"} for k in range(i % 4 + 1)]} for i in range(20)
        }
        backend_store.original(
            [
                {"session_id": sid, "user_id": "u", "memory": memory, "created_at": i}
                for i, (sid, memory) in enumerate(memories.items())
            ]
        )
        wrong: list[Any] = []
        done = threading.Event()

        def read_until_done() -> None:
            storage = backend_store()
            try:
                while not done.is_set():
                    got = [storage.read(sid) for sid in memories]
                    got += storage.get_all_sessions(user_id="u")
                    wrong.extend(
                        (s.session_id, s.memory)  # type: ignore[attr-defined]
                        for s in got
                        if s is not None and s.memory != memories[s.session_id]  # type: ignore[attr-defined]
                    )
            except Exception as exc:  # noqa: BLE001 - any error of a reader fails the test
                wrong.append(exc)

        readers = [threading.Thread(target=read_until_done) for _ in range(2)]
        for thread in readers:
            thread.start()
        try:
            backend_store().upgrade_schema()
        finally:
            done.set()
            for thread in readers:
                thread.join()
        assert wrong == []
        fresh = backend_store()
        assert {s.session_id: s.memory for s in fresh.get_all_sessions()} == memories  # type: ignore[attr-defined]

    def test_upgrade_schema_on_a_current_store_changes_nothing(self, backend_store: Store) -> None:
        storage = backend_store()
        storage.upsert(make_session(backend_store.mode, "u", 2))
        storage.upgrade_schema()
        storage.upgrade_schema()
        got = storage.read("u")
        assert got is not None
        assert check_session(backend_store.mode, got) == 2
        assert got.version == 1  # type: ignore[attr-defined]

    def test_a_purge_finds_from_headers_what_whole_sessions_say(self, backend_store: Store) -> None:
        # stale_sessions and purge read each session's header alone (Storage._read_stamps),
        # and find what reading every session whole finds: the sessions not updated for
        # that long, newest created_at first (ties by id), each at its version. A session
        # whose time cannot be read is kept and said; one whose runs alone were lost is
        # judged by its header like any other.
        from savegame import transfer

        mode, day = backend_store.mode, 86_400
        writer = backend_store(expire=10**6)
        now = int(time.time())
        ages = {  # created and updated that many days ago, saved that many times
            "fresh": (30, 1, 1),
            "edge-fresh": (12, 9, 2),
            "old": (30, 20, 1),
            "tie-b": (40, 25, 1),
            "tie-a": (40, 35, 3),
            "young-stale": (12, 11, 2),
        }
        for session_id, (created, updated, saves) in ages.items():
            for round_ in range(saves):
                session = make_session(mode, session_id, round_, size=2000)
                session.created_at = now - created * day  # type: ignore[attr-defined]
                session.updated_at = now - updated * day  # type: ignore[attr-defined]
                writer.restore(session)
        storage = backend_store()

        def whole(older_than: int) -> list[tuple[str, int]]:
            cutoff = now - older_than
            return [
                (s.session_id, s.version)  # type: ignore[attr-defined]
                for s in storage.get_all_sessions()
                if (s.updated_at or s.created_at) < cutoff  # type: ignore[attr-defined]
            ]

        expected = [("young-stale", 2), ("old", 1), ("tie-a", 3), ("tie-b", 1)]
        assert transfer._stale(storage, 10 * day, now) == whole(10 * day) == expected
        assert transfer.stale_sessions(storage, 10 * day, now=now) == [i for i, _ in expected]
        assert transfer.stale_sessions(storage, 50 * day, now=now) == []
        assert whole(50 * day) == []
        # Measured from the clock: the ages are days apart, the test's run seconds long.
        assert transfer.purge(storage, 10 * day, dry_run=True) == [i for i, _ in expected]
        assert len(storage.get_all_session_ids()) == len(ages)
        # The primitive: None for a session not there, or expired at the time it is given.
        assert storage._read_stamps(["absent", "fresh"], now) == [
            None,
            base.Stamp("fresh", now - 30 * day, now - day, 1),
        ]
        assert storage._read_stamps(["fresh"], now + 2 * 10**6) == [None]

        left_out: list[str] = []
        if backend_store.lose_runs is not None:
            for session_id in ("old", "fresh"):
                backend_store.lose_runs(writer, session_id)
            with pytest.raises(CorruptSessionError):
                backend_store().read("old")
        spoil = next(
            (f for name, f in backend_store.spoil_number.items() if name.endswith("updated_at")),
            None,
        )
        if spoil is not None:
            spoil(writer, "tie-b", "many")
            left_out = ["tie-b"]
        storage = backend_store()
        damaged: list[str] = []
        found = _outcome(partial(transfer.purge, storage, 10 * day, True, damaged))
        if isinstance(found, CorruptSessionError):
            # A store whose listings read the damaged entry (the in-memory dict) fails
            # the purge as a whole, as before; it removes nothing.
            assert "tie-b" in str(found)
            return
        assert found == [i for i, _ in expected if i not in left_out]
        assert len(damaged) == len(left_out)
        assert all("tie-b" in line for line in damaged), damaged
        if left_out:
            with pytest.raises(CorruptSessionError, match="tie-b"):
                transfer.stale_sessions(storage, 10 * day)
        removed = transfer.purge(storage, 10 * day, damaged=[])
        assert sorted(removed) == sorted(found)
        # A folder's listing may leave out the file it has since found damaged.
        listed = backend_store().get_all_session_ids()
        assert set(listed) - set(left_out) == {"fresh", "edge-fresh"}
        assert backend_store().read("edge-fresh") is not None


def _spoilt_reads_fail(
    backend_store: Store,
    spoilers: dict[str, Callable[[Storage, str, Any], None]],
    values: tuple[Any, ...],
) -> None:
    """Each of ``values`` written by hand at each place of ``spoilers`` fails the read of
    that session with CorruptSessionError naming it; never a raw TypeError or ValueError, a
    command the server refused, nor a session whose fields are of the wrong type. A listing
    or a purge raises the same or leaves the session out (a folder leaves out a damaged
    file; a purge takes it for one that has not expired), a save is refused or stores the
    session whole, and it can be deleted."""
    runs = [{"run_id": "a"}, {"run_id": "b"}]
    places = sorted(spoilers.items())
    for n, ((place, spoil), text) in enumerate((p, t) for p in places for t in values):
        session_id = f"spoilt-{n}"
        session = _with_runs(backend_store, session_id, runs, user_id=session_id)
        backend_store(expire=10**6).upsert(session)
        spoil(backend_store(), session_id, text)
        storage = backend_store(expire=10**6)
        with pytest.raises(CorruptSessionError) as refused:
            storage.read(session_id)
        said = str(refused.value)
        assert session_id in said, (place, text, said)
        assert "outside savegame" in said, (place, text, said)
        listed = _outcome(partial(storage.get_all_sessions, user_id=session_id))
        assert isinstance(listed, CorruptSessionError) or listed == [], (place, text)
        purged = _outcome(storage.purge_expired)
        assert isinstance(purged, CorruptSessionError) or purged == 0, (place, text)
        saved = _outcome(partial(backend_store(expire=10**6).upsert, session))
        if isinstance(saved, CorruptSessionError):
            assert session_id in str(saved), (place, text, saved)
        else:
            got = backend_store().read(session_id)
            assert got is not None
            assert _runs_of(backend_store, got) == runs
            assert type(got.version) is int  # type: ignore[attr-defined]
        assert backend_store().delete_session(session_id) is True
        assert backend_store().read(session_id) is None
