"""What runs on the machines to copy one volume (SPEC 2.8), whatever carries
the stream: the listings of the source and of the place, the new copy
assembled beside the place, the hashes of what was sent (on both machines),
and the swap that puts it there.

Below the volume's place P on the host, for migration m:
- `P/.migration-incoming-m` is the new copy being assembled: the unchanged
  entries hard-linked from P (so it must be on P's filesystem, and is), the
  rest extracted from the stream. P is not touched meanwhile.
- `P/.migration-swap-m` is the swap's journal, written whole (as `.new`,
  then renamed) only once the new copy is verified: what to move into P,
  what to drop from P, and the directories' own metadata.
- The swap moves each new or changed entry into P by rename (a file is
  replaced at once), drops what the source no longer has, sets the
  directories' metadata, then removes the new copy and the journal. It
  ignores hangups, so a service killed or a connection lost mid-swap does not
  stop it; a journal still there at the next run (a host that went down) is
  carried out again before anything else: every step can be done twice. A
  lock (`P/.migration-swap-m.lock`, holding the host's boot id and the swap's
  process id) keeps a next run's recovery from overlapping a swap that is
  still going; one whose holder is gone (or from before a reboot) is taken
  over. Nothing is removed across a filesystem mounted below the place.
All scripts are constants that take their data as arguments."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Mapping, Sequence

from migration_core.sync_plan import DIRECTORY, SECOND, TOP, Entry, Listing, VolumePlan, tree_order

RESERVED = (".migration-incoming-", ".migration-swap-", ".migration-staging-")


def incoming_of(place: str, migration_id: int) -> str:
    return f"{place.rstrip('/')}/.migration-incoming-{migration_id}"


def journal_of(place: str, migration_id: int) -> str:
    return f"{place.rstrip('/')}/.migration-swap-{migration_id}"


def glob_escaped(path: str) -> str:
    """`path` as a find -path pattern matching only itself."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in path)


# Each entry below "$1" on its filesystem, as ten NUL-ended fields (type,
# size, mtime, ctime, mode, uid, gid, path, link target, device), leaving out
# the paths matching the -path patterns given after it. Exit 3: no directory.
LIST = (
    'd=$1; shift; cd -- "$d" 2>/dev/null || exit 3; '
    'for x do set -- "$@" -path "$x" -prune -o; shift; done; '
    "exec find . -xdev \"$@\" -printf '%y\\0%s\\0%T@\\0%C@\\0%m\\0%U\\0%G\\0%p\\0%l\\0%D\\0'"
)
LIST_FIELDS = 10

# Whether this login may set owners (root), "1" or "0", then the machine's
# clock in nanoseconds: what a copy asks each machine first, in one command.
OWNERS_AND_CLOCK = '[ "$(id -u)" = 0 ] && echo 1 || echo 0; date +%s%N'

# A fresh new copy "$2" beside the place "$1" (made if missing), then the
# unchanged entries (NUL-separated paths on standard input) hard-linked from it.
BEGIN = (
    'place=$1 incoming=$2; mkdir -p -- "$place" && rm -rf -- "$incoming" && mkdir -- "$incoming" '
    '&& cd -- "$place" && xargs -0r cp -Pl --parents -t "$incoming" --'
)

# A warm sync's files still changing that keep the version in place: the
# paths on standard input hard-linked from the place "$1" into the new copy
# "$2" (their directories are there already).
LINK_BACK = 'cd -- "$1" && xargs -0r cp -Pl --parents -t "$2" --'

# Remove from the new copy "$1" the paths on standard input (to be sent again, or gone).
CLEAR = 'cd -- "$1" && xargs -0r rm -rf --one-file-system --'

# The SHA-256 of the files on standard input, below "$1", as sha256sum -z
# prints them (a file that is not there, gone from the source or never
# written on the host, has none, and the comparison of both sides' hashes
# says so); then an empty record, which no record of sha256sum's is; then the
# tree listed as LIST lists it, after the hashing. One command a machine runs
# after each stream. Exit 3: no directory.
HASHES_THEN_LIST = 'cd -- "$1" 2>/dev/null || exit 3; xargs -0r sha256sum -z -- 2>/dev/null; printf "\\0"; ' + LIST

