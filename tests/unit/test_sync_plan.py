"""SPEC 2.8, only what differs: the plan of a volume's copy, from two
listings. Hypothesis draws a copy in place and the changes the source went
through since; the generator keeps its own record of what it changed, and
the plan must send exactly that, link the rest, and leave out what went."""

from __future__ import annotations

from dataclasses import dataclass

import attrs
from hypothesis import given
from hypothesis import strategies as st

from migration_core.sync_plan import (
    DIRECTORY,
    REGULAR,
    SECOND,
    TOP,
    Entry,
    VolumePlan,
    plan_volume,
    same_copy,
    tree_order,
)

NAMES = [b"a", b"b", b"c d", b"-x", b"\xff", b"new\nline"]
# The copy in place was written at 2_000; the source's entries changed before
# (a change at the very instant of the copy counts as after it).
WRITTEN = 2_000


def entries(kind: str) -> st.SearchStrategy[Entry]:
    return st.builds(
        Entry,
        kind=st.just(kind),
        size=st.integers(0, 3) if kind != DIRECTORY else st.just(4096),
        mtime=st.integers(0, 3).map(lambda second: second * SECOND + 1),  # a filesystem of nanoseconds
        ctime=st.integers(0, WRITTEN - 1),
        mode=st.sampled_from([0o644, 0o600, 0o755]),
        uid=st.integers(0, 1),
        gid=st.integers(0, 1),
        link=st.sampled_from([b"a", b"../b"]) if kind == "l" else st.just(b""),
    )


@st.composite
def trees(draw: st.DrawFn) -> dict[bytes, Entry]:
    """A listing whose every entry's parent is a directory of it."""
    tree = {TOP: draw(entries(DIRECTORY))}
    for parts in draw(st.lists(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3), max_size=12)):
        path = TOP
        for depth, name in enumerate(parts):
            if tree[path].kind != DIRECTORY:
                break
            path += b"/" + name
            last = depth == len(parts) - 1
            if path not in tree:
                tree[path] = draw(entries(draw(st.sampled_from([REGULAR, REGULAR, "l", "p"])) if last else DIRECTORY))
    return tree


@dataclass
class Changed:
    """The source after changes to the copy in place, and what the generator
    knows must be sent (`sent`) with owners compared or not."""

    source: dict[bytes, Entry]
    sent: set[bytes]
    sent_without_owners: set[bytes]


CHANGES = ["keep", "keep", "contents", "mtime", "size", "mode", "owner", "link", "kind", "remove"]


@st.composite
def changed(draw: st.DrawFn, place: dict[bytes, Entry]) -> Changed:
    source: dict[bytes, Entry] = {}
    sent: set[bytes] = set()
    owner_only: set[bytes] = set()
    removed: list[bytes] = []
    for path, entry in place.items():
        if any(path.startswith(gone + b"/") for gone in removed):
            continue
        if entry.kind == DIRECTORY:
            source[path] = attrs.evolve(entry, mtime=draw(st.integers(0, 9)))  # a directory's own time never counts
            continue
        change = draw(st.sampled_from(CHANGES))
        kept = attrs.evolve(entry, ctime=draw(st.integers(0, WRITTEN - 1)))
        if change == "remove" and path != TOP:
            removed.append(path)
            continue
        if change == "keep":
            source[path] = kept
            continue
        source[path] = {
            "contents": attrs.evolve(kept, ctime=WRITTEN + 1),  # same size and time, written since
            "mtime": attrs.evolve(kept, mtime=entry.mtime + 10 * SECOND),
            "size": attrs.evolve(kept, size=entry.size + 1),
            "mode": attrs.evolve(kept, mode=entry.mode ^ 0o100),
            "owner": attrs.evolve(kept, uid=entry.uid + 1),
            "link": attrs.evolve(kept, link=entry.link + b"x"),
            "kind": attrs.evolve(kept, kind="s" if entry.kind != "s" else REGULAR),
        }[change]
        (owner_only if change == "owner" else sent).add(path)
    for name in draw(st.lists(st.sampled_from([b"added", b"added 2"]), unique=True)):
        path = TOP + b"/" + name
        if path not in source:
            source[path] = draw(entries(REGULAR))
            sent.add(path)
    return Changed(source, sent | owner_only, sent)


@st.composite
def place_and_source(draw: st.DrawFn) -> tuple[dict[bytes, Entry], Changed]:
    place = {path: attrs.evolve(entry, ctime=WRITTEN) for path, entry in draw(trees()).items()}
    return place, draw(changed(place))


