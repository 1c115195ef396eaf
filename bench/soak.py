"""Soak: the real service (SQLite in a temporary directory) under minutes of
mixed traffic from a few concurrent clients on 127.0.0.1: creates, reads,
lists, updates, runs, cancels and deletes. Expected: no 5xx, a flat resident
memory, and at the end every object each client created and did not delete
is in its lists, and nothing else is.

    .venv-test/bin/python bench/soak.py --minutes 10

Not part of `make test`; figures go to docs/benchmarks.md."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

API = "/api/v1"
PASSWORD = "soak test password"
KINDS = ("credentials", "mount_points", "work_loads", "migration_targets", "migrations")
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Stats:
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    requests: int = 0


@dataclass
class Ledger:
    """What one client believes it owns, by kind."""

    ids: dict[str, set[int]] = field(default_factory=lambda: {kind: set() for kind in KINDS})


class Client:
    def __init__(self, base: str, name: str, stats: Stats, rng: random.Random) -> None:
        self.base = base
        self.name = name
        self.stats = stats
        self.rng = rng
        self.ledger = Ledger()
        self.token = ""
        self.session = aiohttp.ClientSession(timeout=REQUEST_TIMEOUT)
        self.ips = (f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}" for n in range(1, 2**24))

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.session.request(method, self.base + path, json=body, headers=headers) as answer:
            text = await answer.text()
            self.stats.requests += 1
            self.stats.statuses[answer.status] += 1
            if answer.status >= 500:
                self.stats.server_errors.append(f"{method} {path} -> {answer.status} {text[:200]}")
            return answer.status, (await answer.json() if text and answer.content_type == "application/json" else None)

    async def sign_up(self) -> None:
        login = {"username": self.name, "password": PASSWORD}
        status, _ = await self.call("POST", f"{API}/auth/", login)
        assert status == 201, status
        status, tokens = await self.call("POST", f"{API}/token/", login)
        assert status == 200, status
        self.token = tokens["access"]

    async def create(self, kind: str, body: dict[str, Any]) -> int | None:
        status, answer = await self.call("POST", f"{API}/{kind}/", body)
        if status == 201:
            self.ledger.ids[kind].add(answer["id"])
            return int(answer["id"])
        return None

    async def delete(self, kind: str, object_id: int) -> None:
        status, _ = await self.call("DELETE", f"{API}/{kind}/{object_id}/")
        if status in (204, 404):
            self.ledger.ids[kind].discard(object_id)

    async def plan(self) -> int | None:
        """Credentials, C:\\ and D:\\, a workload, a target and a migration."""
        credentials = await self.create("credentials", {"username": "admin", "password": "pw-soak"})
        volumes = [await self.create("mount_points", {"name": name, "size": 10**9}) for name in ("C:\\", "D:\\")]
        if credentials is None or None in volumes:
            return None
        workload = await self.create(
            "work_loads", {"ip": next(self.ips), "credentials": credentials, "storage": volumes}
        )
        target = await self.create("migration_targets", {"cloud_type": "aws", "cloud_credentials": credentials})
        if workload is None or target is None:
            return None
        return await self.create(
            "migrations", {"source": workload, "migration_target": target, "selected_mount_points": volumes}
        )

    async def step(self) -> None:
        """One action, drawn at random, on this client's own objects."""
        roll = self.rng.random()
        migrations = sorted(self.ledger.ids["migrations"])
        if roll < 0.15 or not migrations:
            await self.plan()
        elif roll < 0.35:
            await self.call("POST", f"{API}/migrations/{self.rng.choice(migrations)}/run/")
        elif roll < 0.45:
            await self.call("POST", f"{API}/migrations/{self.rng.choice(migrations)}/cancel/")
        elif roll < 0.60:
            await self.call("GET", f"{API}/migrations/{self.rng.choice(migrations)}/state/")
        elif roll < 0.75:
            kind = self.rng.choice(KINDS)
            await self.call("GET", f"{API}/{kind}/?limit=50&ordering=-id")
        elif roll < 0.85:
            mount_points = sorted(self.ledger.ids["mount_points"])
            if mount_points:
                await self.call("PATCH", f"{API}/mount_points/{self.rng.choice(mount_points)}/",
                                {"size": self.rng.randrange(10**9)})
        else:
            await self.delete_a_plan(self.rng.choice(migrations))

    async def delete_a_plan(self, migration_id: int) -> None:
        """The migration, then what it referred to, in an order the rules allow
        (a running one answers 409 and stays)."""
        status, migration = await self.call("GET", f"{API}/migrations/{migration_id}/")
        if status != 200:
            return
        await self.delete("migrations", migration_id)
        if migration_id in self.ledger.ids["migrations"]:
            return
        status, workload = await self.call("GET", f"{API}/work_loads/{migration['source']}/")
        status_target, target = await self.call("GET", f"{API}/migration_targets/{migration['migration_target']}/")
        await self.delete("work_loads", migration["source"])
        await self.delete("migration_targets", migration["migration_target"])
        if status == 200:
            for mount_point in workload["storage"]:
                await self.delete("mount_points", mount_point)
            await self.delete("credentials", workload["credentials"])
        if status_target == 200:
            await self.delete("credentials", target["cloud_credentials"])

    async def listed(self) -> dict[str, set[int]]:
        found: dict[str, set[int]] = {}
        for kind in KINDS:
            ids: set[int] = set()
            offset = 0
            while True:
                status, page = await self.call("GET", f"{API}/{kind}/?limit=1000&offset={offset}")
                assert status == 200, status
                ids |= {item["id"] for item in page["results"]}
                offset += 1000
                if page["next"] is None:
                    break
            found[kind] = ids
        return found


