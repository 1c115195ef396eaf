"""Real machines: what the service asks of a machine it logs in to (the
`Machines` port), and the use cases that check a workload and discover its
volumes (SPEC 2.7). The port's adapter does the connecting; these use cases
read and write storage around it, never holding a transaction open while a
machine answers."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Protocol

import attrs

from .copy_jobs import (
    HOOK_OUTPUT_BYTES,
    HOOK_SECONDS,
    Copier,
    CopyEnd,
    CopyFailed,
    CopyHandle,
    CopyJob,
    CopyKind,
    CopyProgress,
    HookRun,
    MachineAddress,
    SwapGate,
    VolumeCopied,
    VolumeToCopy,
)
from .entities import MachineCheck, MountPoint, OperatingSystem, Workload, canonical_ip, volume_key
from .errors import Conflict, DomainError, NotFound
from .ports import Clock, ListQuery, Storage, UnitOfWork

# The tools a real copy needs on both machines (SPEC 2.8), as a check names them.
COPY_TOOLS = ("tar", "sha256sum")
# Every program the copy engine's scripts run on each side, besides the
# shell's own builtins: what a readiness check looks for on the login's PATH
# (SPEC 2.11). A copy with a PATH holding just these succeeds (tested).
SOURCE_TOOLS = ("sh", "find", "tar", "sha256sum", "xargs", "date", "sleep")
HOST_TOOLS = ("sh", "find", "tar", "sha256sum", "xargs", "date", "cp", "mv", "rm", "mkdir", "chmod", "chown",
              "touch", "cat", "id", "sleep")


def fingerprint(pin: str) -> str:
    """What the service answers for a pinned host key: a whole key (OpenSSH's
    one-line `type base64`) as its SHA-256 fingerprint, `SHA256:` and the
    unpadded base64 of the hash of the key's blob, as `ssh-keygen -l` prints
    it; a pin held as a fingerprint alone (or anything else) as it is."""
    blob = key_blob(pin)
    if blob is None:
        return pin
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def key_blob(pin: str) -> bytes | None:
    """The blob of a whole public key (`type base64`, a comment after it
    allowed), or None for a fingerprint or anything that is no key: the blob
    begins with the key's type, as SSH writes every key."""
    parts = pin.split()
    if len(parts) < 2:
        return None
    kind, encoded = parts[0], parts[1]
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    named = kind.encode()
    if blob[:4] != len(named).to_bytes(4, "big") or blob[4 : 4 + len(named)] != named:
        return None
    return blob


def whole_key(pin: str) -> str | None:
    """A whole key as pinned (`type base64`, without its comment), or None for a fingerprint."""
    return " ".join(pin.split()[:2]) if key_blob(pin) is not None else None


def pin_after_contact(pinned: str | None, met: str) -> str | None:
    """The pin once a contact met the whole key `met` (and was let in, so it
    matched the pin): the key met at first contact, a fingerprint completed
    to the whole key it names; any other pin stays."""
    if pinned is None:
        return met
    if key_blob(pinned) is None and key_blob(met) is not None and fingerprint(met) == pinned:
        return whole_key(met)
    return pinned


class MachineUnreachable(DomainError):
    """The machine could not be reached, or would not let the service in: the
    message says why in words (no route, refused, timed out, not an SSH
    server, login refused, host key changed)."""


class HostKeyChanged(MachineUnreachable):
    """The machine answered with another host key than the one pinned."""


@attrs.frozen
class MachineFacts:
    """What a check reads of a machine."""

    host_key: str  # the whole key it answered with (`type base64`)
    os: OperatingSystem | None
    hostname: str
    kernel: str
    tools: Mapping[str, bool]

    @property
    def missing_tools(self) -> list[str]:
        return [tool for tool, present in self.tools.items() if not present]


@attrs.frozen
class Filesystem:
    """A mounted filesystem as seen from a machine's root: `name` is its mount
    point relative to the root (`/` for the one holding the root itself),
    `used` its used bytes."""

    name: str
    used: int


@attrs.frozen
class Discovered:
    """What a discovery read: the whole key the machine answered with, and its filesystems."""

    host_key: str
    filesystems: Sequence[Filesystem]


@attrs.frozen
class SurveyQuestions:
    """What one login to a machine is asked before copies (SPEC 2.11),
    whatever number of migrations need it: the programs to find on the
    login's PATH, the directories whose used bytes to read, the places a copy
    would write (made if missing), and the shell commands to parse (`sh -n`).
    Nothing it asks writes on the machine."""

    tools: tuple[str, ...] = ()
    directories: tuple[str, ...] = ()
    places: tuple[str, ...] = ()
    hooks: tuple[str, ...] = ()

    def joined(self, other: SurveyQuestions) -> SurveyQuestions:
        """Both sets of questions, each asked once, in the order first asked."""

        def union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(dict.fromkeys((*a, *b)))

        return SurveyQuestions(
            union(self.tools, other.tools),
            union(self.directories, other.directories),
            union(self.places, other.places),
            union(self.hooks, other.hooks),
        )


