"""SPEC 3.5 through HTTP: the sample inventory imports as the README shows,
dry runs write nothing, export imports back to no change, hostile files are
each a clear 400 or 413 with nothing written, a running migration's row is
refused, and overlapping imports at once never duplicate an ip. The file is
sent as the body (text/csv) or as the `file` part of a multipart/form-data
form (what browsers, `curl -F` and generated clients send): both take the same
limits and checks and get the same answers."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient

from entrypoints.http import create_app

from .http_client import User, make_services
from .storages import ALL_STORAGES, storage_url

API = "/api/v1"
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = (ROOT / "examples" / "inventory.csv").read_bytes()
HEADER = "ip,username,password,domain,volumes,cloud_type,cloud_username,cloud_password,cloud_domain,select,wave\r\n"
CSV = {"Content-Type": "text/csv"}
NOT_CSV = "Send the file as text/csv in UTF-8, or as the `file` part of multipart/form-data."
KINDS = ("credentials", "mount_points", "work_loads", "migration_targets", "migrations", "waves")


@pytest.fixture(params=ALL_STORAGES)
async def client(request: pytest.FixtureRequest, aiohttp_client: Any, tmp_path: Path) -> TestClient[Any, Any]:
    storage = storage_url(request.param, request, tmp_path, schema=True)
    return await aiohttp_client(create_app(make_services(storage=storage)))  # type: ignore[no-any-return]


@pytest.fixture
async def alice(client: TestClient[Any, Any]) -> User:
    return await User(client, "alice").sign_up()


async def upload(user: User, body: bytes, expect: int, query: str = "", **headers: str) -> Any:
    answer = await user.call("POST", f"{API}/inventory/import/{query}", expect, data=body, headers={**CSV, **headers})
    return await _counts(user, answer, expect, query)


async def _counts(user: User, answer: Any, expect: int, query: str) -> Any:
    """An import's counts; its `created_workloads` checked on the way: as
    many as it created, each now the user's workload ([] for a dry run)."""
    if expect != 200:
        return answer
    created = answer.pop("created_workloads")
    if "dry_run=true" in query:
        assert created == []
    else:
        assert len(created) == answer["created"]
        owned = {w["id"] for w in (await user.call("GET", f"{API}/work_loads/?limit=1000", 200))["results"]}
        assert set(created) <= owned
    return answer


