"""A TCP proxy on loopback that can lose one reply: the server has done what it was asked,
and the client never hears of it, as when a connection dies between the two.

``with LossyProxy(host, port) as proxy``: connect clients to ``proxy.port``; after
``proxy.lose_reply_to(b"COMMIT")`` the first reply the server sends after a client's bytes
holding ``COMMIT`` is dropped and that client's connection is cut. Connections made after
that pass everything. After ``proxy.refuse_next(n)`` every connection through the proxy is
cut and the next ``n`` are closed as soon as they are made, before anything reaches the
server.
After ``proxy.hold_reply_to(marker, meanwhile)`` the reply to the next request holding
``marker`` waits until ``meanwhile()`` has run, and then goes through.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from savegame.testing import LossyLink


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
        self._hold = False
        self._lock = threading.Lock()
        self.lost = threading.Event()
        self._refuse = 0
        self.refused = threading.Event()
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
        self._arm(marker, meanwhile, reply, after, hold=False)

    def hold_reply_to(self, marker: bytes, meanwhile: Callable[[], object]) -> None:
        """Arms the proxy: the reply to the next request holding ``marker`` is held back
        while ``meanwhile`` runs, the client waiting for it, and then delivered."""
        self._arm(marker, meanwhile, b"", b"", hold=True)

    def _arm(
        self,
        marker: bytes,
        meanwhile: Callable[[], object] | None,
        reply: bytes,
        after: bytes,
        hold: bool,
    ) -> None:
        with self._lock:
            self._marker = marker
            self._after = after
            self._reply = reply
            self._meanwhile = meanwhile
            self._hold = hold
            self.lost.clear()

    def refuse_next(self, count: int) -> None:
        """Cuts every connection through the proxy and closes the next ``count`` made at
        once: a client's next request finds its connection dead and cannot make another,
        as while a server restarts."""
        with self._lock:
            self._refuse = count
            self.refused.clear()
            for sock in self._sockets:
                _close(sock)
            self._sockets.clear()

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
            with self._lock:
                refuse = self._refuse > 0
                self._refuse -= refuse
                if refuse and not self._refuse:
                    # Before the close: the client may look as soon as it is closed.
                    self.refused.set()
            if refuse:
                _close(client)
                continue
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
                if self._hold:
                    waiting.clear()
                else:
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


@contextlib.contextmanager
def lossy_link(
    proxy: LossyProxy,
    storage: Any,
    other: Any,
    marker: bytes,
    reply: bytes = b"",
    after: bytes = b"",
) -> Iterator[LossyLink]:
    """A :class:`~savegame.testing.LossyLink` of ``storage`` (reaching its server through
    ``proxy``) and ``other``, closing both on leaving. ``marker``, ``reply`` and ``after``
    pick out the reply to lose (see :meth:`LossyProxy.lose_reply_to`)."""
    try:
        yield LossyLink(
            storage,
            other,
            lambda meanwhile: proxy.lose_reply_to(marker, meanwhile, reply, after),
            proxy.lost.is_set,
            proxy.refuse_next,
            proxy.refused.is_set,
            proxy.hold_reply_to,
        )
    finally:
        storage.close()
        other.close()
