"""Load generators: wrk when it is installed, a bounded aiohttp client otherwise.
Both drive a list of request paths round-robin for a fixed time and report
requests per second, p50 and p99 latency and the count of failed answers."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp


@dataclass(frozen=True)
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


@dataclass(frozen=True)
class Load:
    base: str
    paths: list[str]
    method: str = "GET"
    body: dict[str, object] | None = None
    token: str | None = None


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run(load: Load, *, seconds: float, connections: int) -> Result:
    if wrk_available():
        return _wrk(load, seconds=seconds, connections=connections)
    return asyncio.run(_python(load, seconds=seconds, connections=connections))


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _lua(load: Load) -> str:
    """wrk's script for `load`. One path is wrk's static request, as `wrk URL`
    sends it; several are formatted once each, in `init`, and handed out in
    turn: no per-request formatting, which would slow wrk itself, and the
    service (sharing the cores with it) would seem faster than it is."""
    lines = [
        f'wrk.method = "{load.method}"',
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    if load.token:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {load.token}"')
    if load.body is not None:
        lines.append(f"wrk.body = {json.dumps(json.dumps(load.body))}")
    if len(load.paths) > 1:
        paths = ", ".join(json.dumps(p) for p in load.paths)
        lines += [
            f"local paths = {{{paths}}}",
            "local requests = {}",
            "local i = 0",
            "init = function()",
            "  for n, path in ipairs(paths) do requests[n] = wrk.format(nil, path) end",
            "  i = math.random(#requests) - 1",
            "end",
            "request = function()",
            "  i = (i % #requests) + 1",
            "  return requests[i]",
            "end",
        ]
    return "\n".join(lines) + "\n"


def _wrk(load: Load, *, seconds: float, connections: int) -> Result:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_lua(load))
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "--timeout",
                "10s",
                "-s",
                script.name,
                load.base + load.paths[0] if len(load.paths) == 1 else load.base,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        Path(script.name).unlink()

    def latency(pct: str) -> float:
        match = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert match, out
        return float(match.group(1)) * _UNITS[match.group(2)]

    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(int(g) for g in socket.groups()) if socket else 0
    )
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return Result(rps, latency("50"), latency("99"), errors, requests)


async def _python(load: Load, *, seconds: float, connections: int) -> Result:
    headers = {"Content-Type": "application/json"}
    if load.token:
        headers["Authorization"] = f"Bearer {load.token}"
    body = json.dumps(load.body).encode() if load.body is not None else None
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    max_requests = 200_000  # a bound even on a very fast machine

    async def worker(session: aiohttp.ClientSession, offset: int) -> None:
        nonlocal errors
        i = offset
        while time.monotonic() < deadline and len(latencies) < max_requests:
            path = load.paths[i % len(load.paths)]
            i += 1
            started = time.perf_counter()
            try:
                async with session.request(load.method, load.base + path, data=body) as answer:
                    await answer.read()
                    if answer.status >= 300:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append((time.perf_counter() - started) * 1000)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        started = time.monotonic()
        await asyncio.gather(*(worker(session, n) for n in range(connections)))
        elapsed = time.monotonic() - started
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return Result(len(latencies) / elapsed, quantiles[49], quantiles[98], errors, len(latencies))
