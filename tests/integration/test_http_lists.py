"""Lists: paging, filters by exact value, ordering, and links that keep them."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from .http_client import User, make_app

API = "/api/v1"


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient[Any, Any]:
    return await aiohttp_client(make_app())


@pytest.fixture
async def alice(client: TestClient[Any, Any]) -> User:
    return await User(client, "alice").sign_up()


async def _mount_points(user: User, count: int) -> list[int]:
    return [(await user.mount_point(f"/v{i}", i))["id"] for i in range(count)]


async def test_a_list_answers_count_next_previous_results_with_default_limit_100(alice: User) -> None:
    ids = await _mount_points(alice, 101)
    first = await alice.call("GET", f"{API}/mount_points/", 200)
    assert list(first) == ["count", "next", "previous", "results"]
    assert first["count"] == 101 and first["previous"] is None
    assert [m["id"] for m in first["results"]] == ids[:100]
    following = URL(first["next"])
    assert following.is_absolute() and following.path == f"{API}/mount_points/"
    assert following.query == {"limit": "100", "offset": "100"}
    second = await alice.call("GET", following.path_qs, 200)
    assert [m["id"] for m in second["results"]] == ids[100:]
    assert second["next"] is None
    assert URL(second["previous"]).query == {"limit": "100", "offset": "0"}


async def test_links_keep_filters_and_ordering(alice: User) -> None:
    for i in range(5):
        await alice.credentials(f"user{i}", domain="CORP" if i % 2 == 0 else "LAB")
    page = await alice.call("GET", f"{API}/credentials?domain=CORP&ordering=-id&limit=1&offset=1", 200)
    assert page["count"] == 3
    assert [c["username"] for c in page["results"]] == ["user2"]
    assert URL(page["next"]).query == {"domain": "CORP", "ordering": "-id", "limit": "1", "offset": "2"}
    assert URL(page["previous"]).query == {"domain": "CORP", "ordering": "-id", "limit": "1", "offset": "0"}
    assert URL(page["next"]).path == f"{API}/credentials"


async def test_ordering_by_id_both_ways(alice: User) -> None:
    ids = await _mount_points(alice, 3)
    assert [m["id"] for m in (await alice.call("GET", f"{API}/mount_points/?ordering=id", 200))["results"]] == ids
    descending = (await alice.call("GET", f"{API}/mount_points/?ordering=-id", 200))["results"]
    assert [m["id"] for m in descending] == ids[::-1]


async def test_limit_1000_is_allowed_and_offset_past_the_end_is_empty(alice: User) -> None:
    await _mount_points(alice, 2)
    assert len((await alice.call("GET", f"{API}/mount_points/?limit=1000", 200))["results"]) == 2
    past = await alice.call("GET", f"{API}/mount_points/?offset=5", 200)
    assert past["count"] == 2 and past["results"] == [] and past["next"] is None
    assert URL(past["previous"]).query["offset"] == "0"


async def test_each_filter_matches_exact_values(alice: User) -> None:
    plan = await alice.plan(ip="10.0.0.1")
    other_credentials = await alice.credentials("svc", domain="LAB")
    other_mount_point = await alice.mount_point("C:\\", 5)
    other_workload = await alice.workload("10.0.0.2", other_credentials["id"], [other_mount_point["id"]])
    other_target = await alice.target(other_credentials["id"], "azure")
    other = await alice.migration(other_workload["id"], other_target["id"], [other_mount_point["id"]])
    await alice.call("POST", f"{API}/migrations/{other['id']}/run/", 202)

    async def ids(query: str) -> list[int]:
        return [o["id"] for o in (await alice.call("GET", f"{API}/{query}", 200))["results"]]

    assert await ids("credentials/?username=svc") == [other_credentials["id"]]
    assert await ids("credentials/?username=SVC") == []
    assert await ids("credentials/?domain=LAB") == [other_credentials["id"]]
    assert await ids("credentials/?domain=") == [plan["credentials"]]
    assert await ids("mount_points/?name=C:\\") == [plan["mount_points"][0], other_mount_point["id"]]
    assert await ids("work_loads/?ip=10.0.0.2") == [other_workload["id"]]
    assert await ids("migration_targets/?cloud_type=azure") == [other_target["id"]]
    assert await ids("migrations/?state=running") == [other["id"]]
    assert await ids("migrations/?state=not_started") == [plan["migration"]]
    assert await ids(f"migrations/?source={plan['workload']}") == [plan["migration"]]
    assert await ids(f"migrations/?migration_target={other_target['id']}") == [other["id"]]
    assert await ids(f"migrations/?source={plan['workload']}&state=running") == []


async def test_lists_show_only_the_callers_objects(client: TestClient[Any, Any], alice: User) -> None:
    bob = await User(client, "bob").sign_up()
    await alice.plan()
    for kind in ("credentials", "mount_points", "work_loads", "migration_targets", "migrations"):
        assert (await alice.call("GET", f"{API}/{kind}/", 200))["count"] >= 1
        empty = {"count": 0, "next": None, "previous": None, "results": []}
        assert await bob.call("GET", f"{API}/{kind}", 200) == empty


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("mount_points/?limit=1001", "limit"),
        ("mount_points/?limit=0", "limit"),
        ("mount_points/?limit=-1", "limit"),
        ("mount_points/?limit=ten", "limit"),
        ("mount_points/?offset=-1", "offset"),
        ("mount_points/?offset=1.5", "offset"),
        ("mount_points/?ordering=name", "ordering"),
        ("mount_points/?size=5", "size"),
        ("mount_points/?limit=1&limit=2", "limit"),
        ("credentials/?password=x", "password"),
        ("migration_targets/?cloud_type=gcp", "cloud_type"),
        ("migrations/?state=done", "state"),
        ("migrations/?source=abc", "source"),
        ("migrations/?source=0", "source"),
        ("migrations/?migration_target=1.0", "migration_target"),
        ("work_loads/?ip=" + "1" * 46, "ip"),
        ("work_loads/?ip=10.0.0.300", "ip"),
        ("work_loads/?ip=server-7", "ip"),
    ],
)
async def test_a_bad_filter_or_paging_value_is_400_naming_it(alice: User, query: str, field: str) -> None:
    answer = await alice.call("GET", f"{API}/{query}", 400)
    assert list(answer["errors"]) == [field]
    assert answer["detail"]
