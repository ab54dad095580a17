"""Sessions as YAML files, one per session: ``YamlStorage("sessions/")``.

YAML cannot carry lone surrogates, so a session holding one is written in the text-safe form
of :mod:`savegame.storage.codec` and restored on read. PyYAML builds and walks documents
recursively, so a session nested deeper than :data:`_YAML_DEPTH` levels is written as JSON,
which is also valid YAML, and read back with the JSON parser.

A file edited by hand (or written by the original, which dumped what it was given) may hold
what savegame never writes. YAML's timestamps are read in their ISO 8601 form, as savegame
stores a ``datetime`` it is given. Other values JSON cannot hold (``!!binary``, ``!!set``,
keys that are not strings, ``.nan``, ``.inf``), which no save could write again, make it a
damaged file (:class:`~savegame.errors.CorruptSessionError` when read, left out of
listings). Anchors with their aliases are read as copies of what they stand for, so that a
session read is a tree of its own, as from any other backend; an alias that stands for
itself, or aliases that would make the session more than :data:`_EXPANSION` times the size
of its file (a "billion laughs" of a few hundred bytes), make it a damaged file too.
"""

from __future__ import annotations

from typing import Any

import yaml

from savegame.errors import SerializationError
from savegame.storage.codec import (
    MARK,
    depth_at_most,
    dumps_pretty,
    encode,
    escape_value,
    loads_finite,
    unescape_value,
)
from savegame.storage.files import FileFormat, FileStorage, open_folder
from savegame.storage.url import StorageURL

_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_DEPTH = 64
_MARK_FORMS = (MARK, "\\uFDD0", "\\ufdd0")
_EXPANSION = 10
"""How many times the size of its file (or 10 million values and characters, whichever is
more) the aliases of a file may make the session it holds."""
_EXPANSION_FLOOR = 10_000_000


def _dump(record: dict[str, Any]) -> bytes:
    if not depth_at_most(record, _YAML_DEPTH):
        return dumps_pretty(record)
    try:
        text = yaml.dump(record, Dumper=_Dumper, allow_unicode=True, sort_keys=False)
    except UnicodeEncodeError:
        text = yaml.dump(escape_value(record), Dumper=_Dumper, allow_unicode=True, sort_keys=False)
    else:
        if any(form in text for form in _MARK_FORMS):
            text = yaml.dump(
                escape_value(record), Dumper=_Dumper, allow_unicode=True, sort_keys=False
            )
    data: bytes = text.encode("utf-8")
    return data


def _load(raw: bytes) -> Any:
    if raw[:1] == b"{":
        try:
            return loads_finite(raw)
        except ValueError:
            pass
    try:
        value = yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc)) from exc
    if b"&" in raw:
        # Only an anchor (``&name``) lets aliases share, and savegame writes none.
        _check_size(value, max(_EXPANSION * len(raw), _EXPANSION_FLOOR))
    text = raw.decode("utf-8", "replace")
    if any(form in text for form in _MARK_FORMS):
        value = unescape_value(value)
    try:
        # A copy through JSON text: aliases become copies, timestamps their ISO text.
        return encode(value)
    except SerializationError as exc:
        raise SerializationError(f"it holds a value JSON cannot hold: {exc}") from exc


def _check_size(value: Any, limit: int) -> None:
    """Refuses a value that holds itself (an alias of its own anchor), or that its aliases
    make larger than ``limit``, counting one for each value and each character of its
    strings; each list and dict is counted once, so a bomb costs what its file does.

    Raises:
        SerializationError: naming the problem.
    """
    sizes: dict[int, int] = {}
    entered: set[int] = set()
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        item, done = stack.pop()
        if not isinstance(item, (dict, list)):
            continue
        key = id(item)
        children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
        if done:
            entered.discard(key)
            size = 1
            for child in children:
                if isinstance(child, (dict, list)):
                    size += sizes[id(child)]
                else:
                    size += 1 + (len(child) if isinstance(child, str) else 0)
            if size > limit:
                raise SerializationError(
                    f"its aliases make it larger than {limit} values and characters"
                )
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in entered:
            raise SerializationError("an alias stands for a value that holds it")
        entered.add(key)
        stack.append((item, True))
        stack.extend((child, False) for child in children if isinstance(child, (dict, list)))


class YamlStorage(FileStorage):
    """One ``<session_id>.yaml`` file per session in ``dir_path`` (see :mod:`.files`)."""

    format = FileFormat("yaml", ".yaml", _dump, _load)


def from_url(url: StorageURL) -> YamlStorage:
    """``yaml:///relative/dir`` or ``yaml:////absolute/dir``."""
    return open_folder(YamlStorage, url)
