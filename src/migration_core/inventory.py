"""Use cases for the five owned kinds: create, read, update, delete, list.
Each is one transaction; every rule that spans objects is checked here, and
storage backs the uniqueness rules with its own constraints."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Final, TypeVar

import attrs

from .entities import (
    Credentials,
    CredentialsSummary,
    EventKind,
    Migration,
    MigrationState,
    MigrationTarget,
    Mode,
    MountPoint,
    OperatingSystem,
    Workload,
    canonical_ip,
)
from .errors import Conflict, InvalidInput, NotFound, running_not_editable, target_busy
from .events import acting, append, event
from .ports import Clock, ListQuery, Page, ReadModel, Repository, Storage, UnitOfWork

E = TypeVar("E")

Pick = Callable[[UnitOfWork], Repository[E]]
PickRead = Callable[[UnitOfWork], ReadModel[E]]  # a repository, or a read model


class Keep(enum.Enum):
    """An update's "leave this field as it is", for fields where None is a value."""

    KEEP = "keep"


KEEP: Final = Keep.KEEP


def _credentials(uow: UnitOfWork) -> Repository[Credentials]:
    return uow.credentials


def _mount_points(uow: UnitOfWork) -> Repository[MountPoint]:
    return uow.mount_points


def _workloads(uow: UnitOfWork) -> Repository[Workload]:
    return uow.workloads


def _migration_targets(uow: UnitOfWork) -> Repository[MigrationTarget]:
    return uow.migration_targets


def _migrations(uow: UnitOfWork) -> Repository[Migration]:
    return uow.migrations


def _credentials_summaries(uow: UnitOfWork) -> ReadModel[CredentialsSummary]:
    return uow.credentials_summaries


def _read(storage: Storage, pick: PickRead[E], owner_id: int, entity_id: int) -> E:
    with storage.unit_of_work(write=False) as uow:
        return pick(uow).get(owner_id, entity_id)


def _list(storage: Storage, pick: PickRead[E], owner_id: int, query: ListQuery) -> Page[E]:
    with storage.unit_of_work(write=False) as uow:
        count, items = pick(uow).find(owner_id, query)
    return Page(count, items)


def _referenced(repo: Repository[E], owner_id: int, entity_id: int, field: str, noun: str) -> E:
    """A referenced object of the same owner; a dangling reference is bad input."""
    try:
        return repo.get(owner_id, entity_id)
    except NotFound:
        raise InvalidInput.field(field, f"{noun} {entity_id} does not exist.") from None


def _refuse_if_referenced(what: str, referrers: Iterable[tuple[str, list[int]]]) -> None:
    users = [f"{noun} {', '.join(map(str, ids))}" for noun, ids in referrers if ids]
    if users:
        raise Conflict(f"{what} is still referred to by {'; '.join(users)}.")


def _plural(noun: str, ids: list[int]) -> tuple[str, list[int]]:
    return (noun if len(ids) == 1 else noun + "s", ids)


# --- credentials -------------------------------------------------------------


def create_credentials(
    storage: Storage,
    owner_id: int,
    *,
    username: str,
    password: str = "",
    domain: str = "",
    private_key: str = "",
) -> Credentials:
    """A password, a private key, or both."""
    credentials = Credentials(owner_id, username, password, domain, private_key)
    with storage.unit_of_work() as uow:
        stored = uow.credentials.add(credentials)
        uow.commit()
    return stored


def get_credentials(storage: Storage, owner_id: int, credentials_id: int) -> Credentials:
    return _read(storage, _credentials, owner_id, credentials_id)


def list_credentials(storage: Storage, owner_id: int, query: ListQuery) -> Page[Credentials]:
    return _list(storage, _credentials, owner_id, query)


def get_credentials_summary(storage: Storage, owner_id: int, credentials_id: int) -> CredentialsSummary:
    """The credentials as answers show them, their password and key left sealed."""
    return _read(storage, _credentials_summaries, owner_id, credentials_id)


