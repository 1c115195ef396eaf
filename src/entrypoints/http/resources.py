"""The six owned resources: list, create, read, replace, patch, delete, and the
migration and wave actions. One factory builds the six operations of each resource from
its schemas and the core's use cases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from aiohttp import web
from aiohttp_apigami import docs
from marshmallow import Schema

import migration_core as core
from migration_core import ListQuery, NotFound, Page

from . import views
from .answers import json_answer
from .openapi import WRITE_ERRORS, answers
from .requests import BODY, QUERY, USER, call, json_body, query, read, read_as_user, services, write_as_user
from .routes import Route
from .schemas import (
    MAX_ID,
    CredentialsQuerySchema,
    CredentialsReplaceSchema,
    CredentialsSchema,
    CutoverSchema,
    MigrationEventQuerySchema,
    MigrationEventSchema,
    MigrationQuerySchema,
    MigrationRunStateSchema,
    MigrationSchema,
    MigrationTargetQuerySchema,
    MigrationTargetSchema,
    MountPointQuerySchema,
    MountPointSchema,
    WaveCancelSchema,
    WaveCutoverSchema,
    WaveQuerySchema,
    WaveReplaceSchema,
    WaveRunSchema,
    WaveSchema,
    WaveStateSchema,
    WorkloadChangeSchema,
    WorkloadQuerySchema,
    WorkloadReplaceSchema,
    WorkloadSchema,
    answer_form,
    page_schema,
)
from .views import View

ID_PARAMETER = {
    "in": "path",
    "name": "id",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
}


@attrs.frozen
class Resource:
    """One kind of owned object, as the API shows it and as the core handles it."""

    path: str  # e.g. /api/v1/credentials/
    tag: str
    noun: str  # one object, for summaries
    name: str  # PascalCase, for operation ids and the page schema
    schema: type[Schema]
    view: Callable[[Any], View]  # the entity as the schema shows it, built directly
    replace_schema: type[Schema]
    query_schema: type[Schema]
    create: Callable[..., Any]
    get: Callable[[core.Storage, int, int], Any]
    find: Callable[[core.Storage, int, ListQuery], Page[Any]]
    update: Callable[..., Any]
    delete: Callable[[core.Storage, int, int], None]
    # Whether a create, or a replace or patch, can clash with other objects
    # (409); only what the core can refuse is documented.
    create_conflicts: bool = False
    update_conflicts: bool = False
    delete_conflicts: bool = True  # while something refers to it
    # Whether its creates and updates record events: they take the clock and
    # the acting user.
    recorded: bool = False
    # What a PATCH may carry, all optional (by default the create's fields).
    patch_schema: type[Schema] | None = None
    # Settings a create takes from the service (a warm migration's default interval).
    create_settings: Callable[[Any], dict[str, Any]] | None = None


def object_id(request: web.Request) -> int:
    """The `{id}` of the path: the route admits only digits, and an id beyond
    the range of ids is as missing as any other."""
    value = int(request.match_info["id"])
    if not 1 <= value <= MAX_ID:
        raise NotFound("Not found.")
    return value


def _link(request: web.Request, limit: int, offset: int) -> str:
    """This list's URL at another page, keeping its filters and ordering."""
    return str(request.url.update_query(limit=str(limit), offset=str(offset)))


def list_query(request: web.Request) -> ListQuery:
    """The paging, ordering and filters of a list's checked query string."""
    loaded: dict[str, Any] = request[QUERY]
    filters = dict(loaded)
    limit: int = filters.pop("limit")
    offset: int = filters.pop("offset")
    descending = filters.pop("ordering") == "-id"
    return ListQuery(filters=filters, descending=descending, limit=limit, offset=offset)


def page_body(
    request: web.Request, page: Page[Any], view: Callable[[Any], View], query: ListQuery
) -> dict[str, Any]:
    limit, offset = query.limit, query.offset
    following = offset + limit
    return {
        "count": page.count,
        "next": _link(request, limit, following) if following < page.count else None,
        "previous": _link(request, limit, max(0, offset - limit)) if offset > 0 else None,
        "results": [view(item) for item in page.items],
    }


