"""Where the API says no, the console says why, in place: field errors at
their fields, a 409's reason in words, a 429's wait, and a session that ends
takes the user to sign in and back. Each user sees only their own objects, and
hostile text stays text on every screen."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from .conftest import Service
from .support import GIB, PASSWORD, Console, unique

SCREENS = ["Overview", "Credentials", "Mount points", "Workloads", "Targets", "Migrations"]


def test_a_bad_ip_is_explained_at_the_ip_field(console: Console, service: Service) -> None:
    username = unique("typo")
    token = service.api.user(username)
    service.api.create(token, "credentials", {"username": "root", "password": "pw"})
    console.sign_in(username, place="/")
    form = console.new("Workloads", "workload")
    console.fill(form, {"IP address": "10.0.0.999"}, {"Login": "root"})
    form.get_by_role("button", name="Create").click()
    console.field_says(form, "IP address", "'10.0.0.999' is not a valid IPv4 or IPv6 address.")
    expect(form.get_by_label("IP address", exact=True)).to_be_focused()  # straight to what needs fixing
    expect(form.get_by_label("IP address", exact=True)).to_have_value("10.0.0.999")  # nothing typed is lost


def test_deleting_credentials_still_in_use_says_who_uses_them(console: Console, service: Service) -> None:
    username = unique("keeper")
    token = service.api.user(username)
    fleet = service.api.fleet(token, "10.3.0.1", {"C:\\": GIB}, ["C:\\"])
    credentials = fleet["credentials"]["id"]
    console.sign_in(username, place="/credentials")
    console.heading("Credentials")
    console.page.get_by_role("button", name=f"Delete credentials {credentials}").click()
    console.page.get_by_role("button", name="Yes, delete").click()
    alert = console.main.get_by_role("alert").filter(has_text="not deleted")
    expect(alert).to_contain_text(f"workload {fleet['workload']['id']}")
    expect(alert).to_contain_text(f"migration target {fleet['target']['id']}")
    expect(console.main.get_by_role("cell", name="administrator", exact=True)).to_be_visible()
    console.shoot("credentials-refused")


def test_too_many_failed_sign_ins_say_when_to_try_again(console: Console, service: Service) -> None:
    username = unique("forgetful")
    service.api.user(username)
    for _ in range(10):
        assert service.api.call("POST", "/api/v1/token/", {"username": username, "password": "wrong guess"})[0] == 401
    console.sign_in(username, place="/signin", succeeds=False)
    expect(console.page.get_by_role("alert")).to_have_text(
        re.compile(r"Too many attempts\. Try again in \d+ seconds\.")
    )


def test_a_wrong_password_is_said_plainly(console: Console, service: Service) -> None:
    username = unique("mistyped")
    service.api.user(username)
    console.sign_in(username, "not my password", place="/signin", succeeds=False)
    expect(console.page.get_by_role("alert")).to_have_text("Wrong username or password.")


def test_a_second_user_sees_none_of_the_first_users_objects(console: Console, service: Service) -> None:
    first = service.api.user(unique("first"))
    fleet = service.api.fleet(
        first,
        "10.4.0.1",
        {"C:\\": GIB, "FIRSTS-VOLUME": GIB},
        ["C:\\"],
        username="firsts-login",
        domain="FIRSTS-DOMAIN",
    )
    console.sign_up(unique("second"))
    for screen in SCREENS:
        console.nav(screen)
        text = console.main.inner_text()
        for secret in ("10.4.0.1", "firsts-login", "FIRSTS-DOMAIN", "FIRSTS-VOLUME"):
            assert secret not in text, (screen, secret)
        if screen != "Overview":
            expect(console.main).to_contain_text(f"No {screen.lower()} yet.")
    console.open("/")
    expect(console.main.get_by_role("link", name=re.compile(r"^0\s+not started$"))).to_be_visible()

    form = console.new("Workloads", "workload")
    assert form.get_by_label("Login").locator("option").all_inner_texts() == ["Choose…"]
    expect(form).to_contain_text("No mount points yet")

    migration = fleet["migration"]["id"]
    console.open(f"/migrations/{migration}")
    expect(console.main.get_by_role("alert")).to_have_text("Not found: it may have been deleted.")
    console.open(f"/migrations?edit={migration}")
    expect(console.main.get_by_role("alert")).to_have_text("Not found: it may have been deleted.")


HOSTILE = [
    "<img src=x onerror=alert(1)>",
    '"><script>alert(1)</script>',
    "\u202eevil.exe\u202c",
    "n" * 150,
]


def test_hostile_text_is_shown_as_text_on_every_screen(console: Console, service: Service) -> None:
    # As usernames: the ones the API refuses are refused at the field, the longest allowed one is shown.
    console.open("/signup")
    form = console.page.get_by_role("form", name="Create an account")
    for name in HOSTILE[:3]:
        form.get_by_label("Username").fill(name)
        form.get_by_label("Password").fill(PASSWORD)
        form.get_by_role("button", name="Create the account").click()
        console.field_says(form, "Username", "Use 1 to 150 characters: letters, digits and @ . + - _ only.")
    long_name = "u" * 140 + unique("")[:10]
    console.sign_up(long_name)
    expect(console.page.locator("#who")).to_have_text(f"Signed in as {long_name}")
    console.fits_the_width()

    # As names and domains: typed into the forms, then everywhere they are shown.
    console.create("Credentials", "credentials", {"Username": HOSTILE[0], "Password": "pw", "Domain": HOSTILE[1]})
    token = service.api.call("POST", "/api/v1/token/", {"username": long_name, "password": PASSWORD})[1]["access"]
    for name in HOSTILE:
        service.api.create(token, "credentials", {"username": name, "password": "pw", "domain": name})
    fleet = service.api.fleet(
        token,
        "10.5.0.1",
        {"C:\\": GIB, **{name: GIB for name in HOSTILE}},
        ["C:\\", *HOSTILE],
        username=HOSTILE[2],
        domain=HOSTILE[3],
    )
    console.open_migration(fleet["migration"]["id"])
    console.page.get_by_role("button", name="Run").click()
    expect(console.overall()).to_have_attribute("value", "100", timeout=15_000)

    places = [
        f"/migrations/{fleet['migration']['id']}",
        "/",
        "/credentials",
        "/mount_points",
        "/workloads",
        f"/workloads?edit={fleet['workload']['id']}",
        "/targets",
        "/migrations",
        "/migrations?new=1",
    ]
    for place in places:
        console.open(place)
        assert console.page.locator("img, main script, iframe, object").count() == 0, place
        if place not in ("/", "/migrations?new=1"):
            text = console.main.inner_text()
            assert [name for name in HOSTILE if name not in text] == [], (place, text)
        console.fits_the_width()
    console.open_migration(fleet["migration"]["id"])
    expect(console.page.get_by_role("region", name="Target VM")).to_contain_text(f"{HOSTILE[3]}\\{HOSTILE[2]}")
    console.shoot("hostile-text")
    # The page and every file it loaded carried the policy (checked as they came: see conftest).
    assert "/" in console.loaded and any(path.endswith("/app.js") for path in console.loaded)


def test_an_access_token_expiring_mid_form_loses_nothing(slow_console: Console, slow_service: Service) -> None:
    """Access tokens live 2 seconds here: the form is filled in slower than that."""
    username = unique("slowtyper")
    slow_service.api.user(username)
    slow_console.sign_in(username, place="/")
    slow_console.heading("Overview")
    first_token = slow_console.page.evaluate("sessionStorage.getItem('console.access')")
    form = slow_console.new("Mount points", "mount point")
    slow_console.fill(form, {"Name": "E:\\", "Size": "2 GiB"})
    slow_console.wait_until(
        lambda: slow_service.api.call("GET", "/api/v1/credentials/", token=first_token)[0] == 401,
        "the service to refuse the first access token",
    )
    form.get_by_role("button", name="Create").click()
    expect(slow_console.status).to_contain_text("Created mount point")
    slow_console.heading("Mount points")  # still here, not sent to sign in
    expect(slow_console.main.get_by_role("cell", name="E:\\", exact=True)).to_be_visible()
    assert slow_console.page.evaluate("sessionStorage.getItem('console.access')") != first_token


def test_a_session_that_cannot_be_renewed_signs_in_again_and_comes_back(console: Console, service: Service) -> None:
    username = unique("returning")
    token = service.api.user(username)
    migration = service.api.fleet(token, "10.6.0.1", {"C:\\": GIB}, ["C:\\"])["migration"]["id"]
    console.sign_in(username, place="/")
    console.heading("Overview")
    # Both tokens become worthless, as after the refresh token's lifetime.
    console.page.evaluate(
        "sessionStorage.setItem('console.access', 'expired'); sessionStorage.setItem('console.refresh', 'expired')"
    )
    console.page.goto(f"{console.base_url}/#/migrations/{migration}")
    console.heading("Sign in")
    expect(console.status).to_contain_text("sign in again")
    console.sign_in(username)
    console.heading(f"Migration {migration}")

    console.page.get_by_role("button", name="Sign out").click()
    console.heading("Sign in")
    assert console.page.evaluate(
        "[sessionStorage.getItem('console.access'), sessionStorage.getItem('console.refresh')]"
    ) == [None, None]
    console.page.goto(f"{console.base_url}/#/credentials")
    console.heading("Sign in")