def list_credentials_summaries(storage: Storage, owner_id: int, query: ListQuery) -> Page[CredentialsSummary]:
    """A page of credentials as answers show them (filters as `list_credentials`)."""
    return _list(storage, _credentials_summaries, owner_id, query)


def update_credentials(
    storage: Storage,
    owner_id: int,
    credentials_id: int,
    *,
    username: str | None = None,
    password: str | None = None,
    domain: str | None = None,
    private_key: str | None = None,
) -> Credentials:
    """Change the given fields; a field left as None keeps its value ("" for
    the password or the key removes it, while the other remains)."""
    with storage.unit_of_work() as uow:
        current = uow.credentials.get(owner_id, credentials_id)
        changed = attrs.evolve(
            current,
            username=current.username if username is None else username,
            password=current.password if password is None else password,
            domain=current.domain if domain is None else domain,
            private_key=current.private_key if private_key is None else private_key,
        )
        stored = uow.credentials.update(changed)
        uow.commit()
    return stored


def delete_credentials(storage: Storage, owner_id: int, credentials_id: int) -> None:
    with storage.unit_of_work() as uow:
        uow.credentials.get(owner_id, credentials_id)
        _refuse_if_referenced(
            f"Credentials {credentials_id}",
            [
                _plural("workload", uow.workloads.referrers("credentials_id", credentials_id)),
                _plural(
                    "migration target",
                    uow.migration_targets.referrers("cloud_credentials_id", credentials_id),
                ),
            ],
        )
        uow.credentials.delete(owner_id, credentials_id)
        uow.commit()


# --- mount points ------------------------------------------------------------


def create_mount_point(storage: Storage, owner_id: int, *, name: str, size: int) -> MountPoint:
    mount_point = MountPoint(owner_id, name, size)
    with storage.unit_of_work() as uow:
        stored = uow.mount_points.add(mount_point)
        uow.commit()
    return stored


def get_mount_point(storage: Storage, owner_id: int, mount_point_id: int) -> MountPoint:
    return _read(storage, _mount_points, owner_id, mount_point_id)


def list_mount_points(storage: Storage, owner_id: int, query: ListQuery) -> Page[MountPoint]:
    return _list(storage, _mount_points, owner_id, query)


def update_mount_point(
    storage: Storage,
    owner_id: int,
    mount_point_id: int,
    *,
    name: str | None = None,
    size: int | None = None,
) -> MountPoint:
    with storage.unit_of_work() as uow:
        current = uow.mount_points.get(owner_id, mount_point_id)
        changed = attrs.evolve(
            current,
            name=current.name if name is None else name,
            size=current.size if size is None else size,
        )
        if changed.key != current.key:
            # A renamed volume must stay distinct within the workload that holds it.
            for workload_id in uow.workloads.referrers("mount_point_ids", mount_point_id):
                workload = uow.workloads.get(owner_id, workload_id)
                siblings = [
                    uow.mount_points.get(owner_id, i)
                    for i in workload.mount_point_ids
                    if i != mount_point_id
                ]
                _check_distinct_volumes([*siblings, changed], field="name")
        stored = uow.mount_points.update(changed)
        uow.commit()
    return stored


def delete_mount_point(storage: Storage, owner_id: int, mount_point_id: int) -> None:
    with storage.unit_of_work() as uow:
        uow.mount_points.get(owner_id, mount_point_id)
        _refuse_if_referenced(
            f"Mount point {mount_point_id}",
            [
                _plural("workload", uow.workloads.referrers("mount_point_ids", mount_point_id)),
                _plural(
                    "migration",
                    uow.migrations.referrers("selected_mount_point_ids", mount_point_id),
                ),
            ],
        )
        uow.mount_points.delete(owner_id, mount_point_id)
        uow.commit()


