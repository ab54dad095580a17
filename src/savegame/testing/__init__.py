"""The conformance suite: one contract that every savegame backend must pass.

It ships with the package so that a backend written anywhere can be held to it. A test
module subclasses the two contract classes and provides two fixtures, both returning a
:class:`Store`::

    from savegame.testing import BackendContract, ModeContract, Store

    @pytest.fixture(params=["agent", "team", "workflow", "workflow_v2"])
    def store(request, tmp_path):            # one per backend x mode
        yield Store("mine", request.param, lambda mode, **kw: MyStorage(tmp_path, mode=mode, **kw))

    @pytest.fixture
    def backend_store(tmp_path):             # one per backend, mode "agent"
        yield Store("mine", "agent", ...)

    class TestMine(ModeContract, BackendContract):
        pass

Tests that need several processes run :mod:`savegame.testing.worker` and need ``Store.url``;
without one they skip. The tests of writes whose reply is lost need ``Store.lossy``. A test
of optional behaviour runs only where the storage class declares the capability in
:attr:`savegame.storage.base.Storage.capabilities`.

The contract is imported on first use, so the worker processes start without pytest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from savegame.testing.contract import BackendContract, LossyLink, ModeContract, Store

__all__ = ["BackendContract", "LossyLink", "ModeContract", "Store"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from savegame.testing import contract

        return getattr(contract, name)
    raise AttributeError(f"module 'savegame.testing' has no attribute {name!r}")
