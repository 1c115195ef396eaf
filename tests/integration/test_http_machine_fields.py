"""The fields that describe real machines, on the wire (SPEC 2.1, 3.2):
credentials' write-only `private_key` and read-only `has_private_key`, a
workload's `port`, `os`, `root` and `host_key` (read-only, but null clears
it), and a target's `host` and `root`."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from aiohttp.test_utils import TestClient

import migration_core as core
from entrypoints.bootstrap import Services
from entrypoints.http import create_app

from ..ssh_keys import keygen
from .http_client import User, make_services

API = "/api/v1"
PINNED = "SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8"


@pytest.fixture
def services() -> Services:
    return make_services(run_seconds=60)


@pytest.fixture
async def client(aiohttp_client: Any, services: Services) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(services))


@pytest.fixture
async def alice(client: TestClient[Any, Any]) -> User:
    return await User(client, "alice").sign_up()


@pytest.fixture
async def bob(client: TestClient[Any, Any]) -> User:
    return await User(client, "bob").sign_up()


def ed25519() -> str:
    return keygen("http-ed25519", "-t", "ed25519")


def key_lines(key: str) -> list[str]:
    return [line for line in key.splitlines() if line and not line.startswith("-----")]


async def no_key_in(user: User, key: str, *paths: str) -> None:
    for path in paths:
        text = await (await user.request("GET", path)).text()
        assert not any(line in text for line in key_lines(key)), path


# --- credentials --------------------------------------------------------------


async def test_credentials_with_a_key_need_no_password_and_never_show_the_key(alice: User) -> None:
    key = ed25519()
    created = await alice.call("POST", f"{API}/credentials/", 201, json={"username": "deploy", "private_key": key})
    assert created == {"id": created["id"], "username": "deploy", "domain": "", "has_private_key": True}
    item = f"{API}/credentials/{created['id']}/"
    await no_key_in(alice, key, item, f"{API}/credentials/")
    # Kept when absent from a PUT, which then needs no password either.
    replaced = await alice.call("PUT", item, 200, json={"username": "ops"})
    assert replaced["has_private_key"] is True
    # Taken away, it needs a password in its place.
    answer = await alice.call("PATCH", item, 400, json={"private_key": ""})
    assert list(answer["errors"]) == ["password"]
    swapped = await alice.call("PATCH", item, 200, json={"private_key": "", "password": "pw-SECRET-x"})
    assert swapped["has_private_key"] is False


async def test_credentials_need_a_password_or_a_key(alice: User) -> None:
    for body in ({"username": "deploy"}, {"username": "deploy", "password": ""}, {"username": "d", "private_key": ""}):
        answer = await alice.call("POST", f"{API}/credentials/", 400, json=body)
        assert list(answer["errors"]) == ["password"], body
    assert (await alice.call("GET", f"{API}/credentials/", 200))["count"] == 0


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("not a key", "Not a private key"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk deploy@host", "public key"),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
            "cut short",
        ),
        ("encrypted", "unencrypted"),
    ],
)
async def test_a_key_that_does_not_parse_is_400_on_private_key_and_saves_nothing(
    alice: User, key: str, says: str
) -> None:
    if key == "encrypted":
        key = keygen("http-encrypted", "-t", "ed25519", passphrase="a pass phrase")
    answer = await alice.call(
        "POST", f"{API}/credentials/", 400, json={"username": "deploy", "password": "pw-SECRET-1", "private_key": key}
    )
    assert list(answer["errors"]) == ["private_key"]
    assert says in answer["errors"]["private_key"][0]
    assert (await alice.call("GET", f"{API}/credentials/", 200))["count"] == 0


async def test_a_key_larger_than_the_limit_is_400(alice: User) -> None:
    answer = await alice.call(
        "POST", f"{API}/credentials/", 400, json={"username": "deploy", "private_key": "A" * 16_385}
    )
    assert list(answer["errors"]) == ["private_key"]


# --- workloads ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("port", 0), ("port", 65536), ("port", True), ("port", "22"), ("port", 22.5), ("port", None),
        ("os", "macos"), ("os", "Linux"), ("os", 1),
        ("root", "mnt/snap"), ("root", ""), ("root", "/a\u0000b"), ("root", None), ("root", "/" + "a" * 4096),
    ],
)
async def test_a_bad_port_os_or_root_is_400_naming_it(alice: User, field: str, value: Any) -> None:
    credentials = (await alice.credentials())["id"]
    body = {"ip": "10.0.0.9", "credentials": credentials, field: value}
    answer = await alice.call("POST", f"{API}/work_loads/", 400, json=body)
    assert list(answer["errors"]) == [field]
    workload = await alice.workload("10.0.0.8", credentials, [])
    answer = await alice.call("PATCH", f"{API}/work_loads/{workload['id']}/", 400, json={field: value})
    assert list(answer["errors"]) == [field]
    assert await alice.call("GET", f"{API}/work_loads/{workload['id']}/", 200) == workload


async def test_a_workload_lists_its_fields_on_the_wire(alice: User) -> None:
    credentials = (await alice.credentials())["id"]
    workload = await alice.call(
        "POST", f"{API}/work_loads/", 201,
        json={"ip": "10.0.0.9", "credentials": credentials, "port": 2222, "os": "linux", "root": "//mnt/./snap/"},
    )
    assert list(workload) == ["id", "ip", "credentials", "storage", "port", "os", "root", "host_key", "last_check"]
    assert (workload["port"], workload["os"], workload["root"], workload["host_key"]) == (
        2222, "linux", "/mnt/snap", None,
    )


def pin(services: Services, username: str, workload_id: int) -> None:
    """What a check does at first contact: pin the host key, through storage."""
    owner = core.user_named(services.storage, username).id
    with services.storage.unit_of_work() as uow:
        workload = uow.workloads.get(owner, workload_id)
        uow.workloads.update(attrs.evolve(workload, host_key=PINNED))
        uow.commit()


async def test_the_pinned_host_key_is_kept_and_can_only_be_cleared(alice: User, services: Services) -> None:
    credentials = (await alice.credentials())["id"]
    workload = await alice.workload("10.0.0.9", credentials, [])
    item = f"{API}/work_loads/{workload['id']}/"
    pin(services, "alice", workload["id"])
    assert (await alice.call("GET", item, 200))["host_key"] == PINNED
    # Absent from a PUT or a PATCH, it is kept; port, os and root too.
    await alice.call("PATCH", item, 200, json={"os": "linux", "port": 2200})
    replaced = await alice.call("PUT", item, 200, json={"credentials": credentials, "storage": []})
    assert (replaced["host_key"], replaced["os"], replaced["port"]) == (PINNED, "linux", 2200)
    for method in ("PATCH", "PUT"):
        for value in ("SHA256:another", "", 7):
            answer = await alice.call(
                method, item, 400, json={"credentials": credentials, "storage": [], "host_key": value}
            )
            assert list(answer["errors"]) == ["host_key"], (method, value)
    assert (await alice.call("GET", item, 200))["host_key"] == PINNED
    cleared = await alice.call("PATCH", item, 200, json={"host_key": None})
    assert cleared == {**replaced, "host_key": None}
    pin(services, "alice", workload["id"])
    assert (await alice.call("PUT", item, 200, json={**replaced, "host_key": None}))["host_key"] is None


async def test_a_host_key_sent_on_create_is_ignored(alice: User) -> None:
    credentials = (await alice.credentials())["id"]
    created = await alice.call(
        "POST", f"{API}/work_loads/", 201, json={"ip": "10.0.0.9", "credentials": credentials, "host_key": PINNED}
    )
    assert created["host_key"] is None


async def test_a_linux_source_runs_only_with_volume_slash_selected(alice: User) -> None:
    plan = await alice.plan(volumes=("/", "C:\\"))
    root, c = plan["mount_points"]
    await alice.call("PATCH", f"{API}/work_loads/{plan['workload']}/", 200, json={"os": "linux"})
    only_c = await alice.migration(plan["workload"], plan["target"], [c])
    answer = await alice.call("POST", f"{API}/migrations/{only_c['id']}/run/", 409)
    assert answer["detail"] == "A migration may not run unless volume / is selected."
    await alice.call("POST", f"{API}/migrations/{plan['migration']}/run/", 202)


# --- targets ------------------------------------------------------------------


async def test_a_target_with_a_host_needs_a_root_and_one_without_takes_none(alice: User, bob: User) -> None:
    credentials = (await alice.credentials())["id"]
    host = (await alice.workload("127.0.0.2", credentials, []))["id"]
    bobs_host = (await bob.workload("127.0.0.2", (await bob.credentials())["id"], []))["id"]
    base = {"cloud_type": "aws", "cloud_credentials": credentials}
    for extra, field in [
        ({"host": host}, "root"),
        ({"host": host, "root": None}, "root"),
        ({"root": "/srv"}, "root"),
        ({"host": host, "root": "srv"}, "root"),
        ({"host": 9999, "root": "/srv"}, "host"),
        ({"host": bobs_host, "root": "/srv"}, "host"),
        ({"host": "1", "root": "/srv"}, "host"),
    ]:
        answer = await alice.call("POST", f"{API}/migration_targets/", 400, json={**base, **extra})
        assert list(answer["errors"]) == [field], extra
    assert (await alice.call("GET", f"{API}/migration_targets/", 200))["count"] == 0
    target = await alice.call("POST", f"{API}/migration_targets/", 201, json={**base, "host": host, "root": "/"})
    assert (target["host"], target["root"]) == (host, "/")
    item = f"{API}/migration_targets/{target['id']}/"
    # Kept when absent from a PUT; a host taken away takes its root.
    assert (await alice.call("PUT", item, 200, json=base))["root"] == "/"
    assert (await alice.call("PATCH", item, 200, json={"root": "/srv"}))["root"] == "/srv"
    answer = await alice.call("PATCH", item, 400, json={"host": None, "root": "/srv"})
    assert list(answer["errors"]) == ["root"]
    simulated = await alice.call("PATCH", item, 200, json={"host": None})
    assert (simulated["host"], simulated["root"]) == (None, None)


async def test_a_workload_that_is_a_targets_host_cannot_be_deleted(alice: User) -> None:
    credentials = (await alice.credentials())["id"]
    host = (await alice.workload("127.0.0.2", credentials, []))["id"]
    target = await alice.call(
        "POST", f"{API}/migration_targets/", 201,
        json={"cloud_type": "vsphere", "cloud_credentials": credentials, "host": host, "root": "/landing"},
    )
    answer = await alice.call("DELETE", f"{API}/work_loads/{host}/", 409)
    assert answer == {"detail": f"Workload {host} is still referred to by migration target {target['id']}."}
    await alice.call("GET", f"{API}/work_loads/{host}/", 200)
    await alice.call("PATCH", f"{API}/migration_targets/{target['id']}/", 200, json={"host": None})
    await alice.call("DELETE", f"{API}/work_loads/{host}/", 204)
