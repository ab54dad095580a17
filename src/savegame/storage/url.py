"""Naming any store with one URL: ``open_storage("sqlite:///sessions.db", mode="agent")``.

Each scheme maps to a ``from_url`` function in its backend's module, imported only when used,
so naming a Redis URL without redis-py installed raises the error that says what to install.

=======================================  =============================================
``sqlite:///relative.db``                SQLite file (``sqlite:////abs/path.db`` absolute,
                                         ``sqlite://`` in memory)
``json:///dir``, ``yaml:///dir``         one file per session in ``dir`` (``json:////abs``;
                                         ``json://dir``, which names a host, is refused)
``memory://``                            a new, empty in-memory store
``redis://[:password@]host:port/db``     Redis (``rediss://`` with TLS,
                                         ``redis+cluster://`` a Redis Cluster)
``postgresql+psycopg://user@host/db``    PostgreSQL (``?schema=`` defaults to ``ai``;
                                         ``postgresql://`` and ``postgres://`` too)
``mysql+pymysql://user@host/db``         MySQL or MariaDB (``mysql://``, ``mariadb://`` too)
=======================================  =============================================

Query parameters: ``table`` (SQL schemes; default ``<mode>_sessions``, so ``agent_sessions``),
``prefix`` (Redis; default ``savegame:<mode>``), ``expire`` (seconds, every scheme), and the
others each scheme lists in :data:`OPTIONS` or its ``from_url`` takes. Keyword
arguments given to :func:`open_storage` win over the URL's; one given as None counts as not
given, so ``open_storage(url, expire=None)`` keeps the URL's ``?expire=``. An option a scheme
does not take, from the query or a keyword, raises
:class:`~savegame.errors.InvalidIdentifierError` naming it (:data:`OPTIONS`): a misspelt
``?exipre=`` that was ignored would keep sessions for ever, and a misspelt ``?tabel=`` would
open an empty store. So does an option given twice in the query (which of ``?expire=60&expire=5``
was meant?), but for those of :data:`REPEATABLE`, and a ``?mode=``, which
:func:`open_storage` takes as its own argument.

The table or prefix is the store's *namespace*. A SQL or Redis URL without one names one store
per mode (``agent_sessions``, ``team_sessions``, ...); with one, or for a folder, it names a
single store, holding sessions of the mode it was written in (:attr:`StorageURL.per_mode`).
"""

from __future__ import annotations

import importlib
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from savegame.errors import InvalidIdentifierError, StorageError
from savegame.storage.base import Storage, number_text, whole_number
from savegame.storage.known import DEFAULT_BYTES
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
    "postgres": "savegame.storage.postgres",
    "mysql": "savegame.storage.mysql",
    "mysql+pymysql": "savegame.storage.mysql",
    "mariadb": "savegame.storage.mysql",
    "mariadb+pymysql": "savegame.storage.mysql",
}
"""URL scheme → the backend module whose ``from_url(url: StorageURL) -> Storage`` opens it."""

NAMESPACES: dict[str, tuple[str, str]] = {
    "sqlite": ("table", "{mode}_sessions"),
    "postgresql": ("table", "{mode}_sessions"),
    "postgresql+psycopg": ("table", "{mode}_sessions"),
    "postgres": ("table", "{mode}_sessions"),
    "mysql": ("table", "{mode}_sessions"),
    "mysql+pymysql": ("table", "{mode}_sessions"),
    "mariadb": ("table", "{mode}_sessions"),
    "mariadb+pymysql": ("table", "{mode}_sessions"),
    "redis": ("prefix", "savegame:{mode}"),
    "rediss": ("prefix", "savegame:{mode}"),
    "redis+cluster": ("prefix", "savegame:{mode}"),
}
"""Scheme → (the query parameter naming the store inside the server, its default by mode).

Schemes not listed (folders, memory) name one store with the URL alone.
"""

_FOLDERS = ("expire", "lock_timeout")
OPTIONS: dict[str, tuple[str, ...]] = {
    "sqlite": ("table", "expire", "synchronous", "busy_timeout", "cache_bytes"),
    "json": _FOLDERS,
    "yaml": _FOLDERS,
    "memory": ("expire",),
}
"""Scheme → every option its ``from_url`` takes; :func:`parse_url` refuses any other.

Schemes not listed judge their options in ``from_url``: a Redis URL refuses what it does not
take, and a database server's URL hands what savegame does not take to the driver
(``sslmode=`` for psycopg, ``charset=`` for PyMySQL), which alone knows its options. Listing
them here instead would refuse a driver's options that savegame has not heard of.
"""

