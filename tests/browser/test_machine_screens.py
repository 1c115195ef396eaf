"""The console's real-machine screens (SPEC 5, 2.7, 2.8) against a real
OpenSSH server (tests/sshd_fixtures.py): a workload's os, port and root set in
its form, a check that pins the host key and a clear that asks first, a
discovery whose dry run is shown before anything is written, and a target's
host and root."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from typing import Any

from playwright.sync_api import expect

from ..sshd_fixtures import Machine, Witness
from .conftest import Service
from .support import Console, unique


def bytes_text(count: int) -> str:
    """A size as the console writes it (dom.js bytes())."""
    value, unit = float(count), 0
    while value >= 1024 and unit < 6:
        value, unit = value / 1024, unit + 1
    if unit == 0:
        return f"{count} B"
    return f"{value:.{1 if value < 10 else 0}f} {['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'][unit]}"


def _get(service: Service, token: str, path: str) -> dict[str, Any]:
    status, body = service.api.call("GET", path, token=token)
    assert status == 200, body
    return dict(body)


def _key_login(service: Service, token: str, machine: Machine) -> dict[str, Any]:
    return service.api.create(token, "credentials", {"username": machine.username, "private_key": machine.private_key})


def _workload_of(service: Service, token: str, machine: Machine, **fields: Any) -> dict[str, Any]:
    login = _key_login(service, token, machine)
    return service.api.create(
        token,
        "work_loads",
        {"ip": machine.ip, "credentials": login["id"], "port": machine.port, "root": str(machine.root), **fields},
    )


def test_the_workload_form_saves_os_port_and_root(console: Console, service: Service) -> None:
    username = unique("machinist")
    token = service.api.user(username)
    service.api.create(token, "credentials", {"username": "root", "password": "pw"})
    console.sign_in(username, place="/")

    created = console.create(
        "Workloads",
        "workload",
        {"IP address": "10.40.0.1", "SSH port": "2222", "Root": "/mnt/snap"},
        {"Login": "root", "Operating system": "windows"},
    )
    workload = _get(service, token, f"/api/v1/work_loads/{created}/")
    assert (workload["os"], workload["port"], workload["root"]) == ("windows", 2222, "/mnt/snap")

    console.open(f"/workloads?edit={created}")
    form = console.page.get_by_role("form", name=f"Edit workload {created}")
    expect(form.get_by_label("Operating system", exact=True)).to_have_value("windows")
    expect(form.get_by_label("SSH port", exact=True)).to_have_value("2222")
    form.get_by_label("SSH port", exact=True).fill("70000")
    form.get_by_role("button", name="Save").click()
    console.field_says(form, "SSH port", re.compile("65535"))  # the API's words, at the field
    assert _get(service, token, f"/api/v1/work_loads/{created}/")["port"] == 2222

    form.get_by_label("SSH port", exact=True).fill("22")
    form.get_by_label("Root", exact=True).fill("/")
    form.get_by_label("Operating system", exact=True).select_option(label="linux")
    form.get_by_role("button", name="Save").click()
    expect(console.status).to_contain_text(f"Saved workload {created}")
    workload = _get(service, token, f"/api/v1/work_loads/{created}/")
    assert (workload["os"], workload["port"], workload["root"]) == ("linux", 22, "/")

    # Its page, reached from the list, shows what was saved.
    console.main.get_by_role("link", name="10.40.0.1", exact=True).click()
    console.shown(lambda hash: hash == f"/workloads/{created}", "the workload's page")
    console.heading("Workload 10.40.0.1")
    facts = console.main.locator("dl.facts").first
    expect(facts).to_contain_text("linux")
    expect(facts).to_contain_text("SSH port22")
    expect(console.main).to_contain_text("No host key pinned yet")
    console.fits_the_width()


def test_a_key_login_checks_the_machine_and_clearing_its_pinned_key_asks_first(
    console: Console, service: Service, machine: Machine
) -> None:
    username = unique("checker")
    token = service.api.user(username)
    console.sign_in(username, place="/")

    # Credentials with a private key and no password, through the form.
    login = console.create(
        "Credentials", "credentials", {"Username": machine.username, "Private key": machine.private_key}
    )
    stored = _get(service, token, f"/api/v1/credentials/{login}/")
    assert stored["has_private_key"] is True and "private_key" not in stored and "password" not in stored
    row = console.main.get_by_role("row").filter(has_text=machine.username)
    expect(row).to_contain_text("key stored")
    assert machine.private_key.splitlines()[1] not in console.page.content()  # never shown again

    workload = service.api.create(
        token,
        "work_loads",
        {"ip": machine.ip, "credentials": login, "port": machine.port, "root": str(machine.root)},
    )["id"]
    console.open(f"/workloads/{workload}")
    console.heading(f"Workload {machine.ip}")
    expect(console.main).to_contain_text("No host key pinned yet")
    console.page.get_by_role("button", name="Check", exact=True).click()
    check = console.page.get_by_role("region", name="Check", exact=True)
    expect(check).to_contain_text("Check passed", timeout=20_000)
    expect(check.locator("dl.facts")).to_contain_text(socket.gethostname())  # what the machine says of itself
    pinned = console.page.get_by_role("region", name="Pinned host key", exact=True)
    expect(pinned).to_contain_text(machine.host_key_fingerprint)
    assert _get(service, token, f"/api/v1/work_loads/{workload}/")["host_key"] == machine.host_key_fingerprint

    # Clearing asks first; keeping it changes nothing.
    pinned.get_by_role("button", name="Clear host key").click()
    expect(pinned).to_contain_text("Clear the pinned host key?")
    expect(pinned.get_by_role("button", name="Keep it")).to_be_focused()
    pinned.get_by_role("button", name="Keep it").click()
    expect(pinned.get_by_role("button", name="Clear host key")).to_be_visible()
    assert _get(service, token, f"/api/v1/work_loads/{workload}/")["host_key"] == machine.host_key_fingerprint

    pinned.get_by_role("button", name="Clear host key").click()
    pinned.get_by_role("button", name="Yes, clear it").click()
    expect(pinned).to_contain_text("No host key pinned yet")
    expect(console.status).to_contain_text(f"Cleared the host key of workload {machine.ip}")
    assert _get(service, token, f"/api/v1/work_loads/{workload}/")["host_key"] is None
    console.shoot("workload-checked")


def test_a_machine_outside_the_allowed_networks_is_refused_in_plain_words(
    console: Console, service: Service, witness_listener: Callable[[str], Witness]
) -> None:
    witness = witness_listener("127.0.0.9")  # outside the service's allowed networks
    username = unique("prober")
    token = service.api.user(username)
    login = service.api.create(token, "credentials", {"username": "root", "password": "pw"})
    workload = service.api.create(
        token, "work_loads", {"ip": "127.0.0.9", "port": witness.port, "credentials": login["id"]}
    )["id"]
    console.sign_in(username, place=f"/workloads/{workload}")
    console.heading("Workload 127.0.0.9")
    console.page.get_by_role("button", name="Check", exact=True).click()
    alert = console.main.get_by_role("alert").filter(has_text="The check was not run.")
    expect(alert).to_contain_text("MIGRATION_ALLOWED_NETWORKS")
    console.page.get_by_role("button", name="Discover volumes").click()
    expect(console.main.get_by_role("alert").filter(has_text="The discovery was not run.")).to_contain_text(
        "MIGRATION_ALLOWED_NETWORKS"
    )
    assert _get(service, token, f"/api/v1/work_loads/{workload}/")["host_key"] is None
    assert witness.attempts() == []


def test_discovery_shows_its_dry_run_and_writes_only_once_confirmed(
    console: Console, service: Service, machine: Machine
) -> None:
    username = unique("discoverer")
    token = service.api.user(username)
    stale = service.api.create(token, "mount_points", {"name": "/", "size": 1})["id"]
    workload = _workload_of(service, token, machine, storage=[stale])["id"]
    console.sign_in(username, place=f"/workloads/{workload}")
    console.heading(f"Workload {machine.ip}")
    discover = console.page.get_by_role("button", name="Discover volumes")

    # A dry run, then discarded: nothing written.
    discover.click()
    found = console.page.get_by_role("region", name="Discovery", exact=True)
    expect(found).to_contain_text("nothing is written yet", timeout=20_000)
    expect(found.get_by_role("list", name="Would update")).to_contain_text(re.compile(r"^/: 1 B → "))
    assert _get(service, token, f"/api/v1/mount_points/{stale}/")["size"] == 1
    found.get_by_role("button", name="Discard").click()
    expect(found).to_have_count(0)
    assert _get(service, token, f"/api/v1/mount_points/{stale}/")["size"] == 1

    # A dry run again, and applied.
    discover.click()
    expect(found.get_by_role("list", name="Would update")).to_be_visible(timeout=20_000)
    assert _get(service, token, f"/api/v1/mount_points/{stale}/")["size"] == 1
    found.get_by_role("button", name="Apply these changes").click()
    expect(found).to_contain_text("Discovery written: 0 added, 1 updated.", timeout=20_000)
    size = _get(service, token, f"/api/v1/mount_points/{stale}/")["size"]
    assert size > 1
    volumes = console.page.get_by_role("table", name="Volumes of this workload")
    expect(volumes.get_by_role("row")).to_have_count(2)
    expect(volumes.get_by_role("row").nth(1).get_by_role("cell").first).to_have_text("/")
    expect(volumes.get_by_role("row").nth(1).get_by_role("cell").nth(1)).not_to_have_text("1 B")
    assert _get(service, token, f"/api/v1/work_loads/{workload}/")["storage"] == [stale]
    console.shoot("workload-discovered")


def test_the_target_form_picks_a_host_and_a_root(console: Console, service: Service) -> None:
    username = unique("hoster")
    token = service.api.user(username)
    login = service.api.create(token, "credentials", {"username": "root", "password": "pw"})
    host = service.api.create(token, "work_loads", {"ip": "127.0.0.42", "credentials": login["id"], "os": "linux"})
    console.sign_in(username, place="/")

    form = console.new("Targets", "target")
    root = form.get_by_label("Root on the host", exact=True)
    expect(root).to_be_disabled()  # no host: a simulated copy, no root to give
    console.fill(form, selects={"Cloud": "aws", "Cloud login": "root", "Host": "127.0.0.42"})
    expect(root).to_be_enabled()
    form.get_by_role("button", name="Create").click()
    console.field_says(form, "Root on the host", re.compile("Required with a host"))

    root.fill("/srv/restore")
    form.get_by_role("button", name="Create").click()
    expect(console.status).to_contain_text("Created target")
    found = re.search(r"Created target (\d+)\.", console.status.inner_text())
    assert found
    target = _get(service, token, f"/api/v1/migration_targets/{found[1]}/")
    assert (target["host"], target["root"]) == (host["id"], "/srv/restore")
    row = console.main.get_by_role("row").filter(has_text="aws")
    expect(row.get_by_role("cell").filter(has_text="127.0.0.42")).to_have_text("127.0.0.42 under /srv/restore")

    # Edited back to no host: its root goes with it.
    console.open(f"/targets?edit={found[1]}")
    form = console.page.get_by_role("form", name=f"Edit target {found[1]}")
    expect(form.get_by_label("Root on the host", exact=True)).to_have_value("/srv/restore")
    form.get_by_label("Host", exact=True).select_option(label="None: a simulated copy")
    form.get_by_role("button", name="Save").click()
    expect(console.status).to_contain_text(f"Saved target {found[1]}")
    target = _get(service, token, f"/api/v1/migration_targets/{found[1]}/")
    assert (target["host"], target["root"]) == (None, None)
    expect(console.main.get_by_role("row").filter(has_text="aws")).to_contain_text("None: a simulated copy")


def _real_migration(
    service: Service, token: str, source: Machine, host: Machine, host_login: dict[str, Any]
) -> dict[str, Any]:
    """Volumes / and /data of `source` selected, into a target whose host is `host`."""
    volumes = {
        name: service.api.create(token, "mount_points", {"name": name, "size": 4096})["id"] for name in ("/", "/data")
    }
    workload = _workload_of(service, token, source, os="linux", storage=list(volumes.values()))
    receiver = service.api.create(
        token,
        "work_loads",
        {"ip": host.ip, "credentials": host_login["id"], "port": host.port, "root": str(host.root), "os": "linux"},
    )
    target = service.api.create(
        token,
        "migration_targets",
        {
            "cloud_type": "aws",
            "cloud_credentials": host_login["id"],
            "host": receiver["id"],
            "root": str(host.root / "landing"),
        },
    )
    return service.api.create(
        token,
        "migrations",
        {"source": workload["id"], "migration_target": target["id"], "selected_mount_points": list(volumes.values())},
    )


def test_a_real_run_shows_bytes_files_and_verification_per_volume(
    console: Console, service: Service, make_machine: Callable[[str], Machine]
) -> None:
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    (source.root / "etc").mkdir()
    (source.root / "etc" / "hostname").write_text("source\n")
    (source.root / "etc" / "empty").write_bytes(b"")
    (source.root / "big").write_bytes(os.urandom(300_000))
    (source.root / "data").mkdir()
    (source.root / "data" / "rows").write_bytes(os.urandom(70_000))
    username = unique("copier")
    token = service.api.user(username)
    migration = _real_migration(service, token, source, host, _key_login(service, token, host))["id"]

    console.sign_in(username, place=f"/migrations/{migration}")
    console.heading(f"Migration {migration}")
    console.page.get_by_role("button", name="Run").click()
    expect(console.main.locator(".state")).to_have_text("success", timeout=60_000)
    expect(console.overall()).to_have_attribute("value", "100")
    rows = console.page.get_by_role("table", name="Volumes").get_by_role("row")
    expect(rows).to_have_count(3)
    root_bytes = len("source\n") + 300_000
    cells = {
        "/": [
            "/",
            f"{bytes_text(root_bytes)} of {bytes_text(root_bytes)}",
            "3",
            re.compile(rf"^Verified: {root_bytes:,} bytes in 3 files sent; the same on both machines$"),
            "100%",
        ],
        "/data": [
            "/data",
            f"{bytes_text(70_000)} of {bytes_text(70_000)}",
            "1",
            re.compile(r"^Verified: 70,000 bytes in 1 file sent; the same on both machines$"),
            "100%",
        ],
    }
    expect(rows.nth(1).get_by_role("cell")).to_have_text(cells["/"])
    expect(rows.nth(2).get_by_role("cell")).to_have_text(cells["/data"])
    assert (host.root / "landing" / "data" / "rows").read_bytes() == (source.root / "data" / "rows").read_bytes()
    console.shoot("real-run")

    # The source changes; a second migration into the same place sends only that.
    (source.root / "etc" / "hostname").write_text("source, renamed\n")
    (source.root / "etc" / "empty").unlink()
    first = service.api.call("GET", f"/api/v1/migrations/{migration}/", None, token)[1]
    again = service.api.create(token, "migrations", {
        key: first[key] for key in ("source", "migration_target", "selected_mount_points")
    })["id"]
    console.open_migration(again)
    console.page.get_by_role("button", name="Run").click()
    expect(console.main.locator(".state")).to_have_text("success", timeout=60_000)
    expect(rows.nth(1).get_by_role("cell").nth(3)).to_have_text(
        "Verified: 16 bytes in 1 file sent, 1 unchanged entry kept from the copy in place, 1 entry removed;"
        " the same on both machines"
    )
    expect(rows.nth(2).get_by_role("cell").nth(3)).to_have_text(
        "Verified: 0 bytes in 0 files sent, 1 unchanged entry kept from the copy in place; the same on both machines"
    )


def test_a_real_run_counts_the_files_of_the_volume_it_copies_as_they_pass(
    console: Console, service: Service, make_machine: Callable[[str], Machine]
) -> None:
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    (source.root / "etc").mkdir()
    (source.root / "etc" / "motd").write_text("hello\n")
    (source.root / "huge").write_bytes(os.urandom(2**20) * 256)  # long enough to watch
    (source.root / "data").mkdir()
    username = unique("watcher")
    token = service.api.user(username)
    migration = _real_migration(service, token, source, host, _key_login(service, token, host))["id"]

    console.sign_in(username, place=f"/migrations/{migration}")
    console.heading(f"Migration {migration}")
    console.page.get_by_role("button", name="Run").click()
    rows = console.page.get_by_role("table", name="Volumes").get_by_role("row")
    files = rows.nth(1).get_by_role("cell").nth(2)
    expect(files).to_have_text(re.compile(r"^[1-9][0-9]* so far$"), timeout=30_000)
    state = _get(service, token, f"/api/v1/migrations/{migration}/state/")
    if state["state"] == "running":
        assert state["volumes"][1]["files"] is None  # only the volume being copied counts
    console.page.get_by_role("button", name="Cancel").click()
    expect(console.main.locator(".state")).to_have_text("error", timeout=30_000)
    expect(files).to_have_text("—")


def test_a_real_run_that_fails_says_why_in_words(
    console: Console, service: Service, make_machine: Callable[[str], Machine]
) -> None:
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    (source.root / "data").mkdir()
    username = unique("refused")
    token = service.api.user(username)
    wrong = service.api.create(token, "credentials", {"username": host.username, "password": "not the password"})
    migration = _real_migration(service, token, source, host, wrong)["id"]

    console.sign_in(username, place=f"/migrations/{migration}")
    console.heading(f"Migration {migration}")
    console.page.get_by_role("button", name="Run").click()
    expect(console.main.locator(".state")).to_have_text("error", timeout=60_000)
    error = _get(service, token, f"/api/v1/migrations/{migration}/")["error"]
    assert error and "login" in error.lower(), error
    expect(console.main.locator(".run-error")).to_have_text(f"The run failed: {error}")
    expect(console.page.get_by_role("button", name="Retry")).to_be_visible()
    assert not (host.root / "landing").exists()


def test_the_workload_page_fits_a_phone(narrow_console: Console, service: Service, machine: Machine) -> None:
    username = unique("pocket")
    token = service.api.user(username)
    workload = _workload_of(service, token, machine)["id"]
    deep = machine.root / ("snapshot-of-the-machine-" * 5)
    deep.mkdir()
    assert service.api.call("PATCH", f"/api/v1/work_loads/{workload}/", {"root": str(deep)}, token)[0] == 200
    narrow_console.sign_in(username, place=f"/workloads/{workload}")
    narrow_console.heading(f"Workload {machine.ip}")
    narrow_console.page.get_by_role("button", name="Check", exact=True).click()
    expect(narrow_console.page.get_by_role("region", name="Check", exact=True)).to_contain_text(
        "Check passed", timeout=20_000
    )
    narrow_console.page.get_by_role("button", name="Discover volumes").click()
    expect(narrow_console.page.get_by_role("region", name="Discovery", exact=True)).to_be_visible(timeout=20_000)
    narrow_console.page.get_by_role("button", name="Clear host key").click()
    narrow_console.fits_the_width()
    narrow_console.shoot("workload-390")
