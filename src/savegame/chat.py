"""``savegame chat``: a conversation in the terminal that is saved after every message.

It reads lines from standard input and prints answers to standard output, so a person types
into it and a script can pipe into it alike. Quit, come back with ``--session ID``, and the
earlier conversation is shown and continued. The model is the OpenAI-compatible one the
environment configures (``OPENAI_API_KEY`` or ``OPENAI_BASE_URL``, with ``OPENAI_MODEL``) or,
when none is, the offline model; the first line says which.

Storage errors end the chat with the command that comes back to it, and propagate to the
``savegame`` command, which prints them and exits 1; a model
error ends only that turn (nothing of it is saved) and the chat goes on, as does a ``/load``
of a session that cannot be loaded (another user's, a damaged one, an id savegame cannot
store), which keeps the current session. Ctrl-C ends the chat as Ctrl-D does, saying how to
come back, and exits 130.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import re
import shlex
import signal
import sys
import unicodedata
from typing import Annotated, Any

import typer

from savegame import transfer
from savegame.agent import Agent, turns_of
from savegame.errors import CorruptSessionError, InvalidIdentifierError, StorageError
from savegame.models import Message, Model, ModelError, configured_model
from savegame.models.offline import OfflineModel
from savegame.runtime import SessionOwnerError
from savegame.storage.base import Storage
from savegame.storage.codec import check_id
from savegame.storage.url import open_storage, redact

HELP = (
    "commands: /sessions (list), /new, /rename NAME, /load ID, /history, /help, /quit (or Ctrl-D)"
)
HISTORY_RUNS = 10
"""Earlier turns sent to the model with each message."""
DEFAULT_STORAGE = "sqlite:///savegame.db"
CHAT_AGENT_ID = "savegame-chat"
"""The ``agent_id`` of the sessions a chat starts: ``savegame sessions list --entity
savegame-chat`` lists them all, whichever chat started them."""


def chat(
    session: Annotated[
        str | None,
        typer.Option("--session", help="Resume (or start) the session with this id."),
    ] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Whose chat it is.")] = None,
    storage: Annotated[
        str,
        typer.Option(
            "--storage",
            "-s",
            envvar="SAVEGAME_STORAGE",
            help="URL of the store: sqlite:///file.db, json:///dir, redis://host:6379/0, ...",
        ),
    ] = DEFAULT_STORAGE,
) -> None:
    """Chat with an agent whose conversation is saved after every message."""
    if sys.stdin is None or sys.stdout is None:
        # Python has none when the command starts with it closed (savegame chat >&-).
        raise OSError(errno.EBADF, "a chat needs standard input and output, and one is closed")
    for given, what in ((session, "session id"), (user, "user id")):
        if given is not None:
            # An empty one (--session "$UNSET") would start a new session in place of the
            # one meant, under an id nobody asked for; refused before the store is made.
            check_id(given, what)
    model, how = _model()
    interrupted = False
    with open_storage(storage, mode="agent") as store:
        store.create()
        agent = _ChatAgent(
            model=model,
            storage=store,
            session_id=session,
            user_id=user,
            agent_id=CHAT_AGENT_ID,
            name="assistant",
            add_history_to_messages=True,
            num_history_runs=HISTORY_RUNS,
        )
        _say(f"savegame chat: model {how}; store {redact(storage)}")
        _show_session(agent)
        _say(HELP)
        try:
            _loop(agent, store)
        except KeyboardInterrupt:
            interrupted = True
        except Exception:
            # The store failed mid-chat (gone, locked): the way back to what was saved, a
            # session under a made-up id above all, is said before the error.
            _say("")
            _say_bye(agent, storage)
            raise
        if not agent.runs and not _stored(store, agent.session_id):
            _say(f"bye: nothing was said in session {printable(agent.session_id)}; none was saved")
        else:
            _say_bye(agent, storage)
    if interrupted:
        raise typer.Exit(128 + signal.SIGINT)


class _ChatAgent(Agent):
    """The chat's agent: a session it continues keeps the agent id and name it was stored
    with (the chat's are for the sessions it starts), so that a session of another
    application, resumed in the terminal, stays listed under that application's agent."""

    def _reset(self) -> None:
        super()._reset()
        self.entity_id = CHAT_AGENT_ID

    def _restored(self, data: dict[str, Any]) -> None:
        super()._restored(data)
        agent_data = data.get("agent_data") or {}
        self.entity_id = data.get("agent_id") or CHAT_AGENT_ID
        self.name = agent_data.get("name") or self.name


def _model() -> tuple[Model, str]:
    configured = configured_model()
    if configured is not None:
        return configured, f"{configured.id} ({configured.provider}, from the environment)"
    return OfflineModel(), (
        "offline (set OPENAI_API_KEY, or OPENAI_BASE_URL for a local server, to use a real one)"
    )


def _loop(agent: Agent, store: Storage) -> None:
    while True:
        try:
            sys.stdout.write("you> ")
            sys.stdout.flush()
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            _say("")  # the line the prompt is on
            raise
        if not line:
            _say("")
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if not _command(agent, store, text):
                break
            continue
        try:
            answer = agent.run(text)
        except ModelError as exc:
            _say(f"model error: {exc} (nothing was saved; send it again)")
            continue
        except KeyboardInterrupt:
            _say("")
            _say("interrupted before the answer was shown: a message is saved only with its answer")
            raise
        _say(f"{agent.name}> {answer.content}")


def _stored(store: Storage, session_id: str) -> bool:
    """Whether ``store`` holds the session, as far as it answers: one it cannot tell of gets
    the resume command, which is the way back to what may have been saved."""
    try:
        return store.read(session_id) is not None
    except StorageError:
        return True


def _say_bye(agent: Agent, url: str) -> None:
    _say(f"bye: resume with  {_resume_command(agent, url)}")


def _resume_command(agent: Agent, url: str) -> str:
    """The command that comes back to this chat: its session, user and store, quoted for a
    shell (a password in the URL shown as ``***``, as everywhere; see :func:`_shell_word`)."""
    words = ["savegame", "chat", "--session", agent.session_id]
    if agent.user_id is not None:
        words += ["--user", agent.user_id]
    # Left out only where it goes without saying: the default, with no SAVEGAME_STORAGE
    # to stand in for it when the command runs again.
    if url != DEFAULT_STORAGE or os.environ.get("SAVEGAME_STORAGE"):
        words += ["--storage", redact(url)]
    return " ".join(_shell_word(word) for word in words)


def _shell_word(word: str) -> str:
    """``word`` quoted for a shell, so that the shell gives it back exactly, also when it
    holds what a terminal does not show (:func:`unshown`: a tab, a zero-width space): written
    as ``$'...'`` with such characters as escapes (``$'a\\u200bb'``), which bash, zsh and
    ksh read back, where :func:`printable` would show their escapes inside plain quotes,
    which the shell passes on as a backslash and letters. So are the characters that standard
    output's encoding lacks (``é`` in an ASCII locale), which it could not write."""
    if not any(_escapes(char) for char in _CANDIDATES.findall(word)):
        return shlex.quote(word)
    return "$'" + _CANDIDATES.sub(_escaped, word.replace("\\", "\\\\").replace("'", "\\'")) + "'"


def _escaped(match: re.Match[str]) -> str:
    """The matched character as an escape of ``$'...'`` when a terminal does not show it
    or standard output cannot write it (:func:`_escapes`)."""
    char = match.group()
    code = ord(char)
    if not _escapes(char):
        return char
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _command(agent: Agent, store: Storage, text: str) -> bool:
    """Runs an in-chat command; False when the chat should end."""
    name, _, arg = text.partition(" ")
    arg = arg.strip()
    if name in ("/quit", "/exit", "/q"):
        return False
    if name == "/sessions":
        _list_sessions(agent, store)
    elif name == "/new":
        agent.new_session()
        _say(f"new session {printable(agent.session_id)} (saved with its first message)")
    elif name == "/rename" and arg:
        agent.rename_session(arg)
        _say(f"session {printable(agent.session_id)} is now called {arg!r}")
    elif name == "/load" and arg:
        try:
            agent.load_session(arg)
        except (SessionOwnerError, InvalidIdentifierError, CorruptSessionError) as exc:
            # The current session is kept: a mistyped id must not end the chat.
            _say(f"cannot load: {exc}")
            return True
        _show_session(agent)
    elif name == "/history":
        # As the next message is sent with it: with the turns that another chat on this
        # session saved since this one last read or saved it.
        agent.load_session()
        _print_messages(agent.get_messages_for_session())
    else:
        _say(HELP)
    return True


def _show_session(agent: Agent) -> None:
    # Other code may have stored a name that is no text (a number), which the listings
    # show as none.
    name = agent.session_name if isinstance(agent.session_name, str) else None
    named = f" ({printable(name)})" if name else ""
    session_id = printable(agent.session_id)
    if not agent.runs:
        _say(f"new session {session_id}{named}")
        return
    _say(f"resuming session {session_id}{named}: {_turn_count(len(agent.runs), 'earlier ')}")
    _print_messages(agent.get_messages_for_session())
    _say("--")


def _print_messages(messages: list[Message]) -> None:
    for m in turns_of(messages):
        who = "you" if m["role"] == "user" else "assistant"
        _say(f"  {who}: {m['content']}")


def _list_sessions(agent: Agent, store: Storage) -> None:
    """Lists the user's sessions as ``savegame sessions list`` does: a session that other
    code stored with fields of other shapes as well as it can be, and one that cannot be
    read left out with a note, rather than ending the chat."""
    damaged: list[str] = []
    sessions = list(transfer.iter_sessions(store, user_id=agent.user_id, damaged=damaged))
    if not sessions and not damaged:
        _say("no saved sessions yet")
    for s in sessions:
        updated = getattr(s, "updated_at", None) or 0
        when = dt.datetime.fromtimestamp(updated).strftime("%Y-%m-%d %H:%M")
        mark = "*" if s.session_id == agent.session_id else " "
        name = printable(transfer.session_name(s) or "")
        runs = len(transfer.runs_of(store.spec, s))
        _say(f"{mark} {printable(s.session_id)}  {name:20}  {_turn_count(runs):>9}  {when}")
    said = transfer.left_out(store, damaged)
    if said is not None:
        _say(said)


def _turn_count(count: int, kind: str = "") -> str:
    return f"{count} {kind}turn{'s' * (count != 1)}"


def _say(text: str) -> None:
    """Prints ``text`` as :func:`printable` shows it, the characters standard output's
    encoding lacks (``é`` in an ASCII locale) as their Python escapes, as the tables of the
    other commands show them: writing them would fail, and end the chat."""
    encoding = _out_encoding()
    shown = printable(text, lines=True).encode(encoding, "backslashreplace").decode(encoding)
    sys.stdout.write(shown + "\n")
    sys.stdout.flush()


def _escapes(char: str) -> bool:
    """Whether the resume hint writes ``char`` as an escape: a terminal does not show it
    (:func:`unshown`), or standard output's encoding lacks it."""
    if unshown(char):
        return True
    try:
        char.encode(_out_encoding())
    except UnicodeEncodeError:
        return True
    return False


def _out_encoding() -> str:
    """Standard output's encoding; UTF-8 for one that names none (a StringIO the chat's
    output is taken into, ``contextlib.redirect_stdout``), which holds any text."""
    return getattr(sys.stdout, "encoding", None) or "utf-8"


UNSHOWN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""The Unicode categories of the characters :func:`printable` writes as escapes: control
characters, which a terminal would obey (an escape sequence in a model's answer could clear
the screen or retitle the window); format characters, which it shows as nothing or obeys
(zero-width spaces and joiners, the byte order mark, the marks and overrides of
bidirectional text, which would show an id or a line in another order than it has), so
that two ids that differ by one would look alike; the line and paragraph separators
(U+2028, U+2029), which some terminals break lines at and others show as nothing; and lone
surrogates, which UTF-8 cannot encode."""
_KEPT_IN_LINES = frozenset("\t\n\r\u200c\u200d")
"""What running text keeps of :data:`UNSHOWN_CATEGORIES`: line breaks (``\\r`` only before
``\\n``: alone, it sends the terminal back to the start of the line, and the text after it
is written over the text before), tabs, and the zero-width joiner and non-joiner, which
shape words (Persian, Hindi) and join emoji into one (U+1F469 U+200D U+1F4BB, a woman at a
laptop) in what a person or a model wrote; ids and names escape them all."""
_CANDIDATES = re.compile(r"[^\x20-\x7e]")
"""Every character but printable ASCII: those :func:`unshown` must look at."""


def unshown(char: str) -> bool:
    """Whether :func:`printable` writes ``char`` as an escape (:data:`UNSHOWN_CATEGORIES`)."""
    return unicodedata.category(char) in UNSHOWN_CATEGORIES


def printable(text: str, *, lines: bool = False) -> str:
    """``text`` with each character of :data:`UNSHOWN_CATEGORIES` written as its Python
    escape (``\\x1b``, ``\\u2028``, ``\\ud800``), for a terminal; ``lines``: line breaks,
    tabs and the joiners of :data:`_KEPT_IN_LINES` are kept."""
    kept = _KEPT_IN_LINES if lines else frozenset()

    def shown(match: re.Match[str]) -> str:
        char = match.group()
        if not unshown(char):
            return char
        if char in kept and (char != "\r" or text.startswith("\n", match.end())):
            return char
        return char.encode("unicode_escape").decode("ascii")

    return _CANDIDATES.sub(shown, text)
