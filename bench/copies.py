"""Benchmark: real copies over SSH, beside OpenSSH's own pipelines.

Starts a throwaway OpenSSH server (tests/sshd_server.py: 127.0.0.1, .2, .3 on
one port) and the service (`python -m entrypoints serve`, SQLite in a
temporary directory, access log off, every copy setting at its default), and
drives the service only through its HTTP API: key credentials, a source
workload at 127.0.0.1 whose root is a directory of test data, a host workload
at 127.0.0.2, a target with that host and a root of its own for each copy, a
migration of the source's volume "/", its run, and `/state/` polled until it
succeeds. Six phases, figures only:

    copy       one volume of --gib, as --files files and as one large file,
               three ways, interleaved (the order turned each repetition):
               through the service (verification on); through the verified
               pipeline, `ssh src 'bash -c "tar -cf - . | tee >(sha256sum
               >&2)"' | ssh host 'bash -c "tee >(sha256sum >&2) | tar -xf
               -"'` (both hashes checked equal); and through the bare one,
               `ssh src tar -cf - . | ssh host tar -xf -` (the limit). Their
               times and rates, and their CPU: the service's own (its process
               and every process it started, its `ssh` clients and control
               masters, which are reaped before the figure is read: utime,
               stime, cutime and cstime of /proc/PID/stat), against the two
               `ssh` clients' of each pipeline (getrusage(RUSAGE_CHILDREN)
               around it); per GiB, and their ratio each repetition. First,
               what the service spends idle in 10 s, its state polled as
               during a copy. With --gcm-too, the large shape also through
               the bare pipeline with -c aes128-gcm@openssh.com, the cipher
               the service's masters choose first
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
               --beside-second)
    four       four copies of the large file at once into four roots (one
               source, one host: the default 4 copies a machine lets all four
               run): their total throughput and the service's CPU (serving
               the load too), and the migrations' detail under run.py's load
               generator (wrk -t2 when installed) meanwhile, against detail
               just before
    memory     the service's peak RSS (VmHWM, reset before each copy, and
               VmRSS sampled every 20 ms; its `ssh` children's RSS summed
               apart) during a --small-mib copy and a --gib copy of one
               file, then a --gib copy as --files files (the copier holds
               each volume's listings); with --beside, the same copies
               through the other version's service too
    wave       --wave-copies migrations of --wave-mib each (--wave-files
               files), every one from its own source machine, all onto the
               one host, as one wave (`POST /api/v1/waves/`, then its run),
               with the default copy settings (8 copies an instance, 4
               touching one machine: one host, so 4 at a time). Each source
               has an address of its own in 127.0.0.0/8: sshd listens on 16
               addresses at most, so one more throwaway sshd (its own key,
               so its own credentials) per 16 sources; a workload's ip is
               unique among one user's, so one user's wave needs as many
               addresses as sources. The sources' roots are one directory
               (the data is read from the page cache, as the other phases'
               is). Two waves in turn: one alone (its total time, the most
               copying at once by polling the wave's migrations every 0.25
               s, each copy's time, the service's CPU), then one under the
               detail load (the API's p99 in windows of --seconds while it
               runs), against detail just before
    preflight  a wave of --wave-copies migrations, each from its own source
               machine (as the wave phase's), onto the one host: its
               readiness check (`POST /api/v1/waves/{id}/preflight/`)
               --repeat times: each one's time, the logins the sshd logs
               show for it (one a machine: --wave-copies + 1), all ready

The machines (the throwaway sshds, and the tar, sha256sum and ciphers they
run for both ends of every copy) share the service's two cores here, where
in a fleet each is a computer of its own; `--machines-nice 19` runs them
below everything else, so that what the service's own processes leave the
API is what is measured (the copies' `ssh` clients and relay threads run at
niceness 19, the API at 0). Where the kernel shares the cores between
sessions first (autogroup), a niceness counts only within a session, and
sshd opens one for each connection: the machines then also go into a CPU
cgroup of the same weight (`machines_group`; root, cgroup v1's cpu
controller), and the benchmark prints which.

Throughput is the volume's file bytes over the run's time (the migration's
`started_at` to `finished_at`: logins, stream, verification and the move into
place), in MB/s of 10^6 bytes; a pipeline's time is its wall time, logins
included. Every wait is bounded; the data lives under /tmp and is removed at
the end. Only 127.0.0.0/8 is ever connected to.

    python bench/copies.py [--gib 1] [--files 8192] [--repeat 3] [--seconds 5]
    python bench/copies.py --quick          # a smoke run of about a minute
    python bench/copies.py --profile        # and py-spy over the service during one copy of each shape
    python bench/copies.py --phases second --beside /tmp/before-copy/src
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
import contextlib
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import loadgen
from adapters.remote_shell import remote_command
from run import Api, free_port, stop_process, wait_until_up  # also puts the repository on sys.path

MiB = 1 << 20
GiB = 1 << 30
SOURCE, HOST = "127.0.0.1", "127.0.0.2"
# How often a copy's state is polled: the copy's time is the service's own
# (started_at to finished_at), so this only bounds how late the benchmark
# notices; each poll is a request whose CPU counts in the service's (every
# 0.1 s: about 0.2 s of CPU in 10 s here, every 0.5 s: 0.04 s more than none).
POLL_SECONDS = 0.5
# sshd's MAX_LISTEN_SOCKS: the addresses one sshd listens on, at most.
SSHD_ADDRESSES = 16
# The service's CPU is read once its child processes are reaped, within this.
REAP_SECONDS = 30.0


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def children(pid: int) -> list[int]:
    """The live (or not yet reaped) child processes of `pid`, of all its threads."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def family_cpu(pid: int) -> tuple[float, float]:
    """(its own, its children's) CPU seconds, user and system: the process's
    threads, and the children it has reaped (cutime, cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def system_cpu(pid: int) -> float:
    """The system part of a process's own CPU seconds (its threads' time in the kernel)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def reaped_cpu(pid: int) -> tuple[float, float]:
    """family_cpu once `pid` has no child left: every `ssh` it started is
    reaped, so their CPU is in its children's figure."""
    deadline = time.monotonic() + REAP_SECONDS
    while left := children(pid):
        if time.monotonic() > deadline:
            raise SystemExit(f"the service still has child processes {left} after {REAP_SECONDS:.0f} s")
        time.sleep(0.02)
    return family_cpu(pid)


