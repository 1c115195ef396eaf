"""Entities and value objects. Validators hold every invariant that one object
can check alone, so an invalid entity cannot be built; rules that need other
objects (ownership, references, uniqueness) live in the use cases and storage."""

from __future__ import annotations

import enum
import ipaddress
import posixpath
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import attrs

from .errors import Conflict, InvalidInput
from .private_keys import check_private_key

UNSAVED = 0  # the id of an entity storage has not yet assigned one


class CloudType(str, enum.Enum):
    AWS = "aws"
    AZURE = "azure"
    VSPHERE = "vsphere"
    VCLOUD = "vcloud"


class OperatingSystem(str, enum.Enum):
    WINDOWS = "windows"
    LINUX = "linux"


class MigrationState(str, enum.Enum):
    NOT_STARTED = "not_started"
    RUNNING = "running"
    ERROR = "error"
    SUCCESS = "success"

    @property
    def finished(self) -> bool:
        return self in (MigrationState.SUCCESS, MigrationState.ERROR)


class Phase(str, enum.Enum):
    """Where a running migration is. A real copy (a cold run's or a warm
    sync's) waits for a copy slot (`queued`, held by no instance) before it
    copies (SPEC 2.10); a warm migration is `syncing` during a sync and
    `in_sync` between syncs, held by no instance, and `cutting_over` from
    the moment its cutover is due (queued, then carried) to its end (2.9)."""

    QUEUED = "queued"
    COPYING = "copying"
    SYNCING = "syncing"
    IN_SYNC = "in_sync"
    CUTTING_OVER = "cutting_over"


def _phase(value: Any) -> Phase | None:
    return None if value is None else Phase(value)


class Mode(str, enum.Enum):
    """A cold migration copies once; a warm one keeps the copy in sync while
    the source runs, then cuts over (SPEC 2.9)."""

    COLD = "cold"
    WARM = "warm"


SYNC_INTERVAL_LIMITS = (60, 604800)
HOOK_MAX_CHARACTERS = 4096
# Failed syncs in a row that end a warm migration.
FAILED_SYNCS_ENDING_A_REPLICATION = 3


def _sync_interval(_instance: Any, _attribute: Any, value: Any) -> None:
    low, high = SYNC_INTERVAL_LIMITS
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput.field("sync_interval", f"Must be a whole number of seconds from {low} to {high}.")


def _hook(field: str) -> Any:
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, str) or not value.strip() or len(value) > HOOK_MAX_CHARACTERS:
            raise InvalidInput.field(
                field, f"Must be null or a shell command of 1 to {HOOK_MAX_CHARACTERS} characters."
            )
        if "\x00" in value:
            raise InvalidInput.field(field, "A command cannot hold a NUL character.")

    return check


@attrs.frozen
class Replication:
    """A running warm migration's syncs: how many were verified, the last
    one's end and length (the estimate of the cutover's downtime), the last
    failure's reason, the failures in a row, and when the sync under way
    began."""

    syncs: int = 0
    last_synced_at: datetime | None = None
    last_sync_seconds: float | None = None
    last_sync_error: str | None = None
    failed_in_a_row: int = 0
    sync_started_at: datetime | None = None


@attrs.frozen
class MachineCheck:
    """The last word of a machine (SPEC 2.11): when the service last reached
    it (by a check, a discovery, a readiness check or a copy's login),
    whether all was well, and what it found or what failed, in words."""

    at: datetime
    ok: bool
    message: str


def _machine_check(value: Any) -> MachineCheck | None:
    """A workload's `last_check` as stored: itself, or the JSON object storage keeps."""
    if value is None or isinstance(value, MachineCheck):
        return value
    return MachineCheck(datetime.fromisoformat(value["at"]), bool(value["ok"]), str(value["message"]))


@attrs.frozen
class Readiness:
    """A migration's last readiness check (SPEC 2.11): when, whether every
    check passed, and the names of those that failed, in their order."""

    at: datetime
    ready: bool
    failed: tuple[str, ...] = ()


def volume_key(name: str) -> str:
    """The identity of a volume name: `C:\\`, `c:` and `c:/` are one volume."""
    stripped = name.rstrip("\\/")
    return (stripped or name[:1]).casefold()