_POSTGRES_REPEATABLE = frozenset({"host"})
REPEATABLE: dict[str, frozenset[str]] = {
    "postgresql": _POSTGRES_REPEATABLE,
    "postgresql+psycopg": _POSTGRES_REPEATABLE,
    "postgres": _POSTGRES_REPEATABLE,
}
"""Scheme → the query options that may be given more than once, each time for another value:
PostgreSQL's ``host``, which names servers to try in turn (SQLAlchemy's multiple hosts).
They reach the driver as a list."""

APART: frozenset[str] = frozenset({"json", "yaml", "memory"})
"""Schemes whose one store keeps the sessions of each mode apart: a storage of any mode may
use it and sees its own mode's sessions only (a folder, in which an earlier savegame let
several modes write, lists each mode apart)."""

_FILE_SCHEMES = frozenset({"sqlite", "json", "yaml"})
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:([\\/]|$)")
"""A path starting with a Windows drive (``C:/``, ``C:\\``): absolute on Windows only."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_PASSWORD_OPTIONS = frozenset({"password", "passwd"})
_SECRETS_IN_QUERY = re.compile(r"(?i)(^|&)(password|passwd)=[^&]*")
"""Query parameters that hold a password: libpq takes ``password=``, PyMySQL ``passwd=``."""


@dataclass
class StorageURL:
    """A parsed storage URL, handed to a backend's ``from_url``.

    Backends take the options they understand with :meth:`pop_int`, :meth:`pop_number`,
    :meth:`pop_namespace` or ``options.pop``, and refuse others with :meth:`refuse` (for the
    schemes of :data:`OPTIONS`, :func:`parse_url` has done so).

    Attributes:
        raw: the URL as given, without its query, its scheme in lower case.
        scheme: the scheme, lower case.
        path: for file-like schemes, the path after ``scheme://`` with one ``/`` removed and
            percent-escapes decoded (``sqlite:///a.db`` → ``a.db``, ``sqlite:////a.db`` →
            ``/a.db``).
        mode: the storage mode.
        options: query parameters and keyword arguments, keyword arguments winning.
        per_mode: whether each mode gets a store of its own at this URL: a SQL or Redis URL
            that names no table or prefix.
        keywords: the options given as keyword arguments, which messages say so of.
    """

    raw: str
    scheme: str
    path: str
    mode: str
    options: dict[str, Any] = field(default_factory=dict)
    per_mode: bool = False
    keywords: frozenset[str] = field(default=frozenset(), compare=False)

    def __repr__(self) -> str:
        """The fields, with the URL's passwords as ``***`` (:func:`redact`), as the storages'
        messages show them: a StorageURL in a traceback or a log keeps them out."""
        raw = redact(self.raw)
        path = unquote(raw.partition("://")[2])
        path = path[1:] if path.startswith("/") else path
        options = {
            name: "***" if name in _PASSWORD_OPTIONS else value
            for name, value in self.options.items()
        }
        return (
            f"StorageURL(raw={raw!r}, scheme={self.scheme!r}, path={path!r}, "
            f"mode={self.mode!r}, options={options!r}, per_mode={self.per_mode!r})"
        )

    def given(self, name: str, value: Any) -> str:
        """``name=value`` and where it was given, for a message refusing it."""
        where = "given to open_storage" if name in self.keywords else "in storage URL"
        return f"{name}={value!r} {where}"

    @property
    def modes_apart(self) -> bool:
        """Whether storages of every mode may use this one store, each seeing only its own
        mode's sessions (:data:`APART`)."""
        return self.scheme in APART

    def pop_int(self, name: str) -> int | None:
        """Removes option ``name`` and returns it as an int (None when absent).

        Raises:
            InvalidIdentifierError: when the value is not a whole number: text of one, or an
                int (a keyword's ``1.5`` is refused, not cut to 1).
        """
        value = self.options.pop(name, None)
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        number = whole_number(value) if isinstance(value, str) else None
        if number is not None:
            return number
        raise InvalidIdentifierError(f"{self.given(name, value)} must be a whole number")

    def pop_cache_bytes(self) -> int:
        """Removes the ``cache_bytes`` option and returns it: how many bytes of its recent
        sessions the storage may remember (:data:`~savegame.storage.known.DEFAULT_BYTES`
        when absent; 0 remembers none).

        Raises:
            InvalidIdentifierError: when the value is not a whole number.
        """
        value = self.pop_int("cache_bytes")
        return DEFAULT_BYTES if value is None else value

    def pop_number(self, name: str) -> float | None:
        """Removes option ``name`` and returns it as a float (None when absent).

        Raises:
            InvalidIdentifierError: when the value is not a finite number, 0 or more (a
                keyword's True is refused, not taken for 1).
        """
        value = self.options.pop(name, None)
        if value is None:
            return None
        if isinstance(value, str):
            number = number_text(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            number = math.nan
        if not 0 <= number < math.inf:
            raise InvalidIdentifierError(f"{self.given(name, value)} must be a number, 0 or more")
        return number

    def refuse(self, unknown: Iterable[str], takes: str) -> None:
        """Refuses the options ``unknown`` of this URL, naming them and what the scheme takes.

        Args:
            unknown: the options of :attr:`options` that the scheme does not take.
            takes: what it takes, for the message (``"table, expire"``).

        Raises:
            InvalidIdentifierError: naming the options, when ``unknown`` is not empty.
        """
        if names := sorted(unknown):
            raise InvalidIdentifierError(
                f"unknown option(s) for a {self.scheme}:// URL: {', '.join(names)}; "
                f"it takes {takes}"
            )

    def pop_namespace(self) -> str:
        """Removes the ``table`` or ``prefix`` option and returns it, or its default for the mode.

        Raises:
            InvalidIdentifierError: for a scheme that has no namespace option, or one that is
                empty or not text.
        """
        if self.scheme not in NAMESPACES:
            raise InvalidIdentifierError(f"{self.scheme}:// URLs take no table or prefix")
        name, default = NAMESPACES[self.scheme]
        value = self.options.pop(name, None)
        if value is None:
            return default.format(mode=self.mode)
        if not isinstance(value, str):
            raise InvalidIdentifierError(f"{self.given(name, value)} must be text")
        if not value:
            raise InvalidIdentifierError(f"{self.given(name, value)} must not be empty")
        return value


def parse_url(url: str, mode: Mode | str | None = "agent", **options: Any) -> StorageURL:
    """Splits ``url`` into what a backend needs.

    Raises:
        InvalidIdentifierError: for a string that is not a URL of a known scheme (the
            message lists the schemes), an option the scheme does not take (the message
            lists those it takes), spaces at its ends or a control character in it, or,
            but on Windows, a file or folder on a Windows drive (``sqlite:///C:/app.db``);
            a ``sqlite://``, ``json://`` or ``yaml://`` URL that names a host
            (``json://dir``); or an unknown mode.
    """
    # None is "agent", as for the storages' constructors (and the original's).
    mode = mode_spec(mode).mode
    if not isinstance(url, str) or "://" not in url:
        raise InvalidIdentifierError(
            f"{url!r} is not a storage URL; expected scheme://..., one of: {_schemes()}"
        )
    if url != url.strip() or _CONTROL.search(url):
        # A newline or space read from a file or an environment variable along with the
        # URL: it became part of a file's, folder's or database's name ("app.db\n").
        raise InvalidIdentifierError(
            f"storage URL {redact(url)!r} has spaces at an end or a control character (a "
            "line break, say) in it: write it without them, percent-escaped where they belong"
        )
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidIdentifierError(
            f"unknown storage URL scheme {scheme!r} in {redact(url)!r}; known schemes: {_schemes()}"
        )
    before, mark, after = rest.partition("?")
    rest_of_password, at, _ = after.partition("/")[0].partition("@")
    if mark and ":" in before and "/" not in before and at and "=" not in rest_of_password:
        # "user:pa?ss@host": the "?" would start a query holding the rest of the password
        # (an option's value holding an "@", "?ssl_ca_certs=me@corp.pem", comes after "=").
        raise InvalidIdentifierError(
            f"the password in storage URL {redact(url)!r} holds a '?': write it as %3F"
        )
    try:
        urlsplit(url)
        # The query is what follows the first "?", as for raw and path: urlsplit would take
        # a "#" before it (in a password, or a file's name) for a fragment holding the
        # query, whose options would then be dropped without a word.
        pairs = parse_qsl(after, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:
        # The error may quote the URL's netloc (an NFKC one does), password and all, or a
        # piece of it ("'ter2@[::1' does not appear to be an IPv4 or IPv6 address", of a
        # password "hun[ter2"), which no redaction finds: what it quotes is left out.
        detail = _redact(str(exc), url)
        if redact(url) != url:
            detail = re.sub(r"'.*'", "'…'", detail)
        raise InvalidIdentifierError(f"malformed storage URL {redact(url)!r}: {detail}") from None
    query = _query(pairs, scheme, url)
    # The scheme in lower case: SQLAlchemy takes "MySQL://" for a database of another kind.
    raw = f"{scheme}://{before}"
    host = before.partition("/")[0]
    if scheme in _FILE_SCHEMES and host:
        # "json://dir" read as a URL names a host "dir" and no path; read leniently, it
        # named the folder "dir", and "json://dir/sub" the folder "dir/sub" where a reader
        # of URLs expects "/sub".
        raise InvalidIdentifierError(
            f"storage URL {redact(url)!r} names a host ({host}), which a {scheme}:// URL "
            f"takes none of: write {scheme}:///{unquote(host)} for a path relative to the "
            f"working directory, {scheme}:////abs/path for an absolute one"
        )
    path = unquote(rest.split("?", 1)[0])
    path = path[1:] if path.startswith("/") else path
    if scheme in _FILE_SCHEMES and os.name != "nt" and _WINDOWS_DRIVE.match(path):
        # Elsewhere it is a relative path: a folder named "C:" made in the working directory.
        raise InvalidIdentifierError(
            f"{redact(url)!r} names a path on a Windows drive ({path[:2]}), which this system "
            f"does not have: give a path of this system ({scheme}:////abs/path for an "
            "absolute one)"
        )
    keywords = {name: value for name, value in options.items() if value is not None}
    merged = {**query, **keywords}
    namespace = NAMESPACES.get(scheme)
    per_mode = namespace is not None and namespace[0] not in merged
    parsed = StorageURL(raw, scheme, path, mode, merged, per_mode, frozenset(keywords))
    takes = OPTIONS.get(scheme)
    if takes is not None:
        parsed.refuse(set(merged) - set(takes), ", ".join(takes))
    return parsed


def _query(pairs: list[tuple[str, str]], scheme: str, url: str) -> dict[str, Any]:
    """The options of a URL's query: a list of values for those of :data:`REPEATABLE` given
    more than once.

    Raises:
        InvalidIdentifierError: for any other option given more than once, and for
            ``mode``.
    """
    query: dict[str, Any] = {}
    repeated = set()
    for name, value in pairs:
        if name not in query:
            query[name] = value
        elif name in REPEATABLE.get(scheme, ()):
            earlier = query[name]
            query[name] = [*(earlier if isinstance(earlier, list) else [earlier]), value]
        else:
            repeated.add(name)
    if repeated:
        raise InvalidIdentifierError(
            f"storage URL {redact(url)!r} gives {', '.join(sorted(repeated))} more than once; "
            "give each option once"
        )
    if "mode" in query:
        raise InvalidIdentifierError(
            f"storage URL {redact(url)!r} has a mode= option: the mode is open_storage's "
            "mode argument (--mode on the command line), not part of the URL"
        )
    return query


def open_storage(url: str, mode: Mode | str | None = "agent", **options: Any) -> Storage:
    """Opens the store that ``url`` names, for sessions of ``mode``.

    Nothing is made on opening, and a read or listing of a store not there yet makes
    nothing either: a new store (its table, folder or keys) is made by its first write or
    by ``create()``.

    Raises:
        InvalidIdentifierError: for a malformed URL, an unknown scheme, a bad option or an
            unknown mode.
        MissingDependencyError: when the backend's driver is not installed.
    """
    parsed = parse_url(url, mode, **options)
    module = importlib.import_module(SCHEMES[parsed.scheme])
    try:
        storage: Storage = module.from_url(parsed)
    except StorageError:
        raise
    except ValueError as exc:
        # A value the constructor refuses (expire=0, say) came from the URL or its options.
        raise InvalidIdentifierError(f"storage URL {redact(url)!r}: {exc}") from exc
    return storage


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs.

    So is a ``password=`` or ``passwd=`` in the query, which the drivers take as well.
    """
    return _redact(url, url)


def _redact(text: str, url: str) -> str:
    """``text`` (``url``, or a message quoting it) without the passwords of ``url``.

    The password is what stands between ``scheme://user:`` and the last ``@`` before the
    query (or, when none is there, the last ``@``). It is found by hand rather than by
    ``urlsplit``, which refuses the malformed URLs that error messages show (``[::1``
    without its ``]``) and ends the password at a ``/`` that SQLAlchemy takes as part of it.
    """
    rest = url.partition("://")[2]
    # The authority ends at the query, unless the password holds a "?" (SQLAlchemy takes
    # one): then at the last "@".
    for authority in (rest.partition("?")[0], rest):
        credentials, at, _ = authority.rpartition("@")
        user, colon, password = credentials.partition(":")
        if at and colon and password and "/" not in user:
            text = text.replace(f":{password}@", ":***@")
            break
    before, mark, query = text.partition("?")
    return before + mark + _SECRETS_IN_QUERY.sub(r"\1\2=***", query)


def _schemes() -> str:
    return ", ".join(f"{s}://" for s in SCHEMES)
