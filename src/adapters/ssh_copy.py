"""The real copy (SPEC 2.8) over the SSH driver's connections. Each volume
goes through its itinerary: the plan (both trees listed and compared), the
new copy begun beside the place (unchanged entries hard-linked), the stream
of what differs from the source through the service (each file hashed as it
passes), the check (the host's hashes of what it wrote; the source listed
again, and up to three catch-up passes of what changed meanwhile), then the
journal and the swap into place. The steps' remote commands are in
`volume_place`; this module carries them over asyncssh."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import posixpath
import re
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future

import attrs

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
from migration_core.sync_plan import DIRECTORY, REGULAR, Listing, VolumePlan, plan_volume, tree_order

from .remote_shell import kill_groups, remote_command, tracked_command
from .ssh import login_at
from .ssh_library import asyncssh
from .tar_stream import TarCounter
from .volume_place import (
    ABANDON,
    BEGIN,
    CAN_SET_OWNERS,
    CLEAR,
    HASHES,
    JOURNAL,
    LIST,
    RECOVER,
    SWAP,
    glob_escaped,
    incoming_of,
    journal_of,
    journal_tar,
    nul_list,
    parse_listing,
    place_patterns,
)

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
# A report at most this often (bytes in between are counted, not reported).
REPORT_SECONDS = 0.25
# Passes of just the files that changed while a volume was read, after the first.
CATCH_UP_PASSES = 3
# tar's words for a file it read while it changed, or that went before it read it.
_CHANGED = re.compile(rb"^tar: (.*): file changed as we read it$", re.M)
_GONE = re.compile(rb"^tar: (.*): (?:File removed before we read it|Cannot stat: No such file or directory)$", re.M)

Connect = Callable[[MachineAddress], contextlib.AbstractAsyncContextManager[tuple[asyncssh.SSHClientConnection, str]]]


def place(root: str, name: str) -> str:
    """Where volume `name` is below `root`: `/` is the root itself."""
    return root if name == "/" else root.rstrip("/") + name


def staging_of(host_root: str, migration_id: int) -> str:
    """Where an earlier release staged a run's volumes: removed by the next run."""
    return place(host_root, f"/.migration-staging-{migration_id}")


def _volume_path(name: str) -> str:
    """A Linux volume's name as a path: absolute, normal, no `..`."""
    normal = "/" + posixpath.normpath(name).lstrip("/") if name.startswith("/") else ""
    if not normal or ".." in normal.split("/") or normal != name.rstrip("/") and name != "/":
        raise CopyFailed(f"Volume {name!r} is not an absolute POSIX path; a real copy needs one.")
    return normal


def nested_volumes(name: str, others: Sequence[str]) -> list[str]:
    """The other volumes below `name`, relative to it (`./var`), however
    their names are written (`/var/` is `/var`)."""
    prefix = "/" if name == "/" else name + "/"
    normal = {"/" + posixpath.normpath(other).lstrip("/") for other in others if other.startswith("/")}
    return sorted("./" + other[len(prefix):] for other in normal if other != name and other.startswith(prefix))


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


def _tar_names(pattern: re.Pattern[bytes], stderr: bytes) -> set[bytes]:
    """The paths tar names in lines matching `pattern` (its messages escape them as C does)."""
    return {codecs.escape_decode(match)[0] for match in pattern.findall(stderr)}


def _shown(path: bytes) -> str:
    return repr(path.decode("utf-8", "backslashreplace"))