# cgroup v1's cpu controller, where the kernel mounts it.
CPU_CGROUPS = Path("/sys/fs/cgroup/cpu")


@contextlib.contextmanager
def machines_group(pids: list[int], niceness: int) -> Iterator[str]:
    """The machines' listeners (and all they start) in a CPU group of their
    own, weighted as a process at `niceness` (CFS: 1024 / 1.25 per step).

    A niceness alone does not put them below the service where the kernel
    groups processes by session (`sched_autogroup_enabled`): sshd starts a
    session for each connection, and the kernel shares the cores evenly
    between sessions first, so eight busy sessions of tar, sha256sum and
    ciphers would each weigh as much as the service's whole session. A cgroup
    is outside the sessions' groups. What it says is printed: the group, or
    why there is none (then the niceness holds only within each session)."""
    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    if not autogroup.exists() or autogroup.read_text().strip() == "0":
        yield "none needed (the kernel does not group by session)"
        return
    group = CPU_CGROUPS / f"migration-copy-bench-{os.getpid()}"
    try:
        group.mkdir()
        (group / "cpu.shares").write_text(str(max(2, round(1024 / 1.25 ** niceness))))
        for pid in pids:
            (group / "cgroup.procs").write_text(str(pid))
    except OSError as error:
        release_group(group)
        yield f"none ({error}): sessions share the cores evenly, so the machines' niceness holds only within each"
        return
    try:
        yield f"{group}, cpu.shares {(group / 'cpu.shares').read_text().strip()}"
    finally:
        release_group(group)


def release_group(group: Path) -> None:
    """Move what is left in a cgroup back to the root group, and remove it."""
    with contextlib.suppress(OSError):
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (group.parent / "cgroup.procs").write_text(pid)
    with contextlib.suppress(OSError):
        group.rmdir()


class Machines:
    """The throwaway sshd servers, as the machines of the copies: what they
    spent (the listeners' reaped children: each connection's sshd, and the
    tar, bash, tee and sha256sum it ran), on the same cores as the service."""

    def __init__(self, servers: list[Any]) -> None:
        self.servers = servers

    def cpu(self) -> float:
        """Their CPU seconds so far, once no connection is left (10 s at most:
        a session still open is counted when it ends)."""
        deadline = time.monotonic() + 10
        while any(children(server.pid) for server in self.servers) and time.monotonic() < deadline:
            time.sleep(0.02)
        return sum(sum(family_cpu(server.pid)) for server in self.servers)