def form(*parts: tuple[str, bytes], boundary: str = "", closed: bool = True) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body of `parts` (each its headers' text and its
    bytes), written out byte by byte, so that broken forms can be sent too."""
    boundary = boundary or f"----form{uuid.uuid4().hex}"
    body = b"".join(b"--%s\r\n%s\r\n\r\n%s\r\n" % (boundary.encode(), head.encode(), data) for head, data in parts)
    body += b"--%s--\r\n" % boundary.encode() if closed else b""
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def file_part(data: bytes, name: str = "file", content_type: str = "text/csv") -> tuple[str, bytes]:
    head = f'Content-Disposition: form-data; name="{name}"; filename="inventory.csv"'
    return head + (f"\r\nContent-Type: {content_type}" if content_type else ""), data


async def upload_form(user: User, data: bytes, expect: int, query: str = "") -> Any:
    body, headers = form(file_part(data))
    answer = await user.call("POST", f"{API}/inventory/import/{query}", expect, data=body, headers=headers)
    return await _counts(user, answer, expect, query)


SENDS = {"text/csv": upload, "multipart/form-data": upload_form}


async def everything(user: User) -> dict[str, list[Any]]:
    """Every object the user owns, by kind."""
    return {kind: (await user.call("GET", f"{API}/{kind}/?limit=1000", 200))["results"] for kind in KINDS}


async def export(user: User) -> str:
    answer = await user.request("GET", f"{API}/inventory/export/")
    assert answer.status == 200
    assert answer.content_type == "text/csv"
    assert answer.headers["Content-Disposition"] == 'attachment; filename="inventory.csv"'
    return await answer.text()


def rows(*lines: str) -> bytes:
    return (HEADER + "".join(line + "\r\n" for line in lines)).encode("utf-8")


# --- the sample, dry runs, export ----------------------------------------------------


async def test_the_sample_imports_with_its_waves_and_exports_back_to_no_change(alice: User) -> None:
    assert await upload(alice, SAMPLE, 200, "?dry_run=true") == {"created": 12, "updated": 0, "unchanged": 0}
    assert {kind: len(objects) for kind, objects in (await everything(alice)).items()} == dict.fromkeys(KINDS, 0)

    assert await upload(alice, SAMPLE, 200) == {"created": 12, "updated": 0, "unchanged": 0}
    stored = await everything(alice)
    assert len(stored["work_loads"]) == 12 and len(stored["migrations"]) == 11
    waves = {wave["name"]: wave for wave in stored["waves"]}
    assert sorted(waves) == ["wave 1", "wave 2"]
    assert [len(waves[name]["migrations"]) for name in ("wave 1", "wave 2")] == [6, 5]
    assert all(m["state"] == "not_started" for m in stored["migrations"])
    volumes = {(m["name"], m["size"]) for m in stored["mount_points"]}
    assert {("/scratch", 2 * 1024**4), ("E:\\", 40 * 1000**3), ("D:\\", 1_500_000_000_000)} <= volumes

    exported = await export(alice)
    assert "Winter2025!" not in exported and "aws-secret" not in exported
    assert await upload(alice, exported.encode(), 200) == {"created": 0, "updated": 0, "unchanged": 12}
    assert await upload(alice, SAMPLE, 200) == {"created": 0, "updated": 0, "unchanged": 12}
    assert await everything(alice) == stored
    assert await export(alice) == exported


async def test_a_changed_row_updates_the_workload_and_its_plan(alice: User) -> None:
    await upload(alice, SAMPLE, 200)
    changed = SAMPLE.replace(
        b"C:\\=80GB;D:\\=1TB,azure,migrator@corp.example,azure-secret-14,CORP,C:\\;D:\\",
        b"C:\\=90GB;G:\\=1TB,aws,migrator@corp.example,azure-secret-14,CORP,C:\\;G:\\",
    ).replace(
        b"10.10.0.24,administrator,Winter2025!,CORP,C:\\=60GB,vcloud,org-admin,vcloud-secret-24,ORG1,,wave 2",
        b"10.10.0.24,administrator,Winter2025!,CORP,C:\\=60GB,vcloud,org-admin,vcloud-secret-24,ORG1,,wave 1",
    )
    assert await upload(alice, changed, 200) == {"created": 0, "updated": 2, "unchanged": 10}
    workload = (await alice.call("GET", f"{API}/work_loads/?ip=10.10.0.14", 200))["results"][0]
    volumes = [await alice.call("GET", f"{API}/mount_points/{i}/", 200) for i in workload["storage"]]
    assert [(v["name"], v["size"]) for v in volumes] == [("C:\\", 90 * 10**9), ("G:\\", 10**12)]
    # The volume the row dropped, selected by nothing any more, is gone.
    assert (await alice.call("GET", f"{API}/mount_points/?name=D:%5C", 200))["count"] == 6 - 1
    exported = await export(alice)
    line = next(line for line in exported.splitlines() if line.startswith("10.10.0.14,"))
    assert line.endswith(",aws,migrator@corp.example,,CORP,C:\\;G:\\,wave 1,cold,")
    moved = next(line for line in exported.splitlines() if line.startswith("10.10.0.24,"))
    assert moved.endswith(",wave 1,cold,")


async def test_a_row_of_a_running_migration_is_refused_with_that_reason(alice: User) -> None:
    await upload(alice, SAMPLE, 200)
    migration = (await alice.call("GET", f"{API}/migrations/?limit=1", 200))["results"][0]
    await alice.call("POST", f"{API}/migrations/{migration['id']}/run/", 202)
    before = await everything(alice)
    assert await upload(alice, SAMPLE, 200) == {"created": 0, "updated": 0, "unchanged": 12}
    changed = SAMPLE.replace(b"C:\\=120GB;D:\\=500GB", b"C:\\=121GB;D:\\=500GB")
    refused = await upload(alice, changed, 400)
    assert refused["rows"] == [
        {"row": 2, "field": None, "message": f"Migration {migration['id']} is running and cannot be edited."}
    ]
    # An edit of the migration itself is told the same sentence.
    edit = {"migration_target": migration["migration_target"]}
    edited = await alice.call("PATCH", f"{API}/migrations/{migration['id']}/", 409, json=edit)
    assert edited["detail"] == refused["rows"][0]["message"]
    after = await everything(alice)
    for state in (before, after):
        for item in state["migrations"]:
            item.pop("progress")
    assert after == before


async def test_bad_rows_among_good_ones_that_wrote_before_them_are_all_named_and_nothing_is_written(
    alice: User,
) -> None:
    """Each bad row is found only once the rows before it were written; every
    one is still named, with all the good rows around them left unwritten."""
    good = [
        "10.0.0.2,u,p,,C:\\=1;D:\\=2,aws,k,s,,C:\\,w1",
        "10.0.0.3,u,p,,C:\\=1,,,,,,",
        "10.0.0.5,u,p,,C:\\=1,aws,k,s,,,w1",
        "10.0.0.7,u,p,,C:\\=1,,,,,,",
    ]
    bad = [
        "10.0.0.4,u,p,,C:\\=1,aws,k,s,,E:\\,w1",  # selects a volume it lacks
        "10.0.0.6,u,p,,C:\\=1,gcp,k,s,,,",  # no such cloud
    ]
    for dry_run in ("?dry_run=true", ""):
        answer = await upload(alice, rows(good[0], good[1], bad[0], good[2], bad[1], good[3]), 400, dry_run)
        assert [(r["row"], r["field"]) for r in answer["rows"]] == [(4, "select"), (6, "cloud_type")]
        assert "2 row(s)" in answer["detail"]
        assert {kind: len(objects) for kind, objects in (await everything(alice)).items()} == dict.fromkeys(KINDS, 0)
    assert await upload(alice, rows(*good), 200) == {"created": 4, "updated": 0, "unchanged": 0}
    stored = await everything(alice)
    assert len(stored["work_loads"]) == 4 and len(stored["migrations"]) == 2
    assert [len(wave["migrations"]) for wave in stored["waves"]] == [2]


async def test_a_volume_a_row_drops_while_a_migration_still_selects_it_stays_and_the_rows_apply(alice: User) -> None:
    await upload(alice, rows("10.0.0.1,u,p,,C:\\=1;D:\\=2,aws,k,s,,C:\\;D:\\,w1"), 200)
    before = await everything(alice)
    answer = await upload(alice, rows("10.0.0.1,u,p,,C:\\=1,,,,,,", "10.0.0.2,u,p,,C:\\=3,,,,,,"), 200)
    assert answer == {"created": 1, "updated": 1, "unchanged": 0}
    after = await everything(alice)
    kept = next(w for w in after["work_loads"] if w["ip"] == "10.0.0.1")
    c_drive = next(m["id"] for m in before["mount_points"] if m["name"] == "C:\\")
    assert kept["storage"] == [c_drive]
    # D:\ left the workload, yet the migration still selects it: not deleted.
    assert sorted(m["name"] for m in after["mount_points"]) == ["C:\\", "C:\\", "D:\\"]
    assert after["migrations"] == before["migrations"] and after["waves"] == before["waves"]


# --- hostile files ---------------------------------------------------------------------


HOSTILE = {
    "latin-1": ("ip,username\n10.0.0.1,Jos\xe9\n".encode("latin-1"), 400, "not UTF-8"),
    "utf-16": ("ip,username\n10.0.0.1,x\n".encode("utf-16"), 400, "not UTF-8"),
    "nul": (b"ip,username\n10.0.0.1,a\x00b\n", 400, "NUL"),
    "unknown column": (b"ip,username,colour\n10.0.0.1,x,red\n", 400, "not an inventory"),
    "no ip column": (b"username\nx\n", 400, "not an inventory"),
    "semicolons": (b"ip;username\n10.0.0.1;x\n", 400, "commas"),
    "empty": (b"", 400, "empty"),
    "unterminated quote": (b'ip,username\n10.0.0.1,"x\n10.0.0.2,y\n', 400, "not valid CSV"),
    "20,001 rows": (
        (
            "ip,username,password\n"
            + "".join(f"10.{i // 65536}.{i // 256 % 256}.{i % 256},u,p\n" for i in range(20_001))
        ).encode(),
        400,
        "more than 20,000 rows",
    ),
}


@pytest.mark.parametrize("sent_as", list(SENDS))
@pytest.mark.parametrize("name", list(HOSTILE))
async def test_a_hostile_file_is_refused_clearly_and_nothing_is_written(alice: User, name: str, sent_as: str) -> None:
    await upload(alice, rows("10.9.9.9,keeper,pw,,C:\\=1,,,,,,"), 200)
    before = await everything(alice)
    body, status, words = HOSTILE[name]
    answer = await SENDS[sent_as](alice, body, status)
    assert words in answer["detail"], answer
    assert isinstance(answer["rows"], list)
    assert await everything(alice) == before


async def test_eleven_mebibytes_are_refused_with_413_and_nothing_is_written(alice: User) -> None:
    line = "10.0.0.1,user,pw,," + "x" * 200 + "\n"
    body = ("ip,username,password,domain,volumes\n" + line * (11 * 2**20 // len(line))).encode()
    assert len(body) > 10 * 2**20
    answer = await upload(alice, body, 413)
    assert answer == {"detail": "The request body is larger than 10 MiB."}
    assert (await alice.call("GET", f"{API}/work_loads/", 200))["count"] == 0
    # Other routes keep their 64 KiB limit.
    big = {"username": "x" * 70_000, "password": "p"}
    assert (await alice.request("POST", f"{API}/credentials/", json=big)).status == 413


async def test_only_text_csv_or_a_form_is_taken(alice: User) -> None:
    for content_type in ("application/json", "text/plain", "text/csv; charset=latin-1"):
        answer = await alice.call(
            "POST",
            f"{API}/inventory/import/",
            415,
            data=rows("10.0.0.1,u,p,,,,,,,,"),
            headers={"Content-Type": content_type},
        )
        assert answer == {"detail": NOT_CSV}
    assert await upload(alice, rows("10.0.0.1,u,p,,,,,,,,"), 200, **{"Content-Type": "text/csv; charset=utf-8"})


# --- the file in a form -------------------------------------------------------------------


async def test_the_sample_imports_as_a_form_as_it_does_as_the_body(alice: User) -> None:
    assert await upload_form(alice, SAMPLE, 200, "?dry_run=true") == {"created": 12, "updated": 0, "unchanged": 0}
    assert (await alice.call("GET", f"{API}/work_loads/", 200))["count"] == 0
    # As a client library writes a form (here aiohttp's own).
    written = FormData()
    written.add_field("file", SAMPLE, filename="inventory.csv", content_type="text/csv")
    answer = await _counts(alice, await alice.call("POST", f"{API}/inventory/import/", 200, data=written), 200, "")
    assert answer == {"created": 12, "updated": 0, "unchanged": 0}
    assert await upload(alice, SAMPLE, 200) == {"created": 0, "updated": 0, "unchanged": 12}
    exported = (await export(alice)).encode()
    assert await upload_form(alice, exported, 200) == {"created": 0, "updated": 0, "unchanged": 12}


async def test_curl_sends_the_file_with_dash_f(client: TestClient[Any, Any], alice: User, tmp_path: Path) -> None:
    (tmp_path / "inventory.csv").write_bytes(SAMPLE)
    curl = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--show-error", "--max-time", "30", "--noproxy", "*",
        "-H", f"Authorization: Bearer {alice.access}", "-F", "file=@inventory.csv;type=text/csv",
        str(client.make_url(f"{API}/inventory/import/")),
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(curl.communicate(), timeout=60)
    assert curl.returncode == 0, err
    assert await _counts(alice, json.loads(out), 200, "") == {"created": 12, "updated": 0, "unchanged": 0}
    assert len((await everything(alice))["work_loads"]) == 12


async def test_a_form_over_ten_mebibytes_is_refused_with_413_however_it_comes(alice: User) -> None:
    too_large = "The request body is larger than 10 MiB."
    line = "10.0.0.1,user,pw,," + "x" * 200 + "\n"
    data = ("ip,username,password,domain,volumes\n" + line * (11 * 2**20 // len(line))).encode()
    body, headers = form(file_part(data))
    assert await alice.call("POST", f"{API}/inventory/import/", 413, data=body, headers=headers) == {
        "detail": too_large
    }

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: refused as it streams in
        for start in range(0, len(body), 2**20):
            yield body[start:start + 2**20]

    answer = await alice.call("POST", f"{API}/inventory/import/", 413, data=chunks(), headers=headers)
    assert answer == {"detail": too_large}
    # One byte over the file's limit, in a form well within the form's allowance.
    body, headers = form(file_part(b"\xff" * (10 * 2**20 + 1)))
    assert await alice.call("POST", f"{API}/inventory/import/", 413, data=body, headers=headers) == {
        "detail": too_large
    }
    # The file's limit exactly: read and refused for what it holds, not for its size.
    body, headers = form(file_part(b"\xff" * 10 * 2**20))
    answer = await alice.call("POST", f"{API}/inventory/import/", 400, data=body, headers=headers)
    assert "not UTF-8" in answer["detail"]
    assert (await alice.call("GET", f"{API}/work_loads/", 200))["count"] == 0


GOOD = rows("10.0.0.1,u,p,,C:\\=1,,,,,,")
ONE_PART = "The form must hold one part, `file`: the CSV file."
BROKEN_FORMS: dict[str, tuple[tuple[bytes, dict[str, str]], str]] = {
    "no boundary": ((GOOD, {"Content-Type": "multipart/form-data"}), "not a complete multipart/form-data form"),
    "not closed": (form(file_part(GOOD), closed=False), "not a complete multipart/form-data form"),
    "another boundary": (
        (form(file_part(GOOD), boundary="one")[0], {"Content-Type": "multipart/form-data; boundary=two"}),
        "not a complete multipart/form-data form",
    ),
    "no parts": (form(), "not a complete multipart/form-data form"),
    "another name": (form(file_part(GOOD, name="upload")), ONE_PART),
    "no name": (form(("Content-Disposition: form-data", GOOD)), ONE_PART),
    "no disposition": (form(("Content-Type: text/csv", GOOD)), ONE_PART),
    "an attachment": (form(('Content-Disposition: attachment; name="file"', GOOD)), ONE_PART),
    "two files": (form(file_part(GOOD), file_part(GOOD)), ONE_PART),
    "a field beside": (form(file_part(GOOD), ('Content-Disposition: form-data; name="dry_run"', b"true")), ONE_PART),
    "a form in the part": (
        form(file_part(form(file_part(GOOD), boundary="inner")[0], content_type="multipart/mixed; boundary=inner")),
        "The `file` part of the form is not a file.",
    ),
    "bad base64": (
        form(('Content-Disposition: form-data; name="file"\r\nContent-Transfer-Encoding: base64', b"*not base64*")),
        "The `file` part of the form is not a file.",
    ),
}


@pytest.mark.parametrize("name", list(BROKEN_FORMS))
async def test_a_broken_form_is_refused_clearly_and_nothing_is_written(alice: User, name: str) -> None:
    (body, headers), words = BROKEN_FORMS[name]
    answer = await alice.call("POST", f"{API}/inventory/import/", 400, data=body, headers=headers)
    assert words in answer["detail"], answer
    assert answer["rows"] == []
    assert (await alice.call("GET", f"{API}/work_loads/", 200))["count"] == 0


async def test_a_file_part_in_another_charset_is_refused_with_415(alice: User) -> None:
    body, headers = form(file_part(GOOD, content_type="text/csv; charset=latin-1"))
    assert await alice.call("POST", f"{API}/inventory/import/", 415, data=body, headers=headers) == {"detail": NOT_CSV}
    for content_type in ("text/csv; charset=utf-8", "application/vnd.ms-excel", "application/octet-stream", ""):
        body, headers = form(file_part(GOOD, content_type=content_type))  # what browsers say of a .csv varies
        assert await alice.call("POST", f"{API}/inventory/import/", 200, data=body, headers=headers)
    assert (await alice.call("GET", f"{API}/work_loads/", 200))["count"] == 1


async def test_every_bad_row_is_named_with_its_spreadsheet_number_and_column(alice: User) -> None:
    body = rows(
        "10.0.0.1,u,p,,C:\\=1,,,,,,",  # 2: fine
        "10.0.0.999,u,p,,C:\\=1,,,,,,",  # 3: bad ip
        "10.0.0.3,,p,,C:\\=1,,,,,,",  # 4: no username
        "10.0.0.4,u,p,,C:\\=1;D:\\=12XB,,,,,,",  # 5: bad size
        ",,,,,,,,,,",  # 6: blank, skipped
        "10.0.0.6,u,p,,C:\\=1,gcp,k,s,,,",  # 7: bad cloud type
        "10.0.0.7,u,p,,C:\\=1,aws,k,s,,E:\\,",  # 8: selects a volume it lacks
        "10.0.0.01,u,p,,C:\\=1,,,,,,",  # 9: not an address (a leading zero)
        "10.0.0.1,u,p,,C:\\=1,,,,,,",  # 10: the ip of row 2 again
        "10.0.0.10,u,p,,C:\\=1;c:=2,,,,,,",  # 11: one volume twice
        "10.0.0.11,u,p,,C:\\=1,,,,,,w",  # 12: a wave without a plan
        '10.0.0.12,"multi\nline user","p;with;semicolons",,"C:\\=1;D:\\=2",aws,k,s,,"C:\\;D:\\",w',  # 13: fine
    )
    answer = await upload(alice, body, 400)
    assert [(r["row"], r["field"]) for r in answer["rows"]] == [
        (3, "ip"),
        (4, "username"),
        (5, "volumes"),
        (7, "cloud_type"),
        (8, "select"),
        (9, "ip"),
        (10, "ip"),
        (11, "volumes"),
        (12, "wave"),
    ]
    assert answer["rows"][6]["message"] == "ip 10.0.0.1 is also on row 2."
    assert "9 row(s)" in answer["detail"]
    assert (await alice.call("GET", f"{API}/work_loads/", 200))["count"] == 0


async def test_formula_cells_are_stored_as_given_and_exported_behind_a_quote(alice: User) -> None:
    hostile = "=cmd|' /C calc'!A0"
    body = rows(f'10.0.0.1,"{hostile}",p,+1,"-data=5;@x=6",aws,@k,s,"=d","-data",=wave')
    assert await upload(alice, body, 200) == {"created": 1, "updated": 0, "unchanged": 0}
    assert (await alice.call("GET", f"{API}/credentials/?limit=10", 200))["results"][0]["username"] == hostile
    exported = await export(alice)
    header, cells = list(csv.reader(io.StringIO(exported)))[:2]
    dangerous = [cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert dangerous == []
    assert cells[1] == "'" + hostile and cells[3] == "'+1" and cells[header.index("wave")] == "'=wave"
    assert await upload(alice, exported.encode(), 200) == {"created": 0, "updated": 0, "unchanged": 1}


async def test_a_byte_order_mark_is_accepted(alice: User) -> None:
    assert await upload(alice, b"\xef\xbb\xbf" + rows("10.0.0.1,u,p,,,,,,,,"), 200) == {
        "created": 1,
        "updated": 0,
        "unchanged": 0,
    }


async def test_another_users_ip_is_a_workload_of_ones_own(client: TestClient[Any, Any], alice: User) -> None:
    await upload(alice, rows("10.0.0.1,alice,p,,C:\\=1,,,,,,"), 200)
    bob = await User(client, "bob").sign_up()
    assert await upload(bob, rows("10.0.0.1,bob,p,,C:\\=1,,,,,,"), 200) == {"created": 1, "updated": 0, "unchanged": 0}
    assert "alice" in await export(alice) and "alice" not in await export(bob)


# --- machines and quoted names -----------------------------------------------------------

MACHINE_HEADER = "ip,username,password,volumes,port,os,root,cloud_type,cloud_username,cloud_password,select\r\n"


def machine_rows(*lines: str) -> bytes:
    return (MACHINE_HEADER + "".join(line + "\r\n" for line in lines)).encode("utf-8")


async def test_port_os_and_root_import_export_and_an_empty_cell_keeps_them(alice: User) -> None:
    body = machine_rows("10.0.0.1,root,p,/=1GB,2222,linux,//mnt/snap/,,,,", "10.0.0.2,admin,p,C:\\=1,,,,,,,")
    assert await upload(alice, body, 200) == {"created": 2, "updated": 0, "unchanged": 0}
    by_ip = {w["ip"]: w for w in (await alice.call("GET", f"{API}/work_loads/", 200))["results"]}
    assert [(by_ip[ip]["port"], by_ip[ip]["os"], by_ip[ip]["root"]) for ip in ("10.0.0.1", "10.0.0.2")] == [
        (2222, "linux", "/mnt/snap"), (22, None, "/"),
    ]
    exported = await export(alice)
    header, *lines = list(csv.reader(io.StringIO(exported)))
    first = dict(zip(header, lines[0]))
    assert (first["port"], first["os"], first["root"]) == ("2222", "linux", "/mnt/snap")
    second = dict(zip(header, lines[1]))
    assert (second["port"], second["os"], second["root"]) == ("22", "", "/")
    assert await upload(alice, exported.encode(), 200) == {"created": 0, "updated": 0, "unchanged": 2}
    # Empty cells keep what is stored; a given one changes it.
    kept = machine_rows("10.0.0.1,root,,/=1GB,,,,,,,", "10.0.0.2,admin,,C:\\=1,2200,windows,/,,,,")
    assert await upload(alice, kept, 200) == {"created": 0, "updated": 1, "unchanged": 1}
    by_ip = {w["ip"]: w for w in (await alice.call("GET", f"{API}/work_loads/", 200))["results"]}
    assert (by_ip["10.0.0.1"]["port"], by_ip["10.0.0.1"]["os"], by_ip["10.0.0.1"]["root"]) == (
        2222, "linux", "/mnt/snap",
    )
    assert (by_ip["10.0.0.2"]["port"], by_ip["10.0.0.2"]["os"]) == (2200, "windows")


async def test_a_bad_port_os_or_root_is_named_by_its_row_and_column(alice: User) -> None:
    body = machine_rows(
        "10.0.0.1,u,p,,0,,,,,,",
        "10.0.0.2,u,p,,22x,,,,,,",
        "10.0.0.3,u,p,,,macos,,,,,",
        "10.0.0.4,u,p,,,,mnt/snap,,,,",
        "10.0.0.5,u,p,,65535,linux,/,,,,",
    )
    answer = await upload(alice, body, 400)
    assert [(row["row"], row["field"]) for row in answer["rows"]] == [(2, "port"), (3, "port"), (4, "os"), (5, "root")]
    assert (await alice.call("GET", f"{API}/work_loads/", 200))["count"] == 0


HOSTILE_NAMES = ["/data;old", "k=v", 'say "hi"', '"', "a;b=c", " padded ", "/srv/\u00e9t\u00e9"]


async def test_volume_names_with_separators_and_quotes_round_trip(alice: User) -> None:
    """A name holding `;`, `=` or `"` is exported in double quotes (`""` for a
    quote) and imports back to exactly what was stored."""
    credentials = (await alice.credentials())["id"]
    system = (await alice.mount_point("/", 1))["id"]
    others = [(await alice.mount_point(name, 10 + i))["id"] for i, name in enumerate(HOSTILE_NAMES)]
    workload = await alice.workload("10.0.0.1", credentials, [system, *others])
    target = await alice.target(credentials)
    await alice.migration(workload["id"], target["id"], [system, others[0], others[2]])
    stored = await everything(alice)

    exported = await export(alice)
    header, cells = list(csv.reader(io.StringIO(exported)))[:2]
    row = dict(zip(header, cells))
    assert row["volumes"].startswith('/=1;"/data;old"=10;"k=v"=11;"say ""hi"""=12;""""=13;')
    assert row["select"] == '/;"/data;old";"say ""hi"""'
    filled = exported.replace(",administrator,,", ",administrator,pw-SECRET-administrator,", 1)
    for again in (exported, filled):
        assert await upload(alice, again.encode(), 200) == {"created": 0, "updated": 0, "unchanged": 1}
    assert await everything(alice) == stored
    assert await export(alice) == exported


