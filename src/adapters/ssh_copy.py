"""The real copy (SPEC 2.8) over the SSH driver's connections: each volume as
a tar stream from the source through the service into a staging directory
under the target's root on the host, a manifest (relative path, size,
SHA-256) computed on both machines and compared, then the move into place.
Nothing is half-written at a volume's place: a failed, cancelled or
interrupted copy leaves only its staging, removed at once or by the next run
of that migration."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future

from migration_core.machines import (
    CopyEnd,
    CopyFailed,
    CopyJob,
    CopyProgress,
    MachineAddress,
    MachineUnreachable,
    VolumeCopied,
    VolumeToCopy,
)

from .remote_shell import kill_groups, remote_command, tracked_command
from .ssh import login_at
from .ssh_library import asyncssh
from .tar_stream import TarCounter

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
# A report at most this often (bytes in between are counted, not reported).
REPORT_SECONDS = 0.25

# Size and relative path of each regular file below "$1", leaving out the
# paths ("-path" patterns) given after it, on its own filesystem: NUL-separated.
_SIZES = (
    'd=$1; shift; cd -- "$d" || exit 3; '
    'for x do set -- "$@" -path "$x" -prune -o; shift; done; '
    "find . -xdev \"$@\" -type f -printf '%s %p\\0'"
)
# The SHA-256 of the same files, as sha256sum -z prints them.
_HASHES = (
    'd=$1; shift; cd -- "$d" || exit 3; '
    'for x do set -- "$@" -path "$x" -prune -o; shift; done; '
    'find . -xdev "$@" -type f -print0 | xargs -0r sha256sum -z --'
)
# Move what "$1" holds into "$2", setting aside in "$3" what stood there under
# the same names, then remove that: a name's old contents go only once its
# verified copy is at hand.
_MOVE_INTO_PLACE = (
    'staged=$1 place=$2 old=$3; mkdir -p -- "$place" "$old" || exit 1; '
    'for e in "$staged"/* "$staged"/.[!.]* "$staged"/..?*; do '
    '[ -e "$e" ] || [ -L "$e" ] || continue; n=${e##*/}; '
    'if [ -e "$place/$n" ] || [ -L "$place/$n" ]; then mv -f -- "$place/$n" "$old/$n" || exit 1; fi; '
    'mv -- "$e" "$place/$n" || exit 1; done; '
    'chmod --reference="$staged" -- "$place" 2>/dev/null; touch -r "$staged" -- "$place" 2>/dev/null; '
    'rm -rf -- "$old"'
)

Connect = Callable[[MachineAddress], contextlib.AbstractAsyncContextManager[tuple[asyncssh.SSHClientConnection, str]]]
Pinned = Callable[[str, str], None]


def place(root: str, name: str) -> str:
    """Where volume `name` is below `root`: `/` is the root itself."""
    return root if name == "/" else root.rstrip("/") + name


def staging_of(host_root: str, migration_id: int) -> str:
    return place(host_root, f"/.migration-staging-{migration_id}")


def _volume_path(name: str) -> str:
    """A Linux volume's name as a path: absolute, normal, no `..`."""
    normal = "/" + posixpath.normpath(name).lstrip("/") if name.startswith("/") else ""
    if not normal or ".." in normal.split("/") or normal != name.rstrip("/") and name != "/":
        raise CopyFailed(f"Volume {name!r} is not an absolute POSIX path; a real copy needs one.")
    return normal