def resource_routes(resource: Resource) -> list[Route]:
    schema = resource.schema()
    answer = answer_form(resource.schema)
    page = page_schema(answer, f"{resource.name}Page")
    item_path = resource.path + "{id:\\d+}/"
    tags = [resource.tag]
    update_conflict = [409] if resource.update_conflicts else []

    @docs(
        tags=tags,
        summary=f"List your {resource.tag}",
        description="Paged (`limit`, at most 1000, and `offset`), filtered by exact"
        " values, ordered by `id` or `-id`.",
        operation_id=f"list{resource.name}",
        responses=answers({200: (page, "One page of the list.")}, 400, 401),
    )
    @query(resource.query_schema())
    async def list_objects(request: web.Request) -> web.Response:
        listed = list_query(request)
        found = await read_as_user(request, resource.find, listed)
        return json_answer(page_body(request, found, resource.view, listed))

    @docs(
        tags=tags,
        summary=f"Create {resource.noun}",
        operation_id=f"create{resource.name}",
        responses=answers(
            {201: (answer, "Created.")}, *WRITE_ERRORS, 401, *([409] if resource.create_conflicts else [])
        ),
    )
    @json_body(schema)
    async def create_object(request: web.Request) -> web.Response:
        created = await write_as_user(request, _create, resource, request)
        return json_answer(resource.view(created), status=201)

    @docs(
        tags=tags,
        summary=f"Read {resource.noun}",
        operation_id=f"get{resource.name}",
        parameters=[ID_PARAMETER],
        responses=answers({200: (answer, "Found.")}, 401, 404),
    )
    async def read_object(request: web.Request) -> web.Response:
        found = await read_as_user(request, resource.get, object_id(request))
        return json_answer(resource.view(found))

    @docs(
        tags=tags,
        summary=f"Replace {resource.noun}: every writable field",
        operation_id=f"replace{resource.name}",
        parameters=[ID_PARAMETER],
        responses=answers({200: (answer, "Replaced.")}, *WRITE_ERRORS, 401, 404, *update_conflict),
    )
    @json_body(resource.replace_schema())
    async def replace_object(request: web.Request) -> web.Response:
        updated = await write_as_user(request, _update, resource, request)
        return json_answer(resource.view(updated))

    @docs(
        tags=tags,
        summary=f"Change some fields of {resource.noun}",
        operation_id=f"patch{resource.name}",
        parameters=[ID_PARAMETER],
        responses=answers({200: (answer, "Changed.")}, *WRITE_ERRORS, 401, 404, *update_conflict),
    )
    @json_body((resource.patch_schema or resource.schema)(partial=True))
    async def patch_object(request: web.Request) -> web.Response:
        updated = await write_as_user(request, _update, resource, request)
        return json_answer(resource.view(updated))

    @docs(
        tags=tags,
        summary=f"Delete {resource.noun}",
        description="Refused (409) while anything still refers to it."
        if resource.delete_conflicts
        else "Never refused: what it holds is released.",
        operation_id=f"delete{resource.name}",
        parameters=[ID_PARAMETER],
        responses=answers({204: (None, "Deleted.")}, 401, 404, *([409] if resource.delete_conflicts else [])),
    )
    async def delete_object(request: web.Request) -> web.Response:
        await write_as_user(request, resource.delete, object_id(request))
        return web.Response(status=204)

    return [
        Route("GET", resource.path, list_objects, user_in_transaction=True),
        Route("POST", resource.path, create_object, user_in_transaction=True),
        Route("GET", item_path, read_object, user_in_transaction=True),
        Route("PUT", item_path, replace_object, user_in_transaction=True),
        Route("PATCH", item_path, patch_object, user_in_transaction=True),
        Route("DELETE", item_path, delete_object, user_in_transaction=True),
    ]


def _recording(resource: Resource, request: web.Request, user_id: int) -> dict[str, Any]:
    if not resource.recorded:
        return {}
    return {"clock": services(request).clock, "actor": user_id}


def _create(storage: core.Storage, user_id: int, resource: Resource, request: web.Request) -> Any:
    settings = {} if resource.create_settings is None else resource.create_settings(services(request))
    return resource.create(
        storage, user_id, **request[BODY], **_recording(resource, request, user_id), **settings
    )