def system_volume(os: OperatingSystem | None) -> str:
    """The volume a run must copy (SPEC 2.2): `/` of a Linux machine, `C:\\`
    of any other (a machine whose os is unknown is taken for Windows)."""
    return "/" if os is OperatingSystem.LINUX else "C:\\"


def posix_root(value: Any, field: str = "root") -> str:
    """An absolute POSIX path in its normal form: `//` and `.` collapsed, no
    trailing `/` (but `/` itself); `..` resolved as a path, not by the machine."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise InvalidInput.field(field, "Must be an absolute POSIX path (starting with /).")
    if "\x00" in value:
        raise InvalidInput.field(field, "A path cannot hold a NUL character.")
    normal = posixpath.normpath(value)
    # normpath keeps a leading "//" (POSIX leaves its meaning open); Linux does not.
    return "/" + normal.lstrip("/")


def _optional_root(value: Any) -> str | None:
    return None if value is None else posix_root(value)


def _port(_instance: Any, _attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidInput.field("port", "Must be an integer from 1 to 65535 (the SSH port).")


def _operating_system(value: Any) -> OperatingSystem | None:
    if value is None:
        return None
    try:
        return OperatingSystem(value)
    except ValueError:
        allowed = ", ".join(o.value for o in OperatingSystem)
        raise InvalidInput.field("os", f"Must be one of: {allowed}, or null (unknown).") from None


def _host_key(_instance: Any, _attribute: Any, value: Any) -> None:
    # Either form a pin takes: the whole key (`ssh-ed25519 AAAA...`), or its
    # fingerprint alone (`SHA256:...`, as earlier releases stored it).
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidInput.field("host_key", "Must be a non-empty string, or null.")


def _optional_id(field: str) -> Any:
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidInput.field(field, f"{value!r} is not an id.")

    return check


def _private_key(_instance: Any, _attribute: Any, value: Any) -> None:
    if not isinstance(value, str):
        raise InvalidInput.field("private_key", "Must be a string.")
    if value:
        check_private_key(value)


def canonical_ip(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInput.field("ip", "Must be a string holding an IPv4 or IPv6 address.")
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise InvalidInput.field("ip", f"{value!r} is not a valid IPv4 or IPv6 address.") from None


def _non_empty(field: str) -> Any:
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if not isinstance(value, str) or not value:
            raise InvalidInput.field(field, "Must be a non-empty string.")

    return check


def _string(field: str) -> Any:
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if not isinstance(value, str):
            raise InvalidInput.field(field, "Must be a string.")

    return check


def _size(_instance: Any, _attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput.field("size", "Must be an integer >= 0 (bytes).")


def _distinct_ids(field: str, *, allow_empty: bool, noun: str = "Mount point") -> Any:
    def check(_instance: Any, _attribute: Any, value: tuple[int, ...]) -> None:
        if not allow_empty and not value:
            raise InvalidInput.field(field, f"Select at least one {noun.lower()}.")
        seen: set[int] = set()
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int):
                raise InvalidInput.field(field, f"{item!r} is not an id.")
            if item in seen:
                raise InvalidInput.field(field, f"{noun} {item} is listed more than once.")
            seen.add(item)

    return check


def _ids(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(value)


def _volumes(value: Iterable[Volume]) -> tuple[Volume, ...]:
    return tuple(value)


def _cloud_type(value: Any) -> CloudType:
    try:
        return CloudType(value)
    except ValueError:
        allowed = ", ".join(t.value for t in CloudType)
        raise InvalidInput.field("cloud_type", f"Must be one of: {allowed}.") from None


@attrs.frozen
class User:
    username: str
    password_hash: str = attrs.field(repr=False)
    id: int = UNSAVED


@attrs.frozen
class Login:
    """A username, password and domain: what a target VM keeps as its copy of
    the source's login. The password is empty for a key login; the key itself
    stays with the credentials."""

    username: str = attrs.field(validator=_non_empty("username"))
    password: str = attrs.field(validator=_string("password"), repr=False)
    domain: str = attrs.field(default="", validator=_string("domain"))


@attrs.frozen
class Credentials:
    """A login: a password, a private key (OpenSSH or PEM, unencrypted; ""
    for none), or both."""

    owner_id: int
    username: str = attrs.field(validator=_non_empty("username"))
    password: str = attrs.field(validator=_string("password"), repr=False)
    domain: str = attrs.field(default="", validator=_string("domain"))
    private_key: str = attrs.field(default="", validator=_private_key, repr=False)
    id: int = UNSAVED

    def __attrs_post_init__(self) -> None:
        if not self.password and not self.private_key:
            raise InvalidInput.field("password", "Must be a non-empty string unless a private key is given.")

    @property
    def has_private_key(self) -> bool:
        return bool(self.private_key)

    @property
    def login(self) -> Login:
        return Login(self.username, self.password, self.domain)


@attrs.frozen
class CredentialsSummary:
    """What answers show of credentials: neither the password nor the key,
    so storage reads it without opening either."""

    owner_id: int
    username: str
    domain: str
    has_private_key: bool = attrs.field(converter=bool)
    id: int = UNSAVED

    @classmethod
    def of(cls, credentials: Credentials) -> CredentialsSummary:
        return cls(
            credentials.owner_id, credentials.username, credentials.domain, credentials.has_private_key, credentials.id
        )


@attrs.frozen
class MountPoint:
    owner_id: int
    name: str = attrs.field(validator=_non_empty("name"))
    size: int = attrs.field(validator=_size)
    id: int = UNSAVED

    @property
    def key(self) -> str:
        return volume_key(self.name)


@attrs.frozen
class Volume:
    """A mount point as copied into a target VM: name and size, no identity."""

    name: str = attrs.field(validator=_non_empty("name"))
    size: int = attrs.field(validator=_size)


@attrs.frozen
class Workload:
    owner_id: int
    ip: str = attrs.field(converter=canonical_ip)
    credentials_id: int
    mount_point_ids: tuple[int, ...] = attrs.field(
        default=(), converter=_ids, validator=_distinct_ids("storage", allow_empty=True)
    )
    port: int = attrs.field(default=22, validator=_port)  # SSH
    os: OperatingSystem | None = attrs.field(default=None, converter=_operating_system)
    # Where the machine's tree is found once logged in (a snapshot or a
    # rescue system mounts it elsewhere).
    root: str = attrs.field(default="/", converter=posix_root)
    # The SSH host key pinned at first contact (whole; answered as its
    # fingerprint); only the core's machine use cases set it, and the user may clear it.
    host_key: str | None = attrs.field(default=None, validator=_host_key)
    last_check: MachineCheck | None = attrs.field(default=None, converter=_machine_check)
    id: int = UNSAVED


@attrs.frozen
class TargetVm:
    """What a successful migration leaves in its target: a copy of the source
    holding only the selected volumes, in the source's order."""

    ip: str = attrs.field(converter=canonical_ip)
    credentials: Login
    storage: tuple[Volume, ...] = attrs.field(converter=_volumes)


