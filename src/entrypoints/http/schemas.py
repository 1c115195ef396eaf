"""The shapes on the wire: marshmallow schemas for bodies, queries and answers.

They live at the HTTP edge only. Loading a body yields the core's keyword
arguments (a wire name such as `credentials` loads as `credentials_id` through
`attribute=`), and dumping an entity yields its wire form. The rules of the
domain stay in the core; these schemas check types and bounds, and document them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

from marshmallow import RAISE, Schema, fields, pre_load, validate

from migration_core import CloudType, EventKind, MigrationState, Mode, OperatingSystem, Phase
from migration_core.machines import fingerprint

MAX_ID = 2**63 - 1
MAX_SIZE = 2**63 - 1
NAME_MAX = 255
PASSWORD_MAX = 1024
USERNAME_MAX = 150
IP_MAX = 45  # the longest textual IPv6 address (with an embedded IPv4 part)
PRIVATE_KEY_MAX = 16_384  # an RSA key of 8192 bits, in PEM, is about 6.5 KB
ROOT_MAX = 4096  # Linux's PATH_MAX
PORT_MAX = 65535
TOKEN_MAX = 4096
LIST_MAX = 1000
WAVE_MAX = 20_000  # as many migrations as one import brings in
LIMIT_DEFAULT = 100
LIMIT_MAX = 1000

CLOUD_TYPES = [t.value for t in CloudType]
STATES = [s.value for s in MigrationState]
EVENT_KINDS = [k.value for k in EventKind]


def Id(*, strict: bool = True, **kwargs: Any) -> fields.Integer:
    """An object id: a JSON integer in a body, digits in a query string."""
    return fields.Integer(strict=strict, validate=validate.Range(1, MAX_ID), **kwargs)


def Text(*, max_length: int = NAME_MAX, min_length: int | None = None, **kwargs: Any) -> fields.String:
    return fields.String(validate=validate.Length(min=min_length, max=max_length), **kwargs)


class UtcDateTime(fields.DateTime):
    """ISO 8601 in UTC, with its offset."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return aware.astimezone(timezone.utc).isoformat()

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        """A time without an offset is taken as UTC."""
        moment = super()._deserialize(value, attr, data, **kwargs)
        assert isinstance(moment, datetime)
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class Body(Schema):
    """A request body: unknown fields are an error, read-only ones are ignored."""

    class Meta:
        unknown = RAISE

    @pre_load
    def _ignore_read_only(self, data: Any, **_kwargs: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        read_only = {field.data_key or name for name, field in self.fields.items() if field.dump_only}
        return {key: value for key, value in data.items() if key not in read_only}


# --- errors ------------------------------------------------------------------


class ErrorSchema(Schema):
    detail = fields.String(required=True, metadata={"example": "Not found."})


class ValidationErrorSchema(Schema):
    detail = fields.String(required=True, metadata={"example": "Invalid input."})
    errors = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={
            "description": "Messages per field; for a list field they name the offending item.",
            "example": {"size": ["Not a valid integer."]},
        },
    )


def flatten_messages(messages: Mapping[str, Any]) -> dict[str, list[str]]:
    """marshmallow's nested messages ({"storage": {0: [...]}}) as lists of
    strings per field, each naming its item."""
    return {str(field): list(_lines(value, "")) for field, value in messages.items()}


def _lines(value: Any, prefix: str) -> Iterator[str]:
    if isinstance(value, str):
        yield prefix + value
    elif isinstance(value, Mapping):
        for key, inner in value.items():
            label = f"item {key}" if isinstance(key, int) else str(key)
            yield from _lines(inner, f"{prefix}{label}: ")
    else:
        for inner in value:
            yield from _lines(inner, prefix)


# --- accounts ----------------------------------------------------------------


class RegisterSchema(Body):
    username = Text(
        required=True,
        max_length=USERNAME_MAX,
        metadata={"description": "1 to 150 letters, digits and @ . + - _", "example": "alice"},
    )
    password = Text(
        required=True,
        load_only=True,
        max_length=PASSWORD_MAX,
        metadata={"description": "At least 8 characters.", "example": "correct horse battery"},
    )


class UserSchema(Schema):
    id = Id(dump_only=True)
    username = fields.String(dump_only=True)


