"""The console's readiness screens (SPEC 2.11, 5) against a real service and
real machines (the sshd of tests/sshd_fixtures.py at 127.0.0.1 and .2): a
migration's page runs the check and shows each check with its message (ready,
failing, refused), a wave's page lists the migrations that are not ready
first, the lists show each workload's last check and each migration's
readiness, the import screen discovers the workloads it just created, hostile
text in a message stays text, and every one of these fits a phone.

One fleet is set up per test process and shared; a test that needs a
migration never checked makes its own."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
import pytest
from playwright.sync_api import Locator, Route, expect

from ..sshd_server import SshServer
from .conftest import Service
from .support import GIB, Console, unique

HOSTILE = "<img src=x onerror=alert(1)>"
HOSTILE_VOLUME = f"/{HOSTILE}"
OUTSIDE = "MIGRATION_ALLOWED_NETWORKS"
REAL_CHECKS = [
    "Source login",
    "Source system",
    "Source programs",
    "Host programs",
    "Volumes",
    "Host login",
    "Target's root on the host",
    "Space on the host",
    "System volume",
    "Target free",
]


@attrs.frozen
class Fleet:
    """One user's machines and migrations, as the API made them."""

    username: str
    token: str
    volumes: dict[str, int]
    source: int  # the machine at 127.0.0.1
    target: int  # a real target: its host is the machine at 127.0.0.2
    ready: int  # / and /data of the machine at 127.0.0.1: every check passes
    failing: int  # warm; /data and a volume that is no directory, no system volume, a hook that does not parse
    simulated: int  # D:\ of a windows machine into a target without host: no system volume
    refused: int  # its source at 10.40.0.1, outside the service's allowed networks
    wave: int  # the four, the ready one first

    def migration(self, service: Service, selected: tuple[str, ...] = ("/", "/data")) -> int:
        """A new migration from the machine at 127.0.0.1 into the real target, never checked."""
        return _make(
            service,
            self.token,
            "migrations",
            {
                "source": self.source,
                "migration_target": self.target,
                "selected_mount_points": [self.volumes[name] for name in selected],
            },
        )


def _get(service: Service, token: str, path: str) -> dict[str, Any]:
    status, body = service.api.call("GET", path, None, token)
    assert status == 200, body
    return dict(body)


def _make(service: Service, token: str, resource: str, body: dict[str, Any]) -> int:
    return int(service.api.create(token, resource, body)["id"])


