"""How savegame turns session values into stored text, and which names it accepts.

Values. A session's fields must hold JSON-native data: dicts with string keys, lists, strings,
finite numbers, booleans and None. A few common types are written in a documented string form
and read back as that string: ``datetime``/``date``/``time`` in ISO 8601, ``UUID`` and paths as
``str``, an ``Enum`` member as its value. Tuples are written as lists. Everything else (sets,
bytes, NaN and infinities, non-string dict keys, arbitrary objects, containers that hold
themselves, nesting deeper than :data:`MAX_DEPTH`) is refused with
:class:`~savegame.errors.SerializationError` before anything is written.

Text-safe form. PostgreSQL's JSONB and MySQL's JSON refuse strings holding NUL characters or
lone surrogates, both of which model output contains. :func:`dumps_text_safe` rewrites each such
string (and each string that starts with :data:`MARK`, so the rewriting stays reversible) as
``MARK`` followed by its ASCII JSON literal; :func:`loads_text_safe` restores them.
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import math
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import PurePath
from typing import Any

from savegame.errors import InvalidIdentifierError, SerializationError

MAX_DEPTH = 512
"""How deeply containers may nest in one session, counting the session dict as level 1."""

MAX_ID_LENGTH = 512
"""The longest session or user id accepted, in characters (MySQL indexes up to 3072 bytes)."""

MARK = "\ufdd0"
"""A Unicode noncharacter that starts every string rewritten by the text-safe form."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class _Fallback(Exception):
    """Raised inside the JSON encoder to leave the fast path for the exact, slower one."""


def _reject(value: object) -> Any:
    raise _Fallback


