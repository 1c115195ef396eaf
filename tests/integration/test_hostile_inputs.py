"""A catalogue of hostile inputs: each is answered with a 4xx JSON error and
stores nothing (every list keeps its count, every object its fields), on
in-memory and SQLite storage. Look-alikes of SQL and path traversal are not
hostile to this service: they are stored verbatim and come back unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from entrypoints.http.app import MAX_BODY_BYTES

from .http_client import User, make_app

API = "/api/v1"
KINDS = ["credentials", "mount_points", "work_loads", "migration_targets", "migrations"]
JSON = {"Content-Type": "application/json"}


@pytest.fixture(params=["memory", "sqlite"])
async def client(request: pytest.FixtureRequest, aiohttp_client: Any, tmp_path: Path) -> TestClient[Any, Any]:
    storage = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'hostile.db'}"
    return await aiohttp_client(make_app(run_seconds=60, storage=storage))


@pytest.fixture
async def alice(client: TestClient[Any, Any]) -> User:
    return await User(client, "alice").sign_up()


@pytest.fixture
async def plan(alice: User) -> dict[str, Any]:
    return await alice.plan()


def _object_paths(plan: dict[str, Any]) -> list[str]:
    return [
        f"{API}/credentials/{plan['credentials']}/",
        f"{API}/mount_points/{plan['mount_points'][0]}/",
        f"{API}/work_loads/{plan['workload']}/",
        f"{API}/migration_targets/{plan['target']}/",
        f"{API}/migrations/{plan['migration']}/",
    ]


def _writes(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """Every operation that reads a body, on alice's objects."""
    creates = [("POST", f"{API}/{kind}/") for kind in KINDS]
    updates = [(method, path) for path in _object_paths(plan) for method in ("PUT", "PATCH")]
    public = [("POST", f"{API}/auth/"), ("POST", f"{API}/token/"), ("POST", f"{API}/token/refresh/")]
    return creates + updates + public


async def _snapshot(user: User, plan: dict[str, Any]) -> dict[str, Any]:
    """Everything alice can see: each list in full, each object of the plan."""
    lists = {kind: await user.call("GET", f"{API}/{kind}/?limit=1000", 200) for kind in KINDS}
    objects = {path: await user.call("GET", path, 200) for path in _object_paths(plan)}
    return {"lists": lists, "objects": objects}


async def _refused(user: User, method: str, path: str, data: bytes, headers: dict[str, str] = JSON) -> int:
    answer = await user.request(method, path, data=data, headers=headers)
    assert 400 <= answer.status < 500, f"{method} {path}: {answer.status} {await answer.text()}"
    assert answer.content_type == "application/json"
    assert "detail" in await answer.json()
    return answer.status


BODIES_NOT_AN_OBJECT = [b"[]", b'"text"', b"1", b"null", b"true", b"[{\"name\": \"C:\\\\\", \"size\": 1}]"]
MALFORMED = [
    b"",
    b"{",
    b'{"name": "C:\\\\", "size": 1',
    b"{'name': 'single quotes'}",
    b'{"size": NaN, "name": "x"}',
    b'{"size": Infinity, "name": "x"}',
]
DEEP_ARRAYS = b"[" * 20000 + b"]" * 20000
DEEP_OBJECTS = b'{"a":' * 8000 + b"1" + b"}" * 8000


async def test_bodies_over_the_limit_are_413_and_store_nothing(alice: User, plan: dict[str, Any]) -> None:
    before = await _snapshot(alice, plan)
    oversize = json.dumps({"name": "x" * MAX_BODY_BYTES, "size": 1}).encode()
    for method, path in _writes(plan):
        assert await _refused(alice, method, path, oversize) == 413, (method, path)
    assert await _snapshot(alice, plan) == before


@pytest.mark.parametrize(
    "body", [*BODIES_NOT_AN_OBJECT, *MALFORMED, DEEP_ARRAYS, DEEP_OBJECTS],
    ids=lambda body: body[:24].decode(errors="replace") or "empty",
)
async def test_not_a_json_object_is_400_and_stores_nothing(alice: User, plan: dict[str, Any], body: bytes) -> None:
    assert len(body) < MAX_BODY_BYTES, "this case is about shape, not size"
    before = await _snapshot(alice, plan)
    for method, path in _writes(plan):
        assert await _refused(alice, method, path, body) == 400, (method, path)
    assert await _snapshot(alice, plan) == before