@pytest.fixture(scope="module")
def fleet(service: Service, sshd: SshServer, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    sshd.start()  # a test before may have stopped it
    source_root = tmp_path_factory.mktemp("readiness-source")
    (source_root / "etc").mkdir()
    (source_root / "etc" / "hostname").write_text("source\n")
    (source_root / "data").mkdir()
    (source_root / "data" / "rows").write_bytes(b"row\n" * 1000)
    host_root = tmp_path_factory.mktemp("readiness-host")

    username = unique("ready")
    token = service.api.user(username)
    key = _make(service, token, "credentials", {"username": sshd.username, "private_key": sshd.private_key})
    password = _make(service, token, "credentials", {"username": "administrator", "password": "pw"})
    volumes = {
        name: _make(service, token, "mount_points", {"name": name, "size": 4096})
        for name in ("/", "/data", HOSTILE_VOLUME)
    }

    def machine(ip: str, root: Path, storage: list[int]) -> int:
        return _make(
            service,
            token,
            "work_loads",
            {
                "ip": ip,
                "credentials": key,
                "port": sshd.port,
                "root": str(root),
                "os": "linux",
                "storage": storage,
            },
        )

    source = machine("127.0.0.1", source_root, list(volumes.values()))
    host = machine("127.0.0.2", host_root, [])
    target = _make(
        service,
        token,
        "migration_targets",
        {
            "cloud_type": "aws",
            "cloud_credentials": key,
            "host": host,
            "root": str(host_root / "landing"),
        },
    )

    def migration(source: int, selected: list[int], **fields: Any) -> int:
        return _make(
            service,
            token,
            "migrations",
            {
                "source": source,
                "migration_target": target,
                "selected_mount_points": selected,
                **fields,
            },
        )

    ready = migration(source, [volumes["/"], volumes["/data"]])
    failing = migration(
        source,
        [volumes["/data"], volumes[HOSTILE_VOLUME]],
        mode="warm",
        pre_cutover=f"echo {HOSTILE} (",
    )
    windows = service.api.fleet(token, "10.41.0.1", {"C:\\": GIB, "D:\\": GIB}, ["D:\\"])
    outside_volume = _make(service, token, "mount_points", {"name": "/", "size": 4096})
    outside = _make(
        service,
        token,
        "work_loads",
        {
            "ip": "10.40.0.1",
            "credentials": password,
            "os": "linux",
            "storage": [outside_volume],
        },
    )
    refused = migration(outside, [outside_volume])
    members = [ready, failing, windows["migration"]["id"], refused]
    wave = _make(service, token, "waves", {"name": "north", "migrations": members})
    return Fleet(username, token, volumes, source, target, ready, failing, windows["migration"]["id"], refused, wave)


def _region(console: Console, name: str) -> Locator:
    return console.page.get_by_role("region", name=name, exact=True)


def _rows(table: Locator) -> Locator:
    return table.locator("tbody tr")


def _held(console: Console, pattern: str) -> list[Route]:
    """Requests to `pattern` held back until the test lets each go."""
    held: list[Route] = []
    console.page.route(pattern, lambda route: held.append(route))
    return held


def _shown_as_text(console: Console) -> None:
    expect(console.main).to_contain_text(HOSTILE)
    expect(console.main.locator("img")).to_have_count(0)


def test_a_ready_migration_is_checked_from_its_page_with_each_check_and_message(
    console: Console, service: Service, fleet: Fleet
) -> None:
    migration = fleet.migration(service)
    console.sign_in(fleet.username, place=f"/migrations/{migration}")
    console.heading(f"Migration {migration}")
    readiness = _region(console, "Readiness")
    expect(readiness).to_contain_text("Last check: Never checked")

    # While the service checks, the button is disabled, the section busy and the status says so.
    held = _held(console, "**/preflight/")
    button = readiness.get_by_role("button", name="Check readiness")
    button.focus()
    console.page.keyboard.press("Enter")
    console.wait_until(lambda: bool(held), "the check to be asked")
    expect(button).to_be_disabled()
    expect(readiness).to_have_attribute("aria-busy", "true")
    expect(readiness.get_by_role("status")).to_have_text(re.compile("^Checking: logging in to the machines"))
    held[0].continue_()
    console.page.unroute("**/preflight/")

    rows = _rows(readiness.get_by_role("table", name="Readiness checks"))
    expect(rows).to_have_count(len(REAL_CHECKS), timeout=20_000)
    expect(readiness).not_to_have_attribute("aria-busy", "true")
    expect(button).to_be_enabled()
    expect(button).to_be_focused()  # the keyboard carries on where it was
    expect(readiness.get_by_role("status")).to_have_text(f"Ready: all {len(REAL_CHECKS)} checks passed.")
    expect(rows.locator("td:nth-child(1)")).to_have_text(REAL_CHECKS)
    expect(rows.locator("td:nth-child(2)")).to_have_text(["✓ Passed"] * len(REAL_CHECKS))
    messages = rows.locator("td:nth-child(3)")
    expect(messages.nth(0)).to_have_text(re.compile(r"^Logged in to .+ \(127\.0\.0\.1 port \d+\) as \S+; host key SHA"))
    expect(messages.nth(4)).to_have_text(re.compile(r"^Every selected volume is a directory under .*: / .*, /data "))
    expect(messages.nth(8)).to_have_text("The system volume / is selected.")

    # What was found is kept, and shown as the page's last check.
    stored = _get(service, fleet.token, f"/api/v1/migrations/{migration}/")["readiness"]
    assert stored["ready"] is True and stored["failed"] == [], stored
    expect(readiness).to_contain_text(re.compile(r"Last check: ✓ Ready checked \S"))
    console.shoot("readiness-migration")


def test_a_failing_migration_shows_what_failed_in_words_and_hostile_text_as_text(
    console: Console, service: Service, fleet: Fleet
) -> None:
    console.sign_in(fleet.username, place=f"/migrations/{fleet.failing}")
    console.heading(f"Migration {fleet.failing}")
    readiness = _region(console, "Readiness")
    readiness.get_by_role("button", name="Check readiness").click()
    rows = _rows(readiness.get_by_role("table", name="Readiness checks"))
    expect(rows).to_have_count(len(REAL_CHECKS) + 1, timeout=20_000)  # and its hooks: a warm migration
    expect(rows.locator("td:nth-child(1)")).to_have_text([*REAL_CHECKS, "Hooks"])
    failed = rows.filter(has_text="✗ Failed")
    expect(failed.locator("td:nth-child(1)")).to_have_text(["Volumes", "Space on the host", "System volume", "Hooks"])
    expect(readiness.get_by_role("status")).to_have_text("Not ready: 4 of 11 checks failed.")
    expect(failed.nth(0).locator("td").nth(2)).to_contain_text("Not a directory under the source's root")
    expect(failed.nth(0).locator("td").nth(2)).to_contain_text(HOSTILE_VOLUME)
    expect(failed.nth(1).locator("td").nth(2)).to_have_text(re.compile(r"^Not checked: "))
    expect(failed.nth(2).locator("td").nth(2)).to_have_text(
        "The system volume / is not selected: a migration may not run without it."
    )
    expect(failed.nth(3).locator("td").nth(2)).to_have_text(re.compile(r"^pre_cutover does not parse on the source: "))
    _shown_as_text(console)
    expect(readiness).to_contain_text(
        re.compile(r"Last check: ✗ Not ready: Volumes, Space on the host, System volume, Hooks checked \S")
    )

    # A source outside the allowed networks: refused before anything is sent, said in words, nothing kept.
    console.open_migration(fleet.refused)
    readiness.get_by_role("button", name="Check readiness").click()
    expect(readiness.get_by_role("alert")).to_contain_text("The readiness check was not made.")
    expect(readiness.get_by_role("alert")).to_contain_text(OUTSIDE)
    expect(readiness.get_by_role("table")).to_have_count(0)
    expect(readiness).to_contain_text("Last check: Never checked")
    assert _get(service, fleet.token, f"/api/v1/migrations/{fleet.refused}/")["readiness"] is None


def test_a_wave_page_lists_the_migrations_that_are_not_ready_first(
    console: Console, service: Service, fleet: Fleet
) -> None:
    console.sign_in(fleet.username, place=f"/waves/{fleet.wave}")
    console.heading("Wave north")
    readiness = _region(console, "Readiness")
    readiness.get_by_role("button", name="Check readiness").click()
    tiles = readiness.get_by_role("list", name="Readiness of the wave's migrations").get_by_role("listitem")
    expect(tiles).to_have_text([re.compile(r"^1\s+✓ ready$"), re.compile(r"^3\s+✗ not ready$")], timeout=20_000)
    expect(readiness.get_by_role("status")).to_have_text("1 ready, 3 not ready.")

    # The not-ready first (in the wave's order), then the ready one; each heading links to its page.
    headings = readiness.get_by_role("heading", level=4)
    expect(headings).to_have_text(
        [f"Migration {one}" for one in (fleet.failing, fleet.simulated, fleet.refused)] + [f"Migration {fleet.ready}"]
    )
    not_ready = readiness.get_by_role("list", name="Not ready", exact=True)
    # Each one's failed checks are shown at once, with their messages.
    failing = not_ready.get_by_role("table", name=f"Failed checks of migration {fleet.failing}")
    expect(_rows(failing).locator("td:nth-child(1)")).to_have_text(
        ["Volumes", "Space on the host", "System volume", "Hooks"]
    )
    expect(failing).to_contain_text(HOSTILE_VOLUME)
    simulated = not_ready.get_by_role("table", name=f"Failed checks of migration {fleet.simulated}")
    expect(_rows(simulated)).to_have_text([re.compile(r"^System volume\s*✗ Failed\s*The system volume C:\\ is not")])
    refused = not_ready.get_by_role("table", name=f"Failed checks of migration {fleet.refused}")
    expect(_rows(refused).first).to_contain_text("Source login")
    expect(_rows(refused).first).to_contain_text(OUTSIDE)
    _shown_as_text(console)

    # The ready one's checks wait behind a click (or Enter).
    ready = readiness.get_by_role("list", name="Ready", exact=True)
    every = ready.get_by_role("table", name=f"Every check of migration {fleet.ready}")
    expect(every).to_be_hidden()
    ready.locator("summary", has_text=f"Every check of migration {fleet.ready}").focus()
    console.page.keyboard.press("Enter")
    expect(_rows(every)).to_have_count(len(REAL_CHECKS))
    expect(_rows(every).locator("td:nth-child(2)")).to_have_text(["✓ Passed"] * len(REAL_CHECKS))

    # The members' table keeps what was found.
    members = console.main.get_by_role("table", name="Migrations in this wave")
    expect(members.get_by_role("row").filter(has_text=f"Migration {fleet.simulated}")).to_contain_text(
        "✗ Not ready: System volume checked"
    )
    expect(members.get_by_role("row").filter(has_text=f"Migration {fleet.ready}")).to_contain_text("✓ Ready checked")

    console.shoot("readiness-wave")
    headings.first.get_by_role("link").click()
    console.shown(lambda hash: hash == f"/migrations/{fleet.failing}", "the failing migration's page")
    console.heading(f"Migration {fleet.failing}")


def test_the_lists_show_each_workload_s_last_check_and_each_migration_s_readiness(
    console: Console, service: Service, fleet: Fleet
) -> None:
    status, answer = service.api.call("POST", f"/api/v1/waves/{fleet.wave}/preflight/", None, fleet.token)
    assert status == 200 and answer["not_ready"] == 3, answer
    never = fleet.migration(service)
    outside = _get(service, fleet.token, "/api/v1/work_loads/?ip=10.40.0.1")["results"][0]["last_check"]
    console.sign_in(fleet.username, place="/workloads")
    console.heading("Workloads")

    def cell(name: str, label: str) -> Locator:
        """The cell under `label` in the row whose link is `name`."""
        link = console.page.get_by_role("link", name=name, exact=True)
        return console.main.get_by_role("row").filter(has=link).locator(f"td[data-label='{label}']")

    source = cell("127.0.0.1", "Last check")
    expect(source).to_have_text(re.compile(r"^✓ OK checked \S.*Logged in to .* \(readiness check\)\.$"))
    refused = cell("10.40.0.1", "Last check")
    expect(refused).to_contain_text("✗ Failed checked")
    expect(refused.locator(".check-message")).to_have_text(outside["message"])  # all of it, as text
    expect(refused.locator(".check-message")).to_have_attribute("title", outside["message"])
    assert OUTSIDE in outside["message"]
    expect(cell("10.41.0.1", "Last check")).to_have_text("Never checked")

    console.nav("Migrations")

    def readiness(migration: int) -> Locator:
        return cell(f"Migration {migration}", "Readiness")

    expect(readiness(fleet.ready)).to_have_text(re.compile(r"^✓ Ready checked \S"))
    expect(readiness(fleet.failing)).to_have_text(
        re.compile(r"^✗ Not ready: Volumes, Space on the host, System volume, Hooks checked \S")
    )
    expect(readiness(fleet.refused)).to_have_text(re.compile(r"^✗ Not ready: Source login, Source system, .*checked"))
    expect(readiness(never)).to_have_text("Never checked")
    console.shoot("readiness-lists")


def test_the_import_screen_discovers_the_workloads_it_just_created(
    narrow_console: Console, service: Service, sshd: SshServer
) -> None:
    console = narrow_console
    login = sshd.add_password_user()
    username = unique("discoverer")
    token = service.api.user(username)
    known = service.api.fleet(token, "10.50.0.9", {"C:\\": GIB}, ["C:\\"])["workload"]["id"]
    rows = [
        "ip,username,password,domain,volumes,port,os,root",
        f"127.0.0.1,{login.name},{login.password},,,{sshd.port},linux,/",
        "10.50.0.1,administrator,pw,CORP,C:\\=10GB,,windows,",
        "10.50.0.2,root,pw,,,,linux,/",
        "10.50.0.9,administrator,pw,CORP,C:\\=2GB,,,",  # known: updated, not offered
    ]
    console.sign_in(username, place="/import")
    console.heading("Import and export")
    console.page.get_by_label("CSV to import").fill("\n".join(rows) + "\n")
    console.page.get_by_role("button", name="Check (dry run)").click()
    expect(console.main).to_contain_text("Dry run passed: 3 to create, 1 to update")
    expect(console.main.get_by_role("region", name="Discover their volumes")).to_have_count(0)
    console.page.get_by_role("button", name="Import", exact=True).click()
    expect(console.main).to_contain_text("Imported: 3 created, 1 updated, 0 unchanged.")

    offer = _region(console, "Discover their volumes")
    button = offer.get_by_role("button", name="Discover the volumes of the 3 workloads just created")
    expect(button).to_be_focused()  # the import's own button is done
    console.page.keyboard.press("Enter")
    found = offer.get_by_role("table", name="Discovery: dry run")
    expect(_rows(found)).to_have_count(3, timeout=20_000)
    expect(_rows(found).locator("td:nth-child(1)")).to_have_text(["127.0.0.1", "10.50.0.1", "10.50.0.2"])
    expect(_rows(found).locator("td:nth-child(2)")).to_have_text(["✓ OK", "✗ Failed", "✗ Failed"])
    expect(_rows(found).nth(0).locator("td").nth(2)).to_contain_text(re.compile(r"^would add / \("))
    expect(_rows(found).nth(1).locator("td").nth(2)).to_contain_text("windows")
    expect(_rows(found).nth(2).locator("td").nth(2)).to_contain_text(OUTSIDE)
    expect(offer.get_by_role("status")).to_have_text("Dry run done: 1 read, 2 failed. 1 to change.")
    imported = {
        workload["ip"]: workload for workload in _get(service, token, "/api/v1/work_loads/?limit=100")["results"]
    }
    assert imported["127.0.0.1"]["storage"] == []  # a dry run writes nothing
    console.fits_the_width()
    console.shoot("readiness-import-390")

    offer.get_by_role("button", name="Apply these changes (1 workload)").click()
    written = offer.get_by_role("table", name="Discovery: written")
    expect(_rows(written)).to_have_count(1, timeout=20_000)
    expect(_rows(written).first).to_contain_text(re.compile(r"✓ OK\s*added / \("))
    storage = _get(service, token, f"/api/v1/work_loads/{imported['127.0.0.1']['id']}/")["storage"]
    names = [_get(service, token, f"/api/v1/mount_points/{one}/")["name"] for one in storage]
    assert "/" in names, names
    assert _get(service, token, f"/api/v1/work_loads/{known}/")["last_check"] is None  # never reached


def test_readiness_fits_a_phone(narrow_console: Console, service: Service, fleet: Fleet) -> None:
    console = narrow_console
    console.sign_in(fleet.username, place=f"/migrations/{fleet.failing}")
    console.heading(f"Migration {fleet.failing}")
    readiness = _region(console, "Readiness")
    readiness.get_by_role("button", name="Check readiness").click()
    expect(readiness.get_by_role("table", name="Readiness checks")).to_be_visible(timeout=20_000)
    console.fits_the_width()
    console.shoot("readiness-migration-390")

    console.open(f"/waves/{fleet.wave}")
    readiness.get_by_role("button", name="Check readiness").click()
    expect(readiness.get_by_role("list", name="Not ready", exact=True)).to_be_visible(timeout=20_000)
    readiness.locator("summary", has_text=f"Every check of migration {fleet.ready}").click()
    expect(readiness.get_by_role("table", name=f"Every check of migration {fleet.ready}")).to_be_visible()
    console.fits_the_width()
    console.shoot("readiness-wave-390")

    for section in ("Workloads", "Migrations"):
        console.nav(section)
        expect(console.main.get_by_role("table")).to_be_visible()
        console.fits_the_width()