def load_text() -> str:
    """`uptime`, as the machine says it."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


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


# The verified pipeline's two ends: each side hashes the archive as it passes.
VERIFIED_READER = 'tar -C "$1" -cf - . | tee >(sha256sum >&2)'
VERIFIED_WRITER = 'tee >(sha256sum >&2) | tar -C "$1" -xf -'
_DIGEST = re.compile(rb"^([0-9a-f]{64})  -$", re.M)


class Ssh:
    """OpenSSH's client against the benchmark's server, with its key and its
    host key pinned, no configuration of the machine's own (OpenSSH's default
    ciphers: a pipeline typed by hand)."""

    def __init__(self, server: Any, workdir: Path) -> None:
        self.server = server
        self.workdir = workdir
        self.known_hosts = workdir / "known_hosts"
        self.known_hosts.write_text(server.known_hosts_line())

    def argv(self, address: str, command: str, cipher: str | None = None) -> list[str]:
        return [
            "ssh", "-F", "/dev/null", "-T", "-p", str(self.server.port), "-i", str(self.server.private_key_path),
            *(["-c", cipher] if cipher else []),
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            f"{self.server.username}@{address}", command,
        ]

    def pipeline(
        self, origin: Path, destination: Path, timeout: float, *, verified: bool, cipher: str | None = None
    ) -> tuple[float, float]:
        """The bare pipeline, `ssh src tar -C origin -cf - . | ssh host tar -C
        destination -xf -`, or the verified one (each side's bash tees the
        archive into sha256sum on its standard error; the two digests must be
        equal), with OpenSSH's default cipher or `cipher`: its wall time and
        the two clients' CPU time."""
        destination.mkdir(parents=True)
        if verified:
            reading = remote_command("bash", "-c", VERIFIED_READER, "bash", str(origin))
            writing = remote_command("bash", "-c", VERIFIED_WRITER, "bash", str(destination))
        else:
            reading = remote_command("tar", "-C", str(origin), "-cf", "-", ".")
            writing = remote_command("tar", "-C", str(destination), "-xf", "-")
        with tempfile.TemporaryFile(dir=self.workdir) as said_reading, \
                tempfile.TemporaryFile(dir=self.workdir) as said_writing:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            began = time.perf_counter()
            reader = subprocess.Popen(self.argv(SOURCE, reading, cipher), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=said_reading)
            assert reader.stdout is not None
            writer = subprocess.Popen(self.argv(HOST, writing, cipher), stdin=reader.stdout, stdout=subprocess.DEVNULL,
                                      stderr=said_writing)
            reader.stdout.close()
            try:
                codes = (writer.wait(timeout), reader.wait(timeout))
            except subprocess.TimeoutExpired:
                for process in (reader, writer):
                    process.kill()
                    process.wait(30)
                raise SystemExit(f"the ssh pipeline took more than {timeout:.0f} s") from None
            seconds = time.perf_counter() - began
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            said_reading.seek(0)
            said_writing.seek(0)
            errors = said_reading.read(), said_writing.read()
        if codes != (0, 0):
            raise SystemExit(f"the ssh pipeline failed: exit {codes}: {errors!r:.500}")
        if verified:
            digests = [_DIGEST.findall(error) for error in errors]
            if [len(found) for found in digests] != [1, 1] or digests[0] != digests[1]:
                raise SystemExit(f"the verified pipeline's two sha256sums disagree or are missing: {errors!r:.500}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return seconds, cpu


# The copier's line at a copy's end: the runner writes `finished_at` at its next tick.
_COPIER_DONE = re.compile(r"^(\S+ \S+) INFO adapters\.ssh_copy\[\d+\]: copy of migration (\d+), .*: done$")


class Service:
    """The service as a process, a user with the key's credentials, a source
    workload at 127.0.0.1 with volume "/" and a host workload at 127.0.0.2."""

    def __init__(self, workdir: Path, server: Any, *, label: str = "service", src: Path | None = None) -> None:
        self.workdir = workdir
        self.label = label
        self.port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if src is not None:  # another version's code, found before this tree's (as bench/run.py does)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
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
        self.credentials = self.add_credentials(server)
        self.volume = self.api.ok("POST", "/api/v1/mount_points/", {"name": "/", "size": 0})["id"]
        self.source = self.api.ok("POST", "/api/v1/work_loads/", {
            "ip": SOURCE, "credentials": self.credentials, "storage": [self.volume], "os": "linux", "root": "/",
            "port": server.port,
        })["id"]
        self.host = self.api.ok("POST", "/api/v1/work_loads/", {
            "ip": HOST, "credentials": self.credentials, "storage": [], "os": "linux", "port": server.port,
        })["id"]
        self._source_root = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def add_credentials(self, server: Any) -> int:
        return int(self.api.ok(  # type: ignore[call-overload]
            "POST", "/api/v1/credentials/", {"username": server.username, "private_key": server.private_key}
        )["id"])

    def point_source_at(self, root: Path, size: int) -> None:
        if self._source_root != str(root):
            self.api.ok("PATCH", f"/api/v1/mount_points/{self.volume}/", {"size": size})
            self.api.ok("PATCH", f"/api/v1/work_loads/{self.source}/", {"root": str(root)})
            self._source_root = str(root)

    def target(self, destination: Path, host: int | None = None) -> int:
        """A new target: the host, root `destination`."""
        return int(self.api.ok("POST", "/api/v1/migration_targets/", {  # type: ignore[call-overload]
            "cloud_type": "vsphere", "cloud_credentials": self.credentials, "host": host or self.host,
            "root": str(destination),
        })["id"])

    def migration(self, destination: Path, target: int | None = None, *, source: int | None = None,
                  volume: int | None = None) -> int:
        """A migration of "/" into `target`, or into a new target at `destination`."""
        if target is None:
            target = self.target(destination)
        return int(self.api.ok("POST", "/api/v1/migrations/", {  # type: ignore[call-overload]
            "source": source or self.source, "migration_target": target,
            "selected_mount_points": [volume or self.volume],
        })["id"])

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
        the service's CPU seconds meanwhile (its own, and its reaped children's),
        its peak RSS, and what its volume_copied event says it sent (`sends`
        bytes expected, else `size`)."""
        self.point_source_at(origin, size)
        if target is None:
            target = self.target(destination)
        migration = self.migration(destination, target)
        own, kids = reaped_cpu(self.pid)
        system = system_cpu(self.pid)
        with Memory(self.pid) as memory:
            self.run(migration)
            detail = self.wait([migration], timeout)[0]
        own_after, kids_after = reaped_cpu(self.pid)
        system = system_cpu(self.pid) - system
        copied = self.copied(migration)
        expected = size if sends is None else sends
        if not copied.get("verified") or copied["bytes"] != expected:
            raise SystemExit(f"{self.label}: migration {migration} copied {copied}, expected {expected} bytes verified")
        seconds = timestamp(detail["finished_at"]) - timestamp(detail["started_at"])
        ended = self.copier_ended(migration)
        lag = float("nan") if ended is None else timestamp(detail["finished_at"]) - ended
        return {
            "seconds": seconds, "lag": lag, "cpu": own_after - own + kids_after - kids, "cpu_python": own_after - own,
            "cpu_ssh": kids_after - kids, "cpu_system": system, "peak_mb": memory.peak_mb,
            "before_mb": memory.before_mb, "children_mb": memory.children_mb, "files": copied["files"],
            "bytes": copied["bytes"], "linked": copied.get("linked"), "target": target, "migration": migration,
        }

    def copier_ended(self, migration: int) -> float | None:
        """When the copier said it was done with `migration` (its log line, local time to the millisecond)."""
        with open(self.workdir / f"{self.label}.log", errors="replace") as said:
            for line in said:
                match = _COPIER_DONE.match(line)
                if match and int(match.group(2)) == migration:
                    return datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return None

    def stop(self) -> None:
        stop_process(self.process, self._log)
        said = (self.workdir / f"{self.label}.log").read_text(errors="replace").splitlines()
        bad = [line for line in said if re.search(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b", line)]
        print(f"# the {self.label} service logged {len(said)} lines, {len(bad)} of them warnings or errors"
              + "".join(f"\n#   {line[:300]}" for line in bad[:10]), flush=True)


class Memory:
    """The peak RSS of a process over a block: VmHWM reset at its start
    (clear_refs) and VmRSS sampled every 20 ms, whichever is larger; and the
    largest sum of its children's VmRSS in those samples."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._stop = threading.Event()
        self._largest = 0
        self._children = 0
        self.before_mb = self.peak_mb = self.children_mb = 0.0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._largest = max(self._largest, status_kb(self.pid, "VmRSS"))
            held = 0
            for child in children(self.pid):
                with contextlib.suppress(OSError, KeyError):
                    held += status_kb(child, "VmRSS")
            self._children = max(self._children, held)

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
        self.children_mb = self._children / 1024


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


def rounds(values: list[float], digits: int = 2) -> str:
    return ", ".join(f"{value:.{digits}f}" for value in values)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


WAYS = ("service", "verified", "bare")
# The bare pipeline with the cipher the service's masters choose first (--gcm-too, the large shape only).
GCM = "aes128-gcm@openssh.com"


