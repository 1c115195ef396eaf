"""The stream of a copy, moved from one pipe to the other in the kernel (SPEC
2.10): the source's `ssh` writes the archive into one pipe, the host's `ssh`
reads it from another, and a thread of the service joins the two with
`os.splice`, which moves pages between the pipes without copying them into
the process (the GIL is released around the call; its return value is the
count). No byte passes through the event loop or a Python buffer.

A `Bandwidth` caps what every relay of an instance moves, in all: each relay
moves a chunk, then waits until the cap has room for it. The waits are
reservations taken in turn, so relays drawing from one cap share it evenly."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable

# Below the service's own priority, as the copies' `ssh` clients run: the
# API answers first when the cores are busy.
COPY_NICENESS = 19
# What one splice may move when nothing caps the rate, and when a cap is shared.
FREE_CHUNK = 1 << 20
SHARED_CHUNK = 64 * 1024
# A pipe this large holds a chunk whole (the kernel's default is 64 KiB).
PIPE_BYTES = 1 << 20
# An uncapped relay that found less than BATCH_BYTES in its pipe lets the pipe
# fill for BATCH_SECONDS before the next splice. Otherwise it would splice each
# of `ssh`'s writes alone (some 37 KiB: 28,000 splices a GiB), and take the GIL
# back after each, a niced thread the API's thread may then wait for. A full
# pipe of 1 MiB stalls its writer only above 200 MB/s.
BATCH_BYTES = 256 * 1024
BATCH_SECONDS = 0.005


class Bandwidth:
    """A cap in bytes per second for every relay that draws from it. Thread-safe."""

    def __init__(self, bytes_per_second: int) -> None:
        if bytes_per_second <= 0:
            raise ValueError("a bandwidth is a positive number of bytes per second")
        self.bytes_per_second = bytes_per_second
        self._lock = threading.Lock()
        self._paid_until = 0.0  # time.monotonic() when what was moved so far fits under the cap

    def pay(self, count: int, stop: threading.Event) -> bool:
        """Wait until `count` bytes just moved fit under the cap: each payment
        is a slot after the last one taken, so relays paying in turn share the
        cap evenly. False when `stop` was set meanwhile."""
        with self._lock:
            now = time.monotonic()
            self._paid_until = max(now, self._paid_until) + count / self.bytes_per_second
            wait = self._paid_until - now
        return not stop.wait(wait)


def pipe() -> tuple[int, int]:
    """A pipe (read end, write end) large enough for a chunk, where the kernel allows it."""
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    return read_end, write_end


def relay(
    source: int,
    sink: int,
    *,
    bandwidth: Bandwidth | None = None,
    stop: threading.Event | None = None,
    counted: Callable[[int], None] | None = None,
) -> int:
    """Move everything from the pipe `source` into the pipe `sink` until the
    source ends (or `stop` is set): the bytes moved. `counted` is told the
    total after each chunk. BrokenPipeError when the sink's reader is gone."""
    stop = stop or threading.Event()
    chunk = FREE_CHUNK if bandwidth is None else SHARED_CHUNK
    # Batches only where the pipe can hold them (a kernel may refuse PIPE_BYTES).
    batching = bandwidth is None and _pipe_size(source) >= PIPE_BYTES
    total = 0
    while not stop.is_set():
        moved = os.splice(source, sink, chunk, flags=os.SPLICE_F_MOVE)
        if moved == 0:
            break
        total += moved
        if counted is not None:
            counted(total)
        if bandwidth is not None and not bandwidth.pay(moved, stop):
            break
        if batching and moved < BATCH_BYTES and stop.wait(BATCH_SECONDS):
            break
    return total


def _pipe_size(descriptor: int) -> int:
    """The pipe's capacity in bytes, 0 if it is no pipe."""
    try:
        return fcntl.fcntl(descriptor, fcntl.F_GETPIPE_SZ)
    except OSError:
        return 0


class Relay:
    """`relay` in a thread of its own, awaitable from an event loop. It owns
    the two descriptors: the sink is closed when the relay ends, the source
    too, unless the sink's reader went first (`broken`): then the caller
    says what becomes of the rest, `drain` or `close`."""

    def __init__(
        self,
        source: int,
        sink: int,
        *,
        bandwidth: Bandwidth | None = None,
        counted: Callable[[int], None] | None = None,
    ) -> None:
        self._source: int | None = source
        self._sink = sink
        self._bandwidth = bandwidth
        self._counted = counted
        self._stop = threading.Event()
        self.count = 0
        self.broken = False  # the sink's reader went before the source ended
        self._lock = threading.Lock()
        self._running = True  # the thread uses the source: only it may close it
        self._closing = False  # closed as soon as the thread lets go of the source
        self._loop = asyncio.get_running_loop()
        self._ended: asyncio.Future[int] = self._loop.create_future()
        threading.Thread(target=self._run, name="copy-relay", daemon=True).start()

    def _count(self, total: int) -> None:
        self.count = total
        if self._counted is not None:
            self._counted(total)

    def _run(self) -> None:
        assert self._source is not None
        lower_this_thread()
        try:
            relay(self._source, self._sink, bandwidth=self._bandwidth, stop=self._stop, counted=self._count)
        except OSError:  # EPIPE above all: the stream is cut at the sink
            self.broken = True
        finally:
            os.close(self._sink)
            with self._lock:
                self._running = False
                keep = self.broken and not self._closing
            if not keep:
                self.close()
            self._settle(self._ended, self.count)

    def _settle(self, future: asyncio.Future[int], count: int) -> None:
        def settle() -> None:
            if not future.done():
                future.set_result(count)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(settle)

    def stop(self) -> None:
        """Stop after the chunk under way (a splice that waits for its pipes
        ends when their processes do)."""
        self._stop.set()

    async def wait(self) -> int:
        """Until the relay ends: the bytes it moved."""
        return await asyncio.shield(self._ended)

    async def drain(self) -> int:
        """What is left of the source after a broken relay, read to its end
        into /dev/null (in the kernel too), so that its writer ends as it
        would have: the bytes drained."""
        with self._lock:
            source = None if self._running else self._source
            if source is not None:
                self._running = True
        if source is None:
            return 0
        drained = self._loop.create_future()

        def run() -> None:
            lower_this_thread()
            moved = 0
            try:
                with open(os.devnull, "wb") as sink:
                    while step := os.splice(source, sink.fileno(), FREE_CHUNK):
                        moved += step
            except OSError:
                pass
            finally:
                with self._lock:
                    self._running = False
                self.close()
                self._settle(drained, moved)

        threading.Thread(target=run, name="copy-drain", daemon=True).start()
        return await asyncio.shield(drained)

    def close(self) -> None:
        """Close the source, if the relay still holds it (its writer then sees
        a broken pipe); while a thread still uses it, as soon as it lets go."""
        with self._lock:
            if self._running:
                self._closing = True
                return
            source, self._source = self._source, None
        if source is not None:
            os.close(source)


def lower_this_thread() -> None:
    """Run the calling thread at COPY_NICENESS, or lower where the service
    already runs lower: Linux keeps a niceness per thread (the thread's id
    names it to setpriority), so the rest of the service keeps its own."""
    thread = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, thread, max(COPY_NICENESS, os.getpriority(os.PRIO_PROCESS, thread)))
