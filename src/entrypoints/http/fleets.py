"""Fleets (SPEC 3.5): the inventory imported from CSV and exported as CSV.
The file is read here, parsed and applied by `entrypoints.inventory_csv`
(shared with the command line), which calls the core's one import use case."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp_apigami import docs

from entrypoints.inventory_csv import FILENAME, MAX_BYTES, MAX_ROWS, export_csv, import_csv

from .answers import json_answer
from .openapi import answers
from .requests import QUERY, USER, call, query, read_capped, services
from .routes import Route
from .schemas import ImportQuerySchema, ImportReportSchema, RowsRefusedSchema

TAG = "inventory"
CSV_TYPE = "text/csv"
_CSV_CONTENT = {CSV_TYPE: {"schema": {"type": "string", "maxLength": MAX_BYTES}}}


def _csv_body_only(request: web.Request) -> None:
    charset = (request.charset or "utf-8").lower()
    if request.content_type != CSV_TYPE or charset not in ("utf-8", "utf8"):
        raise web.HTTPUnsupportedMediaType(reason="Send the file as text/csv in UTF-8.")


@docs(
    tags=[TAG],
    summary="Import an inventory: one workload a row, with its plan",
    description=(
        f"A CSV file (UTF-8, a header row; at most {MAX_ROWS:,} rows and {MAX_BYTES // 2**20} MiB)"
        " with the columns `ip` (required), `username`, `password`, `domain`, `volumes`"
        " (`NAME=SIZE` separated by `;`, sizes in bytes or with KB MB GB TB KiB MiB GiB TiB)"
        " and the plan columns `cloud_type`, `cloud_username`, `cloud_password`,"
        " `cloud_domain`, `select` (volume names, `;`-separated; default all) and `wave`."
        " Rows match workloads by ip: a new ip creates, a known one updates, an identical one"
        " changes nothing. All or nothing: when any row is bad, nothing is written and every"
        " bad row is named. A cell an export wrote behind a `'` (a formula-looking one) loses"
        " that `'` again."
    ),
    operation_id="importInventory",
    requestBody={"required": True, "content": _CSV_CONTENT},
    responses={
        **answers({200: (ImportReportSchema, "Imported; with dry_run, checked and not written.")}, 401, 408, 413, 415),
        400: {
            "schema": RowsRefusedSchema,
            "description": "Bad rows, or a file that is not an inventory: nothing written.",
        },
    },
)
@query(ImportQuerySchema())
async def import_inventory(request: web.Request) -> web.Response:
    _csv_body_only(request)
    data = await read_capped(request, MAX_BYTES)
    found = services(request)
    loaded: dict[str, Any] = request[QUERY]
    report = await call(
        import_csv, found.storage, found.clock, request[USER].id, data, dry_run=loaded["dry_run"]
    )
    return json_answer(
        {"created": report.created, "updated": report.updated, "unchanged": report.unchanged}
    )


@docs(
    tags=[TAG],
    summary="Export the inventory as CSV",
    description="Every workload with its plan (its latest migration, that migration's target"
    " and wave), in the import's columns; passwords are left empty, and importing the file"
    " back changes nothing. Formula-looking cells are written behind a `'`.",
    operation_id="exportInventory",
    responses={
        200: {
            "description": "The inventory.",
            "content": {CSV_TYPE: {"schema": {"type": "string"}}},
            "headers": {
                "Content-Disposition": {
                    "schema": {"type": "string"},
                    "description": f'attachment; filename="{FILENAME}"',
                }
            },
        },
        **answers({}, 401),
    },
)
async def export_inventory(request: web.Request) -> web.Response:
    text = await call(export_csv, services(request).storage, request[USER].id)
    return web.Response(
        text=text,
        content_type=CSV_TYPE,
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{FILENAME}"'},
    )


ROUTES = [
    Route("POST", "/api/v1/inventory/import/", import_inventory),
    Route("GET", "/api/v1/inventory/export/", export_inventory),
]
