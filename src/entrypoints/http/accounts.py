"""Registration, log-in and token refresh (the public part of the API), and health."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp_apigami import docs

from migration_core import login, refresh_access, register_user

from .answers import json_answer
from .openapi import WRITE_ERRORS, answers
from .requests import BODY, call, hashing, json_body, read, services
from .routes import Route
from .schemas import (
    AccessTokenSchema,
    HealthSchema,
    LoginSchema,
    RefreshSchema,
    RegisterSchema,
    TokenPairSchema,
    UserSchema,
)

TAG = "accounts"

log = logging.getLogger(__name__)


@docs(
    tags=[TAG],
    summary="Create an account",
    operation_id="register",
    security=[],
    responses=answers({201: (UserSchema, "The new account.")}, *WRITE_ERRORS),
)
@json_body(RegisterSchema())
async def register(request: web.Request) -> web.Response:
    found = services(request)
    body = request[BODY]
    user = await hashing(request, register_user, found.storage, found.hasher, body["username"], body["password"])
    return json_answer(UserSchema().dump(user), status=201)


@docs(
    tags=[TAG],
    summary="Log in: get an access and a refresh token",
    description="After 10 failed logins for one username within 60 seconds, every"
    " login for it answers 429 until the window has passed.",
    operation_id="obtainTokens",
    security=[],
    responses=answers({200: (TokenPairSchema, "A token pair.")}, *WRITE_ERRORS, 401, 429),
)
@json_body(LoginSchema())
async def obtain_tokens(request: web.Request) -> web.Response:
    found = services(request)
    body = request[BODY]
    pair = await hashing(
        request,
        login, found.storage, found.hasher, found.throttle, found.tokens,
        body["username"], body["password"],
    )
    return json_answer(TokenPairSchema().dump(pair))


@docs(
    tags=[TAG],
    summary="Trade a refresh token for a new access token",
    operation_id="refreshToken",
    security=[],
    responses=answers({200: (AccessTokenSchema, "A new access token.")}, *WRITE_ERRORS, 401),
)
@json_body(RefreshSchema())
async def refresh_token(request: web.Request) -> web.Response:
    found = services(request)
    access = await read(request, refresh_access, found.storage, found.tokens, request[BODY]["refresh"])
    return json_answer(AccessTokenSchema().dump({"access": access}))


@docs(
    tags=["health"],
    summary="Whether the service and its storage answer",
    operation_id="health",
    security=[],
    responses=answers({200: (HealthSchema, "Storage answers.")}, 503),
)
async def health(request: web.Request) -> web.Response:
    try:
        await call(services(request).storage.check)
    except Exception as error:
        log.warning("Health check: storage does not answer (%s)", type(error).__name__)
        return json_answer({"detail": "Storage does not answer."}, status=503)
    return json_answer(HealthSchema().dump({"status": "ok"}))


ROUTES = [
    Route("POST", "/api/v1/auth/", register, public=True),
    Route("POST", "/api/v1/token/", obtain_tokens, public=True),
    Route("POST", "/api/v1/token/refresh/", refresh_token, public=True),
    Route("GET", "/health", health, public=True),
]
