"""The real copy (SPEC 2.8, 2.10). Each volume goes through its itinerary:
the plan (both trees listed and compared), the new copy begun beside the
place (unchanged entries hard-linked), the stream of what differs, the check
(with up to three catch-up passes of what changed meanwhile), then the
journal and the swap into place. The steps' remote commands are in
`volume_place`; each machine is reached by OpenSSH's `ssh` through one
control master (`copy_engine.openssh`), and the stream goes from the
source's `tar -c` to the host's `tar -x` from pipe to pipe in the kernel
(`copy_engine.relay`): its bytes never enter the service's Python.

**The check, now that the service does not see the bytes.** After a stream,
both machines hash the files it sent, at once: the host what it wrote in the
new copy, the source the same files at their origin. Then the source is
listed again (each machine's hashing and listing are one remote command). A
file is then one of three:
- its two hashes are equal: the new copy holds what the source held when it
  was hashed; the listing after that says whether it changed since (its
  change time moves with every write), and a file changed since is sent
  again, as any file the plan finds different;
- its hashes differ, and the source's listing after the hashing is what it
  was before the stream (size, times, change time and all): nothing wrote to
  the file while it was read, hashed or since, so the host did not write what
  left the source: the verification fails, naming how many and the first;
- its hashes differ and the file changed on the source (or went) since it
  was listed before the stream: it changed while or after it was read. It is
  no error by itself: it goes into the next catch-up pass, as a file tar said
  changed as it read it. After the passes, a file still changing fails a
  cold run in words.
The bytes and files a volume's report counts are those of the files sent as
the host listing shows them once written (no parser of the archive is
needed), the progress during a stream the bytes the relay has moved, capped
at what the pass sends.

**Per kind of copy (SPEC 2.9).** A cold run (`CopyKind.RUN`) fails when
files still change after the catch-up passes. A warm sync (`SYNC`) goes the
same way, but settles what still changes after its last pass instead of
failing, so that the place only ever holds verified content:
- a file (any entry but a directory) still changing keeps, in the new copy,
  the entry the copy in place holds at its path (hard-linked back from the
  place: the very file the last verified sync put there); where the place
  holds none there (new since the last sync, or a directory there), the path
  is left out of this sync;
- a directory the new copy lacks (made on the source during the last pass,
  or where the new copy holds another kind of entry) is left out with all
  below it; what the source no longer has is left out, as in any copy;
- the new copy is then made to hold exactly that (the rest removed from it),
  and `CopyEnd.changing` counts the files still changing: the next sync,
  which compares with what is then in place, sends them.
Every other file is as the source held it when last listed, verified.
A cutover (`CUTOVER`) first runs `pre_cutover` on the source (`sh -c` with
the command as its one argument, bounded by HOOK_SECONDS, its process group
killed there; stdout and stderr together, the last HOOK_OUTPUT_BYTES kept);
a non-zero exit fails it before anything is listed or sent. Its final sync
has no catch-up pass: a file that tar says changed, whose hashes differ, or
that the source listed again shows changed (or gone) fails it, the source not
quiesced, and nothing is swapped: every volume is verified beside its place
before the first swap. Then `post_cutover` runs on the host the same way.
Every hook that ran is in `CopyEnd.hooks`; its output is never logged."""

from __future__ import annotations

import asyncio
import bisect
import codecs
import contextlib
import logging
import os
import posixpath
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import TypeVar

import attrs

from migration_core import Conflict
from migration_core.machines import (
    HOOK_OUTPUT_BYTES,
    HOOK_SECONDS,
    CopyEnd,
    CopyFailed,
    CopyJob,
    CopyKind,
    CopyProgress,
    HookRun,
    MachineAddress,
    MachineUnreachable,
    SwapGate,
    VolumeCopied,
    VolumeToCopy,
)
from migration_core.sync_plan import DIRECTORY, REGULAR, TOP, Listing, VolumePlan, plan_volume, tree_order

