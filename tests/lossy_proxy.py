"""A TCP proxy on loopback that can lose one reply: the server has done what it was asked,
and the client never hears of it, as when a connection dies between the two.

``with LossyProxy(host, port) as proxy``: connect clients to ``proxy.port``; after
``proxy.lose_reply_to(b"COMMIT")`` the first reply the server sends after a client's bytes
holding ``COMMIT`` is dropped and that client's connection is cut. Connections made after
that pass everything.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any

from savegame.errors import StorageError


class LossyProxy:
    """Forwards loopback connections to ``(host, port)``, one thread per direction."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._marker: bytes | None = None
        self._meanwhile: Callable[[], object] | None = None
        self._reply = b""
        self._after = b""
        self._lock = threading.Lock()
        self.lost = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def lose_reply_to(
        self,
        marker: bytes,
        meanwhile: Callable[[], object] | None = None,
        reply: bytes = b"",
        after: bytes = b"",
    ) -> None:
        """Arms the proxy: the reply to the next request holding ``marker`` is lost.

        ``after``: only a request holding ``marker`` that comes after one holding these
        bytes (the commit of a write, not of the read before it). ``reply``: the lost reply
        is the first one after that request to hold these bytes (a client that pipelines
        may still be reading replies to earlier requests).
        ``meanwhile`` runs once the server has replied and before the client's connection
        is cut, while the client still waits: another writer coming in between.
        """
        with self._lock:
            self._marker = marker
            self._after = after
            self._reply = reply
            self._meanwhile = meanwhile
            self.lost.clear()

    def __enter__(self) -> LossyProxy:
        self._start(self._accept)
        return self

    def __exit__(self, *_: Any) -> None:
        _close(self._listener)  # the shutdown wakes the thread waiting in accept()
        with self._lock:
            for sock in self._sockets:
                _close(sock)
        for thread in self._threads:
            thread.join(5)

    def _start(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target, timeout=10)
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            waiting = threading.Event()  # set: this connection's next reply is to be lost
            self._start(self._requests, client, server, waiting)
            self._start(self._replies, server, client, waiting)

    def _requests(self, client: socket.socket, server: socket.socket, waiting: Any) -> None:
        while data := _receive(client):
            with self._lock:
                if self._marker is not None and self._after:
                    if self._after in data:
                        tail = data[data.index(self._after) :]
                        self._after = b""
                        if self._marker in tail:
                            self._marker = None
                            waiting.set()
                elif self._marker is not None and self._marker in data:
                    self._marker = None
                    waiting.set()
            try:
                server.sendall(data)
            except OSError:
                break
        _close(server)

    def _replies(self, server: socket.socket, client: socket.socket, waiting: Any) -> None:
        while data := _receive(server):
            if waiting.is_set() and self._reply in data:
                if self._meanwhile is not None:
                    self._meanwhile()
                self.lost.set()
                break
            try:
                client.sendall(data)
            except OSError:
                break
        _close(client)
        _close(server)


def _receive(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _bump(by: int) -> Callable[[Any], Any]:
    from savegame.storage.session.agent import AgentSession

    def bump(session: Any) -> Any:
        if session is None:
            return AgentSession(session_id="c", session_data={"n": by})
        session.session_data["n"] += by
        return session

    return bump


def _made_once(
    storage: Any, proxy: LossyProxy, marker: bytes, reply: bytes = b"", after: bytes = b""
) -> None:
    """A write the server made but whose reply was lost, with no other write before it is
    sent again, is found made and reported done: not as a conflict with itself, and not
    made twice."""
    from savegame.storage.session.agent import AgentSession

    storage.upsert(AgentSession(session_id="c", session_data={"n": 1}))
    session = storage.read("c")
    assert session is not None
    session.session_data["n"] += 1
    proxy.lose_reply_to(marker, reply=reply, after=after)
    saved = storage.upsert(session, expected_version=session.version)
    assert proxy.lost.is_set(), "no reply was lost: the test did not test"
    assert saved.version == session.version + 1, saved.version
    got = storage.read("c")
    assert got is not None
    stored = (got.session_data, got.version)
    assert stored == ({"n": 2}, session.version + 1), stored


def check_lost_reply(
    storage: Any,
    other: Any,
    proxy: LossyProxy,
    marker: bytes,
    writes: int,
    kept: int,
    reply: bytes = b"",
    after: bytes = b"",
) -> None:
    """A write whose reply ``proxy`` loses is found made and never made twice, with
    ``writes`` writes of ``other`` (a storage of the same store whose replies are not lost)
    coming in before it is sent again, as long as they are at most ``kept`` (the past tokens
    a header keeps); after more, it raises :class:`StorageError` saying its outcome is
    unknown. Whichever, ``update`` must not apply its change a second time.

    ``marker`` is in the request whose reply makes the write known to the client (the
    commit, the write script), ``reply`` in that reply; ``after``: see
    :meth:`LossyProxy.lose_reply_to`.
    """
    if not writes:
        _made_once(storage, proxy, marker, reply, after)
        return
    storage.update("c", _bump(1))

    def meanwhile() -> None:
        for _ in range(writes):
            other.update("c", _bump(10))

    proxy.lose_reply_to(marker, meanwhile=meanwhile, reply=reply, after=after)
    unknown: StorageError | None = None
    try:
        storage.update("c", _bump(1))
    except StorageError as exc:
        unknown = exc
    assert unknown is None or "unknown" in str(unknown), unknown
    assert proxy.lost.is_set(), "no reply was lost: the test did not test"
    got = other.read("c")
    assert got is not None
    assert got.session_data == {"n": 2 + 10 * writes}, got.session_data
    assert (unknown is not None) == (writes > kept), unknown


def writes_meanwhile(kept: int) -> Any:
    """The parametrization of a test running :func:`check_lost_reply`: no other write, one,
    as many as a header keeps tokens of, and one more."""
    import pytest

    return pytest.mark.parametrize(
        "writes",
        [0, 1, kept, kept + 1],
        ids=["alone", "another-writes", "past-tokens-full", "too-many-writes"],
    )
