"""Prometheus metrics at /metrics: requests by route template,
method and status, with their latency; migrations by state; the runs this
instance carries out; live instances. Counts only: a label holds a route
template (`/api/v1/migrations/{id}`), never a username, an ip or an id.

Each app has a registry of its own, so apps built side by side (in tests, or
one per worker) never share a counter."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector

import migration_core as core

from .requests import SERVICES, call, read, services
from .routes import Route

PATH = "/metrics"
UNMATCHED = "unmatched"  # the route of a request that matched none: its path could hold anything
# Other methods are counted as one, so that made-up ones cannot grow the label set.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
CLIENT_GONE = 499  # the status of a request whose client left before its answer

class Metrics:
    def __init__(self, app: web.Application) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "migration_http_requests", "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"], registry=self.registry,
        )
        self._latency = Histogram(
            "migration_http_request_duration_seconds", "Time to answer HTTP requests, by route template and method.",
            ["route", "method"], registry=self.registry,
        )
        self.migrations = Gauge(
            "migration_migrations", "Migrations of every user, by state, counted at each scrape.",
            ["state"], registry=self.registry,
        )
        runner = app[SERVICES].runner
        running = Gauge(
            "migration_runs_in_progress", "Migrations this instance is copying now.", registry=self.registry
        )
        running.set_function(lambda: len(runner.active))
        self.instances = Gauge(
            "migration_live_instances", "Service instances alive on this database, counted at each scrape.",
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        # The labelled children by label values: looking them up costs more than counting.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        children = self._children.get((route, method, status))
        if children is None:
            children = (self._requests.labels(route, method, str(status)), self._latency.labels(route, method))
            self._children[(route, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)


METRICS = web.AppKey("metrics", Metrics)


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    if resource is None:
        return UNMATCHED
    # A path answers with and without its trailing slash: one route either way.
    return resource.canonical.rstrip("/") or "/"


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_GONE
        raise
    finally:
        method = request.method if request.method in _METHODS else "other"
        request.app[METRICS].observe(_route(request), method, status, time.perf_counter() - started)


async def scrape(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    found = services(request)
    counts = await read(request, core.count_migrations_by_state, found.storage)
    for state, count in counts.items():
        metrics.migrations.labels(state.value).set(count)
    if found.registry is not None:
        metrics.instances.set(await call(found.registry.live, found.clock.now().timestamp()))
    return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup_metrics(app: web.Application) -> list[Route]:
    """Count what `app` answers (with `count_requests` among its middlewares);
    the route that serves the counts."""
    app[METRICS] = Metrics(app)
    return [Route("GET", PATH, scrape, public=True)]
