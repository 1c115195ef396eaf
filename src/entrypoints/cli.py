"""The `migration-api` command line: `migration-api serve [flags]`."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
from collections.abc import Sequence

from aiohttp import web
from aiohttp.log import access_logger

from entrypoints import logs, package_version
from entrypoints.bootstrap import SETTINGS, BadSetting, Settings, bootstrap
from entrypoints.settings import label
from entrypoints.workers import Supervisor, is_worker

PROG = "migration-api"
log = logging.getLogger(__name__)
SHUTDOWN_GRACE_SECONDS = 5.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="The workload-migration service.")
    parser.add_argument("--version", action="version", version=f"{PROG} {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve the REST API",
        description="Serve the REST API. Each flag overrides its environment variable.",
    )
    for setting in SETTINGS:
        default = f" (default: {setting.default})" if setting.default is not None else ""
        serve.add_argument(
            setting.flag,
            dest=setting.name,
            metavar="VALUE",
            help=f"{setting.help}; variable {setting.variable}{default}",
        )
    return parser


def serve(flags: dict[str, str | None]) -> int:
    try:
        settings = Settings.from_sources(os.environ, flags)
    except BadSetting as error:
        print(f"{PROG}: bad setting: {error}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format)
    supervising = settings.workers > 1 and not is_worker()
    try:
        # Workers share the port; a supervisor only checks that it is free.
        sockets = _listening_sockets(settings.host, settings.port, reuse_port=supervising or is_worker())
    except OSError as error:
        print(f"{PROG}: {_cannot_listen(settings, error)}", file=sys.stderr)
        return 1
    if supervising:
        _close(sockets)
        return Supervisor(settings, os.environ).run()
    try:
        services = bootstrap(settings)
    except BadSetting as error:
        _close(sockets)
        print(f"{PROG}: bad setting: {error}", file=sys.stderr)
        return 2

    from entrypoints.http import create_app
    from entrypoints.http.app import server_options
    from entrypoints.http.request_ids import RequestIdAccessLogger

    try:
        web.run_app(
            create_app(services, body_timeout=settings.body_timeout, metrics=settings.metrics),
            sock=sockets,
            shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
            access_log=access_logger if settings.access_log else None,
            access_log_class=RequestIdAccessLogger,
            **server_options(settings.idle_timeout),
            # A log line like any other, so that a JSON log stays JSON throughout.
            print=lambda _banner: log.info(
                "Serving on http://%s:%d (Ctrl+C to stop)", settings.host, settings.port
            ),
        )
    finally:
        _close(sockets)
    return 0


def _listening_sockets(host: str, port: int, *, reuse_port: bool) -> list[socket.socket]:
    """A socket bound to each address `host` names, as asyncio would bind them,
    but before the service starts: a port in use must stop the start before the
    runner marks the runs in the database interrupted. Workers of one service
    bind the port together (SO_REUSEPORT)."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, protocol, _name, address in dict.fromkeys(found):
            listener = socket.socket(family, kind, protocol)
            sockets.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # one family per socket
            listener.bind(address)
    except OSError:
        _close(sockets)
        raise
    return sockets


def _close(sockets: list[socket.socket]) -> None:
    for listener in sockets:
        listener.close()


def _cannot_listen(settings: Settings, error: OSError) -> str:
    """Why the service cannot listen, in one line naming the setting to change."""
    where = f"cannot listen on {settings.host}:{settings.port}"
    if error.errno == errno.EADDRINUSE:
        return f"{where}: the port is already in use; choose another with {label('port')}"
    if error.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need privileges); choose another with {label('port')}"
    if error.errno == errno.EADDRNOTAVAIL or isinstance(error, socket.gaierror):
        return f"{where}: no such address on this machine; check {label('host')}"
    return f"{where}: {error.strerror or error}; check {label('host')} and {label('port')}"


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.command == "serve":
        return serve({setting.name: getattr(arguments, setting.name) for setting in SETTINGS})
    return 2  # argparse refuses unknown commands before this


if __name__ == "__main__":
    sys.exit(main())
