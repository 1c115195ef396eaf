"""The machine actions (SPEC 2.7, 2.11, 3.2): check a workload, discover its
volumes or many workloads' at once, and check whether a migration or a whole
wave is ready. Each answers 200 in the time the machines take; a machine
that cannot be reached is `ok: false` (or a failed check) with the reason,
not an error status."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp_apigami import docs
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

import migration_core as core
from migration_core import CheckReport, DiscoveryReport, OperatingSystem
from migration_core.machines import COPY_TOOLS
from migration_core.readiness import (
    Check,
    MigrationReadiness,
    check_readiness,
    check_wave_readiness,
    discover_workloads,
    wave_sources,
)

from .answers import json_answer
from .openapi import answers
from .requests import BODY, QUERY, USER, call, json_body, query, services
from .resources import ID_PARAMETER, object_id
from .routes import Route
from .schemas import LIST_MAX, Body, Id
from .views import View

TAG = "work_loads"


class ToolsSchema(Schema):
    tar = fields.Boolean(dump_only=True)
    sha256sum = fields.Boolean(dump_only=True)


class CheckSchema(Schema):
    ok = fields.Boolean(
        dump_only=True, metadata={"description": "Logged in, and every tool a real copy needs is there."}
    )
    message = fields.String(dump_only=True, metadata={"description": "What happened, or what failed, in words."})
    os = fields.Enum(OperatingSystem, by_value=True, dump_only=True, allow_none=True)
    hostname = fields.String(dump_only=True, allow_none=True)
    kernel = fields.String(dump_only=True, allow_none=True)
    tools = fields.Nested(ToolsSchema, dump_only=True)
    host_key = fields.String(
        dump_only=True,
        allow_none=True,
        metadata={"description": "The SHA-256 fingerprint of the host key met (pinned whole at first contact)."},
    )


class VolumeFoundSchema(Schema):
    name = fields.String(dump_only=True)
    size = fields.Integer(dump_only=True, metadata={"description": "Used bytes of the filesystem."})


class VolumeResizedSchema(VolumeFoundSchema):
    was = fields.Integer(dump_only=True, metadata={"description": "The size stored before."})


class DiscoverySchema(Schema):
    ok = fields.Boolean(dump_only=True)
    message = fields.String(dump_only=True)
    added = fields.List(fields.Nested(VolumeFoundSchema), dump_only=True)
    updated = fields.List(fields.Nested(VolumeResizedSchema), dump_only=True)
    unchanged = fields.List(fields.String(), dump_only=True)


class DiscoverQuerySchema(Body):
    dry_run = fields.Boolean(
        load_default=False,
        metadata={"description": "Report what a discovery would change, writing nothing."},
    )


def check_view(report: CheckReport) -> View:
    tools: dict[str, Any] = {tool: bool(report.tools.get(tool, False)) for tool in COPY_TOOLS}
    return {
        "ok": report.ok,
        "message": report.message,
        "os": None if report.os is None else report.os.value,
        "hostname": report.hostname,
        "kernel": report.kernel,
        "tools": tools,
        "host_key": report.host_key,
    }


def discovery_view(report: DiscoveryReport) -> View:
    return {
        "ok": report.ok,
        "message": report.message,
        "added": [{"name": v.name, "size": v.size} for v in report.added],
        "updated": [{"name": v.name, "size": v.size, "was": v.was} for v in report.updated],
        "unchanged": list(report.unchanged),
    }


_REFUSED = "Refused: the workload's ip is outside MIGRATION_ALLOWED_NETWORKS (nothing is sent)"


@docs(
    tags=[TAG],
    summary="Check a workload: connect over SSH, log in and read its facts",
    description="Reads the os, hostname and kernel, and whether `tar` and `sha256sum` are there."
    " The first successful contact pins the host key (`host_key` answers its fingerprint); a later"
    " contact that meets another key fails (`ok` false) until `host_key` is cleared. A check"
    " sets `os` when it was null. A machine that cannot be reached answers 200 with `ok` false"
    " and the reason.",
    operation_id="checkWorkload",
    parameters=[ID_PARAMETER],
    responses={
        **answers({200: (CheckSchema, "What the check found, or why it failed.")}, 401, 404),
        409: {**answers({}, 409)[409], "description": _REFUSED + "."},
    },
)
async def check_workload(request: web.Request) -> web.Response:
    found = services(request)
    report = await call(
        core.check_workload, found.storage, found.machines, request[USER].id, object_id(request), clock=found.clock
    )
    return json_answer(check_view(report))


@docs(
    tags=[TAG],
    summary="Discover a workload's volumes: its mounted filesystems under its root",
    description="A Linux machine's mounted filesystems (pseudo and in-memory ones left out)"
    " under the workload's `root`, named as seen from it, become its mount points: a new one"
    " is added with its used bytes as size, a known one (same name) gets its size updated,"
    " none is removed. `dry_run=true` reports what would change and writes nothing.",
    operation_id="discoverWorkload",
    parameters=[ID_PARAMETER],
    responses={
        **answers({200: (DiscoverySchema, "What was (or would be) added and updated.")}, 400, 401, 404),
        409: {**answers({}, 409)[409], "description": _REFUSED + ", or the workload's os is windows."},
    },
)
@query(DiscoverQuerySchema())
async def discover_workload(request: web.Request) -> web.Response:
    found = services(request)
    loaded: dict[str, Any] = request[QUERY]
    report = await call(
        core.discover_volumes,
        found.storage,
        found.machines,
        request[USER].id,
        object_id(request),
        dry_run=loaded["dry_run"],
        clock=found.clock,
    )
    return json_answer(discovery_view(report))


class CheckResultSchema(Schema):
    check = fields.Enum(Check, by_value=True, dump_only=True, metadata={"description": "Which check, in this order."})
    ok = fields.Boolean(dump_only=True)
    message = fields.String(
        dump_only=True, metadata={"description": "What was found, what failed and how to act, or why it was not made."}
    )


class ReadinessSchema(Schema):
    ready = fields.Boolean(dump_only=True, metadata={"description": "Every check passed."})
    checks = fields.List(fields.Nested(CheckResultSchema), dump_only=True)


class MigrationReadinessSchema(ReadinessSchema):
    migration = Id(dump_only=True)


class WaveReadinessSchema(Schema):
    ready = fields.Integer(dump_only=True, metadata={"description": "How many of its migrations are ready."})
    not_ready = fields.Integer(dump_only=True)
    migrations = fields.List(fields.Nested(MigrationReadinessSchema), dump_only=True)


class DiscoverManySchema(Body):
    workloads = fields.List(
        Id(), validate=validate.Length(1, LIST_MAX), metadata={"description": "The workloads to discover."}
    )
    wave = Id(metadata={"description": "Or a wave: the sources of its migrations."})

    @validates_schema
    def _one_of(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if ("workloads" in data) == ("wave" in data):
            raise ValidationError("Give either `workloads` (a list of ids) or `wave` (an id).", "_schema")


class DiscoveryResultSchema(DiscoverySchema):
    workload = Id(dump_only=True)


class DiscoveriesSchema(Schema):
    results = fields.List(fields.Nested(DiscoveryResultSchema), dump_only=True)


def readiness_view(result: MigrationReadiness) -> View:
    return {
        "ready": result.ready,
        "checks": [{"check": c.check.value, "ok": c.ok, "message": c.message} for c in result.checks],
    }


_CHECKS = (
    "The checks, in this order: `source_login` (reached and logged in, host key unchanged), `source_os`"
    " (Linux), `source_tools` and `host_tools` (every program a copy runs, on the login's PATH),"
    " `volumes` (each selected volume is a directory under the source's root; its used bytes),"
    " `host_login`, `host_root` (the target's root exists or can be made, and the login may write"
    " there), `host_space` (free space under the root at least what the run would send plus 10%),"
    " `system_volume`, `target_free` (no other migration running into the target), and for a warm"
    " migration `hooks` (each parses: `sh -n`). A simulated migration (a target without host) answers"
    " `system_volume` and `target_free` only. A check not made because another failed says so."
    " Nothing is written on the machines; the result is kept as the migration's `readiness` and a"
    " `preflight` event, and each machine's outcome as its workload's `last_check`. It never blocks a"
    " run: the run checks again."
)


@docs(
    tags=["migrations"],
    summary="Check whether a migration is ready to run (pre-flight)",
    description=_CHECKS,
    operation_id="preflightMigration",
    parameters=[ID_PARAMETER],
    responses={
        **answers({200: (ReadinessSchema, "Each check with its message.")}, 401, 404),
        409: {**answers({}, 409)[409], "description": "Refused: an address is outside MIGRATION_ALLOWED_NETWORKS."},
    },
)
async def preflight_migration(request: web.Request) -> web.Response:
    found = services(request)
    user = request[USER].id
    result = await call(
        check_readiness, found.storage, found.machines, user, object_id(request), actor=user, clock=found.clock
    )
    return json_answer(readiness_view(result))


@docs(
    tags=["waves"],
    summary="Check whether each migration of a wave is ready to run",
    description="Each migration's checks, as a migration's pre-flight answers them, with each machine"
    " logged in to once however many migrations share it, at most MIGRATION_MAX_COPIES machines at a"
    " time. A machine outside MIGRATION_ALLOWED_NETWORKS fails its login check (nothing is sent).",
    operation_id="preflightWave",
    parameters=[ID_PARAMETER],
    responses=answers({200: (WaveReadinessSchema, "How many are ready, and each one's checks.")}, 401, 404),
)
async def preflight_wave(request: web.Request) -> web.Response:
    found = services(request)
    user = request[USER].id
    outcome = await call(
        check_wave_readiness, found.storage, found.machines, user, object_id(request),
        at_once=found.machines_at_once, actor=user, clock=found.clock,
    )
    return json_answer({
        "ready": outcome.ready,
        "not_ready": outcome.not_ready,
        "migrations": [{"migration": one.migration_id, **readiness_view(one)} for one in outcome.migrations],
    })


@docs(
    tags=["inventory"],
    summary="Discover many workloads' volumes at once",
    description="`{\"workloads\": [ids]}`, or `{\"wave\": id}` for the sources of a wave's migrations: each"
    " is discovered as its own discovery would be, at most MIGRATION_MAX_COPIES at a time. One that"
    " cannot be reached, runs windows or is outside MIGRATION_ALLOWED_NETWORKS answers `ok` false"
    " with the reason. `dry_run=true` reports what would change and writes nothing.",
    operation_id="discoverWorkloads",
    responses=answers({200: (DiscoveriesSchema, "Each workload's discovery, in the order asked.")}, 400, 401, 415),
)
@query(DiscoverQuerySchema())
@json_body(DiscoverManySchema())
async def discover_many(request: web.Request) -> web.Response:
    found = services(request)
    user = request[USER].id
    body: dict[str, Any] = request[BODY]
    if "wave" in body:
        try:
            ids = await call(wave_sources, found.storage, user, body["wave"])
        except core.NotFound:
            raise core.InvalidInput.field("wave", f"No such wave: {body['wave']}.") from None
    else:
        ids = body["workloads"]
    results = await call(
        discover_workloads, found.storage, found.machines, user, ids,
        at_once=found.machines_at_once, dry_run=request[QUERY]["dry_run"], clock=found.clock,
    )
    return json_answer({"results": [{"workload": i, **discovery_view(report)} for i, report in results]})


ROUTES = [
    Route("POST", "/api/v1/work_loads/{id:\\d+}/check/", check_workload),
    Route("POST", "/api/v1/work_loads/{id:\\d+}/discover/", discover_workload),
    Route("POST", "/api/v1/migrations/{id:\\d+}/preflight/", preflight_migration),
    Route("POST", "/api/v1/waves/{id:\\d+}/preflight/", preflight_wave),
    Route("POST", "/api/v1/inventory/discover/", discover_many),
]
