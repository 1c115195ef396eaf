"""SPEC 3.5 as properties, through the CSV edge and the core on in-memory
storage: for any valid inventory, import then export then import is a fixed
point; for a table with bad rows, the refusal names exactly those rows and
leaves every table as it was."""

from __future__ import annotations

import copy
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import migration_core as core
from adapters.clock import SystemClock
from adapters.memory import MemoryStorage
from entrypoints.inventory_csv import import_csv, parse, render
from migration_core import InventoryRow, Plan
from migration_core.entities import volume_key

CLOCK = SystemClock()

OWNER = 1

# Any text a cell may hold, hostile included: quotes, commas, line breaks,
# `;`, and formula starts (= + - @ tab CR) behind any number of quotes.
cell_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8
) | st.sampled_from(["=cmd|' /C calc'!A0", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "'=x", "''+y", "'plain"])
required_text = cell_text.filter(bool)
# Names are trimmed on import and `;` separates them, so names hold neither.
name = cell_text.map(lambda s: s.replace(";", "").strip()).filter(bool)
# Volume names are quoted where they must be, so they hold anything: `;`,
# `=`, quotes, blank space at the ends.
volume_name = required_text | st.sampled_from(['a;b', 'k=v', 'say "hi"', '"', '";"', ';', '=', ' padded ', '""x'])
ports = st.none() | st.integers(1, 65535)
systems = st.none() | st.sampled_from(["windows", "linux"])
roots = st.none() | st.sampled_from(["/", "/mnt/snap", "//srv/./a b/", "/x;y", '/"q"'])
# None: the cell left empty (a new migration is cold, with the default interval).
modes = st.none() | st.sampled_from(["cold", "warm"])
intervals = st.none() | st.integers(60, 604800)


@st.composite
def inventories(draw: st.DrawFn, min_size: int = 0) -> list[InventoryRow]:
    count = draw(st.integers(min_size, 6))
    ips = draw(st.lists(st.integers(1, 2**32 - 2), min_size=count, max_size=count, unique=True))
    waves = draw(st.lists(name, min_size=1, max_size=3, unique=True))
    rows = []
    for number, ip in enumerate(ips, start=2):
        volume_names = draw(st.lists(volume_name, max_size=4, unique_by=volume_key))
        volumes = tuple((n, draw(st.integers(0, 2**63 - 1))) for n in volume_names)
        plan = None
        if volume_names and draw(st.booleans()):
            selected = draw(st.lists(st.sampled_from(volume_names), min_size=1, unique=True))
            plan = Plan(
                cloud_type=draw(st.sampled_from(["aws", "azure", "vsphere", "vcloud"])),
                cloud_username=draw(required_text),
                cloud_password=draw(required_text),
                cloud_domain=draw(cell_text),
                select=tuple(selected) if draw(st.booleans()) else None,
                wave=draw(st.sampled_from(["", *waves])),
                mode=draw(modes),
                sync_interval=draw(intervals),
            )
        rows.append(
            InventoryRow(
                row=number,
                ip=str(core.entities.ipaddress.ip_address(ip)),
                username=draw(required_text),
                password=draw(required_text),
                domain=draw(cell_text),
                volumes=volumes,
                plan=plan,
                port=draw(ports),
                os=draw(systems),
                root=draw(roots),
            )
        )
    return rows


def csv_of(rows: list[InventoryRow]) -> bytes:
    return render(rows).encode("utf-8")


def with_passwords(exported: bytes, rows: list[InventoryRow]) -> bytes:
    """The exported file with each row's passwords filled in again."""
    parsed, errors = parse(exported)
    assert errors == []
    by_ip = {row.ip: row for row in rows}
    filled = []
    for row in parsed:
        source = by_ip[row.ip]
        plan = row.plan and attrs.evolve(row.plan, cloud_password=source.plan.cloud_password if source.plan else "")
        filled.append(attrs.evolve(row, password=source.password, plan=plan))
    return csv_of(filled)


