"""Benchmark: detail requests while event streams are open and migrations run.

Starts the service (SQLite in a temporary directory; runs take 60 seconds, the
default, so each running migration's progress changes more than once a second
and every stream gets a progress message a second per migration), sets the
stage through the API (one user: 100 credentials for the detail paths and
`--runs` migrations, each with its own workload and target), then in each
repetition measures detail with the same load generator as run.py:

    detail                 nothing running, no stream open
    detail-under-runs      the migrations running
    detail-under-streams   the migrations running and `--streams` streams of
                           that user open (each carries every migration's
                           progress: the most a stream fan-out has to write)

The streams are read by a child process (this script with `--consume`), so
their reading does not share a process with the load generator. Figures only,
no pass or fail; see docs/benchmarks.md.

    python bench/streams.py [--streams 200] [--runs 100] [--seconds 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import aiohttp

import loadgen
import run

HERE = Path(__file__).resolve().parent
RUN_SECONDS = 60


def start_service(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = run.free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "entrypoints",
            "serve",
            "--port",
            str(port),
            "--storage",
            f"sqlite:///{workdir / 'bench.db'}",
            "--secret-key",
            os.urandom(32).hex(),
            "--run-seconds",
            str(RUN_SECONDS),
            "--access-log",
            "off",
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    run.wait_until_up(base + "/health", process)
    return process, base


def stage(base: str, runs: int) -> tuple[run.Api, list[str], list[int]]:
    api = run.Api(base)
    api.sign_up("streams")
    credentials = run.parallel(
        [
            lambda i=i: api.ok("POST", "/api/v1/credentials/", {"username": f"u{i}", "password": "pw"})
            for i in range(100)
        ]
    )
    detail = [f"/api/v1/credentials/{c['id']}/" for c in credentials]  # type: ignore[index]

    def migration(i: int) -> int:
        volumes = [api.ok("POST", "/api/v1/mount_points/", {"name": name, "size": 10**11}) for name in ("C:\\", "D:\\")]
        workload = api.ok(
            "POST",
            "/api/v1/work_loads/",
            {
                "ip": f"10.{i // 256}.{i % 256}.1",
                "credentials": credentials[0]["id"],  # type: ignore[index]
                "storage": [v["id"] for v in volumes],
            },
        )
        target = api.ok(
            "POST", "/api/v1/migration_targets/", {"cloud_type": "aws", "cloud_credentials": credentials[0]["id"]}
        )  # type: ignore[index]
        found = api.ok(
            "POST",
            "/api/v1/migrations/",
            {
                "source": workload["id"],
                "migration_target": target["id"],
                "selected_mount_points": [v["id"] for v in volumes],
            },
        )
        return int(found["id"])  # type: ignore[call-overload]

    return api, detail, [int(i) for i in run.parallel([lambda i=i: migration(i) for i in range(runs)])]  # type: ignore[call-overload]


class Consumer:
    """The child process holding the streams open."""

    def __init__(self, base: str, token: str, streams: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--consume", base, token, str(streams)],
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline().decode().strip()
        if ready != "ready":
            raise SystemExit(f"the stream consumer did not start: {ready!r}")

    def stop(self) -> dict[str, float]:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=60)
        return json.loads(out.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


async def consume(base: str, token: str, count: int) -> None:
    """Open `count` streams, read them until SIGTERM, print what they carried."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    totals = {"messages": 0, "bytes": 0, "progress": 0, "ended": 0}
    opened = asyncio.Event()
    connected = 0

    async def read(session: aiohttp.ClientSession) -> None:
        nonlocal connected
        async with session.get(f"{base}/api/v1/events/stream/", headers={"Authorization": f"Bearer {token}"}) as answer:
            assert answer.status == 200, answer.status
            connected += 1
            if connected == count:
                opened.set()
            async for chunk in answer.content.iter_any():
                totals["bytes"] += len(chunk)
                totals["messages"] += chunk.count(b"\n\n")
                totals["progress"] += chunk.count(b"event: progress")
        totals["ended"] += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        tasks = [asyncio.create_task(read(session)) for _ in range(count)]
        await opened.wait()
        print("ready", flush=True)
        started = time.monotonic()
        await stop.wait()
        seconds = time.monotonic() - started
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({**totals, "seconds": seconds, "streams": count}), flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--consume":
        asyncio.run(consume(sys.argv[2], sys.argv[3], int(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if 2 * args.seconds + 15 > RUN_SECONDS:
        raise SystemExit(f"two measurements must fit in a run of {RUN_SECONDS} s: lower --seconds")
    generator = "wrk" if loadgen.wrk_available() else "python aiohttp client"
    print(
        f"# load generator: {generator}; {args.connections} connections, {args.seconds:g} s a measurement; "
        f"{args.streams} streams, {args.runs} migrations of {RUN_SECONDS} s; {os.cpu_count()} cores",
        flush=True,
    )

    results: dict[str, list[loadgen.Result]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    carried: list[dict[str, float]] = []
    rss: list[float] = []
    with tempfile.TemporaryDirectory(prefix="migration-streams-") as tmp:
        service, base = start_service(Path(tmp))
        try:
            api, detail_paths, migrations = stage(base, args.runs)
            detail = loadgen.Load(base, detail_paths, token=api.token)

            def go(name: str) -> None:
                before = run.cpu_seconds(service.pid)
                result = loadgen.run(detail, seconds=args.seconds, connections=args.connections)
                results[name].append(result)
                cpu[name].append((run.cpu_seconds(service.pid) - before) / args.seconds)
                print(
                    f"{name:24s} {result.rps:9.0f} req/s  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                    f"errors {result.errors}  service CPU {cpu[name][-1]:4.0%}",
                    flush=True,
                )

            for repetition in range(1, args.repeat + 1):
                print(f"# repetition {repetition}", flush=True)
                go("detail")
                run.parallel([lambda i=i: api.ok("POST", f"/api/v1/migrations/{i}/run/") for i in migrations])
                time.sleep(2)  # every run past its first progress step
                go("detail-under-runs")
                consumer = Consumer(base, str(api.token), args.streams)
                go("detail-under-streams")
                rss.append(run.rss_mb(service.pid))
                got = consumer.stop()
                carried.append(got)
                print(
                    f"{'':24s} streams carried {got['messages'] / got['seconds']:.0f} messages/s "
                    f"({got['progress'] / got['seconds']:.0f} progress), "
                    f"{got['bytes'] / got['seconds'] / 1e6:.1f} MB/s; "
                    f"{got['ended']:.0f} ended early",
                    flush=True,
                )
                run.parallel([lambda i=i: api.call("POST", f"/api/v1/migrations/{i}/cancel/") for i in migrations])
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=60)

    def med(name: str, field: str) -> float:
        return statistics.median(getattr(r, field) for r in results[name])

    print(f"\n# medians of {args.repeat}")
    for name in results:
        print(
            f"{name:24s} {med(name, 'rps'):9.0f} req/s  p50 {med(name, 'p50_ms'):7.2f} ms  "
            f"p99 {med(name, 'p99_ms'):7.2f} ms  errors {sum(r.errors for r in results[name])}  "
            f"service CPU {statistics.median(cpu[name]):4.0%}"
        )
    rate = statistics.median(c["messages"] / c["seconds"] for c in carried)
    print(
        f"messages the streams carried: {rate:.0f} a second;"
        f" service memory (RSS) with the streams open: {max(rss):.0f} MB"
    )


if __name__ == "__main__":
    main()
