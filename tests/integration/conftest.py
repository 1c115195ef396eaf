from collections.abc import Iterator
from pathlib import Path

import pytest

from .service_process import ServiceProcess


@pytest.fixture
def fresh_service(tmp_path: Path) -> Iterator[ServiceProcess]:
    """The service as a user first runs it, not yet started: an SQLite file
    under `tmp_path`, no MIGRATION_ variable, the secret key generated and kept
    beside the file; runs end at once. Killed at the end if a test left it running."""
    database = tmp_path / "data" / "migration.db"
    running = ServiceProcess(
        f"sqlite:///{database}", tmp_path, "service", "--run-seconds", "0", secret_key=None, password_cost=None
    )
    try:
        yield running
    finally:
        running.kill()
