"""The five resources of the API (README, "The API at a glance"): create, read, replace, patch, delete, field
names on the wire, references, conflicts, owner isolation) and the migration
actions."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from .http_client import SECRET_MARKER, User, make_app

API = "/api/v1"


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient[Any, Any]:
    return await aiohttp_client(make_app(run_seconds=60))


@pytest.fixture
async def alice(client: TestClient[Any, Any]) -> User:
    return await User(client, "alice").sign_up()


@pytest.fixture
async def bob(client: TestClient[Any, Any]) -> User:
    return await User(client, "bob").sign_up()


# --- the generic contract, resource by resource ------------------------------


async def _credentials_case(user: User) -> dict[str, Any]:
    return {
        "path": f"{API}/credentials/",
        "create": {"username": "admin", "password": f"{SECRET_MARKER}-1", "domain": "CORP"},
        "created": {"username": "admin", "domain": "CORP", "has_private_key": False},
        "replace": {"username": "root", "password": f"{SECRET_MARKER}-2"},
        "replaced": {"username": "root", "domain": "", "has_private_key": False},
        "patch": {"domain": "LAB"},
        "patched": {"username": "root", "domain": "LAB", "has_private_key": False},
    }


async def _mount_point_case(user: User) -> dict[str, Any]:
    return {
        "path": f"{API}/mount_points/",
        "create": {"name": "C:\\", "size": 100},
        "created": {"name": "C:\\", "size": 100},
        "replace": {"name": "/var", "size": 2**63 - 1},
        "replaced": {"name": "/var", "size": 2**63 - 1},
        "patch": {"size": 0},
        "patched": {"name": "/var", "size": 0},
    }


async def _workload_case(user: User) -> dict[str, Any]:
    first = (await user.credentials("first"))["id"]
    second = (await user.credentials("second"))["id"]
    c = (await user.mount_point("C:\\"))["id"]
    d = (await user.mount_point("D:\\"))["id"]
    machine = {"port": 22, "os": None, "root": "/", "host_key": None, "last_check": None}
    return {
        "path": f"{API}/work_loads/",
        "create": {"ip": "10.0.0.7", "credentials": first, "storage": [c]},
        "created": {"ip": "10.0.0.7", "credentials": first, "storage": [c], **machine},
        "replace": {"credentials": second, "storage": [d, c], "port": 2222, "os": "linux", "root": "/mnt/snap/"},
        "replaced": {
            "ip": "10.0.0.7", "credentials": second, "storage": [d, c],
            **machine, "port": 2222, "os": "linux", "root": "/mnt/snap",
        },
        "patch": {"storage": [], "os": None},
        "patched": {
            "ip": "10.0.0.7", "credentials": second, "storage": [], **machine, "port": 2222, "root": "/mnt/snap",
        },
    }


async def _target_case(user: User) -> dict[str, Any]:
    first = (await user.credentials("first"))["id"]
    second = (await user.credentials("second"))["id"]
    host = (await user.workload("127.0.0.2", first, []))["id"]
    simulated = {"target_vm": None, "host": None, "root": None}
    return {
        "path": f"{API}/migration_targets/",
        "create": {"cloud_type": "aws", "cloud_credentials": first},
        "created": {"cloud_type": "aws", "cloud_credentials": first, **simulated},
        "replace": {"cloud_type": "vsphere", "cloud_credentials": second, "host": host, "root": "/landing/"},
        "replaced": {
            "cloud_type": "vsphere", "cloud_credentials": second, "target_vm": None, "host": host, "root": "/landing",
        },
        "patch": {"cloud_type": "azure", "host": None},
        "patched": {"cloud_type": "azure", "cloud_credentials": second, **simulated},
    }


async def _migration_case(user: User) -> dict[str, Any]:
    plan = await user.plan()
    other_target = (await user.target(plan["credentials"], "vcloud"))["id"]
    c, d = plan["mount_points"]
    fresh = {
        "state": "not_started", "progress": 0, "error": None, "started_at": None, "finished_at": None, "wave": None,
        "readiness": None,
        "phase": None, "mode": "cold", "sync_interval": 3600, "cutover_at": None, "pre_cutover": None,
        "post_cutover": None,
    }
    source = {"source": plan["workload"]}
    return {
        "path": f"{API}/migrations/",
        "create": {"source": plan["workload"], "migration_target": plan["target"], "selected_mount_points": [c]},
        "created": {**source, "migration_target": plan["target"], "selected_mount_points": [c], **fresh},
        "replace": {"source": plan["workload"], "migration_target": other_target, "selected_mount_points": [c, d]},
        "replaced": {**source, "migration_target": other_target, "selected_mount_points": [c, d], **fresh},
        "patch": {"selected_mount_points": [d]},
        "patched": {**source, "migration_target": other_target, "selected_mount_points": [d], **fresh},
    }


async def _wave_case(user: User) -> dict[str, Any]:
    first = (await user.plan("10.0.0.1"))["migration"]
    second = (await user.plan("10.0.0.2"))["migration"]
    return {
        "path": f"{API}/waves/",
        "create": {"name": "wave 1", "migrations": [first]},
        "created": {"name": "wave 1", "migrations": [first]},
        "replace": {"name": "wave 2", "migrations": [second, first]},
        "replaced": {"name": "wave 2", "migrations": [second, first]},
        "patch": {"migrations": []},
        "patched": {"name": "wave 2", "migrations": []},
    }


CASES = {
    "credentials": _credentials_case,
    "mount_points": _mount_point_case,
    "work_loads": _workload_case,
    "migration_targets": _target_case,
    "migrations": _migration_case,
    "waves": _wave_case,
}


# What a PUT must carry: every writable field but a credentials'
# domain, which defaults to "", and a workload's ip, which is set on create.
REQUIRED_ON_REPLACE = {
    "credentials": ["username", "password"],
    "mount_points": ["name", "size"],
    "work_loads": ["credentials", "storage"],
    "migration_targets": ["cloud_type", "cloud_credentials"],
    "migrations": ["source", "migration_target", "selected_mount_points"],
    "waves": ["name", "migrations"],
}


@pytest.mark.parametrize("kind", CASES)
async def test_a_put_without_a_writable_field_is_400_naming_it_and_changes_nothing(alice: User, kind: str) -> None:
    case = await CASES[kind](alice)
    created = await alice.call("POST", case["path"], 201, json=case["create"])
    item = f"{case['path']}{created['id']}/"
    assert set(REQUIRED_ON_REPLACE[kind]) <= set(case["replace"])
    for field in REQUIRED_ON_REPLACE[kind]:
        body = {name: value for name, value in case["replace"].items() if name != field}
        answer = await alice.call("PUT", item, 400, json=body)
        assert list(answer["errors"]) == [field], answer
    assert await alice.call("GET", item, 200) == created


@pytest.mark.parametrize("kind", CASES)
async def test_create_read_replace_patch_list_delete(alice: User, kind: str) -> None:
    case = await CASES[kind](alice)
    path = case["path"]
    created = await alice.call("POST", path, 201, json=case["create"])
    assert created == {"id": created["id"], **case["created"]}
    item = f"{path}{created['id']}/"
    assert await alice.call("GET", item, 200) == created
    assert await alice.call("GET", item.rstrip("/"), 200) == created
    assert await alice.call("PUT", item, 200, json=case["replace"]) == {"id": created["id"], **case["replaced"]}
    patched = await alice.call("PATCH", item.rstrip("/"), 200, json=case["patch"])
    assert patched == {"id": created["id"], **case["patched"]}
    listed = await alice.call("GET", path, 200)
    assert {"id": created["id"], **case["patched"]} in listed["results"]
    assert await alice.call("DELETE", item, 204) is None
    assert (await alice.request("GET", item)).status == 404
    assert (await alice.request("DELETE", item)).status == 404


@pytest.mark.parametrize("kind", CASES)
async def test_another_users_objects_are_invisible_and_untouchable(alice: User, bob: User, kind: str) -> None:
    case = await CASES[kind](alice)
    created = await alice.call("POST", case["path"], 201, json=case["create"])
    item = f"{case['path']}{created['id']}/"
    for method, body in [("GET", None), ("PUT", case["replace"]), ("PATCH", case["patch"]), ("DELETE", None)]:
        answer = await bob.request(method, item, json=body) if body else await bob.request(method, item)
        assert answer.status == 404, method
        assert set(await answer.json()) == {"detail"}
    assert (await bob.call("GET", case["path"], 200))["count"] == 0
    assert await alice.call("GET", item, 200) == created


@pytest.mark.parametrize("kind", CASES)
@pytest.mark.parametrize("suffix", ["999/", "abc/", "1.5/", "-1/", "0/", f"{2**63}/", f"{2**64}"])
async def test_a_missing_or_non_integer_id_is_404(alice: User, kind: str, suffix: str) -> None:
    case = await CASES[kind](alice)
    for method, body in [("GET", None), ("PUT", case["replace"]), ("PATCH", case["patch"]), ("DELETE", None)]:
        answer = await alice.request(method, f"{API}/{kind}/{suffix}", json=body)
        assert answer.status == 404, (method, suffix)
        assert set(await answer.json()) == {"detail"}


@pytest.mark.parametrize("kind", CASES)
async def test_read_only_fields_in_a_body_are_ignored(alice: User, kind: str) -> None:
    case = await CASES[kind](alice)
    read_only: dict[str, Any] = {"id": 4242}
    if kind == "credentials":
        read_only["has_private_key"] = True
    if kind == "work_loads":
        read_only["host_key"] = "SHA256:not-pinned-by-a-user"
    if kind == "migration_targets":
        read_only["target_vm"] = {"ip": "1.1.1.1", "credentials": {}, "storage": []}
    if kind == "migrations":
        read_only.update(state="success", progress=100, error="x", started_at="2020-01-01T00:00:00Z", finished_at=None)
    created = await alice.call("POST", case["path"], 201, json={**case["create"], **read_only})
    assert created == {"id": created["id"], **case["created"]}
    assert created["id"] != 4242


@pytest.mark.parametrize("kind", CASES)
async def test_put_needs_every_writable_field_and_patch_some(alice: User, kind: str) -> None:
    case = await CASES[kind](alice)
    created = await alice.call("POST", case["path"], 201, json=case["create"])
    item = f"{case['path']}{created['id']}/"
    answer = await alice.call("PUT", item, 400, json=case["patch"])
    assert answer["errors"]
    assert await alice.call("PATCH", item, 200, json={}) == created


async def test_credentials_password_is_write_only_everywhere(alice: User) -> None:
    created = await alice.credentials("admin")
    assert "password" not in created
    for answer in (
        await alice.call("GET", f"{API}/credentials/{created['id']}/", 200),
        (await alice.call("GET", f"{API}/credentials/", 200))["results"][0],
        await alice.call(
            "PATCH", f"{API}/credentials/{created['id']}/", 200, json={"password": f"{SECRET_MARKER}-new"}
        ),
    ):
        assert set(answer) == {"id", "username", "domain", "has_private_key"}


# A migration body whose references all resolve; each case below breaks one.
PLANNED = {"source": "{workload}", "migration_target": "{target}", "selected_mount_points": ["{c}"]}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("work_loads", {"ip": "10.9.9.9", "credentials": "{missing}", "storage": []}, "credentials"),
        ("work_loads", {"ip": "10.9.9.9", "credentials": "{credentials}", "storage": ["{missing}"]}, "storage"),
        ("work_loads", {"ip": "10.9.9.9", "credentials": "{bob_credentials}", "storage": []}, "credentials"),
        ("work_loads", {"ip": "10.9.9.9", "credentials": "{credentials}", "storage": ["{bob_mount_point}"]}, "storage"),
        ("migration_targets", {"cloud_type": "aws", "cloud_credentials": "{bob_credentials}"}, "cloud_credentials"),
        ("migrations", {**PLANNED, "source": "{missing}"}, "source"),
        ("migrations", {**PLANNED, "migration_target": "{missing}"}, "migration_target"),
        ("migrations", {**PLANNED, "selected_mount_points": ["{bob_mount_point}"]}, "selected_mount_points"),
        ("migrations", {**PLANNED, "selected_mount_points": ["{loose}"]}, "selected_mount_points"),
        ("migrations", {**PLANNED, "selected_mount_points": []}, "selected_mount_points"),
    ],
)
async def test_a_reference_to_a_missing_or_foreign_id_is_400_naming_the_field(
    alice: User, bob: User, path: str, body: dict[str, Any], field: str
) -> None:
    plan = await alice.plan()
    ids = {
        "missing": 9999,
        "credentials": plan["credentials"],
        "workload": plan["workload"],
        "target": plan["target"],
        "c": plan["mount_points"][0],
        "loose": (await alice.mount_point("E:\\"))["id"],
        "bob_credentials": (await bob.credentials("bobs"))["id"],
        "bob_mount_point": (await bob.mount_point("F:\\"))["id"],
    }

    def fill(value: Any) -> Any:
        if isinstance(value, list):
            return [fill(v) for v in value]
        return ids[value[1:-1]] if isinstance(value, str) and value.startswith("{") else value

    answer = await alice.call("POST", f"{API}/{path}/", 400, json={k: fill(v) for k, v in body.items()})
    assert list(answer["errors"]) == [field]
    assert all(isinstance(message, str) for message in answer["errors"][field])


async def test_a_duplicate_ip_is_409_and_so_is_a_mount_point_of_another_workload(alice: User) -> None:
    plan = await alice.plan(ip="10.0.0.1")
    answer = await alice.call(
        "POST", f"{API}/work_loads/", 409, json={"ip": "10.0.0.1", "credentials": plan["credentials"], "storage": []}
    )
    assert set(answer) == {"detail"}
    await alice.call(
        "POST", f"{API}/work_loads/", 409,
        json={"ip": "10.0.0.2", "credentials": plan["credentials"], "storage": [plan["mount_points"][0]]},
    )
    second = await alice.workload("10.0.0.2", plan["credentials"], [])
    await alice.call("PATCH", f"{API}/work_loads/{second['id']}/", 409, json={"storage": [plan["mount_points"][1]]})


async def test_an_ip_is_unique_per_owner_only(alice: User, bob: User) -> None:
    await alice.plan(ip="10.0.0.1")
    credentials = await bob.credentials()
    await bob.workload("10.0.0.1", credentials["id"], [])


async def test_a_workload_ip_is_canonical_and_never_changes(alice: User) -> None:
    credentials = (await alice.credentials())["id"]
    workload = await alice.workload("2001:DB8:0:0::1", credentials, [])
    assert workload["ip"] == "2001:db8::1"
    item = f"{API}/work_loads/{workload['id']}/"
    await alice.call("PATCH", item, 200, json={"ip": "2001:db8::1"})
    await alice.call("PUT", item, 200, json={"ip": "2001:db8:0::1", "credentials": credentials, "storage": []})
    for method in ("PATCH", "PUT"):
        body = {"ip": "10.0.0.9", "credentials": credentials, "storage": []}
        answer = await alice.call(method, item, 400, json=body)
        assert list(answer["errors"]) == ["ip"]
    answer = await alice.call("POST", f"{API}/work_loads/", 400, json={"ip": "300.1.1.1", "credentials": credentials})
    assert list(answer["errors"]) == ["ip"]


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("credentials", "credentials"), ("mount_points", "mount_points"), ("work_loads", "workload"),
        ("migration_targets", "target"),
    ],
)
async def test_a_referenced_object_cannot_be_deleted(alice: User, path: str, kind: str) -> None:
    plan = await alice.plan()
    object_id = plan[kind][0] if kind == "mount_points" else plan[kind]
    answer = await alice.call("DELETE", f"{API}/{path}/{object_id}/", 409)
    assert set(answer) == {"detail"} and answer["detail"]
    await alice.call("GET", f"{API}/{path}/{object_id}/", 200)


async def test_a_migration_lists_its_fields_on_the_wire(alice: User) -> None:
    plan = await alice.plan()
    migration = await alice.call("GET", f"{API}/migrations/{plan['migration']}/", 200)
    assert list(migration) == [
        "id", "source", "migration_target", "selected_mount_points", "mode", "sync_interval", "cutover_at",
        "pre_cutover", "post_cutover", "state", "phase", "progress", "error", "started_at", "finished_at", "wave",
        "readiness",
    ]


# --- migration actions -------------------------------------------------------


async def test_run_answers_202_with_the_running_migration_then_cancel_200(alice: User) -> None:
    plan = await alice.plan()
    path = f"{API}/migrations/{plan['migration']}"
    running = await alice.call("POST", f"{path}/run/", 202)
    assert running["state"] == "running" and running["error"] is None
    started = datetime.fromisoformat(running["started_at"])
    assert started.utcoffset() == timezone.utc.utcoffset(None)
    state = await alice.call("GET", f"{path}/state/", 200)
    assert {field: state[field] for field in ("state", "error", "finished")} == {
        "state": "running", "error": None, "finished": False,
    }
    assert 0 <= state["progress"] < 100
    cancelled = await alice.call("POST", f"{path}/cancel/", 200)
    assert (cancelled["state"], cancelled["error"]) == ("error", "cancelled")
    assert datetime.fromisoformat(cancelled["finished_at"]).utcoffset() == timezone.utc.utcoffset(None)
    stopped = await alice.call("GET", f"{path}/state", 200)
    assert {field: stopped[field] for field in ("state", "progress", "error", "finished")} == {
        "state": "error", "progress": cancelled["progress"], "error": "cancelled", "finished": True,
    }
    await alice.call("POST", f"{path}/cancel", 409)
    assert (await alice.call("POST", f"{path}/run", 202))["state"] == "running"


async def test_a_running_migration_cannot_run_again_be_edited_or_deleted(alice: User) -> None:
    plan = await alice.plan()
    path = f"{API}/migrations/{plan['migration']}"
    await alice.call("POST", f"{path}/run/", 202)
    await alice.call("POST", f"{path}/run/", 409)
    await alice.call("PATCH", f"{path}/", 409, json={"selected_mount_points": [plan["mount_points"][0]]})
    await alice.call("DELETE", f"{path}/", 409)


async def test_run_is_refused_without_volume_c(alice: User) -> None:
    plan = await alice.plan(volumes=("C:\\", "D:\\"))
    migration = await alice.migration(plan["workload"], plan["target"], [plan["mount_points"][1]])
    answer = await alice.call("POST", f"{API}/migrations/{migration['id']}/run/", 409)
    assert "C:" in answer["detail"]
    assert (await alice.call("GET", f"{API}/migrations/{migration['id']}/state/", 200))["state"] == "not_started"


async def test_run_is_refused_when_the_selection_left_the_source(alice: User) -> None:
    plan = await alice.plan()
    c, d = plan["mount_points"]
    await alice.call("PATCH", f"{API}/work_loads/{plan['workload']}/", 200, json={"storage": [c]})
    await alice.call("POST", f"{API}/migrations/{plan['migration']}/run/", 409)


async def test_run_is_refused_while_the_target_is_busy(alice: User) -> None:
    plan = await alice.plan()
    second = await alice.migration(plan["workload"], plan["target"], plan["mount_points"])
    await alice.call("POST", f"{API}/migrations/{plan['migration']}/run/", 202)
    answer = await alice.call("POST", f"{API}/migrations/{second['id']}/run/", 409)
    assert "busy" in answer["detail"]


async def test_actions_on_another_users_migration_are_404(alice: User, bob: User) -> None:
    plan = await alice.plan()
    for method, action in [("POST", "run"), ("POST", "cancel"), ("GET", "state")]:
        await bob.call(method, f"{API}/migrations/{plan['migration']}/{action}/", 404)


async def test_a_successful_run_fills_the_target_vm_with_the_selected_volumes_only(aiohttp_client: Any) -> None:
    alice = await User(await aiohttp_client(make_app(run_seconds=0)), "alice").sign_up()
    plan = await alice.plan(volumes=("C:\\", "D:\\", "E:\\"))
    c, _, e = plan["mount_points"]
    migration = await alice.migration(plan["workload"], plan["target"], [e, c])
    await alice.call("POST", f"{API}/migrations/{migration['id']}/run/", 202)
    state = await alice.wait_until_finished(migration["id"])
    assert {field: state[field] for field in ("state", "progress", "error", "finished")} == {
        "state": "success", "progress": 100, "error": None, "finished": True,
    }
    assert state["bytes_copied"] == state["bytes_total"] == sum(v["size"] for v in state["volumes"])
    target = await alice.call("GET", f"{API}/migration_targets/{plan['target']}/", 200)
    assert target["target_vm"] == {
        "ip": "10.0.0.1",
        "credentials": {"username": "administrator", "domain": ""},
        "storage": [{"name": "C:\\", "size": 1000}, {"name": "E:\\", "size": 3000}],
    }
    await alice.call("POST", f"{API}/migrations/{migration['id']}/run/", 409)
    finished = await alice.call("GET", f"{API}/migrations/{migration['id']}/", 200)
    assert datetime.fromisoformat(finished["finished_at"]) >= datetime.fromisoformat(finished["started_at"])