def _still_changing(name: str, changing: set[bytes]) -> str:
    return (
        f"{len(changing)} file(s) of volume {name} kept changing while they were copied, even after"
        f" {CATCH_UP_PASSES} catch-up passes; the first {_shown(min(changing))}. The copy in place is"
        " untouched. Stop what writes them, copy from a snapshot (a root that does not change), or make"
        " this a warm migration with a pre_cutover command that stops them."
    )


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
        # Called once a volume's first stream is in its new copy, before it is checked.
        self._after_stream = after_stream
        self._done: list[VolumeCopied] = []
        self._last_report = 0.0
        self._planned: int | None = None
        # The process groups still running on each machine, to kill on a stop.
        self._running: dict[str, set[int]] = {"source": set(), "host": set()}
        # The volume being assembled (its place and new copy), to abandon on a stop.
        self._assembling: tuple[str, str] | None = None
        # How far the host's clock is ahead of the source's (ns): change times compare across it.
        self._clock_offset = 0

    async def run(self) -> None:
        job = self._job
        try:
            async with self._connect(job.source) as (source, _), self._connect(self._host) as (host, _):
                try:
                    owners = (await self._must(host, ("sh", "-c", CAN_SET_OWNERS), "host", "")).strip() == b"1"
                    host_ahead, source_ahead = await asyncio.gather(
                        self._clock(host, "host"), self._clock(source, "source")
                    )
                    self._clock_offset = host_ahead - source_ahead
                    await self._recover(host)
                    for index in range(job.first, len(job.volumes)):
                        await self._volume(source, host, index, owners=owners)
                finally:
                    await self._stop_remote({"source": source, "host": host})
        except MachineUnreachable as failure:
            raise CopyFailed(failure.message) from None

    async def _clock(self, connection: asyncssh.SSHClientConnection, side: str) -> int:
        """How far a machine's clock is ahead of the service's, in nanoseconds
        (half the round trip allowed for); 0 where `date` cannot say."""
        before = time.time_ns()
        said = await self._must(connection, ("date", "+%s%N"), side, "")
        after = time.time_ns()
        try:
            return int(said.strip()) - (before + after) // 2
        except ValueError:
            return 0

    async def _recover(self, host: asyncssh.SSHClientConnection) -> None:
        """Before anything else: finish the swaps an earlier run of this
        migration left under way, and remove what it left half-made."""
        migration_id = self._job.migration_id
        triples = []
        for volume in self._job.volumes:
            target = place(self._host.root, _volume_path(volume.name))
            triples += [target, incoming_of(target, migration_id), journal_of(target, migration_id)]
        # Untracked, as the swap itself: a cancel must not stop a swap half-way.
        await self._must(host, ("sh", "-c", RECOVER, SWAP, *triples), "host", self._host.root, tracked=False)
        await self._must(host, ("rm", "-rf", "--", staging_of(self._host.root, migration_id)), "host", "")

    async def _stop_remote(self, connections: dict[str, asyncssh.SSHClientConnection]) -> None:
        """Kill what still runs of this copy on both machines, then remove the
        new copy it was assembling (not one whose swap was committed)."""
        for side, connection in connections.items():
            pids = self._running[side]
            if pids and not connection.is_closed():
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(10):
                        await connection.run(kill_groups(*pids), check=False, stdin=asyncssh.DEVNULL)
            pids.clear()
        if self._assembling is not None:
            target, incoming = self._assembling
            journal = journal_of(target, self._job.migration_id)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(30):
                    await connections["host"].run(
                        remote_command("sh", "-c", ABANDON, "sh", incoming, journal),
                        check=False,
                        stdin=asyncssh.DEVNULL,
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
        self._report(CopyProgress(index, partial, files, tuple(self._done), self._planned))

    async def _volume(
        self, source: asyncssh.SSHClientConnection, host: asyncssh.SSHClientConnection, index: int, *, owners: bool
    ) -> None:
        """One volume's itinerary: plan, begin, send and check (with catch-up passes), swap."""
        job = self._job
        volume: VolumeToCopy = job.volumes[index]
        name = _volume_path(volume.name)
        at = _Volume(
            index=index,
            name=volume.name,
            origin=place(job.source.root, name),
            target=place(self._host.root, name),
            nested=nested_volumes(name, job.source_volumes),
            migration_id=job.migration_id,
        )
        self._planned = None
        self._progress(index, now=True)

        theirs, ours = await asyncio.gather(self._list_source(source, at), self._list(
            host, "host", at.target, place_patterns(at.nested), missing_ok=True
        ))
        plan = plan_volume(theirs, ours, owners=owners, clock_offset=self._clock_offset)
        self._planned = plan.send_bytes
        self._progress(index, now=True)

        self._assembling = (at.target, at.incoming)
        await self._must(
            host, ("sh", "-c", BEGIN, "sh", at.target, at.incoming), "host", at.target, stdin=nul_list(plan.links)
        )
        sent = TarCounter()  # what every pass of this volume sent, counted
        theirs = await self._send_and_check(source, host, at, plan, sent, owners=owners)

        swap = plan_volume(theirs, ours, owners=owners, clock_offset=self._clock_offset)
        # Once the journal is being written the copy goes into place: a cancel
        # meanwhile waits for the swap, so that once it is answered nothing of
        # this run reaches a place any more.
        swapping = asyncio.ensure_future(self._swap(host, at, journal_tar(swap, theirs, ours, owners=owners)))
        try:
            await asyncio.shield(swapping)
        except asyncio.CancelledError:
            await swapping
            raise
        self._assembling = None
        self._done.append(VolumeCopied(
            index=index, bytes=sent.file_bytes, files=sent.files, linked=len(swap.links), dropped=len(swap.drops),
            held=sum(entry.size for entry in theirs.values() if entry.kind == REGULAR),
        ))
        self._planned = None
        self._progress(index + 1, now=True)

    async def _swap(self, host: asyncssh.SSHClientConnection, at: _Volume, journal: bytes) -> None:
        await self._must(host, ("sh", "-c", JOURNAL, "sh", at.journal), "host", at.target, stdin=journal)
        await self._must(host, ("sh", "-c", SWAP, "sh", at.target, at.incoming, at.journal), "host", at.target,
                         tracked=False)

    async def _send_and_check(
        self, source: asyncssh.SSHClientConnection, host: asyncssh.SSHClientConnection, at: _Volume,
        plan: VolumePlan, sent: TarCounter, *, owners: bool,
    ) -> Listing:
        """Stream what the plan sends into the new copy and check it: what was
        written is what left the source, and the new copy matches the source
        listed again; what changed meanwhile goes again, up to CATCH_UP_PASSES
        times. The source's last listing, which the new copy matches."""
        sending = plan.sends
        for catch_up in range(CATCH_UP_PASSES + 1):
            paths = tree_order((*plan.dirs, *sending))
            stream = await self._stream(source, host, at.origin, at.incoming, paths, at.index, sent)
            if catch_up == 0 and self._after_stream is not None:
                await self._after_stream(at.index, at.incoming)
            await self._verify_sent(host, at, sending, stream)
            theirs, held = await asyncio.gather(
                self._list_source(source, at), self._list(host, "host", at.incoming, [])
            )
            plan = plan_volume(theirs, held, owners=owners, clock_offset=self._clock_offset)
            # tar also says a directory changed as it read it: its entries are checked on their own.
            read_changing = {p for p in _tar_names(_CHANGED, stream.warnings) if p in theirs}
            changing = set(plan.sends) | {p for p in read_changing if theirs[p].kind != DIRECTORY}
            if not changing and not plan.drops:
                return theirs
            if catch_up == CATCH_UP_PASSES:
                raise CopyFailed(_still_changing(at.name, changing or set(plan.drops)))
            # What is sent again goes first, and so does a file where a directory now stands.
            in_the_way = [path for path in plan.dirs if path in held and held[path].kind != DIRECTORY]
            clear = nul_list((*changing, *plan.drops, *in_the_way))
            await self._must(host, ("sh", "-c", CLEAR, "sh", at.incoming), "host", at.incoming, stdin=clear)
            sending = tree_order(changing)
        raise AssertionError("the last pass returns or raises")

    async def _list_source(self, source: asyncssh.SSHClientConnection, at: _Volume) -> Listing:
        return await self._list(source, "source", at.origin, [glob_escaped(path) for path in at.nested])

    async def _list(
        self, connection: asyncssh.SSHClientConnection, side: str, directory: str, patterns: list[str],
        *, missing_ok: bool = False,
    ) -> Listing:
        """A tree's listing; empty for a place not there yet (`missing_ok`)."""
        try:
            process, pid = await self._start(
                connection, side, ("sh", "-c", LIST, "sh", directory, *patterns), stdin=asyncssh.DEVNULL
            )
            try:
                result = await process.wait()
            finally:
                process.close()
            self._running[side].discard(pid)
        except (asyncssh.Error, OSError) as error:
            raise CopyFailed(self._vanished(side, error)) from None
        if result.exit_status == 3:
            if missing_ok:
                return {}
            raise CopyFailed(f"{directory} on the {side} is not a directory the login may enter.")
        if result.exit_status != 0:
            failure = _why(_bytes(result.stderr), directory, f"listing {directory} failed")
            raise CopyFailed(f"{failure} (on the {side})")
        # On the host, what another filesystem mounted below holds is not the copy's to change.
        return parse_listing(_bytes(result.stdout), one_device=side == "host")

    async def _verify_sent(
        self, host: asyncssh.SSHClientConnection, at: _Volume, sending: Sequence[bytes], stream: _Stream
    ) -> None:
        """Each file sent has, on the host as written, the SHA-256 it had as it
        left the source; any difference fails the volume."""
        files = [path for path in sending if path in stream.digests]
        written = await self._must(
            host, ("sh", "-c", HASHES, "sh", at.incoming), "host", at.incoming, stdin=nul_list(files)
        )
        on_host = {}
        for record in written.split(b"\0"):
            if record:
                on_host[record[66:]] = record[:64]
        differing = sorted(path for path in files if on_host.get(path) != stream.digests[path])
        if differing:
            raise CopyFailed(
                f"Verification failed for volume {at.name}: {len(differing)} file(s) differ"
                f" between {at.origin} on the source and the copy on the host, the first {_shown(differing[0])}."
            )

    async def _stream(
        self,
        source: asyncssh.SSHClientConnection,
        host: asyncssh.SSHClientConnection,
        origin: str,
        incoming: str,
        paths: Sequence[bytes],
        index: int,
        counted: TarCounter,
    ) -> _Stream:
        """Send `paths` (directories and what differs) from the source into the
        new copy; what tar said of files that changed, and each file's hash."""
        reading = (
            "tar", "-C", origin, "--format=posix", "--pax-option=delete=atime,delete=ctime", "--no-recursion",
            "--null", "--verbatim-files-from", "--no-unquote", "-T", "-", "-cpf", "-",
        )
        # Owners by number, as the plan compares them: names may map to other ids on the host.
        writing = ("tar", "-C", incoming, "--numeric-owner", "-xpf", "-")
        stream = TarCounter(digests=True)
        before_bytes, before_files = counted.file_bytes, counted.files
        sender, sender_pid = await self._start(source, "source", reading)
        try:
            sender.stdin.write(nul_list(paths))
            sender.stdin.write_eof()
            receiver, receiver_pid = await self._start(host, "host", writing)
            try:
                while chunk := await sender.stdout.read(CHUNK):
                    stream.feed(chunk)
                    receiver.stdin.write(chunk)
                    await receiver.stdin.drain()
                    self._progress(index, before_bytes + stream.file_bytes, before_files + stream.files)
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
                        + f" (writing {origin} into {incoming} on the host)"
                    )
                warnings = _bytes(sent.stderr)
                if sent.exit_status not in (0, 1) and not _only_changes(warnings):
                    raise CopyFailed(
                        _why(warnings, origin, "tar on the source failed reading " + origin) + " (on the source)"
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
        counted.file_bytes += stream.file_bytes
        counted.files += stream.files
        return _Stream(stream.digests, warnings)

    def _vanished(self, which: str, error: object) -> str:
        address = self._job.source if which == "source" else self._host
        return f"The {which} {address.ip} port {address.port} vanished mid-copy ({error})."

    async def _must(
        self, connection: asyncssh.SSHClientConnection, argv: Sequence[str], side: str, where: str,
        *, stdin: bytes | None = None, tracked: bool = True,
    ) -> bytes:
        """Run a remote command to its end (fed `stdin`); its output, or
        CopyFailed in words. An untracked one is not killed on a stop: the swap."""
        try:
            if tracked:
                process, pid = await self._start(
                    connection, side, argv, stdin=asyncssh.DEVNULL if stdin is None else None
                )
            else:
                process, pid = await connection.create_process(remote_command(*argv), encoding=None), None
            try:
                if stdin is not None:
                    process.stdin.write(stdin)
                process.stdin.write_eof()
                result = await process.wait()
            finally:
                process.close()
            stdout, stderr = _bytes(result.stdout), _bytes(result.stderr)
            if pid is not None:
                self._running[side].discard(pid)
        except (asyncssh.Error, OSError) as error:
            raise CopyFailed(self._vanished(side, error)) from None
        if result.exit_status != 0:
            raise CopyFailed(_why(stderr, where, f"a command failed on the {side}") + f" (on the {side})")
        return stdout


@attrs.frozen
class _Volume:
    """Where one volume of a copy is: its name, its tree on the source, its
    place on the host, the other volumes below it (left out), and the new
    copy and the journal of this migration beside the place."""

    index: int
    name: str
    origin: str
    target: str
    nested: list[str]
    migration_id: int

    @property
    def incoming(self) -> str:
        return incoming_of(self.target, self.migration_id)

    @property
    def journal(self) -> str:
        return journal_of(self.target, self.migration_id)


class _Stream:
    """What one stream of a volume said: each file's hash, and tar's warnings."""

    def __init__(self, digests: dict[bytes, bytes], warnings: bytes) -> None:
        self.digests = digests
        self.warnings = warnings


def _only_changes(stderr: bytes) -> bool:
    """Whether tar's complaints are only of files that changed or went while it read."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return all(
        _CHANGED.match(line) or _GONE.match(line) or line.startswith(b"tar: Exiting with failure status")
        for line in lines
    )


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
