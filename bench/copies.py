"""Benchmark: real copies over SSH, beside OpenSSH's own pipeline.

Starts a throwaway OpenSSH server (tests/sshd_server.py: 127.0.0.1, .2, .3 on
one port) and the service (`python -m entrypoints serve`, SQLite in a
temporary directory, access log off), and drives the service only through its
HTTP API: key credentials, a source workload at 127.0.0.1 whose root is a
directory of test data, a host workload at 127.0.0.2, a target with that host
and a root of its own for each copy, a migration of the source's volume "/",
its run, and `/state/` polled until it succeeds. Three phases, figures only:

    copy       one volume of --gib, as --files files and as one large file,
               through the service (verification on) and through
               `ssh src tar -cf - . | ssh host tar -xf -` (the limit),
               interleaved; then the verification's own cost: the copier's
               manifest commands (size and SHA-256 of every file) run over
               ssh on both sides at once, as the copier runs them
    four       four copies of the large file at once into four roots: their
               total throughput, and the migrations' detail under the load
               generator of run.py meanwhile, against detail just before
    memory     the service's peak RSS (VmHWM, reset before each copy, and
               VmRSS sampled every 20 ms) during a --small-mib copy and a
               --gib copy

Throughput is the volume's file bytes over the run's time (the migration's
`started_at` to `finished_at`: connections, stream, verification and the move
into place), in MB/s of 10^6 bytes. Every wait is bounded; the data lives
under /tmp and is removed at the end.

    python bench/copies.py [--gib 1] [--files 16384] [--repeat 3] [--seconds 5]
    python bench/copies.py --quick          # a smoke run of about half a minute
    python bench/copies.py --profile        # and py-spy over the service during one copy of each shape
"""

from __future__ import annotations

import os
import sys

# This file's name is the standard library's `copy`, which the library's own
# modules import: its folder moves to the end of the path, where loadgen and
# run are still found.
sys.path.remove(os.path.dirname(os.path.realpath(__file__)))
sys.path.append(os.path.dirname(os.path.realpath(__file__)))

import argparse
import collections
import datetime
import re
import resource
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import loadgen
from adapters.remote_shell import remote_command, remote_script
from adapters.ssh_copy import _HASHES, _SIZES  # the copier's own manifest commands
from run import Api, cpu_seconds, free_port, stop_process, wait_until_up  # also puts the repository on sys.path

MiB = 1 << 20
SOURCE, HOST = "127.0.0.1", "127.0.0.2"
POLL_SECONDS = 0.05


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def make_tree(directory: Path, total: int, files: int) -> int:
    """`files` files of random bytes summing to about `total`, 256 a directory;
    the bytes written."""
    directory.mkdir(parents=True)
    size = total // files
    written = 0
    for n in range(files):
        folder = directory / f"d{n // 256:03d}"
        folder.mkdir(exist_ok=True)
        with open(folder / f"f{n:05d}", "wb") as out:
            left = size
            while left:
                chunk = os.urandom(min(left, 4 * MiB))
                out.write(chunk)
                left -= len(chunk)
        written += size
    return written


def tree_bytes(directory: Path) -> tuple[int, int]:
    """(files, bytes) of the regular files below `directory`."""
    files = size = 0
    for folder, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                files += 1
                size += os.path.getsize(path)
    return files, size


def clean(directory: Path) -> None:
    """Remove a copy and write back what is dirty, so that no copy pays for
    the previous one's writeback."""
    shutil.rmtree(directory, ignore_errors=True)
    os.sync()


def timestamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


