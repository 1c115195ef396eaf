"""JSON answers, encoded by orjson: the encoding was a visible share of a
simple read's cost with the standard library's encoder (docs/benchmarks.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web


def json_answer(body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=headers, content_type="application/json")