class LoginSchema(Body):
    username = Text(required=True, max_length=USERNAME_MAX, metadata={"example": "alice"})
    password = Text(
        required=True, load_only=True, max_length=PASSWORD_MAX,
        metadata={"example": "correct horse battery"},
    )


class TokenPairSchema(Schema):
    access = fields.String(dump_only=True, metadata={"description": "Send as `Authorization: Bearer <access>`."})
    refresh = fields.String(dump_only=True, metadata={"description": "Trade for a new access token."})


class RefreshSchema(Body):
    refresh = Text(required=True, max_length=TOKEN_MAX)


class AccessTokenSchema(Schema):
    access = fields.String(dump_only=True)


class HealthSchema(Schema):
    status = fields.String(dump_only=True, metadata={"example": "ok"})


# --- resources ---------------------------------------------------------------


_PASSWORD = "Write-only: stored encrypted, never returned. Required unless `private_key` is given."
_PRIVATE_KEY = (
    "Write-only: an OpenSSH (`-----BEGIN OPENSSH PRIVATE KEY-----`) or PEM (RSA, EC, DSA,"
    " PKCS#8) private key, unencrypted; checked to parse, stored encrypted, never returned."
    " Kept when absent; \"\" removes it."
)


class CredentialsSchema(Body):
    id = Id(dump_only=True)
    username = Text(required=True, min_length=1, metadata={"example": "administrator"})
    password = Text(
        max_length=PASSWORD_MAX,
        load_only=True,
        metadata={"description": _PASSWORD, "example": "s3cret!"},
    )
    domain = Text(load_default="", metadata={"example": "CORP"})
    private_key = Text(max_length=PRIVATE_KEY_MAX, load_only=True, metadata={"description": _PRIVATE_KEY})
    has_private_key = fields.Boolean(
        dump_only=True, metadata={"description": "Whether a private key is stored (the key itself never is shown)."}
    )


class CredentialsReplaceSchema(CredentialsSchema):
    """A replacement states the password it keeps: left out, the login has
    none, which is allowed only with a private key (given, or kept)."""

    password = Text(
        load_default="",
        max_length=PASSWORD_MAX,
        load_only=True,
        metadata={"description": _PASSWORD + " Left out of a PUT: no password.", "example": "s3cret!"},
    )


class MountPointSchema(Body):
    id = Id(dump_only=True)
    name = Text(required=True, min_length=1, metadata={"example": "C:\\"})
    size = fields.Integer(
        strict=True,
        required=True,
        validate=validate.Range(0, MAX_SIZE),
        metadata={"description": "Bytes.", "example": 107374182400},
    )


def _ids_list(**kwargs: Any) -> fields.List:
    return fields.List(Id(), validate=validate.Length(max=LIST_MAX), **kwargs)


_HOST_KEY = (
    "The SHA-256 fingerprint of the SSH host key pinned at the first contact with the machine"
    " (null until then); the service keeps the whole key. Read-only but for one change: null"
    " clears it, and the next contact pins the key it meets."
)


class LastCheckSchema(Schema):
    at = UtcDateTime(dump_only=True)
    ok = fields.Boolean(dump_only=True)
    message = fields.String(dump_only=True)


class ReadinessSummarySchema(Schema):
    at = UtcDateTime(dump_only=True)
    ready = fields.Boolean(dump_only=True)
    failed = fields.List(
        fields.String(), dump_only=True, metadata={"description": "The names of the checks that failed, in order."}
    )


