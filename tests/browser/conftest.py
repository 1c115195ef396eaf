"""The console in a real headless Chromium (Debian's, at /usr/bin/chromium: no
browser is ever downloaded) against real service processes.

One worker (make test's --dist loadgroup) runs the whole package, so that one
browser, one driver and one pair of services serve it all, and one tab: a new tab
is a new renderer process, which costs Chromium about a CPU-second here, and
the package has dozens of tests. Each test gets the tab blank (its origin's
storage and the cookies cleared, no route, no time zone set) and signs up
its own users, so tests share a service without seeing each other's objects.
Every test also fails when a page fires a dialog, throws, breaks its
Content-Security-Policy, or gets a console file without the policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Page,
    Playwright,
    Response,
    sync_playwright,
)

from ..integration.service_process import ServiceProcess
from .support import ROOT, Api, Console

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ROOT / "build" / "screenshots"


class Service(ServiceProcess):
    """`migration-api serve` (as `python -m entrypoints serve`) on a free
    loopback port with an SQLite file, answering /health."""

    def __init__(self, folder: Path, *flags: str) -> None:
        super().__init__(f"sqlite:///{folder / 'db.sqlite'}", folder, "service", "--access-log", "off", *flags,
                         secret_key=None)
        self.api = Api(self.call)


def _serving(folder: Path, *flags: str) -> Iterator[Service]:
    running = Service(folder, *flags)
    try:
        running.start()
        yield running
        running.stop()
    finally:
        running.kill()


@pytest.fixture(scope="package")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Runs take 2 seconds: long enough to see a bar move, short enough to wait for.
    It reaches only the two machines of the sshd fixture (127.0.0.1 and .2):
    any other address is outside its allowed networks."""
    yield from _serving(
        tmp_path_factory.mktemp("service"),
        "--run-seconds", "2",
        "--allowed-networks", "127.0.0.1/32,127.0.0.2/32",
    )


@pytest.fixture(scope="package")
def slow_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Access tokens live 2 seconds and runs 20: a token expires under the user's
    hands, and a run lasts long enough to be cancelled."""
    yield from _serving(tmp_path_factory.mktemp("slow"), "--run-seconds", "20", "--access-ttl", "2")


# Package-scoped: the sync driver keeps its event loop marked as running in
# this thread until it stops, and the async tests that follow need none there.
@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    # A missing browser fails every test here, never skips it (issue 13).
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium chromium-driver"
    launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield launched
    launched.close()


class Watch:
    """What a page did that it never should."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.unprotected: list[str] = []
        self.console_files: list[str] = []

    def attach(self, tab: Page) -> None:
        """Watch the tab, and every page it opens."""
        self._page(tab)
        tab.context.on("page", self._page)

    def detach(self, tab: Page) -> None:
        tab.context.remove_listener("page", self._page)
        for event, handler in self._handlers():
            tab.remove_listener(event, handler)

    def _handlers(self) -> list[tuple[str, Any]]:
        return [("dialog", self._dialog), ("pageerror", self._uncaught), ("console", self._console),
                ("response", self._response)]

    def _page(self, page: Page) -> None:
        for event, handler in self._handlers():
            page.on(event, handler)

    def _uncaught(self, error: Exception) -> None:
        self.errors.append(f"uncaught: {error}")

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            self.errors.append(f"CSP: {message.text}")

    def _response(self, response: Response) -> None:
        path = response.url.removeprefix(self.base_url)
        if path.startswith("/api/") or not response.url.startswith(self.base_url):
            return
        self.console_files.append(path)
        if "frame-ancestors 'none'" not in response.headers.get("content-security-policy", ""):
            self.unprotected.append(path)

    def check(self) -> None:
        assert self.dialogs == [], "a page opened a dialog: script ran"
        assert self.errors == []
        assert self.unprotected == [], "console files served without the Content-Security-Policy"


@pytest.fixture(scope="package")
def tab(browser: Browser) -> Iterator[Page]:
    """The tab every console of the package is shown in, in a context of its own."""
    context = browser.new_context(accept_downloads=True)
    context.set_default_timeout(10_000)
    page = context.new_page()
    yield page
    context.close()


def _blank(tab: Page, origin: str) -> None:
    """The tab as a new one would be for `origin`: its session and local
    storage there cleared (they outlive navigations, in a tab), no cookie,
    no route, the machine's own time zone, showing the service's /health (no
    script: the test's first page is the console's first document)."""
    for page in tab.context.pages:
        if page != tab:
            page.close()
    tab.unroute_all(behavior="ignoreErrors")
    devtools = tab.context.new_cdp_session(tab)
    devtools.send("Emulation.setTimezoneOverride", {"timezoneId": ""})
    devtools.detach()
    tab.context.clear_cookies()
    # Session storage is cleared from a page of its origin alone.
    tab.goto(f"{origin}/health")
    tab.evaluate("sessionStorage.clear(); localStorage.clear()")


def _console_page(tab: Page, service: Service, width: int, height: int) -> Iterator[Console]:
    _blank(tab, service.url)
    tab.set_viewport_size({"width": width, "height": height})
    watch = Watch(service.url)
    watch.attach(tab)
    try:
        yield Console(tab, service.url, service.api, SCREENSHOTS, watch.console_files)
        watch.check()
    finally:
        watch.detach(tab)
        tab.goto("about:blank")  # the console's timers and its stream end here


def _console_fixture(service: str, width: int, height: int, doc: str) -> Any:
    def console_at(tab: Page, request: pytest.FixtureRequest) -> Iterator[Console]:
        yield from _console_page(tab, request.getfixturevalue(service), width, height)

    console_at.__doc__ = doc
    return pytest.fixture(console_at)


console = _console_fixture("service", 1280, 800, "A laptop's screen.")
narrow_console = _console_fixture("service", 390, 844, "A phone held upright: 390 CSS pixels wide.")
wide_console = _console_fixture("service", 1920, 1080, "A full-HD monitor.")
slow_console = _console_fixture("slow_service", 1280, 800, "A laptop's screen, against the slow service.")


def pytest_configure(config: Any) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Each worker that ran even one of these tests started its own Chromium,
    # services and Playwright driver (the driver alone took some 5 CPU-s).
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.xdist_group("browser"))
