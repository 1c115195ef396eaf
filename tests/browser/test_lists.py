"""Every resource's list: paged, filtered, ordered, and its objects edited and
deleted in place, with the list's place kept in the address."""

from __future__ import annotations

from playwright.sync_api import expect

from .conftest import Service
from .support import Console, unique


def test_a_long_list_pages_filters_and_orders(console: Console, service: Service) -> None:
    username = unique("lister")
    token = service.api.user(username)
    for n in range(1, 26):
        service.api.create(token, "mount_points", {"name": f"/data{n:02}", "size": n})
    console.sign_in(username, place="/mount_points")
    table = console.main.get_by_role("table")
    expect(table).to_have_accessible_name("Mount points: 1 to 20 of 25")
    console.page.get_by_role("link", name="Next page").click()
    expect(table).to_have_accessible_name("Mount points: 21 to 25 of 25")
    expect(console.page.get_by_role("link", name="Next page")).to_have_count(0)
    console.page.reload()  # the page is in the address
    expect(table).to_have_accessible_name("Mount points: 21 to 25 of 25")
    console.page.get_by_role("link", name="Previous page").click()
    expect(table).to_have_accessible_name("Mount points: 1 to 20 of 25")

    filters = console.page.get_by_role("form", name="Filter mount points")
    filters.get_by_label("Order").select_option(label="Newest first")
    filters.get_by_role("button", name="Filter").click()
    expect(table.get_by_role("row").nth(1).get_by_role("cell").nth(1)).to_have_text("/data25")
    filters = console.page.get_by_role("form", name="Filter mount points")
    filters.get_by_label("Name").fill("/data07")
    filters.get_by_label("Name").press("Enter")
    expect(table).to_have_accessible_name("Mount points: 1 to 1 of 1")
    console.page.get_by_role("link", name="Clear").click()
    expect(table).to_have_accessible_name("Mount points: 1 to 20 of 25")


def test_objects_are_edited_and_deleted_in_place(console: Console, service: Service) -> None:
    username = unique("editor")
    token = service.api.user(username)
    login = service.api.create(token, "credentials", {"username": "admin", "password": "first", "domain": "OLD"})
    spare = service.api.create(token, "mount_points", {"name": "E:\\", "size": 1})
    console.sign_in(username, place="/credentials")

    console.page.get_by_role("link", name=f"Edit credentials {login['id']}").click()
    form = console.page.get_by_role("form", name=f"Edit credentials {login['id']}")
    expect(form.get_by_label("Username")).to_have_value("admin")
    expect(form.get_by_label("Password")).to_have_value("")  # never shown again
    form.get_by_label("Domain").fill("NEW")
    form.get_by_label("Domain").press("Enter")
    expect(console.status).to_have_text(f"Saved credentials {login['id']}.")
    expect(console.main.get_by_role("cell", name="NEW", exact=True)).to_be_visible()
    assert service.api.call("GET", f"/api/v1/credentials/{login['id']}/", token=token)[1]["domain"] == "NEW"

    console.nav("Mount points")
    console.page.get_by_role("button", name=f"Delete mount point {spare['id']}").click()
    console.page.get_by_role("button", name="Keep").click()  # changed their mind: nothing happens
    expect(console.main.get_by_role("cell", name="E:\\", exact=True)).to_be_visible()
    console.page.get_by_role("button", name=f"Delete mount point {spare['id']}").click()
    console.page.get_by_role("button", name="Yes, delete").click()
    expect(console.status).to_have_text(f"Deleted mount point {spare['id']}.")
    expect(console.main).to_contain_text("No mount points yet.")
    assert service.api.call("GET", f"/api/v1/mount_points/{spare['id']}/", token=token)[0] == 404