class WorkloadSchema(Body):
    id = Id(dump_only=True)
    ip = Text(
        required=True,
        max_length=IP_MAX,
        metadata={"description": "IPv4 or IPv6; set on create, never changed.", "example": "10.0.0.5"},
    )
    credentials = Id(required=True, attribute="credentials_id", metadata={"description": "Credentials id."})
    storage = _ids_list(
        load_default=list,
        attribute="mount_point_ids",
        metadata={"description": "Mount point ids, each in one workload at most."},
    )
    port = fields.Integer(
        strict=True,
        validate=validate.Range(1, PORT_MAX),
        metadata={"description": "The machine's SSH port; 22 by default, kept when absent.", "example": 22},
    )
    os = fields.Enum(
        OperatingSystem,
        by_value=True,
        allow_none=True,
        metadata={
            "description": "windows, linux or null (unknown; a check sets it when null). A linux"
            " source's system volume is /, any other's C:\\. Kept when absent."
        },
    )
    root = Text(
        max_length=ROOT_MAX,
        metadata={
            "description": "An absolute POSIX path, / by default (kept when absent), where the machine's"
            " tree is found once logged in; stored normalised (no //, no trailing /).",
            "example": "/",
        },
    )
    host_key = fields.Function(
        lambda workload: None if workload.host_key is None else fingerprint(workload.host_key),
        dump_only=True,
        allow_none=True,
        metadata={"description": _HOST_KEY, "type": "string"},
    )
    last_check = fields.Nested(
        LastCheckSchema,
        dump_only=True,
        allow_none=True,
        metadata={
            "description": "The last time the service reached the machine (a check, a discovery, a"
            " readiness check or a copy's login): when, whether all was well, and what it found or what"
            " failed. Null: never."
        },
    )


class WorkloadChangeSchema(WorkloadSchema):
    """A replacement or a patch may clear the pinned host key (null)."""

    host_key = Text(allow_none=True, metadata={"description": _HOST_KEY})  # type: ignore[assignment]


class WorkloadReplaceSchema(WorkloadChangeSchema):
    """A workload's ip is set on create: a replacement may repeat it, or leave it
    out. Its storage is required like every other writable field of a PUT: left
    out, it would silently empty the workload."""

    ip = Text(
        max_length=IP_MAX,
        metadata={"description": "Optional; when given it must equal the current ip."},
    )
    storage = _ids_list(
        required=True,
        attribute="mount_point_ids",
        metadata={"description": "Mount point ids, each in one workload at most; [] for none."},
    )


class LoginOutSchema(Schema):
    username = fields.String(dump_only=True)
    domain = fields.String(dump_only=True)


class VolumeSchema(Schema):
    name = fields.String(dump_only=True)
    size = fields.Integer(dump_only=True)


class TargetVmSchema(Schema):
    ip = fields.String(dump_only=True)
    credentials = fields.Nested(LoginOutSchema, dump_only=True)
    storage = fields.List(fields.Nested(VolumeSchema), dump_only=True)


class MigrationTargetSchema(Body):
    id = Id(dump_only=True)
    cloud_type = fields.Enum(
        CloudType, by_value=True, required=True, metadata={"example": "aws"}
    )
    cloud_credentials = Id(
        required=True, attribute="cloud_credentials_id", metadata={"description": "Credentials id."}
    )
    target_vm = fields.Nested(
        TargetVmSchema,
        dump_only=True,
        allow_none=True,
        metadata={"description": "null until a migration into this target succeeds."},
    )
    host = Id(
        allow_none=True,
        attribute="host_id",
        metadata={
            "description": "The workload (id) that receives the copy, or null: runs into a target"
            " without a host are simulated. Kept when absent; null takes its root away too."
        },
    )
    root = Text(
        max_length=ROOT_MAX,
        allow_none=True,
        metadata={
            "description": "Required with a host, refused without one: the absolute path on the host"
            " under which the volumes land (/ allowed, never a default). Kept when absent.",
            "example": "/srv/landing",
        },
    )


_PHASE = (
    "Where a running migration is: `queued` (a real copy or a sync waiting for a copy slot, SPEC"
    " 2.10), `copying` (a cold run), `syncing` or `in_sync` (a warm one during and between syncs),"
    " `cutting_over`; null when not running."
)