@attrs.frozen
class MigrationTarget:
    owner_id: int
    cloud_type: CloudType = attrs.field(converter=_cloud_type)
    cloud_credentials_id: int
    target_vm: TargetVm | None = None
    # The workload that receives a real copy, under `root`; None: runs into
    # the target are simulated.
    host_id: int | None = attrs.field(default=None, validator=_optional_id("host"))
    root: str | None = attrs.field(default=None, converter=_optional_root)
    id: int = UNSAVED

    def __attrs_post_init__(self) -> None:
        if self.host_id is not None and self.root is None:
            raise InvalidInput.field("root", "Required with a host: the path on the host under which volumes land.")
        if self.host_id is None and self.root is not None:
            raise InvalidInput.field("root", "A root is only given with a host; this target has none.")


def _progress(_instance: Any, _attribute: Any, value: int) -> None:
    if not 0 <= value <= 100:
        raise ValueError(f"progress {value} is outside 0..100")


def _count(_instance: Any, attribute: Any, value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} {value} is below 0")


@attrs.frozen
class CopyMark:
    """How far the copy of a run has got, as last recorded. The run copies the
    volumes of its snapshot one after another; `mount_point_ids` names the
    mount point each came from, in the same (the source's) order. The first
    `volumes` of them are copied, and `partial` bytes of the next one."""

    mount_point_ids: tuple[int, ...] = attrs.field(converter=_ids)
    volumes: int = attrs.field(default=0, validator=_count)
    partial: int = attrs.field(default=0, validator=_count)
    # The estimated end, from the rate seen so far; None until a rate is seen
    # and once the run has ended.
    eta: datetime | None = None
    # The files of the next volume that have passed, as a real copy counts
    # them; None when the copier counts none (the simulated copy).
    files: int | None = attrs.field(default=None, validator=attrs.validators.optional(_count))


