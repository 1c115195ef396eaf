"""Benchmark: warm migrations (SPEC 2.9), figures only.

Two phases, each driving the service (`python -m entrypoints serve`, SQLite in
a temporary directory, access log off) through its HTTP API only:

    cutover    the cutover's downtime beside a cold run of the same source:
               a throwaway OpenSSH server (tests/sshd_server.py, 127.0.0.1 as
               the source, 127.0.0.2 as the host), a tree of --gib as --files
               files; a cold run into a fresh root (started_at to
               finished_at), then a warm migration into another fresh root:
               its first sync, --changed files rewritten on the source, and
               the cutover (`pre_cutover` a command that returns at once):
               the downtime is from the cutover's `sync_started` (its
               pre_cutover starts there) to `finished_at`. Target: at most a
               tenth of the cold run. Interleaved --repeat times, medians.
    idle       the cost of an idle replication: --idle warm migrations into
               targets without a host (simulated, --run-seconds 1) in one
               wave; the API's detail throughput (GET of a migration, run.py's
               load generator: wrk when installed) before they run, once all
               are `in_sync`, and after they are cancelled. Target: in_sync
               within 10% of cancelled (the same rows, no replication: a
               migration that never ran reads less, so before is shown apart)

Every wait is bounded; the data lives under /tmp and is removed at the end.
Only 127.0.0.0/8 is ever connected to.

    python bench/warm.py [--gib 1] [--files 8192] [--changed 10] [--idle 1000] [--seconds 5] [--repeat 3]
    python bench/warm.py --quick        # a smoke run of about a minute
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import loadgen
from run import Api, free_port, stop_process, wait_until_up  # also puts the repository on sys.path

SOURCE, HOST = "127.0.0.1", "127.0.0.2"
POLL_SECONDS = 0.25


class Service:
    """The service as a process with one signed-up user."""

    def __init__(self, workdir: Path, label: str, *options: str) -> None:
        self.port = free_port()
        self._log = open(workdir / f"{label}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "entrypoints", "serve", "--port", str(self.port),
             "--storage", f"sqlite:///{workdir / (label + '.db')}", "--secret-key", secrets.token_hex(32),
             "--access-log", "off", *options],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        wait_until_up(self.base + "/health", self.process)
        self.api = Api(self.base)
        self.api.sign_up("warm")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        return self.api.ok(method, path, body)

    def state(self, migration: int) -> dict[str, Any]:
        return self.ok("GET", f"/api/v1/migrations/{migration}/state/")  # type: ignore[no-any-return]

    def until(self, migration: int, check: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(migration)
            if check(state):
                return state
            if state["finished"] and state["state"] != "success":
                raise SystemExit(f"migration {migration} ended {state['state']}: {state['error']}")
            if time.monotonic() > deadline:
                raise SystemExit(f"migration {migration}: no {what} after {timeout:.0f} s: {state}")
            time.sleep(POLL_SECONDS)

    def events(self, migration: int, kind: str) -> list[dict[str, Any]]:
        path = f"/api/v1/migrations/{migration}/events/?kind={kind}&limit=1000"
        return self.ok("GET", path)["results"]  # type: ignore[no-any-return]

    def stop(self) -> None:
        stop_process(self.process, self._log)


def stamp(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def make_tree(directory: Path, total: int, files: int) -> list[Path]:
    directory.mkdir(parents=True)
    size = total // files
    made = []
    for n in range(files):
        folder = directory / f"d{n % 64:02d}"
        folder.mkdir(exist_ok=True)
        path = folder / f"f{n:06d}"
        path.write_bytes(os.urandom(size))
        made.append(path)
    return made


def cutover_phase(workdir: Path, args: argparse.Namespace) -> None:
    from tests.sshd_server import SshServer

    total = int(args.gib * 2**30)
    tree = workdir / "source"
    files = make_tree(tree, total, args.files)
    cold_times, downtimes = [], []
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(SshServer(stock_key_exchange=True))
        service = Service(workdir, "cutover")
        stack.callback(service.stop)
        key = {"username": server.username, "private_key": server.private_key}
        login = service.ok("POST", "/api/v1/credentials/", key)["id"]
        volume = service.ok("POST", "/api/v1/mount_points/", {"name": "/", "size": total})["id"]
        source = service.ok("POST", "/api/v1/work_loads/", {
            "ip": SOURCE, "port": server.port, "credentials": login, "storage": [volume], "os": "linux",
            "root": str(tree),
        })["id"]
        host = service.ok(
            "POST", "/api/v1/work_loads/", {"ip": HOST, "port": server.port, "credentials": login, "os": "linux"}
        )["id"]

        def migration(root: Path, **warm: Any) -> int:
            target = service.ok("POST", "/api/v1/migration_targets/", {
                "cloud_type": "vsphere", "cloud_credentials": login, "host": host, "root": str(root),
            })["id"]
            return int(service.ok("POST", "/api/v1/migrations/", {
                "source": source, "migration_target": target, "selected_mount_points": [volume], **warm,
            })["id"])

        for repetition in range(args.repeat):
            cold = migration(workdir / f"cold-{repetition}")
            service.ok("POST", f"/api/v1/migrations/{cold}/run/")
            service.until(cold, lambda s: s["finished"], args.timeout, "end")
            detail = service.ok("GET", f"/api/v1/migrations/{cold}/")
            cold_seconds = stamp(detail["finished_at"]) - stamp(detail["started_at"])

            warm = migration(workdir / f"warm-{repetition}", mode="warm", pre_cutover="true")
            service.ok("POST", f"/api/v1/migrations/{warm}/run/")
            service.until(warm, lambda s: s.get("syncs", 0) >= 1, args.timeout, "first sync")
            for path in files[: args.changed]:
                path.write_bytes(os.urandom(path.stat().st_size))
            service.ok("POST", f"/api/v1/migrations/{warm}/cutover/", {})
            service.until(warm, lambda s: s["finished"], args.timeout, "cutover")
            detail = service.ok("GET", f"/api/v1/migrations/{warm}/")
            began = max(stamp(e["at"]) for e in service.events(warm, "sync_started") if e["detail"].get("cutover"))
            downtime = stamp(detail["finished_at"]) - began
            synced = [e["detail"] for e in service.events(warm, "synced")][-1]
            cold_times.append(cold_seconds)
            downtimes.append(downtime)
            print(f"cutover rep {repetition + 1}: cold run {cold_seconds:.2f} s, warm cutover downtime"
                  f" {downtime:.2f} s ({downtime / cold_seconds:.3f} of cold); the final sync sent"
                  f" {synced['files']} files, {synced['bytes']:,} bytes", flush=True)
            for root in (workdir / f"cold-{repetition}", workdir / f"warm-{repetition}"):
                shutil.rmtree(root, ignore_errors=True)
    cold, down = statistics.median(cold_times), statistics.median(downtimes)
    print(f"cutover: {args.gib:g} GiB as {args.files} files, {args.changed} changed since the last sync;"
          f" median cold run {cold:.2f} s, median downtime {down:.2f} s, ratio {down / cold:.3f}"
          f" (target at most 0.1: {'met' if down / cold <= 0.1 else 'NOT met'})")


def idle_phase(workdir: Path, args: argparse.Namespace) -> None:
    service = Service(workdir, "idle", "--run-seconds", "1")
    try:
        login = service.ok("POST", "/api/v1/credentials/", {"username": "u", "password": "p"})["id"]
        volume = service.ok("POST", "/api/v1/mount_points/", {"name": "C:\\", "size": 10**9})["id"]
        source = service.ok(
            "POST", "/api/v1/work_loads/", {"ip": "10.1.0.1", "credentials": login, "storage": [volume]}
        )["id"]
        migrations = []
        for _ in range(args.idle):
            target = service.ok(
                "POST", "/api/v1/migration_targets/", {"cloud_type": "aws", "cloud_credentials": login}
            )["id"]
            migrations.append(service.ok("POST", "/api/v1/migrations/", {
                "source": source, "migration_target": target, "selected_mount_points": [volume], "mode": "warm",
            })["id"])
        wave = service.ok("POST", "/api/v1/waves/", {"name": "idle", "migrations": migrations})["id"]
        load = loadgen.Load(service.base, [f"/api/v1/migrations/{m}/" for m in migrations[:64]],
                            token=service.api.token)

        def measure(label: str) -> float:
            result = loadgen.run(load, seconds=args.seconds, connections=32)
            print(
                f"idle: detail {label}: {result.rps:.0f} req/s, p99 {result.p99_ms:.1f} ms, {result.errors} errors",
                flush=True,
            )
            return result.rps

        before = measure("before the replications")
        service.ok("POST", f"/api/v1/waves/{wave}/run/")
        deadline = time.monotonic() + args.timeout
        while True:
            page = service.ok("GET", f"/api/v1/migrations/?wave={wave}&limit=1000")["results"]
            in_sync = sum(m["phase"] == "in_sync" for m in page)
            if in_sync == len(migrations):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"only {in_sync} of {len(migrations)} in sync after {args.timeout:.0f} s")
            time.sleep(1)
        during = measure(f"with {len(migrations)} replications in_sync")
        service.ok("POST", f"/api/v1/waves/{wave}/cancel/")
        after = measure("after they were cancelled")
        # "None" is the same rows with no replication: a migration that never
        # ran has no snapshot or copy mark to decode, so `before` reads less.
        ratio = during / after
        print(f"idle: {len(migrations)} warm migrations in_sync: detail at {ratio:.3f} of the same migrations"
              f" cancelled (target at least 0.9: {'met' if ratio >= 0.9 else 'NOT met'}); before they ever ran"
              f" {during / before:.3f}; load generator: {'wrk' if loadgen.wrk_available() else 'python'}")
    finally:
        service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--files", type=int, default=8192)
    parser.add_argument("--changed", type=int, default=10)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--phases", default="cutover,idle")
    parser.add_argument("--quick", action="store_true", help="64 MiB, 512 files, 100 idle, one repetition")
    args = parser.parse_args()
    if args.quick:
        args.gib, args.files, args.idle, args.repeat, args.seconds = 1 / 16, 512, 100, 1, 2.0
    print(f"load at the start: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as folder:
        workdir = Path(folder)
        for phase in args.phases.split(","):
            {"cutover": cutover_phase, "idle": idle_phase}[phase](workdir, args)
    print(f"load at the end: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