class MigrationSchema(Body):
    id = Id(dump_only=True)
    source = Id(required=True, attribute="source_id", metadata={"description": "Workload id."})
    migration_target = Id(
        required=True, attribute="migration_target_id", metadata={"description": "Migration target id."}
    )
    selected_mount_points = fields.List(
        Id(),
        required=True,
        validate=validate.Length(min=1, max=LIST_MAX),
        attribute="selected_mount_point_ids",
        metadata={
            "description": "Mount point ids of the source; its system volume (C:\\, or / for a linux"
            " source) must be among them to run."
        },
    )
    mode = fields.Enum(
        Mode,
        by_value=True,
        metadata={
            "description": "`cold` (default): one copy; `warm`: the copy is kept in sync while the source"
            " runs, then cut over (SPEC 2.9).",
        },
    )
    sync_interval = fields.Integer(
        validate=validate.Range(60, 604800),
        metadata={
            "description": "Seconds between a warm migration's syncs, 60 to 604800 (default"
            " MIGRATION_SYNC_INTERVAL); fixed while it runs."
        },
    )
    cutover_at = UtcDateTime(
        allow_none=True,
        metadata={
            "description": "When a running warm migration cuts over by itself; null: not planned."
            " The one field that may change while it runs (null withdraws the plan).",
            "maxLength": 64,
        },
    )
    pre_cutover = fields.String(
        allow_none=True,
        validate=validate.Length(1, 4096),
        metadata={
            "description": "A shell command run on the source (`sh -c`) before the final sync, to quiesce"
            " it; a non-zero exit fails the cutover. Null: none."
        },
    )
    post_cutover = fields.String(
        allow_none=True,
        validate=validate.Length(1, 4096),
        metadata={"description": "A shell command run on the host after the cutover's swap. Null: none."},
    )
    state = fields.Enum(MigrationState, by_value=True, dump_only=True)
    phase = fields.Enum(Phase, by_value=True, dump_only=True, allow_none=True, metadata={"description": _PHASE})
    progress = fields.Integer(dump_only=True, metadata={"description": "0 to 100."})
    error = fields.String(dump_only=True, allow_none=True)
    started_at = UtcDateTime(dump_only=True, allow_none=True)
    finished_at = UtcDateTime(dump_only=True, allow_none=True)
    wave = Id(
        dump_only=True,
        allow_none=True,
        attribute="wave_id",
        metadata={"description": "The wave holding it (set through the wave), or null."},
    )
    readiness = fields.Nested(
        ReadinessSummarySchema,
        dump_only=True,
        allow_none=True,
        metadata={"description": "The last readiness check (`preflight`): when, and which checks failed. Null: never."},
    )


class VolumeCopySchema(Schema):
    mount_point = Id(dump_only=True, attribute="mount_point_id", metadata={"description": "Mount point id."})
    name = fields.String(dump_only=True)
    size = fields.Integer(dump_only=True, metadata={"description": "Bytes."})
    copied = fields.Integer(
        dump_only=True,
        metadata={
            "description": "Bytes copied so far, 0 to size. The volumes are copied one after"
            " another in the source's order; an empty volume shows 0 (its `volume_copied`"
            " event says when the copy passed it)."
        },
    )
    files = fields.Integer(
        dump_only=True,
        allow_none=True,
        metadata={
            "description": "Of the volume a real run is copying, the files that have passed so far;"
            " null for the others (a copied volume's `volume_copied` event says its files) and"
            " for a simulated copy."
        },
    )


class MigrationRunStateSchema(Schema):
    """The answer of `/state/`: the state, and what the run has copied."""

    state = fields.Enum(MigrationState, by_value=True, dump_only=True)
    phase = fields.Enum(Phase, by_value=True, dump_only=True, allow_none=True, metadata={"description": _PHASE})
    # A warm migration's (SPEC 2.9); absent for a cold one.
    syncs = fields.Integer(
        dump_only=True, attribute="warm.syncs", metadata={"description": "A warm migration's verified syncs so far."}
    )
    last_synced_at = UtcDateTime(dump_only=True, allow_none=True, attribute="warm.last_synced_at")
    last_sync_seconds = fields.Float(
        dump_only=True,
        allow_none=True,
        attribute="warm.last_sync_seconds",
        metadata={"description": "How long the last sync took: the estimate of the cutover's downtime."},
    )
    next_sync_at = UtcDateTime(dump_only=True, allow_none=True, attribute="warm.next_sync_at")
    cutover_at = UtcDateTime(dump_only=True, allow_none=True, attribute="warm.cutover_at")
    last_sync_error = fields.String(dump_only=True, allow_none=True, attribute="warm.last_sync_error")
    queue_position = fields.Integer(
        dump_only=True,
        allow_none=True,
        metadata={
            "description": "While queued, the copy's place in the queue that every instance serves (1 is"
            " next); null otherwise."
        },
    )
    progress = fields.Integer(
        dump_only=True,
        metadata={"description": "floor(100 * bytes_copied / bytes_total): at most 99 until success."},
    )
    error = fields.String(dump_only=True, allow_none=True)
    finished = fields.Boolean(dump_only=True, metadata={"description": "state is success or error."})
    bytes_total = fields.Integer(dump_only=True, metadata={"description": "Bytes of the volumes the run copies."})
    bytes_copied = fields.Integer(dump_only=True, metadata={"description": "The sum of the volumes' `copied`."})
    eta = UtcDateTime(
        dump_only=True,
        allow_none=True,
        metadata={"description": "The estimated end, from the rate seen so far; null when not running."},
    )
    volumes = fields.List(
        fields.Nested(VolumeCopySchema),
        dump_only=True,
        metadata={
            "description": "The run's volumes in the source's order (before a run, or after an"
            " edit, the selected volumes as they are now). After an error, what was copied"
            " when it stopped, as last recorded (a percent or a volume behind at most)."
        },
    )


