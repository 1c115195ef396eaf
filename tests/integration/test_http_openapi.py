"""The OpenAPI 3 document describes every path, body and answer and
the bearer scheme; Swagger UI is served from local files; schema.yaml at the
repository root is the served document."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp_apigami import docs

from entrypoints.http.openapi import openapi_document, setup_openapi

from .http_client import make_app

ROOT = Path(__file__).resolve().parents[2]
PUBLIC_OPERATIONS = {
    ("post", "/api/v1/auth/"), ("post", "/api/v1/token/"), ("post", "/api/v1/token/refresh/"), ("get", "/health"),
    ("get", "/api/v1/"),
}
CSV_BODIES = {"/api/v1/inventory/import/"}
CSV_ANSWERS = {("get", "/api/v1/inventory/export/", "200")}
RESOURCES = ["credentials", "mount_points", "work_loads", "migration_targets", "migrations", "waves"]
STREAM = "/api/v1/events/stream/"


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient[Any, Any]:
    return await aiohttp_client(make_app())


@pytest.fixture
async def document(client: TestClient[Any, Any]) -> dict[str, Any]:
    answer = await client.get("/api/v1/openapi.json")
    assert answer.status == 200
    return await answer.json()  # type: ignore[no-any-return]


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield method, path, operation


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return document["components"]["schemas"][name]  # type: ignore[no-any-return]
    return schema


async def test_the_document_is_openapi_3_and_needs_no_token(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.0.3"
    assert document["info"]["title"] and document["info"]["version"]
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
    }
    assert document["security"] == [{"bearerAuth": []}]


async def test_every_path_and_method_of_the_spec_is_documented(document: dict[str, Any]) -> None:
    expected = set(PUBLIC_OPERATIONS)
    for resource in RESOURCES:
        expected |= {("get", f"/api/v1/{resource}/"), ("post", f"/api/v1/{resource}/")}
        expected |= {(m, f"/api/v1/{resource}/{{id}}/") for m in ("get", "put", "patch", "delete")}
    expected |= {("post", "/api/v1/migrations/{id}/sync/"), ("post", "/api/v1/migrations/{id}/cutover/"),
                 ("post", "/api/v1/waves/{id}/cutover/")}
    expected |= {("post", "/api/v1/migrations/{id}/run/"), ("post", "/api/v1/migrations/{id}/cancel/"),
                 ("get", "/api/v1/migrations/{id}/state/"), ("get", "/api/v1/migrations/{id}/events/"),
                 ("get", "/api/v1/events/stream/")}
    expected |= {("post", "/api/v1/waves/{id}/run/"), ("post", "/api/v1/waves/{id}/cancel/"),
                 ("get", "/api/v1/waves/{id}/state/")}
    expected |= {("post", "/api/v1/inventory/import/"), ("get", "/api/v1/inventory/export/")}
    expected |= {("post", "/api/v1/work_loads/{id}/check/"), ("post", "/api/v1/work_loads/{id}/discover/")}
    expected |= {("post", "/api/v1/migrations/{id}/preflight/"), ("post", "/api/v1/waves/{id}/preflight/"),
                 ("post", "/api/v1/inventory/discover/")}
    assert {(method, path) for method, path, _ in _operations(document)} == expected


async def test_every_operation_documents_its_answers_bodies_and_security(document: dict[str, Any]) -> None:
    operation_ids = set()
    for method, path, operation in _operations(document):
        operation_ids.add(operation["operationId"])
        responses = operation["responses"]
        assert any(code.startswith("2") for code in responses), (method, path)
        assert "500" in responses
        for code, response in responses.items():
            assert response["description"], (method, path, code)
            if (method, path, code) in CSV_ANSWERS:
                assert list(response["content"]) == ["text/csv"], (method, path, code)
            elif (method, path, code) == ("get", STREAM, "200"):
                assert set(response["content"]) == {"text/event-stream"}
            elif code != "204":
                assert "application/json" in response["content"], (method, path, code)
        if (method, path) in PUBLIC_OPERATIONS:
            assert operation["security"] == [], (method, path)
        else:
            assert "security" not in operation  # the document's default: bearer
            assert "WWW-Authenticate" in responses["401"]["headers"]
        actions = ("/run/", "/cancel/", "/check/", "/discover/", "/sync/", "/preflight/")  # bodiless
        if method in ("post", "put", "patch") and not any(action in path for action in actions):
            assert operation["requestBody"]["required"] is True
            assert {"400", "413", "415"} <= set(responses)
            bad = _resolve(document, responses["400"]["content"]["application/json"]["schema"])["properties"]
            assert bad.keys() == ({"detail", "rows", "errors"} if path in CSV_BODIES else {"detail", "errors"})
            # An import's text/csv body is said in its description (generators know no text/csv).
            media = ["multipart/form-data"] if path in CSV_BODIES else ["application/json"]
            assert list(operation["requestBody"]["content"]) == media, path
        if "{id}" in path:
            assert {"404", "401"} <= set(responses)
            assert [p["schema"]["type"] for p in operation["parameters"] if p["in"] == "path"] == ["integer"]
    assert "Retry-After" in document["paths"]["/api/v1/token/"]["post"]["responses"]["429"]["headers"]
    assert len(operation_ids) == len(list(_operations(document)))


async def test_lists_document_paging_filters_and_ordering(document: dict[str, Any]) -> None:
    filters = {
        "credentials": {"username", "domain"}, "mount_points": {"name"}, "work_loads": {"ip"},
        "migration_targets": {"cloud_type"}, "migrations": {"state", "source", "migration_target", "wave"},
        "waves": {"name"},
    }
    lists = {f"/api/v1/{resource}/": names for resource, names in filters.items()}
    lists["/api/v1/migrations/{id}/events/"] = {"id", "kind"}
    for path, names in lists.items():
        parameters = {p["name"]: p for p in document["paths"][path]["get"]["parameters"]}
        assert set(parameters) == {"limit", "offset", "ordering"} | names
        assert parameters["limit"]["schema"]["maximum"] == 1000
        assert parameters["ordering"]["schema"]["enum"] == ["id", "-id"]
        answer = document["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        assert set(_resolve(document, answer["schema"])["properties"]) == {"count", "next", "previous", "results"}


async def test_wire_fields_are_documented_and_the_password_is_write_only(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["Credentials"]["properties"]["password"]["writeOnly"] is True
    assert schemas["Credentials"]["properties"]["private_key"]["writeOnly"] is True
    assert schemas["Credentials"]["properties"]["has_private_key"]["readOnly"] is True
    assert schemas["Workload"]["properties"]["host_key"]["readOnly"] is True
    wire = {
        "Credentials": {"id", "username", "password", "domain", "private_key", "has_private_key"},
        "MountPoint": {"id", "name", "size"},
        "Workload": {"id", "ip", "credentials", "storage", "port", "os", "root", "host_key", "last_check"},
        "MigrationTarget": {"id", "cloud_type", "cloud_credentials", "target_vm", "host", "root"},
        "Migration": {"id", "source", "migration_target", "selected_mount_points", "state", "progress",
                      "error", "started_at", "finished_at", "wave", "phase", "mode", "sync_interval",
                      "cutover_at", "pre_cutover", "post_cutover", "readiness"},
        "Wave": {"id", "name", "migrations"},
    }
    for name, fields in wire.items():
        assert set(schemas[name]["properties"]) == fields, name
        assert schemas[name]["properties"]["id"]["readOnly"] is True
    assert "password" not in str(schemas["TargetVm"])
    assert set(schemas["MigrationRunState"]["properties"]) == {
        "state", "progress", "error", "finished", "bytes_total", "bytes_copied", "eta", "volumes",
        "phase", "queue_position", "syncs", "last_synced_at", "last_sync_seconds", "next_sync_at", "cutover_at",
        "last_sync_error",
    }
    # SPEC 3's four, and `files`: what a real run's page shows passing (SPEC 2.8, 5).
    assert set(schemas["VolumeCopy"]["properties"]) == {"mount_point", "name", "size", "copied", "files"}
    assert set(schemas["MigrationEvent"]["properties"]) == {"id", "migration", "at", "kind", "detail", "actor"}
    assert schemas["MigrationEvent"]["properties"]["kind"]["enum"] == [
        "created", "updated", "run_requested", "started", "volume_copied", "succeeded", "failed",
        "cancelled", "interrupted", "queued", "sync_started", "synced", "sync_failed", "cutover_requested",
        "hook_ran", "preflight",
    ]


async def test_every_writable_string_has_a_max_length_and_every_integer_bounds(document: dict[str, Any]) -> None:
    def check(schema: dict[str, Any], where: str) -> None:
        if schema.get("readOnly"):
            return
        if schema.get("type") == "string" and "enum" not in schema:
            assert "maxLength" in schema, where
        if schema.get("type") == "integer":
            assert "minimum" in schema and "maximum" in schema, where
        for name, inner in schema.get("properties", {}).items():
            check(inner, f"{where}.{name}")
        if "items" in schema:
            check(schema["items"], f"{where}[]")

    requests = set()
    for method, path, operation in _operations(document):
        if "requestBody" in operation and path not in CSV_BODIES:
            requests.add(operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1])
        for parameter in operation["parameters"]:
            check(parameter["schema"], f"{method} {path} ?{parameter['name']}")
    assert {"Register", "Login", "Refresh", "Credentials", "CredentialsPatch", "WorkloadReplace"} <= requests
    for name in requests:
        check(document["components"]["schemas"][name], name)


async def test_swagger_ui_is_served_from_local_files(client: TestClient[Any, Any]) -> None:
    for path in ("/swagger/", "/swagger"):
        answer = await client.get(path, allow_redirects=False)
        assert answer.status == 200
        assert answer.content_type == "text/html"
    page = await (await client.get("/swagger/")).text()
    assert "/api/v1/openapi.json" in page
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and all(asset.startswith("/swagger/static/") for asset in assets), assets
    for asset in assets:
        assert (await client.get(asset)).status == 200, asset


async def test_schema_yaml_is_the_served_document(document: dict[str, Any]) -> None:
    committed = yaml.safe_load((ROOT / "schema.yaml").read_text(encoding="utf-8"))
    assert committed == document, "schema.yaml is stale: run `make schema`"


async def test_the_document_is_valid_against_the_openapi_3_0_meta_schema(document: dict[str, Any]) -> None:
    import jsonschema_rs
    from schemathesis.specs.openapi.definitions import OPENAPI_30

    validator = jsonschema_rs.validator_for(OPENAPI_30)
    errors = [f"{list(e.instance_path)}: {e.message[:200]}" for e in validator.iter_errors(document)]
    assert errors == []


def test_each_set_of_routes_has_its_own_document_built_once() -> None:
    """Documents are kept by the routes they describe: an app with one route
    more is described with it, and an app like an earlier one shares its document."""

    @docs(summary="the first", responses={200: {"description": "one"}})
    async def first(_request: web.Request) -> web.Response:
        raise AssertionError("documented only")

    @docs(summary="the second", responses={200: {"description": "two"}})
    async def second(_request: web.Request) -> web.Response:
        raise AssertionError("documented only")

    def document_of(*paths: str) -> dict[str, Any]:
        app = web.Application()
        for path, handler in zip(paths, (first, second), strict=False):
            app.router.add_get(path, handler, allow_head=False)
        setup_openapi(app)
        return openapi_document(app)

    one = document_of("/kept-one/")
    both = document_of("/kept-one/", "/kept-two/")
    assert set(one["paths"]) == {"/kept-one/"}
    assert set(both["paths"]) == {"/kept-one/", "/kept-two/"}
    assert both["paths"]["/kept-two/"]["get"]["summary"] == "the second"
    assert document_of("/kept-one/") is one
