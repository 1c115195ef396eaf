"""The console's fleet screens against the fleet API (SPEC 3.2 waves, 3.5
import, export and the event stream): a wave of three run together, the
sample inventory imported after fixing a bad row, the inventory exported as a
file, and bars that move from the live stream alone."""

from __future__ import annotations

import csv
import io
import re

from playwright.sync_api import expect

from .conftest import Service
from .support import GIB, ROOT, Console, unique

SAMPLE = ROOT / "examples" / "inventory.csv"


def test_a_wave_of_three_runs_together(console: Console, service: Service) -> None:
    username = unique("waver")
    token = service.api.user(username)
    migrations = [
        service.api.fleet(token, f"10.7.0.{n}", {"C:\\": GIB * n}, ["C:\\"])["migration"]["id"] for n in (1, 2, 3)
    ]
    console.sign_in(username, place="/")
    console.heading("Overview")
    wave = console.create("Waves", "wave", {"Name": "first wave"}, checks=[f"Migration {one}:" for one in migrations])
    console.main.get_by_role("link", name="first wave").click()
    console.heading("Wave first wave")
    expect(console.main.get_by_role("table", name="Migrations in this wave").get_by_role("row")).to_have_count(4)

    console.page.get_by_role("button", name="Run the wave").click()
    started = console.main.locator("p").filter(has_text="Started:")
    for one in migrations:
        expect(started).to_contain_text(re.compile(rf"\bmigration {one}\b"))
    expect(console.page.get_by_label("Wave progress")).to_have_attribute("value", "100", timeout=20_000)
    expect(console.main.locator(".tiles li").filter(has_text="success")).to_have_text(re.compile(r"^3\s+success$"))
    for one in migrations:
        expect(console.page.get_by_label(f"Migration {one} progress")).to_have_attribute("value", "100")
    console.shoot("wave")

    console.page.get_by_role("button", name="Run the wave").click()  # all succeeded: each is refused, with its reason
    for one in migrations:
        expect(console.main.get_by_role("listitem").filter(has_text=f"Migration {one}:")).to_contain_text(
            "already succeeded"
        )
    assert service.api.call("GET", f"/api/v1/waves/{wave}/state/", token=token)[1]["counts"]["success"] == 3


def _with_a_bad_ip(text: str) -> tuple[str, int]:
    """The sample with its second data row's ip spoilt; that row's number as a spreadsheet shows it."""
    rows = list(csv.reader(io.StringIO(text)))
    column = rows[0].index("ip")
    rows[2][column] = "10.0.0.999"
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue(), 3


def test_the_sample_inventory_imports_after_its_bad_row_is_fixed(console: Console) -> None:
    sample = SAMPLE.read_text(encoding="utf-8")
    ips = {row["ip"] for row in csv.DictReader(io.StringIO(sample))}
    broken, bad_row = _with_a_bad_ip(sample)
    console.sign_up(unique("importer"))
    console.nav("Import and export")
    console.page.get_by_label("CSV file").set_input_files(
        files=[{"name": "inventory.csv", "mimeType": "text/csv", "buffer": broken.encode()}]
    )
    text = console.page.get_by_label("CSV to import")
    expect(text).to_have_value(broken)
    import_button = console.page.get_by_role("button", name="Import", exact=True)
    expect(import_button).to_be_disabled()  # a dry run comes first

    console.page.get_by_role("button", name="Check (dry run)").click()
    problems = console.page.get_by_role("table", name=re.compile("Rows to fix"))
    expect(problems.get_by_role("row")).to_have_count(2)  # the heading and the one bad row
    expect(problems.get_by_role("row").nth(1).get_by_role("cell")).to_have_text([str(bad_row), "ip", re.compile(".")])
    expect(import_button).to_be_disabled()
    console.shoot("import-errors")

    text.fill(sample)  # the row fixed in place
    console.page.get_by_role("button", name="Check (dry run)").click()
    expect(console.main).to_contain_text(f"Dry run passed: {len(ips)} to create")
    console.nav("Workloads")
    expect(console.main).to_contain_text("No workloads yet.")  # a dry run writes nothing

    console.nav("Import and export")
    console.page.get_by_label("CSV to import").fill(sample)
    console.page.get_by_role("button", name="Check (dry run)").click()
    expect(import_button).to_be_enabled()
    import_button.click()
    expect(console.main).to_contain_text(f"Imported: {len(ips)} created, 0 updated, 0 unchanged.")
    console.nav("Workloads")
    expect(console.main.get_by_role("table")).to_have_accessible_name(re.compile(f"of {len(ips)}$"))


def test_the_inventory_downloads_as_a_csv_file(console: Console, service: Service) -> None:
    username = unique("exporter")
    token = service.api.user(username)
    service.api.fleet(token, "10.8.0.1", {"C:\\": GIB, "D:\\": 2 * GIB}, ["C:\\"])
    console.sign_in(username, place="/import")
    console.heading("Import and export")
    with console.page.expect_download() as download:
        console.page.get_by_role("button", name="Download inventory.csv").click()
    assert download.value.suggested_filename == "inventory.csv"
    rows = list(csv.DictReader(io.StringIO(download.value.path().read_text(encoding="utf-8"))))
    assert [row["ip"] for row in rows] == ["10.8.0.1"]
    assert rows[0]["password"] == ""


def test_bars_move_from_the_live_stream(slow_console: Console, slow_service: Service) -> None:
    """Runs take 20 seconds here. The run is started through the API, so only the
    stream can tell the open page; polling runs only while the stream is down."""
    username = unique("watcher")
    token = slow_service.api.user(username)
    migration = slow_service.api.fleet(token, "10.9.0.1", {"C:\\": 10 * GIB, "D:\\": 10 * GIB}, ["C:\\", "D:\\"])[
        "migration"
    ]["id"]
    slow_console.sign_in(username, place="/")
    slow_console.heading("Overview")
    live = slow_console.page.locator("#live")
    expect(live).to_have_text("Live")
    token = slow_service.api.token(username)
    assert slow_service.api.call("POST", f"/api/v1/migrations/{migration}/run/", token=token)[0] == 202
    bar = slow_console.page.get_by_label(f"Migration {migration} progress")
    expect(bar).to_be_visible(timeout=5_000)
    slow_console.page.wait_for_function(
        "(label) => Number(document.querySelector(`progress[aria-label='${label}']`)?.value) > 0",
        arg=f"Migration {migration} progress",
        timeout=10_000,
    )
    expect(live).to_have_text("Live")
    slow_console.shoot("overview-live")
    slow_console.open_migration(migration)
    first = int(slow_console.overall().get_attribute("value") or "0")
    slow_console.page.wait_for_function(
        "(before) => Number(document.querySelector(`progress[aria-label='Overall progress']`).value) > before",
        arg=first,
        timeout=10_000,
    )
    expect(slow_console.main.get_by_role("table", name=re.compile("Events"))).to_contain_text("started")
    token = slow_service.api.token(username)  # access tokens live 2 seconds on this service
    assert slow_service.api.call("POST", f"/api/v1/migrations/{migration}/cancel/", token=token)[0] == 200