@attrs.frozen
class PlaceSeen:
    """A place a copy would write, as the login sees it: `examined` is the
    place itself when it exists, else its nearest existing ancestor (where
    the copy would make it); whether that is a directory the login may write
    into, and the bytes free to the login on its filesystem (None: unread)."""

    examined: str
    exists: bool
    directory: bool
    writable: bool
    free: int | None


@attrs.frozen
class Surveyed:
    """What a survey found: the whole host key met, what the machine says it
    runs, which tools are on the PATH, the used bytes of each directory asked
    (None: not a directory, or unreadable), each place, and each hook's parse
    error (None: it parses)."""

    host_key: str
    os: OperatingSystem | None
    system: str
    hostname: str
    tools: Mapping[str, bool]
    directories: Mapping[str, int | None]
    places: Mapping[str, PlaceSeen]
    hooks: Mapping[str, str | None]
    # The filesystem (device number) of each directory found: `du -x` of a
    # directory counts a directory below it only when both share one.
    devices: Mapping[str, int] = attrs.field(factory=dict)


class Machines(Copier, Protocol):
    """What the service asks of real machines. Each call connects and logs in
    (refusing an address outside the allowed networks with Conflict, before
    any packet is sent), and raises MachineUnreachable, with the reason in
    words, when the machine cannot be reached or refuses the login."""

    def facts(self, address: MachineAddress) -> MachineFacts: ...

    def filesystems(self, address: MachineAddress) -> Discovered: ...

    def survey(self, address: MachineAddress, questions: SurveyQuestions) -> Surveyed:
        """Log in once and answer `questions`, writing nothing there."""
        ...

    def close(self) -> None:
        """End every connection and what carries them."""
        ...


@attrs.frozen
class CheckReport:
    ok: bool
    message: str
    os: OperatingSystem | None = None
    hostname: str | None = None
    kernel: str | None = None
    tools: Mapping[str, bool] = attrs.field(factory=dict)
    host_key: str | None = None


@attrs.frozen
class VolumeChange:
    name: str
    size: int
    was: int | None = None  # the size before, for a volume updated


@attrs.frozen
class DiscoveryReport:
    ok: bool
    message: str
    added: tuple[VolumeChange, ...] = ()
    updated: tuple[VolumeChange, ...] = ()
    unchanged: tuple[str, ...] = ()


def _address(storage: Storage, owner_id: int, workload_id: int) -> tuple[Workload, MachineAddress]:
    with storage.unit_of_work(write=False) as uow:
        workload = uow.workloads.peek(owner_id, workload_id)
        credentials = uow.credentials.peek(owner_id, workload.credentials_id)
    return workload, MachineAddress.of(workload, credentials)


def _contact(workload: Workload) -> tuple[object, ...]:
    """What a contact with a workload relied on: where it is and the key pinned."""
    return workload.ip, workload.port, workload.root, workload.host_key


class _UtcClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)


def clock_or_now(clock: Clock | None) -> Clock:
    """The clock given, or the system's in UTC (for callers that embed the core without one)."""
    return _UtcClock() if clock is None else clock


def remember_contact(
    uow: UnitOfWork,
    seen: Workload,
    check: MachineCheck,
    host_key: str | None = None,
    os: OperatingSystem | None = None,
) -> Workload:
    """Keep a contact's outcome as the workload's last check (SPEC 2.11); pin
    the host key met at first contact (or complete a pin held as a
    fingerprint alone), and record the os when unknown. Nothing is written
    when the workload changed meanwhile in what the contact relied on (its
    address, root or pinned key). The workload as it now stands."""
    workload = uow.workloads.get(seen.owner_id, seen.id)
    if _contact(workload) != _contact(seen):
        return workload
    learnt = attrs.evolve(
        workload,
        host_key=workload.host_key if host_key is None else pin_after_contact(workload.host_key, host_key),
        os=workload.os or os,
        last_check=check,
    )
    if learnt != workload:
        uow.workloads.update(learnt)
    return learnt


def _remember(storage: Storage, seen: Workload, check: MachineCheck, host_key: str | None = None,
              os: OperatingSystem | None = None) -> None:
    with storage.unit_of_work() as uow:
        remember_contact(uow, seen, check, host_key, os)
        uow.commit()


def check_workload(
    storage: Storage, machines: Machines, owner_id: int, workload_id: int, *, clock: Clock | None = None
) -> CheckReport:
    """Connect to a workload, log in and read its facts. A machine that cannot
    be reached is a report with `ok` false and the reason, not an error; an
    address outside the allowed networks raises Conflict. A first contact
    pins the host key; the os is recorded when it was unknown; the outcome is
    the workload's last check. The report names the key by its fingerprint."""
    workload, address = _address(storage, owner_id, workload_id)
    now = clock_or_now(clock).now
    try:
        facts = machines.facts(address)
    except MachineUnreachable as failure:
        _remember(storage, workload, MachineCheck(now(), False, failure.message))
        pinned = None if workload.host_key is None else fingerprint(workload.host_key)
        return CheckReport(ok=False, message=failure.message, host_key=pinned)
    missing = facts.missing_tools
    if missing:
        message = f"Logged in to {facts.hostname}, but it lacks {' and '.join(missing)}, which a copy needs."
    else:
        message = f"Logged in to {facts.hostname} as {address.username}; it has every tool a copy needs."
    _remember(storage, workload, MachineCheck(now(), not missing, message), facts.host_key, facts.os)
    return CheckReport(
        ok=not missing,
        message=message,
        os=facts.os,
        hostname=facts.hostname,
        kernel=facts.kernel,
        tools=facts.tools,
        host_key=fingerprint(facts.host_key),
    )


