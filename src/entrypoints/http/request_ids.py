"""Every request gets an id: the caller's `X-Request-Id` when it is sane, a new
one otherwise. It is answered in the same header, and every log line written
while the request is handled carries it, the access log line included."""

from __future__ import annotations

import re
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_log import AccessLogger

from entrypoints.logs import REQUEST_ID

HEADER = "X-Request-Id"
ID = web.RequestKey("request_id", str)

# What a proxy or a client may reasonably send; anything else (too long, spaces,
# quotes, control characters) would make log lines ambiguous, so it is replaced.
_SANE = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")


def _request_id(request: web.Request) -> str:
    given = request.headers.get(HEADER, "")
    return given if _SANE.fullmatch(given) else uuid.uuid4().hex


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


class RequestIdAccessLogger(AccessLogger):
    """aiohttp's access log line, carrying the id the request was answered with."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        token = REQUEST_ID.set(response.headers.get(HEADER))
        try:
            super().log(request, response, time)
        finally:
            REQUEST_ID.reset(token)