UNSTORABLE_TEXT = {
    "an escaped NUL": b'"C:\\u0000"',
    "a raw NUL byte": b'"C:\x00"',
    "invalid UTF-8": b'"C:\xff\xfe"',
    "an overlong UTF-8 slash": b'"\xc0\xaf"',
    "a lone surrogate": b'"\\ud800"',
    "a NUL in a key": b'"ok", "\\u0000": 1',
}


@pytest.mark.parametrize("text", UNSTORABLE_TEXT.values(), ids=UNSTORABLE_TEXT.keys())
async def test_nul_bytes_invalid_utf8_and_lone_surrogates_are_400(
    alice: User, plan: dict[str, Any], text: bytes
) -> None:
    """In every string field of every body, and in the usernames of accounts."""
    before = await _snapshot(alice, plan)
    bodies = {
        f"{API}/credentials/": [b'{"username": %s, "password": "pw"}' % text,
                                b'{"username": "u", "password": %s}' % text,
                                b'{"username": "u", "password": "pw", "domain": %s}' % text],
        f"{API}/mount_points/": [b'{"name": %s, "size": 1}' % text],
        f"{API}/work_loads/": [b'{"ip": %s, "credentials": %d}' % (text, plan["credentials"])],
        f"{API}/migration_targets/": [b'{"cloud_type": %s, "cloud_credentials": %d}' % (text, plan["credentials"])],
        f"{API}/auth/": [b'{"username": %s, "password": "a long enough password"}' % text,
                         b'{"username": "mallory", "password": %s}' % text.replace(b'"C:', b'"a long enough password')],
        f"{API}/token/": [b'{"username": %s, "password": "a long enough password"}' % text],
        f"{API}/token/refresh/": [b'{"refresh": %s}' % text],
    }
    for path, variants in bodies.items():
        for body in variants:
            assert await _refused(alice, "POST", path, body) == 400, body
    for path in _object_paths(plan)[:2]:
        field = b"username" if "credentials" in path else b"name"
        assert await _refused(alice, "PATCH", path, b'{"%s": %s}' % (field, text)) == 400
    assert await _snapshot(alice, plan) == before
    # mallory was never registered
    login = {"username": "mallory", "password": "a long enough password"}
    answer = await alice.client.post(f"{API}/token/", json=login)
    assert answer.status == 401


async def test_duplicate_keys_are_400_naming_the_key(alice: User, plan: dict[str, Any]) -> None:
    """Which of two values a parser keeps differs between parsers: refuse both."""
    before = await _snapshot(alice, plan)
    body = b'{"name": "C:\\\\", "name": "D:\\\\", "size": 1}'
    answer = await alice.request("POST", f"{API}/mount_points/", data=body, headers=JSON)
    assert answer.status == 400
    assert (await answer.json())["errors"] == {"name": ["Give this field once."]}
    nested = b'{"username": "u", "password": "pw", "domain": "d", "domain": "e"}'
    assert await _refused(alice, "POST", f"{API}/credentials/", nested) == 400
    assert await _refused(alice, "PATCH", _object_paths(plan)[1], b'{"size": 1, "size": 2}') == 400
    assert await _snapshot(alice, plan) == before


