"""Several instances of the real service on one database (an SQLite file, a
PostgreSQL database): a run belongs to the instance that started it, whatever
the others do; a run whose instance died is interrupted by a live one within
two lease periods; starts and login failures are counted across instances.
And `--workers`: several processes on one port, stopped by one signal."""

from __future__ import annotations

import re
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .service_process import PATIENCE, ServiceProcess, plan_migration, sign_up, wait_for

LEASE = 1.0  # seconds: short, so that a lapse is seen quickly
# Seconds of A's run: it must outlast B's stop, restart and kill and two lease
# periods after them, however loaded the machine.
LONG_RUN = "15"


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def pair(storage_url: str, tmp_path: Path) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    a = ServiceProcess(storage_url, tmp_path, "a", "--lease-seconds", str(LEASE))
    b = ServiceProcess(storage_url, tmp_path, "b", "--lease-seconds", str(LEASE))
    yield a, b
    a.kill()
    b.kill()


def state(service: ServiceProcess, token: str, migration_id: int) -> dict[str, Any]:
    answer: dict[str, Any] = service.ok("GET", f"/api/v1/migrations/{migration_id}/", token=token)
    return answer


def test_a_run_on_a_succeeds_while_b_stops_restarts_and_is_killed(
    pair: tuple[ServiceProcess, ServiceProcess],
) -> None:
    a, b = pair
    a.start("--run-seconds", LONG_RUN)
    b.start("--run-seconds", LONG_RUN)
    token = sign_up(a, "alice")
    migration = plan_migration(a, token, "10.0.0.1")
    a.ok("POST", f"/api/v1/migrations/{migration}/run/", token=token, status=202)

    assert b.stop(signal.SIGTERM) == 0, b.log()
    assert state(a, token, migration)["state"] == "running"
    b.start("--run-seconds", LONG_RUN)
    assert state(b, token, migration)["state"] == "running"
    b.stop(signal.SIGKILL)
    time.sleep(2 * LEASE)  # B's leftovers, if it had any, would be found by now
    assert state(a, token, migration)["state"] == "running"

    done = wait_for(
        "the run on A to end", lambda: (s := state(a, token, migration))["finished_at"] and s, longest=0.25
    )
    assert (done["state"], done["error"], done["progress"]) == ("success", None, 100), done
    target = a.ok("GET", f"/api/v1/migration_targets/{done['migration_target']}/", token=token)
    assert [v["name"] for v in target["target_vm"]["storage"]] == ["C:\\", "D:\\"]


def test_a_killed_instance_s_run_is_interrupted_by_the_other_and_runs_again_there(
    pair: tuple[ServiceProcess, ServiceProcess],
) -> None:
    a, b = pair
    a.start("--run-seconds", "60")
    b.start("--run-seconds", "1")
    token = sign_up(b, "alice")
    migration = plan_migration(b, token, "10.0.0.2")
    a.ok("POST", f"/api/v1/migrations/{migration}/run/", token=token, status=202)
    wait_for("progress on A", lambda: state(b, token, migration)["progress"] > 0)

    a.stop(signal.SIGKILL)
    killed = time.monotonic()
    interrupted = wait_for(
        "B to mark the run interrupted",
        lambda: (s := state(b, token, migration))["state"] == "error" and s,
    )
    noticed = time.monotonic() - killed
    assert interrupted["error"] == "interrupted"
    # Within two lease periods, give or take the time a poll takes here.
    assert noticed <= 2 * LEASE + 1.0, noticed

    b.ok("POST", f"/api/v1/migrations/{migration}/run/", token=token, status=202)
    done = wait_for(
        "the run on B to end", lambda: (s := state(b, token, migration))["finished_at"] and s, longest=0.25
    )
    assert done["state"] == "success", done


def test_twenty_run_requests_spread_over_both_instances_start_the_migration_once(
    pair: tuple[ServiceProcess, ServiceProcess],
) -> None:
    a, b = pair
    a.start("--run-seconds", "30")
    b.start("--run-seconds", "30")
    token = sign_up(a, "alice")
    migration = plan_migration(a, token, "10.0.0.3")
    statuses: list[int] = []
    gate = threading.Barrier(20)

    def run(service: ServiceProcess) -> None:
        gate.wait()
        statuses.append(service.call("POST", f"/api/v1/migrations/{migration}/run/", token=token)[0])

    threads = [threading.Thread(target=run, args=(a if i % 2 else b,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE)
    assert sorted(statuses) == [202] + [409] * 19


def test_ten_failed_logins_spread_over_both_lock_the_username_on_both(
    pair: tuple[ServiceProcess, ServiceProcess],
) -> None:
    a, b = pair
    a.start()
    b.start()
    sign_up(a, "alice", "the right password")
    for attempt in range(10):
        service = a if attempt % 2 else b
        status, _ = service.call("POST", "/api/v1/token/", {"username": "alice", "password": "wrong one!"})
        assert status == 401
    for service in (a, b):
        status, body = service.call("POST", "/api/v1/token/", {"username": "alice", "password": "the right password"})
        assert status == 429, body


def test_two_workers_answer_on_one_port_and_one_sigterm_stops_both(tmp_path: Path) -> None:
    service = ServiceProcess(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path, "workers", "--workers", "2")
    try:
        service.start()
        # New connections are spread over the workers by the kernel (by their
        # source ports); keep making them until each worker has answered one.
        def pids_answering() -> set[str] | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{service.port}/health", timeout=PATIENCE) as answer:
                assert answer.status == 200
            pids = set(re.findall(r"aiohttp\.access\[(\d+)\]: .*GET /health", service.log()))
            return pids if len(pids) == 2 else None

        answered_by = wait_for("both workers to answer", pids_answering)
        assert len(answered_by) == 2
        assert service.stop(signal.SIGTERM) == 0, service.log()
        for pid in answered_by:
            assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the supervisor"
    finally:
        service.kill()


def test_workers_end_with_their_supervisor_however_it_ends(tmp_path: Path) -> None:
    service = ServiceProcess(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path, "workers", "--workers", "2")
    try:
        service.start()
        assert service.process is not None
        supervisor = service.process.pid

        def workers() -> list[int] | None:
            children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
            return [int(pid) for pid in children] if len(children) == 2 else None

        started = wait_for("two workers", workers)
        service.stop(signal.SIGKILL)  # no chance to stop them itself
        wait_for("the workers to end", lambda: not any(Path(f"/proc/{pid}").exists() for pid in started))
    finally:
        service.kill()


def test_workers_cannot_share_memory_storage(tmp_path: Path) -> None:
    service = ServiceProcess("memory://", tmp_path, "memory", "--workers", "2")
    with pytest.raises(AssertionError, match="MIGRATION_WORKERS / --workers"):
        service.start()
