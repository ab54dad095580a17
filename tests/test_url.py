"""Storage URLs: parsing, defaults, errors, and that each URL names the store its backend made."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import savegame
from savegame.errors import InvalidIdentifierError
from savegame.storage.in_memory import InMemoryStorage
from savegame.storage.known import DEFAULT_BYTES
from savegame.storage.session import MODES
from savegame.storage.session.agent import AgentSession
from savegame.storage.url import OPTIONS, SCHEMES, StorageURL, open_storage, parse_url, redact
from savegame.testing import Store
from savegame.testing.sample import make_session
from tests.stores import BACKENDS, Backend, mysql_url, postgres_url, unique


@pytest.mark.parametrize(
    ("url", "scheme", "path"),
    [
        ("sqlite:///relative.db", "sqlite", "relative.db"),
        ("sqlite:////abs/dir/x.db", "sqlite", "/abs/dir/x.db"),
        ("sqlite://", "sqlite", ""),
        ("SQLite:///Case.db", "sqlite", "Case.db"),
        ("json:///some/dir", "json", "some/dir"),
        ("json:////abs/dir?expire=5", "json", "/abs/dir"),
        ("yaml:///with%20space", "yaml", "with space"),
        ("memory://", "memory", ""),
    ],
)
def test_paths(url: str, scheme: str, path: str) -> None:
    parsed = parse_url(url, "team")
    assert (parsed.scheme, parsed.path, parsed.mode) == (scheme, path, "team")
    assert "?" not in parsed.raw


def test_query_options_and_keywords_winning() -> None:
    parsed = parse_url("redis://h:6379/0?prefix=a:b&expire=60", "agent", expire=5)
    assert parsed.options == {"prefix": "a:b", "expire": 5}
    assert parsed.pop_int("expire") == 5
    assert parsed.pop_namespace() == "a:b"
    assert parsed.options == {}
    assert parsed.raw == "redis://h:6379/0"


def test_whole_numbers_only() -> None:
    parsed = parse_url("json:///d?expire=soon")
    with pytest.raises(InvalidIdentifierError, match=r"expire='soon'.*whole number"):
        parsed.pop_int("expire")
    assert parse_url("json:///d").pop_int("expire") is None


@pytest.mark.parametrize("value", [1.5, 2.0, "1.5", [60]])
def test_a_keyword_that_is_not_a_whole_number_is_refused_not_truncated(value: object) -> None:
    parsed = parse_url("json:///d", expire=value)
    with pytest.raises(InvalidIdentifierError, match=r"expire=.*whole number"):
        parsed.pop_int("expire")
    with pytest.raises(InvalidIdentifierError, match=r"expire=.*whole number"):
        open_storage("json:///d", "agent", expire=value)  # 1.5 was taken for 1


@pytest.mark.parametrize("mode", list(MODES))
def test_namespace_defaults_by_mode(mode: str) -> None:
    assert parse_url("sqlite:///a.db", mode).pop_namespace() == f"{mode}_sessions"
    assert parse_url("mysql+pymysql://u@h/db", mode).pop_namespace() == f"{mode}_sessions"
    assert parse_url("postgresql+psycopg://u@h/db", mode).pop_namespace() == f"{mode}_sessions"
    assert parse_url("redis://h", mode).pop_namespace() == f"savegame:{mode}"
    assert parse_url("rediss://h", mode).pop_namespace() == f"savegame:{mode}"


def test_per_mode_means_no_explicit_namespace() -> None:
    assert parse_url("sqlite:///a.db").per_mode
    assert parse_url("redis://h:6379/0").per_mode
    assert not parse_url("sqlite:///a.db?table=mine").per_mode
    assert not parse_url("sqlite:///a.db", table="mine").per_mode
    assert not parse_url("redis://h?prefix=p").per_mode
    assert not parse_url("json:///dir").per_mode
    assert not parse_url("memory://").per_mode
    # Taking the option does not change what the URL named.
    parsed = parse_url("sqlite:///a.db?table=mine")
    parsed.pop_namespace()
    assert not parsed.per_mode


def test_namespace_errors() -> None:
    with pytest.raises(InvalidIdentifierError, match="json:// URLs take no table"):
        parse_url("json:///d").pop_namespace()
    with pytest.raises(InvalidIdentifierError, match=r"table='' in storage URL must not be empty"):
        parse_url("sqlite:///a.db?table=").pop_namespace()
    # A table or prefix that is not text was said to be empty.
    with pytest.raises(InvalidIdentifierError, match=r"table=5 given to open_storage must be text"):
        open_storage("sqlite:///a.db", table=5)
    with pytest.raises(InvalidIdentifierError, match=r"prefix=b'p' given to open_storage must be"):
        open_storage("redis://127.0.0.1:1/0", prefix=b"p")
    # A keyword is not in the URL, and the message said it was.
    with pytest.raises(InvalidIdentifierError, match=r"table='' given to open_storage must not"):
        open_storage("sqlite:///a.db?table=t", table="")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nowhere", "is not a storage URL"),
        ("sqlite:/one-slash.db", "is not a storage URL"),
        ("", "is not a storage URL"),
        ("ftp://host/file", "unknown storage URL scheme 'ftp'"),
        ("mongodb://u@h/db", "unknown storage URL scheme 'mongodb'"),
    ],
)
def test_bad_urls_list_the_schemes(url: str, message: str) -> None:
    with pytest.raises(InvalidIdentifierError, match=message) as caught:
        open_storage(url)
    for scheme in SCHEMES:
        assert f"{scheme}://" in str(caught.value)


def test_a_url_that_is_not_a_string() -> None:
    with pytest.raises(InvalidIdentifierError, match="not a storage URL"):
        open_storage(None)  # type: ignore[arg-type]


def test_an_unknown_mode() -> None:
    with pytest.raises(InvalidIdentifierError, match="unknown mode 'robot'"):
        open_storage("memory://", "robot")


def test_a_mode_of_none_is_agent_as_for_the_constructors() -> None:
    # It was taken for a mode named "None": the table None_sessions, and then an error.
    assert parse_url("sqlite:///a.db", None).pop_namespace() == "agent_sessions"
    with open_storage("sqlite://", None) as storage:
        assert storage.mode == "agent"


def test_passwords_are_redacted() -> None:
    assert redact("redis://:s3cret@h:6379/0?prefix=p") == "redis://:***@h:6379/0?prefix=p"
    assert redact("postgresql+psycopg://app:pw@db/x") == "postgresql+psycopg://app:***@db/x"
    assert redact("sqlite:///x.db") == "sqlite:///x.db"
    assert redact("mysql+pymysql://root@h/db") == "mysql+pymysql://root@h/db"
    with pytest.raises(InvalidIdentifierError) as caught:
        open_storage("bogus://user:s3cret@h")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # urlsplit refuses these: the password is found by hand.
        ("postgresql+psycopg://u:s3cret@[::1/db", "postgresql+psycopg://u:***@[::1/db"),
        ("redis://:s3cret@[::1:6379/0?prefix=p", "redis://:***@[::1:6379/0?prefix=p"),
        # SQLAlchemy takes a / as part of the password; urlsplit ends the host there.
        ("mysql+pymysql://u:s3/cret@h/db", "mysql+pymysql://u:***@h/db"),
        # The drivers take a password from the query too.
        (
            "postgresql://u@h/db?sslmode=require&password=s3cret",
            "postgresql://u@h/db?sslmode=require&password=***",
        ),
        (
            "mysql://u@h/db?passwd=s3cret&charset=utf8mb4",
            "mysql://u@h/db?passwd=***&charset=utf8mb4",
        ),
        # Paths are not passwords.
        ("sqlite:////tmp/a:b@c.db", "sqlite:////tmp/a:b@c.db"),
        ("json:///d@x:y/z", "json:///d@x:y/z"),
    ],
)
def test_passwords_are_redacted_from_any_url(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u:s3cret@[::1/db",
        "redis://:s3cret@[::1:6379/0",
        # NFKC: urlsplit's error quotes the netloc.
        "postgresql+psycopg://u:s3cret\uff03@h/db",
        # The error quoted the part of the password after its "[".
        "redis://u:hun[s3cret@[::1]:1/0",
        "postgresql+psycopg://u:a[s3cret@[::1]:5432/db",
    ],
)
def test_a_malformed_url_is_shown_without_its_password(url: str) -> None:
    with pytest.raises(InvalidIdentifierError, match="malformed storage URL") as caught:
        open_storage(url)
    assert "s3cret" not in str(caught.value)
    assert ":***@" in str(caught.value)


def test_every_scheme_has_a_backend_with_from_url() -> None:
    for scheme, module_name in SCHEMES.items():
        module = importlib.import_module(module_name)
        assert callable(getattr(module, "from_url", None)), f"{scheme}:// has no from_url"


def test_memory_is_a_new_store_each_time() -> None:
    first = savegame.open_storage("memory://", mode="workflow")
    assert isinstance(first, InMemoryStorage)
    assert first.mode == "workflow"
    first.upsert(make_session("workflow", "m"))
    second = open_storage("memory://", "workflow")
    assert second.read("m") is None
    assert open_storage("memory://?expire=30").expire == 30


@pytest.mark.parametrize(
    "url", ["memory://shared", "memory:///x", "memory://:hunter2@host?expire=5"]
)
def test_a_memory_url_naming_a_store_is_refused(url: str) -> None:
    # The name was ignored: two opens of "memory://shared" looked like one store, and each
    # was a new, empty one.
    with pytest.raises(InvalidIdentifierError, match="takes no name or address") as caught:
        open_storage(url)
    assert "hunter2" not in str(caught.value)


def test_relative_paths_are_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with open_storage("json:///rel/store", "agent") as storage:
        storage.create()
        storage.upsert(make_session("agent", "a"))
    with open_storage(f"json:///{tmp_path}/rel/store", "agent") as again:
        assert again.get_all_session_ids() == ["a"]
    assert (tmp_path / "rel" / "store").is_dir()


@pytest.mark.parametrize(
    "backend", [pytest.param(b, id=b.name) for b in BACKENDS if b.name != "memory"]
)
def test_a_store_url_opens_the_same_store(backend: object, tmp_path: Path) -> None:
    with backend.make(tmp_path, "team") as store:  # type: ignore[attr-defined]
        assert isinstance(store, Store)
        if store.url is None:
            pytest.skip(f"{store.backend} lives in one process and has no URL")
        direct = store()
        direct.create()
        direct.upsert(make_session("team", "same"))
        with open_storage(store.url, "team") as by_url:
            assert type(by_url) is type(direct)
            assert by_url.mode == "team"
            assert by_url.get_all_session_ids() == ["same"]
            by_url.upsert(make_session("team", "other"))
        assert sorted(direct.get_all_session_ids()) == ["other", "same"]


def test_storage_url_is_what_backends_receive() -> None:
    parsed = parse_url("sqlite:///a.db?table=t", "team", expire=9)
    assert parsed == StorageURL(
        "sqlite:///a.db", "sqlite", "a.db", "team", {"table": "t", "expire": 9}, False
    )


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("sqlite:///a.db?tabel=custom", {}, "sqlite:// URL: tabel; it takes table, expire,"),
        ("sqlite://", {"tabel": "custom"}, "sqlite:// URL: tabel;"),
        ("json:///d?exipre=60", {}, "json:// URL: exipre; it takes expire, lock_timeout$"),
        ("json:///d?table=x", {}, "json:// URL: table; it takes expire, lock_timeout$"),
        ("json:///d", {"cache_bytes": 0}, "json:// URL: cache_bytes; it takes expire, lock_"),
        ("yaml:///d?exipre=60&prefix=p", {}, "yaml:// URL: exipre, prefix; it takes expire, lo"),
        ("memory://?lock_timeout=1", {}, "memory:// URL: lock_timeout; it takes expire$"),
        ("memory://?exipre=60", {}, "memory:// URL: exipre; it takes expire$"),
        ("memory://", {"table": "t"}, "memory:// URL: table; it takes expire$"),
        (
            "redis://127.0.0.1:1/0?exipre=60",
            {},
            "Redis URL: exipre; it takes prefix, expire, shards, cache_bytes, ssl, ssl_ca_certs, "
            "socket_timeout, connect_timeout$",
        ),
        ("rediss://127.0.0.1:1/0", {"table": "t"}, "Redis URL: table; it takes prefix,"),
        ("mysql+pymysql://root@127.0.0.1:1/test?tabel=x", {}, "mysql.pymysql:// URL: tabel;"),
        ("mysql://root@127.0.0.1:1/test", {"cache_byte": 0}, "mysql:// URL: cache_byte;"),
        ("postgresql://u@127.0.0.1:1/db?sslmod=disable", {}, "postgresql:// URL: sslmod;"),
        (
            "postgresql+psycopg://u@127.0.0.1:1/db?table=t&sslmode=disable",
            {"cache_byte": 0, "a b": "1"},
            "postgresql.psycopg:// URL: a b, cache_byte; it takes table, schema, expire, "
            "cache_bytes and libpq",
        ),
    ],
)
def test_unknown_options_are_refused(url: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidIdentifierError, match=r"unknown option\(s\) for a " + message):
        open_storage(url, **options)


def test_an_unknown_option_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    with pytest.raises(InvalidIdentifierError, match="exipre"):
        parse_url(f"json:///{tmp_path}/store?exipre=60")
    with pytest.raises(InvalidIdentifierError, match="tabel"):
        open_storage(f"sqlite:///{tmp_path}/app.db?tabel=custom").create()
    assert list(tmp_path.iterdir()) == []


SAMPLE_VALUES = {
    "table": "t",
    "expire": "60",
    "synchronous": "NORMAL",
    "busy_timeout": "2.5",
    "lock_timeout": "4.5",
    "cache_bytes": "0",
}


@pytest.mark.parametrize("scheme", list(OPTIONS))
def test_each_option_a_scheme_lists_is_taken(scheme: str, tmp_path: Path) -> None:
    """What OPTIONS lets through, the scheme's from_url takes: none is dropped on the way."""
    url = f"{scheme}:///{tmp_path}/store" if scheme != "memory" else "memory://"
    parsed = parse_url(url, "agent", **{name: SAMPLE_VALUES[name] for name in OPTIONS[scheme]})
    with importlib.import_module(SCHEMES[scheme]).from_url(parsed) as storage:
        assert parsed.options == {}
        assert storage.expire == 60


