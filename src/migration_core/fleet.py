"""A fleet at once (SPEC 3.5): an inventory of rows, one workload a row with
its login, volumes and, optionally, its plan (a target of its own and a
migration, in a wave), imported in one unit of work and exported back.

Each row goes through the same use cases as single calls, so every rule is
the one they check; a bad row is undone alone while the others are still
checked, and when any row is bad nothing is written and every bad row is named.

What a row means:
- rows match workloads by ip (per owner): a new ip creates, a known one
  updates, an identical one changes nothing;
- a column absent from the file keeps what is stored; an empty password
  keeps the stored one (export leaves passwords empty), and so does an
  empty port, os or root (a new workload gets 22, unknown and `/`);
- credentials keep their private key: the file carries none;
- a workload's plan is its latest migration (the highest id), with that
  migration's target; a row without `cloud_type` leaves the plan as it is;
- credentials used by something besides the row's workload or target are
  not changed under it: the row gets credentials of its own;
- a volume the row no longer lists leaves the workload, and is deleted once
  nothing refers to it;
- `wave` names the migration's wave (created when missing; empty: none): the
  row moves its migration there;
- `mode` (`cold` or `warm`) and `sync_interval` plan the migration's kind of
  run (SPEC 2.9); empty keeps what is stored (a new migration: cold, and the
  service's default interval);
- a row that would change anything of a workload whose migration is running
  is refused, with the reason an edit of that migration would give."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs

from .entities import Migration, MigrationState, Mode, MountPoint, Workload, canonical_ip, volume_key
from .errors import Conflict, InvalidInput, NotFound, RowError, RowsRefused, running_not_editable
from .inventory import (
    create_credentials,
    create_migration,
    create_migration_target,
    create_mount_point,
    create_workload,
    delete_mount_point,
    update_credentials,
    update_migration,
    update_migration_target,
    update_mount_point,
    update_workload,
)
from .passes import GaveUp, items_in_one_unit
from .ports import Clock, ListQuery, Repository, Storage, UnitOfWork
from .waves import create_wave, update_wave

E = TypeVar("E")
Progress = Callable[[int, int], None]  # rows done, rows in all

_LOGIN = {"username": "username", "password": "password", "domain": "domain"}
_CLOUD_LOGIN = {"username": "cloud_username", "password": "cloud_password", "domain": "cloud_domain"}
_WORKLOAD = {
    "ip": "ip", "storage": "volumes", "credentials": "username", "port": "port", "os": "os", "root": "root",
}
_TARGET = {"cloud_type": "cloud_type", "cloud_credentials": "cloud_username"}
_MIGRATION = {"selected_mount_points": "select", "mode": "mode", "sync_interval": "sync_interval"}


@attrs.frozen
class Plan:
    """Where a row's workload goes. None: the column is absent (keep)."""

    cloud_type: str
    cloud_username: str | None = None
    cloud_password: str | None = None
    cloud_domain: str | None = None
    select: tuple[str, ...] | None = None  # volume names; None: every volume of the row
    wave: str | None = None  # "": in no wave
    mode: str | None = None  # cold or warm
    sync_interval: int | None = None  # seconds between a warm migration's syncs


@attrs.frozen
class InventoryRow:
    """One workload as a row says it. None: the column is absent (keep)."""

    row: int  # as a spreadsheet numbers it: the header is row 1
    ip: str
    username: str | None = None
    password: str | None = None
    domain: str | None = None
    volumes: tuple[tuple[str, int], ...] | None = None  # (name, size in bytes)
    plan: Plan | None = None
    # None: absent or empty (keep; export gives None for an unknown os).
    port: int | None = None
    os: str | None = None
    root: str | None = None

    @property
    def machine(self) -> dict[str, Any]:
        """The port, os and root the row gives, by field name."""
        given = {"port": self.port, "os": self.os, "root": self.root}
        return {name: value for name, value in given.items() if value is not None}


@attrs.frozen
class ImportReport:
    """Rows by outcome, and the ids of the workloads the import created, in
    row order (none for a dry run, which keeps nothing)."""

    created: int
    updated: int
    unchanged: int
    created_workloads: tuple[int, ...] = ()


