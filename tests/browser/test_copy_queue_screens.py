"""The console shows a real run waiting in the copy queue (SPEC 2.10, 5): the
migration's page says it waits for a copy slot and its place in the queue,
and the overview marks it queued. A service of its own has one copy slot and
a slow cap, so a first copy holds the slot while the second run waits."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import expect

from ..integration.service_process import wait_for
from ..sshd_fixtures import Machine
from .conftest import Service, _console_fixture, _serving
from .support import Console, unique
from .test_machine_screens import _key_login, _real_migration


@pytest.fixture(scope="module")
def one_slot_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One real copy at a time, at 1 MB/s: a copy of 10 MB holds the slot
    for ten seconds."""
    yield from _serving(tmp_path_factory.mktemp("one-slot"), "--max-copies", "1", "--max-bandwidth", "1MB")


one_slot_console = _console_fixture("one_slot_service", 1280, 800, "A laptop's screen, against the one-slot service.")


def _slow_source(machine: Machine) -> None:
    (machine.root / "data").mkdir()
    (machine.root / "big").write_bytes(os.urandom(10_000_000))


def test_a_run_waiting_for_a_copy_slot_shows_its_place_in_the_queue(
    one_slot_console: Console, one_slot_service: Service, make_machine: Callable[[str], Machine]
) -> None:
    service, console = one_slot_service, one_slot_console
    host = make_machine("127.0.0.2")
    first_source, second_source = make_machine("127.0.0.1"), make_machine("127.0.0.3")
    _slow_source(first_source)
    _slow_source(second_source)
    # Two users: each has the host as a workload of their own.
    holder = service.api.user(unique("holder"))
    holding = _real_migration(service, holder, first_source, host, _key_login(service, holder, host))["id"]
    username = unique("waiter")
    waiter = service.api.user(username)
    waiting = _real_migration(service, waiter, second_source, host, _key_login(service, waiter, host))["id"]

    def state(token: str, migration: int) -> dict[str, object]:
        status, body = service.call("GET", f"/api/v1/migrations/{migration}/state/", None, token)
        assert status == 200, body
        return dict(body)

    try:
        assert service.call("POST", f"/api/v1/migrations/{holding}/run/", None, holder)[0] == 202
        wait_for("the first copy to hold the slot", lambda: state(holder, holding)["phase"] == "copying" or None)
        assert service.call("POST", f"/api/v1/migrations/{waiting}/run/", None, waiter)[0] == 202
        assert state(waiter, waiting)["queue_position"] == 1

        console.sign_in(username, place="/")
        console.heading("Overview")
        running = console.page.get_by_role("region", name="Running now").get_by_role("listitem")
        expect(running).to_have_count(1)
        expect(running).to_contain_text(re.compile(rf"Migration {waiting} .* queued"))

        console.open_migration(waiting)
        waits = console.main.locator(".queued")
        expect(waits).to_have_text(
            "Waiting for a copy slot: number 1 in the queue that every instance serves."
        )
        expect(console.main.locator(".state")).to_have_text("running")
        console.shoot("queued-run")

        console.page.get_by_role("button", name="Cancel").click()
        expect(console.main.locator(".state")).to_have_text("error", timeout=30_000)
        expect(waits).to_have_count(0)
        expect(console.main.locator(".run-error")).to_have_text("The run was cancelled.")
        assert state(waiter, waiting)["queue_position"] is None
    finally:
        # Both runs stop here, whatever happened above.
        for token, migration in ((waiter, waiting), (holder, holding)):
            if state(token, migration)["state"] == "running":
                service.call("POST", f"/api/v1/migrations/{migration}/cancel/", None, token)
    assert state(holder, holding)["error"] == "cancelled"
    assert not (host.root / "landing" / "big").exists()
