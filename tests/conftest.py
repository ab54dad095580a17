"""Fixtures every test file can use: a store of each backend, in each mode."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from savegame.storage.session import MODES
from savegame.testing import Store
from tests.stores import Backend, backend_params

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    # A shell ignores Ctrl-C for what it starts in the background (`make test &`), and
    # every process the tests start would inherit that: the Ctrl-C tests' commands would
    # run to their end. A handler, unlike SIG_IGN, is not inherited.
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(params=backend_params())
def backend(request: pytest.FixtureRequest) -> Backend:
    """One backend: the suite runs once per entry of ``tests.stores.BACKENDS``."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    """One storage mode."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def store(backend: Backend, mode: str, tmp_path: Path) -> Iterator[Store]:
    """An isolated store of every backend, in every mode."""
    with backend.make(tmp_path, mode) as made:
        yield made


@pytest.fixture
def backend_store(backend: Backend, tmp_path: Path) -> Iterator[Store]:
    """An isolated store of every backend, in mode ``agent``."""
    with backend.make(tmp_path, "agent") as made:
        yield made


@pytest.fixture
def admin(server: str) -> Iterator[Engine]:
    """An engine of its own on the database server of the test file's ``server`` fixture,
    to look at or change the database behind savegame's back."""
    engine = create_engine(server)
    yield engine
    engine.dispose()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Gives the random-history tests room to shrink a failure: Hypothesis may spend up to
    300 s shrinking, the suite's default timeout, after finding it."""
    for item in items:
        if item.name.startswith("test_random_histories_"):
            item.add_marker(pytest.mark.timeout(900))