def _check_distinct_volumes(mount_points: Sequence[MountPoint], *, field: str) -> None:
    seen: dict[str, MountPoint] = {}
    for mount_point in mount_points:
        other = seen.setdefault(mount_point.key, mount_point)
        if other is not mount_point:
            raise InvalidInput.field(
                field,
                f"{other.name!r} and {mount_point.name!r} name the same volume;"
                " a workload holds each volume once.",
            )


# --- workloads ---------------------------------------------------------------


def _check_workload(uow: UnitOfWork, workload: Workload) -> None:
    owner_id = workload.owner_id
    _referenced(uow.credentials, owner_id, workload.credentials_id, "credentials", "Credentials")
    mount_points = [
        _referenced(uow.mount_points, owner_id, i, "storage", "Mount point")
        for i in workload.mount_point_ids
    ]
    _check_distinct_volumes(mount_points, field="storage")
    _, same_ip = uow.workloads.find(owner_id, ListQuery(filters={"ip": workload.ip}, limit=1))
    if same_ip and same_ip[0].id != workload.id:
        raise Conflict(f"Workload {same_ip[0].id} already has ip {workload.ip}.")
    for mount_point_id in workload.mount_point_ids:
        holders = [
            i for i in uow.workloads.referrers("mount_point_ids", mount_point_id) if i != workload.id
        ]
        if holders:
            raise Conflict(
                f"Mount point {mount_point_id} already belongs to workload {holders[0]}."
            )


def create_workload(
    storage: Storage,
    owner_id: int,
    *,
    ip: str,
    credentials_id: int,
    mount_point_ids: Sequence[int] = (),
    port: int = 22,
    os: OperatingSystem | str | None = None,
    root: str = "/",
) -> Workload:
    """Its host key is pinned at the first contact with the machine, never given."""
    workload = Workload(owner_id, ip, credentials_id, tuple(mount_point_ids), port=port, os=os, root=root)
    with storage.unit_of_work() as uow:
        _check_workload(uow, workload)
        stored = uow.workloads.add(workload)
        uow.commit()
    return stored


def get_workload(storage: Storage, owner_id: int, workload_id: int) -> Workload:
    return _read(storage, _workloads, owner_id, workload_id)


def list_workloads(storage: Storage, owner_id: int, query: ListQuery) -> Page[Workload]:
    if "ip" in query.filters:
        # Filter by the canonical form, as stored; an ip filter that is no
        # address is refused (InvalidInput naming `ip`), not an empty page.
        ip = canonical_ip(query.filters["ip"])
        query = attrs.evolve(query, filters={**query.filters, "ip": ip})
    return _list(storage, _workloads, owner_id, query)


def update_workload(
    storage: Storage,
    owner_id: int,
    workload_id: int,
    *,
    ip: str | None = None,
    credentials_id: int | None = None,
    mount_point_ids: Sequence[int] | None = None,
    port: int | None = None,
    os: OperatingSystem | str | None | Keep = KEEP,
    root: str | None = None,
    host_key: str | None | Keep = KEEP,
) -> Workload:
    """`ip` may be given only as the workload's own: it never changes. A
    user may only clear the pinned `host_key` (None): the next contact pins
    the key it meets."""
    if host_key is not KEEP and host_key is not None:
        raise InvalidInput.field(
            "host_key", "The pinned host key can only be cleared (null); the next check pins the key it meets."
        )
    with storage.unit_of_work() as uow:
        current = uow.workloads.get(owner_id, workload_id)
        if ip is not None and canonical_ip(ip) != current.ip:
            raise InvalidInput.field("ip", "The ip of a workload cannot change after creation.")
        changed = attrs.evolve(
            current,
            credentials_id=current.credentials_id if credentials_id is None else credentials_id,
            mount_point_ids=current.mount_point_ids
            if mount_point_ids is None
            else tuple(mount_point_ids),
            port=current.port if port is None else port,
            os=current.os if os is KEEP else os,
            root=current.root if root is None else root,
            host_key=current.host_key if host_key is KEEP else None,
        )
        _check_workload(uow, changed)
        stored = uow.workloads.update(changed)
        uow.commit()
    return stored


