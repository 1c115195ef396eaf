"""Reads a tar stream (ustar, GNU and pax) as it passes, without keeping it:
the regular files begun, the bytes of their contents, and the SHA-256 of each
file by its name in the archive. A copy thus says how many files and bytes
of a volume have passed while they pass, and verifies what the host wrote
against what left the source without reading the source a second time."""

from __future__ import annotations

import hashlib
from typing import Any

BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")
_HARD_LINK = b"1"
_PAX = (b"x", b"g")  # extended headers: this member's, or every following member's
_GNU_LONG_NAME = b"L"
_GNU_LONG_LINK = b"K"


def _size(field: bytes) -> int:
    """A header's size field: octal digits, or GNU's base-256 for large files."""
    if field[:1] and field[0] & 0x80:
        value = int.from_bytes(field, "big") & ~(0x80 << (8 * (len(field) - 1)))
        return value
    digits = field.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


def _field(header: bytes, start: int, end: int) -> bytes:
    return header[start:end].split(b"\0", 1)[0]


def pax_records(data: bytes) -> dict[bytes, bytes]:
    """The `key=value` records of a pax extended header ("%d %s=%s\\n" each)."""
    records = {}
    at = 0
    while at < len(data):
        space = data.find(b" ", at)
        if space < 0:
            break
        try:
            length = int(data[at:space])
        except ValueError:
            break
        if length <= 0:
            break
        key, _, value = data[space + 1:at + length - 1].partition(b"=")
        records[key] = value
        at += length
    return records


class TarCounter:
    """Feed it the stream in chunks of any size. With `digests`, it keeps the
    SHA-256 of each regular file's contents by member name (`digests`; a hard
    link member takes its target's)."""

    def __init__(self, *, digests: bool = False) -> None:
        self.files = 0
        self.file_bytes = 0
        self.digests: dict[bytes, bytes] = {}
        self._hashing = digests
        self._hash: Any = None
        self._name = b""
        self._header = bytearray()
        self._data_left = 0  # bytes of the current member's contents still to pass
        self._padding_left = 0
        self._counting = False  # whether the current member is a regular file
        self._meta: bytearray | None = None  # the contents of an extended header being read
        self._meta_kind = b""
        self._next: dict[bytes, bytes] = {}  # what the extended headers say of the next member

    def feed(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk)
        while view:
            if self._data_left:
                step = min(self._data_left, len(view))
                self._data_left -= step
                if self._counting:
                    self.file_bytes += step
                    if self._hash is not None:
                        self._hash.update(view[:step])
                elif self._meta is not None:
                    self._meta += view[:step]
                view = view[step:]
                if not self._data_left:
                    self._member_ended()
            elif self._padding_left:
                step = min(self._padding_left, len(view))
                self._padding_left -= step
                view = view[step:]
            else:
                step = min(BLOCK - len(self._header), len(view))
                self._header += view[:step]
                view = view[step:]
                if len(self._header) == BLOCK:
                    self._begin(bytes(self._header))
                    self._header.clear()

    def _begin(self, header: bytes) -> None:
        if not any(header):
            return  # the end-of-archive blocks
        try:
            size = _size(header[124:136])
        except ValueError:
            size = 0  # not a header we can read: count nothing for it
        kind = header[156:157]
        extra, self._next = self._next, {}
        if kind in _PAX or kind in (_GNU_LONG_NAME, _GNU_LONG_LINK):
            self._meta, self._meta_kind, self._counting = bytearray(), kind, False
            self._next = extra  # a GNU long name and a pax header may both precede one member
        else:
            self._meta = None
            name = extra.get(b"path") or self._ustar_name(header)
            if b"size" in extra and extra[b"size"].isdigit():
                size = int(extra[b"size"])
            self._name = name
            self._counting = kind in _REGULAR
            if self._counting:
                self.files += 1
                self._hash = hashlib.sha256() if self._hashing else None
            elif kind == _HARD_LINK and self._hashing:
                target = extra.get(b"linkpath") or _field(header, 157, 257)
                if target in self.digests:
                    self.digests[name] = self.digests[target]
        self._data_left = size
        self._padding_left = -size % BLOCK
        if not size:
            self._member_ended()

    @staticmethod
    def _ustar_name(header: bytes) -> bytes:
        name = _field(header, 0, 100)
        if header[257:263] == b"ustar\0":
            prefix = _field(header, 345, 500)
            if prefix:
                return prefix + b"/" + name
        return name

    def _member_ended(self) -> None:
        if self._meta is not None:
            data, kind = bytes(self._meta), self._meta_kind
            self._meta = None
            if kind == b"x":
                self._next.update(pax_records(data))
            elif kind == _GNU_LONG_NAME:
                self._next[b"path"] = data.split(b"\0", 1)[0]
            elif kind == _GNU_LONG_LINK:
                self._next[b"linkpath"] = data.split(b"\0", 1)[0]
        elif self._counting and self._hash is not None:
            self.digests[self._name] = self._hash.hexdigest().encode()
            self._hash = None