def _update(storage: core.Storage, user_id: int, resource: Resource, request: web.Request) -> Any:
    return resource.update(
        storage, user_id, object_id(request), **request[BODY], **_recording(resource, request, user_id)
    )


RESOURCES = [
    Resource(
        path="/api/v1/credentials/",
        tag="credentials",
        noun="credentials",
        name="Credentials",
        schema=CredentialsSchema,
        view=views.credentials_view,
        replace_schema=CredentialsReplaceSchema,
        query_schema=CredentialsQuerySchema,
        create=core.create_credentials,
        get=core.get_credentials_summary,  # answers never show the password or key
        find=core.list_credentials_summaries,
        update=core.update_credentials,
        delete=core.delete_credentials,
    ),
    Resource(
        path="/api/v1/mount_points/",
        tag="mount points",
        noun="a mount point",
        name="MountPoint",
        schema=MountPointSchema,
        view=views.mount_point_view,
        replace_schema=MountPointSchema,
        query_schema=MountPointQuerySchema,
        create=core.create_mount_point,
        get=core.get_mount_point,
        find=core.list_mount_points,
        update=core.update_mount_point,
        delete=core.delete_mount_point,
    ),
    Resource(
        path="/api/v1/work_loads/",
        tag="workloads",
        noun="a workload",
        name="Workload",
        schema=WorkloadSchema,
        view=views.workload_view,
        replace_schema=WorkloadReplaceSchema,
        query_schema=WorkloadQuerySchema,
        create=core.create_workload,
        get=core.get_workload,
        find=core.list_workloads,
        update=core.update_workload,
        delete=core.delete_workload,
        create_conflicts=True,  # a duplicate ip, a mount point held by another workload
        update_conflicts=True,
        patch_schema=WorkloadChangeSchema,  # may clear the pinned host key
    ),
    Resource(
        path="/api/v1/migration_targets/",
        tag="migration targets",
        noun="a migration target",
        name="MigrationTarget",
        schema=MigrationTargetSchema,
        view=views.migration_target_view,
        replace_schema=MigrationTargetSchema,
        query_schema=MigrationTargetQuerySchema,
        create=core.create_migration_target,
        get=core.get_migration_target,
        find=core.list_migration_targets,
        update=core.update_migration_target,
        delete=core.delete_migration_target,
        update_conflicts=True,  # its host or root, while a run copies into it
    ),
    Resource(
        path="/api/v1/migrations/",
        tag="migrations",
        noun="a migration",
        name="Migration",
        schema=MigrationSchema,
        view=views.migration_view,
        replace_schema=MigrationSchema,
        query_schema=MigrationQuerySchema,
        create=core.create_migration,
        create_settings=lambda found: {"default_sync_interval": found.default_sync_interval},
        get=core.get_migration,
        find=core.list_migrations,
        update=core.update_migration,
        delete=core.delete_migration,
        update_conflicts=True,  # while it runs
        recorded=True,
    ),
    Resource(
        path="/api/v1/waves/",
        tag="waves",
        noun="a wave",
        name="Wave",
        schema=WaveSchema,
        view=views.wave_view,
        replace_schema=WaveReplaceSchema,
        query_schema=WaveQuerySchema,
        create=core.create_wave,
        get=core.get_wave,
        find=core.list_waves,
        update=core.update_wave,
        delete=core.delete_wave,
        create_conflicts=True,  # a name taken, a migration in another wave
        update_conflicts=True,
        delete_conflicts=False,  # its migrations are released
    ),
]


# --- migration actions -------------------------------------------------------

MIGRATION_ACTIONS = "migrations"


@docs(
    tags=[MIGRATION_ACTIONS],
    summary="Run a migration",
    description="From `not_started` or `error` (a retry). Refused (409) while it runs,"
    " once it has succeeded, when the source's system volume (C:\\, or / for a linux source)"
    " is not selected, when the selection is no"
    " longer in the source, or while another migration runs into the same target.",
    operation_id="runMigration",
    parameters=[ID_PARAMETER],
    responses=answers({202: (MigrationSchema, "Started: state `running`.")}, 401, 404, 409),
)
async def run_migration(request: web.Request) -> web.Response:
    found = services(request)
    # The migration as started: the answer says `running` even when a very short
    # copy has already finished in the background.
    user = request[USER].id
    started = await call(
        core.launch_run, found.storage, found.clock, found.runner, user, object_id(request), actor=user
    )
    return json_answer(views.migration_view(started), status=202)


