"""Two users, each with a full inventory: every operation of one on every
object of the other is a 404 that says no more than a missing id would, every
reference in a body to the other's ids is a 400, and no list, filter or error
message shows anything of the other's. Bob's objects survive unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from .http_client import User, make_app

API = "/api/v1"
KINDS = {
    "credentials": "credentials",
    "mount_points": "mount_points",
    "work_loads": "workload",
    "migration_targets": "target",
    "migrations": "migration",
}
MISSING_ID = 9_000_000


@pytest.fixture(params=["memory", "sqlite"])
async def client(request: pytest.FixtureRequest, aiohttp_client: Any, tmp_path: Path) -> TestClient[Any, Any]:
    storage = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'isolation.db'}"
    # Runs long enough that a running migration does not move during a test.
    return await aiohttp_client(make_app(run_seconds=3600, storage=storage))


@pytest.fixture
async def users(client: TestClient[Any, Any]) -> tuple[User, dict[str, Any], User, dict[str, Any]]:
    alice = await User(client, "alice").sign_up()
    bob = await User(client, "bob").sign_up()
    alice_plan = await alice.plan("10.0.0.1", ("C:\\", "D:\\"))
    bob_plan = await bob.plan("10.0.0.1", ("C:\\", "E:\\"))  # the same ip is fine across owners
    await bob.call("POST", f"{API}/migrations/{bob_plan['migration']}/run/", 202)
    return alice, alice_plan, bob, bob_plan


def _ids(plan: dict[str, Any], kind: str) -> list[int]:
    value = plan[KINDS[kind]]
    return list(value) if isinstance(value, list) else [value]


async def _everything(user: User) -> dict[str, Any]:
    return {kind: await user.call("GET", f"{API}/{kind}/?limit=1000", 200) for kind in KINDS}


def _valid_bodies(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """For each kind, a body valid for its owner (of `plan`)."""
    return {
        "credentials": {"username": "x", "password": "pw-SECRET-x"},
        "mount_points": {"name": "Z:\\", "size": 1},
        "work_loads": {"credentials": plan["credentials"], "storage": []},
        "migration_targets": {"cloud_type": "aws", "cloud_credentials": plan["credentials"]},
        "migrations": {"source": plan["workload"], "migration_target": plan["target"],
                       "selected_mount_points": plan["mount_points"]},
    }


async def test_every_operation_on_the_others_objects_is_404_like_a_missing_one(users: Any) -> None:
    alice, alice_plan, bob, bob_plan = users
    bobs_view = await _everything(bob)
    bodies = _valid_bodies(alice_plan)
    for kind in KINDS:
        for object_id in _ids(bob_plan, kind):
            operations = [
                ("GET", f"{API}/{kind}/{object_id}/", None),
                ("PUT", f"{API}/{kind}/{object_id}/", bodies[kind]),
                ("PATCH", f"{API}/{kind}/{object_id}/", {}),
                ("DELETE", f"{API}/{kind}/{object_id}/", None),
            ]
            if kind == "migrations":
                operations += [
                    ("POST", f"{API}/migrations/{object_id}/run/", None),
                    ("POST", f"{API}/migrations/{object_id}/cancel/", None),
                    ("GET", f"{API}/migrations/{object_id}/state/", None),
                ]
            for method, path, body in operations:
                foreign = await alice.request(method, path, json=body)
                missing = await alice.request(method, path.replace(f"/{object_id}/", f"/{MISSING_ID}/"), json=body)
                assert foreign.status == 404, (method, path, foreign.status)
                # The same answer as for an id nobody has: nothing tells "exists, not yours".
                assert await foreign.text() == (await missing.text()).replace(str(MISSING_ID), str(object_id)), (
                    method, path)
    assert await _everything(bob) == bobs_view, "bob's objects changed"
    assert (await bob.call("GET", f"{API}/migrations/{bob_plan['migration']}/state/", 200))["state"] == "running"


async def test_references_to_the_others_ids_are_400_naming_the_field(users: Any) -> None:
    alice, alice_plan, bob, bob_plan = users
    before = await _everything(alice)
    bobs_view = await _everything(bob)
    mine, theirs = alice_plan, bob_plan
    cases = [
        ("POST", f"{API}/work_loads/", {"ip": "10.0.0.9", "credentials": theirs["credentials"], "storage": []},
         "credentials"),
        ("POST", f"{API}/work_loads/", {"ip": "10.0.0.9", "credentials": mine["credentials"],
                                        "storage": [theirs["mount_points"][1]]}, "storage"),
        ("PATCH", f"{API}/work_loads/{mine['workload']}/", {"storage": theirs["mount_points"]}, "storage"),
        ("PATCH", f"{API}/work_loads/{mine['workload']}/", {"credentials": theirs["credentials"]}, "credentials"),
        ("POST", f"{API}/migration_targets/", {"cloud_type": "aws", "cloud_credentials": theirs["credentials"]},
         "cloud_credentials"),
        ("PATCH", f"{API}/migration_targets/{mine['target']}/", {"cloud_credentials": theirs["credentials"]},
         "cloud_credentials"),
        ("POST", f"{API}/migrations/", {"source": theirs["workload"], "migration_target": mine["target"],
                                        "selected_mount_points": mine["mount_points"]}, "source"),
        ("POST", f"{API}/migrations/", {"source": mine["workload"], "migration_target": theirs["target"],
                                        "selected_mount_points": mine["mount_points"]}, "migration_target"),
        ("POST", f"{API}/migrations/", {"source": mine["workload"], "migration_target": mine["target"],
                                        "selected_mount_points": theirs["mount_points"]}, "selected_mount_points"),
        ("PATCH", f"{API}/migrations/{mine['migration']}/", {"source": theirs["workload"]}, "source"),
    ]
    for method, path, body, field in cases:
        answer = await alice.request(method, path, json=body)
        assert answer.status == 400, (method, path, body, answer.status)
        errors = (await answer.json())["errors"]
        assert field in errors, (method, path, errors)
        # Worded as for an id that does not exist.
        missing_body = {
            key: ([MISSING_ID] * len(value) if isinstance(value, list) else MISSING_ID) if key == field else value
            for key, value in body.items()
        }
        missing = await (await alice.request(method, path, json=missing_body)).json()
        assert len(errors[field]) == len(missing["errors"][field])
    assert await _everything(alice) == before
    assert await _everything(bob) == bobs_view


async def test_lists_and_filters_show_only_ones_own(users: Any) -> None:
    alice, alice_plan, bob, bob_plan = users
    mine = await _everything(alice)
    for kind in KINDS:
        assert {item["id"] for item in mine[kind]["results"]} == set(_ids(alice_plan, kind)), kind
        assert mine[kind]["count"] == len(_ids(alice_plan, kind))
    filters = [
        ("credentials", {"username": "administrator"}),
        ("mount_points", {"name": "E:\\"}),  # only bob has E:
        ("mount_points", {"name": "C:\\"}),
        ("work_loads", {"ip": "10.0.0.1"}),
        ("migration_targets", {"cloud_type": "aws"}),
        ("migrations", {"state": "running"}),  # only bob's runs
        ("migrations", {"source": str(bob_plan["workload"])}),
        ("migrations", {"migration_target": str(bob_plan["target"])}),
    ]
    for kind, query in filters:
        found = await alice.call("GET", f"{API}/{kind}/", 200, params=query)
        assert {item["id"] for item in found["results"]} <= set(_ids(alice_plan, kind)), (kind, query)
        assert found["count"] == len(found["results"])
    for kind in KINDS:
        # Paging far beyond one's own objects shows nothing either.
        page = await alice.call("GET", f"{API}/{kind}/", 200, params={"offset": "1", "limit": "1000"})
        assert {item["id"] for item in page["results"]} <= set(_ids(alice_plan, kind))


async def test_no_answer_to_one_user_mentions_the_others_data(users: Any) -> None:
    """Bob's distinctive values appear in nothing alice can provoke."""
    alice, alice_plan, bob, bob_plan = users
    distinctive = "bobs-only-name"
    await bob.call("POST", f"{API}/credentials/", 201, json={"username": distinctive, "password": "pw-SECRET-b",
                                                              "domain": distinctive})
    texts = []
    for kind in KINDS:
        texts.append(await (await alice.request("GET", f"{API}/{kind}/?limit=1000")).text())
        for object_id in _ids(bob_plan, kind):
            texts.append(await (await alice.request("GET", f"{API}/{kind}/{object_id}/")).text())
            texts.append(await (await alice.request("DELETE", f"{API}/{kind}/{object_id}/")).text())
    texts.append(await (await alice.request("GET", f"{API}/credentials/", params={"username": distinctive})).text())
    for text in texts:
        assert distinctive not in text
        assert "E:\\\\" not in text and "bob" not in text
