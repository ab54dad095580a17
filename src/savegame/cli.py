"""The ``savegame`` command.

The library raises typed errors; this module is the only place that turns them into messages
and exit codes: 0 done, 1 failure, 2 user error (bad URL, missing session, bad flag). An error
prints one ``error:`` line (a bad flag, after the command's usage line) and no traceback;
``savegame --debug ...`` (or ``SAVEGAME_DEBUG=1``) prints the traceback too.

Each command reads and writes through :mod:`savegame.transfer`, so that everything it does is
also a library call.
"""

from __future__ import annotations

import datetime as dt
import errno
import inspect
import json
import os
import re
import shlex
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, TextIO

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.highlighter import JSONHighlighter
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

# Typer vendors click since 0.2x and exports neither; pyproject asks for a typer that has them.
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperCommand, TyperGroup

from savegame import __version__, transfer
from savegame.chat import chat, printable, unshown
from savegame.errors import SerializationError, StorageError
from savegame.storage.base import Storage, whole_number
from savegame.storage.codec import check_id
from savegame.storage.session import MODES, Session
from savegame.storage.url import open_storage, parse_url, redact

DEFAULT_STORAGE = "sqlite:///savegame.db"

SIGPIPE_EXIT = 141
"""The exit code of a command whose standard output was closed, as a shell reports a process
that SIGPIPE ended (128 + 13)."""

SIGINT_EXIT = 130
"""The exit code of a command stopped by Ctrl-C, as a shell reports a process that SIGINT
ended (128 + 2)."""


def _pipe_closed() -> NoReturn:
    """Ends the command quietly, as tools that SIGPIPE ends do: no message, exit code 141.

    Standard output is pointed at the null device first, as the Python documentation
    advises, so that flushing what is still buffered at interpreter exit cannot raise (and
    print) a second BrokenPipeError.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    raise typer.Exit(SIGPIPE_EXIT)


def _emit(data: bytes, *, flush: bool = True) -> None:
    """Writes ``data`` to standard output, all of it; everything the commands print goes
    out here.

    A write to a pipe whose reader has gone can be cut short rather than fail, and Python's
    buffered stream then only returns a smaller count, which its text layer ignores: the
    rest of the output would be dropped and the command end with 0. Writing what was not
    taken again meets the closed pipe, which ends the command with 141.
    """
    stream = _stdout().buffer
    rest = memoryview(data)
    with _writing():
        while rest:
            rest = rest[stream.write(rest) :]
        if flush:
            stream.flush()


@contextmanager
def _writing() -> Iterator[None]:
    """Around a write to standard output: a closed pipe ends the command quietly
    (:func:`_pipe_closed`); any other failure (a full disk under ``savegame export >
    backup.jsonl``) is said to be standard output's, not only why it failed."""
    try:
        yield
    except BrokenPipeError:
        _pipe_closed()
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write to standard output: {exc.strerror}") from exc


def _stdout() -> TextIO:
    """Standard output.

    Raises:
        OSError: when the command was started with it closed (``savegame stats >&-``), as
            Python then has none.
    """
    if sys.stdout is None:
        raise OSError(errno.EBADF, "standard output is closed")
    return sys.stdout


def _file_of(file: int | str) -> tuple[int, int] | None:
    """The device and inode of ``file``, a descriptor or a path; None when there is none."""
    try:
        found = os.stat(file)
    except OSError:
        return None
    return (found.st_dev, found.st_ino)


def _stdout_file() -> tuple[int, int] | None:
    """The file standard output's descriptor is open on (:func:`_file_of`)."""
    return _file_of(1)


_NULL_FILE = _file_of(os.devnull)


def _encoded(text: str) -> bytes:
    """``text`` encoded as standard output's text layer would encode it, but that a
    character its encoding lacks (``é`` in an ASCII locale, ``PYTHONIOENCODING=ascii``) is
    written as its Python escape, as the tables write control characters: failing would
    show nothing, with a message about a codec."""
    stdout = _stdout()
    errors = stdout.errors if stdout.errors not in (None, "strict") else "backslashreplace"
    return text.encode(stdout.encoding, errors)


def _output_encoding() -> str:
    """Standard output's encoding (UTF-8 when it is closed, for the messages then told)."""
    return sys.stdout.encoding if sys.stdout is not None else "utf-8"


def _can_encode(text: str) -> bool:
    """Whether standard output's encoding holds every character of ``text``."""
    try:
        text.encode(_output_encoding())
    except UnicodeEncodeError:
        return False
    return True


class _Output(Console):
    """Standard output: Rich renders, :func:`_emit` writes."""

    def print(self, *objects: Any, **options: Any) -> None:
        # Rich flushes its file as a capture ends, though it writes nothing to it.
        with _writing(), self.capture() as captured:
            super().print(*objects, **options)
        _emit(_encoded(captured.get()))

    def on_broken_pipe(self) -> None:
        # Rich's own handling exits 1; 141 is what the other commands, and other tools, give.
        self.quiet = True
        _pipe_closed()


_NARROWEST_OUTPUT = 20
"""The fewest columns that output is laid out in. Rich lays text out in the width it is
given, and showed nothing of the sessions at ``COLUMNS=1``, nor anything at all (not even
an error) at ``COLUMNS=0``, which Python reads as not set; a terminal narrower still wraps
the lines itself, and every field stays there."""


