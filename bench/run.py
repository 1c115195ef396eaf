"""Benchmark: the service against a bare aiohttp process (the ceiling).

Starts both on loopback, drives each phase with the same load generator, and
prints one line per phase and repetition, then the medians. Bounded: every
phase runs for a fixed number of seconds; the whole run takes a few minutes.

    python bench/run.py [--seconds 5] [--repeat 3] [--connections 32]

Besides the SQLite service it starts one on PostgreSQL (a server of its own,
started as the tests start theirs, unless --postgres names one) and one with
two workers on SQLite, and measures their reads and writes in the same
repetitions, so the ratios between them come from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import loadgen

HERE = Path(__file__).resolve().parent
PASSWORD = "bench password 1"
sys.path.insert(0, str(HERE.parent))  # the tests' PostgreSQL server


def stop_process(process: subprocess.Popen[bytes], log: IO[bytes] | None = None) -> None:
    """SIGTERM, a killed process after 30 s, then its log closed."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    if log is not None:
        log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url} exited with {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {seconds} s")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Api:
    """A tiny synchronous client for setting the stage (not for measuring)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.token: str | None = None

    def call(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                raw = answer.read()
                return answer.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def ok(self, method: str, path: str, body: object = None) -> dict[str, object]:
        status, answer = self.call(method, path, body)
        if status >= 300:
            raise SystemExit(f"{method} {path} answered {status}: {answer}")
        assert isinstance(answer, dict)
        return answer

    def sign_up(self, username: str) -> int:
        user = self.ok("POST", "/api/v1/auth/", {"username": username, "password": PASSWORD})
        self.token = str(
            self.ok("POST", "/api/v1/token/", {"username": username, "password": PASSWORD})[
                "access"
            ]
        )
        return int(user["id"])  # type: ignore[call-overload]


def parallel(jobs: list[Callable[[], object]], workers: int = 16) -> list[object]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda job: job(), jobs))


class Service:
    """One `serve` process on `storage`, with a user owning 100 credentials:
    what the detail, list and create phases read and write."""

    def __init__(
        self, storage: str, secret: str, access_log: str, *extra: str, log: Path | None = None, src: Path | None = None
    ) -> None:
        self.storage = storage
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if src is not None:  # another version's code, found before this tree's
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
        self.port = free_port()
        # Its log to a file when given, as an operator's would go; else nowhere.
        self._log = open(log, "wb") if log is not None else None  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "entrypoints", "serve",
                "--port", str(self.port),
                "--storage", storage,
                "--secret-key", secret,
                "--run-seconds", "3600",  # runs stay running for as long as a phase needs them
                "--access-log", access_log,
                *extra,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log or subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        wait_until_up(self.base + "/health", self.process)
        self.api = Api(self.base)
        self.api.sign_up("bench")
        self.token = self.api.token
        self.credentials = parallel(
            [
                lambda i=i: self.api.ok(
                    "POST", "/api/v1/credentials/", {"username": f"user{i}", "password": "pw"}
                )
                for i in range(100)
            ]
        )
        self.detail_paths = [f"/api/v1/credentials/{c['id']}/" for c in self.credentials]  # type: ignore[index]

    def loads(self) -> dict[str, loadgen.Load]:
        return {
            "detail": loadgen.Load(self.base, self.detail_paths, token=self.token),
            "list": loadgen.Load(self.base, ["/api/v1/credentials/?limit=100"], token=self.token),
            "create": loadgen.Load(self.base, ["/api/v1/credentials/"], method="POST",
                                   body={"username": "created", "password": "pw"}, token=self.token),
        }

    def stop(self) -> None:
        stop_process(self.process, self._log)


class Stage:
    """The services, the ceiling and the data every phase needs."""

    def __init__(
        self,
        workdir: Path,
        runs: int,
        deep_rows: int,
        access_log: str = "off",
        postgres: str | None = None,
        beside: tuple[Path, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.secret = secrets.token_hex(32)
        self.db = workdir / "bench.db"
        self.ceiling_port = free_port()
        self.ceiling = subprocess.Popen(
            [sys.executable, str(HERE / "ceiling.py"), str(self.ceiling_port)],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.ceiling_base = f"http://127.0.0.1:{self.ceiling_port}"
        wait_until_up(self.ceiling_base + "/item", self.ceiling)
        self.main = Service(f"sqlite:///{self.db}", self.secret, access_log)
        self.service, self.base, self.api, self.token = (
            self.main.process, self.main.base, self.main.api, self.main.token
        )
        self.detail_paths = self.main.detail_paths
        # Measured beside the main service when a PostgreSQL database is given.
        self.others = {} if postgres is None else {
            "postgresql": Service(postgres, self.secret, access_log),
            "workers-2": Service(f"sqlite:///{workdir / 'workers.db'}", self.secret, access_log, "--workers", "2"),
            # The service's default: a line a request, written to a file.
            "access-log": Service(f"sqlite:///{workdir / 'logged.db'}", self.secret, "on",
                                  log=workdir / "access.log"),
        }
        if beside is not None:  # another version's src and an empty PostgreSQL database for it
            src, beside_postgres = beside
            self.others["beside"] = Service(f"sqlite:///{workdir / 'beside.db'}", self.secret, access_log, src=src)
            self.others["beside postgresql"] = Service(beside_postgres, self.secret, access_log, src=src)
        self.migration_ids = self._migrations(runs, self.main.credentials[0]["id"])  # type: ignore[index]
        self.deep_token, self.deep_rows = self._deep_table(deep_rows)

    def _migrations(self, count: int, credentials_id: int) -> list[int]:
        def one(i: int) -> int:
            mount_point = self.api.ok("POST", "/api/v1/mount_points/", {"name": "C:\\", "size": 1})
            workload = self.api.ok(
                "POST",
                "/api/v1/work_loads/",
                {
                    "ip": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                    "credentials": credentials_id,
                    "storage": [mount_point["id"]],
                },
            )
            target = self.api.ok(
                "POST",
                "/api/v1/migration_targets/",
                {"cloud_type": "aws", "cloud_credentials": credentials_id},
            )
            migration = self.api.ok(
                "POST",
                "/api/v1/migrations/",
                {
                    "source": workload["id"],
                    "migration_target": target["id"],
                    "selected_mount_points": [mount_point["id"]],
                },
            )
            return int(migration["id"])  # type: ignore[call-overload]

        return [int(i) for i in parallel([lambda i=i: one(i) for i in range(count)])]  # type: ignore[call-overload]

    def _deep_table(self, rows: int) -> tuple[str | None, int]:
        """A second user owning `rows` credentials, written straight into the
        database (through the storage adapter) to save minutes of POSTs."""
        import migration_core as core
        from entrypoints.bootstrap import Settings, bootstrap

        deep = Api(self.base)
        owner = deep.sign_up("deep")
        # The service's own composition root, so the key is derived as it derives it.
        services = bootstrap(Settings(storage=f"sqlite:///{self.db}", secret_key=self.secret))
        try:
            with services.storage.unit_of_work() as uow:
                for i in range(rows):
                    uow.credentials.add(core.Credentials(owner, f"deep{i}", "pw", ""))
                uow.commit()
        finally:
            for executor in (services.write_executor, services.password_executor):
                if executor is not None:
                    executor.shutdown()
            services.storage.close()
        return deep.token, rows

    def run_all(self, action: str) -> None:
        parallel([lambda i=i: self.api.ok("POST", f"/api/v1/migrations/{i}/{action}/") for i in self.migration_ids])

    def close(self) -> None:
        for service in (self.main, *self.others.values()):
            service.stop()
        self.ceiling.send_signal(signal.SIGTERM)
        try:
            self.ceiling.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.ceiling.kill()


class Logins:
    """Eight clients that keep logging in until stopped."""

    def __init__(self, base: str, clients: int = 8) -> None:
        self._stop = threading.Event()
        self.count = 0
        self._threads = [threading.Thread(target=self._loop, args=(base,)) for _ in range(clients)]

    def _loop(self, base: str) -> None:
        api = Api(base)
        while not self._stop.is_set():
            api.ok("POST", "/api/v1/token/", {"username": "bench", "password": PASSWORD})
            self.count += 1

    def __enter__(self) -> Logins:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--runs", type=int, default=10_000, help="migrations running in detail-under-runs")
    parser.add_argument("--deep-rows", type=int, default=100_000)
    parser.add_argument("--access-log", choices=["on", "off"], default="off",
                        help="the service's access log (its default is on; off as behind a logging proxy)")
    parser.add_argument("--postgres", metavar="URL",
                        help="an empty PostgreSQL database to use (default: a server of its own)")
    parser.add_argument("--beside", metavar="SRC", type=Path,
                        help="the src folder of another version (e.g. from git archive): its detail, list and"
                        " create on SQLite and PostgreSQL measured in the same repetitions, as `beside ...`")
    args = parser.parse_args()
    generator = "wrk" if loadgen.wrk_available() else "python aiohttp client"
    print(f"# load generator: {generator}; {args.connections} connections, {args.seconds:g} s a measurement, "
          f"{args.repeat} interleaved repetitions; {os.cpu_count()} cores; service access log {args.access_log}",
          flush=True)

    with tempfile.TemporaryDirectory(prefix="migration-bench-") as tmp, contextlib.ExitStack() as stack:
        postgres = args.postgres
        beside_postgres = None
        if postgres is None:
            from tests.postgres_server import PostgresServer

            server = stack.enter_context(PostgresServer())
            postgres = server.url(server.create_database())
            beside_postgres = server.url(server.create_database()) if args.beside else None
        elif args.beside:
            raise SystemExit("--beside needs the benchmark's own PostgreSQL server (leave out --postgres)")
        beside = None if args.beside is None else (args.beside.resolve(), str(beside_postgres))
        stage = Stage(Path(tmp), args.runs, args.deep_rows, args.access_log, postgres, beside)
        try:
            measure(stage, args)
        finally:
            stage.close()


def measure(stage: Stage, args: argparse.Namespace) -> None:
    results: dict[str, list[loadgen.Result]] = defaultdict(list)
    extra: dict[str, list[float]] = defaultdict(list)

    def go(name: str, load: loadgen.Load, connections: int | None = None, pid: int | None = None) -> loadgen.Result:
        """Measure `load`; with `pid`, also that process's CPU time per request."""
        before = cpu_seconds(pid) if pid else 0.0
        result = loadgen.run(load, seconds=args.seconds, connections=connections or args.connections)
        results[name].append(result)
        used = ""
        if pid and result.requests:
            extra[f"cpu {name}"].append(1e6 * (cpu_seconds(pid) - before) / result.requests)
            used = f"  CPU {extra[f'cpu {name}'][-1]:.0f} µs a request"
        print(f"{name:28s} {result.rps:9.0f} req/s  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
              f"errors {result.errors}{used}", flush=True)
        return result

    main_loads = stage.main.loads()
    detail = main_loads["detail"]
    ceiling_load = loadgen.Load(stage.ceiling_base, ["/item"])
    paired: dict[str, list[float]] = defaultdict(list)  # a core phase / the ceiling just before it
    last_offset = max(0, stage.deep_rows - 100)
    for repetition in range(1, args.repeat + 1):
        print(f"# repetition {repetition}", flush=True)
        for phase, load in main_loads.items():
            # The ceiling beside each core phase: on a shared machine the two
            # see the same load, and their ratio is what carries over.
            before = go("ceiling", ceiling_load, pid=stage.ceiling.pid)
            paired[phase].append(go(phase, load, pid=stage.service.pid).rps / before.rps)
            if "beside" in stage.others:
                other = stage.others["beside"]
                paired[f"beside {phase}"].append(
                    go(f"beside {phase}", other.loads()[phase], pid=other.process.pid).rps / before.rps
                )
        for phase, load in stage.others["postgresql"].loads().items():
            go(f"postgresql {phase}", load)
            if "beside postgresql" in stage.others:
                go(f"beside postgresql {phase}", stage.others["beside postgresql"].loads()[phase])
        go("workers-2 detail", stage.others["workers-2"].loads()["detail"])
        logged = stage.others["access-log"]
        go("access-log-on detail", logged.loads()["detail"], pid=logged.process.pid)
        stage.run_all("run")
        go("detail-under-runs", detail)
        stage.run_all("cancel")
        with Logins(stage.base) as logins:
            go("detail-under-logins", detail)
        extra["logins"].append(logins.count / args.seconds)
        first_page = ["/api/v1/credentials/?limit=100&offset=0"]
        go("deep-page first", loadgen.Load(stage.base, first_page, token=stage.deep_token))
        go("deep-page last", loadgen.Load(stage.base, [f"/api/v1/credentials/?limit=100&offset={last_offset}"],
                                          token=stage.deep_token))
        # Not a target: the page farthest from both ends, the worst case.
        go("deep-page middle", loadgen.Load(stage.base, [f"/api/v1/credentials/?limit=100&offset={last_offset // 2}"],
                                            token=stage.deep_token))
        extra["rss"].append(rss_mb(stage.service.pid))

    def med(name: str, field: str) -> float:
        return statistics.median(getattr(r, field) for r in results[name])

    ceiling = med("ceiling", "rps")
    print("\n# medians; ratio = requests per second / ceiling's")
    for name in results:
        print(f"{name:28s} {med(name, 'rps'):9.0f} req/s  p50 {med(name, 'p50_ms'):7.2f} ms  "
              f"p99 {med(name, 'p99_ms'):7.2f} ms  errors {sum(r.errors for r in results[name])}  "
              f"ratio {med(name, 'rps') / ceiling:5.2f}")
    print("# core phases against the ceiling measured just before each (medians of those ratios)")
    for phase, ratios in paired.items():
        print(f"{phase:28s} ratio {statistics.median(ratios):5.2f}  (repetitions: "
              f"{', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"detail-under-runs / detail: {med('detail-under-runs', 'rps') / med('detail', 'rps'):.2f}")
    for phase in ("detail", "list", "create"):
        print(f"postgresql {phase} / sqlite {phase}: {med(f'postgresql {phase}', 'rps') / med(phase, 'rps'):.2f}")
        if f"beside {phase}" in results:
            print(f"beside postgresql {phase} / beside sqlite {phase}: "
                  f"{med(f'beside postgresql {phase}', 'rps') / med(f'beside {phase}', 'rps'):.2f}")
    print(f"workers-2 detail / detail (one worker): {med('workers-2 detail', 'rps') / med('detail', 'rps'):.2f}")
    print(f"access-log-on detail / detail: {med('access-log-on detail', 'rps') / med('detail', 'rps'):.2f}")
    print(f"deep-page last p50 / first p50: {med('deep-page last', 'p50_ms') / med('deep-page first', 'p50_ms'):.2f}")
    print(f"logins per second during detail-under-logins: {statistics.median(extra['logins']):.1f}")
    print(f"service memory (RSS) after the deep pages: {max(extra['rss']):.0f} MB")
    spent = ", ".join(
        f"{name.removeprefix('cpu ')} {statistics.median(values):.0f}"
        for name, values in extra.items() if name.startswith("cpu ")
    )
    print(f"CPU time of the process answering, µs a request (medians): {spent}")


if __name__ == "__main__":
    main()
