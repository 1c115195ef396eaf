"""The console in a real headless Chromium (Debian's, at /usr/bin/chromium: no
browser is ever downloaded) against real service processes.

One browser serves the whole session; each test gets a fresh context (so a
fresh sessionStorage) and signs up its own users, so tests share a service
without seeing each other's objects. Every test also fails when a page fires
a dialog, throws, breaks its Content-Security-Policy, or gets a console file
without the policy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Dialog, Page, Playwright, Response, sync_playwright

from .support import ROOT, Api, Console, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
START_TIMEOUT = 20.0
SCREENSHOTS = ROOT / "build" / "screenshots"


class Service:
    """`migration-api serve` on a free loopback port with an SQLite file."""

    def __init__(self, folder: Path, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {key: value for key, value in os.environ.items() if not key.startswith("MIGRATION_")}
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("migration-api")), "serve", "--host", "127.0.0.1",
             "--port", str(self.port), "--storage", f"sqlite:///{folder / 'db.sqlite'}",
             "--access-log", "off", *flags],
            env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.api = Api(self.url)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the service exited at start: {self.process.communicate()[0]}")
            try:
                if self.api.call("GET", "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError("the service did not answer /health in time")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.communicate()


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Runs take 2 seconds: long enough to see a bar move, short enough to wait for."""
    running = Service(tmp_path_factory.mktemp("service"), "--run-seconds", "2")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def slow_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Access tokens live 2 seconds and runs 20: a token expires under the user's
    hands, and a run lasts long enough to be cancelled."""
    running = Service(tmp_path_factory.mktemp("slow"), "--run-seconds", "20", "--access-ttl", "2")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
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

    def attach(self, context: BrowserContext) -> None:
        context.on("page", self._page)

    def _page(self, page: Page) -> None:
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("console", self._console)
        page.on("response", self._response)

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


def _console_page(browser: Browser, service: Service, width: int, height: int) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    context.set_default_timeout(10_000)
    watch = Watch(service.url)
    watch.attach(context)
    page = context.new_page()
    try:
        yield Console(page, service.url, service.api, SCREENSHOTS)
        watch.check()
    finally:
        context.close()


@pytest.fixture
def console(browser: Browser, service: Service) -> Iterator[Console]:
    yield from _console_page(browser, service, 1280, 800)


@pytest.fixture
def narrow_console(browser: Browser, service: Service) -> Iterator[Console]:
    """A phone held upright: 390 CSS pixels wide."""
    yield from _console_page(browser, service, 390, 844)


@pytest.fixture
def slow_console(browser: Browser, slow_service: Service) -> Iterator[Console]:
    yield from _console_page(browser, slow_service, 1280, 800)


def pytest_configure(config: Any) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
