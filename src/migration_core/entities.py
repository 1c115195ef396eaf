"""Entities and value objects. Validators hold every invariant that one object
can check alone, so an invalid entity cannot be built; rules that need other
objects (ownership, references, uniqueness) live in the use cases and storage."""

from __future__ import annotations

import enum
import ipaddress
import posixpath
from collections.abc import Iterable, Mapping
from datetime import datetime
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
    """Where a running migration is. A real copy waits for a copy slot
    (`queued`, held by no instance) before it copies (SPEC 2.10)."""

    QUEUED = "queued"
    COPYING = "copying"


def _phase(value: Any) -> Phase | None:
    return None if value is None else Phase(value)


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
        once by `instance_id`, or `queued` for a copy slot (held by no instance)."""
        self.ensure_startable()
        return attrs.evolve(
            self,
            state=MigrationState.RUNNING,
            phase=Phase.QUEUED if queued else Phase.COPYING,
            error=None,
            started_at=at,
            finished_at=None,
            snapshot=snapshot,
            instance_id=None if queued else instance_id,
            copied=mark,
            progress=progress,
            swapping=False,
        )

    def take(self, instance_id: str | None) -> Migration:
        """A queued copy taken by the instance `instance_id`, which copies it now."""
        if self.state is not MigrationState.RUNNING or self.phase is not Phase.QUEUED:
            raise Conflict(f"Migration {self.id} has no queued copy to take.")
        return attrs.evolve(self, phase=Phase.COPYING, instance_id=instance_id)

    def carried_by(self, instance_id: str | None) -> bool:
        """Whether `instance_id` carries this migration's copy now."""
        return (
            self.state is MigrationState.RUNNING and self.phase is Phase.COPYING and self.instance_id == instance_id
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
