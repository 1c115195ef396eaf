"""What a copy is (SPEC 2.8-2.10), between the core that queues and records
it and the copiers that carry it: the machines it reaches, its job, what it
reports and how it ends, and the ports of a copier. Apart from `machines`
(checks and discoveries) and `ports` (storage), so that both can name a copy
without importing each other."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Protocol

import attrs

from .entities import Credentials, Workload
from .errors import DomainError


@attrs.frozen
class MachineAddress:
    """How to reach a machine and log in to it. `host_key` is the pinned key
    (whole, or a fingerprint alone from an earlier release); None trusts the
    first key met (and the caller pins it)."""

    ip: str
    port: int
    username: str
    password: str = attrs.field(repr=False)
    private_key: str = attrs.field(repr=False)
    root: str
    host_key: str | None

    @classmethod
    def of(cls, workload: Workload, credentials: Credentials) -> MachineAddress:
        return cls(
            ip=workload.ip,
            port=workload.port,
            username=credentials.username,
            password=credentials.password,
            private_key=credentials.private_key,
            root=workload.root,
            host_key=workload.host_key,
        )


class CopyFailed(DomainError):
    """A real copy stopped: the message says why in words, with the path or
    the host it concerns."""


@attrs.frozen
class VolumeToCopy:
    """One volume of a run: its name on the source (and at the target's root),
    and the bytes the run expects (the size it started with)."""

    name: str
    estimate: int


class CopyKind(str, enum.Enum):
    """What a copy is for (SPEC 2.8, 2.9). `run`: a cold run's copy, whose
    files still changing after the catch-up passes fail it. `sync`: a warm
    migration's sync, where a file still changing is no failure: it keeps
    the version the copy in place holds, and the next sync sends it. `cutover`:
    the final sync, after `pre_cutover` ran on the source, in which nothing
    may change (a file that does fails it, named), then `post_cutover` on the
    host."""

    RUN = "run"
    SYNC = "sync"
    CUTOVER = "cutover"


# A hook's bound, and how much of its output is kept.
HOOK_SECONDS = 600
HOOK_OUTPUT_BYTES = 4096


@attrs.frozen
class HookRun:
    """A cutover hook as it ran: its exit status (None: not run, or killed at
    its bound) and the last HOOK_OUTPUT_BYTES of its output, as text."""

    hook: str  # pre_cutover or post_cutover
    exit_status: int | None
    output: str


@attrs.frozen
class CopyJob:
    """What a run copies: its volumes, in order, from the source's root to the
    target's root on the host, starting at `first` (those before it are
    verified in place). `source_volumes` names every volume of the source, so
    that each copy leaves the others below it out. A target without a host
    (`host` None) has its copy simulated. `kind` says whether it is a cold
    run, a warm sync or the cutover (with its hooks: shell commands run by
    `sh -c` on the source before, on the host after; None: none)."""

    owner_id: int
    migration_id: int
    source: MachineAddress
    host: MachineAddress | None  # its root is the target's root: where the volumes land
    volumes: tuple[VolumeToCopy, ...]
    first: int
    source_volumes: tuple[str, ...]
    # The workloads the copy touches, as the copy slots count them per machine.
    source_id: int = 0
    host_id: int | None = None
    kind: CopyKind = CopyKind.RUN
    # A warm migration's verified syncs before this copy (a simulated sync
    # after the first takes a tenth of the time).
    syncs: int = 0
    pre_cutover: str | None = None
    post_cutover: str | None = None


@attrs.frozen
class VolumeCopied:
    """One volume (the `index`-th of the run) once verified in place: the
    bytes and files sent, the entries linked from the copy that was there and
    dropped from it, and the bytes the new copy holds."""

    index: int
    bytes: int
    files: int
    linked: int = 0
    dropped: int = 0
    held: int | None = None  # None: as sent


@attrs.frozen
class CopyProgress:
    """Where a copy is, in bytes: the volumes before `volumes` are done (`done`
    says what passed of those a real copy verified), and `partial` bytes in
    `files` files of the next one have passed. The core records only what
    grows."""

    volumes: int
    partial: int = 0
    files: int | None = None  # None: the copier counts no files
    done: tuple[VolumeCopied, ...] = ()
    # The bytes the copy of the next volume will send, once it knows (a real
    # copy that compared the trees): that volume's size from then on.
    planned: int | None = None


@attrs.frozen
class CopyEnd:
    """How a copy ended: `failure` None when every volume is in place, else
    why not, in words. `host_keys` holds the whole public key each machine
    showed (`source`, `host`: OpenSSH's one-line form), so that a pin held
    as a fingerprint alone can be completed."""

    failure: str | None = None
    host_keys: Mapping[str, str] = attrs.field(factory=dict)
    # A sync's files that changed while it copied them and go at the next sync.
    changing: int = 0
    # The cutover's hooks, in the order they ran.
    hooks: tuple[HookRun, ...] = ()


class SwapGate(Protocol):
    """Asked by a real copy before it moves a verified volume into place, so
    that once a cancel is answered no copy of that run reaches its place,
    whichever instance carries it. Both calls block (storage)."""

    def enter(self, index: int) -> bool:
        """May volume `index` be swapped in? False: the run has ended (a
        cancel, an interruption): the copy stops without swapping. A cancel
        that comes while the gate is entered waits until it is left."""
        ...

    def leave(self, index: int, done: VolumeCopied | None = None) -> None:
        """The swap of volume `index` is over: `done` says what stands in
        place when it succeeded (recorded with the gate left, so that a
        cancel that waited for it sees the volume copied), None when it failed."""
        ...


class CopyHandle(Protocol):
    """One copy under way, as its copier reports it. A copier says when there
    is news by calling the `changed` it was given, or by `next_due`."""

    def progress(self) -> CopyProgress | None:
        """Where the copy is now (None before its first report)."""
        ...

    def ended(self) -> CopyEnd | None:
        """How the copy ended, or None while it goes on."""
        ...

    def next_due(self) -> float | None:
        """When (time.monotonic, or the copier's own clock) the copy next has
        news without calling `changed`; None when it always calls."""
        ...

    def cancel(self) -> None:
        """Stop the copy at once (a real copy's remote processes, and its staging goes)."""
        ...


class Copier(Protocol):
    """What carries the bytes of runs: the simulated copy of a target without
    a host, or the real copy onto it (SPEC 2.8)."""

    def start_copy(self, job: CopyJob, changed: Callable[[], None], gate: SwapGate | None = None) -> CopyHandle:
        """Begin copying `job` in the background; `changed` is called, from
        any thread, when the copy has news (bytes passed, a volume verified,
        its end). A real copy passes `gate` before each swap (None: always open)."""
        ...