async def drive(base: str, minutes: float, clients: int, seed: int, service_pid: int) -> int:
    stats = Stats()
    rng = random.Random(seed)
    users = [Client(base, f"soak{i}", stats, random.Random(rng.random())) for i in range(clients)]
    rss: list[tuple[float, int]] = []
    started = time.monotonic()
    deadline = started + minutes * 60
    try:
        for user in users:
            await user.sign_up()

        async def work(user: Client) -> None:
            while time.monotonic() < deadline:
                await user.step()

        async def sample() -> None:
            while time.monotonic() < deadline:
                rss.append((time.monotonic() - started, rss_kib(service_pid)))
                await asyncio.sleep(5)

        await asyncio.gather(sample(), *(work(user) for user in users))
        # Let the last runs finish or be cancelled, then account for everything.
        mismatches = []
        for user in users:
            listed = await user.listed()
            for kind in KINDS:
                if listed[kind] != user.ledger.ids[kind]:
                    missing = user.ledger.ids[kind] - listed[kind]
                    extra = listed[kind] - user.ledger.ids[kind]
                    mismatches.append(f"{user.name} {kind}: missing {sorted(missing)[:10]}, extra {sorted(extra)[:10]}")
    finally:
        for user in users:
            await user.session.close()

    elapsed = time.monotonic() - started
    rate = stats.requests / elapsed
    print(f"duration: {elapsed:.0f} s, clients: {clients}, requests: {stats.requests} ({rate:.0f}/s)")
    print("statuses: " + ", ".join(f"{code}: {count}" for code, count in sorted(stats.statuses.items())))
    print(f"5xx: {len(stats.server_errors)}")
    for line in stats.server_errors[:10]:
        print(f"  {line}")
    if rss:
        values = [kib for _, kib in rss]
        quarter = max(1, len(values) // 4)
        early, late = sum(values[:quarter]) / quarter, sum(values[-quarter:]) / quarter
        print(f"RSS (MiB): first {values[0] / 1024:.1f}, min {min(values) / 1024:.1f}, max {max(values) / 1024:.1f},"
              f" last {values[-1] / 1024:.1f}; mean of first quarter {early / 1024:.1f},"
              f" of last quarter {late / 1024:.1f} ({len(values)} samples)")
    owned = {kind: sum(len(user.ledger.ids[kind]) for user in users) for kind in KINDS}
    print("objects held at the end: " + ", ".join(f"{kind} {count}" for kind, count in owned.items()))
    print(f"ledger vs lists: {'all accounted for' if not mismatches else 'MISMATCH'}")
    for line in mismatches:
        print(f"  {line}")
    return 1 if stats.server_errors or mismatches else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to drive traffic (default 10)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients, one user each (default 4)")
    parser.add_argument("--run-seconds", type=float, default=2.0, help="duration of a simulated copy (default 2)")
    parser.add_argument("--seed", type=int, default=7)
    arguments = parser.parse_args()
    if not 0 < arguments.minutes <= 120 or not 1 <= arguments.clients <= 32:
        parser.error("--minutes must be in (0, 120] and --clients in [1, 32]")

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="soak-") as directory:
        command = [
            sys.executable, "-m", "entrypoints", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--storage", f"sqlite:///{directory}/soak.db", "--run-seconds", str(arguments.run_seconds),
        ]
        log = open(Path(directory) / "service.log", "w")
        service = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            for _ in range(200):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if service.poll() is not None:
                        log_text = (Path(directory) / "service.log").read_text()
                        raise SystemExit(f"the service did not start:\n{log_text}") from None
                    time.sleep(0.1)
            code = asyncio.run(drive(f"http://127.0.0.1:{port}", arguments.minutes, arguments.clients,
                                     arguments.seed, service.pid))
            size = sum(path.stat().st_size for path in Path(directory).glob("soak.db*"))
            print(f"database files: {size / 1024 / 1024:.1f} MiB")
        finally:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                service.kill()
            log.close()
        tracebacks = (Path(directory) / "service.log").read_text().count("Traceback")
        print(f"tracebacks in the service log: {tracebacks}")
    return code or (1 if tracebacks else 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
