"""Log lines an operator can ship: text (the default) or one JSON object a line,
each carrying the id of the request it belongs to, where there is one.

The HTTP edge puts the id of the request being answered in REQUEST_ID; a
filter on the handler copies it onto every record logged meanwhile."""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import TextIO

LOG_FORMATS = ("text", "json")
# The process id tells the workers of one service (--workers) apart.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


class _WithRequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, then ` request_id=...` when there is one."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return line if request_id is None else f"{line} request_id={request_id}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ISO 8601, UTC), level, logger, pid, message,
    request_id where there is one, and exception with its traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
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
    error, request ids included."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_WithRequestId())
    return handler


def configure(log_format: str) -> None:
    """Route every log line of the process through one handler of `log_format`."""
    logging.basicConfig(level=logging.INFO, handlers=[log_handler(log_format)], force=True)