def _compact_encoder() -> Callable[[Any], str]:
    """Compact JSON text with non-ASCII kept, refusing NaN and non-JSON types (``_Fallback``).

    The C encoder is made once and reused: ``json.dumps`` with options builds a new encoder
    on every call, which costs more than encoding a small session. Without a marker dict
    it does not look for cycles; a cycle ends in ``RecursionError``, which callers treat as
    any other failure of the fast path.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has the C encoder
        fallback = json.JSONEncoder(
            ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_reject
        )
        return fallback.encode
    encoder = make(
        None, _reject, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )

    def compact(value: Any) -> str:
        if type(value) is str:
            text: str = json.encoder.encode_basestring(value)
            return text
        return "".join(encoder(value, 0))

    return compact


_compact = _compact_encoder()


def encode(value: Any) -> Any:
    """A JSON-native copy of ``value``, following the rules in this module's docstring.

    Raises:
        SerializationError: for a value that cannot be stored faithfully, naming its path.
    """
    return encode_text(value)[0]


def encode_text(value: Any, path: str = "$", level: int = 1) -> tuple[Any, str]:
    """A JSON-native copy of ``value`` and its compact JSON text (non-ASCII kept as it is).

    See :func:`encode_checked`, which also says whether the copy converted anything.

    Raises:
        SerializationError: for a value that cannot be stored faithfully, naming its path.
    """
    copy, text, _ = encode_checked(value, path, level)
    return copy, text


def encode_checked(value: Any, path: str = "$", level: int = 1) -> tuple[Any, str, bool]:
    """A JSON-native copy of ``value``, its compact JSON text (non-ASCII kept as it is),
    and whether the copy equals ``value`` as ``==`` sees it (False: a tuple became a list,
    a datetime a string, and so on). Where ``value`` holds only the exact built-in types,
    True means equal in type too.

    ``path`` names ``value`` in error messages; ``level`` is how deep it sits in the
    session (the session itself is level 1), so that nesting is bounded for the whole
    session, not for each part of it.

    The common case (data that is already JSON-native) is checked and copied by the C JSON
    codec in one encoding and one decoding; anything else is walked in Python to convert it
    or to say exactly where it fails. The text is what :func:`dumps` would give for the copy
    before its fix-ups (see :func:`dumps`), so a caller that stores text encodes only once.

    Raises:
        SerializationError: for a value that cannot be stored faithfully, naming its path.
    """
    try:
        text = _compact(value)
        copy = loads(text)
    except (_Fallback, ValueError, TypeError, RecursionError):
        copy = text = None
    limit = MAX_DEPTH - level + 1
    # Brackets inside strings count too, so the count only ever sends a value to the exact
    # check, never past it.
    if (
        text is not None
        and copy == value
        and (text.count("{") + text.count("[") <= limit or depth_at_most(copy, limit))
    ):
        return copy, text, True
    # Only a value the encoder could not write may hold a cycle, or one object in so many
    # places that counting each would take exponential time: each is counted once.
    if not depth_at_most(value, limit, distinct=text is None):
        cycle = _cycle_in(value, path)
        if cycle is not None:
            raise SerializationError(
                f"{cycle}: holds a container it is inside of (a cycle), which JSON cannot hold"
            )
        raise SerializationError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    converted = _walk(value, path, level)
    return converted, _compact(converted), False


def depth_at_most(value: Any, limit: int, distinct: bool = False) -> bool:
    """Whether containers in ``value`` nest at most ``limit`` deep; iterative, for any depth.

    Goes one level at a time, so each container costs one list append: this runs on every
    save of a long conversation. Only dicts, lists and tuples are looked into: ``value``
    may be anything (one run of a session is checked on its own), and iterating a
    generator would run it. ``distinct`` looks into an object held in many places of one
    level once, for a value that may hold itself (whose levels would otherwise double).
    """
    if not isinstance(value, _NESTED):
        return True
    if distinct:
        return _distinct_depth_at_most(value, limit)
    level = [value]
    depth = 1
    while level:
        if depth > limit:
            return False
        below = []
        for item in level:
            for child in item.values() if isinstance(item, dict) else item:
                if type(child) is dict or type(child) is list or isinstance(child, _NESTED):
                    below.append(child)
        level = below
        depth += 1
    return True


def _distinct_depth_at_most(value: Any, limit: int) -> bool:
    level = {id(value): value}
    depth = 1
    while level:
        if depth > limit:
            return False
        below = {}
        for item in level.values():
            for child in item.values() if isinstance(item, dict) else item:
                if type(child) is dict or type(child) is list or isinstance(child, _NESTED):
                    below[id(child)] = child
        level = below
        depth += 1
    return True


_NESTED = (dict, list, tuple)


def _cycle_in(value: Any, path: str) -> str | None:
    """The path of the first container in ``value`` that holds one it is inside of; None
    where there is none. Iterative, and each container is looked into once: a value that
    holds one object in many places costs what its distinct containers do."""
    if not isinstance(value, _NESTED):
        return None
    inside = {id(value)}
    done: set[int] = set()
    keys: list[Any] = []
    stack: list[tuple[Any, Iterator[tuple[Any, Any]]]] = [(value, _items(value))]
    while stack:
        item, pending = stack[-1]
        for key, child in pending:
            if type(child) in _SCALARS or not isinstance(child, _NESTED) or id(child) in done:
                continue
            if id(child) in inside:
                return path + "".join(f"[{k!r}]" for k in (*keys, key))
            inside.add(id(child))
            keys.append(key)
            stack.append((child, _items(child)))
            break
        else:
            stack.pop()
            if keys:
                keys.pop()
            inside.discard(id(item))
            done.add(id(item))
    return None


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _items(container: Any) -> Iterator[tuple[Any, Any]]:
    return iter(container.items()) if isinstance(container, dict) else enumerate(container)


_INT_BITS = 2_100
"""Ints of at most this many bits have at most 633 digits, under the lowest limit Python
allows on converting an int to text (640 digits; 4,300 by default): only longer ones are
converted to find out."""


def _int_text_problem(value: int, path: str) -> SerializationError | None:
    """The error for an int too long for Python to write as text (``sys.int_info`` and
    ``sys.set_int_max_str_digits``), which JSON cannot then hold; None for any other."""
    if value.bit_length() <= _INT_BITS:
        return None
    try:
        int.__repr__(value)
    except ValueError:
        limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
        return SerializationError(
            f"{path}: an int of more than {limit} digits cannot be written as JSON text "
            "(Python's limit on converting ints to text); store it as a string"
        )
    return None


def _walk(value: Any, path: str, depth: int) -> Any:
    """The JSON-native copy of ``value`` (see :func:`encode_checked`), walked in Python.

    One call a level, containers walked here: a value nested as deep as :data:`MAX_DEPTH`
    allows stays within Python's recursion limit (1,000 frames), which a call of another
    function a level, or a comprehension (a frame of its own before Python 3.12), passes.
    """
    if value is None or type(value) in (str, bool):
        return value
    if type(value) is int:
        problem = _int_text_problem(value, path)
        if problem is not None:
            raise problem
        return value
    if isinstance(value, enum.Enum):
        return _walk(value.value, path, depth)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = _dict_key(key, path)
            out[str(name)] = _walk(item, f"{path}[{name!r}]", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        items = []
        for i, item in enumerate(value):
            items.append(_walk(item, f"{path}[{i}]", depth + 1))
        return items
    return _scalar(value, path, depth)


def _dict_key(key: Any, path: str) -> str:
    """``key``, a key of the dict at ``path``, as a str (an enum's str value taken).

    Raises:
        SerializationError: for a key that is no str.
    """
    if isinstance(key, enum.Enum) and isinstance(key.value, str):
        key = key.value
    if not isinstance(key, str):
        raise SerializationError(
            f"{path}: dict key {key!r} is {_with_article(type(key))}; only string keys "
            "can be stored (convert it with str() if that is what you mean)"
        )
    return key


_HINTS: dict[type, str] = {
    set: "convert it to a sorted list",
    frozenset: "convert it to a sorted list",
    bytes: "decode it to str, or encode it with base64",
    bytearray: "decode it to str, or encode it with base64",
}
"""How to store a value of each of these types, which JSON cannot hold."""


def _scalar(value: Any, path: str, depth: int) -> Any:
    """The JSON-native copy of ``value``, which is no container and no exact str, bool, int
    or None: a subclass of one, a float, a time, a UUID or a path.

    Raises:
        SerializationError: for anything else, or a float that is not finite.
    """
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return _walk(int(value), path, depth)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SerializationError(f"{path}: {value!r} cannot be stored as JSON")
        return float(value)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, PurePath)):
        return str(value)
    hint = _HINTS.get(type(value), "convert it to JSON-native data (dict, list, str, number, bool)")
    raise SerializationError(
        f"{path}: {_with_article(type(value))} cannot be stored as JSON; {hint}"
    )


def with_article(name: str) -> str:
    """``name`` after its article: "an int", "a str", "an agent"."""
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def _with_article(kind: type) -> str:
    """The name of ``kind`` after its article: "an object", "a bytes value"."""
    return with_article("bytes value" if kind is bytes else kind.__name__)


def object_text(record: dict[str, Any], texts: dict[str, str]) -> str:
    """:func:`dumps` of a dict of encoded values, some of whose compact texts are known.

    Only the values without a text in ``texts`` are encoded here.
    """
    quote = json.encoder.encode_basestring
    whole = (
        "{"
        + ",".join(
            f"{quote(key)}:{texts[key] if key in texts else _compact(value)}"
            for key, value in record.items()
        )
        + "}"
    )
    return dumps(record, whole)


def dumps(value: Any, text: str | None = None) -> str:
    """Compact JSON text of an already encoded value; non-ASCII stays readable where it can.

    ``text``, when given, is the compact text :func:`encode_text` returned for ``value``;
    only the fix-up for lone surrogates (which UTF-8 cannot carry) is then left to do.
    """
    if text is None:
        text = _compact(value)
    if _encodable(text):
        return text
    _map_strings(value, _no_joined_surrogates)
    return json.dumps(value, separators=(",", ":"))


def copy_through_text(value: Any) -> Any:
    """A copy of ``value`` through the JSON text :func:`dumps` makes of it, as a store that
    keeps text would give it back. ``value`` is meant to be encoded already; one that is not
    (handed to savegame by other code) is encoded first.

    Raises:
        SerializationError: for a value that cannot be stored faithfully, naming its path.
    """
    try:
        text = dumps(value)
    except (_Fallback, ValueError, TypeError, RecursionError):
        text = dumps(encode(value))
    return loads(text)


def dumps_pretty(value: Any) -> bytes:
    """Indented UTF-8 JSON for files a person may read; lone surrogates are \\u-escaped."""
    text = json.dumps(value, ensure_ascii=False, indent=2)
    if not _encodable(text):
        _map_strings(value, _no_joined_surrogates)
        text = json.dumps(value, indent=2)
    return text.encode("utf-8")


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# The C scanner of the standard decoder; typeshed does not declare the attribute.
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def loads(text: str | bytes) -> Any:
    """Parses JSON text written by :func:`dumps` or :func:`dumps_pretty`.

    Text holding one value and nothing around it, as savegame writes it, goes straight to
    the decoder's scanner, which spares :func:`json.loads`'s checks for surrounding
    whitespace; anything else takes the full path, which raises the usual error.

    Raises:
        ValueError: for text that is not JSON; SerializationError (a ValueError) for text
            nested so deeply that the parser, which recurses once a level, gives up (see
            :func:`loads_finite`): text savegame never writes, edited in by hand.
    """
    try:
        if type(text) is str:
            try:
                value, end = _SCAN(text, 0)
            except (StopIteration, ValueError):
                pass
            else:
                if end == len(text):
                    return value
        return json.loads(text)
    except RecursionError:
        raise _too_deep() from None


def _refuse_constant(name: str) -> Any:
    raise SerializationError(f"it holds {name}, which is not a number JSON can hold")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise SerializationError(f"it holds {text[:40]}, a number too large for a float")
    return value


def loads_finite(text: str | bytes) -> Any:
    """:func:`loads`, refusing ``NaN``, ``Infinity`` and numbers too large for a float
    (``1e400``), which Python's parser takes as ``nan`` and ``inf``: savegame never writes
    them (JSON has no such numbers), and a session holding one could not be saved again.

    Raises:
        ValueError: for text that is not JSON; SerializationError (a ValueError) for text
            that holds such a number, or nests so deeply (some thousand levels, far more
            than :data:`MAX_DEPTH`) that the parser, which recurses once a level, gives up.
    """
    try:
        return json.loads(text, parse_float=_finite_float, parse_constant=_refuse_constant)
    except RecursionError:
        raise _too_deep() from None


def _too_deep() -> SerializationError:
    return SerializationError(f"it is nested deeper than {MAX_DEPTH} levels")


def dumps_text_safe(value: Any, text: str | None = None) -> str:
    """JSON text with no NUL character and no lone surrogate, for SQL JSON columns.

    Strings that would carry either are rewritten as described in the module docstring.
    ``text`` is as for :func:`dumps`.
    """
    if text is None:
        text = _compact(value)
    if "\\u0000" in text or not (text.isascii() or (MARK not in text and _encodable(text))):
        text = _compact(_escape(value))
    return text


def loads_text_safe(text: str | bytes) -> Any:
    """Parses text written by :func:`dumps_text_safe`, restoring rewritten strings."""
    value = loads(text)
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return _unescape(value) if MARK in text else value


def escape_value(value: Any) -> Any:
    """The text-safe form of an encoded value, for drivers that take Python objects."""
    return _escape(value)


def unescape_value(value: Any) -> Any:
    """Undoes :func:`escape_value`."""
    return _unescape(value)


def _escape_str(s: str) -> str:
    if "\x00" in s or s.startswith(MARK) or not _encodable(s):
        return MARK + json.dumps(_no_joined_surrogates(s))
    return s


_JOINED = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def _no_joined_surrogates(s: str) -> str:
    """``s``, unless it holds a high surrogate followed by a low one: JSON can only write
    them as the escapes of one character above U+FFFF, which is what a read would give.

    Raises:
        SerializationError: for such a string.
    """
    if _JOINED.search(s) is not None:
        raise SerializationError(
            f"the string {s[:80]!r} holds a surrogate pair as two code points, which JSON "
            "reads back as the one character they encode; store that character instead "
            "(s.encode('utf-16', 'surrogatepass').decode('utf-16') makes it)"
        )
    return s


def _escape(value: Any) -> Any:
    return _map_strings(value, _escape_str)


def _unescape_str(s: str) -> str:
    if s.startswith(MARK):
        restored = json.loads(s[1:])
        if isinstance(restored, str):
            return restored
    return s


def _unescape(value: Any) -> Any:
    return _map_strings(value, _unescape_str)


def _map_strings(value: Any, fn: Any) -> Any:
    """``value`` with ``fn`` applied to every string and key; one frame per nesting level."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out[fn(key)] = _map_strings(item, fn)
        return out
    if isinstance(value, list):
        items = []
        for item in value:
            items.append(_map_strings(item, fn))
        return items
    return value


def check_id(value: object, what: str = "session id") -> str:
    """Checks a session, user or entity id: any non-empty string savegame can store everywhere.

    Raises:
        InvalidIdentifierError: for a non-string, the empty string, a string holding NUL or
            a lone surrogate, or one longer than :data:`MAX_ID_LENGTH`.
    """
    if not isinstance(value, str):
        raise InvalidIdentifierError(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidIdentifierError(f"{what} must not be empty")
    if "\x00" in value:
        raise InvalidIdentifierError(f"{what} must not contain NUL characters: {value!r}")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidIdentifierError(
            f"{what} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}"
        )
    if not _encodable(value):
        raise InvalidIdentifierError(f"{what} is not valid Unicode (lone surrogate): {value!r}")
    return value


def check_text_field(value: object, what: str) -> None:
    """Checks the value of a plain string field (``workflow_name``, ``team_session_id``...),
    which every SQL backend keeps in a text column as it is.

    Raises:
        SerializationError: for a value that is not a string (a text column would refuse
            it, or keep it as another type than the other backends do), or a string holding
            NUL or a lone surrogate, which a text column of PostgreSQL, MySQL or SQLite
            cannot hold.
    """
    if not isinstance(value, str):
        raise SerializationError(f"{what} must be a str or None, not {type(value).__name__}")
    if "\x00" in value or not _encodable(value):
        raise SerializationError(
            f"{what} {value!r} holds a NUL character or a lone surrogate, which text columns "
            "cannot store; such text may stand in memory and the *_data fields"
        )


def check_name(
    value: object,
    what: str,
    pattern: re.Pattern[str] = _NAME,
    allowed: str = (
        "letters, digits and underscores, starting with a letter or underscore, at most 63 "
        "characters"
    ),
) -> str:
    """Checks a table, schema or similar name against a strict pattern.

    ``allowed`` says in words what ``pattern`` admits, for the error message.

    Raises:
        InvalidIdentifierError: when ``value`` is not a str matching ``pattern`` in full.
    """
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidIdentifierError(
            f"{what} {value!r} is not allowed: use {allowed} (pattern {pattern.pattern})"
        )
    return value