def idle_cpu(service: Service, seconds: float) -> float:
    """The service's own CPU seconds over `seconds` with no copy, one
    migration's state polled as during a copy: what of a copy's figure is
    the ticker's and the benchmark's polling."""
    migration = service.migration(service.workdir / "never-run")
    own, _ = reaped_cpu(service.pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        service.api.ok("GET", f"/api/v1/migrations/{migration}/state/")
        time.sleep(POLL_SECONDS)
    return reaped_cpu(service.pid)[0] - own


def copy_phase(
    service: Service, ssh: Ssh, machines: Machines, shapes: dict[str, tuple[Path, int]], workdir: Path,
    args: argparse.Namespace,
) -> None:
    """Each repetition, each shape: the service, the verified pipeline and the
    bare one, one after another, the order turned by one each repetition."""
    figures: dict[str, list[float]] = collections.defaultdict(list)
    destination = workdir / "landing"
    held = {shape: tree_bytes(origin) for shape, (origin, _) in shapes.items()}
    idle = idle_cpu(service, 10.0)
    print(f"# copy: the service idle, one state polled every {POLL_SECONDS:g} s as during a copy: {idle:.2f} s of CPU"
          " in 10 s", flush=True)
    ways = {shape: WAYS + (("bare-gcm",) if args.gcm_too and shape == "large" else ()) for shape in shapes}
    for repetition in range(1, args.repeat + 1):
        print(f"# copy: repetition {repetition}; load {loadavg()}", flush=True)
        for shape, (origin, size) in shapes.items():
            turn = (repetition - 1) % len(ways[shape])
            order = ways[shape][turn:] + ways[shape][:turn]
            timeout = max(300.0, size / 2e6)
            seconds: dict[str, float] = {}
            cpu: dict[str, float] = {}
            remote: dict[str, float] = {}
            for way in order:
                clean(destination)
                remote[way] = machines.cpu()
                if way == "service":
                    done = service.copy(origin, size, destination, timeout)
                    seconds[way], cpu[way] = done["seconds"], done["cpu"]
                    figures[f"{shape} service_cpu_python"].append(done["cpu_python"] * GiB / size)
                    figures[f"{shape} service_cpu_ssh"].append(done["cpu_ssh"] * GiB / size)
                    figures[f"{shape} service_cpu_system"].append(done["cpu_system"] * GiB / size)
                    figures[f"{shape} peak_mb"].append(done["peak_mb"])
                    figures[f"{shape} lag"].append(done["lag"])
                else:
                    seconds[way], cpu[way] = ssh.pipeline(origin, destination, timeout, verified=way == "verified",
                                                          cipher=GCM if way == "bare-gcm" else None)
                remote[way] = machines.cpu() - remote[way]
                if tree_bytes(destination) != held[shape]:
                    raise SystemExit(f"the {way} copy of {shape} does not hold {held[shape]} (files, bytes)")
            clean(destination)
            for way in order:
                figures[f"{shape} {way}_s"].append(seconds[way])
                figures[f"{shape} {way}_mbps"].append(mbps(size, seconds[way]))
                figures[f"{shape} {way}_cpu_gib"].append(cpu[way] * GiB / size)
                figures[f"{shape} {way}_machines_gib"].append(remote[way] * GiB / size)
            ratios = {
                "rate_verified": seconds["verified"] / seconds["service"],
                "rate_bare": seconds["bare"] / seconds["service"],
                "cpu_bare": cpu["service"] / cpu["bare"],
                "cpu_verified": cpu["service"] / cpu["verified"],
            }
            if "bare-gcm" in cpu:
                ratios["cpu_bare_gcm"] = cpu["service"] / cpu["bare-gcm"]
            for key, value in ratios.items():
                figures[f"{shape} {key}"].append(value)
            print(f"{shape:6s} " + "  ".join(
                f"{way} {seconds[way]:6.2f} s {mbps(size, seconds[way]):6.1f} MB/s CPU {cpu[way]:5.2f} s "
                f"(machines {remote[way]:5.2f} s)" for way in order
            ) + f"  | service python {done['cpu_python']:.2f} s (system {done['cpu_system']:.2f}) + ssh "
                f"{done['cpu_ssh']:.2f} s, finished_at {done['lag']:.2f} s after the copier's end, peak RSS "
                f"{done['peak_mb']:.0f} MB | rate/verified {ratios['rate_verified']:.2f} rate/bare "
                f"{ratios['rate_bare']:.2f} CPU/bare {ratios['cpu_bare']:.2f}", flush=True)
    print(f"\n# copy: medians of {args.repeat} interleaved repetitions; CPU in seconds a GiB (the service's: its"
          " process and its reaped ssh children; a pipeline's: its two ssh clients; the machines': their sshd and"
          " what it ran)")
    for shape, (_, size) in shapes.items():
        f = {key.split(" ", 1)[1]: med(v) for key, v in figures.items() if key.startswith(shape + " ")}
        r = {key: figures[f"{shape} {key}"] for key in ("rate_verified", "rate_bare", "cpu_bare", "cpu_verified")}
        print(f"{shape:6s} {held[shape][0]:,} files, {size / MiB:,.0f} MiB: "
              + "; ".join(f"{way} {f[way + '_s']:.2f} s ({f[way + '_mbps']:.1f} MB/s, CPU {f[way + '_cpu_gib']:.2f}"
                          f" s/GiB, machines {f[way + '_machines_gib']:.2f} s/GiB)" for way in ways[shape]))
        print(f"       service CPU {f['service_cpu_gib']:.2f} s/GiB (python {f['service_cpu_python']:.2f}, of it "
              f"system {f['service_cpu_system']:.2f}; ssh {f['service_cpu_ssh']:.2f}) / bare ssh CPU "
              f"{f['bare_cpu_gib']:.2f} s/GiB: {med(r['cpu_bare']):.2f} "
              f"(rounds {rounds(r['cpu_bare'])}; target <= 1.10); / verified ssh CPU: {med(r['cpu_verified']):.2f} "
              f"(rounds {rounds(r['cpu_verified'])})")
        if f"{shape} cpu_bare_gcm" in figures:
            gcm = figures[f"{shape} cpu_bare_gcm"]
            print(f"       service CPU / bare ssh CPU with {GCM} (the service's masters' cipher): {med(gcm):.2f} "
                  f"(rounds {rounds(gcm)})")
        print(f"       rate, service / verified: {med(r['rate_verified']):.2f} (rounds {rounds(r['rate_verified'])}; "
              f"target >= 0.95); service / bare: {med(r['rate_bare']):.2f} (rounds {rounds(r['rate_bare'])}); "
              f"service peak RSS {f['peak_mb']:.0f} MB; finished_at after the copier's end (its log line) "
              f"{rounds(figures[f'{shape} lag'])} s")


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
        print(f"# second: repetition {repetition}; load {loadavg()}", flush=True)
        for service in services if repetition % 2 else services[::-1]:
            mine = service is services[0]
            destination = workdir / f"second-{service.label}"
            clean(destination)
            first = service.copy(origin, size, destination, timeout)
            if tree_bytes(destination) != (files, size):
                raise SystemExit(f"{service.label}: the first copy does not hold {files} files of {size} bytes")
            figures[f"{service.label} first_s"].append(first["seconds"])
            figures[f"{service.label} first_cpu"].append(first["cpu"])
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
                line += (f"  second {second['seconds']:6.2f} s (CPU {second['cpu']:5.2f} s, sent {second['bytes']:,} "
                         f"bytes in {second['files']} file(s), linked {second['linked']})  first/second {ratio:5.1f}")
            clean(destination)
            print(line, flush=True)
    print(f"\n# second: medians of {args.repeat}; {files:,} files, {size / MiB:,.0f} MiB, one rewritten between runs")
    for service in services:
        f = {key.split(" ", 1)[1]: med(v) for key, v in figures.items() if key.startswith(service.label + " ")}
        line = f"{service.label}: first {f['first_s']:.2f} s (CPU {f['first_cpu']:.1f} s)"
        if "second_s" in f:
            target = "target >= 20" if service is services[0] else "another version's, for reference"
            line += (f", second {f['second_s']:.2f} s (CPU {f['second_cpu']:.2f} s, sent {f['bytes']:,.0f} bytes); "
                     f"first/second {f['ratio']:.1f} (rounds {rounds(figures[f'{service.label} ratio'], 1)}; "
                     f"{target})")
        print(line)
    if services[1:]:
        mine, other = services[0].label, services[1].label
        pairs = [a / b for a, b in zip(figures[f"{mine} first_s"], figures[f"{other} first_s"])]
        print(f"first copy, {mine} / {other}: {med(figures[f'{mine} first_s']):.2f} s / "
              f"{med(figures[f'{other} first_s']):.2f} s; service CPU {med(figures[f'{mine} first_cpu']):.1f} s / "
              f"{med(figures[f'{other} first_cpu']):.1f} s; ratio of each repetition's pair, median "
              f"{med(pairs):.2f} (rounds {rounds(pairs)}; target <= 1: not slower)")


def four_phase(
    service: Service, machines: Machines, origin: Path, size: int, workdir: Path, args: argparse.Namespace
) -> None:
    figures: dict[str, list[float]] = collections.defaultdict(list)
    token = service.api.token
    for repetition in range(1, args.repeat + 1):
        print(f"# four: repetition {repetition}; load {loadavg()}", flush=True)
        roots = [workdir / f"four-{n}" for n in range(4)]
        for root in roots:
            clean(root)
        service.point_source_at(origin, size)
        migrations = [service.migration(root) for root in roots]
        load = loadgen.Load(service.base, [f"/api/v1/migrations/{m}/" for m in migrations], token=token)
        idle = loadgen.run(load, seconds=args.seconds, connections=args.connections)
        remote = machines.cpu()
        own, kids = reaped_cpu(service.pid)
        for migration in migrations:
            service.run(migration)
        busy = loadgen.run(load, seconds=args.seconds, connections=args.connections)
        still = sum(not service.api.ok("GET", f"/api/v1/migrations/{m}/state/")["finished"] for m in migrations)
        details = service.wait(migrations, max(600.0, 4 * size / 2e6))
        own_after, kids_after = reaped_cpu(service.pid)
        remote = machines.cpu() - remote
        cpu = own_after - own + kids_after - kids
        began = min(timestamp(d["started_at"]) for d in details)
        ended = max(timestamp(d["finished_at"]) for d in details)
        for root in roots:
            if tree_bytes(root)[1] != size:
                raise SystemExit(f"{root} does not hold {size} bytes")
            clean(root)
        total = mbps(4 * size, ended - began)
        for key, value in {"total": total, "seconds": ended - began, "cpu": cpu, "idle_rps": idle.rps,
                           "idle_p99": idle.p99_ms, "busy_rps": busy.rps, "busy_p99": busy.p99_ms,
                           "busy_p50": busy.p50_ms, "idle_p50": idle.p50_ms, "ratio": busy.rps / idle.rps,
                           "cpu_python": own_after - own, "still": still, "machines": remote}.items():
            figures[key].append(value)
        print(f"four copies: {total:7.1f} MB/s in total ({ended - began:6.2f} s, service CPU {cpu:5.1f} s, of it "
              f"python {own_after - own:5.1f} s, serving the detail load too; the machines {remote:5.1f} s)  "
              f"detail idle {idle.rps:7.0f} req/s p99 "
              f"{idle.p99_ms:6.2f} ms  "
              f"during the copies {busy.rps:7.0f} req/s p50 {busy.p50_ms:6.2f} ms p99 {busy.p99_ms:6.2f} ms errors "
              f"{idle.errors + busy.errors}  busy/idle {busy.rps / idle.rps:.2f}  ({still} of 4 still copying when "
              "the load ended)", flush=True)
    f = {key: med(values) for key, values in figures.items()}
    print(f"\n# four: medians of {args.repeat}")
    print(f"four copies of {size / 1e6:,.0f} MB at once: {f['total']:.1f} MB/s in total ({f['seconds']:.2f} s, "
          f"service CPU {f['cpu']:.1f} s, python {f['cpu_python']:.1f} s; the machines' side {f['machines']:.1f} s"
          f"); detail during them {f['busy_rps']:.0f} "
          f"req/s, p50 {f['busy_p50']:.2f} ms, p99 {f['busy_p99']:.2f} ms (rounds {rounds(figures['busy_p99'])}; "
          f"target <= 50 ms); idle {f['idle_rps']:.0f} req/s, p99 {f['idle_p99']:.2f} ms; busy/idle "
          f"{f['ratio']:.2f} (rounds {rounds(figures['ratio'])}; target >= 0.60); still copying when the load "
          f"ended: {', '.join(str(int(s)) for s in figures['still'])} of 4")


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
                peaks[f"{service.label}: {name} children"].append(done["children_mb"])
                print(f"memory {repetition}: {service.label}, {name} copy ({mbps(size, done['seconds']):.1f} MB/s), "
                      f"service RSS {done['before_mb']:.0f} MB before, peak {done['peak_mb']:.0f} MB; its ssh "
                      f"children's RSS at most {done['children_mb']:.0f} MB together", flush=True)
    print(f"\n# memory: largest of {args.memory_repeat}")
    print("; ".join(f"{name} copy: service peak RSS {max(values):.0f} MB (ssh children "
                    f"{max(peaks[name + ' children']):.0f} MB)"
                    for name, values in peaks.items() if not name.endswith(" children")))


class Poller:
    """A thread that lists a wave's migrations every `every` seconds until
    all are finished (or `timeout`): the most in phase `copying` at once,
    and the time each count was seen."""

    def __init__(self, base: str, token: str | None, wave: int, members: int, every: float, timeout: float) -> None:
        self.api = Api(base)
        self.api.token = token
        self._path = f"/api/v1/migrations/?wave={wave}&limit=1000"
        self._members = members
        self._every = every
        self._deadline = time.monotonic() + timeout
        self.most = 0
        self.polls = 0
        self.copying: list[int] = []
        # When each migration was first seen copying (or finished, if it was never seen copying).
        self.began: dict[int, float] = {}
        self.failed: list[str] = []
        self.timed_out = False
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        try:
            while True:
                page = self.api.ok("GET", self._path)
                rows = page["results"]
                assert isinstance(rows, list) and len(rows) == self._members, page
                now = time.time()
                for row in rows:
                    if row["phase"] == "copying" or row["state"] in ("success", "error"):
                        self.began.setdefault(row["id"], now)
                copying = sum(row["phase"] == "copying" for row in rows)
                self.copying.append(copying)
                self.most = max(self.most, copying)
                self.polls += 1
                self.failed = [f"{row['id']}: {row['error']}" for row in rows if row["state"] == "error"]
                if all(row["state"] in ("success", "error") for row in rows):
                    return
                if time.monotonic() > self._deadline:
                    self.timed_out = True
                    return
                time.sleep(self._every)
        finally:
            self.done.set()

    def join(self) -> None:
        self._thread.join(timeout=max(1.0, self._deadline - time.monotonic() + 60))


def start_source_servers(stack: contextlib.ExitStack, count: int) -> list[Any]:
    """Throwaway sshd servers for `count` source machines, 16 addresses each,
    at 127.0.N.1 to 127.0.N.16 (N from 1)."""
    from tests.sshd_server import SshServer

    servers = []
    for n in range(0, count, SSHD_ADDRESSES):
        server_number = n // SSHD_ADDRESSES + 1
        addresses = [f"127.0.{server_number}.{k}" for k in range(1, min(SSHD_ADDRESSES, count - n) + 1)]
        servers.append(stack.enter_context(SshServer(addresses=addresses, stock_key_exchange=True)))
    return servers


def fleet_sources(service: Service, servers: list[Any], origin: Path, size: int, count: int) -> list[tuple[int, int]]:
    """(workload, volume "/") of `count` source machines, one an address of
    the servers, each with root `origin`."""
    sources: list[tuple[int, int]] = []
    for server in servers:
        credentials = service.add_credentials(server)
        for address in server.addresses:
            volume = int(service.api.ok("POST", "/api/v1/mount_points/",  # type: ignore[call-overload]
                                        {"name": "/", "size": size})["id"])
            workload = int(service.api.ok("POST", "/api/v1/work_loads/", {  # type: ignore[call-overload]
                "ip": address, "credentials": credentials, "storage": [volume], "os": "linux", "root": str(origin),
                "port": server.port,
            })["id"])
            sources.append((workload, volume))
    return sources[:count]


def logins(servers: list[Any]) -> int:
    """The logins the servers have let in so far, as their logs say."""
    return sum(server.log().count("Accepted publickey") for server in servers)


def preflight_phase(
    service: Service, server: Any, servers: list[Any], sources: list[tuple[int, int]], workdir: Path,
    args: argparse.Namespace,
) -> None:
    """A wave of --wave-copies migrations, each from its own source machine,
    all onto the one host: its readiness check (`POST
    /api/v1/waves/{id}/preflight/`) --repeat times, each one's time, the
    logins the servers' logs show for it, and how many were ready."""
    migrations = [service.migration(workdir / f"preflight-{n:03d}", source=workload, volume=volume)
                  for n, (workload, volume) in enumerate(sources)]
    wave = int(service.api.ok("POST", "/api/v1/waves/",  # type: ignore[call-overload]
                              {"name": "preflight", "migrations": migrations})["id"])
    print(f"# preflight: a wave of {len(migrations)} migrations from {len(sources)} addresses onto {HOST};"
          f" load {loadavg()}", flush=True)
    times, counted = [], []
    for _ in range(args.repeat):
        before = logins([server, *servers])
        began = time.monotonic()
        answer = service.api.ok("POST", f"/api/v1/waves/{wave}/preflight/")
        times.append(time.monotonic() - began)
        counted.append(logins([server, *servers]) - before)
        if answer["ready"] != len(migrations):  # type: ignore[index]
            failed = [m for m in answer["migrations"] if not m["ready"]]  # type: ignore[index]
            raise SystemExit(f"{len(failed)} migrations not ready, the first: {failed[0]}")
    print(f"preflight: {len(migrations)} migrations, all ready: {rounds(times)} s (median {med(times):.2f} s); "
          f"logins {', '.join(map(str, counted))} ({len(sources) + 1} machines)", flush=True)


def wave_phase(
    service: Service, servers: list[Any], sources: list[tuple[int, int]], machines: Machines, size: int, files: int,
    workdir: Path, args: argparse.Namespace,
) -> None:
    """Two waves of --wave-copies real copies onto the one host, in turn: one
    alone, one under the detail load (detail just before it for reference)."""
    count = len(sources)
    timeout = max(600.0, count * size / 1e6)
    listening = ", ".join(str(len(s.addresses)) for s in servers)
    print(f"# wave: {count} sources on {len(servers)} sshd processes ({listening} addresses)"
          f", one host at {HOST}; {files} files, {size / MiB:,.0f} MiB each", flush=True)
    for label, loaded in (("alone", False), ("under load", True)):
        roots = [workdir / f"wave-{n:03d}" for n in range(count)]
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
        os.sync()
        migrations = [service.migration(root, source=workload, volume=volume)
                      for root, (workload, volume) in zip(roots, sources)]
        wave = int(service.api.ok("POST", "/api/v1/waves/",  # type: ignore[call-overload]
                                  {"name": f"fleet {label}", "migrations": migrations})["id"])
        load = loadgen.Load(service.base, [f"/api/v1/migrations/{m}/" for m in migrations], token=service.api.token)
        idle = loadgen.run(load, seconds=args.seconds, connections=args.connections) if loaded else None
        print(f"# wave {label}: load {loadavg()}", flush=True)
        remote = machines.cpu()
        own, kids = reaped_cpu(service.pid)
        asked = time.time()
        answer = service.api.ok("POST", f"/api/v1/waves/{wave}/run/")
        if answer.get("refused"):
            raise SystemExit(f"the wave's run refused members: {answer['refused']}")
        poller = Poller(service.base, service.api.token, wave, count, 0.25, timeout)
        windows: list[loadgen.Result] = []
        while loaded and not poller.done.is_set():
            windows.append(loadgen.run(load, seconds=args.seconds, connections=args.connections))
        poller.join()
        if poller.timed_out or not poller.done.is_set():
            raise SystemExit(f"the wave {label} was still running after {timeout:.0f} s")
        if poller.failed:
            raise SystemExit(f"{len(poller.failed)} copies of the wave failed, the first {poller.failed[0]}")
        own_after, kids_after = reaped_cpu(service.pid)
        remote = machines.cpu() - remote
        details = [service.api.ok("GET", f"/api/v1/migrations/{m}/") for m in migrations]
        first = min(timestamp(d["started_at"]) for d in details)  # type: ignore[arg-type]
        last = max(timestamp(d["finished_at"]) for d in details)  # type: ignore[arg-type]
        for migration in migrations:
            copied = service.copied(migration)
            if not copied.get("verified") or copied["bytes"] != size:
                raise SystemExit(f"wave migration {migration} copied {copied}, expected {size} bytes verified")
        for root in roots:
            if tree_bytes(root) != (files, size):
                raise SystemExit(f"{root} does not hold {files} files of {size} bytes")
            shutil.rmtree(root)
        cpu = own_after - own + kids_after - kids
        lasted = [timestamp(d["finished_at"]) - poller.began[int(d["id"])] for d in details]  # type: ignore[arg-type]
        lags = [timestamp(d["finished_at"]) - (service.copier_ended(int(d["id"])) or float("nan"))  # type: ignore[arg-type]
                for d in details]
        line = (f"wave {label}: {count} copies of {size / MiB:,.0f} MiB in {last - asked:.1f} s from the run's POST "
                f"to the last finished_at ({last - first:.1f} s from the first started_at; "
                f"{mbps(count * size, last - asked):.1f} MB/s in all); most copying at once {poller.most}, on average "
                f"{statistics.mean(poller.copying):.2f} "
                f"(of {poller.polls} polls every 0.25 s: copying {collections.Counter(poller.copying).most_common()}); "
                f"each copy, from the first poll that saw it copying to its finished_at: median "
                f"{med(lasted):.2f} s, largest {max(lasted):.2f} s; finished_at after the copier's end: median "
                f"{med(lags):.2f} s, largest {max(lags):.2f} s; service CPU {cpu:.1f} s ({cpu / count:.2f} s a "
                f"copy; python {own_after - own:.1f} s{', with the detail load' if loaded else ''}); the machines' "
                f"side {remote:.1f} s")
        print(line, flush=True)
        if loaded and idle is not None:
            p99s = [w.p99_ms for w in windows]
            ratios = [w.rps / idle.rps for w in windows]
            print(f"wave {label}: detail just before, idle: {idle.rps:.0f} req/s, p99 {idle.p99_ms:.2f} ms; during "
                  f"the wave, {len(windows)} windows of {args.seconds:g} s (the last may run past its end): p99 "
                  f"{rounds(p99s)} ms (median {med(p99s):.2f}, largest {max(p99s):.2f}); req/s "
                  f"{', '.join(f'{w.rps:.0f}' for w in windows)} (busy/idle median {med(ratios):.2f}); errors "
                  f"{sum(w.errors for w in windows) + idle.errors}", flush=True)


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


PHASES = ("copy", "second", "four", "memory", "wave", "preflight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="the volume's size in GiB (each shape, each copy)")
    parser.add_argument("--files", type=int, default=8_192,
                        help="files of the many-files shape (128 KiB each at 1 GiB)")
    parser.add_argument("--small-mib", type=int, default=256, help="the smaller copy of the memory phase")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--four-repeat", type=int, help="repetitions of the four phase (default: --repeat)")
    parser.add_argument("--memory-repeat", type=int, default=1, help="rounds of the memory phase")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each detail measurement")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--machines-nice", type=int, default=0, metavar="N",
                        help="run the throwaway sshds, the machines, and all they start at niceness N: in a fleet"
                        " they are computers of their own, here they share the service's cores")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated: {', '.join(PHASES)}")
    parser.add_argument("--second-files", type=int, default=8_192,
                        help="files of the second phase's volume (--gib in all: 128 KiB each by default)")
    parser.add_argument("--wave-copies", type=int, default=100, help="migrations of the wave, each from its own source")
    parser.add_argument("--wave-mib", type=int, default=16, help="each wave copy's volume, in MiB")
    parser.add_argument("--wave-files", type=int, default=16, help="files of each wave copy's volume")
    parser.add_argument("--beside", metavar="SRC", type=Path,
                        help="the src folder of another version (e.g. from git archive): the second phase's two"
                        " runs, and the memory phase's copies, through a service running it too, interleaved"
                        " with this tree's")
    parser.add_argument("--beside-second", action="store_true",
                        help="with --beside, the other version's second run too (before 0.4.1: a whole copy)")
    parser.add_argument("--gcm-too", action="store_true",
                        help=f"the copy phase's large shape also through the bare pipeline with -c {GCM}")
    parser.add_argument("--profile", action="store_true", help="then py-spy over the service, one copy a shape")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 64 MiB, 1,024 files (512 in the second phase), 16 MiB small copy,"
                        " one repetition, 2 s loads, a wave of 20 copies of 4 MiB")
    args = parser.parse_args()
    if args.quick:
        args.gib, args.files, args.small_mib, args.repeat, args.seconds = 1 / 16, 1024, 16, 1, 2.0
        args.second_files, args.wave_copies, args.wave_mib, args.wave_files = 512, 20, 4, 4
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if args.beside is not None and not (args.beside / "entrypoints").is_dir():
        parser.error(f"--beside {args.beside}: no entrypoints package there (give a checkout's src folder)")
    if not 1 <= args.wave_copies <= 250 * SSHD_ADDRESSES:
        parser.error("--wave-copies: 1 to 4,000 (127.0.N.K, N up to 250)")
    total = int(args.gib * GiB)
    generator = "wrk -t2" if loadgen.wrk_available() else "python aiohttp client (no wrk installed)"
    print(f"# copy benchmark: phases {', '.join(phases)}; {total / MiB:,.0f} MiB a volume ({args.files:,} files of "
          f"{total // args.files // 1024:,} KiB, or one file; {args.second_files:,} files of "
          f"{total // args.second_files // 1024:,} KiB in the second phase), {args.repeat} interleaved repetitions; "
          f"wave of {args.wave_copies} copies of {args.wave_mib} MiB; "
          f"{'beside ' + str(args.beside) + '; ' if args.beside else ''}{os.cpu_count()} cores; detail load: "
          f"{generator}, {args.connections} connections, {args.seconds:g} s; the machines at niceness "
          f"{args.machines_nice}", flush=True)
    print(f"# start {datetime.datetime.now().isoformat(timespec='seconds')}; uptime: {load_text()}", flush=True)
    began = time.monotonic()
    from tests.sshd_server import SshServer  # the repository is on sys.path once run is imported

    with tempfile.TemporaryDirectory(prefix="migration-copy-bench-", dir="/tmp") as tmp, \
            contextlib.ExitStack() as stack:
        server = stack.enter_context(SshServer(stock_key_exchange=True))
        run_phases(Path(tmp), server, stack, args, total, phases)
    print(f"# done in {time.monotonic() - began:.0f} s, {datetime.datetime.now().isoformat(timespec='seconds')}; "
          f"uptime: {load_text()}")