@pytest.mark.parametrize("backend", [pytest.param(b, id=b.name) for b in BACKENDS])
def test_cache_bytes_is_taken_from_the_url_or_a_keyword_by_every_storage_that_remembers(
    backend: Backend, tmp_path: Path
) -> None:
    # Where stores are opened by URL (the command line, a config file), cache_bytes=0 is how
    # an upgrade from the original is waited out (see the README).
    with backend.make(tmp_path, "agent") as store:
        if store.url is None or "cache_bytes" not in type(store()).capabilities:
            pytest.skip(f"{backend.name} has no URL, or remembers no sessions")
        url = str(store.url)
        joined = "&" if "?" in url else "?"
        for opened in (
            open_storage(url + joined + "cache_bytes=0"),
            open_storage(url, cache_bytes=0),
        ):
            with opened:
                assert opened._known.max_bytes == 0
        with open_storage(url) as default:
            assert default._known.max_bytes == DEFAULT_BYTES
        with pytest.raises(InvalidIdentifierError, match="cache_bytes"):
            open_storage(url + joined + "cache_bytes=lots")


def test_sqlite_with_three_slashes_and_no_path_is_refused() -> None:
    # "sqlite:///$DB" with DB unset: an in-memory database would lose what it was given.
    for url in ("sqlite:///", "SQLITE:///", "Sqlite:///?table=t"):
        with pytest.raises(InvalidIdentifierError, match="sqlite:/// names no file"):
            open_storage(url)
    assert open_storage("sqlite://").read("any") is None


