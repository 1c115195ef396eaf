"""Counts what passes in a tar stream (ustar, GNU and pax), without keeping
it: the regular files begun and the bytes of their contents, so a copy can
say how many files and bytes of a volume have passed while they pass."""

from __future__ import annotations

BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")


def _size(field: bytes) -> int:
    """A header's size field: octal digits, or GNU's base-256 for large files."""
    if field[:1] and field[0] & 0x80:
        value = int.from_bytes(field, "big") & ~(0x80 << (8 * (len(field) - 1)))
        return value
    digits = field.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


class TarCounter:
    """Feed it the stream in chunks of any size."""

    def __init__(self) -> None:
        self.files = 0
        self.file_bytes = 0
        self._header = bytearray()
        self._data_left = 0  # bytes of the current member's contents still to pass
        self._padding_left = 0
        self._counting = False  # whether the current member is a regular file

    def feed(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk)
        while view:
            if self._data_left:
                step = min(self._data_left, len(view))
                self._data_left -= step
                if self._counting:
                    self.file_bytes += step
                view = view[step:]
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
        self._counting = kind in _REGULAR
        if self._counting:
            self.files += 1
        self._data_left = size
        self._padding_left = -size % BLOCK