def tables(storage: MemoryStorage) -> dict[str, Any]:
    return copy.deepcopy(storage._tables.rows)


def fresh() -> MemoryStorage:
    storage = MemoryStorage()
    with storage.unit_of_work() as uow:
        uow.users.add(core.User("owner", "hash"))
        uow.commit()
    return storage


@settings(max_examples=40)
@given(inventories())
def test_import_export_import_is_a_fixed_point(rows: list[InventoryRow]) -> None:
    storage = fresh()
    first = import_csv(storage, CLOCK, OWNER, csv_of(rows))
    assert (first.created, first.updated, first.unchanged) == (len(rows), 0, 0)

    exported = core_export(storage)
    before = tables(storage)
    for again in (with_passwords(exported, rows), exported):  # filled in, or left empty
        report = import_csv(storage, CLOCK, OWNER, again)
        assert (report.created, report.updated, report.unchanged) == (0, 0, len(rows))
        assert tables(storage) == before
    assert core_export(storage) == exported


def core_export(storage: MemoryStorage) -> bytes:
    from entrypoints.inventory_csv import export_csv

    return export_csv(storage, OWNER).encode("utf-8")


def _corrupt(row: InventoryRow, how: str) -> InventoryRow:
    if how == "ip":
        return attrs.evolve(row, ip="300.1.2.3")
    if how == "username":
        return attrs.evolve(row, username="")
    if how == "size":
        return attrs.evolve(row, volumes=(*(row.volumes or ()), ("Z:\\", -1)))
    plan = {
        "cloud_type": Plan("gcp", "u", "p"),
        "mode": Plan("aws", "u", "p", mode="hot"),
        "sync_interval": Plan("aws", "u", "p", mode="warm", sync_interval=59),
    }[how]
    return attrs.evolve(row, volumes=row.volumes or (("C:\\", 1),), plan=plan)


@settings(max_examples=40)
@given(
    existing=inventories(min_size=1),
    changes=inventories(min_size=1),
    bad=st.data(),
)
def test_bad_rows_are_named_exactly_and_nothing_is_written(
    existing: list[InventoryRow], changes: list[InventoryRow], bad: st.DataObject
) -> None:
    storage = fresh()
    import_csv(storage, CLOCK, OWNER, csv_of(existing))
    # The table mixes rows of known ips (updates) and new ones.
    known = [attrs.evolve(row, ip=existing[i % len(existing)].ip) for i, row in enumerate(changes) if i % 2]
    table = [attrs.evolve(row, row=n) for n, row in enumerate([*known, *changes[::2]], start=2)]
    table = list({row.ip: row for row in table}.values())  # one row an ip
    table = [attrs.evolve(row, row=n) for n, row in enumerate(table, start=2)]
    broken = bad.draw(st.sets(st.sampled_from([row.row for row in table]), min_size=1))
    hows = {
        n: bad.draw(st.sampled_from(["ip", "username", "size", "cloud_type", "mode", "sync_interval"])) for n in broken
    }
    table = [_corrupt(row, hows[row.row]) if row.row in broken else row for row in table]
    before = tables(storage)

    for dry_run in (True, False):
        with pytest.raises(core.RowsRefused) as refused:
            import_csv(storage, CLOCK, OWNER, csv_of(table), dry_run=dry_run)
        assert {error.row for error in refused.value.rows} == broken
        assert tables(storage) == before


@given(inventories(min_size=1))
def test_a_dry_run_answers_as_the_import_and_writes_nothing(rows: list[InventoryRow]) -> None:
    storage = fresh()
    before = tables(storage)
    checked = import_csv(storage, CLOCK, OWNER, csv_of(rows), dry_run=True)
    imported = import_csv(fresh(), CLOCK, OWNER, csv_of(rows))
    # The same counts; the ids of what a dry run made name nothing, so it names none.
    assert checked == attrs.evolve(imported, created_workloads=())
    assert len(imported.created_workloads) == imported.created
    assert tables(storage) == before
