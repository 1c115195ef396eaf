"""The `migration-api` command line: `migration-api serve [flags]`, and the
inventory for scripts: `migration-api import FILE --user NAME [--dry-run]`
and `migration-api export --user NAME [--output FILE]`, the machines'
`check`, `discover` and `preflight --wave NAME`, against the storage
the service is configured with (MIGRATION_STORAGE, MIGRATION_SECRET_KEY or
their flags).

Exit codes of import and export: 0 done; 1 the file was refused (every bad
row is in the JSON report on standard output; nothing was written); 2 a bad
command line, setting, user or file that cannot be read."""

from __future__ import annotations

import argparse
import errno
import gc
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from adapters.clock import SystemClock
from entrypoints import logs, package_version
from entrypoints.bootstrap import SETTINGS, BadSetting, Settings, bootstrap, configured_storage
from entrypoints.inventory_csv import MAX_BYTES, export_csv, import_csv
from entrypoints.settings import label
from entrypoints.workers import Supervisor, is_worker
from migration_core import (
    Conflict,
    InvalidInput,
    NotFound,
    RowsRefused,
    Storage,
    check_workload,
    discover_volumes,
    user_named,
    wave_named,
    workload_with_ip,
)
from migration_core.readiness import MigrationReadiness, check_readiness, check_wave_readiness

PROG = "migration-api"
log = logging.getLogger(__name__)
SHUTDOWN_GRACE_SECONDS = 5.0


class _PrintVersion(argparse.Action):
    """argparse's own version action, with the version read only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **_: Any) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"{PROG} {package_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="The workload-migration service.")
    parser.add_argument("--version", action=_PrintVersion)
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
    importing = commands.add_parser(
        "import",
        help="import an inventory CSV for a user",
        description="Import an inventory (the columns of POST /api/v1/inventory/import/) for a"
        " user, all or nothing; print the report as JSON. Exit 0: imported; 1: refused, nothing"
        " written; 2: bad command line, setting, user or file.",
    )
    importing.add_argument("file", metavar="FILE", help="the CSV file; - reads standard input")
    importing.add_argument("--dry-run", action="store_true", help="check every row, write nothing")
    exporting = commands.add_parser(
        "export",
        help="export a user's inventory as CSV",
        description="Write a user's inventory as CSV (passwords left empty). Exit 0: written;"
        " 2: bad command line, setting or user.",
    )
    exporting.add_argument("--output", metavar="FILE", help="write here instead of standard output")
    checking = commands.add_parser(
        "check",
        help="check a user's workload over SSH",
        description="Connect to a workload, log in and read its facts, as POST"
        " /api/v1/work_loads/{id}/check/ does; print the answer as JSON. Exit 0: ok; 1: not ok"
        " (the message says why); 2: bad command line, setting, user or workload, or an address"
        " outside the allowed networks.",
    )
    discovering = commands.add_parser(
        "discover",
        help="discover a user's workload's volumes over SSH",
        description="Read a workload's mounted filesystems and write them as its mount points, as"
        " POST /api/v1/work_loads/{id}/discover/ does; print the answer as JSON. Exit codes as check.",
    )
    discovering.add_argument("--dry-run", action="store_true", help="report what would change, write nothing")
    for command in (checking, discovering):
        command.add_argument("ip", metavar="IP", help="the workload's ip")
    preflight = commands.add_parser(
        "preflight",
        help="check whether a user's wave or migration is ready to run",
        description="Run the readiness checks of a wave's migrations (each machine logged in to once,"
        " at most MIGRATION_MAX_COPIES at a time) or of one migration, as POST"
        " /api/v1/waves/{id}/preflight/ does; print a table of each check. Exit 0: all ready; 1: some"
        " not ready (the table says why); 2: bad command line, setting, user, wave or migration, or an"
        " address outside the allowed networks.",
    )
    which = preflight.add_mutually_exclusive_group(required=True)
    which.add_argument("--wave", metavar="NAME", help="the wave's name")
    which.add_argument("--migration", metavar="ID", type=int, help="a migration's id")
    machine_settings = ("allowed_networks", "connect_timeout", "max_copies")
    for command in (importing, exporting, checking, discovering, preflight):
        command.add_argument("--user", required=True, metavar="NAME", help="the user whose inventory it is")
        for setting in SETTINGS:
            if setting.name in ("storage", "secret_key") or (
                command in (checking, discovering, preflight) and setting.name in machine_settings
            ):
                command.add_argument(
                    setting.flag, dest=setting.name, metavar="VALUE", help=f"variable {setting.variable}"
                )
    return parser


def serve(flags: dict[str, str | None]) -> int:
    try:
        settings = Settings.from_sources(os.environ, flags)
    except BadSetting as error:
        logs.complain(PROG, f"bad setting: {error}")
        return 2
    logs.configure(settings.log_format)
    supervising = settings.workers > 1 and not is_worker()
    try:
        # Workers share the port; a supervisor only checks that it is free.
        sockets = _listening_sockets(settings.host, settings.port, reuse_port=supervising or is_worker())
    except OSError as error:
        logs.complain(PROG, _cannot_listen(settings, error))
        return 1
    if supervising:
        _close(sockets)
        return Supervisor(settings, os.environ).run()
    try:
        services = bootstrap(settings)
    except BadSetting as error:
        _close(sockets)
        logs.complain(PROG, f"bad setting: {error}")
        return 2

    # The HTTP stack only here: the other commands start without it.
    from aiohttp import web
    from aiohttp.log import access_logger

    from entrypoints.http import create_app
    from entrypoints.http.access_log import AccessLog
    from entrypoints.http.app import server_options

    try:
        app = create_app(services, body_timeout=settings.body_timeout, metrics=settings.metrics)
        _collect_less_often()
        web.run_app(
            app,
            sock=sockets,
            shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
            access_log=access_logger if settings.access_log else None,
            access_log_class=AccessLog,
            **server_options(settings.idle_timeout),
            # A log line like any other, so that a JSON log stays JSON throughout.
            print=lambda _banner: log.info(
                "Serving on http://%s:%d (Ctrl+C to stop)", settings.host, settings.port
            ),
        )
    except OSError as error:
        # Another process may take the port between the check above and listen().
        if error.errno != errno.EADDRINUSE:
            raise
        logs.complain(PROG, _cannot_listen(settings, error))
        return 1
    finally:
        _close(sockets)
    return 0


def _collect_less_often() -> None:
    """Tune the cyclic garbage collector for serving: what exists at the start
    (modules, the app) lives for the whole process, so it is left out of every
    later collection, and the youngest generation is collected after 10,000
    allocations rather than 700: a request allocates a few hundred objects
    that plain reference counting frees. Measured in docs/benchmarks.md."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(10_000, middle, oldest)


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