def delete_workload(storage: Storage, owner_id: int, workload_id: int) -> None:
    with storage.unit_of_work() as uow:
        uow.workloads.get(owner_id, workload_id)
        _refuse_if_referenced(
            f"Workload {workload_id}",
            [
                _plural("migration", uow.migrations.referrers("source_id", workload_id)),
                _plural("migration target", uow.migration_targets.referrers("host_id", workload_id)),
            ],
        )
        uow.workloads.delete(owner_id, workload_id)
        uow.commit()


# --- migration targets -------------------------------------------------------


def _check_target(uow: UnitOfWork, target: MigrationTarget) -> None:
    owner_id = target.owner_id
    _referenced(uow.credentials, owner_id, target.cloud_credentials_id, "cloud_credentials", "Credentials")
    if target.host_id is not None:
        _referenced(uow.workloads, owner_id, target.host_id, "host", "Workload")


def create_migration_target(
    storage: Storage,
    owner_id: int,
    *,
    cloud_type: str,
    cloud_credentials_id: int,
    host_id: int | None = None,
    root: str | None = None,
) -> MigrationTarget:
    """With a host (a workload of the owner) and a root on it, runs into the
    target copy for real; without, they are simulated."""
    target = MigrationTarget(owner_id, cloud_type, cloud_credentials_id, host_id=host_id, root=root)
    with storage.unit_of_work() as uow:
        _check_target(uow, target)
        stored = uow.migration_targets.add(target)
        uow.commit()
    return stored


def get_migration_target(storage: Storage, owner_id: int, target_id: int) -> MigrationTarget:
    return _read(storage, _migration_targets, owner_id, target_id)


def list_migration_targets(
    storage: Storage, owner_id: int, query: ListQuery
) -> Page[MigrationTarget]:
    return _list(storage, _migration_targets, owner_id, query)


def update_migration_target(
    storage: Storage,
    owner_id: int,
    target_id: int,
    *,
    cloud_type: str | None = None,
    cloud_credentials_id: int | None = None,
    host_id: int | None | Keep = KEEP,
    root: str | None | Keep = KEEP,
) -> MigrationTarget:
    """`target_vm` is not writable: only a successful migration replaces it.
    Taking the host away (None) takes its root with it, unless one is given."""
    with storage.unit_of_work() as uow:
        current = uow.migration_targets.get(owner_id, target_id)
        if root is KEEP:
            root = None if host_id is None else current.root
        changed = attrs.evolve(
            current,
            cloud_type=current.cloud_type if cloud_type is None else cloud_type,
            cloud_credentials_id=current.cloud_credentials_id
            if cloud_credentials_id is None
            else cloud_credentials_id,
            host_id=current.host_id if host_id is KEEP else host_id,
            root=root,
        )
        _check_target(uow, changed)
        if (changed.host_id, changed.root) != (current.host_id, current.root):
            # A run copying onto the host keeps the host and root it started with.
            _, running = uow.migrations.find(
                owner_id,
                ListQuery(filters={"migration_target_id": target_id, "state": MigrationState.RUNNING.value}, limit=1),
            )
            if running:
                raise target_busy(target_id, running[0].id)
        stored = uow.migration_targets.update(changed)
        uow.commit()
    return stored


def delete_migration_target(storage: Storage, owner_id: int, target_id: int) -> None:
    with storage.unit_of_work() as uow:
        uow.migration_targets.get(owner_id, target_id)
        _refuse_if_referenced(
            f"Migration target {target_id}",
            [_plural("migration", uow.migrations.referrers("migration_target_id", target_id))],
        )
        uow.migration_targets.delete(owner_id, target_id)
        uow.commit()


# --- migrations --------------------------------------------------------------


