"""The command line's first module: `migration-api` and `python -m entrypoints`
start here. It sends logging, and Python's warnings with it, through the
chosen format before the rest of the service is imported, so that a warning
an import raises is a log line like any other (under `--log-format json`,
every line the process writes is one JSON object)."""

from __future__ import annotations

import os
import sys

from entrypoints import logs


def main() -> int:
    logs.configure(logs.requested_format(sys.argv[1:], os.environ))
    from entrypoints.cli import main as command_line

    return command_line()
