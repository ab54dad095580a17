"""The public surface that code written for the original moves over to by changing its imports:
the import paths, the session classes' fields, the constructors' parameters, the storages'
methods, and the parameters by which an agent, team or workflow is given its storage."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from savegame.storage.session import MODES

SESSIONS = {
    "savegame.storage.session.agent.AgentSession": [
        "session_id",
        "user_id",
        "team_session_id",
        "workflow_session_id",
        "memory",
        "session_data",
        "extra_data",
        "created_at",
        "updated_at",
        "agent_id",
        "agent_data",
    ],
    "savegame.storage.session.team.TeamSession": [
        "session_id",
        "team_session_id",
        "workflow_session_id",
        "team_id",
        "user_id",
        "memory",
        "team_data",
        "session_data",
        "extra_data",
        "created_at",
        "updated_at",
    ],
    "savegame.storage.session.workflow.WorkflowSession": [
        "session_id",
        "user_id",
        "memory",
        "session_data",
        "extra_data",
        "created_at",
        "updated_at",
        "workflow_id",
        "workflow_data",
    ],
    "savegame.storage.session.v2.workflow.WorkflowSession": [
        "session_id",
        "user_id",
        "workflow_id",
        "workflow_name",
        "runs",
        "session_data",
        "workflow_data",
        "extra_data",
        "created_at",
        "updated_at",
    ],
}
"""Each session class, by import path, and the original's fields in their order."""

MODE_CLASSES = {
    "agent": "savegame.storage.session.agent.AgentSession",
    "team": "savegame.storage.session.team.TeamSession",
    "workflow": "savegame.storage.session.workflow.WorkflowSession",
    "workflow_v2": "savegame.storage.session.v2.workflow.WorkflowSession",
}

SQL = [
    ("db_engine", None),
    ("schema_version", 1),
    ("auto_upgrade_schema", False),
    ("mode", "agent"),
]
CONSTRUCTORS: dict[str, list[tuple[str, Any]]] = {
    "savegame.storage.sqlite.SqliteStorage": [
        ("table_name", inspect.Parameter.empty),
        ("db_url", None),
        ("db_file", None),
        *SQL,
    ],
    "savegame.storage.postgres.PostgresStorage": [
        ("table_name", inspect.Parameter.empty),
        ("schema", "ai"),
        ("db_url", None),
        *SQL,
    ],
    "savegame.storage.mysql.MySQLStorage": [
        ("table_name", inspect.Parameter.empty),
        ("schema", None),
        ("db_url", None),
        *SQL,
    ],
    "savegame.storage.json.JsonStorage": [("dir_path", inspect.Parameter.empty), ("mode", "agent")],
    "savegame.storage.yaml.YamlStorage": [("dir_path", inspect.Parameter.empty), ("mode", "agent")],
    "savegame.storage.redis.RedisStorage": [
        ("prefix", inspect.Parameter.empty),
        ("host", "localhost"),
        ("port", 6379),
        ("db", 0),
        ("password", None),
        ("mode", "agent"),
        ("ssl", False),
        ("expire", None),
        ("url", None),
    ],
    "savegame.storage.in_memory.InMemoryStorage": [("mode", "agent"), ("storage_dict", None)],
}
"""Each storage class and the parameters it takes, in the original's order, with defaults."""


def _load(path: str) -> Any:
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def test_the_documented_import_paths() -> None:
    from savegame.storage.base import Storage

    for path in [*CONSTRUCTORS, *SESSIONS]:
        assert _load(path).__name__ == path.rsplit(".", 1)[1]
    assert all(issubclass(_load(path), Storage) for path in CONSTRUCTORS)
    assert len({_load(path) for path in SESSIONS}) == 4


@pytest.mark.parametrize("path", list(SESSIONS))
def test_a_session_class_has_the_originals_fields_in_their_order(path: str) -> None:
    names = [f.name for f in dataclasses.fields(_load(path))]
    assert names == [*SESSIONS[path], "version"]
    only = _load(path)("s")  # every field but session_id is optional
    assert [getattr(only, name) for name in names] == ["s"] + [None] * (len(names) - 1)


@pytest.mark.parametrize("path", list(SESSIONS))
def test_from_dict_of_none_or_of_data_without_a_session_id_is_none(path: str) -> None:
    cls = _load(path)
    assert cls.from_dict(None) is None
    assert cls.from_dict({}) is None
    assert cls.from_dict({"user_id": "u", "created_at": 5}) is None
    assert cls.from_dict({"session_id": None, "user_id": "u"}) is None
    session = cls.from_dict({"session_id": "s", "user_id": "u", "not_a_field": 1})
    assert (session.session_id, session.user_id) == ("s", "u")
    assert all(
        v is None for k, v in session.to_dict().items() if k not in ("session_id", "user_id")
    )
    assert cls.from_dict(session.to_dict()) == session


@pytest.mark.parametrize("mode", list(MODES))
def test_a_mode_reads_and_writes_its_documented_session_class(mode: str) -> None:
    assert MODES[mode].session_class is _load(MODE_CLASSES[mode])


