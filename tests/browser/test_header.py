"""The header promises of SPEC 5: nothing of the signed-in header (navigation,
who is signed in, sign out, the live sign) shows while signed out, and the
live sign says "connecting" until the stream has answered once, "Live" once it
has, and speaks of a loss only after one (test_live_client.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

from playwright.sync_api import Route, expect

from .support import Console, unique

STREAM = "**/api/v1/events/stream/"
CONNECTING = "Live updates: connecting…"


def _until(console: Console, done: Callable[[], bool], what: str) -> None:
    """Wait for a condition of this side (the page's events are handled meanwhile)."""
    deadline = time.monotonic() + 10
    while not done():
        assert time.monotonic() < deadline, f"waited in vain: {what}"
        console.page.wait_for_timeout(50)


def _visible_header_text(console: Console) -> list[str]:
    """The text of every element of the header a user can see, innermost first."""
    seen: list[str] = console.page.evaluate("""() => [...document.querySelectorAll("header.top *")]
        .filter((e) => e.children.length === 0 && e.checkVisibility({visibilityProperty: true}))
        .map((e) => e.textContent.trim())
        .filter((text) => text !== "")""")
    return seen


def _nothing_of_a_session_shows(console: Console) -> None:
    page = console.page
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
    expect(page.locator("#live")).to_be_hidden()
    expect(page.locator("#who")).to_be_hidden()
    expect(page.get_by_role("navigation", name="Main")).to_be_hidden()
    assert _visible_header_text(console) == ["Migrations console"]


def test_signed_out_pages_show_nothing_of_a_session(console: Console) -> None:
    console.open("/")
    console.heading("Sign in")
    _nothing_of_a_session_shows(console)
    console.open("/signup")
    console.heading("Create an account")
    _nothing_of_a_session_shows(console)

    console.sign_up(unique("visitor"))
    expect(console.page.get_by_role("button", name="Sign out")).to_be_visible()
    expect(console.page.locator("#who")).to_contain_text("Signed in as visitor")
    expect(console.page.locator("#live")).to_have_text("Live")

    console.page.get_by_role("button", name="Sign out").click()
    console.heading("Sign in")
    expect(console.status).to_contain_text("Signed out.")
    _nothing_of_a_session_shows(console)


def test_the_live_sign_says_connecting_until_the_stream_first_answers(console: Console) -> None:
    held: list[Route] = []
    console.page.route(STREAM, lambda route: held.append(route))  # no answer until the test lets it through
    console.sign_up(unique("patient"))
    sign = console.page.locator("#live")
    expect(sign).to_be_visible()
    expect(sign).to_have_text(CONNECTING)
    console.nav("Migrations")  # a new screen while waiting: still only connecting
    expect(sign).to_have_text(CONNECTING)
    _until(console, lambda: len(held) == 1, "the stream was asked for")

    held[0].continue_()  # on to the real stream
    expect(sign).to_have_text("Live")