def csv_line(*cells: str) -> str:
    """One CSV row holding these cells as they are (quotes and all)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(cells)
    return out.getvalue()


async def test_a_quoted_name_is_read_as_written_and_a_broken_one_is_named(alice: User) -> None:
    volumes = '"a;b"=1;"say ""x"""=2KB; "c=d" =3'
    body = rows(csv_line("10.0.0.1", "u", "p", "", volumes, "aws", "c", "s", "", '"a;b";c=d', ""))
    assert await upload(alice, body, 200) == {"created": 1, "updated": 0, "unchanged": 0}
    names = {m["name"]: m["size"] for m in (await alice.call("GET", f"{API}/mount_points/", 200))["results"]}
    assert names == {"a;b": 1, 'say "x"': 2000, "c=d": 3}
    for volumes, select in [('"open=1', ""), ('"a"1', ""), ('"a"=x', ""), ("a=1", '"a" b'), ("a=1", '"a')]:
        line = csv_line("10.0.0.2", "u", "p", "", volumes, "aws", "c", "s", "", select, "")
        answer = await upload(alice, rows(line), 400)
        assert [(r["row"], r["field"]) for r in answer["rows"]] == [(2, "select" if select else "volumes")], volumes


# --- imports at once ---------------------------------------------------------------------


