"""The views build answers directly; the schemas document them. Each view must
give exactly what its schema's dump gives, for any entity."""

from __future__ import annotations

import base64
from datetime import timezone

import attrs
from hypothesis import given
from hypothesis import strategies as st

from entrypoints.http import views
from entrypoints.http.schemas import (
    CredentialsSchema,
    MigrationEventSchema,
    MigrationRunStateSchema,
    MigrationSchema,
    MigrationTargetSchema,
    MountPointSchema,
    WaveRunSchema,
    WaveSchema,
    WaveStateSchema,
    WorkloadSchema,
)
from migration_core import (
    CloudType,
    Credentials,
    Event,
    EventKind,
    Login,
    Migration,
    MigrationState,
    MigrationTarget,
    MountPoint,
    OperatingSystem,
    Refusal,
    RunState,
    TargetVm,
    Volume,
    VolumeState,
    Wave,
    WaveRun,
    WaveState,
    Workload,
)

from ..ssh_keys import keygen

ids = st.integers(1, 2**63 - 1)
text = st.text(min_size=1, max_size=20)
sizes = st.integers(0, 2**63 - 1)
moments = st.none() | st.datetimes(timezones=st.just(timezone.utc))
ips = st.ip_addresses().map(str)
id_lists = st.lists(ids, min_size=1, max_size=5, unique=True)

roots = st.lists(st.text("abc. /-", min_size=1, max_size=6), max_size=3).map(lambda parts: "/" + "/".join(parts))
credentials = st.builds(
    Credentials,
    owner_id=ids,
    username=text,
    password=text,
    domain=st.text(max_size=10),
    private_key=st.sampled_from(["", keygen("views", "-t", "ed25519")]),
    id=ids,
)
def _whole_key(blob_tail: bytes) -> str:
    """An ed25519 public key in OpenSSH's one-line form (its blob names its type)."""
    kind = b"ssh-ed25519"
    blob = len(kind).to_bytes(4, "big") + kind + len(blob_tail).to_bytes(4, "big") + blob_tail
    return "ssh-ed25519 " + base64.b64encode(blob).decode()


# Pins are kept whole and answered as fingerprints.
whole_keys = st.binary(min_size=32, max_size=32).map(_whole_key)
mount_points = st.builds(MountPoint, owner_id=ids, name=text, size=sizes, id=ids)
workloads = st.builds(
    Workload,
    owner_id=ids,
    ip=ips,
    credentials_id=ids,
    mount_point_ids=st.lists(ids, max_size=5, unique=True),
    port=st.integers(1, 65535),
    os=st.none() | st.sampled_from(OperatingSystem),
    root=roots,
    host_key=st.none() | text | whole_keys,
    id=ids,
)
target_vms = st.builds(
    TargetVm,
    ip=ips,
    credentials=st.builds(Login, username=text, password=text, domain=st.text(max_size=10)),
    storage=st.lists(st.builds(Volume, name=text, size=sizes), max_size=4),
)
targets = st.builds(
    MigrationTarget,
    owner_id=ids,
    cloud_type=st.sampled_from(CloudType),
    cloud_credentials_id=ids,
    target_vm=st.none() | target_vms,
    host_id=st.shared(st.none() | ids, key="host"),
    root=st.shared(st.none() | ids, key="host").flatmap(lambda host: st.none() if host is None else roots),
    id=ids,
)
migrations = st.builds(
    Migration,
    owner_id=ids,
    source_id=ids,
    migration_target_id=ids,
    selected_mount_point_ids=id_lists,
    state=st.sampled_from(MigrationState),
    progress=st.integers(0, 100),
    error=st.none() | text,
    started_at=moments,
    finished_at=moments,
    wave_id=st.none() | ids,
    id=ids,
)
waves = st.builds(Wave, owner_id=ids, name=text, migration_ids=st.lists(ids, max_size=5, unique=True), id=ids)


@given(credentials)
def test_credentials_view_is_the_schema_dump_without_the_password_or_key(entity: Credentials) -> None:
    assert views.credentials_view(entity) == CredentialsSchema().dump(entity)
    assert "password" not in views.credentials_view(entity)
    assert "private_key" not in views.credentials_view(entity)


@given(mount_points)
def test_mount_point_view_is_the_schema_dump(entity: MountPoint) -> None:
    assert views.mount_point_view(entity) == MountPointSchema().dump(entity)


@given(workloads)
def test_workload_view_is_the_schema_dump(entity: Workload) -> None:
    assert views.workload_view(entity) == WorkloadSchema().dump(entity)


@given(targets)
def test_migration_target_view_is_the_schema_dump_without_passwords(entity: MigrationTarget) -> None:
    view = views.migration_target_view(entity)
    assert view == MigrationTargetSchema().dump(entity)
    if view["target_vm"] is not None:
        assert "password" not in view["target_vm"]["credentials"]


run_states = st.builds(
    RunState,
    migration_id=ids,
    state=st.sampled_from(MigrationState),
    progress=st.integers(0, 100),
    error=st.none() | text,
    eta=moments,
    volumes=st.lists(
        st.builds(VolumeState, mount_point_id=ids, name=text, size=sizes, copied=sizes), max_size=4
    ).map(tuple),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
events = st.builds(
    Event,
    owner_id=ids,
    migration_id=ids,
    kind=st.sampled_from(EventKind),
    at=st.datetimes(timezones=st.just(timezone.utc)),
    detail=st.dictionaries(text, json_values, max_size=4),
    actor=st.none() | ids,
    id=ids,
)


@given(migrations)
def test_migration_view_is_the_schema_dump(entity: Migration) -> None:
    assert views.migration_view(entity) == MigrationSchema().dump(entity)


@given(waves)
def test_wave_view_is_the_schema_dump(entity: Wave) -> None:
    assert views.wave_view(entity) == WaveSchema().dump(entity)


@given(
    st.builds(WaveRun, started=st.lists(ids).map(tuple), refused=st.lists(st.builds(Refusal, ids, text)).map(tuple)),
    st.builds(
        WaveState,
        counts=st.fixed_dictionaries({s.value: st.integers(0, 10) for s in MigrationState}),
        progress=st.integers(0, 100), bytes_total=sizes, bytes_copied=sizes, finished=st.booleans(),
    ),
)
def test_wave_action_views_are_the_schema_dumps(run: WaveRun, state: WaveState) -> None:
    refused = [{"migration": r.migration_id, "detail": r.detail} for r in run.refused]
    dumped = {"started": run.started, "refused": refused}
    assert views.wave_run_view(run) == WaveRunSchema().dump(dumped)
    assert views.wave_state_view(state) == WaveStateSchema().dump(attrs.asdict(state))


@given(run_states)
def test_run_state_view_is_the_schema_dump(state: RunState) -> None:
    view = views.run_state_view(state)
    assert view == MigrationRunStateSchema().dump(state)
    assert view["bytes_copied"] == sum(volume["copied"] for volume in view["volumes"])


@given(events)
def test_event_view_is_the_schema_dump(event: Event) -> None:
    assert views.event_view(event) == MigrationEventSchema().dump(event)