def _fail(message: str) -> int:
    logs.complain(PROG, message)
    return 2


def _settings_for(arguments: argparse.Namespace) -> Settings:
    names = ("storage", "secret_key", "allowed_networks", "connect_timeout", "max_copies")
    return Settings.from_sources(os.environ, {name: getattr(arguments, name, None) for name in names})


def _storage_for(arguments: argparse.Namespace) -> Storage:
    return configured_storage(_settings_for(arguments))


class ProgressBar:
    """A bar on a terminal, redrawn in place; nothing on anything else."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._on = stream.isatty()
        self._shown = -1

    def __call__(self, done: int, total: int) -> None:
        filled = self.WIDTH * done // max(total, 1)
        if not self._on or (filled == self._shown and done != total):
            return
        self._shown = filled
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self._stream.write(f"\r[{bar}] {done}/{total} rows")
        if done == total:
            self._stream.write("\n")
        self._stream.flush()


def import_command(arguments: argparse.Namespace) -> int:
    try:
        if arguments.file == "-":
            data = sys.stdin.buffer.read(MAX_BYTES + 1)
        else:
            with open(arguments.file, "rb") as file:
                data = file.read(MAX_BYTES + 1)
    except OSError as error:
        return _fail(f"cannot read {arguments.file}: {error.strerror or error}")
    # A warm row without an interval takes MIGRATION_SYNC_INTERVAL, as the service's import does.
    interval = _settings_for(arguments).sync_interval
    return _with_user(arguments, lambda storage, owner: _import(storage, owner, data, arguments.dry_run, interval))


def _import(storage: Storage, owner_id: int, data: bytes, dry_run: bool, sync_interval: int) -> int:
    try:
        report = import_csv(
            storage, SystemClock(), owner_id, data, dry_run=dry_run, progress=ProgressBar(sys.stderr),
            default_sync_interval=sync_interval,
        )
    except RowsRefused as refused:
        rows = [{"row": e.row, "field": e.field, "message": e.message} for e in refused.rows]
        print(json.dumps({"detail": refused.message, "rows": rows}))
        logs.complain(PROG, f"import refused: {refused.message}")
        return 1
    print(json.dumps({"created": report.created, "updated": report.updated, "unchanged": report.unchanged}))
    return 0


def export_command(arguments: argparse.Namespace) -> int:
    def write(storage: Storage, owner_id: int) -> int:
        text = export_csv(storage, owner_id)
        if arguments.output is None:
            sys.stdout.write(text)
        else:
            Path(arguments.output).write_text(text, encoding="utf-8", newline="")
        return 0

    return _with_user(arguments, write)


def machine_command(arguments: argparse.Namespace) -> int:
    from adapters.ssh import SshMachines
    from entrypoints.http.machines import check_view, discovery_view

    def act(storage: Storage, owner_id: int) -> int:
        settings = _settings_for(arguments)
        machines = SshMachines(settings.allowed_networks, settings.connect_timeout)
        try:
            workload = workload_with_ip(storage, owner_id, arguments.ip)
            if arguments.command == "check":
                checked = check_workload(storage, machines, owner_id, workload.id)
                ok, answer = checked.ok, check_view(checked)
            else:
                found = discover_volumes(storage, machines, owner_id, workload.id, dry_run=arguments.dry_run)
                ok, answer = found.ok, discovery_view(found)
        except (Conflict, InvalidInput) as error:
            return _fail(error.message if not isinstance(error, InvalidInput) else _field_errors(error))
        finally:
            machines.close()
        print(json.dumps(answer))
        if not ok:
            logs.complain(PROG, f"{arguments.command} failed: {answer['message']}")
        return 0 if ok else 1

    return _with_user(arguments, act)


def preflight_command(arguments: argparse.Namespace) -> int:
    from adapters.ssh import SshMachines

    def act(storage: Storage, owner_id: int) -> int:
        settings = _settings_for(arguments)
        machines = SshMachines(settings.allowed_networks, settings.connect_timeout)
        clock = SystemClock()
        try:
            if arguments.wave is not None:
                wave = wave_named(storage, owner_id, arguments.wave)
                results = check_wave_readiness(
                    storage, machines, owner_id, wave.id, at_once=settings.max_copies, clock=clock
                ).migrations
            else:
                results = (check_readiness(storage, machines, owner_id, arguments.migration, clock=clock),)
        except Conflict as error:
            return _fail(error.message)
        finally:
            machines.close()
        print(readiness_table(results))
        ready = sum(1 for result in results if result.ready)
        if ready < len(results):
            logs.complain(PROG, f"{len(results) - ready} of {len(results)} migration(s) not ready")
        return 0 if ready == len(results) else 1

    return _with_user(arguments, act)


def readiness_table(results: Sequence[MigrationReadiness]) -> str:
    """One row a check: the migration, the check, ok or FAILED, the message;
    then how many are ready."""
    rows = [("MIGRATION", "CHECK", "RESULT", "MESSAGE")]
    for result in results:
        for check in result.checks:
            rows.append((str(result.migration_id), check.check.value, "ok" if check.ok else "FAILED", check.message))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3] for row in rows]
    ready = sum(1 for result in results if result.ready)
    lines.append(f"{ready} of {len(results)} ready")
    return "\n".join(lines)


def _field_errors(error: InvalidInput) -> str:
    return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in error.errors.items())


def _with_user(arguments: argparse.Namespace, work: Callable[[Storage, int], int]) -> int:
    try:
        storage = _storage_for(arguments)
    except BadSetting as error:
        return _fail(f"bad setting: {error}")
    try:
        return work(storage, user_named(storage, arguments.user).id)
    except NotFound as error:
        return _fail(error.message)
    except OSError as error:
        return _fail(f"cannot write {arguments.output}: {error.strerror or error}")
    finally:
        storage.close()


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.command == "serve":
        return serve({setting.name: getattr(arguments, setting.name) for setting in SETTINGS})
    if arguments.command == "import":
        return import_command(arguments)
    if arguments.command == "export":
        return export_command(arguments)
    if arguments.command in ("check", "discover"):
        return machine_command(arguments)
    if arguments.command == "preflight":
        return preflight_command(arguments)
    return 2  # argparse refuses unknown commands before this


if __name__ == "__main__":
    sys.exit(main())