class MigrationEventSchema(Schema):
    """One step in a migration's life, as the history and the live stream show it."""

    id = Id(dump_only=True, metadata={"description": "Events are ordered by id."})
    migration = Id(dump_only=True, attribute="migration_id", metadata={"description": "Migration id."})
    at = UtcDateTime(dump_only=True, metadata={"description": "When it happened."})
    kind = fields.Enum(EventKind, by_value=True, dump_only=True)
    detail = fields.Dict(
        keys=fields.String(),
        dump_only=True,
        metadata={
            "description": "By kind: created and updated, the plan (`source`, `migration_target`,"
            " `selected_mount_points`; for updated, the fields that changed); started, `instance`,"
            " `volumes` and `bytes_total`; volume_copied, `mount_point`, `name` and `size`;"
            " succeeded, `migration_target`; failed, `reason`; interrupted, `instance` (the"
            " service instance that carried the run); run_requested and cancelled, nothing.",
            "example": {"mount_point": 1, "name": "C:\\", "size": 107374182400},
        },
    )
    actor = fields.Integer(
        dump_only=True,
        allow_none=True,
        metadata={"description": "The user who asked for it; null when the service took the step."},
    )


_WAVE_MEMBERS = (
    "Migration ids, in order. Setting it moves these migrations into the wave and takes out"
    " those no longer listed; a migration in another wave is refused (409)."
)


class WaveSchema(Body):
    id = Id(dump_only=True)
    name = Text(required=True, min_length=1, metadata={"description": "Unique among your waves.", "example": "wave 1"})
    migrations = fields.List(
        Id(),
        load_default=list,
        validate=validate.Length(max=WAVE_MAX),
        attribute="migration_ids",
        metadata={"description": _WAVE_MEMBERS},
    )


class WaveReplaceSchema(WaveSchema):
    """Its migrations are required like every other writable field of a PUT:
    left out, they would silently empty the wave."""

    migrations = fields.List(
        Id(),
        required=True,
        validate=validate.Length(max=WAVE_MAX),
        attribute="migration_ids",
        metadata={"description": _WAVE_MEMBERS},
    )


class WaveRefusalSchema(Schema):
    migration = Id(dump_only=True)
    detail = fields.String(dump_only=True, metadata={"description": "Why its own run would be refused."})


class WaveRunSchema(Schema):
    started = fields.List(Id(), dump_only=True)
    refused = fields.List(fields.Nested(WaveRefusalSchema), dump_only=True)


class CutoverSchema(Body):
    """The body of a cutover: `{}` (now) or `{"at": TIME}`."""

    at = UtcDateTime(metadata={"description": "When to cut over (ISO 8601); absent: now.", "maxLength": 64})


class WaveCutoverSchema(Schema):
    cutting_over = fields.List(Id(), dump_only=True)
    refused = fields.List(fields.Nested(WaveRefusalSchema), dump_only=True)


class WaveCancelSchema(Schema):
    cancelled = fields.List(Id(), dump_only=True)


class WaveCountsSchema(Schema):
    not_started = fields.Integer(dump_only=True)
    running = fields.Integer(dump_only=True)
    error = fields.Integer(dump_only=True)
    success = fields.Integer(dump_only=True)


