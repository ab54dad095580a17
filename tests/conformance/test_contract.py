"""Every backend and mode through the one contract of :mod:`savegame.testing`.

The fixtures ``store`` and ``backend_store`` come from ``tests/conftest.py``; a new backend
joins by adding an entry to ``tests/stores.py``.
"""

from savegame.testing import BackendContract, ModeContract


class TestModeContract(ModeContract):
    """The contract in every mode."""


class TestBackendContract(BackendContract):
    """The contract parts that do not depend on the mode."""