@pytest.mark.parametrize("scheme", ["json", "yaml"])
def test_a_folder_url_or_dir_path_with_no_path_is_refused(
    scheme: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "json:///$DIR" with DIR unset would name the current folder, and write sessions beside
    # (and drop the session files among) whatever else is there.
    monkeypatch.chdir(tmp_path)
    cls = type(open_storage(f"{scheme}:///x"))
    for url in (f"{scheme}:///", f"{scheme}://", f"{scheme}:///?expire=5"):
        with pytest.raises(InvalidIdentifierError, match=f"dir_path is empty .*{scheme}:///"):
            open_storage(url)
    with pytest.raises(InvalidIdentifierError, match=r"'\.' for the current folder"):
        cls("")
    assert open_storage(f"{scheme}:///.").upsert(AgentSession(session_id="s")).version == 1
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == [f"s.{scheme}"]


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("json://dir", "dir"),
        ("json://dir/sub", "dir"),
        ("yaml://localhost/abs/dir", "localhost"),
        ("json://~/sessions", "~"),
        ("json://.", "."),
        ("json://%2Fabs", "%2Fabs"),
        ("yaml://dir?expire=5", "dir"),
        ("sqlite://app.db", "app.db"),
        ("sqlite://host/app.db?table=t", "host"),
    ],
)
def test_a_file_url_naming_a_host_is_refused(
    url: str, host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "json://dir/sub" named the folder "dir/sub", where a reader of URLs sees the host
    # "dir" and the path "/sub": which was meant cannot be told, and nothing is made.
    monkeypatch.chdir(tmp_path)
    scheme = url.partition(":")[0]
    with pytest.raises(
        InvalidIdentifierError, match=rf"names a host \({re.escape(host)}\)"
    ) as caught:
        open_storage(url)
    assert f"{scheme}:///" in str(caught.value)
    assert list(tmp_path.iterdir()) == []
    assert open_storage("sqlite://?table=t").read("any") is None


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("busy_timeout=abc", r"busy_timeout='abc' in storage URL must be a number, 0 or more"),
        ("busy_timeout=-1", r"busy_timeout='-1' .*0 or more"),
        ("busy_timeout=inf", r"busy_timeout='inf' .*0 or more"),
        ("busy_timeout=nan", r"busy_timeout='nan' .*0 or more"),
        # float() read these as 10 and 1.
        ("busy_timeout=1_0", r"busy_timeout='1_0' .*0 or more"),
        ("busy_timeout=%D9%A1", r"busy_timeout='\u0661' .*0 or more"),
        ("busy_timeout=1e308", r"busy_timeout must be a number of seconds from 0 to 2147483"),
        ("expire=0", r"expire must be None .* from 1 to"),
        ("synchronous=sometimes", r"synchronous='sometimes' .*one of FULL, NORMAL, EXTRA"),
        ("expire=soon", r"expire='soon' .*whole number"),
        # More digits than int() reads: its ValueError.
        ("expire=" + "1" * 5000, r"expire='1{5000}' .*whole number"),
    ],
    ids=lambda value: value if len(value) < 80 else f"{value[:30]}...",
)
def test_bad_option_values(query: str, message: str) -> None:
    with pytest.raises(InvalidIdentifierError, match=message):
        open_storage(f"sqlite:///a.db?{query}")


