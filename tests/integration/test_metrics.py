"""/metrics (README, "Metrics") is Prometheus text that parses; its request counters move
with traffic, by route template, method and status; it counts migrations by
state, runs in progress and live instances; it holds no username, ip or id;
and `metrics=False` (MIGRATION_METRICS=off) turns it off."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from entrypoints.http import create_app

from .http_client import User, make_app, make_services

API = "/api/v1"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: TestClient[Any, Any]) -> tuple[str, Samples]:
    answer = await client.get("/metrics")
    assert answer.status == 200
    assert answer.content_type == "text/plain"
    text = await answer.text()
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return text, samples


def requests(samples: Samples, route: str, method: str, status: int) -> float:
    labels = frozenset({("route", route), ("method", method), ("status", str(status))})
    return samples.get(("migration_http_requests_total", labels), 0.0)


def gauge(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient[Any, Any]:
    return await aiohttp_client(make_app(run_seconds=3600))


async def test_request_counters_move_with_traffic_by_route_template(client: TestClient[Any, Any]) -> None:
    alice = await User(client, "alice").sign_up()
    plan = await alice.plan(ip="10.0.0.1")
    _, before = await scrape(client)
    item = f"{API}/credentials/{{id}}"
    for _ in range(3):
        await alice.call("GET", f"{API}/credentials/{plan['credentials']}/", 200)
    await alice.call("GET", f"{API}/credentials/{plan['credentials']}", 200)  # the same route without its slash
    await alice.call("GET", f"{API}/credentials/999999/", 404)
    assert (await client.get(f"{API}/no/such/place/42")).status == 404
    _, after = await scrape(client)

    assert requests(after, item, "GET", 200) - requests(before, item, "GET", 200) == 4
    assert requests(after, item, "GET", 404) - requests(before, item, "GET", 404) == 1
    assert requests(after, "unmatched", "GET", 404) - requests(before, "unmatched", "GET", 404) == 1
    assert requests(after, "/metrics", "GET", 200) - requests(before, "/metrics", "GET", 200) == 1
    assert requests(after, f"{API}/work_loads", "POST", 201) == 1
    latency = frozenset({("route", item), ("method", "GET")})
    assert after[("migration_http_request_duration_seconds_count", latency)] == 5
    assert after[("migration_http_request_duration_seconds_sum", latency)] > 0


async def test_migrations_by_state_runs_in_progress_and_live_instances(client: TestClient[Any, Any]) -> None:
    alice = await User(client, "alice").sign_up()
    bob = await User(client, "bob").sign_up()
    first = await alice.plan(ip="10.0.0.1")
    await bob.plan(ip="10.0.0.2")
    _, samples = await scrape(client)
    assert gauge(samples, "migration_migrations", state="not_started") == 2  # of every user
    assert gauge(samples, "migration_runs_in_progress") == 0
    assert gauge(samples, "migration_live_instances") == 1

    await alice.call("POST", f"{API}/migrations/{first['migration']}/run/", 202)
    _, samples = await scrape(client)
    assert gauge(samples, "migration_migrations", state="not_started") == 1
    assert gauge(samples, "migration_migrations", state="running") == 1
    assert gauge(samples, "migration_runs_in_progress") == 1

    await alice.call("POST", f"{API}/migrations/{first['migration']}/cancel/", 200)
    _, samples = await scrape(client)
    assert gauge(samples, "migration_migrations", state="error") == 1
    assert gauge(samples, "migration_runs_in_progress") == 0


async def test_no_username_ip_or_id_is_ever_in_the_scrape(client: TestClient[Any, Any]) -> None:
    alice = await User(client, "alice-the-operator").sign_up()
    plan = await alice.plan(ip="198.51.100.23")
    paths = [
        f"{API}/credentials/{plan['credentials']}/", f"{API}/mount_points/{plan['mount_points'][1]}/",
        f"{API}/work_loads/{plan['workload']}/", f"{API}/migration_targets/{plan['target']}/",
        f"{API}/migrations/{plan['migration']}/", f"{API}/migrations/{plan['migration']}/state/",
        f"{API}/work_loads/?ip=198.51.100.23", f"{API}/credentials/?username=administrator",
    ]
    for path in paths:
        await alice.call("GET", path, 200)
    await alice.call("POST", f"{API}/migrations/{plan['migration']}/run/", 202)
    text, samples = await scrape(client)
    for word in ("alice-the-operator", "198.51.100.23", "administrator", "C:\\\\", "pw-SECRET"):
        assert word not in text, word
    ids = {str(value) for key, value in plan.items() if key != "mount_points"} | {str(i) for i in plan["mount_points"]}
    routes = set()
    for (_name, labels), _value in samples.items():
        for label, value in labels:
            if label == "route":
                routes.add(value)
            elif label not in ("method", "status", "state", "le"):
                raise AssertionError(f"an unexpected label: {label}={value}")
    assert f"{API}/migrations/{{id}}/run" in routes
    assert not [route for route in routes if set(route.split("/")) & ids], routes


async def test_apps_count_apart_and_metrics_off_answers_404(aiohttp_client: Any) -> None:
    first = await aiohttp_client(make_app())
    second = await aiohttp_client(make_app())
    off = await aiohttp_client(create_app(make_services(), metrics=False))
    for _ in range(2):
        assert (await first.get("/health")).status == 200
    _, first_samples = await scrape(first)
    _, second_samples = await scrape(second)
    assert requests(first_samples, "/health", "GET", 200) == 2
    assert requests(second_samples, "/health", "GET", 200) == 0
    answer = await off.get("/metrics")
    assert answer.status == 404
    assert await answer.json() == {"detail": "Not found."}
    # The index links only what answers.
    assert "metrics" not in await (await off.get("/api/v1/")).json()
    assert (await (await first.get("/api/v1/")).json())["metrics"] == "/metrics"