@attrs.frozen
class Migration:
    owner_id: int
    source_id: int
    migration_target_id: int
    selected_mount_point_ids: tuple[int, ...] = attrs.field(
        converter=_ids, validator=_distinct_ids("selected_mount_points", allow_empty=False)
    )
    state: MigrationState = attrs.field(default=MigrationState.NOT_STARTED, converter=MigrationState)
    progress: int = attrs.field(default=0, validator=_progress)
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # The source as it was when the current run started; what success copies.
    snapshot: TargetVm | None = None
    # The service instance carrying the current (or last) run.
    instance_id: str | None = None
    # The wave holding it, as storage read it: membership is the wave's list
    # (`Wave.migration_ids`), so writing a migration never changes it.
    wave_id: int | None = None
    # What the current (or last) run has copied; None before any run.
    copied: CopyMark | None = None
    # Where a running migration is (None when not running).
    phase: Phase | None = attrs.field(default=None, converter=_phase)
    # True while its carrier moves a verified volume into place: a cancel waits.
    swapping: bool = False
    # When the copy waiting in the queue was asked for (its place in the queue).
    queued_at: datetime | None = None
    mode: Mode = attrs.field(default=Mode.COLD, converter=Mode)
    sync_interval: int = attrs.field(default=3600, validator=_sync_interval)
    # When a running warm migration cuts over by itself (None: not planned).
    cutover_at: datetime | None = None
    pre_cutover: str | None = attrs.field(default=None, validator=_hook("pre_cutover"))
    post_cutover: str | None = attrs.field(default=None, validator=_hook("post_cutover"))
    # A running warm migration's syncs, and when the next is due.
    replication: Replication | None = None
    next_sync_at: datetime | None = None
    readiness: Readiness | None = None
    id: int = UNSAVED

    # -- the changes of state of a run (SPEC 2.2, 2.3) ----------------------

    def ensure_startable(self) -> None:
        """Conflict for a run that is running or has succeeded."""
        if self.state is MigrationState.RUNNING:
            raise Conflict(f"Migration {self.id} is already running.")
        if self.state is MigrationState.SUCCESS:
            raise Conflict(f"Migration {self.id} has already succeeded.")

    def start(
        self,
        *,
        at: datetime,
        snapshot: TargetVm,
        mark: CopyMark,
        instance_id: str | None,
        progress: int = 0,
        queued: bool = False,
    ) -> Migration:
        """Running from `at`, copying `snapshot` from where `mark` says: at
        once by `instance_id`, or `queued` for a copy slot (held by no
        instance). A warm migration's run queues its first sync."""
        self.ensure_startable()
        warm = self.mode is Mode.WARM
        waits = queued or warm
        return attrs.evolve(
            self,
            state=MigrationState.RUNNING,
            phase=Phase.QUEUED if waits else Phase.COPYING,
            queued_at=at if waits else None,
            error=None,
            started_at=at,
            finished_at=None,
            snapshot=snapshot,
            instance_id=None if waits else instance_id,
            copied=mark,
            progress=progress,
            swapping=False,
            replication=Replication() if warm else None,
            next_sync_at=None,
            # A planned cutover whose time passed while it was not running (a
            # cancelled or failed run's) is no plan of this run.
            cutover_at=None if self.cutover_at is not None and self.cutover_at <= at else self.cutover_at,
        )

    @property
    def waiting_for_a_slot(self) -> bool:
        """Whether its copy waits in the queue: a run or sync `queued`, or a
        cutover due that no instance carries yet."""
        if self.state is not MigrationState.RUNNING:
            return False
        return self.phase is Phase.QUEUED or (self.phase is Phase.CUTTING_OVER and self.instance_id is None)

    def take(self, instance_id: str | None, at: datetime | None = None) -> Migration:
        """A queued copy taken by the instance `instance_id`, which copies it
        now: a cold run's, a sync, or the cutover."""
        if not self.waiting_for_a_slot:
            raise Conflict(f"Migration {self.id} has no queued copy to take.")
        if self.mode is Mode.COLD:
            phase = Phase.COPYING
        else:
            phase = Phase.CUTTING_OVER if self.phase is Phase.CUTTING_OVER else Phase.SYNCING
        replication, mark = self.replication, self.copied
        if replication is not None:
            # Each sync copies every volume again (sending what differs).
            replication = attrs.evolve(replication, sync_started_at=at)
            if mark is not None:
                mark = attrs.evolve(mark, volumes=0, partial=0, eta=None, files=None)
        return attrs.evolve(
            self, phase=phase, instance_id=instance_id, queued_at=None, replication=replication, copied=mark
        )

    def carried_by(self, instance_id: str | None) -> bool:
        """Whether `instance_id` carries this migration's copy now."""
        return (
            self.state is MigrationState.RUNNING
            and self.phase in (Phase.COPYING, Phase.SYNCING, Phase.CUTTING_OVER)
            and not self.waiting_for_a_slot
            and self.instance_id == instance_id
        )

    def enter_swap(self, instance_id: str | None) -> Migration:
        """The carrier moves a verified volume into place: from now until
        `leave_swap`, a cancel waits (Conflict when the run is not carried by
        `instance_id` any more: cancelled or interrupted meanwhile)."""
        if not self.carried_by(instance_id):
            raise Conflict(f"Migration {self.id}'s copy is no longer carried by this instance.")
        return attrs.evolve(self, swapping=True)

    def leave_swap(self) -> Migration:
        return attrs.evolve(self, swapping=False)

    # -- a warm migration's replication (SPEC 2.9) -------------------------

    def _ensure_replicating(self) -> Replication:
        if self.state is not MigrationState.RUNNING or self.mode is not Mode.WARM or self.replication is None:
            raise Conflict(f"Migration {self.id} is not a running warm migration.")
        return self.replication

    def queue_sync(self, at: datetime) -> Migration:
        """A sync asked for (its time came, or `sync now`): queued for a slot.
        Conflict when a sync or the cutover is under way or queued."""
        self._ensure_replicating()
        if self.phase is not Phase.IN_SYNC:
            doing = "none" if self.phase is None else self.phase.value
            raise Conflict(f"Migration {self.id} has a sync or its cutover under way or queued ({doing}).")
        return attrs.evolve(self, phase=Phase.QUEUED, queued_at=at, instance_id=None)

    def plan_cutover(self, when: datetime | None, now: datetime) -> Migration:
        """Cut over at `when` (None: withdraw the plan); due now, it is queued
        at once unless a sync is under way, whose end it waits for."""
        self._ensure_replicating()
        if self.phase is Phase.CUTTING_OVER:
            raise Conflict(f"Migration {self.id} is already cutting over.")
        planned = attrs.evolve(self, cutover_at=when)
        return planned.cutover_if_due(now)

    def cutover_if_due(self, now: datetime) -> Migration:
        """Queued for its cutover when its time has come and no sync is being copied."""
        if self.cutover_at is None or self.cutover_at > now or self.phase not in (Phase.IN_SYNC, Phase.QUEUED):
            return self
        return attrs.evolve(self, phase=Phase.CUTTING_OVER, queued_at=now, instance_id=None)

    def sync_due(self, now: datetime) -> bool:
        return (
            self.phase is Phase.IN_SYNC
            and self.mode is Mode.WARM
            and (
                self.next_sync_at is not None
                and self.next_sync_at <= now
                or self.cutover_at is not None
                and self.cutover_at <= now
            )
        )

    def sync_succeeded(self, at: datetime) -> Migration:
        """A sync verified in place: in sync until the next, due an interval
        after this one's end (or the cutover, when its time has come)."""
        replication = self._ensure_replicating()
        began = replication.sync_started_at or at
        mark = self.copied
        synced = attrs.evolve(
            self,
            # Every volume in place: the state counts them copied until the next sync.
            copied=None if mark is None else attrs.evolve(
                mark, volumes=len(mark.mount_point_ids), partial=0, eta=None, files=None
            ),
            phase=Phase.IN_SYNC,
            instance_id=None,
            swapping=False,
            next_sync_at=at + timedelta(seconds=self.sync_interval),
            replication=Replication(
                syncs=replication.syncs + 1,
                last_synced_at=at,
                last_sync_seconds=(at - began).total_seconds(),
            ),
        )
        return synced.cutover_if_due(at)

    def sync_failed(self, at: datetime, reason: str) -> Migration:
        """A sync (or the cutover) that failed: in sync as before, with the
        reason, the next sync at its time; the third failed sync in a row ends
        the replication with the reason. A failed cutover withdraws its plan."""
        replication = self._ensure_replicating()
        cutover = self.phase is Phase.CUTTING_OVER
        failed = replication.failed_in_a_row + (0 if cutover else 1)
        if failed >= FAILED_SYNCS_ENDING_A_REPLICATION:
            return self.fail(at, reason)
        return attrs.evolve(
            self,
            phase=Phase.IN_SYNC,
            instance_id=None,
            swapping=False,
            queued_at=None,
            cutover_at=None if cutover else self.cutover_at,
            next_sync_at=at + timedelta(seconds=self.sync_interval),
            replication=attrs.evolve(
                replication, last_sync_error=reason, failed_in_a_row=failed, sync_started_at=None
            ),
        )

    def advance(self, *, storage: tuple[Volume, ...], mark: CopyMark, progress: int) -> Migration:
        """Copied as far as `mark` says, with the volumes' sizes as they passed;
        progress never goes down."""
        assert self.snapshot is not None, "a running migration has its snapshot"
        return attrs.evolve(
            self,
            progress=max(self.progress, progress),
            snapshot=attrs.evolve(self.snapshot, storage=storage),
            copied=mark,
        )

    def succeed(self, at: datetime) -> Migration:
        """Every volume copied: progress 100, only here."""
        mark = self.copied
        return attrs.evolve(
            self,
            state=MigrationState.SUCCESS,
            phase=None,
            swapping=False,
            queued_at=None,
            next_sync_at=None,
            progress=100,
            error=None,
            finished_at=at,
            copied=None
            if mark is None
            else attrs.evolve(mark, volumes=len(mark.mount_point_ids), partial=0, eta=None),
        )

    def fail(self, at: datetime, error: str) -> Migration:
        """Ended with `error`; what was copied stays as last recorded."""
        mark = self.copied
        return attrs.evolve(
            self,
            state=MigrationState.ERROR,
            phase=None,
            swapping=False,
            queued_at=None,
            next_sync_at=None,
            error=error,
            finished_at=at,
            copied=None if mark is None else attrs.evolve(mark, eta=None),
        )

    def replanned(self) -> Migration:
        """A changed plan: not started, nothing of an earlier run kept."""
        return attrs.evolve(
            self,
            state=MigrationState.NOT_STARTED,
            progress=0,
            error=None,
            started_at=None,
            finished_at=None,
            snapshot=None,
            copied=None,
        )