class WaveStateSchema(Schema):
    counts = fields.Nested(WaveCountsSchema, dump_only=True, metadata={"description": "Members by state."})
    progress = fields.Integer(
        dump_only=True,
        metadata={"description": "0 to 100, weighted by the members' selected bytes; 100 once all succeeded."},
    )
    bytes_total = fields.Integer(dump_only=True)
    bytes_copied = fields.Integer(dump_only=True)
    finished = fields.Boolean(dump_only=True, metadata={"description": "Every member is in success or error."})


# --- inventory -----------------------------------------------------------------


class ImportQuerySchema(Body):
    dry_run = fields.Boolean(
        load_default=False,
        metadata={"description": "Check every row and answer as an import would, writing nothing."},
    )


class ImportReportSchema(Schema):
    created = fields.Integer(dump_only=True, metadata={"description": "Rows whose ip was new."})
    updated = fields.Integer(dump_only=True, metadata={"description": "Rows that changed what was stored."})
    unchanged = fields.Integer(dump_only=True, metadata={"description": "Rows identical to what was stored."})
    created_workloads = fields.List(
        Id(),
        dump_only=True,
        metadata={
            "description": "The ids of the workloads the import created, in row order (to discover their"
            " volumes next: POST /api/v1/inventory/discover/); [] for a dry run."
        },
    )


class RowErrorSchema(Schema):
    row = fields.Integer(dump_only=True, metadata={"description": "As a spreadsheet numbers it: the header is row 1."})
    field = fields.String(
        dump_only=True, allow_none=True, metadata={"description": "The column at fault; null: the whole row."}
    )
    message = fields.String(dump_only=True)


class RowsRefusedSchema(Schema):
    detail = fields.String(required=True)
    rows = fields.List(
        fields.Nested(RowErrorSchema),
        metadata={"description": "Every bad row of a refused file (empty when the file itself cannot be read)."},
    )
    errors = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "A bad query parameter, instead of `rows`: messages per parameter."},
    )


# --- lists -------------------------------------------------------------------


class ListQuerySchema(Body):
    """Paging and ordering; each resource adds its exact-value filters."""

    limit = fields.Integer(load_default=LIMIT_DEFAULT, validate=validate.Range(1, LIMIT_MAX))
    offset = fields.Integer(load_default=0, validate=validate.Range(0, MAX_ID))
    ordering = fields.String(load_default="id", validate=validate.OneOf(["id", "-id"]))


class CredentialsQuerySchema(ListQuerySchema):
    username = Text()
    domain = Text()


class MountPointQuerySchema(ListQuerySchema):
    name = Text()


class WorkloadQuerySchema(ListQuerySchema):
    ip = Text(max_length=IP_MAX)


class MigrationTargetQuerySchema(ListQuerySchema):
    cloud_type = fields.String(validate=validate.OneOf(CLOUD_TYPES))


class MigrationEventQuerySchema(ListQuerySchema):
    kind = fields.String(validate=validate.OneOf(EVENT_KINDS))


class MigrationQuerySchema(ListQuerySchema):
    state = fields.String(validate=validate.OneOf(STATES))
    source = Id(strict=False, attribute="source_id")
    migration_target = Id(strict=False, attribute="migration_target_id")
    wave = Id(strict=False, attribute="wave_id")


class WaveQuerySchema(ListQuerySchema):
    name = Text()


def answer_form(schema: type[Schema]) -> Schema:
    """`schema` as answers show it: without its write-only fields. Documented
    apart (see openapi.schema_name), since client generators expect every
    required field of a schema in the answers that use it."""
    full = schema()
    write_only = set(full.fields) - set(full.dump_fields)
    return schema(exclude=sorted(write_only)) if write_only else full


def page_schema(item: Schema, name: str) -> type[Schema]:
    """The answer of a list: `{count, next, previous, results}`."""
    return Schema.from_dict(
        {
            "count": fields.Integer(required=True),
            "next": fields.Url(allow_none=True, required=True),
            "previous": fields.Url(allow_none=True, required=True),
            "results": fields.List(fields.Nested(item), required=True),
        },
        name=name,
    )