def test_sqlite_option_values_are_used() -> None:
    with open_storage("sqlite://?busy_timeout=2.5&synchronous=normal") as storage:
        assert (storage.dialect.busy_timeout, storage.dialect.synchronous) == (2.5, "NORMAL")  # type: ignore[attr-defined]


def test_mysql_passes_the_driver_its_options() -> None:
    # Options of PyMySQL, and those SQLAlchemy folds into its ssl= argument: no server needed.
    query = "charset=utf8mb4&read_timeout=30&ssl_ca=/ca.pem&ssl_check_hostname=false"
    with open_storage(f"mysql+pymysql://root@127.0.0.1:1/test?table=t&{query}") as storage:
        assert storage.table_name == "t"  # type: ignore[attr-defined]
        assert set(storage.db_engine.url.query) == {  # type: ignore[attr-defined]
            "charset",
            "read_timeout",
            "ssl_ca",
            "ssl_check_hostname",
        }


def test_postgres_passes_libpq_its_options() -> None:
    query = "sslmode=disable&application_name=app&connect_timeout=3&options=-c%20a.b%3D1"
    with open_storage(f"postgresql://u@127.0.0.1:1/db?table=t&{query}") as storage:
        assert dict(storage.db_engine.url.query) == {  # type: ignore[attr-defined]
            "sslmode": "disable",
            "application_name": "app",
            "connect_timeout": "3",
            "options": "-c a.b=1",
        }


