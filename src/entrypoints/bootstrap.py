"""The composition root: the one place that chooses adapters."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from migration_core import Storage

from adapters.memory import MemoryStorage


class BadSetting(ValueError):
    """A configuration value that cannot be used; the message names the setting."""


def open_storage(url: str, secret_key: bytes) -> Storage:
    """`memory://` or `sqlite:///relative/path.db` / `sqlite:////absolute/path.db`."""
    parts = urlsplit(url)
    if parts.scheme == "memory":
        return MemoryStorage()
    if parts.scheme == "sqlite":
        from adapters.sqlite import SqliteStorage

        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path:
            raise BadSetting(f"storage: {url!r} names no file; use sqlite:///path/to/file.db")
        return SqliteStorage(Path(path), secret_key)
    raise BadSetting(f"storage: {url!r} is not a memory:// or sqlite:/// URL")