def _glob_escaped(path: str) -> str:
    """`path` as a find -path pattern matching only itself."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in path)


def nested_volumes(name: str, others: Sequence[str]) -> list[str]:
    """The other volumes below `name`, relative to it (`./var`)."""
    prefix = "/" if name == "/" else name + "/"
    return ["./" + other[len(prefix):] for other in others if other != name and other.startswith(prefix)]


def _bytes(output: object) -> bytes:
    return output if isinstance(output, bytes) else b""


def _first_line(stderr: bytes, default: str) -> str:
    lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[0].strip() if lines else default


def _why(stderr: bytes, where: str, default: str) -> str:
    text = stderr.decode("utf-8", "replace")
    for line in text.splitlines():
        if "No space left on device" in line or "Wrote only" in line:  # tar's words for a full disk
            return f"No space left on the host under {where}: {line.strip()}"
        if "Permission denied" in line:
            return f"Permission denied: {line.strip()}"
    return _first_line(stderr, default)


class SshCopy:
    """One migration's copy, carried out on the driver's loop."""

    def __init__(
        self,
        job: CopyJob,
        report: Callable[[CopyProgress], None],
        connect: Connect,
        *,
        after_stream: Callable[[int, str], Awaitable[None]] | None = None,
    ) -> None:
        if job.host is None:
            raise ValueError(f"migration {job.migration_id}'s target names no host to copy onto")
        self._job = job
        self._host: MachineAddress = job.host
        self._report = report
        self._connect = connect
        # Called once a volume's stream is in staging, before it is verified.
        self._after_stream = after_stream
        self._done: list[VolumeCopied] = []
        self._last_report = 0.0
        # The process groups still running on each machine, to kill on a stop.
        self._running: dict[str, set[int]] = {"source": set(), "host": set()}

    async def run(self) -> None:
        job = self._job
        staging = staging_of(self._host.root, job.migration_id)
        try:
            async with self._connect(job.source) as (source, _), self._connect(self._host) as (host, _):
                try:
                    await self._must(host, ("rm", "-rf", "--", staging), "host", "")
                    for index in range(job.first, len(job.volumes)):
                        await self._volume(source, host, index, staging)
                finally:
                    await self._stop_remote({"source": source, "host": host}, staging)
        except MachineUnreachable as failure:
            raise CopyFailed(failure.message) from None

    async def _stop_remote(self, connections: dict[str, asyncssh.SSHClientConnection], staging: str) -> None:
        """Kill what still runs of this copy on both machines, then remove the staging."""
        for side, connection in connections.items():
            pids = self._running[side]
            if pids and not connection.is_closed():
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(10):
                        await connection.run(kill_groups(*pids), check=False, stdin=asyncssh.DEVNULL)
            pids.clear()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(30):
                await connections["host"].run(
                    remote_command("rm", "-rf", "--", staging), check=False, stdin=asyncssh.DEVNULL
                )

    async def _start(
        self, connection: asyncssh.SSHClientConnection, side: str, argv: Sequence[str], *, stdin: object = None
    ) -> tuple[asyncssh.SSHClientProcess[bytes], int]:
        """Start a tracked remote process; it and the id of its process group."""
        options: dict[str, object] = {"encoding": None}
        if stdin is not None:
            options["stdin"] = stdin
        process: asyncssh.SSHClientProcess[bytes] = await connection.create_process(
            tracked_command(*argv), **options
        )
        line = await process.stdout.readline()
        if not line.strip().isdigit():
            process.close()
            raise CopyFailed(f"The {side} did not start {argv[0]} (it said {line[:80]!r}).")
        pid = int(line)
        self._running[side].add(pid)
        return process, pid

    def _progress(self, index: int, partial: int = 0, files: int = 0, *, now: bool = False) -> None:
        loop = asyncio.get_running_loop()
        if not now and loop.time() - self._last_report < REPORT_SECONDS:
            return
        self._last_report = loop.time()
        self._report(CopyProgress(index, partial, files, tuple(self._done)))

    async def _volume(
        self, source: asyncssh.SSHClientConnection, host: asyncssh.SSHClientConnection, index: int, staging: str
    ) -> None:
        job = self._job
        volume: VolumeToCopy = job.volumes[index]
        name = _volume_path(volume.name)
        origin = place(job.source.root, name)
        target = place(self._host.root, name)
        staged = f"{staging}/{index}"
        left_out = nested_volumes(name, [v for v in job.source_volumes if v.startswith("/")])
        self._progress(index, now=True)
        await self._must(host, ("mkdir", "-p", "--", staged), "host", self._host.root)
        await self._stream(source, host, origin, staged, left_out, index)
        if self._after_stream is not None:
            await self._after_stream(index, staged)
        patterns = [_glob_escaped(path) for path in left_out]
        theirs, ours = await asyncio.gather(
            self._manifest(source, origin, patterns, "source"),
            self._manifest(host, staged, [], "host"),
        )
        differing = sorted(path for path in theirs.keys() | ours.keys() if theirs.get(path) != ours.get(path))
        if differing:
            first = differing[0].decode("utf-8", "backslashreplace")
            raise CopyFailed(
                f"Verification failed for volume {volume.name}: {len(differing)} file(s) differ"
                f" between {origin} on the source and the copy on the host, the first {first!r}."
            )
        await self._must(
            host,
            ("sh", "-c", _MOVE_INTO_PLACE, "sh", staged, target, f"{staging}/old-{index}"),
            "host",
            target,
        )
        copied = sum(size for size, _ in theirs.values())
        self._done.append(VolumeCopied(index=index, bytes=copied, files=len(theirs)))
        self._progress(index + 1, now=True)

    async def _stream(
        self,
        source: asyncssh.SSHClientConnection,
        host: asyncssh.SSHClientConnection,
        origin: str,
        staged: str,
        left_out: list[str],
        index: int,
    ) -> None:
        excludes = [f"--exclude={path}" for path in left_out]
        reading = (
            "tar", "-C", origin, "--one-file-system", "--no-wildcards", "--anchored", *excludes,
            "-cpf", "-", "--", ".",
        )
        writing = ("tar", "-C", staged, "-xpf", "-")
        counter = TarCounter()
        sender, sender_pid = await self._start(source, "source", reading, stdin=asyncssh.DEVNULL)
        try:
            receiver, receiver_pid = await self._start(host, "host", writing)
            try:
                while chunk := await sender.stdout.read(CHUNK):
                    counter.feed(chunk)
                    receiver.stdin.write(chunk)
                    await receiver.stdin.drain()
                    self._progress(index, counter.file_bytes, counter.files)
                sent = await sender.wait()
                if source.is_closed() or sent.exit_status is None:
                    raise CopyFailed(self._vanished("source", "its connection closed"))
                self._running["source"].discard(sender_pid)
                receiver.stdin.write_eof()
                # wait() gathers what the process wrote and nobody read: its errors.
                received = await receiver.wait()
                self._running["host"].discard(receiver_pid)
                if received.exit_status != 0:
                    raise CopyFailed(
                        _why(_bytes(received.stderr), self._host.root, "tar on the host failed")
                        + f" (writing {origin} into {staged} on the host)"
                    )
                if sent.exit_status != 0:
                    raise CopyFailed(
                        _why(_bytes(sent.stderr), origin, "tar on the source failed reading " + origin)
                        + " (on the source)"
                    )
            finally:
                if receiver.exit_status is None:
                    with contextlib.suppress(Exception):
                        receiver.kill()
                receiver.close()
        except (asyncssh.Error, OSError) as error:
            raise CopyFailed(self._vanished("source" if source.is_closed() else "host", error)) from None
        finally:
            if sender.exit_status is None:
                with contextlib.suppress(Exception):
                    sender.kill()
            sender.close()

    def _vanished(self, which: str, error: object) -> str:
        address = self._job.source if which == "source" else self._host
        return f"The {which} {address.ip} port {address.port} vanished mid-copy ({error})."

    async def _manifest(
        self, connection: asyncssh.SSHClientConnection, directory: str, patterns: list[str], side: str
    ) -> dict[bytes, tuple[int, bytes]]:
        sizes_out = await self._must(connection, ("sh", "-c", _SIZES, "sh", directory, *patterns), side, directory)
        hashes_out = await self._must(connection, ("sh", "-c", _HASHES, "sh", directory, *patterns), side, directory)
        sizes = {}
        for entry in sizes_out.split(b"\0"):
            if entry:
                size, _, path = entry.partition(b" ")
                sizes[path] = int(size)
        manifest = {}
        for entry in hashes_out.split(b"\0"):
            if entry:
                digest, path = entry[:64], entry[66:]
                manifest[path] = (sizes.get(path, -1), digest)
        return manifest

    async def _must(
        self, connection: asyncssh.SSHClientConnection, argv: Sequence[str], side: str, where: str
    ) -> bytes:
        """Run a tracked command to its end; its output, or CopyFailed in words."""
        try:
            process, pid = await self._start(connection, side, argv, stdin=asyncssh.DEVNULL)
            try:
                result = await process.wait()
            finally:
                process.close()
            stdout, stderr = _bytes(result.stdout), _bytes(result.stderr)
            self._running[side].discard(pid)
        except (asyncssh.Error, OSError) as error:
            raise CopyFailed(self._vanished(side, error)) from None
        if result.exit_status != 0:
            raise CopyFailed(_why(stderr, where, f"a command failed on the {side}") + f" (on the {side})")
        return stdout


class CopyInBackground:
    """A copy running on the driver's loop, as the core's CopyHandle: its
    reports and its end are kept for the runner, which `changed` tells."""

    # How long a cancel waits for the copy's own cleanup (its staging removed).
    CLEANUP_SECONDS = 40.0

    def __init__(self, job: CopyJob, start: Callable[[Callable[[CopyProgress], None]], SshCopy],
                 changed: Callable[[], None], loop: asyncio.AbstractEventLoop) -> None:
        self._job = job
        self._changed = changed
        self._lock = threading.Lock()
        self._progress: CopyProgress | None = None
        self._end: CopyEnd | None = None
        self._ended = threading.Event()
        copy = start(self._report)
        self._future: Future[None] = asyncio.run_coroutine_threadsafe(self._carry(copy), loop)

    def _report(self, progress: CopyProgress) -> None:
        with self._lock:
            self._progress = progress
        self._changed()

    async def _carry(self, copy: SshCopy) -> None:
        end = CopyEnd()
        try:
            await copy.run()
        except CopyFailed as failed:
            end = CopyEnd(failed.message)
        except asyncio.CancelledError:
            end = CopyEnd("cancelled")
            raise
        except Exception as exc:  # the copy's own fault, said as it is
            log.exception("the copy of migration %d failed", self._job.migration_id)
            end = CopyEnd(f"The copy failed: {exc}")
        finally:
            self._log(end)
            with self._lock:
                self._end = end
            self._ended.set()
            self._changed()

    def _log(self, end: CopyEnd) -> None:
        job, host = self._job, self._job.host
        assert host is not None, "a real copy has a host"
        how = "done" if end.failure is None else f"failed: {end.failure}"
        log.info(
            "copy of migration %d, %d volume(s) from %s to %s under %s: %s",
            job.migration_id, len(job.volumes) - job.first, login_at(job.source), login_at(host), host.root, how,
        )

    def progress(self) -> CopyProgress | None:
        with self._lock:
            return self._progress

    def ended(self) -> CopyEnd | None:
        with self._lock:
            return self._end

    def next_due(self) -> None:
        return None  # every report calls `changed`

    def cancel(self) -> None:
        self._future.cancel()
        self._ended.wait(self.CLEANUP_SECONDS)
