"""Every error answer, in one place: the core's error kinds map to statuses in
one table, aiohttp's own errors (404, 405, 413...) get a JSON body too, and
anything unexpected becomes a bare 500 whose details go to the log only."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from migration_core import (
    AuthenticationFailed,
    Conflict,
    DomainError,
    InvalidInput,
    NotFound,
    RowsRefused,
    Throttled,
)

from .answers import json_answer
from .requests import BodyTooLarge

log = logging.getLogger(__name__)

STATUS_OF: dict[type[DomainError], int] = {
    InvalidInput: 400,
    RowsRefused: 400,
    AuthenticationFailed: 401,
    NotFound: 404,
    Conflict: 409,
    Throttled: 429,
}

BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}

# Headers of aiohttp's own error answers worth keeping (405 says what is allowed).
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")


def _domain_error_response(error: DomainError) -> web.Response | None:
    status = next((code for kind, code in STATUS_OF.items() if isinstance(error, kind)), None)
    if status is None:
        return None
    body: dict[str, object] = {"detail": error.message}
    headers: dict[str, str] = {}
    if isinstance(error, InvalidInput):
        body["errors"] = error.errors
    elif isinstance(error, RowsRefused):
        body["rows"] = [{"row": e.row, "field": e.field, "message": e.message} for e in error.rows]
    elif isinstance(error, AuthenticationFailed):
        headers.update(BEARER_CHALLENGE)
    elif isinstance(error, Throttled):
        headers["Retry-After"] = str(error.retry_after)
    return json_answer(body, status=status, headers=headers)


def _size(limit: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if limit % scale == 0:
            return f"{limit // scale} {unit}"
    return f"{limit} bytes"


def _http_error_detail(error: web.HTTPException, request: web.Request) -> str:
    if isinstance(error, web.HTTPNotFound):
        return "Not found."
    if isinstance(error, web.HTTPMethodNotAllowed):
        return f"Method {error.method} is not allowed here."
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        limit = error.limit if isinstance(error, BodyTooLarge) else request.client_max_size
        return f"The request body is larger than {_size(limit)}."
    return error.reason


def _http_error_response(error: web.HTTPException, request: web.Request) -> web.Response:
    headers = {name: error.headers[name] for name in _KEPT_HEADERS if name in error.headers}
    return json_answer(
        {"detail": _http_error_detail(error, request)}, status=error.status, headers=headers
    )


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _http_error_response(error, request)
    except Exception as error:
        if isinstance(error, DomainError) and (answer := _domain_error_response(error)):
            return answer
        log.exception("Unexpected error answering %s %s", request.method, request.path)
        return json_answer({"detail": "Internal server error"}, status=500)
