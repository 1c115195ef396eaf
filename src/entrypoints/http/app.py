"""The app factory: routes, the error middleware, the OpenAPI document and the
lifetime of the services (runner started once the loop runs, storage closed last)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from entrypoints.bootstrap import Services

from . import accounts, resources
from .errors import json_errors
from .openapi import setup_openapi
from .requests import SERVICES
from .routes import add_routes

MAX_BODY_BYTES = 64 * 1024


async def _services_lifetime(app: web.Application) -> AsyncIterator[None]:
    found = app[SERVICES]
    try:
        await found.runner.start()
        try:
            yield
        finally:
            await found.runner.stop()
    finally:
        found.storage.close()


def create_app(services: Services) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=MAX_BODY_BYTES)
    app[SERVICES] = services
    app.cleanup_ctx.append(_services_lifetime)
    add_routes(app.router, accounts.ROUTES + resources.routes())
    setup_openapi(app)
    return app