def _check_migration(uow: UnitOfWork, migration: Migration) -> None:
    owner_id = migration.owner_id
    source = _referenced(uow.workloads, owner_id, migration.source_id, "source", "Workload")
    _referenced(
        uow.migration_targets,
        owner_id,
        migration.migration_target_id,
        "migration_target",
        "Migration target",
    )
    for mount_point_id in migration.selected_mount_point_ids:
        _referenced(
            uow.mount_points, owner_id, mount_point_id, "selected_mount_points", "Mount point"
        )
        if mount_point_id not in source.mount_point_ids:
            raise InvalidInput.field(
                "selected_mount_points",
                f"Mount point {mount_point_id} is not in the storage of workload {source.id}.",
            )


def _plan(migration: Migration) -> dict[str, object]:
    """A migration's plan as its events tell it, in the API's words (a warm
    migration's mode, interval and hooks too)."""
    plan: dict[str, object] = {
        "source": migration.source_id,
        "migration_target": migration.migration_target_id,
        "selected_mount_points": list(migration.selected_mount_point_ids),
    }
    if migration.mode is Mode.WARM:
        plan |= {
            "mode": migration.mode.value,
            "sync_interval": migration.sync_interval,
            "pre_cutover": migration.pre_cutover,
            "post_cutover": migration.post_cutover,
        }
    return plan


def create_migration(
    storage: Storage,
    owner_id: int,
    *,
    clock: Clock,
    source_id: int,
    migration_target_id: int,
    selected_mount_point_ids: Sequence[int],
    mode: str | Mode = "cold",
    sync_interval: int | None = None,
    cutover_at: datetime | None = None,
    pre_cutover: str | None = None,
    post_cutover: str | None = None,
    default_sync_interval: int = 3600,
    actor: int | None = None,
) -> Migration:
    """`actor` is the user who asks (by default the owner, for whom every call
    acts). A warm migration's `sync_interval` is `default_sync_interval` unless given."""
    migration = Migration(
        owner_id,
        source_id,
        migration_target_id,
        tuple(selected_mount_point_ids),
        mode=_mode(mode),
        sync_interval=default_sync_interval if sync_interval is None else sync_interval,
        cutover_at=cutover_at,
        pre_cutover=pre_cutover,
        post_cutover=post_cutover,
    )
    with storage.unit_of_work() as uow:
        _check_migration(uow, migration)
        stored = uow.migrations.add(migration)
        append(uow, [
            event(
                stored,
                EventKind.CREATED,
                clock.now(),
                actor=acting(owner_id, actor),
                **_plan(stored),
            )
        ])
        uow.commit()
    return stored


def get_migration(storage: Storage, owner_id: int, migration_id: int) -> Migration:
    return _read(storage, _migrations, owner_id, migration_id)


def list_migrations(storage: Storage, owner_id: int, query: ListQuery) -> Page[Migration]:
    return _list(storage, _migrations, owner_id, query)


def count_migrations_by_state(storage: Storage) -> dict[MigrationState, int]:
    """How many migrations of all owners are in each state, from one snapshot:
    counts only, for monitoring."""
    with storage.unit_of_work(write=False) as uow:
        return {state: uow.migrations.count_in_state(state) for state in MigrationState}


