"""Every request gets an id: the caller's `X-Request-Id` when it is sane, a new
one otherwise. It is answered in the same header, and every log line written
while the request is handled carries it, the access log line included."""

from __future__ import annotations

import itertools
import re
import secrets

from aiohttp import web
from aiohttp.typedefs import Handler

from entrypoints.logs import REQUEST_ID

HEADER = "X-Request-Id"
ID = web.RequestKey("request_id", str)

# What a proxy or a client may reasonably send; anything else (too long, spaces,
# quotes, control characters) would make log lines ambiguous, so it is replaced.
_SANE = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")


# A new id is this process's random prefix and a count: unique across processes
# and instances as a random UUID would be, without a system call per request.
_PROCESS_PREFIX = secrets.token_hex(8)
_issued = itertools.count(1)


def _request_id(request: web.Request) -> str:
    given = request.headers.get(HEADER, "")
    return given if _SANE.fullmatch(given) else f"{_PROCESS_PREFIX}{next(_issued):08x}"


@web.middleware
async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[ID] = _request_id(request)
    token = REQUEST_ID.set(request[ID])
    try:
        return await handler(request)
    finally:
        REQUEST_ID.reset(token)


async def answer_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """For app.on_response_prepare: the header goes on every answer, streams
    included, before its headers are sent."""
    request_id = request.get(ID)
    if request_id is not None:
        response.headers[HEADER] = request_id

