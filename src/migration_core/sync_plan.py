"""What a copy of one volume sends (SPEC 2.8, "only what differs"): two
metadata listings in, the directories to make, the entries to send, to
hard-link from the copy in place and to leave out.

A listing maps each path below the volume's top (`b"."` is the top itself,
`b"./etc/hosts"` an entry) to its `Entry`. An entry that is no directory is
unchanged, and linked rather than sent, when type, size, modification time,
mode, owner (where the host can set owners) and link target agree, and the
source has not changed it since the copy in place was written: its ctime
(which any write moves, even one that puts size and time back) is earlier
than the copy's (an equal one, within the clock's resolution, counts as
changed). Directories are always made anew in the new copy (they
cannot be hard-linked); their contents are what is linked or sent."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

DIRECTORY = "d"
REGULAR = "f"
TOP = b"."


@attrs.frozen
class Entry:
    """One entry of a tree as `find -printf` lists it: its type (`f` file,
    `d` directory, `l` symbolic link, `p`, `s`, `b`, `c` the others), size,
    modification and change times in nanoseconds, permission bits, owner and
    group, and a link's target (b"" for the rest)."""

    kind: str
    size: int
    mtime: int
    ctime: int
    mode: int
    uid: int
    gid: int
    link: bytes = b""


Listing = Mapping[bytes, Entry]


SECOND = 1_000_000_000


def _same_time(source: int, copy: int) -> bool:
    """Equal times; a copy on a filesystem that keeps whole seconds (FAT, old
    ext4 inodes) holds the source's time truncated."""
    return source == copy or (copy % SECOND == 0 and source // SECOND == copy // SECOND)


def same_copy(source: Entry, copy: Entry, *, owners: bool, clock_offset: int = 0) -> bool:
    """Whether `copy` (in place on the host) still stands for `source`.
    `clock_offset`: how far the host's clock is ahead of the source's, in
    nanoseconds, so that the change times of two machines compare."""
    return (
        source.kind == copy.kind
        and source.size == copy.size
        and _same_time(source.mtime, copy.mtime)
        and source.mode == copy.mode
        and source.link == copy.link
        and (not owners or (source.uid, source.gid) == (copy.uid, copy.gid))
        and source.ctime + clock_offset < copy.ctime
    )


def tree_order(paths: Iterable[bytes]) -> tuple[bytes, ...]:
    """Paths with every directory before what it holds (and names in byte order)."""
    return tuple(sorted(paths, key=lambda path: path.split(b"/")))


@attrs.frozen
class VolumePlan:
    """What the new copy of a volume is made of. `dirs` and `sends` come
    parents first, `drops` children first; `send_bytes` is the contents of
    the regular files sent."""

    dirs: tuple[bytes, ...]
    sends: tuple[bytes, ...]
    links: tuple[bytes, ...]
    drops: tuple[bytes, ...]
    send_bytes: int

    @property
    def changes(self) -> bool:
        """Whether the new copy differs from the listing it was planned against
        in anything but its directories' own metadata."""
        return bool(self.sends or self.drops)


def plan_volume(source: Listing, place: Listing, *, owners: bool, clock_offset: int = 0) -> VolumePlan:
    """The plan that turns `place` (the copy at the volume's place; empty when
    there is none) into a copy of `source`. `owners`: whether the host's
    login can set owners, so that they count in the comparison;
    `clock_offset` as `same_copy` takes it."""
    dirs, sends, links = [], [], []
    send_bytes = 0
    for path, entry in source.items():
        if entry.kind == DIRECTORY:
            dirs.append(path)
            continue
        held = place.get(path)
        if held is not None and same_copy(entry, held, owners=owners, clock_offset=clock_offset):
            links.append(path)
        else:
            sends.append(path)
            if entry.kind == REGULAR:
                send_bytes += entry.size
    drops = tree_order(path for path in place if path not in source)[::-1]
    return VolumePlan(tree_order(dirs), tree_order(sends), tree_order(links), drops, send_bytes)