def _columns(stream: TextIO | None, piped: int) -> int:
    """The columns to lay out what goes to ``stream`` in: its terminal's (``COLUMNS`` where
    set, as Python reads it: ``0`` is not set), at least :data:`_NARROWEST_OUTPUT`;
    ``piped`` for a pipe or a file."""
    if stream is None or not stream.isatty():
        return piped
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return max(int(columns), _NARROWEST_OUTPUT)
    try:
        found = os.get_terminal_size(stream.fileno()).columns
    except OSError:
        found = 0
    return max(found or 80, _NARROWEST_OUTPUT)


# Piped output gets room for whole ids rather than the 80 columns Rich assumes by default.
# No emoji codes: Rich would show a session id like "chat:x:1" as "chat❌1", which cannot be
# copied into the next command.
out = _Output(soft_wrap=False, width=_columns(sys.stdout, 160), emoji=False)
# Messages stay one line each, however narrow the terminal, so that scripts can grep them.
err = Console(stderr=True, soft_wrap=True, emoji=False, width=_columns(sys.stderr, 80))


# ``ctx`` is the Context of the click that typer vendors, which it does not export.
class _Command(TyperCommand):
    """A command whose bad flags name it (:func:`_naming`)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        with _naming(ctx):
            return super().parse_args(ctx, args)


class _Group(TyperGroup):
    """A group of commands whose bad flags name it (:func:`_naming`)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        with _naming(ctx):
            return super().parse_args(ctx, args)


@contextmanager
def _naming(ctx: Any) -> Iterator[None]:
    """Around reading the command line of ``ctx``'s command: a usage error is given that
    context where it has none, as click's parser gives none to a flag without its value
    (``--storage``) or with one it does not take (``--json=1``), so that its report shows the
    command's usage too."""
    try:
        yield
    except UsageError as exc:
        if exc.ctx is None:
            exc.ctx, exc.cmd = ctx, ctx.command
        raise


