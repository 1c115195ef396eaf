"""The browser console (SPEC 5): its shell at `/`, its static files, and the
index of links at `/api/v1/` (SPEC 3.6).

The files ship as package data in `entrypoints.console`. They are served under
one versioned path, `/static/<digest>/<name>`, where the digest covers every
file: the ES modules import each other by relative URL, which stays inside one
release, and a new release changes every URL, so a cached file is never stale.
The shell itself is revalidated on every load (`no-cache`)."""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Iterator
from importlib.resources import files
from importlib.resources.abc import Traversable
from string import Template

import attrs
from aiohttp import web
from aiohttp_apigami import docs
from marshmallow import Schema, fields

from entrypoints import package_version

from .answers import json_answer
from .openapi import OPENAPI_PATH, SWAGGER_PATH, answers
from .routes import Route, add_routes

PACKAGE = "entrypoints.console"
SHELL = "templates/index.html"
STATIC_DIR = "static"
STATIC_PREFIX = "/static/"

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors, for browsers that predate it
}
SHELL_CACHE = "no-cache"
ASSET_CACHE = "public, max-age=31536000, immutable"
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


@attrs.frozen
class Asset:
    body: bytes
    content_type: str
    etag: str


@attrs.frozen
class Console:
    digest: str
    shell: Asset
    assets: dict[str, Asset]


CONSOLE = web.AppKey("console", Console)


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _walk(folder: Traversable, prefix: str = "") -> Iterator[tuple[str, Traversable]]:
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if entry.is_dir():
            yield from _walk(entry, f"{prefix}{entry.name}/")
        elif not entry.name.startswith("."):
            yield prefix + entry.name, entry


def _content_type(name: str) -> str:
    suffix = name[name.rfind("."):]
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def load_console(root: Traversable | None = None) -> Console:
    """The shell and the static files, read once (from the package by default)."""
    root = root or files(PACKAGE)
    raw = {name: entry.read_bytes() for name, entry in _walk(root / STATIC_DIR)}
    release = hashlib.sha256()
    for name, body in raw.items():
        release.update(name.encode() + b"\0" + hashlib.sha256(body).digest())
    digest = release.hexdigest()[:16]
    page = Template((root / SHELL).read_text(encoding="utf-8"))
    shell = page.substitute(static=f"{STATIC_PREFIX}{digest}").encode()
    return Console(
        digest=digest,
        shell=Asset(shell, "text/html", _etag(shell)),
        assets={name: Asset(body, _content_type(name), _etag(body)) for name, body in raw.items()},
    )


def _answer(request: web.Request, asset: Asset, cache_control: str) -> web.Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": cache_control, "ETag": asset.etag}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers)


async def _shell(request: web.Request) -> web.Response:
    return _answer(request, request.app[CONSOLE].shell, SHELL_CACHE)


async def _static(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    asset = console.assets.get(request.match_info["name"])
    # Another release's files are not kept: a miss, like an unknown name.
    if request.match_info["digest"] != console.digest or asset is None:
        raise web.HTTPNotFound()
    return _answer(request, asset, ASSET_CACHE)


class ApiIndexSchema(Schema):
    version = fields.String(metadata={"example": "0.3.0"})
    console = fields.String(metadata={"example": "/"})
    swagger_ui = fields.String(metadata={"example": SWAGGER_PATH})
    openapi = fields.String(metadata={"example": OPENAPI_PATH})
    health = fields.String(metadata={"example": "/health"})
    metrics = fields.String(metadata={"example": "/metrics", "description": "Absent when metrics are off."})


def api_index_links(*, metrics: bool = True) -> dict[str, str]:
    """The index at /api/v1/, its version read when it is first asked for."""
    links = {
        "version": package_version(),
        "console": "/",
        "swagger_ui": SWAGGER_PATH,
        "openapi": OPENAPI_PATH,
        "health": "/health",
        "metrics": "/metrics",
    }
    return links if metrics else {k: v for k, v in links.items() if k != "metrics"}


@docs(
    tags=["health"],
    summary="Links to the console, the API's documentation, health and metrics",
    operation_id="apiIndex",
    security=[],
    responses=answers({200: (ApiIndexSchema, "The links, as paths on this service.")}),
)
async def api_index(request: web.Request) -> web.Response:
    return json_answer(api_index_links(metrics=request.app[INDEX_METRICS]), headers=SECURITY_HEADERS)


INDEX_METRICS = web.AppKey("api_index_metrics", bool)


def setup_console(app: web.Application, *, metrics: bool = True) -> None:
    """Serve the console and the index of links (without /metrics when it is
    off); call it before `setup_openapi` so the index is documented."""
    app[CONSOLE] = load_console()
    app[INDEX_METRICS] = metrics
    app.router.add_get("/", _shell)
    app.router.add_get(STATIC_PREFIX + "{digest}/{name:.+}", _static)
    add_routes(app.router, [Route("GET", "/api/v1/", api_index, public=True)])