def test_mysql_driver_options_reach_a_server() -> None:
    server = mysql_url()
    url = f"{server}?table={unique('sg')}&charset=utf8mb4&read_timeout=30&ssl_disabled=1"
    with open_storage(url) as storage:
        assert storage.read("absent") is None


@pytest.mark.parametrize(
    ("driver", "opening", "extra"),
    [
        ("redis", "from savegame.storage.redis import RedisStorage; RedisStorage('p')", "redis"),
        # Options that only the driver would know are left for it: the error names the extra.
        ("pymysql", "open_storage('mysql://h/db?charset=utf8mb4')", "mysql"),
    ],
)
def test_without_its_driver_a_backend_names_the_extra(
    driver: str, opening: str, extra: str
) -> None:
    code = (
        f"import sys\nsys.modules[{driver!r}] = None\n"
        "from savegame import open_storage\n"
        "from savegame.errors import MissingDependencyError\n"
        f"try:\n    {opening}\n"
        "except MissingDependencyError as exc:\n    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert f'pip install "savegame[{extra}]"' in done.stdout


def test_a_password_in_a_server_urls_query_stays_out_of_messages() -> None:
    from savegame.storage.postgres import PostgresStorage

    storage = PostgresStorage("t", db_url="postgresql+psycopg://u@127.0.0.1:1/db?password=hunter2")
    assert "hunter2" not in storage.where()
    assert "password=***" in storage.where()
    storage.close()
    assert redact("mysql+pymysql://root:se?cret@h/db") == "mysql+pymysql://root:***@h/db"
    for url in ("mysql+pymysql://root:se?cret@h/db?x=1", "redis://:pa?ss@h:6379/0"):
        with pytest.raises(InvalidIdentifierError, match="holds a '\\?': write it as %3F") as info:
            open_storage(url)
        assert "cret" not in str(info.value)
        assert "ss@" not in str(info.value)
    assert parse_url("redis://h:6379/0?prefix=a@b").options == {"prefix": "a@b"}
    # No path before the query: an option's value holding an "@" comes after its "=".
    assert parse_url("rediss://h:6379?ssl_ca_certs=me@corp.pem").options == {
        "ssl_ca_certs": "me@corp.pem"
    }


@pytest.mark.parametrize(
    "url",
    [
        # The password ends at its first "@": the rest is taken as the host, or the port.
        "postgresql+psycopg://u:pa@hunter2@127.0.0.1:5432/db",
        "postgresql://u:pa@ss:hunter2@127.0.0.1:5432/db",
        "mysql+pymysql://u:pa@hunter2@127.0.0.1:3306/db",
        "mysql://u:pa@ss:hunter2@127.0.0.1/db",
    ],
)
def test_a_password_holding_an_unescaped_at_sign_is_refused_unquoted(url: str) -> None:
    from savegame.storage.mysql import MySQLStorage
    from savegame.storage.postgres import PostgresStorage

    storage_class = PostgresStorage if url.startswith("postgresql") else MySQLStorage
    for opening in (lambda: open_storage(url), lambda: storage_class("t", db_url=url)):
        with pytest.raises(InvalidIdentifierError, match="%40") as info:
            opening().read("s")
        assert "hunter2" not in str(info.value)
        assert ":***@" in str(info.value)


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("redis://:pa#ss@127.0.0.1:6379/0?prefix=mine&expire=5", {"prefix": "mine"}),
        ("postgresql+psycopg://u:pa#ss@127.0.0.1:5432/db?table=mine&expire=5", {"table": "mine"}),
        ("json:///dir#1?expire=5", {}),
    ],
)
def test_a_hash_sign_before_the_query_never_hides_it(url: str, options: dict[str, str]) -> None:
    # A "#" in a password or a path would start a fragment for urlsplit, which then finds
    # no query: the options were dropped without a word, and the storage opened the
    # default prefix or table, with no expiry.
    parsed = parse_url(url)
    assert parsed.options == {**options, "expire": "5"}
    assert parsed.raw == url.partition("?")[0]


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///a.db?expire=60&expire=5",
        "json:///d?expire=60&table=t&expire=5",
        "memory://?expire=60&expire=5",
        "redis://127.0.0.1:1/0?prefix=a&prefix=b",
        "postgresql+psycopg://u:s3cret@127.0.0.1:1/db?table=a&table=b",
        "postgresql://u@127.0.0.1:1/db?sslmode=disable&sslmode=require",
        "mysql+pymysql://u@127.0.0.1:1/db?expire=60&expire=5",
    ],
)
def test_an_option_given_twice_is_refused(url: str, tmp_path: Path) -> None:
    # The last one was taken without a word: ?expire=60&expire=5 kept sessions 5 seconds.
    with pytest.raises(InvalidIdentifierError, match="more than once") as caught:
        open_storage(url.replace("///d", f"///{tmp_path}/d"))
    assert "s3cret" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_redis_storage_refuses_an_option_its_url_gives_twice() -> None:
    from savegame.storage.redis import RedisStorage

    with pytest.raises(InvalidIdentifierError, match="more than once: ssl"):
        RedisStorage("p", url="redis://127.0.0.1:1/0?ssl=true&ssl=false")