from .copy_engine.openssh import Link, Login, Transport, private_directory
from .copy_engine.relay import Relay, pipe
from .remote_shell import hook_command, kill_groups, remote_command, tracked_command
from .ssh import login_at
from .volume_place import (
    ABANDON,
    BEGIN,
    CLEAR,
    HASHES_THEN_LIST,
    JOURNAL_AND_SWAP,
    LINK_BACK,
    LIST,
    OWNERS_AND_CLOCK,
    RECOVER,
    SWAP,
    glob_escaped,
    incoming_of,
    journal_of,
    journal_tar,
    nul_list,
    parse_listing,
    place_patterns,
    split_hashes,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# A report at most this often (bytes in between are counted, not reported).
REPORT_SECONDS = 0.25
# Passes of just the files that changed while a volume was read, after the first.
CATCH_UP_PASSES = 3
# tar's words for a file it read while it changed, or that went before it read it.
_CHANGED = re.compile(rb"^tar: (.*): file changed as we read it$", re.M)
_GONE = re.compile(rb"^tar: (.*): (?:File removed before we read it|Cannot stat: No such file or directory)$", re.M)
PIPE = asyncio.subprocess.PIPE
DEVNULL = asyncio.subprocess.DEVNULL
SIDES = ("source", "host")


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


def _not_quiesced(name: str, changed: set[bytes]) -> str:
    first = min(changed)
    shown = _shown(first[2:] if first.startswith(b"./") else first)
    return (
        f"The source was not quiesced: {len(changed)} file(s) of volume {name} changed during the cutover's"
        f" final sync, the first {shown}. The copy in place is the last verified sync."
    )


class _HookFailed(CopyFailed):
    """A cutover hook failed: the message quotes its output's last line, the
    log line (`logged`) never does (a hook may print anything)."""

    def __init__(self, message: str, logged: str) -> None:
        super().__init__(message)
        self.logged = logged


class _Tail:
    """The last `limit` bytes of an output, as text."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._kept = bytearray()
        self._cut = False

    def add(self, chunk: bytes) -> None:
        self._kept += chunk
        if len(self._kept) > self._limit:
            del self._kept[: -self._limit]
            self._cut = True

    def text(self) -> str:
        data = bytes(self._kept)
        if self._cut:
            # Cut mid-character: the rest of that character goes too, not a replacement sign.
            cut = 0
            while cut < min(3, len(data)) and 0x80 <= data[cut] < 0xC0:
                cut += 1
            data = data[cut:]
        return data.decode("utf-8", "replace")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _lineage(path: bytes) -> Iterator[bytes]:
    """A path, then each directory above it up to the top."""
    yield path
    while path not in (TOP, b""):
        path = path.rpartition(b"/")[0]
        yield path


@attrs.frozen
class _Ready:
    """A volume's new copy, verified beside its place: the journal of its swap and its report."""

    at: _Volume
    journal: bytes
    done: VolumeCopied


class SshCopy:
    """One migration's copy, carried out on the driver's loop."""

    def __init__(
        self,
        job: CopyJob,
        report: Callable[[CopyProgress], None],
        transport: Transport,
        *,
        gate: SwapGate | None = None,
        after_stream: Callable[[int, str], Awaitable[None]] | None = None,
    ) -> None:
        if job.host is None:
            raise ValueError(f"migration {job.migration_id}'s target names no host to copy onto")
        self._job = job
        self._host: MachineAddress = job.host
        self._report = report
        self._transport = transport
        self._gate = gate
        # Called once a volume's first stream is in its new copy, before it is checked.
        self._after_stream = after_stream
        self._done: list[VolumeCopied] = []
        self._last_report = 0.0
        self._planned: int | None = None
        self._links: dict[str, Link] = {}
        # The process groups still running on each machine, to kill on a stop.
        self._running: dict[str, set[int]] = {side: set() for side in SIDES}
        # The volumes being assembled (place and new copy), to abandon on a stop.
        self._assembling: list[tuple[str, str]] = []
        # How far the host's clock is ahead of the source's (ns): change times compare across it.
        self._clock_offset = 0
        # The whole host key each machine showed (`source`, `host`), for CopyEnd.
        self.host_keys: dict[str, str] = {}
        # A sync's files that kept changing (kept as in place or left out), for CopyEnd.
        self.changing = 0
        # The cutover's hooks as they ran, in order, for CopyEnd.
        self.hooks: list[HookRun] = []

    def _address(self, side: str) -> MachineAddress:
        return self._job.source if side == "source" else self._host

    async def run(self) -> None:
        job, transport = self._job, self._transport
        try:
            # Both addresses are checked before any process starts.
            for address in (job.source, self._host):
                transport.ensure_allowed(address.ip)
            with private_directory() as directory:
                self._links = {
                    side: Link(Login(side, address, directory, transport.connect_timeout, address.host_key), transport)
                    for side, address in (("source", job.source), ("host", self._host))
                }
                try:
                    opened = await asyncio.gather(*(link.open() for link in self._links.values()),
                                                  return_exceptions=True)
                    for outcome in opened:
                        if isinstance(outcome, BaseException):
                            raise outcome
                    (owners, host_ahead), (_, source_ahead) = await asyncio.gather(
                        self._meet("host"), self._meet("source")
                    )
                    self._clock_offset = host_ahead - source_ahead
                    await self._recover()
                    if job.kind is CopyKind.CUTOVER:
                        await self._cutover(owners=owners)
                    else:
                        for index in range(job.first, len(job.volumes)):
                            await self._put(await self._assemble(index, owners=owners))
                finally:
                    await self._stop_remote()
                    self.host_keys = {side: link.met for side, link in self._links.items() if link.met}
                    await asyncio.gather(*(link.close() for link in self._links.values()))
        except (MachineUnreachable, Conflict) as failure:
            raise CopyFailed(failure.message) from None

    async def _cutover(self, *, owners: bool) -> None:
        """`pre_cutover` on the source (nothing is sent when it fails), the
        final sync of every volume verified beside its place before any is
        swapped (a file that changes fails it), the swaps, `post_cutover` on
        the host."""
        job = self._job
        if job.pre_cutover is not None:
            await self._hook("pre_cutover", "source", job.pre_cutover)
        ready = [await self._assemble(index, owners=owners) for index in range(job.first, len(job.volumes))]
        for volume in ready:
            await self._put(volume)
        if job.post_cutover is not None:
            await self._hook("post_cutover", "host", job.post_cutover)

    async def _hook(self, name: str, side: str, command: str) -> None:
        """Run a cutover hook on `side` as `sh -c "$command"`, bounded by
        HOOK_SECONDS (its process group killed there); its exit status and
        the last HOOK_OUTPUT_BYTES of its output (stdout and stderr
        together) go into `hooks`. CopyFailed when it did not exit 0."""
        link = self._links[side]
        bound = HOOK_SECONDS
        tail = _Tail(HOOK_OUTPUT_BYTES)
        status: int | None = None
        process = await link.spawn(hook_command(command), stdin=DEVNULL, stdout=PIPE, stderr=PIPE)
        try:
            pid = await self._pid(side, process, name)
            assert process.stdout is not None and process.stderr is not None
            # Only ssh's own words come here now: read so that they never block it.
            said = asyncio.ensure_future(process.stderr.read())
            try:
                async with asyncio.timeout(bound):
                    while chunk := await process.stdout.read(1 << 16):
                        tail.add(chunk)
                    status = await process.wait()
            except TimeoutError:
                await self._kill(side, pid)
            else:
                self._running[side].discard(pid)
            finally:
                said.cancel()
        except asyncio.CancelledError:
            self.hooks.append(HookRun(name, None, tail.text()))
            raise
        finally:
            await _reap(link, process)
        if link.ended() or status == 255 and await link.lost():
            raise CopyFailed(self._vanished(side, link.last_words()))
        output = tail.text()
        self.hooks.append(HookRun(name, status, output))
        if status == 0:
            return
        how = f"{name} was stopped at its bound of {bound} s" if status is None else f"{name} exited {status}"
        last = _last_line(output)
        raise _HookFailed(how + (f": {last}" if last else ""), how + " (its output is in its hook_ran event)")

    async def _meet(self, side: str) -> tuple[bool, int]:
        """Whether the login on a machine may set owners (root), and how far
        its clock is ahead of the service's, in nanoseconds (half the round
        trip allowed for; 0 where `date` cannot say)."""
        before = time.time_ns()
        said = (await self._must(side, ("sh", "-c", OWNERS_AND_CLOCK), "")).split()
        after = time.time_ns()
        try:
            ahead = int(said[1]) - (before + after) // 2
        except (IndexError, ValueError):
            ahead = 0
        return said[:1] == [b"1"], ahead

    async def _recover(self) -> None:
        """Before anything else: finish the swaps an earlier run of this
        migration left under way, and remove what it left half-made."""
        migration_id = self._job.migration_id
        triples = []
        for volume in self._job.volumes:
            target = place(self._host.root, _volume_path(volume.name))
            triples += [target, incoming_of(target, migration_id), journal_of(target, migration_id)]
        # Untracked, as the swap itself: a cancel must not stop a swap half-way.
        leftovers = (*triples, staging_of(self._host.root, migration_id))
        await self._must("host", ("sh", "-c", RECOVER, SWAP, *leftovers), self._host.root, tracked=False)

    async def _stop_remote(self) -> None:
        """Kill what still runs of this copy on both machines (through their
        masters), then remove the new copy it was assembling (not one whose
        swap was committed)."""
        for side, link in self._links.items():
            pids = self._running[side]
            if pids and not link.ended():
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(10):
                        await self._quietly(link, kill_groups(*pids))
            pids.clear()
        host = self._links.get("host")
        for target, incoming in self._assembling:
            if host is None or host.ended():
                break
            journal = journal_of(target, self._job.migration_id)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(30):
                    await self._quietly(host, remote_command("sh", "-c", ABANDON, "sh", incoming, journal))

    @staticmethod
    async def _quietly(link: Link, remote: str) -> None:
        process = await link.spawn(remote, stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL)
        try:
            await process.wait()
        finally:
            await _reap(link, process)

    def _progress(self, index: int, partial: int = 0, files: int = 0, *, now: bool = False) -> None:
        loop = asyncio.get_running_loop()
        if not now and loop.time() - self._last_report < REPORT_SECONDS:
            return
        self._last_report = loop.time()
        self._report(CopyProgress(index, partial, files, tuple(self._done), self._planned))

    async def _assemble(self, index: int, *, owners: bool) -> _Ready:
        """A volume's itinerary up to its swap: plan, begin, send and check
        (with catch-up passes)."""
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

        theirs, ours = await asyncio.gather(
            self._list_source(at), self._list("host", at.target, place_patterns(at.nested), missing_ok=True)
        )
        plan = plan_volume(theirs, ours, owners=owners, clock_offset=self._clock_offset)
        self._planned = plan.send_bytes
        self._progress(index, now=True)

        self._assembling.append((at.target, at.incoming))
        await self._must("host", ("sh", "-c", BEGIN, "sh", at.target, at.incoming), at.target,
                         stdin=nul_list(plan.links))
        sent = _Sent()  # what every pass of this volume sent
        theirs, kept = await self._send_and_check(at, plan, theirs, ours, sent, owners=owners)

        swap = plan_volume(theirs, ours, owners=owners, clock_offset=self._clock_offset)
        if kept:
            # What a sync keeps as in place is the very file in place: linked, never moved onto itself.
            swap = attrs.evolve(
                swap, sends=tuple(path for path in swap.sends if path not in kept),
                links=tree_order((*swap.links, *kept)),
            )
        done = VolumeCopied(
            index=index, bytes=sent.bytes, files=sent.files, linked=len(swap.links), dropped=len(swap.drops),
            held=sum(entry.size for entry in theirs.values() if entry.kind == REGULAR),
        )
        return _Ready(at, journal_tar(swap, theirs, ours, owners=owners), done)

    async def _put(self, ready: _Ready) -> None:
        """A verified volume's swap into its place, through the gate."""
        at = ready.at
        await self._swap_through_gate(at, ready.journal, ready.done)
        self._assembling.remove((at.target, at.incoming))
        self._done.append(ready.done)
        self._planned = None
        self._progress(at.index + 1, now=True)

    async def _swap_through_gate(self, at: _Volume, journal: bytes, done: VolumeCopied) -> None:
        """Write the journal and swap, once the gate lets this volume in (a
        run ended elsewhere keeps it out: nothing is swapped, the new copy is
        abandoned). Once the journal is being written the copy goes into
        place: a cancel meanwhile waits for the swap, so that once it is
        answered nothing of this run reaches a place any more."""
        gate = self._gate
        if gate is not None and not await _blocking(gate.enter, at.index):
            raise CopyFailed("cancelled")
        swapped = None  # the volume as it stands in place, once the swap is done
        try:
            swapping = asyncio.ensure_future(self._swap(at, journal))
            try:
                await asyncio.shield(swapping)
            except asyncio.CancelledError:
                await swapping
                swapped = done
                raise
            swapped = done
        finally:
            if gate is not None:
                await _blocking(gate.leave, at.index, swapped)

    async def _swap(self, at: _Volume, journal: bytes) -> None:
        # Untracked: a stop never kills a swap, not even while its journal is written.
        swap = ("sh", "-c", JOURNAL_AND_SWAP, "sh", at.target, at.incoming, at.journal)
        await self._must("host", swap, at.target, stdin=journal, tracked=False)

    async def _send_and_check(
        self, at: _Volume, plan: VolumePlan, theirs: Listing, ours: Listing, sent: _Sent, *, owners: bool
    ) -> tuple[Listing, frozenset[bytes]]:
        """Stream what the plan sends into the new copy and check it (see the
        module's docstring): what was written is what the source holds, and
        the new copy matches the source listed again; what changed meanwhile
        goes again, up to CATCH_UP_PASSES times (none in a cutover). The
        listing the new copy matches (the source's last one, but for what a
        sync settles), and the files a sync keeps as they are in place."""
        kind = self._job.kind
        passes = 0 if kind is CopyKind.CUTOVER else CATCH_UP_PASSES
        sending = plan.sends
        for catch_up in range(passes + 1):
            paths = tree_order((*plan.dirs, *sending))
            files = [path for path in sending if path in theirs and theirs[path].kind == REGULAR]
            warnings = await self._stream(at, paths, sent, [theirs[path].size for path in tree_order(files)])
            if catch_up == 0 and self._after_stream is not None:
                await self._after_stream(at.index, at.incoming)
            # Both machines hash what was sent, at once, and each is then listed in the same command.
            (on_source, now), (on_host, held) = await asyncio.gather(
                self._hashes_then_list("source", at.origin, files, self._nested_patterns(at)),
                self._hashes_then_list("host", at.incoming, files, []),
            )
            differing = {path for path in files if on_host.get(path) is None or on_host[path] != on_source.get(path)}
            sent.add(files, held)
            wrong = sorted(path for path in differing if now.get(path) == theirs[path])
            if wrong:
                raise CopyFailed(
                    f"Verification failed for volume {at.name}: {len(wrong)} file(s) differ"
                    f" between {at.origin} on the source and the copy on the host, the first {_shown(wrong[0])}."
                )
            theirs = now
            plan = plan_volume(theirs, held, owners=owners, clock_offset=self._clock_offset)
            # tar also says a directory changed as it read it: its entries are checked on their own.
            read_changing = {p for p in _tar_names(_CHANGED, warnings) | differing if p in theirs}
            changing = set(plan.sends) | {p for p in read_changing if theirs[p].kind != DIRECTORY}
            if not changing and not plan.drops:
                return theirs, frozenset()
            if catch_up == passes:
                if kind is CopyKind.CUTOVER:
                    raise CopyFailed(_not_quiesced(at.name, changing | set(plan.drops)))
                if kind is CopyKind.SYNC:
                    return await self._settle(at, theirs, held, ours, changing)
                raise CopyFailed(_still_changing(at.name, changing or set(plan.drops)))
            # What is sent again goes first, and so does a file where a directory now stands.
            in_the_way = [path for path in plan.dirs if path in held and held[path].kind != DIRECTORY]
            clear = nul_list((*changing, *plan.drops, *in_the_way))
            await self._must("host", ("sh", "-c", CLEAR, "sh", at.incoming), at.incoming, stdin=clear)
            sending = tree_order(changing)
        raise AssertionError("the last pass returns or raises")

    async def _settle(
        self, at: _Volume, theirs: Listing, held: Listing, ours: Listing, changing: set[bytes]
    ) -> tuple[Listing, frozenset[bytes]]:
        """A sync's files still changing after its last pass (see the module's
        docstring): each keeps the version in place (hard-linked back from
        the place), or is left out where the place has none; a directory the
        new copy lacks goes with all below it; what the source no longer has
        is left out. The new copy is made to hold exactly the listing
        returned, and the files kept as in place."""
        lacking = {
            path for path, entry in theirs.items()
            if entry.kind == DIRECTORY and (path not in held or held[path].kind != DIRECTORY)
        }
        settled = {
            path: entry for path, entry in theirs.items() if not any(up in lacking for up in _lineage(path))
        }
        kept = set()
        for path in changing:
            if path not in settled:
                continue
            in_place = ours.get(path)
            if in_place is not None and in_place.kind != DIRECTORY:
                settled[path] = in_place
                kept.add(path)
            else:
                del settled[path]
        # Out of the new copy: what it must not hold, each subtree once.
        clear: list[bytes] = []
        cleared: set[bytes] = set()
        for path in tree_order(held):
            if path in settled and path not in changing or any(up in cleared for up in _lineage(path)):
                continue
            cleared.add(path)
            clear.append(path)
        await self._must("host", ("sh", "-c", CLEAR, "sh", at.incoming), at.incoming, stdin=nul_list(clear))
        if kept:
            await self._must("host", ("sh", "-c", LINK_BACK, "sh", at.target, at.incoming), at.target,
                             stdin=nul_list(tree_order(kept)))
        self.changing += len(changing)
        return settled, frozenset(kept)

    async def _list_source(self, at: _Volume) -> Listing:
        return await self._list("source", at.origin, self._nested_patterns(at))

    @staticmethod
    def _nested_patterns(at: _Volume) -> list[str]:
        return [glob_escaped(path) for path in at.nested]

    async def _list(self, side: str, directory: str, patterns: list[str], *, missing_ok: bool = False) -> Listing:
        """A tree's listing; empty for a place not there yet (`missing_ok`)."""
        status, out, err = await self._run(side, ("sh", "-c", LIST, "sh", directory, *patterns))
        if status == 3 and missing_ok:
            return {}
        return self._listing(side, directory, status, out, err)

    async def _hashes_then_list(
        self, side: str, directory: str, files: Sequence[bytes], patterns: list[str]
    ) -> tuple[dict[bytes, bytes], Listing]:
        """The SHA-256 of `files` below `directory` (none for a file not
        there), and the tree's listing after the hashing: one command."""
        argv = ("sh", "-c", HASHES_THEN_LIST, "sh", directory, *patterns)
        status, out, err = await self._run(side, argv, stdin=nul_list(files))
        hashes, listed = split_hashes(out) if status == 0 else ({}, b"")
        return hashes, self._listing(side, directory, status, listed, err)

    @staticmethod
    def _listing(side: str, directory: str, status: int, out: bytes, err: bytes) -> Listing:
        if status == 3:
            raise CopyFailed(f"{directory} on the {side} is not a directory the login may enter.")
        if status != 0:
            failure = _why(err, directory, f"listing {directory} failed")
            raise CopyFailed(f"{failure} (on the {side})")
        # On the host, what another filesystem mounted below holds is not the copy's to change.
        return parse_listing(out, one_device=side == "host")

    async def _stream(self, at: _Volume, paths: Sequence[bytes], sent: _Sent, sizes: Sequence[int]) -> bytes:
        """Send `paths` (directories and what differs, `sizes` the bytes of its
        files in order) from the source into the new copy: the source's tar
        writes into one pipe, the host's reads from another, and a relay
        thread splices one into the other. What tar said of files that
        changed as it read them."""
        source, host = self._links["source"], self._links["host"]
        reading = (
            "tar", "-C", at.origin, "--format=posix", "--pax-option=delete=atime,delete=ctime", "--no-recursion",
            "--null", "--verbatim-files-from", "--no-unquote", "-T", "-", "-cpf", "-",
        )
        # Owners by number, as the plan compares them: names may map to other ids on the host.
        writing = ("tar", "-C", at.incoming, "--numeric-owner", "-xpf", "-")
        archive, archive_in = pipe()  # the source's tar writes into archive_in
        feed_out, feed = pipe()  # the host's tar reads from feed_out
        sender = receiver = None
        relay = None
        try:
            try:
                sender = await source.spawn(tracked_command(*reading), stdin=PIPE, stdout=archive_in, stderr=PIPE)
            finally:
                os.close(archive_in)
            try:
                receiver = await host.spawn(tracked_command(*writing), stdin=feed_out, stdout=DEVNULL, stderr=PIPE)
            finally:
                os.close(feed_out)
            # The list of paths goes in while the archive comes out: tar reads it as it writes.
            listing = asyncio.ensure_future(_feed(sender, nul_list(paths)))
            sender_pid, receiver_pid = await asyncio.gather(
                self._pid("source", sender, "tar"), self._pid("host", receiver, "tar")
            )
            assert sender.stderr is not None and receiver.stderr is not None
            warned = asyncio.ensure_future(sender.stderr.read())
            complained = asyncio.ensure_future(receiver.stderr.read())
            relay = Relay(archive, feed, bandwidth=self._transport.bandwidth,
                          counted=self._counter(at.index, sent, sizes))
            await relay.wait()
            received_status = await receiver.wait()
            if relay.broken:
                if received_status == 0:
                    # The host's tar read the archive to its end, not the padding
                    # after it: the rest goes nowhere, and the source's tar ends as it would.
                    await relay.drain()
                else:
                    # The host's tar failed: the source's tar, on a full pipe, is stopped.
                    relay.close()
                    await self._kill("source", sender_pid)
            sent_status = await sender.wait()
            warnings, errors = await warned, await complained
            await listing
            for link, status in ((source, sent_status), (host, received_status)):
                if link.ended() or status == 255 and await link.lost():
                    raise CopyFailed(self._vanished(link.side, link.last_words()))
            self._running["source"].discard(sender_pid)
            self._running["host"].discard(receiver_pid)
            if received_status != 0:
                raise CopyFailed(
                    _why(errors, self._host.root, f"tar on the host failed (exit status {received_status})")
                    + f" (writing {at.origin} into {at.incoming} on the host)"
                )
            if sent_status not in (0, 1) and not _only_changes(warnings):
                raise CopyFailed(
                    _why(warnings, at.origin, "tar on the source failed reading " + at.origin) + " (on the source)"
                )
            return warnings
        finally:
            if relay is None:
                os.close(archive)
                os.close(feed)
            else:
                relay.close()
            for link, process in ((source, sender), (host, receiver)):
                if process is not None:
                    await _reap(link, process)

    def _counter(self, index: int, sent: _Sent, sizes: Sequence[int]) -> Callable[[int], None]:
        """What the relay calls with its count (from its thread): a report at
        most every REPORT_SECONDS, of the bytes moved (at most this pass's
        files' bytes, the archive's headers left out) and the files they fill."""
        loop = asyncio.get_running_loop()
        ends = []
        total = 0
        for size in sizes:
            total += size
            ends.append(total)
        last = [0.0]

        def counted(moved: int) -> None:
            now = time.monotonic()
            if now - last[0] < REPORT_SECONDS:
                return
            last[0] = now
            partial = sent.bytes + min(moved, total)
            files = sent.files + bisect.bisect_right(ends, moved)
            with contextlib.suppress(RuntimeError):  # the loop is gone
                loop.call_soon_threadsafe(self._progress, index, partial, files)

        return counted

    async def _pid(self, side: str, process: asyncio.subprocess.Process, program: str) -> int:
        """The process group a tracked command says it leads (its first line
        on standard error), noted for a stop."""
        assert process.stderr is not None
        line = await process.stderr.readline()
        if not line.strip().isdigit():
            link = self._links[side]
            if await link.lost():
                raise CopyFailed(self._vanished(side, link.last_words()))
            raise CopyFailed(f"The {side} did not start {program} (it said {line[:80]!r}).")
        pid = int(line)
        self._running[side].add(pid)
        return pid

    async def _kill(self, side: str, pid: int) -> None:
        link = self._links[side]
        if not link.ended():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await self._quietly(link, kill_groups(pid))
        self._running[side].discard(pid)

    def _vanished(self, which: str, error: object) -> str:
        address = self._address(which)
        return f"The {which} {address.ip} port {address.port} vanished mid-copy ({error})."

    async def _run(
        self, side: str, argv: Sequence[str], *, stdin: bytes | None = None, tracked: bool = True
    ) -> tuple[int, bytes, bytes]:
        """Run a remote command to its end (fed `stdin`): its exit status,
        output and errors. An untracked one is not killed on a stop: the swap."""
        link = self._links[side]
        process = await link.spawn(
            tracked_command(*argv) if tracked else remote_command(*argv), stdin=PIPE, stdout=PIPE, stderr=PIPE
        )
        pid = None
        try:
            if tracked:
                pid = await self._pid(side, process, argv[0])
            stdout, stderr = await process.communicate(stdin or b"")
        finally:
            await _reap(link, process)
        if pid is not None:
            self._running[side].discard(pid)
        status = process.returncode
        if link.ended() or status == 255 and await link.lost():
            raise CopyFailed(self._vanished(side, link.last_words()))
        return -1 if status is None else status, stdout, stderr

    async def _must(
        self, side: str, argv: Sequence[str], where: str, *, stdin: bytes | None = None, tracked: bool = True
    ) -> bytes:
        """`_run`'s output, or CopyFailed in words."""
        status, stdout, stderr = await self._run(side, argv, stdin=stdin, tracked=tracked)
        if status != 0:
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


class _Sent:
    """What the passes of a volume sent: the files and their bytes, as the
    host's listing of the new copy shows them once written."""

    def __init__(self) -> None:
        self.files = 0
        self.bytes = 0

    def add(self, files: Sequence[bytes], held: Listing) -> None:
        for path in files:
            entry = held.get(path)
            if entry is not None and entry.kind == REGULAR:
                self.files += 1
                self.bytes += entry.size


async def _feed(process: asyncio.subprocess.Process, data: bytes) -> None:
    """Write `data` to a process's standard input, then close it; a process
    gone meanwhile is no error here (its exit status says why)."""
    assert process.stdin is not None
    with contextlib.suppress(ConnectionError):
        process.stdin.write(data)
        await process.stdin.drain()
    process.stdin.close()


async def _reap(link: Link, process: asyncio.subprocess.Process) -> None:
    """A local client is over: killed if it still runs (its remote command
    is killed apart, by its process group), and forgotten."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
    link.done_with(process)


async def _blocking(call: Callable[..., T], *arguments: object) -> T:
    """A blocking call (storage) in a thread, seen to its end even when the
    copy is cancelled meanwhile (then the cancel goes on after it)."""
    running = asyncio.ensure_future(asyncio.to_thread(call, *arguments))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await running
        raise


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
        logged = None  # what the log says of a failure, where it is not the failure's own words
        try:
            await copy.run()
        except CopyFailed as failed:
            end = CopyEnd(failed.message)
            logged = getattr(failed, "logged", None)
        except asyncio.CancelledError:
            end = CopyEnd("cancelled")
            raise
        except Exception as exc:  # the copy's own fault, said as it is
            log.exception("the copy of migration %d failed", self._job.migration_id)
            end = CopyEnd(f"The copy failed: {exc}")
        finally:
            # The whole keys met, for a pin held as a fingerprint alone to be
            # completed; a sync's files that changed meanwhile; the hooks that ran.
            end = attrs.evolve(end, host_keys=dict(copy.host_keys), changing=copy.changing, hooks=tuple(copy.hooks))
            self._log(end, logged)
            with self._lock:
                self._end = end
            self._ended.set()
            self._changed()

    def _log(self, end: CopyEnd, logged: str | None = None) -> None:
        job, host = self._job, self._job.host
        assert host is not None, "a real copy has a host"
        how = "done" if end.failure is None else f"failed: {logged or end.failure}"
        if end.changing:
            how += f" ({end.changing} file(s) changed meanwhile, for the next sync)"
        kind = "" if job.kind is CopyKind.RUN else f" ({job.kind.value})"
        log.info(
            "copy of migration %d%s, %d volume(s) from %s to %s under %s: %s", job.migration_id, kind,
            len(job.volumes) - job.first, login_at(job.source), login_at(host), host.root, how,
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
