"""Secrets stay secret: through a full scenario with every logger at DEBUG
(aiohttp's access log included), no user password, credentials password or
token appears in any log line, nor in any answer but the token endpoints'
own. Failures are part of the scenario: a wrong login, a bad token, a refused
body that carries a password."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ..ssh_keys import keygen
from .http_client import make_app

API = "/api/v1"
USER_PASSWORD = "user-pass-7f3a9c1e"
CREDENTIALS_PASSWORD = "cred-pass-4b8d2e6a"
CLOUD_PASSWORD = "cloud-pass-9e1c5f3b"


@pytest.fixture(params=["memory", "sqlite"])
async def client(request: pytest.FixtureRequest, aiohttp_client: Any, tmp_path: Path) -> TestClient[Any, Any]:
    storage = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'secrets.db'}"
    return await aiohttp_client(make_app(run_seconds=0, storage=storage))


class Recorder(logging.Handler):
    """Every record, formatted as a log file would show it (tracebacks too)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def recorder() -> Any:
    handler = Recorder()
    root = logging.getLogger()
    loggers = [root, logging.getLogger("aiohttp.access"), logging.getLogger("aiohttp.server")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


async def test_no_secret_in_any_log_line_or_answer(client: TestClient[Any, Any], recorder: Recorder) -> None:
    answers: list[tuple[str, str]] = []  # (what, body) of every answer not meant to carry a token
    tokens: list[str] = []

    async def send(method: str, path: str, expect: int, token: str | None = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        answer = await client.request(method, path, headers=headers, **kwargs)
        text = await answer.text()
        assert answer.status == expect, f"{method} {path}: {answer.status} {text}"
        if not path.startswith(f"{API}/token"):
            answers.append((f"{method} {path}", text))
        return await answer.json() if answer.status != 204 else None

    login = {"username": "alice", "password": USER_PASSWORD}
    await send("POST", f"{API}/auth/", 201, json=login)
    await send("POST", f"{API}/auth/", 400, json=login)  # taken: the refusal must not echo the password
    await send("POST", f"{API}/token/", 401, json={"username": "alice", "password": USER_PASSWORD + "x"})
    pair = await send("POST", f"{API}/token/", 200, json=login)
    refreshed = await send("POST", f"{API}/token/refresh/", 200, json={"refresh": pair["refresh"]})
    tokens += [pair["access"], pair["refresh"], refreshed["access"]]
    access = refreshed["access"]

    await send("GET", f"{API}/credentials/", 401, token=pair["refresh"])  # the wrong kind of token
    await send("GET", f"{API}/credentials/", 401, token=access[:-3] + "abc")
    await send("POST", f"{API}/credentials/", 400, token=access,
               json={"username": "", "password": CREDENTIALS_PASSWORD, "unknown": CREDENTIALS_PASSWORD})
    login_credentials = await send("POST", f"{API}/credentials/", 201, token=access,
                                   json={"username": "administrator", "password": CREDENTIALS_PASSWORD})
    cloud_credentials = await send("POST", f"{API}/credentials/", 201, token=access,
                                   json={"username": "cloud", "password": CLOUD_PASSWORD, "domain": "aws"})
    await send("PATCH", f"{API}/credentials/{cloud_credentials['id']}/", 200, token=access,
               json={"password": CLOUD_PASSWORD + "-2"})
    private_key = keygen("logs", "-t", "rsa", "-b", "2048", "-m", "PEM")
    keyed = await send("POST", f"{API}/credentials/", 201, token=access,
                       json={"username": "deploy", "private_key": private_key})
    await send("PUT", f"{API}/credentials/{keyed['id']}/", 200, token=access,
               json={"username": "deploy", "private_key": private_key})
    # Refused, one with junk after its end: the refusal must not echo the key.
    await send("PATCH", f"{API}/credentials/{keyed['id']}/", 400, token=access,
               json={"private_key": private_key.replace("-----END", "AAAA\n-----END")})
    volume = await send("POST", f"{API}/mount_points/", 201, token=access, json={"name": "C:\\", "size": 10})
    workload = await send("POST", f"{API}/work_loads/", 201, token=access,
                          json={"ip": "10.0.0.1", "credentials": login_credentials["id"], "storage": [volume["id"]]})
    target = await send("POST", f"{API}/migration_targets/", 201, token=access,
                        json={"cloud_type": "aws", "cloud_credentials": cloud_credentials["id"]})
    migration = await send("POST", f"{API}/migrations/", 201, token=access,
                           json={"source": workload["id"], "migration_target": target["id"],
                                 "selected_mount_points": [volume["id"]]})
    await send("POST", f"{API}/migrations/{migration['id']}/run/", 202, token=access)
    for _ in range(200):
        state = await send("GET", f"{API}/migrations/{migration['id']}/state/", 200, token=access)
        if state["finished"]:
            break
    assert state["state"] == "success", state
    finished_target = await send("GET", f"{API}/migration_targets/{target['id']}/", 200, token=access)
    # The copied VM carries the source's login, without its password.
    assert finished_target["target_vm"]["credentials"] == {"username": "administrator", "domain": ""}
    for kind in ("credentials", "mount_points", "work_loads", "migration_targets", "migrations"):
        await send("GET", f"{API}/{kind}/", 200, token=access)
    await send("DELETE", f"{API}/credentials/{login_credentials['id']}/", 409, token=access)

    key_lines = [line for line in private_key.splitlines() if line and not line.startswith("-----")]
    secrets = [USER_PASSWORD, CREDENTIALS_PASSWORD, CLOUD_PASSWORD, *tokens, *key_lines]
    # Token pieces too: a log line could show a header or a payload alone.
    secrets += [part for token in tokens for part in token.split(".")[1:]]
    assert any("aiohttp.access" in line for line in recorder.lines), "the access log was not captured"
    assert len(recorder.lines) > 20
    for line in recorder.lines:
        for secret in secrets:
            assert secret not in line, f"a secret in the log: {line[:200]}"
    for what, body in answers:
        for secret in secrets:
            assert secret not in body, f"a secret in the answer to {what}"