@pytest.mark.parametrize("path", list(CONSTRUCTORS))
def test_a_constructor_keeps_the_originals_parameters(path: str) -> None:
    parameters = list(inspect.signature(_load(path)).parameters.values())
    expected = CONSTRUCTORS[path]
    assert [(p.name, p.default) for p in parameters[: len(expected)]] == expected
    assert all(
        p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters[: len(expected)]
    )
    # What savegame adds after them is optional, so the original's calls still construct.
    assert all(p.default is not inspect.Parameter.empty for p in parameters[len(expected) :])


METHODS: dict[str, list[tuple[str, Any]]] = {
    "create": [],
    "table_exists": [],
    "read": [("session_id", inspect.Parameter.empty), ("user_id", None)],
    "upsert": [("session", inspect.Parameter.empty)],
    "get_all_session_ids": [("user_id", None), ("entity_id", None)],
    "get_all_sessions": [("user_id", None), ("entity_id", None)],
    "get_recent_sessions": [("user_id", None), ("entity_id", None), ("limit", 2)],
    "delete_session": [("session_id", None)],
    "drop": [],
    "upgrade_schema": [],
}
"""The methods every storage has and the parameters each takes in the original's order, with
defaults (after ``self``); savegame adds only keyword-only, optional ones."""


@pytest.mark.parametrize("path", list(CONSTRUCTORS))
def test_every_storage_has_the_originals_methods_with_their_parameters(path: str) -> None:
    cls = _load(path)
    for name, expected in METHODS.items():
        parameters = list(inspect.signature(getattr(cls, name)).parameters.values())[1:]
        positional = [p for p in parameters if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        assert [(p.name, p.default) for p in positional] == expected, name
        assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in positional), name
        assert all(p.default is not inspect.Parameter.empty for p in parameters[len(expected) :])


RUNTIME = {
    "savegame.agent.Agent": [
        "model",
        "storage",
        "session_id",
        "user_id",
        "add_history_to_messages",
    ],
    "savegame.team.Team": ["members", "model", "storage", "session_id", "user_id"],
    "savegame.workflow.Workflow": ["session_id", "user_id", "storage"],
}
"""What saves and resumes, and the parameters by which it is given its store and session."""


@pytest.mark.parametrize("path", list(RUNTIME))
def test_the_runtime_takes_its_storage_and_session_by_the_originals_names(path: str) -> None:
    parameters = inspect.signature(_load(path)).parameters
    assert all(
        parameters[name].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for name in RUNTIME[path]
    )
    assert parameters["storage"].default is None
    assert parameters["session_id"].default is None


ERRORS = {
    "StorageError": (Exception,),
    "InvalidIdentifierError": ("StorageError", ValueError),
    "SerializationError": ("StorageError", ValueError),
    "ConflictError": ("StorageError",),
    "BackendUnavailableError": ("StorageError",),
    "CorruptSessionError": ("StorageError",),
    "MissingDependencyError": ("StorageError", ImportError),
}
"""Each error class of ``savegame.errors`` and the classes it derives from."""


def test_the_errors_are_one_hierarchy_under_storage_error() -> None:
    import savegame
    import savegame.errors

    assert sorted(savegame.errors.__all__) == sorted(ERRORS)
    for name, bases in ERRORS.items():
        cls = getattr(savegame.errors, name)
        assert getattr(savegame, name) is cls
        assert cls.__bases__ == tuple(
            getattr(savegame.errors, b) if isinstance(b, str) else b for b in bases
        )
        assert cls is savegame.errors.StorageError or issubclass(cls, savegame.errors.StorageError)
    missing = savegame.errors.MissingDependencyError("redis", "redis")
    assert 'pip install "savegame[redis]"' in str(missing)
    assert (missing.package, missing.extra) == ("redis", "redis")
    conflict = savegame.errors.ConflictError("s", 1, 2)
    assert (conflict.session_id, conflict.expected, conflict.actual) == ("s", 1, 2)


DRIVERS = {"redis": "redis", "psycopg": "postgres", "pymysql": "mysql"}
"""The server drivers, each installed by the extra of that name, never by the core install."""

WITHOUT_DRIVERS = """
import sys, tempfile
for driver in sys.argv[1:]:
    sys.modules[driver] = None
from savegame import open_storage
from savegame.cli import app
from savegame.storage.session.agent import AgentSession
import savegame.agent, savegame.team, savegame.workflow, savegame.transfer
folder = tempfile.mkdtemp()
for url in ("sqlite:///%s/s.db" % folder, "json:///%s/j" % folder, "yaml:///%s/y" % folder,
            "memory://"):
    with open_storage(url) as storage:
        storage.upsert(AgentSession(session_id="a", user_id="u", memory={"runs": [{"n": 1}]}))
        assert storage.read("a").memory == {"runs": [{"n": 1}]}, url
        assert storage.get_all_session_ids(user_id="u") == ["a"], url
try:
    app(["copy", "sqlite:///%s/s.db" % folder, "json:///%s/k" % folder])
except SystemExit as exc:
    assert not exc.code, exc.code
print(sorted(name for name in sys.argv[1:] if sys.modules.get(name) is not None))
"""


def test_the_core_install_needs_no_server_driver() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads(
        (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text("utf-8")
    )["project"]
    core = " ".join(project["dependencies"]).lower()
    for driver, extra in DRIVERS.items():
        assert driver not in core
        assert any(d.lower().startswith(driver) for d in project["optional-dependencies"][extra])
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_DRIVERS, *DRIVERS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
