"""A new user's whole journey through the console, wide and at 390 pixels;
cancel and retry; and the keyboard alone signing in and running a migration."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from .conftest import Service
from .support import GIB, PASSWORD, Console, unique

REFUSAL = "A migration may not run unless volume C:\\ is selected."


def _journey(console: Console, shots: str = "") -> None:
    """Everything a newcomer does to run a first migration, without the API docs."""

    def seen(name: str) -> None:
        console.fits_the_width()
        if name != "sign-in":  # the README's pictures show the live sign as a user sees it once connected
            expect(console.page.locator("#live")).to_have_text("Live")
        console.shoot(name + shots)

    console.open("/")
    console.heading("Sign in")
    seen("sign-in")
    console.sign_up(unique("newcomer"))
    seen("overview-empty")
    expect(console.main).to_contain_text("First steps")

    console.create("Credentials", "credentials", {"Username": "administrator", "Password": "s3cret!", "Domain": "CORP"})
    seen("credentials")
    console.create("Mount points", "mount point", {"Name": "C:\\", "Size": "100 GiB"})
    console.create("Mount points", "mount point", {"Name": "D:\\", "Size": "53687091200"})
    expect(console.main).to_contain_text("50 GiB (53,687,091,200 bytes)")
    seen("mount-points")
    console.create(
        "Workloads", "workload", {"IP address": "10.0.0.5"}, {"Login": "CORP\\administrator"}, ["C:\\", "D:\\"]
    )
    expect(console.main.get_by_role("cell", name="C:\\, D:\\")).to_be_visible()
    seen("workloads")
    console.create("Targets", "target", selects={"Cloud": "aws", "Cloud login": "CORP\\administrator"})
    seen("targets")
    migration = console.create(
        "Migrations", "migration", selects={"Source workload": "10.0.0.5", "Target": "aws target"}, checks=["D:\\"]
    )
    seen("migrations")

    console.main.get_by_role("link", name=f"Migration {migration}", exact=True).click()
    console.heading(f"Migration {migration}")
    console.page.get_by_role("button", name="Run").click()
    expect(console.page.get_by_role("alert")).to_contain_text(REFUSAL)
    expect(console.main).to_contain_text("not started")
    seen("migration-refused")

    console.page.get_by_role("link", name="Edit").click()
    form = console.page.get_by_role("form", name=f"Edit migration {migration}")
    form.get_by_label("C:\\").check()
    form.get_by_role("button", name="Save").click()
    console.heading(f"Migration {migration}")  # back where the edit started
    expect(console.status).to_contain_text(f"Saved migration {migration}")
    console.page.get_by_role("button", name="Run").click()
    expect(console.overall()).to_have_attribute("value", "100", timeout=15_000)
    expect(console.main.locator(".state")).to_have_text("success")
    vm = console.page.get_by_role("region", name="Target VM")
    expect(vm).to_contain_text("10.0.0.5, login CORP\\administrator")
    expect(vm.get_by_role("listitem")).to_have_text(["C:\\ (100 GiB)", "D:\\ (50 GiB)"])
    for volume in ("C:\\ copied", "D:\\ copied"):
        expect(console.page.get_by_label(volume, exact=True)).to_have_attribute("value", "100")
    seen("migration")

    console.nav("Overview")
    expect(console.main.get_by_role("link", name=re.compile(r"^1\s+success$"))).to_be_visible()
    seen("overview")


def test_a_newcomer_runs_a_first_migration_end_to_end(console: Console) -> None:
    _journey(console)


def test_the_same_journey_fits_a_phone_390_pixels_wide(narrow_console: Console) -> None:
    _journey(narrow_console, shots="-390")


def test_a_running_migration_can_be_cancelled_then_retried(slow_console: Console, slow_service: Service) -> None:
    username = unique("canceller")
    token = slow_service.api.user(username)
    fleet = slow_service.api.fleet(token, "10.1.0.7", {"C:\\": 40 * GIB, "D:\\": 10 * GIB}, ["C:\\", "D:\\"])
    migration = fleet["migration"]["id"]
    slow_console.sign_in(username, place=f"/migrations/{migration}")
    slow_console.heading(f"Migration {migration}")

    slow_console.page.get_by_role("button", name="Run").click()
    expect(slow_console.main.locator(".state")).to_have_text("running")
    slow_console.page.get_by_role("button", name="Cancel").click()
    expect(slow_console.main.locator(".state")).to_have_text("error")
    expect(slow_console.main).to_contain_text("cancelled")
    token = slow_service.api.token(username)  # access tokens live 2 seconds on this service
    assert (
        slow_service.api.call("GET", f"/api/v1/migrations/{migration}/state/", token=token)[1]["error"] == "cancelled"
    )

    slow_console.page.get_by_role("button", name="Retry").click()
    expect(slow_console.main.locator(".state")).to_have_text("running")
    expect(slow_console.page.get_by_role("button", name="Cancel")).to_be_visible()
    assert int(slow_console.overall().get_attribute("value") or "0") < 100
    slow_console.shoot("migration-running")
    slow_console.page.get_by_role("button", name="Cancel").click()  # frees the target for other tests
    expect(slow_console.main.locator(".state")).to_have_text("error")


def _tab_to(page: Page, name: str, limit: int = 60) -> None:
    """Press Tab until the focused control is called `name`; each stop shows its focus.
    A screen takes the focus to its heading once it is ready: Tab starts there."""
    expect(page.locator("main h1")).to_be_focused()
    for _ in range(limit):
        page.keyboard.press("Tab")
        focused = page.evaluate("""() => {
            const e = document.activeElement;
            if (e === document.body) return {name: null, visible: true};  // past the end, Tab wraps round
            const labels = e.labels ? [...e.labels].map((l) => l.textContent.trim()) : [];
            return {name: e.getAttribute("aria-label") || labels[0] || e.textContent.trim(),
                    visible: e.matches(":focus-visible") && getComputedStyle(e).outlineStyle !== "none"};
        }""")
        assert focused["visible"], f"{focused['name']!r} has no visible focus"
        if focused["name"] == name:
            return
    raise AssertionError(f"Tab never reached {name!r}")


def test_the_keyboard_alone_signs_in_and_runs_a_migration(console: Console, service: Service) -> None:
    username = unique("keys")
    token = service.api.user(username)
    migration = service.api.fleet(token, "10.2.0.9", {"C:\\": GIB}, ["C:\\"])["migration"]["id"]
    page = console.page
    console.open("/")
    console.heading("Sign in")

    _tab_to(page, "Username")  # past the skip link and the heading
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")  # a form submits with Enter
    console.heading("Overview")

    _tab_to(page, "Migrations")
    page.keyboard.press("Enter")
    console.heading("Migrations")
    _tab_to(page, f"Migration {migration}")
    page.keyboard.press("Enter")
    console.heading(f"Migration {migration}")
    _tab_to(page, "Run")
    page.keyboard.press("Enter")
    expect(console.overall()).to_have_attribute("value", "100", timeout=15_000)


def test_every_screen_reads_well_1920_pixels_wide(wide_console: Console, service: Service) -> None:
    username = unique("widescreen")
    token = service.api.user(username)
    fleet = service.api.fleet(token, "10.2.1.9", {"C:\\": GIB, "D:\\": GIB}, ["C:\\"])
    wide_console.sign_in(username, place="/")
    for place in [
        "/",
        "/credentials",
        "/mount_points",
        "/workloads",
        "/targets",
        "/migrations",
        f"/migrations?edit={fleet['migration']['id']}",
        f"/migrations/{fleet['migration']['id']}",
        "/import",
    ]:
        wide_console.open(place)
        wide_console.fits_the_width()
        # Lines stay readable: the content keeps a measure instead of spanning 1920 pixels.
        assert wide_console.main.bounding_box()["width"] <= 1300, place  # type: ignore[index]