def test_postgres_hosts_given_twice_are_tried_in_turn() -> None:
    from sqlalchemy.engine import make_url

    server = make_url(postgres_url())
    url = (
        f"postgresql+psycopg://{server.username}@/{server.database}?table={unique('sg')}"
        f"&host={server.host}:{server.port or 5432}&host=127.0.0.1:1"
    )
    with open_storage(url) as storage:
        assert storage.db_engine.url.query["host"] == (  # type: ignore[attr-defined]
            f"{server.host}:{server.port or 5432}",
            "127.0.0.1:1",
        )
        assert storage.read("absent") is None  # the first host answers


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///a.db?mode=team",
        "memory://?mode=team",
        "redis://127.0.0.1:1/0?mode=team",
        "postgresql+psycopg://u@127.0.0.1:1/db?mode=team",
        "mysql+pymysql://u@127.0.0.1:1/db?table=t&mode=team",
    ],
)
def test_a_mode_in_the_query_is_refused(url: str) -> None:
    # PostgreSQL and MySQL URLs dropped it: an agent storage opened where a team one was meant.
    with pytest.raises(InvalidIdentifierError, match="mode= option: the mode is open_storage's"):
        open_storage(url, "agent")


def test_a_keyword_given_as_none_counts_as_not_given() -> None:
    parsed = parse_url("sqlite:///a.db?table=mine&expire=5", "team", table=None, expire=None)
    assert parsed.options == {"table": "mine", "expire": "5"}
    assert not parsed.per_mode
    assert parse_url("sqlite:///a.db", "team", table=None).per_mode
    assert open_storage("json:///d?expire=5", expire=None).expire == 5
    # A schema of None was the schema named "None".
    url = "postgresql+psycopg://u@127.0.0.1:1/db?table=t"
    with open_storage(url, schema=None) as storage:
        assert storage.schema == "ai"  # type: ignore[attr-defined]
    with open_storage(url + "&schema=mine", schema=None, table=None) as storage:
        assert (storage.schema, storage.table_name) == ("mine", "t")  # type: ignore[attr-defined]


