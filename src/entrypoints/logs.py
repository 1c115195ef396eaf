"""Log lines an operator can ship: text (the default) or one JSON object a line,
each carrying the id of the request it belongs to, where there is one.

The HTTP edge puts the id of the request being answered in REQUEST_ID; a
filter on the handler copies it onto every record logged meanwhile."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import TextIO

LOG_FORMATS = ("text", "json")
# The process id tells the workers of one service (--workers) apart.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


class _ChattyAtDebug(logging.Filter):
    """A chatty library's INFO lines as DEBUG: asyncssh says about fifteen for
    every connection, where the SSH driver says one line of its own."""

    LIBRARIES = ("asyncssh",)

    def filter(self, record: logging.LogRecord) -> bool:
        # A record another handler's filter demoted already is judged the same way.
        if record.levelno <= logging.INFO and record.name.split(".")[0] in self.LIBRARIES:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


class _WithRequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class PerSecond:
    """A moment's text to the second, formatted once a second: a busy service
    logs thousands of lines in each."""

    def __init__(self, text_of: Callable[[int], str]) -> None:
        self._text_of = text_of
        self._cached = (-1, "")

    def text(self, moment: float) -> str:
        second = int(moment)
        cached_second, text = self._cached
        if second != cached_second:
            text = self._text_of(second)
            self._cached = (second, text)
        return text


def _milliseconds(moment: float) -> int:
    return int((moment - int(moment)) * 1000)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, then ` request_id=...` when there is one."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._seconds = PerSecond(lambda second: time.strftime(self.default_time_format, self.converter(second)))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return f"{self._seconds.text(record.created)},{_milliseconds(record.created):03d}"

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return line if request_id is None else f"{line} request_id={request_id}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ISO 8601, UTC), level, logger, pid, message,
    request_id where there is one, and exception with its traceback, if any."""

    def __init__(self) -> None:
        super().__init__()
        self._seconds = PerSecond(
            lambda second: datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        )

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": f"{self._seconds.text(record.created)}.{_milliseconds(record.created):03d}+00:00",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            line["request_id"] = request_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def log_handler(log_format: str) -> logging.StreamHandler[TextIO]:
    """A handler writing `log_format` lines ("text" or "json") to standard
    error, request ids included, chatty libraries' INFO lines at debug."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_ChattyAtDebug())
    handler.addFilter(_WithRequestId())
    return handler


_configured = {"format": "text"}


def configure(log_format: str) -> None:
    """Route every log line of the process through one handler of
    `log_format`, Python's warnings included (the `py.warnings` logger)."""
    logging.basicConfig(level=logging.INFO, handlers=[log_handler(log_format)], force=True)
    logging.captureWarnings(True)
    _configured["format"] = log_format


def complain(program: str, message: str) -> None:
    """A command's one-line complaint on standard error: `program: message`
    as it is, or an ERROR log line where the process logs JSON, so that a
    JSON log stays JSON to its last line."""
    if _configured["format"] == "json":
        logging.getLogger(program).error("%s: %s", program, message)
    else:
        print(f"{program}: {message}", file=sys.stderr)


def requested_format(argv: Sequence[str], environ: Mapping[str, str]) -> str:
    """The log format a command line asks for (`--log-format`, else
    MIGRATION_LOG_FORMAT), read before anything else is imported so that even
    an import's warning is written in it; text where it names none or no
    format (the settings then refuse the bad value in words)."""
    chosen = environ.get("MIGRATION_LOG_FORMAT", "")
    for index, argument in enumerate(argv):
        if argument == "--log-format" and index + 1 < len(argv):
            chosen = argv[index + 1]
        elif argument.startswith("--log-format="):
            chosen = argument.partition("=")[2]
    chosen = chosen.strip().lower()
    return chosen if chosen in LOG_FORMATS else "text"
