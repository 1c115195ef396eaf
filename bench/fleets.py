"""Benchmark: fleets. Starts the service on SQLite (in a temporary directory)
and on PostgreSQL (a server of its own, started as the tests start theirs),
imports an inventory of 10,000 rows (each with its plan, in waves of 1,000)
and runs one wave of 1,000 migrations; prints the time of each, and the
service's peak memory. The two storages take turns within each repetition.
Figures only, no pass or fail (docs/benchmarks.md).

    python bench/fleets.py [--rows 10000] [--wave 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from run import Api, free_port, wait_until_up  # also puts the repository on sys.path

HEADER = "ip,username,password,domain,volumes,cloud_type,cloud_username,cloud_password,cloud_domain,select,wave\n"


def inventory(rows: int, wave: int) -> bytes:
    lines = [
        f"10.{i // 65536}.{i // 256 % 256}.{i % 256},administrator,pw-{i},CORP,"
        f"C:\\=100GB;D:\\={i % 7 + 1}TB;E:\\=20GiB,aws,AKIA{i},secret-{i},,C:\\;D:\\,wave {i // wave + 1}\n"
        for i in range(rows)
    ]
    return (HEADER + "".join(lines)).encode()


def memory_mb(pid: int, field: str = "VmHWM") -> float:
    """The process's peak (VmHWM) or current (VmRSS) resident memory."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """The largest resident size seen while the block runs (every 20 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.largest = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.largest = max(self.largest, memory_mb(self.pid, "VmRSS"))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def post(api: Api, path: str, body: bytes, content_type: str) -> tuple[int, dict[str, object], float]:
    request = urllib.request.Request(
        api.base + path, method="POST", data=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {api.token}"},
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as answer:
        raw = answer.read()
        elapsed = time.perf_counter() - started
        return answer.status, json.loads(raw), elapsed


def one_round(rows: int, wave: int, storage: str | None) -> dict[str, float]:
    """One import and one wave run on a fresh database: `storage`, or an
    SQLite file of its own when None."""
    with tempfile.TemporaryDirectory(prefix="migration-fleets-") as tmp:
        port = free_port()
        service = subprocess.Popen(
            [
                sys.executable, "-m", "entrypoints", "serve", "--port", str(port),
                "--storage", storage or f"sqlite:///{Path(tmp) / 'bench.db'}", "--secret-key", secrets.token_hex(32),
                "--run-seconds", "3600", "--access-log", "off",
            ],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_up(base + "/health", service)
            api = Api(base)
            api.sign_up("fleet")
            idle = memory_mb(service.pid, "VmRSS")
            body = inventory(rows, wave)
            with RssSampler(service.pid) as sampler:
                status, report, import_seconds = post(api, "/api/v1/inventory/import/", body, "text/csv")
            assert status == 200 and report["created"] == rows, report
            import_peak = max(sampler.largest, memory_mb(service.pid))
            first = api.ok("GET", "/api/v1/waves/?name=wave%201")["results"][0]  # type: ignore[index]
            status, outcome, run_seconds = post(api, f"/api/v1/waves/{first['id']}/run/", b"", "application/json")
            assert status == 202 and len(outcome["started"]) == wave, outcome  # type: ignore[arg-type]
            api.ok("POST", f"/api/v1/waves/{first['id']}/cancel/")
            return {
                "import_s": import_seconds,
                "import_peak_mb": import_peak,
                "idle_mb": idle,
                "peak_mb": memory_mb(service.pid),
                "file_mb": len(body) / 2**20,
                "wave_run_s": run_seconds,
            }
        finally:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                service.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--wave", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"# fleets: import of {args.rows:,} rows, a wave run of {args.wave:,}; {os.cpu_count()} cores", flush=True)
    from tests.postgres_server import PostgresServer

    targets = {"sqlite": 10.0, "postgresql": 20.0}  # seconds for the import
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    with PostgresServer() as server:
        for repetition in range(1, args.repeat + 1):
            for name in targets:
                database = None if name == "sqlite" else server.url(server.create_database())
                figures = one_round(args.rows, args.wave, database)
                rounds[name].append(figures)
                print(
                    f"round {repetition} {name:10s}: import {figures['import_s']:.2f} s"
                    f" ({figures['file_mb']:.1f} MB file), service peak {figures['import_peak_mb']:.0f} MB"
                    f" (idle {figures['idle_mb']:.0f} MB); wave run 202 in {figures['wave_run_s']:.2f} s",
                    flush=True,
                )
    for name, target in targets.items():
        med = {key: statistics.median(r[key] for r in rounds[name]) for key in rounds[name][0]}
        print(
            f"# medians {name}: import {med['import_s']:.2f} s (target < {target:.0f} s), service peak"
            f" {med['import_peak_mb']:.0f} MB (target < 300 MB), wave run 202 in {med['wave_run_s']:.2f} s"
            " (target < 2 s)"
        )


if __name__ == "__main__":
    main()