def _applied(plan: VolumePlan, source: dict[bytes, Entry], place: dict[bytes, Entry]) -> dict[bytes, Entry]:
    """The new copy the plan makes: directories and sends from the source, links from the place."""
    made = {path: source[path] for path in (*plan.dirs, *plan.sends)}
    made.update({path: place[path] for path in plan.links})
    return made


def _without_ctime(tree: dict[bytes, Entry]) -> dict[bytes, Entry]:
    return {path: attrs.evolve(entry, ctime=0) for path, entry in tree.items()}


@given(place_and_source(), st.booleans())
def test_the_plan_sends_exactly_what_changed_and_links_the_rest(
    drawn: tuple[dict[bytes, Entry], Changed], owners: bool
) -> None:
    place, change = drawn
    plan = plan_volume(change.source, place, owners=owners)

    assert set(plan.sends) == (change.sent if owners else change.sent_without_owners)
    assert set(plan.dirs) == {path for path, entry in change.source.items() if entry.kind == DIRECTORY}
    assert set(plan.links).isdisjoint(plan.sends) and set(plan.links) <= place.keys()
    assert plan.send_bytes == sum(change.source[p].size for p in plan.sends if change.source[p].kind == REGULAR)
    assert set(plan.drops) == place.keys() - change.source.keys()


@given(place_and_source())
def test_the_new_copy_holds_the_source_as_listed(drawn: tuple[dict[bytes, Entry], Changed]) -> None:
    place, change = drawn
    plan = plan_volume(change.source, place, owners=True)
    assert _without_ctime(_applied(plan, change.source, place)) == _without_ctime(change.source)


@given(place_and_source())
def test_parents_come_before_what_they_hold_and_drops_after(drawn: tuple[dict[bytes, Entry], Changed]) -> None:
    place, change = drawn
    plan = plan_volume(change.source, place, owners=True)
    made = tree_order((*plan.dirs, *plan.sends))
    for order in (plan.dirs, plan.sends, plan.links, made):
        seen: set[bytes] = set()
        for path in order:
            parent = path.rpartition(b"/")[0]
            assert path == TOP or parent not in order or parent in seen
            seen.add(path)
    for index, path in enumerate(plan.drops):
        assert not any(later.startswith(path + b"/") for later in plan.drops[index + 1:])


@given(trees())
def test_an_unchanged_source_sends_nothing_and_a_first_copy_sends_everything(tree: dict[bytes, Entry]) -> None:
    place = {path: attrs.evolve(entry, ctime=WRITTEN) for path, entry in tree.items()}
    again = plan_volume(tree, place, owners=True)
    assert (again.sends, again.drops, again.send_bytes, again.changes) == ((), (), 0, False)
    first = plan_volume(tree, {}, owners=True)
    assert first.links == () and len(first.sends) + len(first.dirs) == len(tree)


def test_one_file_of_many_changed_is_the_one_sent() -> None:
    top = Entry(DIRECTORY, 4096, 1, 1, 0o755, 0, 0)
    source = {TOP: top} | {b"./f%d" % i: Entry(REGULAR, 131072, 5, 5, 0o644, 0, 0) for i in range(8192)}
    place = {path: attrs.evolve(entry, ctime=WRITTEN) for path, entry in source.items()}
    source[b"./f17"] = Entry(REGULAR, 131072, 6, WRITTEN + 5, 0o644, 0, 0)
    plan = plan_volume(source, place, owners=True)
    assert (plan.sends, plan.send_bytes, len(plan.links)) == ((b"./f17",), 131072, 8191)


def test_a_copy_on_a_filesystem_of_whole_seconds_is_the_same_and_clocks_apart_are_allowed_for() -> None:
    second = SECOND
    source = Entry(REGULAR, 10, 5 * second + 123_456_789, 7 * second, 0o644, 0, 0)
    truncated = attrs.evolve(source, mtime=5 * second, ctime=8 * second)
    assert same_copy(source, truncated, owners=True)
    assert not same_copy(source, attrs.evolve(truncated, mtime=4 * second), owners=True)
    assert not same_copy(source, attrs.evolve(truncated, mtime=5 * second + 1), owners=True)
    # The host's clock 2 s ahead: a copy written 1 s "after" by its clock predates the change.
    assert not same_copy(source, truncated, owners=True, clock_offset=2 * second)
    # ... and 2 s behind: the same copy, written 1 s before the change by its clock, is after it.
    behind = attrs.evolve(truncated, ctime=6 * second)
    assert not same_copy(source, behind, owners=True)
    assert same_copy(source, behind, owners=True, clock_offset=-2 * second)