@pytest.mark.parametrize("scheme", ["sqlite", "json", "yaml"])
@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("a%00b", "holds a NUL character"),
        ("~no_such_user_of_savegame/store", "starts with a home folder this machine does not know"),
    ],
)
def test_a_path_no_file_system_takes_is_refused_when_opened(
    scheme: str, path: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A NUL raised a plain ValueError at the first call, an unknown ~user a RuntimeError.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidIdentifierError, match=message):
        open_storage(f"{scheme}:///{path}")
    assert list(tmp_path.iterdir()) == []


def test_sqlite_refuses_an_empty_db_file_as_folders_refuse_an_empty_dir_path() -> None:
    from savegame.storage.sqlite import SqliteStorage

    # It was the current folder, which SQLite failed to open at the first call.
    with pytest.raises(InvalidIdentifierError, match="db_file is empty"):
        SqliteStorage("t", db_file="")
    with pytest.raises(InvalidIdentifierError, match="holds a NUL"):
        SqliteStorage("t", db_file=Path("a\0b"))


@pytest.mark.parametrize("path", [None, 5, b"/tmp/store"])
def test_a_file_or_folder_that_is_not_a_path_is_refused_when_made(path: Any) -> None:
    from savegame.storage.json import JsonStorage
    from savegame.storage.sqlite import SqliteStorage
    from savegame.storage.yaml import YamlStorage

    # It was a bare TypeError from os.fspath, where an empty one is InvalidIdentifierError.
    for make, what in (
        (JsonStorage, "dir_path"),
        (YamlStorage, "dir_path"),
        (lambda p: SqliteStorage("t", db_file=p), "db_file"),
    ):
        if path is None and what == "db_file":
            continue  # None is the documented "in memory"
        with pytest.raises(InvalidIdentifierError, match=f"{what} must be a str or a path"):
            make(path)


def test_a_sqlite_file_name_too_long_for_the_file_system(tmp_path: Path) -> None:
    from savegame.errors import BackendUnavailableError

    # Looking for the file raised a bare OSError (ENAMETOOLONG) from every call.
    with open_storage(f"sqlite:///{tmp_path}/{'x' * 300}.db") as storage:
        assert storage.read("s") is None
        assert storage.get_all_session_ids() == []
        with pytest.raises(BackendUnavailableError, match="unable to open database file"):
            storage.upsert(AgentSession(session_id="s"))