def discover_volumes(
    storage: Storage,
    machines: Machines,
    owner_id: int,
    workload_id: int,
    *,
    dry_run: bool = False,
    clock: Clock | None = None,
) -> DiscoveryReport:
    """Read a Linux workload's mounted filesystems under its root and write
    them as its mount points: a new one is added with its used bytes as size,
    a known one (same name) gets its size updated, none is removed. With
    `dry_run`, only report what would change, writing nothing; otherwise the
    login is the workload's last check."""
    workload, address = _address(storage, owner_id, workload_id)
    if workload.os is OperatingSystem.WINDOWS:
        raise Conflict(f"Workload {workload_id} runs windows: only Linux volumes can be discovered.")
    now = clock_or_now(clock).now
    try:
        found = machines.filesystems(address)
    except MachineUnreachable as failure:
        if not dry_run:
            _remember(storage, workload, MachineCheck(now(), False, failure.message))
        return DiscoveryReport(ok=False, message=failure.message)
    with storage.unit_of_work(write=not dry_run) as uow:
        current = workload if dry_run else uow.workloads.get(owner_id, workload_id)
        if _contact(current) != _contact(workload):
            raise Conflict(f"Workload {workload_id} changed while it was read; discover it again.")
        read = uow.mount_points.peek if dry_run else uow.mount_points.get
        known: dict[str, MountPoint] = {}
        for mount_point_id in current.mount_point_ids:
            mount_point = read(owner_id, mount_point_id)
            known[mount_point.key] = mount_point
        added: list[VolumeChange] = []
        updated: list[VolumeChange] = []
        unchanged: list[str] = []
        new_ids: list[int] = []
        seen: set[str] = set()
        for filesystem in found.filesystems:
            key = volume_key(filesystem.name)
            if key in seen:
                continue  # a machine may list one mount point twice (mounted over)
            seen.add(key)
            existing = known.get(key)
            if existing is None:
                added.append(VolumeChange(filesystem.name, filesystem.used))
                if not dry_run:
                    made = uow.mount_points.add(MountPoint(owner_id, filesystem.name, filesystem.used))
                    new_ids.append(made.id)
            elif existing.size != filesystem.used:
                updated.append(VolumeChange(existing.name, filesystem.used, was=existing.size))
                if not dry_run:
                    uow.mount_points.update(attrs.evolve(existing, size=filesystem.used))
            else:
                unchanged.append(existing.name)
        verb = "would change" if dry_run else "changed"
        message = (
            f"Found {len(found.filesystems)} filesystem(s) under {address.root}:"
            f" {verb} {len(added)} added, {len(updated)} updated, {len(unchanged)} unchanged."
        )
        contact = MachineCheck(now(), True, f"Logged in as {address.username} (discovery). {message}")
        if not dry_run:
            uow.workloads.update(attrs.evolve(current, mount_point_ids=(*current.mount_point_ids, *new_ids)))
            remember_contact(uow, workload, contact, found.host_key, OperatingSystem.LINUX)
            uow.commit()
    return DiscoveryReport(True, message, tuple(added), tuple(updated), tuple(unchanged))


def workload_with_ip(storage: Storage, owner_id: int, ip: str) -> Workload:
    """The owner's workload at `ip` (any form of the address); NotFound otherwise."""
    canonical = canonical_ip(ip)
    with storage.unit_of_work(write=False) as uow:
        _, found = uow.workloads.find(owner_id, ListQuery(filters={"ip": canonical}, limit=1))
    if not found:
        raise NotFound(f"No workload has ip {canonical}.")
    return found[0]


# Its own names, and a copy's (`copy_jobs`), which callers have always found here.
__all__ = [
    "COPY_TOOLS",
    "CheckReport",
    "Copier",
    "CopyEnd",
    "CopyFailed",
    "CopyHandle",
    "CopyJob",
    "CopyKind",
    "CopyProgress",
    "Discovered",
    "DiscoveryReport",
    "Filesystem",
    "HOOK_OUTPUT_BYTES",
    "HOOK_SECONDS",
    "HOST_TOOLS",
    "HookRun",
    "HostKeyChanged",
    "MachineAddress",
    "MachineFacts",
    "MachineUnreachable",
    "Machines",
    "PlaceSeen",
    "SOURCE_TOOLS",
    "SurveyQuestions",
    "Surveyed",
    "SwapGate",
    "VolumeChange",
    "VolumeCopied",
    "VolumeToCopy",
    "check_workload",
    "clock_or_now",
    "discover_volumes",
    "fingerprint",
    "key_blob",
    "pin_after_contact",
    "remember_contact",
    "whole_key",
    "workload_with_ip",
]
