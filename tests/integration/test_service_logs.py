"""Logs an operator can ship: `serve --log-format json` through a full scenario
writes nothing but JSON objects, one a line; every request's line carries its
request id, the caller's when it is sane (and answered in `X-Request-Id`), a
new one otherwise; no password or token appears in any line."""

from __future__ import annotations

import io
import json
import logging
import os
import urllib.error
import urllib.request
from typing import Any

import pytest

from entrypoints.logs import REQUEST_ID, log_handler

from .service_process import ServiceProcess

PASSWORD = "user-pass-5d1e8a2f"
CREDENTIALS_PASSWORD = "cred-pass-0c7b3e91"


def _call(service: ServiceProcess, method: str, path: str, body: Any = None, *,
          token: str | None = None, request_id: str | None = None) -> tuple[int, str, Any]:
    """Status, the X-Request-Id answered, and the body (parsed, when JSON)."""
    request = urllib.request.Request(
        f"{service.url}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(), headers={"Content-Type": "application/json"},
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if request_id is not None:
        request.add_header("X-Request-Id", request_id)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            status, headers, raw = answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        status, headers, raw = error.code, error.headers, error.read()
    parsed = json.loads(raw) if headers.get_content_type() == "application/json" else raw
    return status, headers["X-Request-Id"], parsed


def test_json_logs_of_a_full_scenario_carry_request_ids_and_no_secret(fresh_service: ServiceProcess) -> None:
    fresh_service.start("--log-format", "json")
    sent: dict[str, str] = {}  # request id -> "METHOD path"

    def call(method: str, path: str, expect: int, body: Any = None, token: str | None = None) -> Any:
        request_id = f"scenario-{len(sent) + 1}"
        status, answered, found = _call(fresh_service, method, path, body, token=token, request_id=request_id)
        assert (status, answered) == (expect, request_id), (method, path, status, found)
        sent[request_id] = f"{method} {path}"
        return found

    account = {"username": "alice", "password": PASSWORD}
    call("POST", "/api/v1/auth/", 201, account)
    call("POST", "/api/v1/token/", 401, {"username": "alice", "password": PASSWORD + "!"})
    pair = call("POST", "/api/v1/token/", 200, account)
    access = call("POST", "/api/v1/token/refresh/", 200, {"refresh": pair["refresh"]})["access"]
    call("GET", "/api/v1/credentials/", 401, token=pair["refresh"])
    login = call("POST", "/api/v1/credentials/", 201, {"username": "admin", "password": CREDENTIALS_PASSWORD}, access)
    volume = call("POST", "/api/v1/mount_points/", 201, {"name": "C:\\", "size": 10}, access)
    workload = call("POST", "/api/v1/work_loads/", 201,
                    {"ip": "192.0.2.7", "credentials": login["id"], "storage": [volume["id"]]}, access)
    target = call(
        "POST", "/api/v1/migration_targets/", 201, {"cloud_type": "aws", "cloud_credentials": login["id"]}, access
    )
    plan = {"source": workload["id"], "migration_target": target["id"], "selected_mount_points": [volume["id"]]}
    migration = call("POST", "/api/v1/migrations/", 201, plan, access)
    call("POST", f"/api/v1/migrations/{migration['id']}/run/", 202, token=access)
    call("GET", f"/api/v1/migrations/{migration['id']}/state/", 200, token=access)
    call("GET", "/api/v1/nowhere/", 404, token=access)
    call("GET", "/metrics", 200)
    # An id that would make log lines ambiguous is replaced by a new one.
    status, generated, _ = _call(fresh_service, "GET", "/health", request_id="two words")
    assert status == 200 and generated and generated != "two words"
    status, fresh, _ = _call(fresh_service, "GET", "/health")
    assert status == 200 and fresh and fresh != generated

    code, output = fresh_service.stop(), fresh_service.log()
    assert code == 0, output
    lines = [json.loads(line) for line in output.splitlines()]  # every line is one JSON object
    assert all({"time", "level", "logger", "pid", "message"} <= set(line) for line in lines)
    access_lines = [line for line in lines if line["logger"] == "aiohttp.access"]
    assert all(line.get("request_id") for line in access_lines)
    by_id = {line["request_id"]: line["message"] for line in access_lines}
    for request_id, what in sent.items():
        method, path = what.split(" ", 1)
        assert f'"{method} {path} HTTP/1.1"' in by_id[request_id], (request_id, what)
    assert generated in by_id and fresh in by_id
    assert "two words" not in output
    secrets = [PASSWORD, CREDENTIALS_PASSWORD, pair["access"], pair["refresh"], access]
    secrets += [part for token in (pair["access"], pair["refresh"], access) for part in token.split(".")[1:]]
    for line in output.splitlines():
        for secret in secrets:
            assert secret not in line, f"a secret in the log: {line[:200]}"


def test_text_lines_end_with_the_request_id_where_there_is_one() -> None:
    handler = log_handler("text")
    handler.setStream(io.StringIO())
    logger = logging.getLogger("tests.text_lines")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("outside any request")
        token = REQUEST_ID.set("abc-123")
        try:
            logger.warning("while answering one")
        finally:
            REQUEST_ID.reset(token)
    finally:
        logger.removeHandler(handler)
    stream = handler.stream
    assert isinstance(stream, io.StringIO)
    outside, inside = stream.getvalue().splitlines()
    pid = os.getpid()
    assert outside.endswith(f"WARNING tests.text_lines[{pid}]: outside any request")
    assert inside.endswith(f"WARNING tests.text_lines[{pid}]: while answering one request_id=abc-123")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "body"),
    [
        ("GET", "/api/v1/credentials/7/", {"User-Agent": "wrk", "X-Request-Id": "abc"}, 200, b'{"id": 7}'),
        ("POST", "/api/v1/x/?a=1&b=%20", {"Referer": "http://console/"}, 404, b""),
        ("DELETE", "/p%d%s", {}, 204, b""),
    ],
)
def test_the_access_line_is_aiohttps_default_line_with_the_answered_id(
    method: str, path: str, headers: dict[str, str], status: int, body: bytes
) -> None:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request
    from aiohttp.web_log import AccessLogger

    from entrypoints.http.access_log import AccessLog

    logger = logging.getLogger("tests.access_lines")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    recorded = _Records()
    logger.addHandler(recorded)
    request = make_mocked_request(method, path, headers=headers)
    response = web.Response(status=status, body=body, headers={"X-Request-Id": "answered-1"})
    try:
        AccessLog(logger, "").log(request, response, 0.25)
        token = REQUEST_ID.set("answered-1")
        try:
            AccessLogger(logger, AccessLogger.LOG_FORMAT).log(request, response, 0.25)
        finally:
            REQUEST_ID.reset(token)
    finally:
        logger.removeHandler(recorded)
    ours, aiohttps = recorded.records
    assert ours.getMessage() == aiohttps.getMessage()
    assert ours.__dict__["request_id"] == "answered-1"
    assert (ours.levelno, ours.name) == (logging.INFO, logger.name)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_times_formatted_once_a_second_read_as_formatted_each_time(log_format: str) -> None:
    from datetime import datetime, timezone

    handler = log_handler(log_format)
    for created in (1764608401.0, 1764608401.0004, 1764608401.9996, 1764608402.5, 1764608401.25):
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
        record.created, record.msecs = created, int((created - int(created)) * 1000)
        line = handler.format(record)
        if log_format == "json":
            expected = datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds")
            assert json.loads(line)["time"] == expected
        else:
            assert line.startswith(logging.Formatter().formatTime(record) + " INFO x[")
