"""Every error answer is JSON with the documented status and body,
including aiohttp's own (404, 405, 413) and the unexpected (500); and health."""

from __future__ import annotations

import logging
from typing import Any

import attrs
import pytest
from aiohttp.test_utils import TestClient

from entrypoints.http import create_app
from migration_core import Storage
from migration_core.ports import UnitOfWork

from .http_client import PASSWORD, SECRET_MARKER, User, make_app, make_services

API = "/api/v1"


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient[Any, Any]:
    return await aiohttp_client(make_app())


@pytest.fixture
async def alice(client: TestClient[Any, Any]) -> User:
    return await User(client, "alice").sign_up()


async def test_invalid_missing_and_unknown_fields_are_400_per_field(alice: User) -> None:
    answer = await alice.call(
        "POST", f"{API}/mount_points/", 400, json={"name": "x" * 256, "surprise": 1, "size": -1}
    )
    assert answer["detail"]
    assert set(answer["errors"]) == {"name", "surprise", "size"}
    assert all(isinstance(m, str) for messages in answer["errors"].values() for m in messages)
    answer = await alice.call("POST", f"{API}/mount_points/", 400, json={})
    assert set(answer["errors"]) == {"name", "size"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "C:\\", "size": "10"}, "size"),
        ({"name": "C:\\", "size": 1.5}, "size"),
        ({"name": "C:\\", "size": True}, "size"),
        ({"name": "C:\\", "size": 2**63}, "size"),
        ({"name": "C:\\", "size": None}, "size"),
        ({"name": 7, "size": 1}, "name"),
        ({"name": "", "size": 1}, "name"),
    ],
)
async def test_wrong_types_and_bounds_are_400_naming_the_field(alice: User, body: dict[str, Any], field: str) -> None:
    answer = await alice.call("POST", f"{API}/mount_points/", 400, json=body)
    assert list(answer["errors"]) == [field]


async def test_a_bad_item_of_a_list_field_is_named_in_the_message(alice: User) -> None:
    credentials = (await alice.credentials())["id"]
    answer = await alice.call(
        "POST", f"{API}/work_loads/", 400, json={"ip": "10.0.0.1", "credentials": credentials, "storage": [1, "x"]}
    )
    assert list(answer["errors"]) == ["storage"]
    assert any("1" in message for message in answer["errors"]["storage"])


@pytest.mark.parametrize("raw", [b"{", b"", b"not json", b"[1, 2]", b'"text"', b"null", b"[" * 50000])
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_a_body_that_is_not_a_json_object_is_400_with_detail_only(alice: User, raw: bytes, method: str) -> None:
    created = await alice.mount_point()
    path = f"{API}/mount_points/" if method == "POST" else f"{API}/mount_points/{created['id']}/"
    answer = await alice.request(method, path, data=raw, headers={"Content-Type": "application/json"})
    assert answer.status == 400
    assert set(await answer.json()) == {"detail"}


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
async def test_a_write_without_json_content_type_is_415(alice: User, content_type: str | None) -> None:
    created = await alice.mount_point()
    headers = {"Content-Type": content_type} if content_type else {}
    for method, path in [
        ("POST", f"{API}/mount_points/"),
        ("PUT", f"{API}/mount_points/{created['id']}/"),
        ("PATCH", f"{API}/mount_points/{created['id']}"),
    ]:
        answer = await alice.request(method, path, data=b'{"name": "D:", "size": 1}', headers=headers)
        assert answer.status == 415, (method, content_type)
        assert set(await answer.json()) == {"detail"}
    answer = await alice.client.post(f"{API}/token/", data=b'{"username": "alice"}', headers=headers)
    assert answer.status == 415


async def test_json_with_a_charset_is_accepted(alice: User) -> None:
    answer = await alice.request(
        "POST", f"{API}/mount_points/", data=b'{"name": "D:", "size": 1}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert answer.status == 201


@pytest.mark.parametrize(
    "path", ["/nothing", f"{API}/nothing/", f"{API}/credentials/1/extra/", "/swagger/static/missing.js"]
)
async def test_an_unknown_route_is_404_json(alice: User, path: str) -> None:
    answer = await alice.request("GET", path)
    assert answer.status == 404
    assert answer.content_type == "application/json"
    assert set(await answer.json()) == {"detail"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", f"{API}/credentials/"), ("DELETE", f"{API}/mount_points"), ("POST", f"{API}/work_loads/1/"),
     ("GET", f"{API}/migrations/1/run/"), ("POST", f"{API}/migrations/1/state"), ("GET", f"{API}/token/")],
)
async def test_a_wrong_method_is_405_json_with_allow(alice: User, method: str, path: str) -> None:
    answer = await alice.request(method, path)
    assert answer.status == 405
    assert answer.headers["Allow"]
    assert set(await answer.json()) == {"detail"}


