"""Benchmark: real copies over SSH, beside OpenSSH's own pipeline.

Starts a throwaway OpenSSH server (tests/sshd_server.py: 127.0.0.1, .2, .3 on
one port) and the service (`python -m entrypoints serve`, SQLite in a
temporary directory, access log off), and drives the service only through its
HTTP API: key credentials, a source workload at 127.0.0.1 whose root is a
directory of test data, a host workload at 127.0.0.2, a target with that host
and a root of its own for each copy, a migration of the source's volume "/",
its run, and `/state/` polled until it succeeds. Four phases, figures only:

    copy       one volume of --gib, as --files files and as one large file,
               through the service (verification on) and through
               `ssh src tar -cf - . | ssh host tar -xf -` (the limit),
               interleaved; then the check's own cost, the copier's steps
               after its stream: the host's SHA-256 of every file it wrote
               (volume_place.HASHES, over ssh, fed the paths), then the
               source and the copy listed at once (volume_place.LIST), their
               parsing and the plan in Python; and the service's hashing of
               the stream (TarCounter with digests against without, in this
               process, over a local tar of the same tree)
    second     a second run: --gib as --second-files files copied through the
               service into an empty place, one file rewritten on the
               source, then a second migration of the same source into the
               same target (a migration that succeeded does not run again):
               both runs' times, their ratio and the bytes the second sent
               (its volume_copied event). With --beside SRC, the same two
               runs through a second service running another version's code
               (SRC on its PYTHONPATH, as bench/run.py does), interleaved
               with this tree's, the order swapped each repetition: the
               first copies side by side (and its second run, with
               --beside-second). With --steps, both runs' steps timed
               inside this tree's service (a sitecustomize that wraps the
               copier's methods)
    four       four copies of the large file at once into four roots: their
               total throughput, and the migrations' detail under the load
               generator of run.py meanwhile, against detail just before
    memory     the service's peak RSS (VmHWM, reset before each copy, and
               VmRSS sampled every 20 ms) during a --small-mib copy and a
               --gib copy of one file, then a --gib copy as --files files
               (the copier holds each volume's listings); with --beside,
               the same copies through the other version's service too

Throughput is the volume's file bytes over the run's time (the migration's
`started_at` to `finished_at`: connections, stream, verification and the move
into place), in MB/s of 10^6 bytes. Every wait is bounded; the data lives
under /tmp and is removed at the end.

    python bench/copies.py [--gib 1] [--files 16384] [--repeat 3] [--seconds 5]
    python bench/copies.py --quick          # a smoke run of about half a minute
    python bench/copies.py --profile        # and py-spy over the service during one copy of each shape
    python bench/copies.py --phases second --beside /tmp/before-copy/src --steps
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
import json
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
from adapters.tar_stream import TarCounter
from adapters.volume_place import HASHES, LIST, nul_list, parse_listing  # the copier's own remote commands
from migration_core.sync_plan import plan_volume, tree_order
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


def regular_files(directory: Path) -> list[bytes]:
    """The regular files below `directory` as the copier names them (`./d000/f00000`), parents first."""
    return list(tree_order(
        b"./" + os.path.relpath(os.path.join(folder, name), directory).encode()
        for folder, _, names in os.walk(directory) for name in names
    ))


def shape_file(directory: Path, n: int) -> Path:
    """File `n` of a tree make_tree wrote."""
    return directory / f"d{n // 256:03d}" / f"f{n:05d}"


def rewrite(path: Path) -> int:
    """New random contents for `path`, of the same size; that size."""
    size = path.stat().st_size
    with open(path, "wb") as out:
        out.write(os.urandom(size))
    return size


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

    def output(self, address: str, command: str, timeout: float, stdin: bytes = b"") -> bytes:
        done = subprocess.run(self.argv(address, command), input=stdin, capture_output=True, timeout=timeout)
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

    def check(self, origin: Path, copy: Path, files: list[bytes], timeout: float) -> dict[str, float]:
        """The copier's check after its stream, its commands run as it runs
        them: the host's SHA-256 of every file it wrote (HASHES, fed the
        paths), then the source and the copy listed at once (LIST); the
        parsing of both listings and the plan that compares them, in this
        process. Wall times of each step, and the CPU time of the Python part."""
        began = time.perf_counter()
        hashes = self.output(HOST, remote_script(HASHES, str(copy)), timeout, stdin=nul_list(files))
        hashed = time.perf_counter()
        records = hashes.count(b"\0")
        if records != len(files):
            raise SystemExit(f"HASHES gave {records} records for {len(files)} files")
        with ThreadPoolExecutor(2) as pool:
            theirs = pool.submit(self.output, SOURCE, remote_script(LIST, str(origin)), timeout)
            held = pool.submit(self.output, HOST, remote_script(LIST, str(copy)), timeout)
            source_listing, copy_listing = theirs.result(), held.result()
        listed = time.perf_counter()
        cpu = time.process_time()
        plan = plan_volume(parse_listing(source_listing), parse_listing(copy_listing), owners=os.geteuid() == 0)
        python = time.process_time() - cpu
        if plan.sends:
            raise SystemExit(f"the check's plan would send {len(plan.sends)} entries again")
        return {"hashes_s": hashed - began, "listings_s": listed - hashed, "python_s": python,
                "check_s": hashed - began + listed - hashed + python}


def stream_hashing(origin: Path) -> float:
    """The CPU seconds the service's hashing of a stream costs: a local tar of
    `origin` (as the copier's source tar writes it) fed in the copier's chunks
    to a TarCounter with digests, less the same fed to one without."""
    spent = {}
    for digests in (False, True):
        counter = TarCounter(digests=digests)
        reader = subprocess.Popen(["tar", "-C", str(origin), "--format=posix", "-cf", "-", "."],
                                  stdout=subprocess.PIPE)
        assert reader.stdout is not None
        cpu = 0.0
        while chunk := reader.stdout.read(256 * 1024):
            began = time.process_time()
            counter.feed(chunk)
            cpu += time.process_time() - began
        if reader.wait() != 0:
            raise SystemExit(f"tar of {origin} failed")
        spent[digests] = cpu
    return spent[True] - spent[False]


# A sitecustomize for the service's process under --steps: it wraps the
# copier's steps (connections, listings, remote commands by script, the
# stream, the Python of listings, plan and journal) and appends one JSON line
# per call to $COPY_BENCH_STEPS. For this tree's copier only.
COPIER_RUN = "copier's run, connections included"
STEPS_SITECUSTOMIZE = """
import contextlib, contextvars, functools, json, os, time

_OUT = os.environ["COPY_BENCH_STEPS"]
_MIGRATION = contextvars.ContextVar("migration", default=None)


def _record(migration, step, seconds):
    migration = _MIGRATION.get() if migration is None else migration
    record = {"migration": migration, "step": step, "seconds": seconds, "ended": time.time()}
    with open(_OUT, "a") as out:
        out.write(json.dumps(record) + "\\n")


def _install():
    from adapters import ssh_copy, volume_place as vp

    scripts = {vp.BEGIN: "begin: mkdir, cp -l of the unchanged", vp.HASHES: "host hashes (sha256sum)",
               vp.JOURNAL: "journal written", vp.SWAP: "swap", vp.RECOVER: "recover", vp.CLEAR: "clear",
               vp.CAN_SET_OWNERS: "id -u"}

    def timed(name):
        def wrap(method):
            @functools.wraps(method)
            async def inner(self, *args, **kwargs):
                _MIGRATION.set(self._job.migration_id)
                began = time.perf_counter()
                try:
                    return await method(self, *args, **kwargs)
                finally:
                    _record(self._job.migration_id, name(args), time.perf_counter() - began)
            return inner
        return wrap

    def sync(name, function):
        @functools.wraps(function)
        def inner(*args, **kwargs):
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                _record(None, name, time.perf_counter() - began)
        return inner

    copier = ssh_copy.SshCopy
    copier._must = timed(lambda a: scripts.get(a[1][2] if len(a[1]) > 2 else "", a[1][0]))(copier._must)
    copier._list = timed(lambda a: "list " + a[1] + " (find, parse)")(copier._list)
    copier._stream = timed(lambda a: "stream (tar | service | tar)")(copier._stream)
    copier._volume = timed(lambda a: "volume, all steps")(copier._volume)
    copier.run = timed(lambda a: "copier's run, connections included")(copier.run)
    ssh_copy.plan_volume = sync("plan (Python)", ssh_copy.plan_volume)
    ssh_copy.parse_listing = sync("parse listing (Python)", ssh_copy.parse_listing)
    ssh_copy.journal_tar = sync("journal tar (Python)", ssh_copy.journal_tar)
    first_init = copier.__init__

    def init(self, job, report, connect, **kwargs):
        @contextlib.asynccontextmanager
        async def connecting(address):
            began = time.perf_counter()
            async with connect(address) as connection:
                _record(job.migration_id, "connect and log in to " + address.ip, time.perf_counter() - began)
                yield connection

        first_init(self, job, report, connecting, **kwargs)

    copier.__init__ = init


_install()
"""


class Service:
    """The service as a process, a user with the key's credentials, a source
    workload at 127.0.0.1 with volume "/" and a host workload at 127.0.0.2."""

    def __init__(
        self, workdir: Path, server: Any, *, label: str = "service", src: Path | None = None, steps: bool = False
    ) -> None:
        self.workdir = workdir
        self.label = label
        self.port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        paths = []
        if src is not None:  # another version's code, found before this tree's (as bench/run.py does)
            paths.append(str(src))
        self.steps: Path | None = None
        if steps:  # the copier's steps timed, by a sitecustomize of the benchmark's
            site = workdir / f"{label}-site"
            site.mkdir()
            (site / "sitecustomize.py").write_text(STEPS_SITECUSTOMIZE)
            self.steps = workdir / f"{label}-steps.jsonl"
            env["COPY_BENCH_STEPS"] = str(self.steps)
            paths.append(str(site))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [*paths, env.get("PYTHONPATH")]))
        self._log = open(workdir / f"{label}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "entrypoints", "serve", "--port", str(self.port),
             "--storage", f"sqlite:///{workdir / (label + '.db')}", "--secret-key", os.urandom(32).hex(),
             "--access-log", "off"],
            env=env,
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

    def target(self, destination: Path) -> int:
        """A new target: the host, root `destination`."""
        self._targets += 1
        return int(self.api.ok("POST", "/api/v1/migration_targets/", {  # type: ignore[call-overload]
            "cloud_type": "vsphere", "cloud_credentials": self.credentials, "host": self.host,
            "root": str(destination),
        })["id"])

    def migration(self, destination: Path, target: int | None = None) -> int:
        """A migration of "/" into `target`, or into a new target at `destination`."""
        if target is None:
            target = self.target(destination)
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

    def copy(
        self, origin: Path, size: int, destination: Path, timeout: float,
        *, target: int | None = None, sends: int | None = None,
    ) -> dict[str, Any]:
        """One run through the API (a new migration into `target`, or into a
        new target at `destination`); its seconds (started_at to finished_at),
        the service's CPU seconds and peak RSS meanwhile, and what its
        volume_copied event says it sent (`sends` bytes expected, else `size`)."""
        self.point_source_at(origin, size)
        if target is None:
            target = self.target(destination)
        migration = self.migration(destination, target)
        with Memory(self.pid) as memory:
            cpu = cpu_seconds(self.pid)
            self.run(migration)
            detail = self.wait([migration], timeout)[0]
            cpu = cpu_seconds(self.pid) - cpu
        copied = self.copied(migration)
        expected = size if sends is None else sends
        if not copied.get("verified") or copied["bytes"] != expected:
            raise SystemExit(f"{self.label}: migration {migration} copied {copied}, expected {expected} bytes verified")
        seconds = timestamp(detail["finished_at"]) - timestamp(detail["started_at"])
        return {"seconds": seconds, "cpu": cpu, "peak_mb": memory.peak_mb, "before_mb": memory.before_mb,
                "files": copied["files"], "bytes": copied["bytes"], "linked": copied.get("linked"),
                "target": target, "migration": migration, "started": timestamp(detail["started_at"]),
                "finished": timestamp(detail["finished_at"])}

    def steps_of(self, done: dict[str, Any]) -> dict[str, tuple[float, int]]:
        """What --steps recorded of a run's copy (`done`, as copy() returned
        it): seconds and count by step, and the run's time outside the copier
        (from `started_at` until it began, and from its end to `finished_at`)."""
        steps: dict[str, tuple[float, int]] = {}
        if self.steps is None or not self.steps.exists():
            return steps
        for line in self.steps.read_text().splitlines():
            record = json.loads(line)
            if record["migration"] == done["migration"]:
                seconds, count = steps.get(record["step"], (0.0, 0))
                steps[record["step"]] = (seconds + record["seconds"], count + 1)
                if record["step"] == COPIER_RUN:
                    began = record["ended"] - record["seconds"]
                    steps["service: started_at until the copier begins"] = (began - done["started"], 1)
                    steps["service: the copier's end until finished_at"] = (done["finished"] - record["ended"], 1)
        return steps

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
    names = {shape: regular_files(origin) for shape, (origin, _) in shapes.items()}
    for repetition in range(1, args.repeat + 1):
        print(f"# copy: repetition {repetition}", flush=True)
        for shape, (origin, size) in shapes.items():
            timeout = max(300.0, size / 2e6)
            clean(destination)
            done = service.copy(origin, size, destination, timeout)
            files, landed = tree_bytes(destination)
            if landed != size:
                raise SystemExit(f"the service's copy holds {landed} bytes, not {size}")
            check = ssh.check(origin, destination, names[shape], timeout)
            clean(destination)
            limit, limit_cpu = ssh.pipeline(origin, destination, timeout)
            if tree_bytes(destination) != (files, landed):
                raise SystemExit("the ssh pipeline's copy differs in size from the source")
            clean(destination)
            hashing = stream_hashing(origin)
            for key, value in {
                "service": mbps(size, done["seconds"]), "limit": mbps(size, limit),
                "service_s": done["seconds"], "limit_s": limit, "service_cpu": done["cpu"],
                "limit_cpu": limit_cpu, "peak_mb": done["peak_mb"], "stream_hashing_s": hashing, **check,
            }.items():
                figures[f"{shape} {key}"].append(value)
            print(f"{shape:6s} service {mbps(size, done['seconds']):7.1f} MB/s ({done['seconds']:6.2f} s, "
                  f"{done['files']} files, CPU {done['cpu']:5.1f} s, peak RSS {done['peak_mb']:.0f} MB)  "
                  f"limit {mbps(size, limit):7.1f} MB/s ({limit:6.2f} s, ssh clients' CPU {limit_cpu:5.1f} s)  "
                  f"ratio {limit / done['seconds']:.2f}  check {check['check_s']:5.2f} s (host hashes "
                  f"{check['hashes_s']:.2f} s, listings {check['listings_s']:.2f} s, Python {check['python_s']:.2f} s)"
                  f"  stream hashing {hashing:.2f} s CPU", flush=True)
    print(f"\n# copy: medians of {args.repeat}; ratio = service MB/s / limit MB/s (target >= 0.50, verification on)")
    for shape, (_, size) in shapes.items():
        f = {key.split(" ", 1)[1]: med(v) for key, v in figures.items() if key.startswith(shape + " ")}
        ratio = med([s / lim for s, lim in zip(figures[f"{shape} service"], figures[f"{shape} limit"])])
        print(f"{shape:6s} {size / 1e6:,.0f} MB: service {f['service']:.1f} MB/s ({f['service_s']:.2f} s, "
              f"CPU {f['service_cpu']:.1f} s), limit {f['limit']:.1f} MB/s ({f['limit_s']:.2f} s, "
              f"CPU {f['limit_cpu']:.1f} s), ratio {ratio:.2f}; check after the stream {f['check_s']:.2f} s "
              f"({100 * f['check_s'] / f['service_s']:.0f}% of the run; host hashes {f['hashes_s']:.2f} s, "
              f"listings {f['listings_s']:.2f} s, Python {f['python_s']:.2f} s); service without it about "
              f"{mbps(size, f['service_s'] - f['check_s']):.1f} MB/s; the stream's hashing in the service "
              f"{f['stream_hashing_s']:.2f} s CPU; peak RSS {f['peak_mb']:.0f} MB")


def second_phase(
    services: list[Service], origin: Path, size: int, files: int, workdir: Path, args: argparse.Namespace
) -> None:
    """Per repetition and service (the order swapped each repetition): a
    first copy into an empty place, one file rewritten on the source, and a
    second migration of the same source into the same target (the other
    version's second run only with --beside-second)."""
    figures: dict[str, list[float]] = collections.defaultdict(list)
    timeout = max(300.0, size / 2e6)
    changed = shape_file(origin, files // 2)
    for repetition in range(1, args.repeat + 1):
        print(f"# second: repetition {repetition}; load {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        for service in services if repetition % 2 else services[::-1]:
            mine = service is services[0]
            destination = workdir / f"second-{service.label}"
            clean(destination)
            first = service.copy(origin, size, destination, timeout)
            if tree_bytes(destination) != (files, size):
                raise SystemExit(f"{service.label}: the first copy does not hold {files} files of {size} bytes")
            figures[f"{service.label} first_s"].append(first["seconds"])
            figures[f"{service.label} first_cpu"].append(first["cpu"])
            runs = [("first", first)]
            line = (f"{service.label:8s} first {first['seconds']:6.2f} s ({mbps(size, first['seconds']):5.1f} MB/s, "
                    f"CPU {first['cpu']:5.1f} s)")
            if mine or args.beside_second:
                os.sync()  # the second run pays for none of the first one's writeback
                rewritten = rewrite(changed)
                second = service.copy(origin, size, destination, timeout, target=first["target"],
                                      sends=rewritten if mine else size)
                if tree_bytes(destination) != (files, size):
                    raise SystemExit(f"{service.label}: the second copy does not hold {files} files of {size} bytes")
                if (destination / changed.relative_to(origin)).read_bytes() != changed.read_bytes():
                    raise SystemExit(f"{service.label}: the second copy does not hold the rewritten {changed}")
                ratio = first["seconds"] / second["seconds"]
                for key, value in {"second_s": second["seconds"], "ratio": ratio, "bytes": second["bytes"],
                                   "second_cpu": second["cpu"]}.items():
                    figures[f"{service.label} {key}"].append(value)
                runs.append(("second", second))
                line += (f"  second {second['seconds']:6.2f} s (CPU {second['cpu']:5.2f} s, sent {second['bytes']:,} "
                         f"bytes in {second['files']} file(s), linked {second['linked']})  first/second {ratio:5.1f}")
            clean(destination)
            print(line, flush=True)
            for run, done in runs:
                for step, (seconds, count) in sorted(service.steps_of(done).items(),
                                                     key=lambda item: -item[1][0]):
                    figures[f"{service.label} {run}-step {step}"].append(seconds)
                    calls = f" ({count} calls)" if count > 1 else ""
                    print(f"#   {run} run's step: {seconds:6.3f} s  {step}{calls}")
    print(f"\n# second: medians of {args.repeat}; {files:,} files, {size / MiB:,.0f} MiB, one rewritten between runs")
    for service in services:
        f = {key.split(" ", 1)[1]: med(v) for key, v in figures.items() if key.startswith(service.label + " ")}
        line = f"{service.label}: first {f['first_s']:.2f} s (CPU {f['first_cpu']:.1f} s)"
        if "second_s" in f:
            rounds = ", ".join(f"{r:.1f}" for r in figures[f"{service.label} ratio"])
            target = "target >= 20" if service is services[0] else "another version's, for reference"
            line += (f", second {f['second_s']:.2f} s (CPU {f['second_cpu']:.2f} s, sent {f['bytes']:,.0f} bytes); "
                     f"first/second {f['ratio']:.1f} (rounds {rounds}; {target})")
        print(line)
        for run in ("first", "second"):
            steps = {key.split(" ", 1)[1]: value for key, value in f.items() if key.startswith(f"{run}-step ")}
            for step, seconds in sorted(steps.items(), key=lambda item: -item[1]):
                print(f"#   {run} run's step, median: {seconds:6.3f} s  {step}")
    if services[1:]:
        mine, other = services[0].label, services[1].label
        pairs = [a / b for a, b in zip(figures[f"{mine} first_s"], figures[f"{other} first_s"])]
        print(f"first copy, {mine} / {other}: {med(figures[f'{mine} first_s']):.2f} s / "
              f"{med(figures[f'{other} first_s']):.2f} s; service CPU {med(figures[f'{mine} first_cpu']):.1f} s / "
              f"{med(figures[f'{other} first_cpu']):.1f} s; ratio of each repetition's pair, median "
              f"{med(pairs):.2f} (rounds {', '.join(f'{p:.2f}' for p in pairs)}; target <= 1: not slower)")


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


def memory_phase(
    services: list[Service], sizes: dict[str, tuple[Path, int]], workdir: Path, args: argparse.Namespace
) -> None:
    peaks: dict[str, list[float]] = collections.defaultdict(list)
    destination = workdir / "landing"
    for repetition in range(1, args.memory_repeat + 1):
        for name, (origin, size) in sizes.items():
            for service in services:
                clean(destination)
                done = service.copy(origin, size, destination, max(300.0, size / 2e6))
                clean(destination)
                peaks[f"{service.label}: {name}"].append(done["peak_mb"])
                print(f"memory {repetition}: {service.label}, {name} copy, service RSS {done['before_mb']:.0f} MB "
                      f"before, peak {done['peak_mb']:.0f} MB", flush=True)
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
    parser.add_argument("--phases", default="copy,second,four,memory",
                        help="comma-separated: copy, second, four, memory")
    parser.add_argument("--second-files", type=int, default=8_192,
                        help="files of the second phase's volume (--gib in all: 128 KiB each by default)")
    parser.add_argument("--beside", metavar="SRC", type=Path,
                        help="the src folder of another version (e.g. from git archive): the second phase's two"
                        " runs, and the memory phase's copies, through a service running it too, interleaved"
                        " with this tree's")
    parser.add_argument("--beside-second", action="store_true",
                        help="with --beside, the other version's second run too (before this change: a whole copy)")
    parser.add_argument("--steps", action="store_true",
                        help="the second phase's copies timed step by step inside this tree's service")
    parser.add_argument("--profile", action="store_true", help="then py-spy over the service, one copy a shape")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 64 MiB, 1,024 files (512 in the second phase), 16 MiB small copy,"
                        " one repetition, 2 s loads")
    args = parser.parse_args()
    if args.quick:
        args.gib, args.files, args.small_mib, args.repeat, args.seconds = 1 / 16, 1024, 16, 1, 2.0
        args.second_files = 512
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - {"copy", "second", "four", "memory"}
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if args.beside is not None and not (args.beside / "entrypoints").is_dir():
        parser.error(f"--beside {args.beside}: no entrypoints package there (give a checkout's src folder)")
    total = int(args.gib * (1 << 30))
    generator = "wrk" if loadgen.wrk_available() else "python aiohttp client"
    print(f"# copy benchmark: phases {', '.join(phases)}; {total / MiB:,.0f} MiB a volume ({args.files:,} files of "
          f"{total // args.files // 1024:,} KiB, or one file; {args.second_files:,} files of "
          f"{total // args.second_files // 1024:,} KiB in the second phase), {args.repeat} interleaved repetitions; "
          f"{'beside ' + str(args.beside) + '; ' if args.beside else ''}{os.cpu_count()} cores; load "
          f"{os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; detail load: {generator}, "
          f"{args.connections} connections, {args.seconds:g} s", flush=True)
    began = time.monotonic()
    from tests.sshd_server import SshServer  # the repository is on sys.path once run is imported

    with tempfile.TemporaryDirectory(prefix="migration-copy-bench-", dir="/tmp") as tmp, SshServer() as server:
        run_phases(Path(tmp), server, args, total, phases)
    print(f"# done in {time.monotonic() - began:.0f} s; load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def run_phases(workdir: Path, server: Any, args: argparse.Namespace, total: int, phases: list[str]) -> None:
    """The data each phase asked for needs, the services, then each phase."""
    made = time.monotonic()
    many = workdir / "source-files"
    large = workdir / "source-large"
    shapes = {}
    if {"copy", "memory"} & set(phases) or args.profile:
        shapes["files"] = (many, make_tree(many, total, args.files))
    if {"copy", "four", "memory"} & set(phases) or args.profile:
        shapes["large"] = (large, make_tree(large, total, 1))
    small = workdir / "source-small"
    sizes = {
        f"{args.small_mib} MiB": (small, make_tree(small, args.small_mib * MiB, 1)),
        f"{total / MiB:,.0f} MiB": shapes["large"],
        f"{total / MiB:,.0f} MiB as {args.files:,} files": shapes["files"],
    } if "memory" in phases else {}
    second = workdir / "source-second"
    second_size = make_tree(second, total, args.second_files) if "second" in phases else 0
    os.sync()
    print(f"# data written in {time.monotonic() - made:.1f} s under {workdir}", flush=True)
    ssh = Ssh(server, workdir)
    services = [Service(workdir, server, label="this", steps=args.steps)]
    try:
        if {"second", "memory"} & set(phases) and args.beside is not None:
            services.append(Service(workdir, server, label="beside", src=args.beside.resolve()))
        service = services[0]
        if "copy" in phases:
            copy_phase(service, ssh, shapes, workdir, args)
        if "second" in phases:
            second_phase(services, second, second_size, args.second_files, workdir, args)
        if "four" in phases:
            four_phase(service, *shapes["large"], workdir, args)
        if "memory" in phases:
            memory_phase(services, sizes, workdir, args)
        if args.profile:
            profile_phase(service, {k: v for k, v in shapes.items() if k in ("files", "large")}, workdir)
    finally:
        for service in services:
            service.stop()


if __name__ == "__main__":
    main()
