"""Entities in their wire form. The marshmallow schemas document these shapes
and check what comes in; what goes out is built here directly, because dumping
through a schema costs more than the rest of a read (see docs/benchmarks.md).
A test holds each view equal to its schema's dump."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from migration_core import (
    Credentials,
    CredentialsSummary,
    Event,
    Migration,
    MigrationTarget,
    MountPoint,
    RunState,
    TargetVm,
    Wave,
    WaveCutover,
    WaveRun,
    WaveState,
    Workload,
)
from migration_core.machines import fingerprint

View = dict[str, Any]


def _utc(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat()


def credentials_view(credentials: Credentials | CredentialsSummary) -> View:
    # The password and the key are write-only: they never leave the service.
    return {
        "id": credentials.id,
        "username": credentials.username,
        "domain": credentials.domain,
        "has_private_key": credentials.has_private_key,
    }


def mount_point_view(mount_point: MountPoint) -> View:
    return {"id": mount_point.id, "name": mount_point.name, "size": mount_point.size}


def workload_view(workload: Workload) -> View:
    return {
        "id": workload.id,
        "ip": workload.ip,
        "credentials": workload.credentials_id,
        "storage": list(workload.mount_point_ids),
        "port": workload.port,
        "os": None if workload.os is None else workload.os.value,
        "root": workload.root,
        "host_key": None if workload.host_key is None else fingerprint(workload.host_key),
        "last_check": None
        if (check := workload.last_check) is None
        else {"at": _utc(check.at), "ok": check.ok, "message": check.message},
    }


def target_vm_view(vm: TargetVm | None) -> View | None:
    if vm is None:
        return None
    return {
        "ip": vm.ip,
        "credentials": {"username": vm.credentials.username, "domain": vm.credentials.domain},
        "storage": [{"name": volume.name, "size": volume.size} for volume in vm.storage],
    }


def migration_target_view(target: MigrationTarget) -> View:
    return {
        "id": target.id,
        "cloud_type": target.cloud_type.value,
        "cloud_credentials": target.cloud_credentials_id,
        "target_vm": target_vm_view(target.target_vm),
        "host": target.host_id,
        "root": target.root,
    }


def migration_view(migration: Migration) -> View:
    return {
        "id": migration.id,
        "source": migration.source_id,
        "migration_target": migration.migration_target_id,
        "selected_mount_points": list(migration.selected_mount_point_ids),
        "mode": migration.mode.value,
        "sync_interval": migration.sync_interval,
        "cutover_at": _utc(migration.cutover_at),
        "pre_cutover": migration.pre_cutover,
        "post_cutover": migration.post_cutover,
        "state": migration.state.value,
        "phase": None if migration.phase is None else migration.phase.value,
        "progress": migration.progress,
        "error": migration.error,
        "started_at": _utc(migration.started_at),
        "finished_at": _utc(migration.finished_at),
        "wave": migration.wave_id,
        "readiness": None
        if (readiness := migration.readiness) is None
        else {"at": _utc(readiness.at), "ready": readiness.ready, "failed": list(readiness.failed)},
    }


def run_state_view(state: RunState) -> View:
    return _run_state(state) | _replication_view(state)


def _replication_view(state: RunState) -> View:
    """A warm migration's syncs (SPEC 2.9); nothing for a cold one."""
    warm = state.warm
    if warm is None:
        return {}
    return {
        "syncs": warm.syncs,
        "last_synced_at": _utc(warm.last_synced_at),
        "last_sync_seconds": warm.last_sync_seconds,
        "next_sync_at": _utc(warm.next_sync_at),
        "cutover_at": _utc(warm.cutover_at),
        "last_sync_error": warm.last_sync_error,
    }


def _run_state(state: RunState) -> View:
    return {
        "state": state.state.value,
        "phase": None if state.phase is None else state.phase.value,
        "queue_position": state.queue_position,
        "progress": state.progress,
        "error": state.error,
        "finished": state.finished,
        "bytes_total": state.bytes_total,
        "bytes_copied": state.bytes_copied,
        "eta": _utc(state.eta),
        "volumes": [
            {"mount_point": v.mount_point_id, "name": v.name, "size": v.size, "copied": v.copied, "files": v.files}
            for v in state.volumes
        ],
    }


def wave_cutover_view(outcome: WaveCutover) -> View:
    return {
        "cutting_over": list(outcome.cutting_over),
        "refused": [{"migration": r.migration_id, "detail": r.detail} for r in outcome.refused],
    }


def event_view(event: Event) -> View:
    return {
        "id": event.id,
        "migration": event.migration_id,
        "at": _utc(event.at),
        "kind": event.kind.value,
        "detail": event.detail,
        "actor": event.actor,
    }


def wave_view(wave: Wave) -> View:
    return {"id": wave.id, "name": wave.name, "migrations": list(wave.migration_ids)}


def wave_run_view(outcome: WaveRun) -> View:
    return {
        "started": list(outcome.started),
        "refused": [{"migration": r.migration_id, "detail": r.detail} for r in outcome.refused],
    }


def wave_state_view(state: WaveState) -> View:
    return {
        "counts": dict(state.counts),
        "progress": state.progress,
        "bytes_total": state.bytes_total,
        "bytes_copied": state.bytes_copied,
        "finished": state.finished,
    }
