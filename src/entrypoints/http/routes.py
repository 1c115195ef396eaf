"""Routes as data: each answers at its path with and without the trailing slash,
directly (no redirect), and only the slashed form is documented."""

from __future__ import annotations

import attrs
from aiohttp import web

from .requests import Handler, authenticated, user_found_in_transaction


@attrs.frozen
class Route:
    method: str
    path: str  # as documented; the form with the trailing slash toggled answers too
    handler: Handler
    public: bool = False
    # Its handler finds the token's user in its use case's own transaction
    # (`read_as_user`, `write_as_user`).
    user_in_transaction: bool = False


def _undocumented(handler: Handler) -> Handler:
    """The same handler without the documentation attributes, for the alias path."""

    async def alias(request: web.Request) -> web.StreamResponse:
        return await handler(request)

    return alias


def add_routes(router: web.UrlDispatcher, routes: list[Route]) -> None:
    for route in routes:
        if route.public:
            handler = route.handler
        else:
            handler = (user_found_in_transaction if route.user_in_transaction else authenticated)(route.handler)
        router.add_route(route.method, route.path, handler)
        alias = route.path.removesuffix("/") if route.path.endswith("/") else route.path + "/"
        router.add_route(route.method, alias, _undocumented(handler))