# Carry out the journal "$3": the new copy "$2" into the place "$1".
SWAP = r"""place=$1 incoming=$2 journal=$3 lock=$3.lock
trap '' HUP PIPE INT TERM
boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)
n=0
until mkdir -- "$lock" 2>/dev/null; do
  held_boot= held_pid=
  { read -r held_boot held_pid < "$lock/owner"; } 2>/dev/null
  n=$((n + 1))
  if { [ -n "$held_pid" ] && { [ "$held_boot" != "$boot" ] || [ ! -d "/proc/$held_pid" ]; }; } \
      || { [ -z "$held_pid" ] && [ "$n" -gt 30 ]; }; then
    mv -- "$lock" "$lock.stale.$$" 2>/dev/null && rm -rf -- "$lock.stale.$$"
  else
    sleep 1
  fi
done
trap 'rm -rf -- "$lock"' EXIT
echo "$boot $$" > "$lock/owner"
[ -d "$journal" ] || exit 0
cd -- "$place" || exit 1
xargs -0r sh -c '
  n=$1; shift
  for p do
    [ -e "$n/$p" ] || [ -L "$n/$p" ] || continue
    if [ -d "$n/$p" ] && [ ! -L "$n/$p" ]; then
      if [ -d "$p" ] && [ ! -L "$p" ]; then continue; fi
      rm -rf --one-file-system -- "$p" || exit 1
    elif [ -d "$p" ] && [ ! -L "$p" ]; then
      rm -rf --one-file-system -- "$p" || exit 1
    fi
    mv -Tf -- "$n/$p" "$p" || exit 1
  done' sh "$incoming" < "$journal/moves" || exit 1
xargs -0r rm -rf --one-file-system -- < "$journal/drops" || exit 1
owners=$(cat "$journal/owners")
xargs -0r sh -c '
  owners=$1; shift
  for r do
    mode=${r%% *}; r=${r#* }; uid=${r%% *}; r=${r#* }; gid=${r%% *}; r=${r#* }; t=${r%% *}; p=${r#* }
    if [ "$owners" = 1 ]; then chown -h "$uid:$gid" -- "$p" || exit 1; fi
    chmod "$mode" -- "$p" && touch -h -d "@$t" -- "$p" || exit 1
  done' sh "$owners" < "$journal/attrs" || exit 1
top=$(cat "$journal/top")
rm -rf -- "$incoming" && rm -rf -- "$journal" || exit 1
rm -rf -- "$lock" && trap - EXIT && touch -h -d "@$top" -- .
"""

# The journal "$3" written whole from a tar on standard input (its rename is
# the commit: a journal half-written is no journal), then SWAP carries it out:
# one command, as nothing may come between them.
JOURNAL_AND_SWAP = (
    'j=$3; rm -rf -- "$j.new" && mkdir -- "$j.new" && tar -C "$j.new" -xf - && mv -- "$j.new" "$j" || exit 1\n'
    + SWAP
)

# Before anything else, for each place, new copy and journal given (three
# arguments a place): a swap whose journal stands is carried out (the SWAP
# script is "$0"), then what is left of a new copy goes; then what is left of
# the paths given after the triples.
RECOVER = (
    'while [ "$#" -ge 3 ]; do place=$1 i=$2 j=$3; shift 3; '
    'if [ -d "$j" ]; then sh -c "$0" sh "$place" "$i" "$j" || exit 1; fi; '
    'rm -rf -- "$i" "$j.new" || exit 1; done; rm -rf -- "$@"'
)

# A stopped copy: its new copy goes, unless its swap was committed (then the swap finishes it).
ABANDON = '[ -d "$2" ] || rm -rf -- "$1" "$2.new"'


def nanoseconds(text: bytes) -> int:
    """`find -printf %T@` as nanoseconds: "1704164645.1234567890"."""
    seconds, _, fraction = text.partition(b".")
    return int(seconds) * SECOND + int((fraction + b"000000000")[:9])


