"""The ceiling: a bare aiohttp process answering a small JSON document on one
route. Whatever the service reaches is measured against this."""

from __future__ import annotations

import sys

from aiohttp import web

DOCUMENT = {"id": 1, "username": "administrator", "domain": "CORP"}


async def item(_request: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)


def main() -> None:
    app = web.Application()
    app.router.add_get("/item", item)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
