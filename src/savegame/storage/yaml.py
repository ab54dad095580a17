"""Sessions as YAML files, one per session: ``YamlStorage("sessions/")``.

YAML cannot carry lone surrogates, so a session holding one is written in the text-safe form
of :mod:`savegame.storage.codec` and restored on read. PyYAML builds and walks documents
recursively, so a session nested deeper than :data:`_YAML_DEPTH` levels is written as JSON,
which is also valid YAML, and read back with the JSON parser.
"""

from __future__ import annotations

from typing import Any

import yaml

from savegame.storage.codec import (
    MARK,
    depth_at_most,
    dumps_pretty,
    escape_value,
    loads,
    unescape_value,
)
from savegame.storage.files import FileFormat, FileStorage
from savegame.storage.url import StorageURL

_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_DEPTH = 64
_MARK_FORMS = (MARK, "\\uFDD0", "\\ufdd0")


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
            return loads(raw)
        except ValueError:
            pass
    try:
        value = yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc)) from exc
    text = raw.decode("utf-8", "replace")
    return unescape_value(value) if any(form in text for form in _MARK_FORMS) else value


class YamlStorage(FileStorage):
    """One ``<session_id>.yaml`` file per session in ``dir_path`` (see :mod:`.files`)."""

    format = FileFormat("yaml", ".yaml", _dump, _load)


def from_url(url: StorageURL) -> YamlStorage:
    """``yaml:///relative/dir`` or ``yaml:////absolute/dir``."""
    return YamlStorage(url.path, mode=url.mode, expire=url.pop_int("expire"))  # type: ignore[arg-type]