def split_hashes(data: bytes) -> tuple[dict[bytes, bytes], bytes]:
    """A HASHES_THEN_LIST output: the hex SHA-256 of each file hashed, and
    the listing that follows (for parse_listing); ValueError for anything else."""
    if data.startswith(b"\0"):
        return {}, data[1:]
    end = data.index(b"\0\0") + 1
    hashes = {}
    for record in data[:end].split(b"\0"):
        if len(record) > 66:
            hashes[record[66:]] = record[:64]
    return hashes, data[end + 1:]


def parse_listing(data: bytes, *, one_device: bool = False) -> dict[bytes, Entry]:
    """A LIST output as a listing; ValueError for anything else. With
    `one_device`, the entries on another device than the top (a filesystem
    mounted below a place on the host) are left out: no copy drops or
    replaces them."""
    fields = data.split(b"\0")
    if fields[-1] != b"" or (len(fields) - 1) % LIST_FIELDS:
        raise ValueError("a listing ends with a whole entry")
    listing = {}
    devices = {}
    for at in range(0, len(fields) - 1, LIST_FIELDS):
        kind, size, mtime, ctime, mode, uid, gid, path, link, device = fields[at:at + LIST_FIELDS]
        listing[path] = Entry(
            kind.decode(), int(size), nanoseconds(mtime), nanoseconds(ctime), int(mode, 8), int(uid), int(gid), link
        )
        devices[path] = device
    if one_device and TOP in devices:
        listing = {path: entry for path, entry in listing.items() if devices[path] == devices[TOP]}
    return listing


def place_patterns(nested: Sequence[str]) -> list[str]:
    """What a listing of a place leaves out: the other volumes' places, and this service's own entries."""
    return [glob_escaped(path) for path in nested] + [f"./{name}*" for name in RESERVED]


def _time(nanos: int) -> str:
    return f"{nanos // SECOND}.{nanos % SECOND:09d}"


def _ancestors(path: bytes) -> Iterable[bytes]:
    while path != TOP:
        path = path.rpartition(b"/")[0]
        yield path


def journal_tar(plan: VolumePlan, source: Listing, place: Listing, *, owners: bool) -> bytes:
    """The swap's journal as a tar of four files: `moves` (what enters the
    place, parents first), `drops` (what leaves it, children first), `attrs`
    (the directories whose own metadata the swap sets: those that differ, and
    those whose contents it changes) and `owners`."""
    moves = tree_order((*plan.dirs, *plan.sends))
    # What was below an entry that is no directory any more goes with it when
    # it is replaced; a removal by a path through it would follow a new link.
    drops = [path for path in plan.drops if all(
        source[above].kind == DIRECTORY for above in _ancestors(path) if above in source
    )]
    touched = {TOP}
    for path in (*plan.sends, *plan.drops, *(d for d in plan.dirs if d not in place)):
        touched.update(_ancestors(path))
    for path in plan.dirs:
        held = place.get(path)
        wanted = source[path]
        if held is None or held.kind != DIRECTORY or (held.mode, held.mtime) != (wanted.mode, wanted.mtime) or (
            owners and (held.uid, held.gid) != (wanted.uid, wanted.gid)
        ):
            touched.add(path)
    attrs = []
    # Only directories: chmod follows a link, wherever it points on the host.
    for path in tree_order(p for p in touched if p in source and source[p].kind == DIRECTORY)[::-1]:
        entry = source[path]
        attrs.append(b"%o %d %d %s %s" % (entry.mode, entry.uid, entry.gid, _time(entry.mtime).encode(), path))
    return _tar({
        "moves": nul_list(moves),
        "drops": nul_list(drops),
        "attrs": nul_list(attrs),
        "owners": b"1\n" if owners else b"0\n",
        # The place's own time, set again once the new copy and the journal have left it.
        "top": _time(source[TOP].mtime).encode() + b"\n",
    })


def _tar(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def nul_list(paths: Iterable[bytes]) -> bytes:
    return b"".join(path + b"\0" for path in paths)