def update_migration(
    storage: Storage,
    owner_id: int,
    migration_id: int,
    *,
    clock: Clock,
    source_id: int | None = None,
    migration_target_id: int | None = None,
    selected_mount_point_ids: Sequence[int] | None = None,
    mode: str | Mode | None = None,
    sync_interval: int | None = None,
    cutover_at: datetime | None | Keep = KEEP,
    pre_cutover: str | None | Keep = KEEP,
    post_cutover: str | None | Keep = KEEP,
    actor: int | None = None,
) -> Migration:
    """A changed migration is a new plan: it returns to `not_started`. Its
    `updated` event holds the fields that changed, with their new values.
    While it runs, only `cutover_at` may change (`plan_cutover`)."""
    with storage.unit_of_work() as uow:
        current = uow.migrations.get(owner_id, migration_id)
        changed = attrs.evolve(
            current,
            source_id=current.source_id if source_id is None else source_id,
            migration_target_id=current.migration_target_id
            if migration_target_id is None
            else migration_target_id,
            selected_mount_point_ids=current.selected_mount_point_ids
            if selected_mount_point_ids is None
            else tuple(selected_mount_point_ids),
            mode=current.mode if mode is None else _mode(mode),
            sync_interval=current.sync_interval if sync_interval is None else sync_interval,
            cutover_at=current.cutover_at if isinstance(cutover_at, Keep) else cutover_at,
            pre_cutover=current.pre_cutover if isinstance(pre_cutover, Keep) else pre_cutover,
            post_cutover=current.post_cutover if isinstance(post_cutover, Keep) else post_cutover,
        )
        if current.state is MigrationState.RUNNING:
            # An edit of its cutover time alone; any other, even one that
            # changes nothing, is refused as before warm migrations were.
            if isinstance(cutover_at, Keep) or attrs.evolve(changed, cutover_at=current.cutover_at) != current:
                raise running_not_editable(migration_id)
            stored = replan_cutover(uow, current, changed.cutover_at, clock.now(), acting(owner_id, actor))
            uow.commit()
            return stored
        if changed == current:
            return current
        if changed.cutover_at != current.cutover_at and changed == attrs.evolve(current, cutover_at=changed.cutover_at):
            # A planned cutover time alone is no new plan.
            stored = uow.migrations.update(changed)
            uow.commit()
            return stored
        _check_migration(uow, changed)
        reset = changed.replanned()
        stored = uow.migrations.update_if(
            reset, expected=(MigrationState.NOT_STARTED, MigrationState.ERROR, MigrationState.SUCCESS)
        )
        # The mode either way: a cold plan leaves it out of its fields.
        before = _plan(current) | {"mode": current.mode.value}
        after = _plan(stored) | {"mode": stored.mode.value}
        append(uow, [
            event(
                stored,
                EventKind.UPDATED,
                clock.now(),
                actor=acting(owner_id, actor),
                **{field: value for field, value in after.items() if before.get(field) != value},
            )
        ])
        uow.commit()
    return stored


def _mode(value: str | Mode) -> Mode:
    try:
        return Mode(value)
    except ValueError:
        raise InvalidInput.field("mode", "Must be cold or warm.") from None


def replan_cutover(uow: UnitOfWork, current: Migration, when: datetime | None, now: datetime, actor: int) -> Migration:
    """A running warm migration cuts over at `when` (None withdraws the plan),
    written with its `cutover_requested` event, and `queued` when that makes
    it wait for a slot now; the caller commits."""
    planned = current.plan_cutover(when, now)
    stored = uow.migrations.update_if(planned, expected=(MigrationState.RUNNING,))
    events = [event(
        stored, EventKind.CUTOVER_REQUESTED, now, actor=actor, cutover_at=None if when is None else when.isoformat()
    )]
    if stored.waiting_for_a_slot and not current.waiting_for_a_slot:
        events.append(event(stored, EventKind.QUEUED, now, position=uow.migrations.queue_position(stored)))
    append(uow, events)
    return stored


def delete_migration(storage: Storage, owner_id: int, migration_id: int) -> None:
    with storage.unit_of_work() as uow:
        current = uow.migrations.get(owner_id, migration_id)
        if current.state is MigrationState.RUNNING:
            raise Conflict(f"Migration {migration_id} is running and cannot be deleted.")
        if current.wave_id is not None:
            wave = uow.waves.get(owner_id, current.wave_id)
            raise Conflict(
                f"Migration {migration_id} is in wave {wave.id} ({wave.name!r});"
                " take it out of the wave to delete it."
            )
        uow.migrations.delete(owner_id, migration_id)
        uow.commit()
