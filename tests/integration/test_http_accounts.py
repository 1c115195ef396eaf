"""Accounts: registration, tokens, refresh, the bearer challenge and the login throttle."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from entrypoints.http import create_app

from .http_client import PASSWORD, MovableClock, User, make_app, make_services

AUTH = "/api/v1/auth/"
TOKEN = "/api/v1/token/"
REFRESH = "/api/v1/token/refresh/"
PROTECTED = "/api/v1/credentials/"


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
async def client(aiohttp_client: Any, clock: MovableClock) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(make_services(clock=clock, access_ttl=3600, refresh_ttl=7200)))


async def test_register_answers_201_with_id_and_username_only(client: TestClient[Any, Any]) -> None:
    answer = await client.post(AUTH, json={"username": "alice.b+ops@x-y_z", "password": PASSWORD})
    assert answer.status == 201
    assert await answer.json() == {"id": 1, "username": "alice.b+ops@x-y_z"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "", "password": PASSWORD}, "username"),
        ({"username": "has space", "password": PASSWORD}, "username"),
        ({"username": "a" * 151, "password": PASSWORD}, "username"),
        ({"username": "slash/no", "password": PASSWORD}, "username"),
        ({"username": "bob", "password": "short7!"}, "password"),
        ({"password": PASSWORD}, "username"),
        ({"username": "bob"}, "password"),
        ({"username": 5, "password": PASSWORD}, "username"),
    ],
)
async def test_register_refuses_bad_username_or_password_naming_the_field(
    client: TestClient[Any, Any], body: dict[str, Any], field: str
) -> None:
    answer = await client.post(AUTH, json=body)
    assert answer.status == 400
    payload = await answer.json()
    assert field in payload["errors"] and payload["detail"]


async def test_register_refuses_a_taken_username(client: TestClient[Any, Any]) -> None:
    assert (await client.post(AUTH, json={"username": "alice", "password": PASSWORD})).status == 201
    answer = await client.post(AUTH, json={"username": "alice", "password": "another password"})
    assert answer.status == 400
    assert "username" in (await answer.json())["errors"]


async def test_token_answers_an_access_and_a_refresh_token(client: TestClient[Any, Any]) -> None:
    user = await User(client, "alice").sign_up()
    assert user.access and user.refresh and user.access != user.refresh
    assert await user.call("GET", PROTECTED, 200) == {"count": 0, "next": None, "previous": None, "results": []}


@pytest.mark.parametrize(
    "body", [{"username": "alice", "password": "wrong password"}, {"username": "nobody", "password": PASSWORD}]
)
async def test_token_refuses_a_wrong_username_or_password_with_401(
    client: TestClient[Any, Any], body: dict[str, str]
) -> None:
    await User(client, "alice").sign_up()
    answer = await client.post(TOKEN, json=body)
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert set(await answer.json()) == {"detail"}


async def test_refresh_gives_a_working_access_token(client: TestClient[Any, Any]) -> None:
    user = await User(client, "alice").sign_up()
    answer = await client.post(REFRESH, json={"refresh": user.refresh})
    assert answer.status == 200
    body = await answer.json()
    assert set(body) == {"access"}
    user.access = body["access"]
    await user.call("GET", PROTECTED, 200)


async def test_refresh_refuses_an_access_token_a_forged_one_and_an_expired_one(
    client: TestClient[Any, Any], clock: MovableClock
) -> None:
    user = await User(client, "alice").sign_up()
    forged = user.refresh[:-4] + ("AAAA" if not user.refresh.endswith("AAAA") else "BBBB")
    for token in (user.access, forged, "not-a-token"):
        answer = await client.post(REFRESH, json={"refresh": token})
        assert answer.status == 401, token
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    clock.advance(7200)
    assert (await client.post(REFRESH, json={"refresh": user.refresh})).status == 401


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer ", "Basic YWxpY2U6cGFzc3dvcmQ=", "Bearer not.a.token", "Token {access}"],
)
async def test_protected_paths_need_a_bearer_access_token(
    client: TestClient[Any, Any], authorization: str | None
) -> None:
    user = await User(client, "alice").sign_up()
    headers = {} if authorization is None else {"Authorization": authorization.format(access=user.access)}
    for method, path in [("GET", PROTECTED), ("POST", "/api/v1/migrations/1/run/"), ("GET", "/api/v1/work_loads/7")]:
        answer = await client.request(method, path, headers=headers)
        assert answer.status == 401, (method, path)
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert set(await answer.json()) == {"detail"}


async def test_a_refresh_token_is_not_an_access_token(client: TestClient[Any, Any]) -> None:
    user = await User(client, "alice").sign_up()
    answer = await client.get(PROTECTED, headers={"Authorization": f"Bearer {user.refresh}"})
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"


async def test_an_access_token_stops_working_when_it_expires(
    client: TestClient[Any, Any], clock: MovableClock
) -> None:
    user = await User(client, "alice").sign_up()
    clock.advance(3599)
    await user.call("GET", PROTECTED, 200)
    clock.advance(1)
    answer = await user.request("GET", PROTECTED)
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"


async def test_a_token_signed_with_another_key_is_refused(aiohttp_client: Any) -> None:
    first = await aiohttp_client(make_app(secret_key="a" * 32))
    second = await aiohttp_client(make_app(secret_key="b" * 32))
    user = await User(first, "alice").sign_up()
    await User(second, "alice").sign_up()
    answer = await second.get(PROTECTED, headers={"Authorization": f"Bearer {user.access}"})
    assert answer.status == 401


async def test_ten_failed_logins_throttle_the_username_until_the_window_passes(
    client: TestClient[Any, Any], clock: MovableClock
) -> None:
    await User(client, "alice").sign_up()
    wrong = {"username": "alice", "password": "wrong password"}
    for _ in range(10):
        assert (await client.post(TOKEN, json=wrong)).status == 401
    for body in (wrong, {"username": "alice", "password": PASSWORD}):
        answer = await client.post(TOKEN, json=body)
        assert answer.status == 429
        retry_after = int(answer.headers["Retry-After"])
        assert 1 <= retry_after <= 60
        # The body tells a person what the header tells a program.
        assert await answer.json() == {
            "detail": f"Too many failed logins for this username; try again in {retry_after} seconds."
        }
    other = await client.post(AUTH, json={"username": "bob", "password": PASSWORD})
    assert other.status == 201
    assert (await client.post(TOKEN, json={"username": "bob", "password": PASSWORD})).status == 200
    clock.advance(60)
    assert (await client.post(TOKEN, json={"username": "alice", "password": PASSWORD})).status == 200


async def test_account_paths_answer_without_the_trailing_slash(client: TestClient[Any, Any]) -> None:
    answer = await client.post(AUTH.rstrip("/"), json={"username": "alice", "password": PASSWORD})
    assert answer.status == 201
    answer = await client.post(TOKEN.rstrip("/"), json={"username": "alice", "password": PASSWORD})
    assert answer.status == 200
    refresh = (await answer.json())["refresh"]
    assert (await client.post(REFRESH.rstrip("/"), json={"refresh": refresh})).status == 200