def run_phases(
    workdir: Path, server: Any, stack: contextlib.ExitStack, args: argparse.Namespace, total: int, phases: list[str]
) -> None:
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
    fleet = workdir / "source-wave"
    wave_size = make_tree(fleet, args.wave_mib * MiB, args.wave_files) if {"wave", "preflight"} & set(phases) else 0
    os.sync()
    print(f"# data written in {time.monotonic() - made:.1f} s under {workdir}", flush=True)
    servers = start_source_servers(stack, args.wave_copies) if {"wave", "preflight"} & set(phases) else []
    for machine in (server, *servers):
        # Each connection's sshd and what it runs inherit the listener's niceness.
        os.setpriority(os.PRIO_PROCESS, machine.pid, args.machines_nice)
    if args.machines_nice:
        group = stack.enter_context(machines_group([m.pid for m in (server, *servers)], args.machines_nice))
        print(f"# the machines' CPU group: {group}", flush=True)
    ssh = Ssh(server, workdir)
    machines = Machines([server, *servers])
    services = [Service(workdir, server, label="this")]
    try:
        if {"second", "memory"} & set(phases) and args.beside is not None:
            services.append(Service(workdir, server, label="beside", src=args.beside.resolve()))
        service = services[0]
        if "copy" in phases:
            copy_phase(service, ssh, machines, {k: shapes[k] for k in ("large", "files")}, workdir, args)
        if "second" in phases:
            second_phase(services, second, second_size, args.second_files, workdir, args)
        if "four" in phases:
            four_args = argparse.Namespace(**{**vars(args), "repeat": args.four_repeat or args.repeat})
            four_phase(service, machines, *shapes["large"], workdir, four_args)
        if "memory" in phases:
            memory_phase(services, sizes, workdir, args)
        sources = fleet_sources(service, servers, fleet, wave_size, args.wave_copies) if servers else []
        if "preflight" in phases:
            preflight_phase(service, server, servers, sources, workdir, args)
        if "wave" in phases:
            wave_phase(service, servers, sources, machines, wave_size, args.wave_files, workdir, args)
        if args.profile:
            profile_phase(service, {k: v for k, v in shapes.items() if k in ("files", "large")}, workdir)
    finally:
        for service in services:
            service.stop()


if __name__ == "__main__":
    main()