async def test_overlapping_imports_at_once_never_duplicate_an_ip(alice: User) -> None:
    first = rows(*(f"10.1.0.{i},u{i},p,,C:\\=1,aws,k,s,,,w" for i in range(1, 121)))
    second = rows(*(f"10.1.0.{i},u{i},p,,C:\\=1,aws,k,s,,,w" for i in range(61, 181)))
    answers = await asyncio.gather(
        *(alice.request("POST", f"{API}/inventory/import/", data=body, headers=CSV) for body in (first, second))
    )
    assert {answer.status for answer in answers} <= {200, 400}
    assert 200 in {answer.status for answer in answers}
    imported = [set(range(1, 121)), set(range(61, 181))]
    expected = set().union(*(ips for ips, answer in zip(imported, answers) if answer.status == 200))
    workloads = (await alice.call("GET", f"{API}/work_loads/?limit=1000", 200))["results"]
    ips = [w["ip"] for w in workloads]
    assert len(ips) == len(set(ips)) == len(expected)
    assert {int(ip.rsplit(".", 1)[1]) for ip in ips} == expected
    [wave] = (await alice.call("GET", f"{API}/waves/", 200))["results"]
    assert len(wave["migrations"]) == len(expected)


# --- warm plans (SPEC 2.9) ---------------------------------------------------------------

