"""Fleets (SPEC 3.5): the inventory imported from CSV and exported as CSV.
The file is read here, as the body itself (`text/csv`) or as the `file` part
of a form (`multipart/form-data`: what browsers, `curl -F` and generated
clients send), then parsed and applied by `entrypoints.inventory_csv`
(shared with the command line), which calls the core's one import use case."""

from __future__ import annotations

from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from aiohttp import web
from aiohttp_apigami import docs

from entrypoints.inventory_csv import FILENAME, MAX_BYTES, MAX_ROWS, export_csv, import_csv
from migration_core import RowsRefused

from .answers import json_answer
from .openapi import answers
from .requests import QUERY, USER, BodyTooLarge, call, query, read_capped, services
from .routes import Route
from .schemas import ImportQuerySchema, ImportReportSchema, RowsRefusedSchema

TAG = "inventory"
CSV_TYPE = "text/csv"
FORM_TYPE = "multipart/form-data"
FILE_PART = "file"
# Room for a form's boundaries and part headers around a file of MAX_BYTES.
FORM_ALLOWANCE = 64 * 1024
_UTF8 = ("utf-8", "utf8")
_NOT_CSV = f"Send the file as text/csv in UTF-8, or as the `{FILE_PART}` part of {FORM_TYPE}."
_FILE_SCHEMA = {"type": "string", "maxLength": MAX_BYTES}
# The form alone: the body as text/csv, which the import takes too, is said in
# words, since a generator that meets a media type it knows not warns of it.
_IMPORT_CONTENT = {
    FORM_TYPE: {
        "schema": {
            "type": "object",
            "required": [FILE_PART],
            "additionalProperties": False,
            "properties": {
                FILE_PART: {
                    **_FILE_SCHEMA,
                    "format": "binary",
                    "description": "The CSV file (UTF-8), its only part.",
                }
            },
        },
        "encoding": {FILE_PART: {"contentType": CSV_TYPE}},
    },
}


def _body_limit(request: web.Request) -> int:
    """How many bytes the body may hold, by its media type; 415 for any other."""
    if request.content_type == FORM_TYPE:
        return MAX_BYTES + FORM_ALLOWANCE
    if request.content_type != CSV_TYPE or (request.charset or "utf-8").lower() not in _UTF8:
        raise web.HTTPUnsupportedMediaType(reason=_NOT_CSV)
    return MAX_BYTES


def file_of_form(content_type: str, body: bytes) -> bytes:
    """The file a `multipart/form-data` body carries in its one part, `file`.
    A broken form, or one holding anything else, is refused as a file that is
    not an inventory (400), a file over MAX_BYTES with 413, one that says it
    is not UTF-8 with 415."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    form = BytesParser(EmailMessage, policy=HTTP).parsebytes(head + body)
    if not form.is_multipart() or form.defects:
        raise RowsRefused(f"The body is not a complete {FORM_TYPE} form.", [])
    parts = list(form.iter_parts())
    names = [part.get_param("name", header="content-disposition") for part in parts]
    if names != [FILE_PART] or parts[0].get_content_disposition() != "form-data":
        raise RowsRefused(f"The form must hold one part, `{FILE_PART}`: the CSV file.", [])
    part = parts[0]
    data = None if part.is_multipart() else part.get_payload(decode=True)
    if not isinstance(data, bytes) or part.defects:
        raise RowsRefused(f"The `{FILE_PART}` part of the form is not a file.", [])
    if (part.get_content_charset() or "utf-8") not in _UTF8:
        raise web.HTTPUnsupportedMediaType(reason=_NOT_CSV)
    if len(data) > MAX_BYTES:
        raise BodyTooLarge(MAX_BYTES)
    return data


async def _uploaded_file(request: web.Request) -> bytes:
    limit = _body_limit(request)
    try:
        body = await read_capped(request, limit)
    except BodyTooLarge:
        raise BodyTooLarge(MAX_BYTES) from None  # the file's limit, whatever wraps it
    if request.content_type == CSV_TYPE:
        return body
    # A form of 10 MiB takes about half a second to take apart: off the loop.
    return await call(file_of_form, request.headers.get("Content-Type", ""), body)


@docs(
    tags=[TAG],
    summary="Import an inventory: one workload a row, with its plan",
    description=(
        f"A CSV file (UTF-8, a header row; at most {MAX_ROWS:,} rows and {MAX_BYTES // 2**20} MiB),"
        f" sent as the body (`{CSV_TYPE}`) or as the one part, `{FILE_PART}`, of a form (`{FORM_TYPE}`),"
        " with the columns `ip` (required), `username`, `password`, `domain`, `volumes`"
        " (`NAME=SIZE` separated by `;`, sizes in bytes or with KB MB GB TB KiB MiB GiB TiB)"
        " and the plan columns `cloud_type`, `cloud_username`, `cloud_password`,"
        " `cloud_domain`, `select` (volume names, `;`-separated; default all), `wave`, `mode`"
        " (`cold` or `warm`) and `sync_interval` (seconds; default MIGRATION_SYNC_INTERVAL)."
        " Rows match workloads by ip: a new ip creates, a known one updates, an identical one"
        " changes nothing. All or nothing: when any row is bad, nothing is written and every"
        " bad row is named. A cell an export wrote behind a `'` (a formula-looking one) loses"
        " that `'` again."
    ),
    operation_id="importInventory",
    requestBody={"required": True, "content": _IMPORT_CONTENT},
    responses={
        **answers({200: (ImportReportSchema, "Imported; with dry_run, checked and not written.")}, 401, 408, 413, 415),
        400: {
            "schema": RowsRefusedSchema,
            "description": "Bad rows, or a file (or form) that is not an inventory: nothing written.",
        },
    },
)
@query(ImportQuerySchema())
async def import_inventory(request: web.Request) -> web.Response:
    data = await _uploaded_file(request)
    found = services(request)
    loaded: dict[str, Any] = request[QUERY]
    report = await call(
        import_csv, found.storage, found.clock, request[USER].id, data, dry_run=loaded["dry_run"],
        default_sync_interval=found.default_sync_interval,
    )
    return json_answer({
        "created": report.created,
        "updated": report.updated,
        "unchanged": report.unchanged,
        "created_workloads": list(report.created_workloads),
    })


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
