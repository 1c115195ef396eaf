"""The console drives a warm migration (SPEC 2.9, 5): its form sets the mode,
the interval and the hooks; its page shows the phase, the syncs as a history
and a chart, the downtime to expect, the next sync and the planned cutover,
syncs now and cuts over (now or at a time, each asked first), and shows what
the hooks printed as text; a wave's page cuts the wave over. Into a target
without a host the syncs are simulated: the package's service takes 2 s for
a first sync and 0.2 s for the next ones, so no test waits long."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from playwright.sync_api import expect

from ..integration.service_process import wait_for
from ..sshd_fixtures import Machine
from .conftest import Service
from .support import GIB, Console, unique
from .test_journey import _tab_to
from .test_machine_screens import _key_login, _real_migration

HOOK = "echo '<b>quiet</b>' > /run/app.lock\nsystemctl stop app"
NOT_RUN = "Not run: the target has no host, so the copy is simulated."


def _get(service: Service, token: str, path: str) -> dict[str, Any]:
    status, body = service.call("GET", path, None, token)
    assert status == 200, body
    return dict(body)


def _warm(service: Service, token: str, ip: str, **fields: Any) -> int:
    """A warm migration of C:\\ into a simulated target, not started."""
    migration = service.api.fleet(token, ip, {"C:\\": 10 * GIB}, ["C:\\"])["migration"]["id"]
    status, body = service.call("PATCH", f"/api/v1/migrations/{migration}/", {"mode": "warm", **fields}, token)
    assert status == 200, body
    return int(migration)


def _in_sync(service: Service, token: str, migration: int, syncs: int = 1) -> None:
    wait_for(
        f"migration {migration} in sync after {syncs} syncs",
        lambda: (lambda state: state["phase"] == "in_sync" and state["syncs"] >= syncs)(
            _get(service, token, f"/api/v1/migrations/{migration}/state/")
        ),
    )


def _run_in_sync(service: Service, token: str, migration: int) -> None:
    status, body = service.call("POST", f"/api/v1/migrations/{migration}/run/", None, token)
    assert status == 202, body
    _in_sync(service, token, migration)


def _syncs(console: Console) -> Any:
    return console.page.get_by_role("table", name="Syncs, newest first").locator("tbody tr")


def _bars(console: Console, name: str) -> Any:
    chart = console.page.get_by_role("img", name=name, exact=True)
    expect(chart).to_be_visible()
    return chart.locator("rect")


def test_a_warm_migration_made_in_its_form_syncs_plans_and_cuts_over(console: Console, service: Service) -> None:
    username = unique("warm")
    token = service.api.user(username)
    login = service.api.create(token, "credentials", {"username": "administrator", "password": "pw"})
    volume = service.api.create(token, "mount_points", {"name": "C:\\", "size": 10 * GIB})
    service.api.create(token, "work_loads", {"ip": "10.61.0.1", "credentials": login["id"], "storage": [volume["id"]]})
    target = service.api.create(token, "migration_targets", {"cloud_type": "aws", "cloud_credentials": login["id"]})
    console.sign_in(username, place="/")

    form = console.new("Migrations", "migration")
    hooks = ("Before the cutover (on the source)", "After the cutover (on the target's host)")
    for label in (*hooks, "Sync interval (seconds)"):
        expect(form.get_by_label(label, exact=True)).to_be_hidden()  # a cold migration has none
    chosen = {"Source workload": "10.61.0.1", "Target": "aws target", "Mode": "Warm"}
    console.fill(form, selects=chosen, checks=["C:\\"])
    for label in hooks:
        expect(form.get_by_label(label, exact=True)).to_be_visible()
    console.fill(form, {"Sync interval (seconds)": "59", hooks[0]: HOOK, hooks[1]: "echo '<i>up</i>'"})
    form.get_by_role("button", name="Create").click()
    console.field_says(form, "Sync interval (seconds)", "greater than or equal to 60")
    console.fits_the_width()
    console.fill(form, {"Sync interval (seconds)": "120"})
    form.get_by_role("button", name="Create").click()
    expect(console.status).to_contain_text("Created migration")
    migration = int(re.findall(r"\d+", console.status.inner_text())[0])
    made = _get(service, token, f"/api/v1/migrations/{migration}/")
    fields = ("mode", "sync_interval", "pre_cutover", "post_cutover", "migration_target")
    assert [made[name] for name in fields] == ["warm", 120, HOOK, "echo '<i>up</i>'", target["id"]]

    console.main.get_by_role("link", name=f"Migration {migration}", exact=True).click()
    console.heading(f"Migration {migration}")
    hooks_shown = console.page.get_by_role("region", name="Hooks")
    expect(hooks_shown.locator(".hook-command")).to_have_text([HOOK, "echo '<i>up</i>'"])  # as text, never as HTML
    expect(hooks_shown.locator("b, i")).to_have_count(0)

    console.page.get_by_role("button", name="Run").click()
    expect(console.main.locator(".phase")).to_have_text("Phase: in sync", timeout=15_000)
    expect(_syncs(console)).to_have_count(1)
    expect(_bars(console, "How long the last sync took")).to_have_count(1)
    syncs = console.page.get_by_role("region", name="Syncs", exact=True)
    expect(syncs).to_contain_text(re.compile(r"Estimated downtime\s*About \d+\.\d s"))
    expect(syncs).to_contain_text("None planned")
    console.fits_the_width()
    console.shoot("warm-in-sync")

    console.page.get_by_role("button", name="Sync now").click()
    keep = console.page.get_by_role("button", name="No, keep it as it is")
    expect(keep).to_be_focused()  # asked first: the safe answer has the focus
    keep.click()
    expect(keep).to_have_count(0)
    expect(_syncs(console)).to_have_count(1)  # kept: nothing was asked of the service
    console.page.get_by_role("button", name="Sync now").click()
    console.page.get_by_role("button", name="Yes, sync now").click()
    expect(_syncs(console)).to_have_count(2)
    expect(_bars(console, "How long the last 2 syncs took")).to_have_count(2)
    assert _get(service, token, f"/api/v1/migrations/{migration}/state/")["syncs"] == 2

    # A time zone far from UTC: the time typed is the user's local time, not the service's UTC.
    cdp = console.page.context.new_cdp_session(console.page)
    cdp.send("Emulation.setTimezoneOverride", {"timezoneId": "Pacific/Auckland"})
    console.page.get_by_role("button", name="Cut over at…").click()
    when = console.page.get_by_label("Cut over at (your local time)")
    expect(when).to_be_focused()
    when.fill("2030-01-02T03:04")
    console.fits_the_width()
    console.page.get_by_role("button", name="Yes, plan the cutover").click()
    withdraw = console.page.get_by_role("button", name="Withdraw the planned cutover")
    expect(withdraw).to_be_visible()
    expect(syncs).not_to_contain_text("None planned")
    planned = console.page.evaluate("new Date('2030-01-02T03:04').toISOString()")
    assert planned == "2030-01-01T14:04:00.000Z"  # 03:04 in Auckland's summer
    cutover_at = _get(service, token, f"/api/v1/migrations/{migration}/")["cutover_at"]
    assert datetime.fromisoformat(cutover_at) == datetime.fromisoformat(planned.replace("Z", "+00:00"))
    withdraw.click()
    expect(syncs).to_contain_text("None planned")
    assert _get(service, token, f"/api/v1/migrations/{migration}/")["cutover_at"] is None

    console.page.get_by_role("button", name="Cut over now").click()
    console.page.get_by_role("button", name="Yes, cut over now").click()
    expect(console.main.locator(".state")).to_have_text("success", timeout=15_000)
    expect(console.page.get_by_role("region", name="Target VM")).to_contain_text("10.61.0.1")
    expect(_bars(console, "How long the last 3 syncs took")).to_have_count(3)
    expect(console.main.locator("rect.sync-bar.final")).to_have_count(1)  # the cutover's bar stands out
    expect(_syncs(console).first).to_contain_text("The cutover's final sync")
    expect(hooks_shown.locator(".hook-output")).to_have_text([NOT_RUN, NOT_RUN])
    for name in ("Sync now", "Cut over now", "Cut over at…"):
        expect(console.page.get_by_role("button", name=name)).to_have_count(0)
    console.fits_the_width()
    console.shoot("warm-cut-over")


def test_a_wave_cuts_over_its_warm_migrations_and_says_what_it_refused(console: Console, service: Service) -> None:
    username = unique("wavecut")
    token = service.api.user(username)
    warm = _warm(service, token, "10.62.0.1")
    cold = service.api.fleet(token, "10.62.0.2", {"C:\\": GIB}, ["C:\\"])["migration"]["id"]
    wave = service.api.create(token, "waves", {"name": unique("wave"), "migrations": [warm, cold]})["id"]
    _run_in_sync(service, token, warm)

    console.sign_in(username, place=f"/waves/{wave}")
    console.page.get_by_role("button", name="Cut over the wave").click()
    keep = console.page.get_by_role("button", name="No, keep them in sync")
    expect(keep).to_be_focused()
    keep.click()
    expect(console.page.get_by_role("button", name="Cut over the wave")).to_be_focused()
    assert _get(service, token, f"/api/v1/migrations/{warm}/state/")["phase"] == "in_sync"

    console.page.get_by_role("button", name="Cut over the wave").click()
    console.page.get_by_role("button", name="Yes, cut over the wave").click()
    expect(console.main).to_contain_text(f"Cutting over: migration {warm}.")
    expect(console.main).to_contain_text("Not cut over: 1.")
    refusal = console.main.locator(".refused li")
    expect(refusal).to_have_count(1)
    expect(refusal).to_contain_text(re.compile(rf"^Migration {cold}: .+"))
    expect(refusal.get_by_role("link", name=f"Migration {cold}")).to_be_visible()
    members = console.page.get_by_role("table", name="Migrations in this wave")
    expect(members.get_by_role("row").filter(has_text=f"Migration {warm}")).to_contain_text("success", timeout=15_000)
    console.fits_the_width()
    console.shoot("wave-cut-over")


def test_the_warm_page_fits_a_phone_and_the_keyboard_alone_syncs_it(narrow_console: Console, service: Service) -> None:
    console = narrow_console
    username = unique("warmkeys")
    token = service.api.user(username)
    migration = _warm(service, token, "10.63.0.1", pre_cutover=HOOK)
    _run_in_sync(service, token, migration)

    console.sign_in(username, place=f"/migrations/{migration}")
    console.heading(f"Migration {migration}")
    expect(_syncs(console)).to_have_count(1)
    console.fits_the_width()
    page = console.page
    _tab_to(page, "Sync now")
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="No, keep it as it is")).to_be_focused()
    console.fits_the_width()
    page.keyboard.press("Shift+Tab")
    expect(page.get_by_role("button", name="Yes, sync now")).to_be_focused()
    page.keyboard.press("Enter")
    expect(_syncs(console)).to_have_count(2)
    expect(_bars(console, "How long the last 2 syncs took")).to_have_count(2)
    console.fits_the_width()
    console.shoot("warm-in-sync-390")

    page.get_by_role("button", name="Cut over at…").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_label("Cut over at (your local time)")).to_be_focused()  # an hour from now, to start with
    console.fits_the_width()
    yes = page.get_by_role("button", name="Yes, plan the cutover")
    for _ in range(10):  # the date's and the time's parts each take a Tab
        page.keyboard.press("Tab")
        if yes.evaluate("(button) => button === document.activeElement"):
            break
    expect(yes).to_be_focused()
    page.keyboard.press("Enter")
    withdraw = page.get_by_role("button", name="Withdraw the planned cutover")
    expect(withdraw).to_be_focused()
    assert _get(service, token, f"/api/v1/migrations/{migration}/")["cutover_at"] is not None
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Cut over at…")).to_be_focused()
    expect(withdraw).to_have_count(0)
    assert _get(service, token, f"/api/v1/migrations/{migration}/")["cutover_at"] is None
    status, body = service.call("POST", f"/api/v1/migrations/{migration}/cancel/", None, token)
    assert status == 200, body


def test_the_hooks_output_of_a_real_cutover_shows_as_text(
    console: Console, service: Service, make_machine: Callable[[str], Machine]
) -> None:
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    (source.root / "data").mkdir()
    (source.root / "data" / "rows").write_bytes(os.urandom(20_000))
    username = unique("hooks")
    token = service.api.user(username)
    migration = _real_migration(service, token, source, host, _key_login(service, token, host))["id"]
    status, body = service.call(
        "PATCH",
        f"/api/v1/migrations/{migration}/",
        {
            "mode": "warm",
            "pre_cutover": "printf '<b>quiet</b>\\n'",
            "post_cutover": "printf '<script>up()</script>\\n'",
        },
        token,
    )
    assert status == 200, body
    _run_in_sync(service, token, migration)

    console.sign_in(username, place=f"/migrations/{migration}")
    console.heading(f"Migration {migration}")
    console.page.get_by_role("button", name="Cut over now").click()
    console.page.get_by_role("button", name="Yes, cut over now").click()
    expect(console.main.locator(".state")).to_have_text("success", timeout=30_000)
    outputs = console.page.get_by_role("region", name="Hooks").locator(".hook-output")
    expect(outputs).to_have_text(["<script>up()</script>", "<b>quiet</b>"])  # newest first, as text
    expect(console.page.get_by_role("region", name="Hooks")).to_contain_text("exit status 0")
    expect(console.main.locator("b, script")).to_have_count(0)
    expect(_syncs(console)).to_have_count(2)  # the first sync and the cutover's
