"""Forged, stale and misused tokens: each is a 401 with `WWW-Authenticate:
Bearer` on every protected operation, and a refresh token forged the same
ways buys no access token."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from entrypoints.bootstrap import Services
from entrypoints.http import create_app
from migration_core import ListQuery

from .http_client import TEST_KEY, MovableClock, User, make_services

API = "/api/v1"
PROTECTED = [
    ("GET", f"{API}/credentials/"),
    # Reads that would fail otherwise (a bad query, an id beyond any): the token first.
    ("GET", f"{API}/credentials/?limit=many"),
    ("GET", f"{API}/mount_points/{2**63}/"),
    ("GET", f"{API}/waves/1/"),
    ("POST", f"{API}/mount_points/"),
    ("GET", f"{API}/work_loads/1/"),
    ("PATCH", f"{API}/migration_targets/1/"),
    ("DELETE", f"{API}/migrations/1/"),
    ("POST", f"{API}/migrations/1/run/"),
    ("GET", f"{API}/migrations/1/state/"),
]


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
def services(clock: MovableClock) -> Services:
    return make_services(clock=clock, access_ttl=3600, refresh_ttl=7200)


@pytest.fixture
async def client(aiohttp_client: Any, services: Services) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(services))


@pytest.fixture
async def alice(client: TestClient[Any, Any]) -> User:
    return await User(client, "alice").sign_up()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    pad = lambda text: text + "=" * (-len(text) % 4)  # noqa: E731
    return (
        json.loads(base64.urlsafe_b64decode(pad(header))),
        json.loads(base64.urlsafe_b64decode(pad(payload))),
        signature,
    )


def _claims(token: str) -> dict[str, Any]:
    return _parts(token)[1]


async def _refused_everywhere(user: User, token: str) -> None:
    for method, path in PROTECTED:
        answer = await user.client.request(
            method, path, headers={"Authorization": f"Bearer {token}"}, json={}
        )
        assert answer.status == 401, (method, path, answer.status)
        assert answer.headers.get("WWW-Authenticate", "").startswith("Bearer"), (method, path)
        assert "detail" in await answer.json()


async def test_the_genuine_token_works(alice: User) -> None:
    """The baseline the attacks below depart from."""
    await alice.call("GET", f"{API}/credentials/", 200)


async def test_alg_none_is_401(alice: User) -> None:
    claims = _claims(alice.access)
    for algorithm in ("none", "None", "NONE"):
        header = _b64(json.dumps({"alg": algorithm, "typ": "JWT"}).encode())
        unsigned = f"{header}.{_b64(json.dumps(claims).encode())}."
        await _refused_everywhere(alice, unsigned)
        # ... and with the genuine signature kept on it
        await _refused_everywhere(alice, unsigned + _parts(alice.access)[2])


async def test_a_token_signed_with_another_key_is_401(alice: User) -> None:
    claims = _claims(alice.access)
    for key in ("another key of at least 32 bytes!!", TEST_KEY):  # the raw setting, not the derived key
        await _refused_everywhere(alice, jwt.encode(claims, key, algorithm="HS256"))
    await _refused_everywhere(alice, jwt.encode(claims, "x" * 64, algorithm="HS512"))


async def test_an_expired_token_is_401(alice: User, clock: MovableClock) -> None:
    # Used while valid first, so the service has seen (and may remember) it.
    assert (await alice.request("GET", f"{API}/credentials/")).status == 200
    clock.advance(3600 + 1)
    await _refused_everywhere(alice, alice.access)


async def test_a_refresh_token_is_not_an_access_token(alice: User) -> None:
    await _refused_everywhere(alice, alice.refresh)
    # nor the other way round
    answer = await alice.client.post(f"{API}/token/refresh/", json={"refresh": alice.access})
    assert answer.status == 401
    assert answer.headers.get("WWW-Authenticate", "").startswith("Bearer")


async def test_a_deleted_users_token_is_401(alice: User, services: Services) -> None:
    await alice.call("GET", f"{API}/credentials/", 200)
    user_id = int(_claims(alice.access)["sub"])
    with services.storage.unit_of_work() as uow:
        uow.users.delete(user_id)
        uow.commit()
    await _refused_everywhere(alice, alice.access)
    answer = await alice.client.post(f"{API}/token/refresh/", json={"refresh": alice.refresh})
    assert answer.status == 401
    assert answer.headers.get("WWW-Authenticate", "").startswith("Bearer")


async def test_a_deleted_users_valid_write_is_401_and_writes_nothing(alice: User, services: Services) -> None:
    """A write finds its user in its own transaction: a body that would be
    written is refused all the same, and nothing of it stays."""
    user_id = int(_claims(alice.access)["sub"])
    with services.storage.unit_of_work() as uow:
        uow.users.delete(user_id)
        uow.commit()
    headers = {"Authorization": f"Bearer {alice.access}"}
    answer = await alice.client.post(f"{API}/mount_points/", json={"name": "C:\\", "size": 10}, headers=headers)
    assert answer.status == 401, await answer.text()
    with services.storage.unit_of_work(write=False) as uow:
        assert uow.mount_points.find(user_id, ListQuery()) == (0, [])


async def test_a_tampered_payload_is_401(alice: User, client: TestClient[Any, Any]) -> None:
    bob = await User(client, "bob").sign_up()
    header, claims, signature = alice.access.split(".")
    decoded = _claims(alice.access)
    tampered_claims = [
        {**decoded, "sub": _claims(bob.access)["sub"]},
        {**decoded, "exp": decoded["exp"] + 10**6},
        {**decoded, "typ": "access", "admin": True},
    ]
    for changed in tampered_claims:
        await _refused_everywhere(alice, f"{header}.{_b64(json.dumps(changed).encode())}.{signature}")
    # A flipped character in the signature, and garbage of every shape.
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    for token in (f"{header}.{claims}.{flipped}", f"{header}.{claims}", "a.b.c", "....", "x" * 5000, "é"):
        await _refused_everywhere(alice, token)


async def test_missing_or_wrong_schemes_are_401(alice: User) -> None:
    for value in ("", "Bearer", "Bearer ", f"Basic {alice.access}", f"Token {alice.access}", alice.access):
        for method, path in PROTECTED:
            answer = await alice.client.request(method, path, headers={"Authorization": value} if value else {})
            assert answer.status == 401, (value, method, path)
            assert answer.headers.get("WWW-Authenticate", "").startswith("Bearer")