@docs(
    tags=[MIGRATION_ACTIONS],
    summary="Cancel a running migration",
    operation_id="cancelMigration",
    parameters=[ID_PARAMETER],
    responses=answers(
        {200: (MigrationSchema, "Cancelled: state `error`, error `cancelled`.")}, 401, 404, 409
    ),
)
async def cancel_migration(request: web.Request) -> web.Response:
    found = services(request)
    user = request[USER].id
    cancelled = await call(
        core.cancel_run, found.storage, found.clock, found.runner, user, object_id(request), actor=user
    )
    return json_answer(views.migration_view(cancelled))


@docs(
    tags=[MIGRATION_ACTIONS],
    summary="The state of a migration's run, volume by volume",
    description="Each volume's bytes copied, their sum and total, and the estimated end."
    " Volumes are copied one after another in the source's order, at one byte rate.",
    operation_id="getMigrationState",
    parameters=[ID_PARAMETER],
    responses=answers({200: (MigrationRunStateSchema, "Its state.")}, 401, 404),
)
async def migration_state(request: web.Request) -> web.Response:
    state = await read(
        request, core.get_run_state, services(request).storage, request[USER].id, object_id(request)
    )
    return json_answer(views.run_state_view(state))


EVENT_PAGE = page_schema(MigrationEventSchema(), "MigrationEventPage")


@docs(
    tags=[MIGRATION_ACTIONS],
    summary="The history of a migration",
    description="Its events, oldest first (`ordering=-id`: newest first), paged (`limit`, at"
    " most 1000, and `offset`) and filtered by `kind`. Events are never edited, and go when"
    " the migration is deleted.",
    operation_id="listMigrationEvents",
    parameters=[ID_PARAMETER],
    responses=answers({200: (EVENT_PAGE, "One page of its events.")}, 400, 401, 404),
)
@query(MigrationEventQuerySchema())
async def migration_events(request: web.Request) -> web.Response:
    listed = list_query(request)
    found = await read(
        request, core.list_events, services(request).storage, request[USER].id, object_id(request), listed
    )
    return json_answer(page_body(request, found, views.event_view, listed))


# --- wave actions ------------------------------------------------------------

WAVE_ACTIONS = "waves"


@docs(
    tags=[WAVE_ACTIONS],
    summary="Run every migration of a wave that may start",
    description="Each member starts as its own run would (SPEC 2.2); for each one that may"
    " not, `refused` gives the reason its own run would give. Answers at once: the"
    " copies go on in the background.",
    operation_id="runWave",
    parameters=[ID_PARAMETER],
    responses=answers({202: (WaveRunSchema, "Started what could start.")}, 401, 404),
)
async def run_wave(request: web.Request) -> web.Response:
    found = services(request)
    outcome = await call(
        core.run_wave, found.storage, found.clock, found.runner, request[USER].id, object_id(request),
        actor=request[USER].id,
    )
    return json_answer(views.wave_run_view(outcome), status=202)


@docs(
    tags=[WAVE_ACTIONS],
    summary="Cancel the running migrations of a wave",
    description="The others are left as they are.",
    operation_id="cancelWave",
    parameters=[ID_PARAMETER],
    responses=answers({200: (WaveCancelSchema, "What was cancelled.")}, 401, 404),
)
async def cancel_wave(request: web.Request) -> web.Response:
    found = services(request)
    cancelled = await call(
        core.cancel_wave, found.storage, found.clock, found.runner, request[USER].id, object_id(request),
        actor=request[USER].id,
    )
    return json_answer({"cancelled": cancelled})


