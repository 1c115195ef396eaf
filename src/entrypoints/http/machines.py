"""The machine actions of a workload (SPEC 2.7, 3.2): check it, and discover
its volumes. Both answer 200 in the time the machine takes; a machine that
cannot be reached is `ok: false` with the reason, not an error status."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp_apigami import docs
from marshmallow import Schema, fields

import migration_core as core
from migration_core import CheckReport, DiscoveryReport, OperatingSystem
from migration_core.machines import COPY_TOOLS

from .answers import json_answer
from .openapi import answers
from .requests import QUERY, USER, call, query, services
from .resources import ID_PARAMETER, object_id
from .routes import Route
from .schemas import Body
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
    report = await call(core.check_workload, found.storage, found.machines, request[USER].id, object_id(request))
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
    )
    return json_answer(discovery_view(report))


ROUTES = [
    Route("POST", "/api/v1/work_loads/{id:\\d+}/check/", check_workload),
    Route("POST", "/api/v1/work_loads/{id:\\d+}/discover/", discover_workload),
]
