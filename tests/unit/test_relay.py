"""The relay of a copy's stream (adapters.copy_engine.relay) on real pipes:
it moves every byte and counts exactly, and relays drawing from one
bandwidth cap share it evenly and never exceed it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time

import pytest

from adapters.copy_engine.relay import COPY_NICENESS, SHARED_CHUNK, Bandwidth, Relay, pipe, relay


def _writer(descriptor: int, data: bytes) -> threading.Thread:
    def write() -> None:
        with open(descriptor, "wb", closefd=True) as file:
            file.write(data)

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def _reader(descriptor: int, into: list[bytes]) -> threading.Thread:
    def read() -> None:
        with open(descriptor, "rb", closefd=True) as file:
            into.append(file.read())

    thread = threading.Thread(target=read)
    thread.start()
    return thread


@pytest.mark.parametrize("size", [0, 1, 65_537, 5 * 2**20 + 3])
def test_the_relay_moves_every_byte_and_counts_exactly(size: int) -> None:
    data = os.urandom(size)
    source_out, source_in = pipe()
    sink_out, sink_in = pipe()
    received: list[bytes] = []
    counts: list[int] = []
    writer, reader = _writer(source_in, data), _reader(sink_out, received)

    moved = relay(source_out, sink_in, counted=counts.append)
    os.close(source_out)
    os.close(sink_in)
    writer.join()
    reader.join()

    assert moved == size
    assert hashlib.sha256(received[0]).digest() == hashlib.sha256(data).digest()
    assert counts == sorted(counts) and (counts[-1] if counts else 0) == size


def test_a_relay_whose_sink_is_gone_says_so() -> None:
    source_out, source_in = pipe()
    sink_out, sink_in = pipe()
    os.close(sink_out)
    writer = _writer(source_in, b"x" * 1000)
    with pytest.raises(BrokenPipeError):
        relay(source_out, sink_in)
    os.close(source_out)
    os.close(sink_in)
    writer.join()


def test_two_relays_under_one_cap_share_it_evenly_and_never_exceed_it() -> None:
    """Two relays of endless streams under 4 MB/s: while both run, each gets
    about half, and all they move takes at least what the cap allows (a
    lower bound on the time only)."""
    rate = 4_000_000
    cap = Bandwidth(rate)
    stop = threading.Event()
    counts = [0, 0]
    carriers, others, pipes = [], [], []
    for number in range(2):
        source_out, source_in = pipe()
        sink_out, sink_in = pipe()
        pipes.append((source_out, source_in, sink_out, sink_in))

        def feed(descriptor: int = source_in) -> None:
            block = b"\0" * 2**16
            with_error = (BrokenPipeError, OSError)
            try:
                while True:
                    os.write(descriptor, block)
            except with_error:
                pass

        def drain(descriptor: int = sink_out) -> None:
            while os.read(descriptor, 2**20):
                pass

        def carry(number: int = number, source: int = source_out, sink: int = sink_in) -> None:
            def counted(total: int) -> None:
                counts[number] = total

            relay(source, sink, bandwidth=cap, stop=stop, counted=counted)

        carriers.append(threading.Thread(target=carry))
        others += [threading.Thread(target=feed), threading.Thread(target=drain)]
    # From before the first thread starts: a relay moves its first chunk at once.
    began = time.monotonic()
    for thread in carriers + others:
        thread.start()

    goal = 6_000_000
    while sum(counts) < goal:
        time.sleep(0.01)
    elapsed = time.monotonic() - began
    total = sum(counts)
    stop.set()
    for thread in carriers:
        thread.join()
    for source_out, _, _, sink_in in pipes:
        os.close(source_out)  # the feeder's next write fails: it ends
        os.close(sink_in)  # the drain reads its end
    for thread in others:
        thread.join()
    for _, source_in, sink_out, _ in pipes:
        os.close(source_in)
        os.close(sink_out)

    shares = [count / total for count in counts]
    assert all(0.35 < share < 0.65 for share in shares), shares
    # At most one chunk each ahead of the cap.
    assert elapsed >= (total - 2 * SHARED_CHUNK) / rate, (elapsed, total)


def test_a_bandwidth_is_a_positive_rate() -> None:
    with pytest.raises(ValueError):
        Bandwidth(0)


async def test_a_relay_thread_runs_below_the_service_s_priority_and_the_rest_keeps_its_own() -> None:
    """The relay's thread runs at the copies' niceness, as their `ssh`
    clients do; the thread that started it (the API's) keeps its own."""
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    source_out, source_in = pipe()
    sink_out, sink_in = pipe()
    received: list[bytes] = []
    reader = _reader(sink_out, received)
    carrying = Relay(source_out, sink_in)
    try:
        (thread,) = [t for t in threading.enumerate() if t.name == "copy-relay"]
        assert thread.native_id is not None
        deadline = time.monotonic() + 5
        while os.getpriority(os.PRIO_PROCESS, thread.native_id) != max(own, COPY_NICENESS):
            assert time.monotonic() < deadline, "the relay's thread kept the service's priority"
            await asyncio.sleep(0.01)
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
    finally:
        os.write(source_in, b"the stream")
        os.close(source_in)
        assert await carrying.wait() == len(b"the stream")
    reader.join()
    assert received == [b"the stream"]
