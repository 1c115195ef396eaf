"""Slow and half-open clients against the real service (`python -m entrypoints
serve` on a free loopback port, with short limits): silent connections and
unfinished headers are closed, a dribbled body is cut off with a 408, and the
service keeps answering others meanwhile."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from .service_process import ServiceProcess

IDLE_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
# Bounds that only stop a broken test from hanging; the limits above are far below them.
CLOSE_BOUND = 10.0
HEALTH_BOUND = 5.0
SILENT_CONNECTIONS = 200


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    service = ServiceProcess(
        "memory://", tmp_path_factory.mktemp("slow-clients"), "service",
        "--idle-timeout", str(IDLE_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT), secret_key="s" * 32,
    )
    try:
        service.start()
        yield service.url
        service.stop()
    finally:
        service.kill()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def _address(base_url: str) -> tuple[str, int]:
    host, _, port = base_url.removeprefix("http://").partition(":")
    return host, int(port)


async def _health(session: aiohttp.ClientSession, base_url: str) -> int:
    async with asyncio.timeout(HEALTH_BOUND):
        async with session.get(f"{base_url}/health") as answer:
            assert (await answer.json()) == {"status": "ok"}
            return answer.status


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    async with asyncio.timeout(CLOSE_BOUND):
        return await reader.read()


async def test_silent_connections_are_closed_and_others_still_served(
    base_url: str, session: aiohttp.ClientSession
) -> None:
    """Many connections that send nothing do not stop /health answering, and the
    service closes each of them on its own."""
    connections = [await asyncio.open_connection(*_address(base_url)) for _ in range(SILENT_CONNECTIONS)]
    try:
        assert await _health(session, base_url) == 200
        leftovers = await asyncio.gather(*(_closed_by_server(reader) for reader, _ in connections))
        assert leftovers == [b""] * SILENT_CONNECTIONS, "a silent connection got an answer"
    finally:
        for _, writer in connections:
            writer.close()
    assert await _health(session, base_url) == 200


async def test_unfinished_headers_are_cut_off(base_url: str, session: aiohttp.ClientSession) -> None:
    """A client that sends a header line every so often, never finishing, is
    disconnected; the service answers others meanwhile."""
    reader, writer = await asyncio.open_connection(*_address(base_url))
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")

    async def dribble_headers() -> None:
        for number in range(100):
            await asyncio.sleep(0.2)
            if writer.is_closing() or reader.at_eof():
                return
            try:
                writer.write(f"X-Slow-{number}: {'a' * 10}\r\n".encode())
                await writer.drain()
            except ConnectionError:
                return

    dribbler = asyncio.create_task(dribble_headers())
    try:
        assert await _health(session, base_url) == 200
        assert await _closed_by_server(reader) == b"", "unfinished headers got an answer"
    finally:
        dribbler.cancel()
        writer.close()


async def test_slow_body_is_cut_off_with_408(base_url: str, session: aiohttp.ClientSession) -> None:
    """A body announced with Content-Length and then dribbled a byte at a time
    is answered 408 (JSON) once the body deadline passes, and the connection is
    closed; nothing is registered, and others are served meanwhile."""
    body = json.dumps({"username": "slowpoke", "password": "a long enough password"}).encode()
    reader, writer = await asyncio.open_connection(*_address(base_url))
    writer.write(
        b"POST /api/v1/auth/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:5]
    )
    await writer.drain()

    async def dribble_body() -> None:
        for byte in body[5:-1]:  # never the last byte
            await asyncio.sleep(0.2)
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                return

    dribbler = asyncio.create_task(dribble_body())
    try:
        assert await _health(session, base_url) == 200
        answer = await _closed_by_server(reader)
    finally:
        dribbler.cancel()
        writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), head
    assert b"application/json" in head
    assert "detail" in json.loads(payload)
    # The registration never happened: the same username can still be taken.
    async with session.post(
        f"{base_url}/api/v1/auth/", json={"username": "slowpoke", "password": "a long enough password"}
    ) as created:
        assert created.status == 201


async def test_idle_keep_alive_connection_is_closed(base_url: str) -> None:
    """After an answer, a kept-alive connection that stays silent is closed too."""
    reader, writer = await asyncio.open_connection(*_address(base_url))
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        answer = await _closed_by_server(reader)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
