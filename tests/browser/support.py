"""What the browser tests share: a plain HTTP client to arrange data through
the API (faster than clicking), and a driver of the console that speaks in
the console's own words (labels, headings, buttons), as a user reads it."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import Locator, Page, expect

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"
GIB = 2**30


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


Call = Callable[..., tuple[int, Any]]


class Api:
    """A user's view of the JSON API, through a service process's `call`."""

    def __init__(self, call: Call) -> None:
        self.call = call

    def user(self, username: str) -> str:
        """A new account; its access token."""
        assert self.call("POST", "/api/v1/auth/", {"username": username, "password": PASSWORD})[0] == 201
        return self.token(username)

    def token(self, username: str) -> str:
        """A fresh access token (a service may give them a short life)."""
        status, pair = self.call("POST", "/api/v1/token/", {"username": username, "password": PASSWORD})
        assert status == 200, pair
        return str(pair["access"])

    def create(self, token: str, resource: str, body: dict[str, Any]) -> dict[str, Any]:
        status, created = self.call("POST", f"/api/v1/{resource}/", body, token)
        assert status == 201, created
        return dict(created)

    def fleet(
        self,
        token: str,
        ip: str,
        volumes: dict[str, int],
        selected: list[str],
        username: str = "administrator",
        domain: str = "CORP",
    ) -> dict[str, Any]:
        """Credentials, the volumes, a workload, a target and a migration of `selected`."""
        login = self.create(token, "credentials", {"username": username, "password": "pw", "domain": domain})
        mount_points = {
            name: self.create(token, "mount_points", {"name": name, "size": size})["id"]
            for name, size in volumes.items()
        }
        workload = self.create(
            token, "work_loads", {"ip": ip, "credentials": login["id"], "storage": list(mount_points.values())}
        )
        target = self.create(token, "migration_targets", {"cloud_type": "aws", "cloud_credentials": login["id"]})
        migration = self.create(
            token,
            "migrations",
            {
                "source": workload["id"],
                "migration_target": target["id"],
                "selected_mount_points": [mount_points[name] for name in selected],
            },
        )
        return {
            "credentials": login,
            "mount_points": mount_points,
            "workload": workload,
            "target": target,
            "migration": migration,
        }


class Console:
    """The console in one browser tab."""

    def __init__(self, page: Page, base_url: str, api: Api, screenshots: Path, loaded: list[str]) -> None:
        self.page = page
        self.loaded = loaded  # the console's own files fetched so far (each checked for its CSP)
        self.base_url = base_url
        self.api = api
        self.screenshots = screenshots

    # --- where the user is -----------------------------------------------------

    def open(self, place: str = "/") -> None:
        """Go to `place` and wait until its screen has loaded (a redirect, such
        as to sign in, counts as loaded)."""
        self.page.goto(f"{self.base_url}/#{place}")
        self.shown(lambda hash: hash == place or hash.startswith("/signin"), place)

    def shown(self, wanted: Any, what: str) -> None:
        """Wait until the console shows a screen whose place is `wanted` (a
        predicate of the hash, checked here, not in the page), ready."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            state = self.page.evaluate("""() => {
                const main = document.querySelector("main");
                return {
                    hash: location.hash.slice(1) || "/",
                    busy: main.hasAttribute("aria-busy"),
                    place: main.dataset.place,
                };
            }""")
            if not state["busy"] and state["place"] == state["hash"] and wanted(state["hash"]):
                return
            self.page.wait_for_timeout(50)
        raise AssertionError(f"the screen of {what} did not load: {state}")

    def wait_until(self, check: Callable[[], bool], what: str, patience: float = 10) -> None:
        """Let the page run (its timers, its requests, the routes' handlers here)
        until `check` holds; a bound, never an expectation."""
        deadline = time.monotonic() + patience
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.page.wait_for_timeout(50)

    def heading(self, name: str | re.Pattern[str]) -> None:
        expect(self.page.get_by_role("heading", level=1)).to_have_text(name)

    def nav(self, section: str) -> None:
        link = self.page.get_by_role("navigation", name="Main").get_by_role("link", name=section, exact=True)
        place = (link.get_attribute("href") or "#").removeprefix("#")
        link.click()
        self.shown(lambda hash: hash == place, section)
        self.heading(section)

    @property
    def main(self) -> Locator:
        return self.page.locator("main")

    @property
    def status(self) -> Locator:
        return self.page.locator("#status")

    def shoot(self, name: str) -> None:
        self.page.screenshot(path=str(self.screenshots / f"{name}.png"))

    def fits_the_width(self) -> None:
        """Nothing sticks out sideways (the page never scrolls horizontally), and
        every control on the screen has a name a screen reader can say."""
        overflow = self.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than the window"
        nameless = self.page.evaluate("""() => [
                ...document.querySelectorAll("input, select, textarea, button, a[href]")
            ]
            .filter((e) => !e.closest("[hidden]"))
            .filter((e) => !(e.getAttribute("aria-label") || (e.labels && e.labels.length) || e.textContent.trim()))
            .map((e) => e.outerHTML)""")
        assert nameless == [], "controls without a name"

    # --- accounts --------------------------------------------------------------

    def sign_up(self, username: str, password: str = PASSWORD) -> None:
        self.open("/signup")
        form = self.page.get_by_role("form", name="Create an account")
        form.get_by_label("Username").fill(username)
        form.get_by_label("Password").fill(password)
        form.get_by_role("button", name="Create the account").click()
        self.shown(lambda hash: hash == "/", "the overview")
        self.heading("Overview")

    def sign_in(self, username: str, password: str = PASSWORD, place: str | None = None, succeeds: bool = True) -> None:
        if place is not None:
            self.open(place)
        form = self.page.get_by_role("form", name="Sign in")
        form.get_by_label("Username").fill(username)
        form.get_by_label("Password").fill(password)
        form.get_by_role("button", name="Sign in").click()
        if succeeds:
            self.shown(lambda hash: not hash.startswith("/signin"), "the place after signing in")

    # --- forms -----------------------------------------------------------------

    def new(self, section: str, noun: str) -> Locator:
        self.nav(section)
        self.page.get_by_role("link", name=f"New {noun}").click()
        form = self.page.get_by_role("form", name=f"New {noun}")
        expect(form).to_be_visible()
        return form

    @staticmethod
    def choose(select: Locator, text: str) -> None:
        """Pick the option whose label holds `text` (labels also carry ids)."""
        labels = [label for label in select.locator("option").all_inner_texts() if text in label]
        assert len(labels) == 1, (text, labels)
        select.select_option(label=labels[0])

    def fill(
        self,
        form: Locator,
        texts: dict[str, str] | None = None,
        selects: dict[str, str] | None = None,
        checks: list[str] | None = None,
    ) -> None:
        for label, value in (texts or {}).items():
            form.get_by_label(label, exact=True).fill(value)
        for label, value in (selects or {}).items():
            self.choose(form.get_by_label(label, exact=True), value)
        for label in checks or []:
            form.get_by_label(label).check()  # a volume's label also gives its size

    def create(
        self,
        section: str,
        noun: str,
        texts: dict[str, str] | None = None,
        selects: dict[str, str] | None = None,
        checks: list[str] | None = None,
    ) -> int:
        """Create one object through its form; its id, as the console reports it."""
        form = self.new(section, noun)
        self.fill(form, texts, selects, checks)
        form.get_by_role("button", name="Create").click()
        expect(self.status).to_contain_text(f"Created {noun}")
        found = re.search(rf"Created {noun} (\d+)\.", self.status.inner_text())
        assert found, self.status.inner_text()
        return int(found[1])

    def field_says(self, form: Locator, label: str, message: str | re.Pattern[str]) -> None:
        """`message` is shown next to the field and tied to it for screen readers."""
        field = form.get_by_label(label, exact=True)
        expect(field).to_have_attribute("aria-invalid", "true")
        expect(field).to_have_accessible_description(
            re.compile(re.escape(message)) if isinstance(message, str) else message
        )

    # --- migrations ------------------------------------------------------------

    def open_migration(self, migration_id: int) -> None:
        self.open(f"/migrations/{migration_id}")
        self.heading(f"Migration {migration_id}")

    def overall(self) -> Locator:
        return self.page.get_by_label("Overall progress")
