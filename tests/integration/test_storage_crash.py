"""Crash safety with a real process: a writer acknowledges each object once its
use case has returned, is killed with SIGKILL in the middle of its stream, and
the database it leaves (an SQLite file, a PostgreSQL database) holds every
acknowledged object; the SQLite file passes SQLite's own integrity check."""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import migration_core as core
from entrypoints.bootstrap import open_storage

from .storages import SQL_STORAGES, storage_url

SECRET = b"crash-suite-secret-key-of-32-byte"
ACKNOWLEDGED_BEFORE_KILL = 150

WRITER = """
import itertools, sys
from pathlib import Path
import migration_core as core
from entrypoints.bootstrap import open_storage

def acknowledge(*fields):
    # One write per line: print() writes each field apart when output is unbuffered.
    sys.stdout.write(" ".join(map(str, fields)) + "\\n")
    sys.stdout.flush()

storage = open_storage(sys.argv[1], bytes.fromhex(sys.argv[2]))
with storage.unit_of_work() as uow:
    owner = uow.users.add(core.User("writer", "not-a-real-hash")).id
    uow.commit()
acknowledge("owner", owner, owner)
for i in itertools.count():
    c = core.create_credentials(storage, owner, username=f"user{i}", password=f"pw{i}")
    acknowledge("credentials", c.id, i)
    m = core.create_mount_point(storage, owner, name=f"vol{i}", size=i)
    acknowledge("mount_point", m.id, i)
    ip = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
    w = core.create_workload(storage, owner, ip=ip, credentials_id=c.id, mount_point_ids=[m.id])
    acknowledge("workload", w.id, i)
"""


def _acknowledgment(line: str) -> tuple[str, int, int]:
    fields = line.split()
    assert len(fields) == 3, f"the writer printed {line!r}, not an acknowledgment"
    entity, entity_id, i = fields
    return entity, int(entity_id), int(i)


def _lines(stream: subprocess.IO[str], into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


@pytest.mark.parametrize("kind", SQL_STORAGES)
def test_a_killed_writer_loses_no_acknowledged_object(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = storage_url(kind, request, tmp_path, schema=True)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, url, SECRET.hex()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_lines, args=(writer.stdout, lines), daemon=True).start()
    acknowledged: list[tuple[str, int, int]] = []
    try:
        while len(acknowledged) < ACKNOWLEDGED_BEFORE_KILL:
            line = lines.get(timeout=60)
            assert line is not None, f"the writer stopped on its own: {writer.stderr.read()}"  # type: ignore[union-attr]
            acknowledged.append(_acknowledgment(line))
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    # Whatever it printed whole before dying was acknowledged too; a line the
    # kill cut short (no newline) was not.
    while (line := lines.get(timeout=30)) is not None:
        if line.endswith("\n"):
            acknowledged.append(_acknowledgment(line))
    assert writer.returncode == -signal.SIGKILL

    if kind == "sqlite":
        with sqlite3.connect(url[len("sqlite:///") :]) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
        raw.close()

    storage = open_storage(url, SECRET)
    try:
        (_, owner, _), *objects = acknowledged
        for entity, entity_id, i in objects:
            if entity == "credentials":
                stored = core.get_credentials(storage, owner, entity_id)
                assert (stored.username, stored.password) == (f"user{i}", f"pw{i}")
            elif entity == "mount_point":
                assert core.get_mount_point(storage, owner, entity_id).name == f"vol{i}"
            else:
                workload = core.get_workload(storage, owner, entity_id)
                assert len(workload.mount_point_ids) == 1
                assert core.get_mount_point(storage, owner, workload.mount_point_ids[0]).size == i
    finally:
        storage.close()
