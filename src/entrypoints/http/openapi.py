"""The OpenAPI 3 document (aiohttp-apigami builds it from the routes' schemas),
the Swagger UI from the distribution files apigami ships (served locally, no
CDN), and the answers each operation documents."""

from __future__ import annotations

import asyncio
import functools
import json
import warnings
from collections.abc import Mapping
from string import Template
from typing import Any

from aiohttp import web
from aiohttp_apigami import AiohttpApiSpec
from aiohttp_apigami.swagger_ui import SWAGGER_UI_STATIC_FILES  # the Swagger UI dist, as local files
from apispec.ext.marshmallow import common
from marshmallow import Schema

from entrypoints import package_version

from .answers import json_answer
from .schemas import ErrorSchema, ValidationErrorSchema

OPENAPI_PATH = "/api/v1/openapi.json"
SWAGGER_PATH = "/swagger/"
SWAGGER_STATIC_PATH = "/swagger/static"
SECURITY_SCHEME = "bearerAuth"
TITLE = "Migration service"
DESCRIPTION = (
    "Keep an inventory of workloads, their mount points and credentials, describe"
    " cloud migration targets, and run migrations. Register at /api/v1/auth/, get"
    " a token pair at /api/v1/token/, then send `Authorization: Bearer <access>`."
    " Every path also answers without its trailing slash."
)

_STRING_HEADER = {"schema": {"type": "string"}}
_ERRORS: dict[int, dict[str, Any]] = {
    400: {"schema": ValidationErrorSchema, "description": "Invalid input: see `errors` per field."},
    401: {
        "schema": ErrorSchema,
        "description": "No, or no valid, access token.",
        "headers": {"WWW-Authenticate": {**_STRING_HEADER, "description": "Bearer"}},
    },
    404: {"schema": ErrorSchema, "description": "Not found, or not yours."},
    408: {"schema": ErrorSchema, "description": "The body did not arrive in full in time."},
    409: {"schema": ErrorSchema, "description": "Conflicts with the current state."},
    413: {"schema": ErrorSchema, "description": "The body is too large."},
    415: {"schema": ErrorSchema, "description": "The body is not application/json."},
    429: {
        "schema": ErrorSchema,
        "description": "Too many failed logins for this username.",
        "headers": {"Retry-After": {**_STRING_HEADER, "description": "Seconds to wait."}},
    },
    500: {"schema": ErrorSchema, "description": "Unexpected error."},
    503: {"schema": ErrorSchema, "description": "Storage does not answer."},
}
WRITE_ERRORS = (400, 408, 413, 415)
# What reading any body may answer, documented on every operation that takes one.
BODY_ERRORS = (408, 413)


def answers(
    success: Mapping[int, tuple[Schema | type[Schema] | None, str]], *errors: int
) -> dict[int, dict[str, Any]]:
    """The documented answers of one operation: its successes, the errors it
    names, and 500, which any operation may answer."""
    documented: dict[int, dict[str, Any]] = {}
    for code, (schema, description) in success.items():
        documented[code] = (
            {"schema": schema, "description": description} if schema else {"description": description}
        )
    for code in sorted({*errors, 500}):
        documented[code] = dict(_ERRORS[code])
    return documented


def schema_name(schema: Any) -> str:
    """`CredentialsSchema` is documented as `Credentials`, its partial form
    (the body of a PATCH) as `CredentialsPatch`, and its form without the
    write-only password (the answers: schemas.answer_form) as `CredentialsAnswer`."""
    instance = common.resolve_schema_instance(schema)
    resolved = common.resolve_schema_cls(schema)
    schema_class = resolved[0] if isinstance(resolved, list) else resolved
    name = schema_class.__name__.removesuffix("Schema") or schema_class.__name__
    if instance.partial:
        return name + "Patch"
    return name + "Answer" if instance.exclude else name


