"""Naming any store with one URL: ``open_storage("sqlite:///sessions.db", mode="agent")``.

Each scheme maps to a ``from_url`` function in its backend's module, imported only when used,
so naming a Redis URL without redis-py installed raises the error that says what to install.

=====================================  ===============================================
``sqlite:///relative.db``              SQLite file (``sqlite:////abs/path.db`` absolute,
                                       ``sqlite://`` in memory)
``json:///dir``, ``yaml:///dir``       one file per session in ``dir`` (``json:////abs``)
``memory://``                          a new in-memory store
``redis://[:pw@]host:port/db``         Redis (``rediss://`` with TLS,
                                       ``redis+cluster://`` a Redis Cluster)
``postgresql+psycopg://user@host/db``  PostgreSQL (``?schema=`` defaults to ``ai``)
``mysql+pymysql://user@host/db``       MySQL or MariaDB
=====================================  ===============================================

Query parameters every scheme takes: ``table`` (SQL; default ``<mode>_sessions``), ``prefix``
(Redis; default ``savegame:<mode>``), ``expire`` (seconds). Keyword arguments given to
:func:`open_storage` win over the URL's.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from savegame.errors import InvalidIdentifierError
from savegame.storage.base import Storage
from savegame.storage.session import Mode, mode_spec

SCHEMES: dict[str, str] = {
    "sqlite": "savegame.storage.sqlite",
    "json": "savegame.storage.json",
    "yaml": "savegame.storage.yaml",
    "memory": "savegame.storage.in_memory",
    "redis": "savegame.storage.redis",
    "rediss": "savegame.storage.redis",
    "redis+cluster": "savegame.storage.redis",
    "postgresql": "savegame.storage.postgres",
    "postgresql+psycopg": "savegame.storage.postgres",
    "mysql": "savegame.storage.mysql",
    "mysql+pymysql": "savegame.storage.mysql",
}
"""URL scheme → the backend module whose ``from_url(url: StorageURL) -> Storage`` opens it."""


@dataclass
class StorageURL:
    """A parsed storage URL, handed to a backend's ``from_url``.

    Attributes:
        raw: the URL as given, without the query parameters savegame consumed.
        scheme: the scheme, lower case.
        path: for file-like schemes, the path after ``scheme://`` with one ``/`` removed
            (``sqlite:///a.db`` → ``a.db``, ``sqlite:////a.db`` → ``/a.db``).
        mode: the storage mode.
        options: query parameters and keyword arguments, keyword arguments winning.
    """

    raw: str
    scheme: str
    path: str
    mode: str
    options: dict[str, Any] = field(default_factory=dict)

    def pop_int(self, name: str) -> int | None:
        """Removes option ``name`` and returns it as an int (None when absent)."""
        value = self.options.pop(name, None)
        if value is None or isinstance(value, int):
            return value
        try:
            return int(value)
        except ValueError:
            raise InvalidIdentifierError(
                f"{name}={value!r} in storage URL must be a whole number"
            ) from None


def parse_url(url: str, mode: Mode | str = "agent", **options: Any) -> StorageURL:
    """Splits ``url`` into what a backend needs.

    Raises:
        InvalidIdentifierError: for a string that is not a URL of a known scheme; the
            message lists the schemes.
    """
    mode_spec(mode)
    if not isinstance(url, str) or "://" not in url:
        raise InvalidIdentifierError(
            f"{url!r} is not a storage URL; expected scheme://..., one of: {_schemes()}"
        )
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidIdentifierError(
            f"unknown storage URL scheme {scheme!r} in {url!r}; known schemes: {_schemes()}"
        )
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    raw = url.split("?", 1)[0]
    path = rest.split("?", 1)[0]
    path = path[1:] if path.startswith("/") else path
    return StorageURL(raw, scheme, path, str(mode), {**query, **options})


def open_storage(url: str, mode: Mode | str = "agent", **options: Any) -> Storage:
    """Opens the store that ``url`` names, for sessions of ``mode``.

    Raises:
        InvalidIdentifierError: for a malformed URL or an unknown scheme.
        MissingDependencyError: when the backend's driver is not installed.
    """
    parsed = parse_url(url, mode, **options)
    module = importlib.import_module(SCHEMES[parsed.scheme])
    storage: Storage = module.from_url(parsed)
    return storage


def _schemes() -> str:
    return ", ".join(f"{s}://" for s in SCHEMES)