WARM_HEADER = "ip,username,password,volumes,cloud_type,cloud_username,cloud_password,mode,sync_interval\r\n"


def warm_rows(*lines: str) -> bytes:
    return (WARM_HEADER + "".join(line + "\r\n" for line in lines)).encode("utf-8")


async def plans_by_ip(user: User) -> dict[str, tuple[str, int]]:
    """Each workload's migration as (mode, sync_interval), by the workload's ip."""
    ips = {w["id"]: w["ip"] for w in (await user.call("GET", f"{API}/work_loads/?limit=1000", 200))["results"]}
    migrations = (await user.call("GET", f"{API}/migrations/?limit=1000", 200))["results"]
    return {ips[m["source"]]: (m["mode"], m["sync_interval"]) for m in migrations}


async def test_mode_and_sync_interval_plan_warm_migrations_and_export_imports_back_to_no_change(alice: User) -> None:
    body = warm_rows(
        "10.0.0.1,u,p,C:\\=1,aws,c,s,warm,600",
        "10.0.0.2,u,p,C:\\=1,aws,c,s,warm,",
        "10.0.0.3,u,p,C:\\=1,aws,c,s,,",
        "10.0.0.4,u,p,C:\\=1,aws,c,s,cold,900",
    )
    assert await upload(alice, body, 200) == {"created": 4, "updated": 0, "unchanged": 0}
    assert await plans_by_ip(alice) == {
        # An empty interval is the service's default (MIGRATION_SYNC_INTERVAL), an empty mode cold.
        "10.0.0.1": ("warm", 600), "10.0.0.2": ("warm", 3600), "10.0.0.3": ("cold", 3600), "10.0.0.4": ("cold", 900),
    }
    exported = await export(alice)
    header, *lines = list(csv.reader(io.StringIO(exported)))
    assert header[-2:] == ["mode", "sync_interval"]
    # A cold migration's interval means nothing: left empty, which keeps it.
    assert [tuple(line[-2:]) for line in lines] == [("warm", "600"), ("warm", "3600"), ("cold", ""), ("cold", "")]
    before = await everything(alice)
    assert await upload(alice, exported.encode(), 200) == {"created": 0, "updated": 0, "unchanged": 4}
    assert await everything(alice) == before

    changed = warm_rows(
        "10.0.0.1,u,,C:\\=1,aws,c,,warm,1200", "10.0.0.2,u,,C:\\=1,aws,c,,cold,", "10.0.0.3,u,,C:\\=1,aws,c,,warm,",
        "10.0.0.4,u,,C:\\=1,aws,c,,,",
    )
    assert await upload(alice, changed, 200) == {"created": 0, "updated": 3, "unchanged": 1}
    assert await plans_by_ip(alice) == {
        "10.0.0.1": ("warm", 1200), "10.0.0.2": ("cold", 3600), "10.0.0.3": ("warm", 3600), "10.0.0.4": ("cold", 900),
    }
    migration = next(m for m in (await everything(alice))["migrations"] if m["sync_interval"] == 1200)
    events = (await alice.call("GET", f"{API}/migrations/{migration['id']}/events/", 200))["results"]
    assert events[-1]["kind"] == "updated" and events[-1]["detail"] == {"sync_interval": 1200}


