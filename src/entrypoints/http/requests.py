"""Reading requests: the typed keys, JSON bodies and query strings checked
against their schemas, and bearer authentication.

`json_body` and `query` both validate and document: they register the schema
with aiohttp-apigami, so the OpenAPI document shows exactly what is checked."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, Concatenate, ParamSpec, TypeVar

from aiohttp import web
from aiohttp_apigami import request_schema
from marshmallow import Schema, ValidationError

from entrypoints.bootstrap import Services
from migration_core import (
    AuthenticationFailed,
    InvalidInput,
    Storage,
    User,
    read_as_live_user,
    user_from_token,
    write_as_live_user,
)

from .schemas import flatten_messages

P = ParamSpec("P")
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SERVICES = web.AppKey("services", Services)
USER = web.RequestKey("user", User)
USER_ID = web.RequestKey("user_id", int)  # of a checked token; its user is found in the handler's transaction
BODY = web.RequestKey("body", dict[str, Any])
QUERY = web.RequestKey("query", dict[str, Any])
BODY_TIMEOUT = web.AppKey("body_timeout", float)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def _load(schema: Schema, data: Any) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = schema.load(data)
    except ValidationError as error:
        messages = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
        raise InvalidInput(flatten_messages(messages)) from None
    return loaded


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


async def _read_within_deadline(request: web.Request) -> bytes:
    """The whole body, or 408 when it takes longer than the app allows: a client
    dribbling bytes must not hold a handler for ever."""
    try:
        async with asyncio.timeout(request.app[BODY_TIMEOUT]):
            return await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(reason="The request body did not arrive in time.") from None


class BodyTooLarge(web.HTTPRequestEntityTooLarge):
    """413 for a route with a limit of its own (the app's is `client_max_size`)."""

    def __init__(self, limit: int) -> None:
        super().__init__(max_size=limit)
        self.limit = limit


async def read_capped(request: web.Request, limit: int) -> bytes:
    """The whole body, read as it streams in, for a route that accepts more
    than the app's own limit: 413 past `limit` bytes, 408 when it takes longer
    than the app allows."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(limit)
    received = bytearray()
    try:
        async with asyncio.timeout(request.app[BODY_TIMEOUT]):
            async for chunk in request.content.iter_chunked(64 * 1024):
                received += chunk
                if len(received) > limit:
                    raise BodyTooLarge(limit)
    except TimeoutError:
        raise web.HTTPRequestTimeout(reason="The request body did not arrive in time.") from None
    return bytes(received)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; 415, 400 or 413 (raised while reading) otherwise."""
    if not _is_json(request.content_type):
        raise web.HTTPUnsupportedMediaType(reason="Send the body as application/json.")
    raw = await _read_within_deadline(request)
    try:
        data = json.loads(raw, object_pairs_hook=_object_without_repeated_keys)
    except _RepeatedKey as repeated:
        raise InvalidInput({repeated.key: ["Give this field once."]}) from None
    except (ValueError, RecursionError):
        raise web.HTTPBadRequest(reason="The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(reason="The body must be a JSON object.")
    unstorable = sorted(key for key, value in data.items() if not _storable(value))
    if unstorable or not all(map(_storable_text, data)):
        fields = unstorable or ["_schema"]
        raise InvalidInput({field: ["Text must not hold NUL characters or lone surrogates."] for field in fields})
    return data


class _RepeatedKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object_without_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are distinct: with a repeated key, which value
    counts would depend on the parser, so it is refused."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _RepeatedKey(key)
        found[key] = value
    return found


def _storable_text(text: str) -> bool:
    # NUL ends strings in C, and lone surrogates (valid JSON escapes) cannot be UTF-8.
    return "\x00" not in text and not any("\ud800" <= char <= "\udfff" for char in text)


def _storable(value: Any) -> bool:
    if isinstance(value, str):
        return _storable_text(value)
    if isinstance(value, list):
        return all(map(_storable, value))
    if isinstance(value, dict):
        return all(_storable_text(key) and _storable(inner) for key, inner in value.items())
    return True


def json_body(schema: Schema) -> Callable[[Handler], Handler]:
    """Check the body against `schema` (a partial one for PATCH) and put the
    loaded values in request[BODY]."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def with_body(request: web.Request) -> web.StreamResponse:
            request[BODY] = _load(schema, await read_json_object(request))
            return await handler(request)

        return request_schema(schema, required=True)(with_body)

    return decorate


def query(schema: Schema) -> Callable[[Handler], Handler]:
    """Check the query string against `schema`, values in request[QUERY]."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def with_query(request: web.Request) -> web.StreamResponse:
            repeated = {key for key in request.query if len(request.query.getall(key)) > 1}
            if repeated:
                raise InvalidInput({key: ["Give this parameter once."] for key in sorted(repeated)})
            request[QUERY] = _load(schema, dict(request.query))
            return await handler(request)

        return request_schema(schema, location="querystring")(with_query)

    return decorate


def _bearer_token(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("Send an access token: Authorization: Bearer <access>.")
    return token.strip()


def authenticated(handler: Handler) -> Handler:
    """Refuse the request (401) unless it carries a valid, unexpired access
    token of a live user, who is then in request[USER]."""

    @functools.wraps(handler)
    async def with_user(request: web.Request) -> web.StreamResponse:
        token = _bearer_token(request)
        found = services(request)
        request[USER] = await read(request, user_from_token, found.storage, found.tokens, token)
        return await handler(request)

    return with_user


def user_found_in_transaction(handler: Handler) -> Handler:
    """For a handler whose use case also finds the token's user, in its own
    transaction (`read_as_user`, `write_as_user`): the token is checked here
    (401 when it is missing, forged or expired) and its user's id put in
    request[USER_ID]. When the handler fails otherwise (a bad query or body,
    a missing object), a token whose user is gone still answers 401 first,
    as under `authenticated`."""

    @functools.wraps(handler)
    async def with_user_id(request: web.Request) -> web.StreamResponse:
        token = _bearer_token(request)
        request[USER_ID] = services(request).tokens.subject(token)
        try:
            return await handler(request)
        except AuthenticationFailed:
            raise
        except Exception:
            found = services(request)
            await read(request, user_from_token, found.storage, found.tokens, token)
            raise

    return with_user_id


async def read_as_user(
    request: web.Request, function: Callable[Concatenate[Storage, int, P], T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """Run a read-only use case for the token's user (a handler under
    `user_found_in_transaction`), the user and what it reads in one transaction."""
    storage, user_id = services(request).storage, request[USER_ID]
    return await read(request, functools.partial(read_as_live_user, storage, user_id, function, *args, **kwargs))


async def write_as_user(
    request: web.Request, function: Callable[Concatenate[Storage, int, P], T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """Run a use case that writes for the token's user (a handler under
    `user_found_in_transaction`), the user found in the write's transaction,
    on the storage's write executor."""
    storage, user_id = services(request).storage, request[USER_ID]
    return await write(request, functools.partial(write_as_live_user, storage, user_id, function, *args, **kwargs))


async def read(request: web.Request, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a read-only use case. Where storage reads never wait for writers
    (the composition root says so), a read is a few tens of microseconds of
    work: cheaper on the loop than the hop to a worker thread and back.
    Elsewhere it goes to a worker thread."""
    if services(request).reads_on_loop:
        return function(*args, **kwargs)
    return await call(function, *args, **kwargs)


async def write(request: web.Request, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a use case that writes and touches nothing but storage, on the
    storage's write executor (SQLite: commits shared between requests)."""
    return await _on(services(request).write_executor, function, *args, **kwargs)


async def hashing(request: web.Request, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a use case that hashes or checks a password on the password threads."""
    return await _on(services(request).password_executor, function, *args, **kwargs)


async def call(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run any other synchronous use case in a worker thread, off the event loop."""
    return await _on(None, function, *args, **kwargs)


async def _on(executor: Executor | None, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`function` on `executor` (None: the loop's default one)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(function, *args, **kwargs))
