"""Session classes and the one table that says what each storage mode stores.

Everything that depends on the mode (which class, which field ``entity_id`` filters on, where
the runs of a session live) is read from :data:`MODES`; no backend branches on the mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin, get_type_hints

from savegame.errors import InvalidIdentifierError
from savegame.storage.session.agent import AgentSession
from savegame.storage.session.base import Session
from savegame.storage.session.team import TeamSession
from savegame.storage.session.v2.workflow import WorkflowSession as WorkflowSessionV2
from savegame.storage.session.workflow import WorkflowSession

Mode = Literal["agent", "team", "workflow", "workflow_v2"]


@dataclass(frozen=True)
class ModeSpec:
    """What a storage mode stores.

    Attributes:
        mode: the mode's name.
        session_class: the class ``read`` returns and ``upsert`` accepts.
        entity_field: the field that ``entity_id`` filters listings on.
        runs_path: where the list of runs sits in the session's dict; the SQL and Redis
            backends keep one row or entry per run there, so that a save writes only what
            changed.
        kinds: each field of the session class and the Python type it holds: ``str`` for
            the fields kept as plain text, ``int`` for numbers, ``dict`` or ``list`` for
            JSON values.
        fields: the names of ``kinds``.
        text_fields: the fields kept as plain text that are not ids (the session's, the
            user's, the entity's), which are checked as ids.
        plain_fields: every field kept as plain text but the session id: the user's and
            the entity's ids, then :attr:`text_fields`.
    """

    mode: str
    session_class: type[Session]
    entity_field: str
    runs_path: tuple[str, ...]
    kinds: dict[str, type] = field(init=False, compare=False, repr=False)
    fields: frozenset[str] = field(init=False, compare=False, repr=False)
    text_fields: tuple[str, ...] = field(init=False, compare=False, repr=False)
    plain_fields: tuple[str, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        kinds: dict[str, type] = {}
        for name, hint in get_type_hints(self.session_class).items():
            args = [a for a in get_args(hint) if a is not type(None)] or [hint]
            kinds[name] = get_origin(args[0]) or args[0]
        object.__setattr__(self, "kinds", kinds)
        object.__setattr__(self, "fields", frozenset(kinds))
        ids = ("session_id", "user_id", self.entity_field)
        text = tuple(name for name, kind in kinds.items() if kind is str and name not in ids)
        object.__setattr__(self, "text_fields", text)
        object.__setattr__(self, "plain_fields", (*ids[1:], *text))


MODES: dict[str, ModeSpec] = {
    spec.mode: spec
    for spec in (
        ModeSpec("agent", AgentSession, "agent_id", ("memory", "runs")),
        ModeSpec("team", TeamSession, "team_id", ("memory", "runs")),
        ModeSpec("workflow", WorkflowSession, "workflow_id", ("memory", "runs")),
        ModeSpec("workflow_v2", WorkflowSessionV2, "workflow_id", ("runs",)),
    )
}

AnySession = AgentSession | TeamSession | WorkflowSession | WorkflowSessionV2


def get_path(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path`` in nested dicts, or None where a step is missing."""
    value: Any = data
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Sets ``value`` at ``path``, making (or replacing non-dict values with) dicts on the way."""
    for key in path[:-1]:
        if not isinstance(data.get(key), dict):
            data[key] = {}
        data = data[key]
    data[path[-1]] = value


def split_runs(
    record: dict[str, Any], path: tuple[str, ...]
) -> tuple[dict[str, Any], list[Any] | None]:
    """``record`` with None in place of the list of runs at ``path``, and that list.

    The None keeps the list's place among the keys, so that the record comes back in its
    order once the runs are put back. When there is no list at ``path`` (no runs, runs that
    are not a list, a container that is not a dict) the record is returned whole with None:
    such runs stay in the header. The record is not changed; the dicts on the way to the
    runs are copied.
    """
    runs = get_path(record, path)
    if not isinstance(runs, list):
        return record, None
    head = dict(record)
    at = head
    for key in path[:-1]:
        at[key] = dict(at[key])
        at = at[key]
    at[path[-1]] = None
    return head, runs


def with_runs(record: dict[str, Any], path: tuple[str, ...], runs: Any) -> dict[str, Any]:
    """``record`` with ``runs`` at ``path``: the undoing of :func:`split_runs`.

    The record is not changed; it and the dicts on the way to the runs are copied (a value
    on the way that is not a dict is replaced by one).
    """
    head = dict(record)
    at = head
    for key in path[:-1]:
        inner = at.get(key)
        at[key] = dict(inner) if isinstance(inner, dict) else {}
        at = at[key]
    at[path[-1]] = runs
    return head


MESSAGES_OF_RUNS = "\ufdd1savegame: the messages of the runs"
"""What the SQL and Redis backends store in place of a session's message list when it is
made of its runs' messages (see :func:`fold_messages`). A session may not hold this string
there itself."""


def messages_of(runs: list[Any]) -> list[Any]:
    """The messages of ``runs``, in order: the ``messages`` list of each run that has one."""
    out: list[Any] = []
    for run in runs:
        if type(run) is dict:
            messages = run.get("messages")
            if type(messages) is list:
                out.extend(messages)
    return out


def beside_runs(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The dict that holds the runs at ``path`` (and the message list beside them), or
    whatever stands there instead."""
    return get_path(record, path[:-1]) if len(path) > 1 else record


