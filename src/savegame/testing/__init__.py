"""The conformance suite: one contract that every savegame backend must pass.

It ships with the package so that a backend written anywhere can be held to it; it needs
pytest and Hypothesis (``pip install "savegame[testing]"``), and importing the contract
without them raises :class:`~savegame.errors.MissingDependencyError`. A test module
subclasses the two contract classes and provides two fixtures, each yielding a
:class:`Store` and closing its storages afterwards (the README's "Testing a backend of your
own" has a whole file)::

    from savegame.storage.session import MODES
    from savegame.testing import BackendContract, ModeContract, Store

    @pytest.fixture(params=list(MODES))
    def store(request, tmp_path):            # once per mode
        made = Store("mine", request.param, lambda mode, **kw: MyStorage(tmp_path, mode=mode, **kw))
        yield made
        made.close_all()

    @pytest.fixture
    def backend_store(tmp_path):             # mode "agent"
        ...

    class TestMine(ModeContract, BackendContract):
        pass

Tests that need several processes run :mod:`savegame.testing.worker` and need ``Store.url``,
which :func:`savegame.open_storage` opens (it knows savegame's own schemes only); without
one they skip. The tests of writes whose reply is lost need ``Store.lossy``, and
those that damage a store behind savegame's back the other fields of :class:`Store`; each
skips, naming the field, where it is not given. A test of optional behaviour runs only where
the storage class declares the capability in
:attr:`savegame.storage.base.Storage.capabilities` (the names of
:data:`savegame.storage.base.CAPABILITIES`).

What a backend written from scratch must do beyond the primitives of
:mod:`savegame.storage.base` (write JSON text with :mod:`savegame.storage.codec`, override
``table_exists`` and ``store_names``, keep the sessions of other modes apart) is in that
README section.

The contract is imported on first use, so the worker processes start without pytest.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from savegame.testing.contract import BackendContract, LossyLink, ModeContract, Store

__all__ = ["BackendContract", "LossyLink", "ModeContract", "Store"]


_CHECKS = ("savegame.testing.contract", "savegame.testing.history", "savegame.testing.sample")
"""The modules whose ``assert`` statements are the suite's checks."""


def __getattr__(name: str) -> Any:
    if name in __all__:
        _rewrite_asserts()
        from savegame.testing import contract

        return getattr(contract, name)
    raise AttributeError(f"module 'savegame.testing' has no attribute {name!r}")


def _rewrite_asserts() -> None:
    """Has pytest rewrite the checks' ``assert`` statements, as it does a test module's, so
    that a failed one says what it compared: pytest rewrites only the test modules, and an
    assert of a module installed elsewhere would fail with a bare ``AssertionError``. Done
    before the modules are imported (afterwards it cannot); without pytest, nothing."""
    try:
        import pytest
    except ModuleNotFoundError:
        return  # importing the contract raises MissingDependencyError, naming the extra
    fresh = [module for module in _CHECKS if module not in sys.modules]
    if fresh:
        pytest.register_assert_rewrite(*fresh)
