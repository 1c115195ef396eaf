"""The app factory: routes, the error middleware, the OpenAPI document and the
lifetime of the services (runner started once the loop runs, storage closed last)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TypedDict

from aiohttp import web

from entrypoints.bootstrap import Services

from . import accounts, console, fleets, machines, resources, stream
from .errors import json_errors
from .metrics import count_requests, setup_metrics
from .openapi import setup_openapi
from .request_ids import answer_request_id, request_ids
from .requests import BODY_TIMEOUT, SERVICES
from .routes import add_routes
from .stream import HUB, EventHub, StreamOptions

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
DEFAULT_IDLE_TIMEOUT = 15.0
DEFAULT_BODY_TIMEOUT = 30.0
# How long a connection may keep sending a body nobody reads (after a 408, 413
# or 415) before it is closed; aiohttp's default is 10 seconds.
LINGER_SECONDS = 2.0


async def _services_lifetime(app: web.Application) -> AsyncIterator[None]:
    found = app[SERVICES]
    try:
        await found.runner.start()
        try:
            yield
        finally:
            interrupted = await found.runner.stop()
            # The operator's one line on a stop: what it cut short, to run again.
            runs = "1 running migration" if interrupted == 1 else f"{interrupted} running migrations"
            log.info("Service stopped; it interrupted %s.", runs)
    finally:
        if found.write_executor is not None:
            found.write_executor.shutdown()
        found.password_executor.shutdown()
        found.machines.close()
        found.storage.close()


class ServerOptions(TypedDict):
    keepalive_timeout: float
    lingering_time: float


def server_options(idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> ServerOptions:
    """Connection limits for `web.run_app` or `web.AppRunner`: a connection that
    sends no request, or no complete headers, is closed after `idle_timeout`
    seconds (aiohttp's keep-alive timer also runs from the connection's start)."""
    return {"keepalive_timeout": idle_timeout, "lingering_time": LINGER_SECONDS}


def create_app(
    services: Services,
    *,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    metrics: bool = True,
    streams: StreamOptions | None = None,
) -> web.Application:
    """The service; `metrics=False` leaves /metrics out (404) and counts nothing."""
    # The request id first, so that every later layer and log line has it.
    middlewares = [request_ids, *([count_requests] if metrics else []), json_errors]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app[SERVICES] = services
    app[BODY_TIMEOUT] = body_timeout
    app[HUB] = EventHub(services.storage, streams or StreamOptions())
    app.on_response_prepare.append(answer_request_id)
    app.cleanup_ctx.append(_services_lifetime)
    app.cleanup_ctx.append(stream.hub_lifetime)  # entered after the services, left before them
    app.on_shutdown.append(stream.end_streams)
    add_routes(
        app.router,
        accounts.ROUTES
        + resources.ROUTES
        + fleets.ROUTES
        + machines.ROUTES
        + stream.routes()
        + (setup_metrics(app) if metrics else []),
    )
    console.setup_console(app, metrics=metrics)
    setup_openapi(app)
    return app