@attrs.frozen
class Wave:
    """A named group of its owner's migrations that run together (a move
    group); a migration is in one wave at most."""

    owner_id: int
    name: str = attrs.field(validator=_non_empty("name"))
    migration_ids: tuple[int, ...] = attrs.field(
        default=(),
        converter=_ids,
        validator=_distinct_ids("migrations", allow_empty=True, noun="Migration"),
    )
    id: int = UNSAVED


class EventKind(str, enum.Enum):
    """Every step in a migration's life."""

    CREATED = "created"
    UPDATED = "updated"
    RUN_REQUESTED = "run_requested"
    STARTED = "started"
    VOLUME_COPIED = "volume_copied"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    QUEUED = "queued"
    SYNC_STARTED = "sync_started"
    SYNCED = "synced"
    SYNC_FAILED = "sync_failed"
    CUTOVER_REQUESTED = "cutover_requested"
    HOOK_RAN = "hook_ran"
    PREFLIGHT = "preflight"


def _detail(value: Mapping[str, Any]) -> dict[str, Any]:
    return dict(value)


@attrs.frozen
class Event:
    """One step in a migration's life, written with the change it records and
    never edited. `detail` holds JSON values only; `actor` is the user who
    asked for the step, None when the system took it."""

    owner_id: int
    migration_id: int
    kind: EventKind = attrs.field(converter=EventKind)
    at: datetime
    detail: dict[str, Any] = attrs.field(factory=dict, converter=_detail)
    actor: int | None = None
    id: int = UNSAVED
