"""Sessions as indented JSON files, one per session: ``JsonStorage("sessions/")``."""

from __future__ import annotations

from savegame.storage.codec import dumps_pretty, loads_finite
from savegame.storage.files import FileFormat, FileStorage, open_folder
from savegame.storage.url import StorageURL


class JsonStorage(FileStorage):
    """One ``<session_id>.json`` file per session in ``dir_path`` (see :mod:`.files`)."""

    format = FileFormat("json", ".json", dumps_pretty, loads_finite)


def from_url(url: StorageURL) -> JsonStorage:
    """``json:///relative/dir`` or ``json:////absolute/dir``."""
    return open_folder(JsonStorage, url)