@docs(
    tags=[WAVE_ACTIONS],
    summary="The state of a wave: its members by state, and its progress by bytes",
    operation_id="getWaveState",
    parameters=[ID_PARAMETER],
    responses=answers({200: (WaveStateSchema, "Its state.")}, 401, 404),
)
async def wave_state(request: web.Request) -> web.Response:
    state = await call(core.wave_state, services(request).storage, request[USER].id, object_id(request))
    return json_answer(views.wave_state_view(state))


@docs(
    tags=[MIGRATION_ACTIONS],
    summary="Sync a running warm migration now",
    description="Queues a sync (SPEC 2.9): phase `queued` until an instance has a copy slot, then"
    " `syncing`. Refused (409) when it is not a running warm migration, or when a sync or its"
    " cutover is under way or queued.",
    operation_id="syncMigration",
    parameters=[ID_PARAMETER],
    responses=answers({202: (MigrationSchema, "The sync is queued.")}, 401, 404, 409),
)
async def sync_migration(request: web.Request) -> web.Response:
    found = services(request)
    user = request[USER].id
    queued = await call(
        core.request_sync, found.storage, found.clock, found.runner, user, object_id(request), actor=user
    )
    return json_answer(views.migration_view(queued), status=202)


@docs(
    tags=[MIGRATION_ACTIONS],
    summary="Cut a running warm migration over, now or at a time",
    description="`{}`: now; `{\"at\": TIME}`: at that time (ISO 8601; it sets `cutover_at`, which a"
    " PATCH of `cutover_at: null` withdraws). The cutover waits for a sync under way, runs"
    " `pre_cutover` on the source, makes the final sync (nothing may change), swaps it into place,"
    " runs `post_cutover` on the host and succeeds as a cold run does. Refused (409) when it is not"
    " a running warm migration or is already cutting over.",
    operation_id="cutoverMigration",
    parameters=[ID_PARAMETER],
    responses=answers({202: (MigrationSchema, "Cutting over, or planned.")}, *WRITE_ERRORS, 401, 404, 409),
)
@json_body(CutoverSchema())
async def cutover_migration(request: web.Request) -> web.Response:
    found = services(request)
    user = request[USER].id
    planned = await call(
        core.plan_cutover, found.storage, found.clock, found.runner, user, object_id(request),
        request[BODY].get("at"), actor=user,
    )
    return json_answer(views.migration_view(planned), status=202)


@docs(
    tags=[WAVE_ACTIONS],
    summary="Cut over the running warm migrations of a wave, now or at a time",
    description="Each running warm member cuts over as its own cutover would; the others are refused"
    " with the reason.",
    operation_id="cutoverWave",
    parameters=[ID_PARAMETER],
    responses=answers({202: (WaveCutoverSchema, "What cuts over, and what was refused.")}, *WRITE_ERRORS, 401, 404),
)
@json_body(CutoverSchema())
async def cutover_wave(request: web.Request) -> web.Response:
    found = services(request)
    outcome = await call(
        core.cutover_wave, found.storage, found.clock, found.runner, request[USER].id, object_id(request),
        request[BODY].get("at"), actor=request[USER].id,
    )
    return json_answer(views.wave_cutover_view(outcome), status=202)


# Made once, as the other modules' routes are: every app of the process
# shares the handlers (each is a function of its request alone).
ROUTES = [route for resource in RESOURCES for route in resource_routes(resource)] + [
    Route("POST", "/api/v1/migrations/{id:\\d+}/run/", run_migration),
    Route("POST", "/api/v1/migrations/{id:\\d+}/cancel/", cancel_migration),
    Route("GET", "/api/v1/migrations/{id:\\d+}/state/", migration_state),
    Route("GET", "/api/v1/migrations/{id:\\d+}/events/", migration_events),
    Route("POST", "/api/v1/waves/{id:\\d+}/run/", run_wave),
    Route("POST", "/api/v1/waves/{id:\\d+}/cancel/", cancel_wave),
    Route("POST", "/api/v1/waves/{id:\\d+}/cutover/", cutover_wave),
    Route("POST", "/api/v1/migrations/{id:\\d+}/sync/", sync_migration),
    Route("POST", "/api/v1/migrations/{id:\\d+}/cutover/", cutover_migration),
    Route("GET", "/api/v1/waves/{id:\\d+}/state/", wave_state),
]