def fold_messages(head: dict[str, Any], runs: list[Any], path: tuple[str, ...]) -> bool:
    """Puts :data:`MESSAGES_OF_RUNS` in place of the message list beside the runs at ``path``
    when that list holds the runs' messages, in order: the same objects (as an agent's
    session does), or exact copies of them (same types, same keys in the same order, as a
    session read back from an export does). Stored, the list would repeat every run, and
    every save would rewrite the whole conversation. ``head`` is what :func:`split_runs`
    returned, whose dicts on the way to the runs are its own; ``runs`` are the runs as they
    will be stored (JSON-native), as :func:`unfold_messages` will find them. Returns
    whether it did.
    """
    holder = beside_runs(head, path)
    if not isinstance(holder, dict):
        return False
    messages = holder.get("messages")
    if type(messages) is not list or not messages:
        return False
    given = messages_of(runs)
    if len(given) != len(messages):
        return False
    apart = [
        (mine, theirs) for mine, theirs in zip(messages, given, strict=True) if mine is not theirs
    ]
    if apart:
        # Imported here: savegame.storage.known imports this module.
        from savegame.storage.known import pickle_plain

        copied = pickle_plain([mine for mine, _ in apart])
        if copied is None or copied != pickle_plain([theirs for _, theirs in apart]):
            return False
    holder["messages"] = MESSAGES_OF_RUNS
    return True


def unfold_messages(
    record: dict[str, Any], path: tuple[str, ...], copy: Callable[[Any], Any]
) -> None:
    """Puts the runs' messages back in place of :data:`MESSAGES_OF_RUNS`, each made by
    ``copy`` from the messages of the runs in ``record`` (the identity function when the
    record may share them with its runs)."""
    holder = beside_runs(record, path)
    if isinstance(holder, dict) and holder.get("messages") == MESSAGES_OF_RUNS:
        runs = get_path(record, path)
        holder["messages"] = copy(messages_of(runs if isinstance(runs, list) else []))


def mode_spec(mode: str | None) -> ModeSpec:
    """The spec of ``mode`` (None means ``"agent"``, as in the original).

    Raises:
        InvalidIdentifierError: for a mode that is not one of :data:`MODES`.
    """
    if mode is None:
        mode = "agent"
    # A list or a dict given as the mode is unhashable: no key of MODES.
    spec = MODES.get(mode) if isinstance(mode, str) else None
    if spec is None:
        raise InvalidIdentifierError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    return spec


def modes_of(record: dict[str, Any]) -> frozenset[str]:
    """The modes whose session ``record`` (a stored session's dict) is: those with a field
    for each of its values, and among them those with a field for the most of its names.

    Every session is stored with all the fields of its class, None ones included (as the
    original stored them too), so its names tell its mode even when its values are None: a
    team session has ``team_id`` and ``team_data``, which an agent session lacks. A record
    with fewer names (written by hand, say) can be of several modes; one holding a value
    under a name no mode has is of none. ``expires_at``, kept beside a session by the
    storages, is no field of it.
    """
    names = record.keys() - {"expires_at"}
    held = {name for name in names if record[name] is not None}
    lacking = {
        mode: len(names - spec.fields) for mode, spec in MODES.items() if held <= spec.fields
    }
    fewest = min(lacking.values(), default=0)
    return frozenset(mode for mode, count in lacking.items() if count == fewest)


__all__ = [
    "MESSAGES_OF_RUNS",
    "MODES",
    "AgentSession",
    "AnySession",
    "Mode",
    "ModeSpec",
    "Session",
    "TeamSession",
    "WorkflowSession",
    "WorkflowSessionV2",
    "beside_runs",
    "fold_messages",
    "get_path",
    "messages_of",
    "mode_spec",
    "modes_of",
    "set_path",
    "split_runs",
    "unfold_messages",
    "with_runs",
]
