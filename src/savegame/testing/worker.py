"""A process that works on a store, for the conformance suite's crash and concurrency tests.

Run as ``python -m savegame.testing.worker URL MODE COMMAND ARGS...``. It prints one line per
acknowledged write and flushes it, so a parent that kills it knows exactly which writes had
returned.

Commands:
    write PREFIX COUNT ROUNDS SIZE   upsert sessions PREFIX0..PREFIX{COUNT-1}, ROUNDS times
                                     each, printing "ID ROUND" after each write returns
    increment SESSION_ID COUNT MODE  add 1 to session_data["counter"] COUNT times, with
                                     ``update`` (MODE safe) or read + upsert (MODE plain)
    churn SESSION_ID ROUNDS SIZE     rewrite one sample session for ROUNDS rounds, alternating
                                     growing and shrinking runs, printing each round
    purge TIMES                      purge TIMES times as if a million seconds later (every
                                     session that expires at all is expired then), printing
                                     "purged N" after each
    erase USER_ID TIMES              delete_user(USER_ID) TIMES times, printing "erased N"
    serve                            a fork server: see :func:`_serve`
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any

from savegame.storage.url import open_storage
from savegame.testing.sample import make_session

PID = "<pid>"
"""What a child of :func:`_serve` prints first, before its process id."""
ENDED = "<ended>"
"""What :func:`_serve` prints when a child it forked has ended."""


def _write(storage: Any, mode: str, prefix: str, count: int, rounds: int, size: int) -> None:
    for round_ in range(rounds):
        for i in range(count):
            sid = f"{prefix}{i}"
            storage.upsert(make_session(mode, sid, round_, size))
            _say(f"{sid} {round_}")


def _say(line: str) -> None:
    """One line, written and flushed at once, so a kill leaves no half-said acknowledgement."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _bump(session: Any) -> Any:
    data = dict(session.session_data or {})
    data["counter"] = data.get("counter", 0) + 1
    session.session_data = data
    return session


def _increment(storage: Any, mode: str, session_id: str, count: int, how: str) -> None:
    for _ in range(count):
        if how == "safe":
            storage.update(session_id, _bump)
        else:
            current = storage.read(session_id)
            storage.upsert(_bump(current))
    print("done", flush=True)


def _churn(storage: Any, mode: str, session_id: str, rounds: int, size: int) -> None:
    for round_ in range(rounds):
        shape = round_ % 7 if round_ % 2 else round_ % 13
        session = make_session(mode, session_id, shape, size)
        storage.upsert(session)
        _say(f"{session_id} {shape}")


def _purge(storage: Any, times: int) -> None:
    for _ in range(times):
        _say(f"purged {storage._purge_expired(int(time.time()) + 10**6)}")


def _erase(storage: Any, user_id: str, times: int) -> None:
    for _ in range(times):
        _say(f"erased {storage.delete_user(user_id)}")


def _serve(url: str, mode: str) -> int:
    """Runs the commands of each line read from standard input in children forked for them.

    A test that starts twenty writers would otherwise spend most of its time importing
    savegame, the backend's module and its driver twenty times: the server imports them
    once, by opening and closing a storage, which connects to nothing, and each child opens
    the store itself. A line holds one command or several separated by ``|``; the children
    of one line run at once, and the server reads the next line once they have all ended.
    A child prints ``PID N`` first, then what its command prints; once it has ended
    (killed, say) the server prints ``ENDED PID CODE`` (:data:`PID`, :data:`ENDED`, the
    exit code). Whatever stands before :data:`ENDED` on its line is what a killed child had
    not finished saying. Standard input closed ends the server.
    """
    open_storage(url, mode=mode).close()
    for line in sys.stdin:
        sys.stdout.flush()
        children = [_fork(url, mode, command.split()) for command in line.split("|")]
        for pid in children:
            _, status = os.waitpid(pid, 0)
            _say(f"{ENDED} {pid} {os.waitstatus_to_exitcode(status)}")
    return 0


def _fork(url: str, mode: str, command: list[str]) -> int:
    """Forks a child that runs ``command`` and exits; returns its process id."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _say(f"{PID} {os.getpid()}")
        code = main([url, mode, *command])
    except BaseException:  # noqa: BLE001 - told on stderr, as an uncaught error would be
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str]) -> int:
    """Runs one command; see the module docstring."""
    url, mode, command, *args = argv
    if command == "serve":
        return _serve(url, mode)
    storage = open_storage(url, mode=mode)
    try:
        if command == "write":
            _write(storage, mode, args[0], int(args[1]), int(args[2]), int(args[3]))
        elif command == "increment":
            _increment(storage, mode, args[0], int(args[1]), args[2])
        elif command == "churn":
            _churn(storage, mode, args[0], int(args[1]), int(args[2]))
        elif command == "purge":
            _purge(storage, int(args[0]))
        elif command == "erase":
            _erase(storage, args[0], int(args[1]))
        else:
            print(f"unknown command {command!r}", file=sys.stderr)
            return 2
    finally:
        storage.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