async def test_a_bad_mode_or_sync_interval_is_a_row_error_naming_the_column(alice: User) -> None:
    await upload(alice, warm_rows("10.0.0.9,u,p,C:\\=1,aws,c,s,warm,600"), 200)
    before = await everything(alice)
    body = warm_rows(
        "10.0.0.1,u,p,C:\\=1,aws,c,s,hot,",
        "10.0.0.2,u,p,C:\\=1,aws,c,s,warm,59",
        "10.0.0.3,u,p,C:\\=1,aws,c,s,warm,604801",
        "10.0.0.4,u,p,C:\\=1,aws,c,s,warm,often",
        "10.0.0.5,u,p,C:\\=1,,,,warm,",
        "10.0.0.6,u,p,C:\\=1,,,,,600",
        "10.0.0.9,u,,C:\\=1,aws,c,,tepid,",
        "10.0.0.7,u,p,C:\\=1,aws,c,s,warm,60",
    )
    answer = await upload(alice, body, 400)
    assert [(row["row"], row["field"]) for row in answer["rows"]] == [
        (2, "mode"), (3, "sync_interval"), (4, "sync_interval"), (5, "sync_interval"), (6, "mode"),
        (7, "sync_interval"), (8, "mode"),
    ]
    assert "60 to 604800" in answer["rows"][1]["message"]
    assert answer["rows"][4]["message"] == "A plan column needs cloud_type."
    assert await everything(alice) == before


async def test_a_warm_row_without_an_interval_gets_the_service_s_default(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(make_services(sync_interval=120)))
    bob = await User(client, "bob").sign_up()
    await upload(bob, warm_rows("10.0.0.1,u,p,C:\\=1,aws,c,s,warm,"), 200)
    assert await plans_by_ip(bob) == {"10.0.0.1": ("warm", 120)}


async def test_an_import_names_the_workloads_it_created_in_row_order(alice: User) -> None:
    await upload(alice, rows("10.0.0.2,root,p,,/=1,,,,,,"), 200)
    body = rows("10.0.0.3,root,p,,/=1,,,,,,", "10.0.0.2,root,p,,/=1,,,,,,", "10.0.0.1,root,p,,/=1,,,,,,")

    answer = await alice.call("POST", f"{API}/inventory/import/", 200, data=body, headers=CSV)

    by_ip = {w["ip"]: w["id"] for w in (await alice.call("GET", f"{API}/work_loads/", 200))["results"]}
    assert answer == {
        "created": 2, "updated": 0, "unchanged": 1, "created_workloads": [by_ip["10.0.0.3"], by_ip["10.0.0.1"]],
    }