def _without_swagger2_keys(document: dict[str, Any]) -> dict[str, Any]:
    """apigami's `docs` adds Swagger 2's `produces` to every operation; OpenAPI 3
    has no such key (the media types are under `content`)."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict):
                operation.pop("produces", None)
                operation.pop("consumes", None)
    return document


def _with_body_errors(document: dict[str, Any]) -> dict[str, Any]:
    """Every operation that takes a body lists the answers of reading one,
    whether or not its route named them."""
    error = {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name(ErrorSchema)}"}}}}
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict) or "requestBody" not in operation:
                continue
            responses = operation.setdefault("responses", {})
            listed = {str(code) for code in responses}
            for code in BODY_ERRORS:
                if str(code) not in listed:
                    responses[str(code)] = {"description": _ERRORS[code]["description"], **error}
    return document


# apispec writes a nullable reference (OpenAPI 3.0) as "the referenced schema or
# any object", and client generators then make a model of that any object. The
# alternative meant is null alone.
_ANY_OBJECT_OR_NULL = {"type": "object", "nullable": True}
_NULL_ONLY = {"nullable": True, "enum": [None]}


def _null_for_any_object(node: Any) -> Any:
    if isinstance(node, dict):
        if "anyOf" in node:
            node["anyOf"] = [_NULL_ONLY if choice == _ANY_OBJECT_OR_NULL else choice for choice in node["anyOf"]]
        for value in node.values():
            _null_for_any_object(value)
    elif isinstance(node, list):
        for item in node:
            _null_for_any_object(item)
    return node


# What a document describes: each route's method, path and handler.
DocumentedRoutes = tuple[tuple[str, str, Any], ...]
DOCUMENTED_ROUTES = web.AppKey("documented_routes", DocumentedRoutes)

# The documents built in this process, by the routes they describe.
_documents: dict[frozenset[tuple[str, str]], dict[str, Any]] = {}


def setup_openapi(app: web.Application) -> None:
    """Serve the document of every route registered so far (call it after the
    last one) and the Swagger UI. The document is built when first asked for:
    building it is most of what making an app costs (0.15 CPU-s here), and
    most processes never serve it."""
    app[DOCUMENTED_ROUTES] = tuple(
        (route.method, route.resource.canonical, route.handler) for route in app.router.routes() if route.resource
    )
    app.router.add_get(OPENAPI_PATH, _serve_document, allow_head=False)
    app.router.add_get(SWAGGER_STATIC_PATH + "/{name}", _serve_swagger_file, allow_head=False)
    for path in (SWAGGER_PATH, SWAGGER_PATH.removesuffix("/")):
        app.router.add_get(path, _serve_swagger_ui, allow_head=False)


def openapi_document(app: web.Application) -> dict[str, Any]:
    """The app's document. A document depends only on the routes (what each
    says of itself is the code's), so it is built once a process for each set
    of routes and shared between apps: read it, never change it."""
    routes = app[DOCUMENTED_ROUTES]
    key = frozenset((method, path) for method, path, _ in routes)
    document = _documents.get(key)
    if document is None:
        document = _documents[key] = _document(routes)
    return document


def _document(routes: DocumentedRoutes) -> dict[str, Any]:
    # apigami reads an app's routes and keeps its state in the app: a scratch
    # app holds the routes, so a running app (frozen) is never changed.
    described = web.Application()
    for method, path, handler in routes:
        described.router.add_route(method, path, handler)
    api = AiohttpApiSpec(
        url="",  # the document and the UI are served below
        openapi_version="3.0.3",
        schema_name_resolver=schema_name,
        title=TITLE,
        version=package_version(),
        info={"description": DESCRIPTION},
        security=[{SECURITY_SCHEME: []}],
    )
    api.spec.components.security_scheme(
        SECURITY_SCHEME, {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    )
    with warnings.catch_warnings():
        # apigami also keeps the document under a plain string key.
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        api.register(described, in_place=True)
    # Through JSON once, so the document is exactly what clients read (string keys).
    built = _null_for_any_object(_with_body_errors(_without_swagger2_keys(api.swagger_dict())))
    document: dict[str, Any] = json.loads(json.dumps(built))
    return document


async def _serve_document(request: web.Request) -> web.Response:
    # Off the loop: the first call in a process builds the document.
    return json_answer(await asyncio.to_thread(openapi_document, request.app))


@functools.cache
def _swagger_page() -> str:
    template = Template((SWAGGER_UI_STATIC_FILES / "index.html").read_text(encoding="utf-8"))
    return template.substitute(
        path=OPENAPI_PATH, static=SWAGGER_STATIC_PATH, layout="StandaloneLayout"
    )


@functools.cache
def _swagger_files() -> frozenset[str]:
    return frozenset(path.name for path in SWAGGER_UI_STATIC_FILES.iterdir() if path.is_file())


async def _serve_swagger_file(request: web.Request) -> web.FileResponse:
    # Only the files of the distribution, so a miss is a JSON 404 like any other.
    name = request.match_info["name"]
    if name not in _swagger_files():
        raise web.HTTPNotFound()
    return web.FileResponse(SWAGGER_UI_STATIC_FILES / name)


async def _serve_swagger_ui(_request: web.Request) -> web.Response:
    return web.Response(text=_swagger_page(), content_type="text/html")