async def test_wrong_content_types_are_415(alice: User, plan: dict[str, Any]) -> None:
    before = await _snapshot(alice, plan)
    body = json.dumps({"name": "Z:\\", "size": 1}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        headers = {"Content-Type": content_type} if content_type else {}
        for method, path in _writes(plan):
            status = await _refused(alice, method, path, body, headers=headers)
            assert status == 415, (content_type, method, path)
    assert await _snapshot(alice, plan) == before


def _base_bodies(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A valid body for each documented body schema, by component name."""
    return {
        "Register": {"username": "newcomer", "password": "a long enough password"},
        "Login": {"username": "alice", "password": "a long enough password"},
        "Refresh": {"refresh": "x"},
        "Credentials": {"username": "u", "password": "pw", "domain": "d"},
        "MountPoint": {"name": "Z:\\", "size": 1},
        "Workload": {"ip": "10.9.9.9", "credentials": plan["credentials"], "storage": []},
        "WorkloadReplace": {"ip": "10.0.0.1", "credentials": plan["credentials"], "storage": plan["mount_points"]},
    }


async def test_every_string_field_has_a_documented_maximum_that_is_enforced(
    alice: User, plan: dict[str, Any]
) -> None:
    """Every string of every body and query in the served document is bounded
    (maxLength or an enum), and one character more is refused with a 400
    naming the field."""
    document = await alice.call("GET", f"{API}/openapi.json", 200)
    schemas = document["components"]["schemas"]
    bodies = {
        operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        for operations in document["paths"].values()
        for operation in operations.values()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    }
    assert {"Credentials", "CredentialsPatch", "MountPoint", "Workload", "Register"} <= bodies
    # The one other body, an inventory (a form's file, or text/csv), is bounded as a whole.
    form = document["paths"][f"{API}/inventory/import/"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert form["schema"]["properties"]["file"]["maxLength"] == 10 * 2**20
    unbounded = []
    for name in sorted(bodies):
        for field, spec in schemas[name].get("properties", {}).items():
            if spec.get("type") == "string" and not spec.get("readOnly") and "enum" not in spec:
                if "maxLength" not in spec:
                    unbounded.append(f"{name}.{field}")
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                spec = parameter.get("schema", {})
                if spec.get("type") == "string" and "enum" not in spec and "maxLength" not in spec:
                    unbounded.append(f"{method.upper()} {path} ?{parameter['name']}")
    assert not unbounded, f"strings without a documented maximum: {unbounded}"

    before = await _snapshot(alice, plan)
    endpoints = {
        "Register": f"{API}/auth/", "Login": f"{API}/token/", "Refresh": f"{API}/token/refresh/",
        "Credentials": f"{API}/credentials/", "MountPoint": f"{API}/mount_points/", "Workload": f"{API}/work_loads/",
        "WorkloadReplace": f"{API}/work_loads/{plan['workload']}/",
    }
    checked = []
    for name, base in _base_bodies(plan).items():
        method = "PUT" if name.endswith("Replace") else "POST"
        for field, spec in schemas[name]["properties"].items():
            if spec.get("type") != "string" or spec.get("readOnly") or "enum" in spec:
                continue
            body = {**base, field: "a" * (spec["maxLength"] + 1)}
            answer = await alice.request(method, endpoints[name], json=body)
            assert answer.status == 400, (name, field, answer.status)
            assert field in (await answer.json())["errors"], (name, field)
            checked.append(f"{name}.{field}")
    assert {"Credentials.username", "Credentials.password", "Credentials.domain", "MountPoint.name",
            "Workload.ip", "Register.username", "Register.password"} <= set(checked)
    bounded = (("credentials", "username", 255), ("mount_points", "name", 255), ("work_loads", "ip", 45))
    for kind, parameter, limit in bounded:
        answer = await alice.request("GET", f"{API}/{kind}/?{parameter}={'a' * (limit + 1)}")
        assert answer.status == 400 and parameter in (await answer.json())["errors"]
    assert await _snapshot(alice, plan) == before


BEYOND_64_BITS = [2**63, 2**64, 10**30, -(2**63) - 1, -1]


@pytest.mark.parametrize("number", BEYOND_64_BITS)
async def test_integers_beyond_64_bits_and_negative_ids_are_400(
    alice: User, plan: dict[str, Any], number: int
) -> None:
    before = await _snapshot(alice, plan)
    cases = [
        ("POST", f"{API}/mount_points/", {"name": "Z:\\", "size": number}),
        ("POST", f"{API}/work_loads/", {"ip": "10.9.9.9", "credentials": number, "storage": []}),
        ("POST", f"{API}/work_loads/", {"ip": "10.9.9.9", "credentials": plan["credentials"], "storage": [number]}),
        ("POST", f"{API}/migration_targets/", {"cloud_type": "aws", "cloud_credentials": number}),
        ("POST", f"{API}/migrations/", {"source": number, "migration_target": plan["target"],
                                        "selected_mount_points": plan["mount_points"]}),
        ("PATCH", f"{API}/migrations/{plan['migration']}/", {"selected_mount_points": [number]}),
        ("PATCH", f"{API}/mount_points/{plan['mount_points'][0]}/", {"size": number}),
    ]
    for method, path, body in cases:
        answer = await alice.request(method, path, json=body)
        assert answer.status == 400, (method, path, body, answer.status)
        assert (await answer.json())["errors"], (method, path)
    for parameter in ("limit", "offset"):
        answer = await alice.request("GET", f"{API}/credentials/?{parameter}={number}")
        assert answer.status == 400
    answer = await alice.request("GET", f"{API}/migrations/?source={number}")
    assert answer.status == 400
    assert await _snapshot(alice, plan) == before


BAD_PATH_IDS = ["-1", "0", "abc", "1.5", "0x10", "1e3", "%20" + "1", "1%00", str(2**63), str(2**64), "9" * 40, "%2e%2e"]


@pytest.mark.parametrize("bad_id", BAD_PATH_IDS)
async def test_negative_non_numeric_and_huge_ids_in_paths_are_404(
    alice: User, plan: dict[str, Any], bad_id: str
) -> None:
    before = await _snapshot(alice, plan)
    targets = [(method, f"{API}/{kind}/{bad_id}/") for kind in KINDS for method in ("GET", "PUT", "PATCH", "DELETE")]
    targets += [("POST", f"{API}/migrations/{bad_id}/run/"), ("POST", f"{API}/migrations/{bad_id}/cancel/"),
                ("GET", f"{API}/migrations/{bad_id}/state/")]
    replacements = {
        "credentials": {"username": "u", "password": "pw"},
        "mount_points": {"name": "Z:\\", "size": 1},
        "work_loads": {"credentials": plan["credentials"], "storage": []},
        "migration_targets": {"cloud_type": "aws", "cloud_credentials": plan["credentials"]},
        "migrations": {"source": plan["workload"], "migration_target": plan["target"],
                       "selected_mount_points": plan["mount_points"]},
    }
    for method, path in targets:
        # A valid body, so that the id is the only thing wrong.
        kind = path.split("/")[3]
        body = replacements[kind] if method == "PUT" else {} if method == "PATCH" else None
        answer = await alice.request(method, path, json=body)
        expected = 404
        if bad_id == "%2e%2e" and path == f"{API}/{kind}/{bad_id}/":
            # ".." climbs out of the resource to the API's index of links (GET only): no object.
            expected = 200 if method == "GET" else 405
        assert answer.status == expected, (method, path, answer.status)
        assert answer.content_type == "application/json"
    assert await _snapshot(alice, plan) == before


LOOK_ALIKES = [
    "'; DROP TABLE mount_points; --",
    "\" OR \"1\"=\"1",
    "' OR 1=1 --",
    "1; SELECT * FROM users",
    "../../../../etc/passwd",
    "..\\..\\..\\windows\\system32",
    "/var/../../root",
    "%2e%2e%2f%2e%2e%2f",
    "$(rm -rf /)",
    "<script>alert(1)</script>",
    "{{7*7}}",
    "Ünïcödé ☃ 𝄞 مرحبا",
]


async def test_sql_and_path_traversal_look_alikes_are_stored_verbatim(alice: User, plan: dict[str, Any]) -> None:
    """Created (201), read back byte for byte, and found by an exact filter."""
    before = await _snapshot(alice, plan)
    created = []
    for text in LOOK_ALIKES:
        mount_point = await alice.call("POST", f"{API}/mount_points/", 201, json={"name": text, "size": 7})
        credentials = await alice.call(
            "POST", f"{API}/credentials/", 201, json={"username": text, "password": text, "domain": text}
        )
        assert (await alice.call("GET", f"{API}/mount_points/{mount_point['id']}/", 200))["name"] == text
        read = await alice.call("GET", f"{API}/credentials/{credentials['id']}/", 200)
        assert (read["username"], read["domain"]) == (text, text)
        found = await alice.call("GET", f"{API}/mount_points/", 200, params={"name": text})
        assert [item["id"] for item in found["results"]] == [mount_point["id"]]
        found = await alice.call("GET", f"{API}/credentials/", 200, params={"username": text, "domain": text})
        assert [item["id"] for item in found["results"]] == [credentials["id"]]
        created.append((mount_point["id"], credentials["id"]))
    after = await _snapshot(alice, plan)
    assert after["objects"] == before["objects"]
    assert after["lists"]["mount_points"]["count"] == before["lists"]["mount_points"]["count"] + len(LOOK_ALIKES)
    assert after["lists"]["credentials"]["count"] == before["lists"]["credentials"]["count"] + len(LOOK_ALIKES)
    for kind in ("work_loads", "migration_targets", "migrations"):
        assert after["lists"][kind] == before["lists"][kind]