def test_a_parsed_url_is_shown_without_its_passwords() -> None:
    # Its repr, in a traceback or a log, showed the password three times.
    parsed = parse_url("postgresql://u:hunter%402@h/db?password=hunter3&table=t", "team")
    shown = repr(parsed)
    assert "hunter" not in shown
    assert "raw='postgresql://u:***@h/db'" in shown
    assert "path='u:***@h/db'" in shown
    assert "options={'password': '***', 'table': 't'}" in shown
    assert parsed.options["password"] == "hunter3"
    assert "hunter" not in repr(parse_url("redis://:hunter2@h:6379/0"))
    assert repr(parse_url("sqlite:////abs/x.db")).startswith(
        "StorageURL(raw='sqlite:////abs/x.db', scheme='sqlite', path='/abs/x.db', mode='agent'"
    )


@pytest.mark.skipif(sys.platform == "win32", reason="a drive is a drive on Windows")
@pytest.mark.parametrize(
    "url", ["sqlite:///C:/Users/me/app.db", "json:///c:\\sessions", "yaml:///D%3A/x", "json:///C:"]
)
def test_a_path_on_a_windows_drive_is_refused_elsewhere(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was a relative path: a folder named "C:" in the working directory took the sessions.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        InvalidIdentifierError, match=r"names a path on a Windows drive \([A-Za-z]:\)"
    ):
        open_storage(url).create()
    assert list(tmp_path.iterdir()) == []
    assert open_storage("sqlite:///C-drive.db").read("s") is None


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@127.0.0.1:0/0",
        "redis+cluster://:hunter2@127.0.0.1:7000,127.0.0.1:0",
        "redis://:hunter2@127.0.0.1:70000/0",
        "redis+cluster://:hunter2@127.0.0.1:7000,127.0.0.1:99999",
        "postgresql+psycopg://u:hunter2@127.0.0.1:0/db",
        "postgresql://u:hunter2@127.0.0.1:99999/db",
        "mysql+pymysql://u:hunter2@127.0.0.1:0/db",
        "mysql://u:hunter2@127.0.0.1:70000/db",
    ],
)
def test_a_port_no_server_has_is_refused_when_opened(url: str) -> None:
    # Port 0 was taken for the default port, another server; the others were found out at
    # the first call, as a server that cannot be reached (BackendUnavailableError).
    with pytest.raises(InvalidIdentifierError, match="1 to 65535") as caught:
        open_storage(url)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("scheme", "server"),
    [("POSTGRESQL+psycopg", postgres_url), ("Postgres", postgres_url), ("MySQL", mysql_url)],
)
def test_a_server_url_scheme_in_any_case_opens_the_server(scheme: str, server: Any) -> None:
    # SQLite, folder and Redis schemes were taken in any case; a server's was refused as
    # "a MySQL database" that is not one of MySQL.
    url = f"{scheme}://{server().partition('://')[2]}?table={unique('sg')}"
    assert parse_url(url).raw.startswith(scheme.lower() + "://")
    with open_storage(url) as storage:
        assert storage.read("absent") is None


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///app.db\n",
        "json:///sessions ",
        "redis://:hunter2@127.0.0.1:1/0\r\n",
        "postgresql://u:hunter2@127.0.0.1:1/db\n",
        "yaml:///a\tb",
    ],
)
def test_a_url_with_a_line_break_or_spaces_at_its_ends_is_refused(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read with the URL from a file or an environment variable, they became part of the
    # name: a file "app.db\n", a folder "sessions ", a database "db\n".
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidIdentifierError, match="control character") as caught:
        open_storage(url).create()
    assert "hunter2" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("url", "name"),
    [("json:///d", "lock_timeout"), ("yaml:///d", "lock_timeout"), ("sqlite://", "busy_timeout")],
)
def test_a_seconds_keyword_given_as_a_bool_is_refused(
    url: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # True is no number of seconds, as the storage classes and expire=True say; it was
    # taken for 1 second.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidIdentifierError, match=rf"{name}=True given to open_storage must be"):
        open_storage(url, **{name: True})
    assert list(tmp_path.iterdir()) == []