class _RowFailed(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


@contextmanager
def _errors_as_column(column: str | None, columns: Mapping[str, str] | None = None) -> Iterator[None]:
    """A refusal of the use cases inside, as the row's column at fault."""
    try:
        yield
    except InvalidInput as error:
        field, messages = next(iter(error.errors.items()))
        raise _RowFailed((columns or {}).get(field, column), " ".join(messages)) from None
    except (Conflict, NotFound) as error:
        raise _RowFailed(column, error.message) from None


def import_inventory(
    storage: Storage,
    clock: Clock,
    owner_id: int,
    rows: Sequence[InventoryRow],
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    default_sync_interval: int = 3600,
) -> ImportReport:
    """Apply every row in one transaction, or none (RowsRefused naming every
    bad row). A dry run checks the same and writes nothing. A new warm
    migration whose row gives no interval gets `default_sync_interval`."""
    repeated = _repeated_ips(rows)

    def apply(uow: UnitOfWork, careful: bool) -> ImportReport:
        return _apply(
            storage, clock, uow, owner_id, rows, list(repeated), progress, careful=careful,
            default_sync_interval=default_sync_interval,
        )

    report = items_in_one_unit(storage, apply, commit=not dry_run)
    # What a dry run made was never kept: its ids name nothing.
    return attrs.evolve(report, created_workloads=()) if dry_run else report


def _apply(
    storage: Storage,
    clock: Clock,
    uow: UnitOfWork,
    owner_id: int,
    rows: Sequence[InventoryRow],
    errors: list[RowError],
    progress: Progress | None,
    *,
    careful: bool,
    default_sync_interval: int,
) -> ImportReport:
    if errors and not careful:
        raise GaveUp
    repeated = {error.row for error in errors}
    outcomes = {"created": 0, "updated": 0, "unchanged": 0}
    created_workloads: list[int] = []
    # Rows only name waves; the waves are written after the rows.
    wave_names = {wave.id: wave.name for wave in _everything(uow.waves, owner_id)}
    waves = _WaveMoves(wave_names)
    within = _Import(storage, clock, uow, owner_id, wave_names, careful, default_sync_interval)
    for done, row in enumerate(rows, start=1):
        if row.row not in repeated:
            try:
                with storage.unit_of_work() as savepoint:
                    outcome, named, workload_id = _apply_row(within, row)
                    savepoint.commit()
            except _RowFailed as failed:
                if not careful:
                    raise
                errors.append(RowError(row.row, failed.field, failed.message))
            else:
                outcomes[outcome] += 1
                if outcome == "created":
                    created_workloads.append(workload_id)
                for migration_id, wave, new in named:
                    waves.want(migration_id, row.row, wave, new=new)
        if progress is not None:
            progress(done, len(rows))
    errors += waves.apply(storage, uow, owner_id)
    if errors and not careful:
        raise GaveUp
    if errors:
        raise RowsRefused(
            f"{len({e.row for e in errors})} row(s) may not be imported; nothing was written.",
            sorted(errors, key=lambda e: e.row),
        )
    return ImportReport(**outcomes, created_workloads=tuple(created_workloads))


def _repeated_ips(rows: Sequence[InventoryRow]) -> list[RowError]:
    first: dict[str, int] = {}
    errors = []
    for row in rows:
        try:
            ip = canonical_ip(row.ip)
        except InvalidInput:
            continue  # reported when the row is applied
        seen = first.setdefault(ip, row.row)
        if seen != row.row:
            errors.append(RowError(row.row, "ip", f"ip {ip} is also on row {seen}."))
    return errors


class _WaveMoves:
    """Waves are written once each, after the rows: the members each row
    names, moved out of their old wave first."""

    def __init__(self, names: Mapping[int, str]) -> None:
        self.names = names  # of the waves as they were before the import
        self.moves: dict[int, tuple[int, str]] = {}  # migration -> (row, wave name)
        self.new: set[int] = set()  # migrations the import made: in no wave yet

    def want(self, migration_id: int, row: int, wave: str, *, new: bool) -> None:
        self.moves[migration_id] = (row, wave)
        if new:
            self.new.add(migration_id)

    def apply(self, storage: Storage, uow: UnitOfWork, owner_id: int) -> list[RowError]:
        leaving: dict[int, list[int]] = {}
        joining: dict[str, list[int]] = {}
        for migration_id, (_row, name) in self.moves.items():
            # Another transaction cannot see a new migration, let alone put it in a wave.
            current = None if migration_id in self.new else uow.migrations.get(owner_id, migration_id).wave_id
            if current is not None and self.names[current] == name:
                continue
            if current is not None:
                leaving.setdefault(current, []).append(migration_id)
            if name:
                joining.setdefault(name, []).append(migration_id)
        errors = []
        for wave_id, gone in leaving.items():
            members = uow.waves.get(owner_id, wave_id).migration_ids
            update_wave(storage, owner_id, wave_id, migration_ids=[m for m in members if m not in gone])
        for name, newcomers in joining.items():
            _, found = uow.waves.find(owner_id, ListQuery(filters={"name": name}, limit=1))
            try:
                with _errors_as_column("wave", {"name": "wave", "migrations": "wave"}):
                    if found:
                        joined = [*found[0].migration_ids, *newcomers]
                        update_wave(storage, owner_id, found[0].id, migration_ids=joined)
                    else:
                        create_wave(storage, owner_id, name=name, migration_ids=newcomers)
            except _RowFailed as failed:
                errors.append(RowError(self.moves[newcomers[0]][0], failed.field, failed.message))
        return errors


@attrs.frozen
class _Import:
    """What every row of one import is applied with."""

    storage: Storage
    clock: Clock
    uow: UnitOfWork
    owner_id: int
    wave_names: Mapping[int, str]  # of the waves as they were when the import began
    careful: bool  # False: no failure may be passed over
    default_sync_interval: int  # a new warm migration's, when its row gives none


class _RowImport:
    """One row being applied: whether it changed anything, and the waves it
    names (written after the rows)."""

    def __init__(self, within: _Import, row: InventoryRow) -> None:
        self.storage, self.clock, self.uow, self.owner_id = within.storage, within.clock, within.uow, within.owner_id
        self.wave_names, self.careful, self.row = within.wave_names, within.careful, row
        self.default_sync_interval = within.default_sync_interval
        self.changed = False
        self.waves: list[tuple[int, str, bool]] = []  # (migration, the wave the row names, new)

    def new_plan(self, plan: Plan, workload: Workload, volumes: Sequence[MountPoint]) -> None:
        """A target and a migration of the workload, as the row's plan says."""
        with _errors_as_column("cloud_username", _CLOUD_LOGIN):
            login = create_credentials(
                self.storage, self.owner_id, username=plan.cloud_username or "",
                password=plan.cloud_password or "", domain=plan.cloud_domain or "",
            )
        with _errors_as_column("cloud_type", _TARGET):
            target = create_migration_target(
                self.storage, self.owner_id, cloud_type=plan.cloud_type, cloud_credentials_id=login.id
            )
        selected = _selection(plan.select, volumes)
        with _errors_as_column("select", _MIGRATION):
            migration = create_migration(
                self.storage, self.owner_id, clock=self.clock, source_id=workload.id,
                migration_target_id=target.id, selected_mount_point_ids=selected,
                mode=plan.mode or "cold", sync_interval=plan.sync_interval,
                default_sync_interval=self.default_sync_interval,
            )
        if plan.wave:
            self.waves.append((migration.id, plan.wave, True))
        self.changed = True


class _NewWorkloadRow(_RowImport):
    """A row of an ip the owner has no workload at: everything is created."""

    def create(self, ip: str) -> int:
        """A workload at `ip`, with its login, volumes and plan: its id."""
        row = self.row
        with _errors_as_column("username", _LOGIN):
            login = create_credentials(
                self.storage, self.owner_id,
                username=row.username or "", password=row.password or "", domain=row.domain or "",
            )
        with _errors_as_column("volumes"):
            volumes = [
                create_mount_point(self.storage, self.owner_id, name=name, size=size)
                for name, size in row.volumes or ()
            ]
        with _errors_as_column("ip", _WORKLOAD):
            workload = create_workload(
                self.storage, self.owner_id, ip=ip, credentials_id=login.id,
                mount_point_ids=[v.id for v in volumes], **row.machine,
            )
        if row.plan is not None:
            self.new_plan(row.plan, workload, volumes)
        return workload.id


class _KnownWorkloadRow(_RowImport):
    """A row of a known workload's ip: what differs is updated."""

    def update(self, workload: Workload, migration: Migration | None) -> None:
        """The workload, its login, volumes and plan changed where the row differs."""
        row = self.row
        login_id = self._login(
            workload.credentials_id, row.username, row.password, row.domain, _LOGIN, "username"
        )
        volumes = [self.uow.mount_points.get(self.owner_id, i) for i in workload.mount_point_ids]
        if row.volumes is not None:
            volumes = self._volumes(volumes, row.volumes)
        ids = tuple(v.id for v in volumes)
        with _errors_as_column("ip", _WORKLOAD):
            # As the workload would store them: "/srv/" is the root "/srv".
            wanted = attrs.evolve(workload, **row.machine)
        machine = {
            name: getattr(wanted, name) for name in row.machine if getattr(wanted, name) != getattr(workload, name)
        }
        if machine or (login_id, ids) != (workload.credentials_id, workload.mount_point_ids):
            with _errors_as_column("volumes", _WORKLOAD):
                update_workload(
                    self.storage, self.owner_id, workload.id, credentials_id=login_id, mount_point_ids=ids,
                    **machine,
                )
            self.changed = True
        if row.plan is not None:
            if migration is None:
                self.new_plan(row.plan, workload, volumes)
            else:
                self._plan(row.plan, migration, volumes)
        for gone in set(workload.mount_point_ids) - set(ids):
            self._drop(gone)

    def _login(
        self,
        current_id: int,
        username: str | None,
        password: str | None,
        domain: str | None,
        columns: Mapping[str, str],
        column: str,
    ) -> int:
        """The credentials the row wants: these, changed in place, or new ones
        when something else uses these."""
        current = self.uow.credentials.get(self.owner_id, current_id)
        values = {
            "username": current.username if username is None else username,
            "password": password or current.password,
            "domain": current.domain if domain is None else domain,
        }
        if values == {"username": current.username, "password": current.password, "domain": current.domain}:
            return current_id
        self.changed = True
        users = len(self.uow.workloads.referrers("credentials_id", current_id)) + len(
            self.uow.migration_targets.referrers("cloud_credentials_id", current_id)
        )
        with _errors_as_column(column, columns):
            if users > 1:
                return create_credentials(
                    self.storage, self.owner_id, **values, private_key=current.private_key
                ).id
            update_credentials(self.storage, self.owner_id, current_id, **values)
        return current_id

    def _volumes(self, current: Sequence[MountPoint], wanted: Sequence[tuple[str, int]]) -> list[MountPoint]:
        """The row's volumes, matched to the workload's by volume name."""
        by_key = {mount_point.key: mount_point for mount_point in current}
        volumes = []
        with _errors_as_column("volumes"):
            for name, size in wanted:
                found = by_key.pop(volume_key(name), None)
                if found is None:
                    found = create_mount_point(self.storage, self.owner_id, name=name, size=size)
                    self.changed = True
                elif (found.name, found.size) != (name, size):
                    found = update_mount_point(self.storage, self.owner_id, found.id, name=name, size=size)
                    self.changed = True
                volumes.append(found)
        return volumes

    def _plan(self, plan: Plan, migration: Migration, volumes: Sequence[MountPoint]) -> None:
        target = self.uow.migration_targets.get(self.owner_id, migration.migration_target_id)
        login_id = self._login(
            target.cloud_credentials_id, plan.cloud_username, plan.cloud_password,
            plan.cloud_domain, _CLOUD_LOGIN, "cloud_username",
        )
        if (plan.cloud_type, login_id) != (target.cloud_type.value, target.cloud_credentials_id):
            with _errors_as_column("cloud_type", _TARGET):
                update_migration_target(
                    self.storage, self.owner_id, target.id,
                    cloud_type=plan.cloud_type, cloud_credentials_id=login_id,
                )
            self.changed = True
        selected = _selection(plan.select, volumes)
        changes: dict[str, Any] = {}
        if tuple(selected) != migration.selected_mount_point_ids:
            changes["selected_mount_point_ids"] = selected
        if plan.mode is not None and plan.mode != migration.mode.value:
            changes["mode"] = plan.mode
        if plan.sync_interval is not None and plan.sync_interval != migration.sync_interval:
            changes["sync_interval"] = plan.sync_interval
        if changes:
            with _errors_as_column("select", _MIGRATION):
                update_migration(self.storage, self.owner_id, migration.id, clock=self.clock, **changes)
            self.changed = True
        if plan.wave is not None:
            current = "" if migration.wave_id is None else self._wave_name(migration.wave_id)
            if plan.wave != current:
                self.waves.append((migration.id, plan.wave, False))
                self.changed = True

    def _wave_name(self, wave_id: int) -> str:
        """A wave's name: those read when the import began, or (a wave another
        import made meanwhile, where storage shows what others commit) read now."""
        name = self.wave_names.get(wave_id)
        return name if name is not None else self.uow.waves.get(self.owner_id, wave_id).name

    def _drop(self, mount_point_id: int) -> None:
        """A volume the row no longer lists: gone, unless something refers to it."""
        try:
            delete_mount_point(self.storage, self.owner_id, mount_point_id)
        except Conflict:
            if not self.careful:
                raise


def _apply_row(within: _Import, row: InventoryRow) -> tuple[str, list[tuple[int, str, bool]], int]:
    """Apply a row: "created", "updated" or "unchanged", the waves it names,
    and its workload's id."""
    uow, owner_id = within.uow, within.owner_id
    with _errors_as_column("ip"):
        ip = canonical_ip(row.ip)
    _, found = uow.workloads.find(owner_id, ListQuery(filters={"ip": ip}, limit=1))
    if not found:
        created = _NewWorkloadRow(within, row)
        workload_id = created.create(ip)
        return "created", created.waves, workload_id
    # Read again as a single entity, which storage may lock: the row rewrites it.
    workload = uow.workloads.get(owner_id, found[0].id)
    _, migrations = uow.migrations.find(owner_id, ListQuery(filters={"source_id": workload.id}, limit=1_000_000))
    known = _KnownWorkloadRow(within, row)
    known.update(workload, migrations[-1] if migrations else None)
    if not known.changed:
        return "unchanged", known.waves, workload.id
    running = [m for m in migrations if m.state is MigrationState.RUNNING]
    if running:
        raise _RowFailed(None, running_not_editable(running[0].id).message)
    return "updated", known.waves, workload.id


def _selection(names: Sequence[str] | None, volumes: Sequence[MountPoint]) -> list[int]:
    if names is None:
        return [volume.id for volume in volumes]
    by_key = {volume.key: volume.id for volume in volumes}
    selected = []
    for name in names:
        if volume_key(name) not in by_key:
            raise _RowFailed("select", f"Volume {name!r} is not among the row's volumes.")
        selected.append(by_key[volume_key(name)])
    return selected


# --- export -------------------------------------------------------------------


def _everything(repository: Repository[E], owner_id: int) -> list[E]:
    _, items = repository.find(owner_id, ListQuery(limit=2**62))
    return items


def export_inventory(storage: Storage, owner_id: int) -> list[InventoryRow]:
    """Every workload with its plan, as rows that import back to no change
    once the passwords (left empty) are filled in, or left empty."""
    with storage.unit_of_work(write=False) as uow:
        workloads = _everything(uow.workloads, owner_id)
        logins = {c.id: c for c in _everything(uow.credentials, owner_id)}
        volumes = {m.id: m for m in _everything(uow.mount_points, owner_id)}
        targets = {t.id: t for t in _everything(uow.migration_targets, owner_id)}
        waves = {w.id: w.name for w in _everything(uow.waves, owner_id)}
        # In id order, so each workload's plan is its latest migration.
        plans = {m.source_id: m for m in _everything(uow.migrations, owner_id)}
    rows = []
    for number, workload in enumerate(workloads, start=2):
        login = logins[workload.credentials_id]
        plan = None
        if (migration := plans.get(workload.id)) is not None:
            target = targets[migration.migration_target_id]
            cloud = logins[target.cloud_credentials_id]
            plan = Plan(
                cloud_type=target.cloud_type.value,
                cloud_username=cloud.username,
                cloud_password="",
                cloud_domain=cloud.domain,
                select=tuple(volumes[i].name for i in migration.selected_mount_point_ids),
                wave="" if migration.wave_id is None else waves[migration.wave_id],
                mode=migration.mode.value,
                # A cold migration's interval means nothing: left empty (kept).
                sync_interval=migration.sync_interval if migration.mode is Mode.WARM else None,
            )
        rows.append(
            InventoryRow(
                row=number,
                ip=workload.ip,
                username=login.username,
                password="",
                domain=login.domain,
                volumes=tuple((volumes[i].name, volumes[i].size) for i in workload.mount_point_ids),
                plan=plan,
                port=workload.port,
                os=None if workload.os is None else workload.os.value,
                root=workload.root,
            )
        )
    return rows