class _ExitCodes(_Group):
    """The root command group: turns the library's errors, and bad flags and values, into one
    line and an exit code."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # The options before the command name (``savegame --bogus``); those of the commands
        # are read as the group invokes them.
        with _usage_errors():
            return super().parse_args(ctx, args)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if os.environ.get("COLUMNS") == "0":
            # Python reads it as not set; the help and usage errors, which typer lays out
            # in a console of its own, would be laid out in no columns, and show nothing.
            del os.environ["COLUMNS"]
        before = _stdout_file()
        try:
            return super().main(*args, **kwargs)
        except SystemExit as exc:
            # The help (--help, or a command's) is printed by typer's own Rich console,
            # whose closed-pipe handling points standard output at the null device and
            # exits 1: 141 is what every other command gives then.
            if exc.code == 1 and before not in (None, _NULL_FILE) and _stdout_file() == _NULL_FILE:
                raise SystemExit(SIGPIPE_EXIT) from None
            raise
        except OSError as exc:
            # Errors of commands are reported by invoke; one that gets here came from what
            # the command line prints before any command runs (--help, --version) on a
            # standard output that cannot be written (a full disk).
            message = f"cannot write to standard output: {exc.strerror or exc}"
            err.print(f"[bold red]error:[/] {_shown(message)}", highlight=False)
            raise SystemExit(1) from exc

    # ``ctx`` is the Context of the click that typer vendors, which it does not export.
    def invoke(self, ctx: Any) -> Any:
        try:
            result = super().invoke(ctx)
            # Output still buffered would otherwise meet a closed pipe at interpreter exit,
            # out of reach of the handler below.
            if sys.stdout is not None:
                sys.stdout.flush()
            return result
        except (typer.Exit, typer.Abort):
            raise
        except NoArgsIsHelpError:
            raise
        except UsageError as exc:
            _report_usage(exc)
        except BrokenPipeError:
            # The reader of standard output went away (``savegame export | head``). Backends
            # turn their drivers' socket errors into StorageError, so a BrokenPipeError that
            # gets here is standard output's.
            _pipe_closed()
        except ValueError as exc:
            # Bad ids, URLs, modes, values in an import file: the user can fix what they typed.
            _report(exc, ctx, 2)
        except (StorageError, OSError) as exc:
            _report(exc, ctx, 1)


@contextmanager
def _usage_errors() -> Iterator[None]:
    """Around reading a command line: a bad flag or value is reported by
    :func:`_report_usage`. A group named without its command (``savegame sessions``) has
    printed its help, which says what is wrong."""
    try:
        yield
    except NoArgsIsHelpError:
        raise
    except UsageError as exc:
        _report_usage(exc)


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
"""A storage URL quoted in a message (up to the next space), whose password
:func:`_report_usage` hides."""


def _report_usage(exc: UsageError) -> NoReturn:
    """Prints the usage of the command that ``exc`` (a bad flag or value, a missing
    argument, an unknown command) is about, then what is wrong on one ``error:`` line, and
    exits 2.

    Typer's own report is a Rich panel that breaks the message over lines as wide as the
    terminal, which a script cannot grep for; the values it quotes (a URL given where no
    argument is taken, say) are shown without their passwords."""
    if exc.ctx is not None:
        err.print(_shown(exc.ctx.get_usage()), highlight=False)
    message = _URL_IN_TEXT.sub(lambda found: redact(found.group()), exc.format_message())
    err.print(f"[bold red]error:[/] {_shown(_one_line(message))}", highlight=False)
    raise typer.Exit(exc.exit_code)


def _report(exc: BaseException, ctx: Any, code: int) -> NoReturn:
    root = ctx.find_root()
    if (root.obj or {}).get("debug"):
        err.print_exception()
    message = _one_line(str(exc)) or type(exc).__name__
    if "storage.upgrade_schema()" in message:
        message += " (here: savegame schema upgrade, with the same --storage and --mode)"
    err.print(f"[bold red]error:[/] {_shown(message)}", highlight=False)
    raise typer.Exit(code) from exc


_ASCII_SPACES = re.compile(r"[ \t\n\r\f\v]+")
"""Runs of the spaces and line breaks that :func:`_one_line` joins; not :meth:`str.split`'s,
which include U+2028, U+00A0 and the other separators that a path or an id can hold, and
that a message must show as escapes rather than as spaces."""


def _one_line(text: str) -> str:
    """``text`` (a driver's message over several lines, say) on one line."""
    return _ASCII_SPACES.sub(" ", text).strip()


def _missing(url: str, mode: str, session_ids: list[str]) -> NoReturn:
    """A user error: sessions that are not in the store."""
    _fail(f"no {mode} session {', '.join(map(repr, session_ids))} in {redact(url)}")


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {_shown(message)}", highlight=False)
    raise typer.Exit(code)


app = typer.Typer(
    name="savegame",
    cls=_ExitCodes,
    help="Inspect, move and clean up saved agent, team and workflow sessions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
sessions_app = typer.Typer(
    cls=_Group,
    help="List, show, rename and delete sessions.",
    no_args_is_help=True,
    add_completion=False,
)
schema_app = typer.Typer(
    cls=_Group,
    help="Manage the table or layout of a store.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(sessions_app, name="sessions")
app.add_typer(schema_app, name="schema")


def _check_mode(value: str) -> str:
    if value not in MODES:
        raise typer.BadParameter(f"{value!r} is not a mode; use one of {', '.join(MODES)}")
    return value


StorageOption = Annotated[
    str,
    typer.Option(
        "--storage",
        "-s",
        envvar="SAVEGAME_STORAGE",
        help="URL of the store: sqlite:///file.db, json:///dir, redis://host:6379/0, ...",
    ),
]
ModeOption = Annotated[
    str,
    typer.Option(
        "--mode",
        "-m",
        envvar="SAVEGAME_MODE",
        callback=_check_mode,
        help=f"Kind of sessions: {', '.join(MODES)}.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
UserOption = Annotated[str | None, typer.Option("--user", "-u", help="Only this user's sessions.")]
ReplaceNewerOption = Annotated[
    bool,
    typer.Option(
        "--replace-newer",
        help="Also replace the sessions saved at the destination later than the ones brought in.",
    ),
]


def _print_version(value: bool) -> None:
    if value:
        out.print(f"savegame {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option("--debug", envvar="SAVEGAME_DEBUG", help="Show tracebacks of errors."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Inspect, move and clean up saved agent, team and workflow sessions."""
    ctx.obj = {"debug": debug}


@contextmanager
def _open(url: str, mode: str, absent: Literal["", "note", "fail"] = "") -> Iterator[Storage]:
    """The storage of ``url``. ``absent`` says what to do when the store is not there:
    ``"note"`` for a command that reads or removes sessions (a note on stderr, as a mistyped
    path would otherwise look like an empty store); ``"fail"`` for the source of a copy,
    which would copy nothing (a user error, raised before anything is made at the
    destination)."""
    with open_storage(url, mode) as storage:
        # Said once the URL is known to open, which ``sqlite:///`` (no file named) does not.
        if _in_this_process(url, mode):
            _note(
                f"note: {redact(url)} is a store in this command's memory: what is stored "
                "there is gone when the command ends"
            )
        if absent:
            there = storage.table_exists()
            other = _kept_by_another_mode(storage, mode, url, there)
            if other is not None:
                kept = f"{redact(url)} keeps {other} sessions, and none of mode {mode}"
                if absent == "fail":
                    _fail(f"{kept}: there is nothing to copy (pass --mode {other})")
                _note(f"note: {kept}; pass --mode {other} to see them")
            elif not there:
                _say_absent(storage, mode, url, absent)
        yield storage


def _say_absent(storage: Storage, mode: str, url: str, absent: Literal["note", "fail"]) -> None:
    """Says that nothing of ``mode`` is stored at ``url`` (:func:`_open`), and what waits
    there for an upgrade, if anything does."""
    missing = f"nothing of mode {mode} is stored at {redact(url)}"
    try:
        waiting = storage.awaiting_upgrade()
    except StorageError:
        waiting = None  # a server that will not tell (a user without SCAN) gives no hint
    if waiting is not None:
        command = f"savegame schema upgrade -s {shlex.quote(redact(url))}"
        if mode != "agent":
            command += f" --mode {mode}"
        upgrade = f"{missing} in savegame's layout, but {waiting} are: `{command}` moves them"
        if absent == "fail":
            _fail(upgrade)
        _note(f"note: {upgrade}")
    elif absent == "fail":
        _fail(f"{missing}: there is nothing to copy (check the URL and --mode)")
    else:
        _note(
            f"note: {missing} yet; pass --storage (or set SAVEGAME_STORAGE) to name another store"
        )


def _in_this_process(url: str, mode: str) -> bool:
    """Whether ``url`` names a store in memory, which no other command will see."""
    parsed = parse_url(url, mode)
    if parsed.scheme != "sqlite":
        return parsed.scheme == "memory"
    # Imported here: SQLAlchemy, which it imports, is most of the start-up time of a
    # command on another store.
    from savegame.storage.sqlite import in_memory_url

    return in_memory_url(parsed)


def _kept_by_another_mode(store: Storage, mode: str, url: str, there: bool) -> str | None:
    """Another mode whose sessions ``url`` keeps where it keeps none of ``mode`` (whose store
    is ``store``, there or not): its listings in ``mode`` are empty, not because nothing is
    stored (``--mode`` was forgotten, say). None otherwise.

    That is the mode a JSON or YAML folder keeps, or, for a SQL or Redis URL that names no
    table or prefix (one store per mode), the first other mode whose store holds a session
    when ``mode``'s is not there: the ``team_sessions`` table beside no ``agent_sessions``.
    """
    if not there:
        return _other_mode_stored(url, mode) if parse_url(url, mode).per_mode else None
    kept = store.kept_mode()
    if kept is None or kept == mode or store.get_all_session_ids():
        return None
    return kept


def _other_mode_stored(url: str, mode: str) -> str | None:
    """The first mode but ``mode`` whose store at the per-mode ``url`` holds a session. A
    store that fails to answer tells nothing: the hint is not worth failing the command."""
    for other in MODES:
        if other == mode:
            continue
        try:
            with open_storage(url, other) as storage:
                if storage.table_exists() and storage.get_recent_sessions(limit=1):
                    return other
        except StorageError:
            continue
    return None


# -- sessions ---------------------------------------------------------------------------------


@sessions_app.command("list", cls=_Command)
def sessions_list(
    storage: StorageOption = DEFAULT_STORAGE,
    mode: ModeOption = "agent",
    user: UserOption = None,
    entity: Annotated[
        str | None,
        typer.Option("--entity", "-e", help="Only sessions of this agent, team or workflow id."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Sessions a page.")] = 20,
    page: Annotated[int, typer.Option("--page", "-p", min=1, help="Which page, from 1.")] = 1,
    as_json: JsonOption = False,
) -> None:
    """List sessions, newest first, a page at a time."""
    with _open(storage, mode, "note") as store:
        ids = store.get_all_session_ids(user, entity) if store.table_exists() else []
        pages = max(1, -(-len(ids) // limit))
        # A script paging through --json stops at an empty page; a person is told.
        if page > pages and not as_json:
            _fail(
                f"there is no page {page}: the last page is {pages} "
                f"({_sessions(len(ids))}, {limit} a page)"
            )
        start = (page - 1) * limit
        damaged: list[str] = []
        sessions = transfer.read_sessions(store, ids[start : start + limit], damaged)
        rows = [_summary(store, s) for s in sessions]
        _note_left_out(store, damaged)
    if as_json:
        _print_json(rows)
        return
    caption = f"page {page} of {pages}, {_sessions(len(ids))}"
    cells = [[_shown(_cell(key, row[key])) for key in _COLUMNS] for row in rows]
    if not _table_fits(cells):
        _print_blocks(cells, caption)
        return
    table = Table(caption=caption, caption_justify="left")
    for column in _COLUMNS:
        table.add_column(
            column,
            justify="right" if column == "runs" else "left",
            no_wrap=column in _UNWRAPPED,
            # An id cut short with "…" cannot be copied into the next command.
            overflow="fold",
        )
    for row_cells in cells:
        table.add_row(*row_cells)
    out.print(table)


_UNWRAPPED = ("runs", "created", "updated")
"""The columns of ``sessions list`` that are never broken over lines."""

_NARROWEST_FOLDED = 8
"""The fewest characters of a line that ``sessions list`` gives each column it folds (id,
user, entity, name) before it gives up the table for one block per session."""


def _table_fits(cells: list[list[str]]) -> bool:
    """Whether the table of ``sessions list`` leaves its folded columns room on standard
    output: Rich would otherwise squeeze them to nothing (the ids not shown at all) and cut
    the times it cannot wrap, on a terminal 40 columns wide."""
    unwrapped = [
        max(cell_len(Text.from_markup(c).plain) for c in [name, *(r[i] for r in cells)])
        for i, name in enumerate(_COLUMNS)
        if name in _UNWRAPPED
    ]
    borders = 3 * len(_COLUMNS) + 1
    folded = len(_COLUMNS) - len(unwrapped)
    return out.width - borders - sum(unwrapped) >= _NARROWEST_FOLDED * folded


def _print_blocks(cells: list[list[str]], caption: str) -> None:
    """The sessions of ``sessions list`` one below the other, a field a line."""
    for row_cells in cells:
        block = Table.grid(padding=(0, 1))
        block.add_column(no_wrap=True)
        block.add_column(overflow="fold")
        for name, cell in zip(_COLUMNS, row_cells, strict=True):
            block.add_row(f"[bold]{name}[/]", cell)
        out.print(block)
        out.print()
    out.print(f"[dim italic]{escape(caption)}[/]", highlight=False)


@sessions_app.command("show", cls=_Command)
def sessions_show(
    session_id: Annotated[str, typer.Argument(metavar="ID", help="The session's id.")],
    storage: StorageOption = DEFAULT_STORAGE,
    mode: ModeOption = "agent",
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw session.")] = False,
) -> None:
    """Show one session: its conversation, state and metadata."""
    with _open(storage, mode, "note") as store:
        session = store.read(session_id) if store.table_exists() else None
        if session is None:
            _missing(storage, mode, [session_id])
        summary = _summary(store, session)
        runs = transfer.runs_of(store.spec, session)
    data = session.to_dict()
    if as_json:
        _print_json(json.loads(transfer.export_line(session, "shown as JSON")))
        return
    meta = Table.grid(padding=(0, 2))
    meta.add_column(no_wrap=True)
    # An id cut short with "…" cannot be copied into the next command.
    meta.add_column(overflow="fold")
    for key in _COLUMNS:
        meta.add_row(f"[bold]{key}[/]", _shown(_cell(key, summary[key])))
    meta.add_row("[bold]version[/]", _cell("version", data.get("version")))
    out.print(Panel(meta, title=f"{mode} session", expand=False))
    out.print("[bold]Conversation[/]")
    messages = [m for run in runs for m in _messages(run)]
    memory = data.get("memory")
    if not messages and isinstance(memory, dict) and isinstance(memory.get("messages"), list):
        messages = _messages(memory)
    if not messages:
        out.print("  (no messages)")
    for role, text in messages:
        style = {"user": "cyan", "assistant": "green", "system": "magenta"}.get(role, "yellow")
        out.print(f"[bold {style}]{_shown(role)}[/]: {_shown(text, lines=True)}", highlight=False)
    for key, value in data.items():
        if key.endswith("_data") or key == "memory":
            shown = _without_runs(key, value, store.spec.runs_path)
            if shown:
                out.print(f"[bold]{key}[/]")
                _print_json(shown)


@sessions_app.command("delete", cls=_Command)
def sessions_delete(
    session_ids: Annotated[list[str], typer.Argument(metavar="ID", help="Sessions to delete.")],
    storage: StorageOption = DEFAULT_STORAGE,
    mode: ModeOption = "agent",
) -> None:
    """Delete sessions by id; an id that is not there is an error, after the others are gone."""
    # Every id is checked before the first is deleted: a bad one half-way would stop the
    # command with some sessions gone and the rest not.
    wanted = list(dict.fromkeys(check_id(session_id) for session_id in session_ids))
    deleted = 0
    missing: list[str] = []

    def how_far() -> str:
        return (
            f"the deletion stopped having deleted {deleted} of {_sessions(len(wanted))}; "
            "the others are still there"
        )

    with _on_ctrl_c(how_far), _open(storage, mode) as store:
        exists = store.table_exists()
        try:
            for session_id in wanted:
                if exists and store.delete_session(session_id):
                    deleted += 1
                else:
                    missing.append(session_id)
        except Exception:
            _note(f"deleted {_sessions(deleted)}")
            raise
    _note(f"deleted {_sessions(deleted)}")
    if missing:
        _missing(storage, mode, missing)


@sessions_app.command("rename", cls=_Command)
def sessions_rename(
    session_id: Annotated[str, typer.Argument(metavar="ID", help="The session's id.")],
    name: Annotated[str, typer.Argument(metavar="NAME", help="The new name.")],
    storage: StorageOption = DEFAULT_STORAGE,
    mode: ModeOption = "agent",
) -> None:
    """Give a session a name (kept in its session_data as session_name)."""
    if not name.strip():
        # An unset shell variable, most likely: the session would show no name.
        raise typer.BadParameter(
            "a session's name cannot be empty or only spaces", param_hint="'NAME'"
        )
    with _open(storage, mode) as store:
        if transfer.rename_session(store, session_id, name) is None:
            _missing(storage, mode, [session_id])
    _note(f"renamed {session_id!r} to {name!r}")


# -- moving sessions --------------------------------------------------------------------------


@app.command("export", cls=_Command)
def export(
    storage: StorageOption = DEFAULT_STORAGE,
    mode: ModeOption = "agent",
    user: UserOption = None,
) -> None:
    """Write sessions to standard output as JSON lines, one session a line."""
    written = 0

    def write(line: str) -> None:
        nonlocal written
        _emit(line.encode(), flush=False)
        written += 1

    def how_far() -> str:
        # Its output, in a file, is otherwise a backup that looks made.
        return (
            f"the export stopped having written {_sessions(written)}: what it wrote is not "
            "a whole backup"
        )

    with _on_ctrl_c(how_far), _open(storage, mode, "note") as store:
        left_out: list[str] = []
        try:
            count = transfer.export_sessions(store, write, user, left_out)
        except SerializationError as exc:
            raise SerializationError(f"{exc}; {how_far()}") from exc
        left_out += store.unreadable()
        other = (
            _kept_by_another_mode(store, mode, storage, store.table_exists()) if not count else None
        )
    _stdout().flush()
    _note(f"exported {_sessions(count)}")
    _fail_if_left_out(left_out, storage)
    if other is not None:
        # A backup in the wrong mode would be empty, and look made.
        _fail(f"exported nothing: {redact(storage)} keeps {other} sessions (pass --mode {other})")


@app.command("import", cls=_Command)
def import_(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help="JSON lines written by export; - for standard input.",
            allow_dash=True,
        ),
    ],
    storage: StorageOption = DEFAULT_STORAGE,
    mode: ModeOption = "agent",
    replace_newer: ReplaceNewerOption = False,
) -> None:
    """Store the sessions of a JSON lines file, keeping their timestamps and versions."""
    report = transfer.Report()
    with _on_ctrl_c(lambda: report.how_far("import")):
        _import(file, storage, mode, report, replace_newer)
    _note(_moved("imported", report))


def _import(
    file: Path, storage: str, mode: str, report: transfer.Report, replace_newer: bool
) -> None:
    if str(file) == "-":
        if sys.stdin is None:
            _fail("cannot read standard input: it is closed")
        data = sys.stdin.buffer.read()
        source = "<stdin>"
    else:
        try:
            data = file.read_bytes()
        except OSError as exc:
            # A path that names no file is the user's to fix; a disk that fails is not.
            mistyped = isinstance(exc, _NO_SUCH_FILE)
            _fail(f"cannot read {file}: {exc.strerror or exc}", 2 if mistyped else 1)
        source = str(file)
    # Lines end at "\n" only: str.splitlines() would also break at U+2028, U+0085 and the
    # other separators that export writes as they are inside a session's text. Each line is
    # decoded on its own, so that text that is not UTF-8 is reported with its line.
    lines = data.split(b"\n")
    with _open(storage, mode) as store:
        transfer.import_sessions(store, lines, source, report=report, replace_newer=replace_newer)


_NO_SUCH_FILE = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
"""What reading the file ``import`` names raises when the path is wrong (or not the user's
to read): a user error, which exits 2."""


@contextmanager
def _on_ctrl_c(how_far: Callable[[], str]) -> Iterator[None]:
    """Ctrl-C in the block: says on stderr how far the command got (``how_far()``) and
    exits 130, as a shell expects of a command SIGINT ended."""
    try:
        yield
    except KeyboardInterrupt:
        err.print(f"interrupted: {_shown(how_far())}", highlight=False)
        raise typer.Exit(SIGINT_EXIT) from None


def _removed_so_far(what: str, removed: list[str]) -> Callable[[], str]:
    """How far a removal (``what``: "the purge", say) filling in ``removed`` got: how many
    sessions it had removed, the rest being left for running it again."""
    return lambda: (
        f"{what} stopped having removed {_sessions(len(removed))}; running it again "
        "removes the rest"
    )


def _moved(verb: str, report: transfer.Report) -> str:
    """The closing line of an import or a copy (``verb``: what was done)."""
    repaired = ""
    if report.repaired:
        repaired = f" ({len(report.repaired)} over a damaged copy: {_some(report.repaired)})"
    # Without it, sessions deleted from the source while the copy ran would look lost.
    vanished = f", deleted at the source meanwhile {report.vanished}" if report.vanished else ""
    kept = ""
    if report.kept:
        kept = (
            f", kept {len(report.kept)} saved there since ({_some(report.kept)}; "
            "--replace-newer replaces them)"
        )
    return (
        f"{verb} {report.copied}{repaired}, already there {report.unchanged}{kept}{vanished}, "
        f"of {_sessions(report.total)}"
    )


def _some(ids: list[str]) -> str:
    """The first few of ``ids``, for a closing line."""
    return ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")


@app.command("copy", cls=_Command)
def copy(
    source: Annotated[str, typer.Argument(metavar="SRC_URL", help="Store to copy from.")],
    destination: Annotated[str, typer.Argument(metavar="DST_URL", help="Store to copy into.")],
    mode: ModeOption = "agent",
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size", min=1, help="Sessions read and written at a time, a progress step."
        ),
    ] = transfer.DEFAULT_BATCH_SIZE,
    replace_newer: ReplaceNewerOption = False,
) -> None:
    """Copy every session of a mode from one store to another; safe to run again."""
    progress = Progress(
        TextColumn("copying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    task = progress.add_task("copy", total=None)
    left_out: list[str] = []
    report = transfer.Report()
    with (
        _on_ctrl_c(lambda: report.how_far("copy")),
        _open(source, mode, "fail") as src,
        _open(destination, mode) as dst,
        progress,
    ):
        transfer.copy_sessions(
            src,
            dst,
            batch_size=batch_size,
            on_start=lambda total: progress.update(task, total=total),
            on_batch=lambda n: progress.advance(task, n),
            damaged=left_out,
            report=report,
            replace_newer=replace_newer,
        )
        left_out += src.unreadable()
    _note(_moved("copied", report))
    _fail_if_left_out(left_out, source)


# -- looking after a store --------------------------------------------------------------------


@app.command("stats", cls=_Command)
def stats(
    storage: StorageOption = DEFAULT_STORAGE,
    mode: ModeOption = "agent",
    user: UserOption = None,
    as_json: JsonOption = False,
) -> None:
    """Count sessions, users and entities, their size, and the oldest and newest."""
    with _open(storage, mode, "note") as store:
        damaged: list[str] = []
        figures = transfer.stats(store, user, damaged)
        _note_left_out(store, damaged)
    data = vars(figures)
    if as_json:
        _print_json(data)
        return
    table = Table.grid(padding=(0, 2))
    for key, value in data.items():
        shown = _when(value) if key in ("oldest", "newest") else f"{value:,}"
        table.add_row(f"[bold]{key}[/]", shown)
    out.print(table)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> int:
    """Seconds in an age like ``30d``, ``12h``, ``1w2d`` or ``90s``.

    Raises:
        typer.BadParameter: for anything else, a number without its unit included: ``90``
            meant seconds once, and a purge given ``--older-than 90`` for 90 days removed
            every session not saved in the last minute and a half. So is a number of other
            digits than ASCII's, or of more than ``int()`` reads.
    """
    parts = re.findall(r"([0-9]+)([smhdw]?)", text.strip().lower())
    if (
        not text.strip()
        or "".join(n + u for n, u in parts) != text.strip().lower()
        or any(whole_number(n) is None for n, _ in parts)
    ):
        raise typer.BadParameter(f"{text!r} is not an age; write it like 30d, 12h, 90m or 1w2d")
    if not all(unit for _, unit in parts):
        raise typer.BadParameter(
            f"{text!r} has a number without its unit; write {text.strip()}d for days, "
            f"{text.strip()}s for seconds (units: s, m, h, d, w)"
        )
    return sum(int(n) * _UNITS[u] for n, u in parts)


def _check_age(value: str) -> str:
    """Refuses an AGE that :func:`parse_age` cannot read, as the option's error."""
    parse_age(value)
    return value


@app.command("purge", cls=_Command)
def purge(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="AGE",
            callback=_check_age,
            help="Remove sessions not updated for AGE (30d, 12h).",
        ),
    ],
    storage: StorageOption = DEFAULT_STORAGE,
    mode: ModeOption = "agent",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be removed.")
    ] = False,
) -> None:
    """Remove sessions not updated for a while, and expired ones."""
    seconds = parse_age(older_than)
    damaged: list[str] = []
    removed: list[str] = []

    def how_far() -> str:
        if dry_run:
            return "the dry run stopped before it was done; it removes nothing"
        return _removed_so_far("the purge", removed)()

    with _on_ctrl_c(how_far), _open(storage, mode, "note") as store:
        removed = transfer.purge(store, seconds, dry_run, damaged, removed)
    for session_id in removed:
        # Never broken over lines: a script reads one id a line.
        out.print(_shown(session_id), highlight=False, soft_wrap=True)
    verb = "would remove" if dry_run else "removed"
    _note(f"{verb} {_sessions(len(removed))}")
    if damaged:
        _note(
            f"note: {len(damaged)} stored item(s) could not be read, so their age is unknown, "
            "and were kept; savegame export names them"
        )


@app.command("delete-user", cls=_Command)
def delete_user(
    user_id: Annotated[str, typer.Argument(metavar="USER", help="The user's id.")],
    storage: StorageOption = DEFAULT_STORAGE,
    mode: ModeOption = "agent",
) -> None:
    """Delete every session of a user, in every mode the storage URL holds."""
    erasure = transfer.UserErasure()
    with _on_ctrl_c(_removed_so_far(f"the deletion of user {user_id!r}", erasure.ids)):
        transfer.delete_user(storage, user_id, mode, erasure)
    detail = ", ".join(f"{m}: {n}" for m, n in erasure.removed.items())
    out.print(
        f"deleted {_sessions(erasure.total)} of user {_shown(repr(user_id))} ({detail})",
        highlight=False,
        soft_wrap=True,
    )
    if erasure.absent and len(erasure.absent) == len(erasure.removed):
        # A mistyped path would otherwise look like an erasure done: the user's sessions,
        # in the store that was meant, are all still there.
        searched = mode if len(erasure.absent) == 1 else "any mode"
        _note(
            f"note: nothing of {searched} is stored at {redact(storage)}; pass --storage (or "
            "set SAVEGAME_STORAGE) to name another store"
        )


@schema_app.command("upgrade", cls=_Command)
def schema_upgrade(
    storage: StorageOption = DEFAULT_STORAGE,
    mode: ModeOption = "agent",
    original_prefix: Annotated[
        str | None,
        typer.Option(
            "--original-prefix",
            help="Redis: move this mode's sessions here from the prefix the original "
            "library shared between modes.",
        ),
    ] = None,
) -> None:
    """Bring a table or layout written by an older savegame up to date, keeping every row."""
    with _open(storage, mode) as store:
        moves = "original_prefix" in inspect.signature(store.upgrade_schema).parameters
        if original_prefix is not None and not moves:
            _fail(f"--original-prefix is for a Redis store, not {redact(storage)}")
        was_there = store.table_exists()
        if original_prefix is None:
            store.upgrade_schema()
        else:
            upgrade: Callable[..., None] = store.upgrade_schema  # RedisStorage's, by ``moves``
            upgrade(original_prefix=original_prefix)
        # A Redis prefix of the original's layout only is not there until upgraded.
        was_there = was_there or bool(store.get_recent_sessions(limit=1))
    if was_there:
        _note(f"{mode} store at {redact(storage)} is up to date")
    else:
        # Made, as a deployment's first upgrade wants; said, as a mistyped path is likelier.
        _note(
            f"nothing of mode {mode} was stored at {redact(storage)}: made it, empty, at the "
            "latest layout (check the URL and --mode if a store was meant to be there)"
        )


# -- presentation -----------------------------------------------------------------------------


_COLUMNS = ("id", "user", "entity", "name", "runs", "created", "updated")
"""The fields of a session that ``sessions list`` and ``sessions show`` give, in order."""


def _summary(store: Storage, session: Session) -> dict[str, Any]:
    return {
        "id": session.session_id,
        "user": getattr(session, "user_id", None),
        "entity": getattr(session, store.spec.entity_field, None),
        "name": transfer.session_name(session),
        "runs": len(transfer.runs_of(store.spec, session)),
        "created": getattr(session, "created_at", None),
        "updated": getattr(session, "updated_at", None),
    }


def _sessions(count: int) -> str:
    return f"{count} session{'s' * (count != 1)}"


def _note_left_out(store: Storage, damaged: list[str]) -> None:
    """Says on stderr how many damaged sessions (``damaged``, said by
    :func:`~savegame.transfer.iter_sessions`) and files a listing or a count left out."""
    said = transfer.left_out(store, damaged)
    if said is not None:
        _note(said)


def _fail_if_left_out(left_out: list[str], url: str) -> None:
    """Fails (exit 1) after a backup that left damaged files behind, naming each."""
    if not left_out:
        return
    for line in left_out:
        _note(f"left out: {line}")
    _fail(
        f"{len(left_out)} stored item(s) at {redact(url)} could not be read and were left out; "
        "fix or delete them, then run again",
        code=1,
    )


def _note(message: str) -> None:
    """A message for the person at the terminal, kept out of the output proper."""
    err.print(_shown(message), highlight=False)


def _shown(text: str, *, lines: bool = False) -> str:
    """``text`` as Rich markup that prints it as it is, control characters and lone
    surrogates written as escapes (see :func:`~savegame.chat.printable`); ``lines``: line
    breaks and tabs are kept."""
    shown = printable(text, lines=lines)
    if not _can_encode(shown):
        # Escaped before Rich lays the text out, so that table columns stay aligned.
        encoding = _output_encoding()
        shown = shown.encode(encoding, "backslashreplace").decode(encoding)
    return escape(shown)


_BEYOND_ASCII = re.compile(r"[^\x00-\x7e]")
"""DEL and the characters beyond ASCII, which JSON text written with ``ensure_ascii=False``
holds as they are; :func:`_print_json` looks among them for those
:func:`~savegame.chat.printable` escapes."""


def _json_escape(match: re.Match[str]) -> str:
    """The matched character as JSON text, escaped when :func:`~savegame.chat.printable`
    would escape it (a character beyond U+FFFF as its two surrogates' escapes)."""
    char = match.group()
    return json.dumps(char)[1:-1] if unshown(char) else char


def _print_json(value: Any) -> None:
    """Indented JSON: coloured on a terminal, exact text for a pipe; never wrapped, a line
    longer than the terminal being left to it to wrap.

    The characters :func:`~savegame.chat.printable` escapes (control and format characters,
    line separators, lone surrogates) are written as JSON escapes, which give the same value
    back: text that UTF-8 can carry and a terminal shows as it is, in the order it has,
    without obeying it.
    """
    text = json.dumps(value, ensure_ascii=False, indent=2)
    text = _BEYOND_ASCII.sub(_json_escape, text)
    if not _can_encode(text):
        # JSON escapes, not Python's, give the same values back.
        text = json.dumps(value, indent=2)
    if out.is_terminal:
        # Not print_json, which would parse the text and write it again, escapes undone.
        # Soft wrap: print joins what it is given into a Text of its own, which keeps no
        # no_wrap, and would break a long value over lines, a line break inside a string.
        out.print(JSONHighlighter()(text), soft_wrap=True)
    else:
        _emit(_encoded(text + "\n"))


def _cell(key: str, value: Any) -> str:
    """A field as a table shows it: a time in UTC, blank when not set, a count of 0 as 0."""
    if key in ("created", "updated"):
        return _when(value)
    return "" if value is None else str(value)


def _when(value: Any) -> str:
    if not isinstance(value, int):
        return ""
    return dt.datetime.fromtimestamp(value, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


NO_TEXT = "(no text)"
"""What a turn shows of a message or answer that holds no text (a model's call of a tool)."""


def _text(value: Any) -> str:
    if value is None:
        return NO_TEXT
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return json.dumps(value, ensure_ascii=False)


_QUESTIONS = ("message", "input")
"""Where a run without a message list keeps its question: the original's agent and team
runs in ``message`` (a message), savegame's and the original's workflow runs in ``input``."""

_ANSWERS = ("response", "output", "content")
"""Where a run without a message list keeps its answer, the first one there: the original's
agent, team and workflow runs in ``response`` (the model's response, its text in
``content``), savegame's workflow runs in ``output``, and runs that are the response itself
(savegame's agent and team runs, the original's runs of its later memory and of its step
workflows) in ``content``."""


def _messages(run: Any) -> list[tuple[str, str]]:
    """The (role, text) pairs of one run, whichever of the shapes savegame and the original
    write it has; the run as JSON when it has none of them."""
    if not isinstance(run, dict):
        return [("run", _text(run))]
    if isinstance(run.get("messages"), list):
        # Messages from_history repeat earlier runs' turns, sent to the model again.
        return [
            (str(m.get("role", "?")), _text(m.get("content")))
            for m in run["messages"]
            if isinstance(m, dict) and not m.get("from_history")
        ]
    pairs = []
    for key in _QUESTIONS:
        value = run.get(key)
        if isinstance(value, dict) and "content" in value:
            pairs.append((str(value.get("role", "user")), _text(value["content"])))
        elif value is not None:
            pairs.append(("user", _text(value)))  # a workflow's arguments, say
    answer = next((key for key in _ANSWERS if run.get(key) is not None), None)
    if answer is not None:
        value = run[answer]
        if answer == "response" and isinstance(value, dict):
            value = value.get("content")
        pairs.append(("assistant", _text(value)))
    steps = run.get("steps")
    for step in steps if isinstance(steps, list) else ():
        if isinstance(step, dict) and "output" in step:
            pairs.append((f"step {step.get('name', '?')}", _text(step["output"])))
        if isinstance(step, dict) and isinstance(step.get("error"), str):
            pairs.append((f"step {step.get('name', '?')} failed", step["error"]))
    if isinstance(run.get("error"), str):
        pairs.append((f"run {run.get('status') or 'failed'}", run["error"]))
    return pairs or [("run", _text(run))]


def _without_runs(key: str, value: Any, runs_path: tuple[str, ...]) -> Any:
    """``value`` without the runs, which the conversation already shows."""
    if key == runs_path[0] and len(runs_path) == 2 and isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in (runs_path[1], "messages")}
    return value


app.command("chat", cls=_Command)(chat)


def main() -> None:
    """Entry point of the console script."""
    try:
        app()
    finally:
        # The command has ended: a Ctrl-C now meets only the interpreter's shutdown (the
        # drivers' pools closing), which it would interrupt with a traceback. It ends the
        # process there and then, as interrupted; what the command wrote is committed. A
        # process started with it ignored (in a script's background) goes on ignoring it.
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, _interrupted_at_exit)


def _interrupted_at_exit(signum: int, frame: object) -> None:
    os._exit(SIGINT_EXIT)
