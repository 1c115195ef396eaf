"""The console's reading of the event stream (SPEC 3.5), against a stand-in
for the stream served from inside the browser: each answer ends after one
message, as a dropped connection does. The console shows the loss, comes back
by itself, and asks to resume after the last event it saw; the token travels
in the header. The real stream is tested in test_fleet_screens.py."""

from __future__ import annotations

from playwright.sync_api import Route, expect

from .support import Console, unique

STREAM = "**/api/v1/events/stream/"


def test_a_dropped_stream_is_shown_and_resumed_after_the_last_event(console: Console) -> None:
    asked: list[dict[str, str]] = []

    def answer(route: Route) -> None:
        asked.append(route.request.headers)
        if len(asked) > 2:
            route.fulfill(status=503, content_type="application/json", body='{"detail": "down"}')
            return
        event = 6 + len(asked)
        route.fulfill(
            status=200,
            headers={"Content-Type": "text/event-stream"},
            body=f': keep-alive\n\nid: {event}\nevent: progress\ndata: {{"migration": 1, "progress": 5}}\n\n',
        )

    console.page.route(STREAM, answer)
    console.sign_up(unique("listener"))
    expect(console.page.locator("#live")).to_have_text("Live updates lost: reconnecting…")
    console.wait_until(lambda: len(asked) >= 3, "two reconnections")  # after 1 s, then 1 s again
    assert [headers.get("last-event-id") for headers in asked[:3]] == [None, "7", "8"]
    assert all(headers["authorization"].startswith("Bearer ") for headers in asked)
    assert all(headers["accept"] == "text/event-stream" for headers in asked)
    expect(console.page.locator("#live")).to_have_text("Live updates lost: reconnecting…")
