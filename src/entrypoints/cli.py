"""The `migration-api` command line: `migration-api serve [flags]`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from aiohttp import web
from aiohttp.log import access_logger

from entrypoints.bootstrap import SETTINGS, BadSetting, Settings, bootstrap
from entrypoints.workers import Supervisor, is_worker

PROG = "migration-api"
SHUTDOWN_GRACE_SECONDS = 5.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="The workload-migration service.")
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
        if settings.workers > 1 and not is_worker():
            logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
            return Supervisor(settings, os.environ).run()
        services = bootstrap(settings)
    except BadSetting as error:
        print(f"{PROG}: bad setting: {error}", file=sys.stderr)
        return 2

    from entrypoints.http import create_app
    from entrypoints.http.app import server_options

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        web.run_app(
            create_app(services, body_timeout=settings.body_timeout),
            host=settings.host,
            port=settings.port,
            shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
            access_log=access_logger if settings.access_log else None,
            reuse_port=is_worker(),
            **server_options(settings.idle_timeout),
            print=lambda _banner: print(
                f"{PROG}: serving on http://{settings.host}:{settings.port} (Ctrl+C to stop)",
                flush=True,
            ),
        )
    except OSError as error:
        print(f"{PROG}: cannot listen on {settings.host}:{settings.port}: {error.strerror or error}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.command == "serve":
        return serve({setting.name: getattr(arguments, setting.name) for setting in SETTINGS})
    return 2  # argparse refuses unknown commands before this


if __name__ == "__main__":
    sys.exit(main())