class Ssh:
    """OpenSSH's client against the benchmark's server, with its key and its
    host key pinned, no configuration of the machine's own."""

    def __init__(self, server: Any, workdir: Path) -> None:
        self.server = server
        self.known_hosts = workdir / "known_hosts"
        self.known_hosts.write_text(server.known_hosts_line())

    def argv(self, address: str, command: str) -> list[str]:
        return [
            "ssh", "-F", "/dev/null", "-T", "-p", str(self.server.port), "-i", str(self.server.private_key_path),
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            f"{self.server.username}@{address}", command,
        ]

    def output(self, address: str, command: str, timeout: float) -> bytes:
        done = subprocess.run(self.argv(address, command), capture_output=True, timeout=timeout)
        if done.returncode != 0:
            raise SystemExit(f"ssh {address} {command[:60]!r} failed ({done.returncode}): {done.stderr[-500:]!r}")
        return done.stdout

    def pipeline(self, origin: Path, destination: Path, timeout: float) -> tuple[float, float]:
        """`ssh src tar -C origin -cf - . | ssh host tar -C destination -xf -`:
        its wall time and the two clients' CPU time."""
        destination.mkdir(parents=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        reader = subprocess.Popen(self.argv(SOURCE, remote_command("tar", "-C", str(origin), "-cf", "-", ".")),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        assert reader.stdout is not None
        writer = subprocess.Popen(self.argv(HOST, remote_command("tar", "-C", str(destination), "-xf", "-")),
                                  stdin=reader.stdout)
        reader.stdout.close()
        try:
            codes = (writer.wait(timeout), reader.wait(timeout))
        except subprocess.TimeoutExpired:
            for process in (reader, writer):
                process.kill()
            raise SystemExit(f"the ssh pipeline took more than {timeout:.0f} s") from None
        seconds = time.perf_counter() - began
        if codes != (0, 0):
            raise SystemExit(f"the ssh pipeline failed: exit {codes}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return seconds, cpu

    def manifest(self, origin: Path, copy: Path, timeout: float) -> tuple[float, float, float]:
        """The copier's verification, its commands run as it runs them: on each
        side the sizes, then the hashes; both sides at once. Wall time of the
        whole, and of each side."""

        def side(address: str, directory: Path) -> float:
            began = time.perf_counter()
            for script in (_SIZES, _HASHES):
                self.output(address, remote_script(script, str(directory)), timeout)
            return time.perf_counter() - began

        began = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            source = pool.submit(side, SOURCE, origin)
            host = pool.submit(side, HOST, copy)
            source_seconds, host_seconds = source.result(), host.result()
        return time.perf_counter() - began, source_seconds, host_seconds


class Service:
    """The service as a process, a user with the key's credentials, a source
    workload at 127.0.0.1 with volume "/" and a host workload at 127.0.0.2."""

    def __init__(self, workdir: Path, server: Any) -> None:
        self.workdir = workdir
        self.port = free_port()
        self._log = open(workdir / "service.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "entrypoints", "serve", "--port", str(self.port),
             "--storage", f"sqlite:///{workdir / 'copy.db'}", "--secret-key", os.urandom(32).hex(),
             "--access-log", "off"],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        wait_until_up(self.base + "/health", self.process)
        self.api = Api(self.base)
        self.api.sign_up("copy")
        self.credentials = self.api.ok(
            "POST", "/api/v1/credentials/", {"username": server.username, "private_key": server.private_key}
        )["id"]
        self.volume = self.api.ok("POST", "/api/v1/mount_points/", {"name": "/", "size": 0})["id"]
        self.source = self.api.ok("POST", "/api/v1/work_loads/", {
            "ip": SOURCE, "credentials": self.credentials, "storage": [self.volume], "os": "linux", "root": "/",
            "port": server.port,
        })["id"]
        self.host = self.api.ok("POST", "/api/v1/work_loads/", {
            "ip": HOST, "credentials": self.credentials, "storage": [], "os": "linux", "port": server.port,
        })["id"]
        self._source_root = ""
        self._targets = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def point_source_at(self, root: Path, size: int) -> None:
        if self._source_root != str(root):
            self.api.ok("PATCH", f"/api/v1/mount_points/{self.volume}/", {"size": size})
            self.api.ok("PATCH", f"/api/v1/work_loads/{self.source}/", {"root": str(root)})
            self._source_root = str(root)

    def migration(self, destination: Path) -> int:
        """A new target (the host, root `destination`) and a migration of "/" into it."""
        self._targets += 1
        target = self.api.ok("POST", "/api/v1/migration_targets/", {
            "cloud_type": "vsphere", "cloud_credentials": self.credentials, "host": self.host,
            "root": str(destination),
        })["id"]
        return int(self.api.ok("POST", "/api/v1/migrations/", {
            "source": self.source, "migration_target": target, "selected_mount_points": [self.volume],
        })["id"])  # type: ignore[call-overload]

    def run(self, migration: int) -> None:
        self.api.ok("POST", f"/api/v1/migrations/{migration}/run/")

    def wait(self, migrations: list[int], timeout: float) -> list[dict[str, Any]]:
        """Poll each migration's state until all are finished; their details.
        A copy that fails ends the benchmark: its figures would mean nothing."""
        deadline = time.monotonic() + timeout
        left = set(migrations)
        while left:
            for migration in sorted(left):
                state = self.api.ok("GET", f"/api/v1/migrations/{migration}/state/")
                if state["finished"]:
                    if state["state"] != "success":
                        raise SystemExit(f"migration {migration} ended {state['state']}: {state['error']}")
                    left.discard(migration)
            if left and time.monotonic() > deadline:
                raise SystemExit(f"migrations {sorted(left)} still running after {timeout:.0f} s")
            if left:
                time.sleep(POLL_SECONDS)
        return [self.api.ok("GET", f"/api/v1/migrations/{m}/") for m in migrations]

    def copied(self, migration: int) -> dict[str, Any]:
        events = self.api.ok("GET", f"/api/v1/migrations/{migration}/events/?kind=volume_copied")
        return events["results"][0]["detail"]  # type: ignore[index, no-any-return]

    def copy(self, origin: Path, size: int, destination: Path, timeout: float) -> dict[str, float]:
        """One run through the API; its seconds (started_at to finished_at),
        the service's CPU seconds and peak RSS meanwhile."""
        self.point_source_at(origin, size)
        migration = self.migration(destination)
        with Memory(self.pid) as memory:
            cpu = cpu_seconds(self.pid)
            self.run(migration)
            detail = self.wait([migration], timeout)[0]
            cpu = cpu_seconds(self.pid) - cpu
        copied = self.copied(migration)
        if not copied.get("verified") or copied["bytes"] != size:
            raise SystemExit(f"migration {migration} copied {copied}, expected {size} bytes verified")
        seconds = timestamp(detail["finished_at"]) - timestamp(detail["started_at"])
        return {"seconds": seconds, "cpu": cpu, "peak_mb": memory.peak_mb, "before_mb": memory.before_mb,
                "files": copied["files"]}

    def stop(self) -> None:
        stop_process(self.process, self._log)


class Memory:
    """The peak RSS of a process over a block: VmHWM reset at its start
    (clear_refs) and VmRSS sampled every 20 ms, whichever is larger."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._stop = threading.Event()
        self._largest = 0
        self.before_mb = self.peak_mb = 0.0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._largest = max(self._largest, status_kb(self.pid, "VmRSS"))

    def __enter__(self) -> Memory:
        self.before_mb = status_kb(self.pid, "VmRSS") / 1024
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass  # then the samples alone
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self._largest, status_kb(self.pid, "VmHWM")) / 1024


class Profile:
    """py-spy over the service for a block; the raw stacks it wrote."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        if spy is None:
            raise SystemExit("--profile needs py-spy (the bench extra, in .venv-test: make test installs it)")
        self._argv = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
                      "--threads", "--nonblocking", "--output", str(out)]
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profile:
        self._process = subprocess.Popen(self._argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)  # py-spy attaches before the copy starts
        return self

    def __exit__(self, *_: object) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()


def summarise_profile(raw: Path, top: int = 14) -> None:
    """Each thread's share of the samples, then the functions with the most
    samples inclusive and on top (self), across threads."""
    threads: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        thread = re.sub(r"\s*\(?0x[0-9a-f]+\)?", "", frames[0]).strip() or frames[0]
        threads[thread] += count
        names = [re.sub(r":\d+\)$", ")", frame) for frame in frames[1:]]
        for name in set(names):
            inclusive[name] += count
        if names:
            own[names[-1]] += count
    if not total:
        print("#   no samples")
        return
    shares = ", ".join(f"{t} {100 * c / total:.0f}%" for t, c in threads.most_common())
    print(f"#   {total} samples; by thread: {shares}")
    print("#   most samples inclusive:")
    for name, count in inclusive.most_common(top):
        print(f"#     {100 * count / total:5.1f}%  {name}")
    print("#   most samples on top of the stack (self):")
    for name, count in own.most_common(top):
        print(f"#     {100 * count / total:5.1f}%  {name}")


def mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def med(values: list[float]) -> float:
    return statistics.median(values)


def copy_phase(
    service: Service, ssh: Ssh, shapes: dict[str, tuple[Path, int]], workdir: Path, args: argparse.Namespace
) -> None:
    figures: dict[str, list[float]] = collections.defaultdict(list)
    destination = workdir / "landing"
    for repetition in range(1, args.repeat + 1):
        print(f"# copy: repetition {repetition}", flush=True)
        for shape, (origin, size) in shapes.items():
            timeout = max(300.0, size / 2e6)
            clean(destination)
            done = service.copy(origin, size, destination, timeout)
            files, landed = tree_bytes(destination)
            if landed != size:
                raise SystemExit(f"the service's copy holds {landed} bytes, not {size}")
            whole, source_side, host_side = ssh.manifest(origin, destination, timeout)
            clean(destination)
            limit, limit_cpu = ssh.pipeline(origin, destination, timeout)
            if tree_bytes(destination) != (files, landed):
                raise SystemExit("the ssh pipeline's copy differs in size from the source")
            clean(destination)
            for key, value in {
                "service": mbps(size, done["seconds"]), "limit": mbps(size, limit),
                "service_s": done["seconds"], "limit_s": limit, "manifest_s": whole,
                "manifest_source_s": source_side, "manifest_host_s": host_side,
                "service_cpu": done["cpu"], "limit_cpu": limit_cpu, "peak_mb": done["peak_mb"],
            }.items():
                figures[f"{shape} {key}"].append(value)
            print(f"{shape:6s} service {mbps(size, done['seconds']):7.1f} MB/s ({done['seconds']:6.2f} s, "
                  f"{done['files']} files, CPU {done['cpu']:5.1f} s, peak RSS {done['peak_mb']:.0f} MB)  "
                  f"limit {mbps(size, limit):7.1f} MB/s ({limit:6.2f} s, ssh clients' CPU {limit_cpu:5.1f} s)  "
                  f"ratio {limit / done['seconds']:.2f}  manifest {whole:5.2f} s "
                  f"(source {source_side:.2f} s, host {host_side:.2f} s)", flush=True)
    print(f"\n# copy: medians of {args.repeat}; ratio = service MB/s / limit MB/s (target >= 0.50, verification on)")
    for shape, (_, size) in shapes.items():
        f = {key.split(" ", 1)[1]: med(v) for key, v in figures.items() if key.startswith(shape + " ")}
        ratio = med([s / lim for s, lim in zip(figures[f"{shape} service"], figures[f"{shape} limit"])])
        print(f"{shape:6s} {size / 1e6:,.0f} MB: service {f['service']:.1f} MB/s ({f['service_s']:.2f} s, "
              f"CPU {f['service_cpu']:.1f} s), limit {f['limit']:.1f} MB/s ({f['limit_s']:.2f} s, "
              f"CPU {f['limit_cpu']:.1f} s), ratio {ratio:.2f}; verification {f['manifest_s']:.2f} s "
              f"({100 * f['manifest_s'] / f['service_s']:.0f}% of the run; source {f['manifest_source_s']:.2f} s, "
              f"host {f['manifest_host_s']:.2f} s); service without it about "
              f"{mbps(size, f['service_s'] - f['manifest_s']):.1f} MB/s; peak RSS {f['peak_mb']:.0f} MB")


def four_phase(service: Service, origin: Path, size: int, workdir: Path, args: argparse.Namespace) -> None:
    figures: dict[str, list[float]] = collections.defaultdict(list)
    token = service.api.token
    for repetition in range(1, args.repeat + 1):
        print(f"# four: repetition {repetition}", flush=True)
        roots = [workdir / f"four-{n}" for n in range(4)]
        for root in roots:
            clean(root)
        service.point_source_at(origin, size)
        migrations = [service.migration(root) for root in roots]
        load = loadgen.Load(service.base, [f"/api/v1/migrations/{m}/" for m in migrations], token=token)
        idle = loadgen.run(load, seconds=args.seconds, connections=args.connections)
        cpu = cpu_seconds(service.pid)
        for migration in migrations:
            service.run(migration)
        busy = loadgen.run(load, seconds=args.seconds, connections=args.connections)
        still = sum(not service.api.ok("GET", f"/api/v1/migrations/{m}/state/")["finished"] for m in migrations)
        details = service.wait(migrations, max(600.0, 4 * size / 2e6))
        cpu = cpu_seconds(service.pid) - cpu
        began = min(timestamp(d["started_at"]) for d in details)
        ended = max(timestamp(d["finished_at"]) for d in details)
        for root in roots:
            if tree_bytes(root)[1] != size:
                raise SystemExit(f"{root} does not hold {size} bytes")
            clean(root)
        total = mbps(4 * size, ended - began)
        for key, value in {"total": total, "seconds": ended - began, "cpu": cpu, "idle_rps": idle.rps,
                           "idle_p99": idle.p99_ms, "busy_rps": busy.rps, "busy_p99": busy.p99_ms,
                           "busy_p50": busy.p50_ms, "idle_p50": idle.p50_ms}.items():
            figures[key].append(value)
        print(f"four copies: {total:7.1f} MB/s in total ({ended - began:6.2f} s, service CPU {cpu:5.1f} s)  "
              f"detail idle {idle.rps:7.0f} req/s p99 {idle.p99_ms:6.2f} ms  during the copies {busy.rps:7.0f} "
              f"req/s p50 {busy.p50_ms:6.2f} ms p99 {busy.p99_ms:6.2f} ms errors {idle.errors + busy.errors}  "
              f"({still} of 4 still copying when the load ended)", flush=True)
    f = {key: med(values) for key, values in figures.items()}
    ratio = med([b / i for b, i in zip(figures["busy_rps"], figures["idle_rps"])])
    print(f"\n# four: medians of {args.repeat}")
    print(f"four copies of {size / 1e6:,.0f} MB at once: {f['total']:.1f} MB/s in total ({f['seconds']:.2f} s); "
          f"detail during them {f['busy_rps']:.0f} req/s, p50 {f['busy_p50']:.2f} ms, p99 {f['busy_p99']:.2f} ms "
          f"(target <= 50 ms); idle {f['idle_rps']:.0f} req/s, p99 {f['idle_p99']:.2f} ms; "
          f"busy/idle {ratio:.2f} (target >= 0.50)")


def memory_phase(service: Service, sizes: dict[str, tuple[Path, int]], workdir: Path, args: argparse.Namespace) -> None:
    peaks: dict[str, list[float]] = collections.defaultdict(list)
    destination = workdir / "landing"
    for repetition in range(1, args.memory_repeat + 1):
        for name, (origin, size) in sizes.items():
            clean(destination)
            done = service.copy(origin, size, destination, max(300.0, size / 2e6))
            clean(destination)
            peaks[name].append(done["peak_mb"])
            print(f"memory {repetition}: {name} copy, service RSS {done['before_mb']:.0f} MB before, "
                  f"peak {done['peak_mb']:.0f} MB", flush=True)
    print(f"\n# memory: largest of {args.memory_repeat}")
    print("; ".join(f"{name} copy: service peak RSS {max(values):.0f} MB" for name, values in peaks.items()))


def profile_phase(service: Service, shapes: dict[str, tuple[Path, int]], workdir: Path) -> None:
    destination = workdir / "landing"
    for shape, (origin, size) in shapes.items():
        clean(destination)
        raw = workdir / f"profile-{shape}.txt"
        with Profile(service.pid, raw):
            done = service.copy(origin, size, destination, max(300.0, size / 2e6))
        clean(destination)
        print(f"\n# profile: {shape} copy under py-spy, {mbps(size, done['seconds']):.1f} MB/s", flush=True)
        summarise_profile(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="the volume's size in GiB (each shape, each copy)")
    parser.add_argument("--files", type=int, default=16_384, help="files of the many-files shape")
    parser.add_argument("--small-mib", type=int, default=256, help="the smaller copy of the memory phase")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--memory-repeat", type=int, default=1, help="rounds of the memory phase")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each detail measurement")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--phases", default="copy,four,memory", help="comma-separated: copy, four, memory")
    parser.add_argument("--profile", action="store_true", help="then py-spy over the service, one copy a shape")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 64 MiB, 1,024 files, 16 MiB small copy, one repetition, 2 s loads")
    args = parser.parse_args()
    if args.quick:
        args.gib, args.files, args.small_mib, args.repeat, args.seconds = 1 / 16, 1024, 16, 1, 2.0
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    total = int(args.gib * (1 << 30))
    generator = "wrk" if loadgen.wrk_available() else "python aiohttp client"
    print(f"# copy benchmark: {total / MiB:,.0f} MiB a volume ({args.files:,} files of {total // args.files // 1024:,}"
          f" KiB, or one file), {args.repeat} interleaved repetitions; {os.cpu_count()} cores; load "
          f"{os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; detail load: {generator}, "
          f"{args.connections} connections, {args.seconds:g} s", flush=True)
    began = time.monotonic()
    from tests.sshd_server import SshServer  # the repository is on sys.path once run is imported

    with tempfile.TemporaryDirectory(prefix="migration-copy-bench-", dir="/tmp") as tmp, SshServer() as server:
        run_phases(Path(tmp), server, args, total, phases)
    print(f"# done in {time.monotonic() - began:.0f} s; load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def run_phases(workdir: Path, server: Any, args: argparse.Namespace, total: int, phases: list[str]) -> None:
    """The data, the service, then each phase asked for."""
    made = time.monotonic()
    many = workdir / "source-files"
    large = workdir / "source-large"
    shapes = {"files": (many, make_tree(many, total, args.files)), "large": (large, make_tree(large, total, 1))}
    small = workdir / "source-small"
    sizes = {
        f"{args.small_mib} MiB": (small, make_tree(small, args.small_mib * MiB, 1)),
        f"{total / MiB:,.0f} MiB": shapes["large"],
    } if "memory" in phases else {}
    os.sync()
    print(f"# data written in {time.monotonic() - made:.1f} s under {workdir}", flush=True)
    ssh = Ssh(server, workdir)
    service = Service(workdir, server)
    try:
        if "copy" in phases:
            copy_phase(service, ssh, shapes, workdir, args)
        if "four" in phases:
            four_phase(service, *shapes["large"], workdir, args)
        if "memory" in phases:
            memory_phase(service, sizes, workdir, args)
        if args.profile:
            profile_phase(service, shapes, workdir)
    finally:
        service.stop()


if __name__ == "__main__":
    main()