async def test_a_body_over_64_kib_is_413_json(alice: User) -> None:
    body = b'{"name": "' + b"x" * (64 * 1024) + b'", "size": 1}'
    json_type = {"Content-Type": "application/json"}
    answer = await alice.request("POST", f"{API}/mount_points/", data=body, headers=json_type)
    assert answer.status == 413
    assert await answer.json() == {"detail": "The request body is larger than 64 KiB."}


async def test_paths_without_the_trailing_slash_answer_directly(alice: User) -> None:
    await alice.plan()
    kinds = ("/credentials", "/mount_points", "/work_loads", "/migration_targets", "/migrations")
    for path in (*kinds, "/migrations/1", "/migrations/1/state"):
        answer = await alice.request("GET", f"{API}{path}", allow_redirects=False)
        assert answer.status == 200, path


@attrs.define
class BreakableStorage:
    """Real storage that starts failing like a lost disk once `broken` is set."""

    inner: Storage
    broken: bool = False

    def unit_of_work(self, *, write: bool = True, undo_nested: bool = True) -> UnitOfWork:
        if self.broken:
            raise RuntimeError("disk I/O error near /var/lib/secret-path")
        return self.inner.unit_of_work(write=write, undo_nested=undo_nested)

    def check(self) -> None:
        if self.broken:
            raise RuntimeError("disk I/O error")
        self.inner.check()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
async def breakable(aiohttp_client: Any) -> tuple[TestClient[Any, Any], BreakableStorage]:
    services = make_services()
    storage = BreakableStorage(services.storage)
    return await aiohttp_client(create_app(attrs.evolve(services, storage=storage))), storage


async def test_an_unexpected_error_is_a_bare_500_logged_with_its_traceback(
    breakable: tuple[TestClient[Any, Any], BreakableStorage], caplog: pytest.LogCaptureFixture
) -> None:
    client, storage = breakable
    user = await User(client, "alice").sign_up()
    storage.broken = True
    with caplog.at_level(logging.ERROR):
        answer = await user.request("GET", f"{API}/credentials/")
    assert answer.status == 500
    assert await answer.json() == {"detail": "Internal server error"}
    assert "Traceback" in caplog.text and "disk I/O error" in caplog.text


async def test_health_is_ok_while_storage_answers_and_503_json_when_not(
    breakable: tuple[TestClient[Any, Any], BreakableStorage],
) -> None:
    client, storage = breakable
    for path in ("/health", "/health/"):
        answer = await client.get(path)
        assert answer.status == 200
        assert await answer.json() == {"status": "ok"}
    storage.broken = True
    answer = await client.get("/health")
    assert answer.status == 503
    assert set(await answer.json()) == {"detail"}


async def test_no_log_line_holds_a_password_or_a_token(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        user = await User(client, "alice").sign_up()
        await user.credentials("admin")
        await user.request("GET", f"{API}/credentials/?username=admin")
        await client.post(f"{API}/token/refresh/", json={"refresh": user.refresh})
        await client.post(f"{API}/token/", json={"username": "alice", "password": "wrong password"})
    logged = caplog.text
    assert "aiohttp.access" in {record.name for record in caplog.records}
    for secret in (PASSWORD, "wrong password", SECRET_MARKER, user.access, user.refresh):
        assert secret not in logged


@pytest.mark.parametrize(
    ("path", "noun"),
    [
        ("credentials", "Credentials"),
        ("mount_points", "Mount point"),
        ("work_loads", "Workload"),
        ("migration_targets", "Migration target"),
        ("migrations", "Migration"),
    ],
)
async def test_a_missing_object_is_named_in_the_singular(alice: User, path: str, noun: str) -> None:
    answer = await alice.call("GET", f"/api/v1/{path}/99/", 404)
    assert answer == {"detail": f"{noun} 99 not found."}
