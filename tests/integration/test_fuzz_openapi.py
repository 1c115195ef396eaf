"""Property-based fuzzing of every operation from the service's own OpenAPI
document (schemathesis), against a real server on a free loopback port with
in-memory storage: once with a valid access token, once without. No answer may
be a 5xx, and every answer must match what the document says of its status,
content type, headers and body. A last test checks that every documented
status was seen, or that its absence here is explained (docs/security.md)."""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import pkgutil
import threading
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from aiohttp import web
from aiohttp_apigami import docs
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import adapters
import entrypoints
import migration_core
from entrypoints.http import create_app
from entrypoints.http.app import server_options
from entrypoints.http.openapi import openapi_document, setup_openapi
from entrypoints.http.schema_file import served_document

from .http_client import PASSWORD, make_services

# One process runs the whole module (make test's --dist loadgroup): the last
# test reads what the fuzz tests before it saw.
pytestmark = pytest.mark.xdist_group("fuzz_openapi")

OPENAPI_PATH = "/api/v1/openapi.json"
# Drawn examples per operation and token, on top of the ~50 boundary cases of
# schemathesis's coverage phase that every operation gets anyway: every
# documented status is still answered or explained, at two thirds of the
# CPU of 25 (38 s against 57).
EXAMPLES_PER_OPERATION = 12
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

# Documented answers the fuzzer cannot provoke, and where each one is tested instead.
EXPLAINED_ABSENCES: dict[int, str] = {
    500: "never expected: not_a_server_error fails the fuzz run if one appears",
    503: "storage down: test_http_errors.py closes the storage under /health",
    408: "the fuzzer sends whole bodies at once: test_slow_clients.py dribbles one",
    413: "the generated bodies stay small: test_hostile_inputs.py sends oversize ones to every write",
    415: "the fuzzer sends the documented media type: test_hostile_inputs.py sends others",
    429: "needs ten failed logins for one username within a minute: test_http_accounts.py",
}
# (method, path, status) answers the fuzzer does not provoke, with where they are tested.
_HELD_ELSEWHERE = "a mount point another workload holds: test_http_resources.py and test_isolation.py"
STREAM = "/api/v1/events/stream/"
_NEVER_ENDS = "the stream never ends, so it is not fuzzed with a token: test_http_events.py reads it"
# The fuzzer's workloads are at addresses outside the allowed networks (409,
# nothing sent); a machine that answers is test_http_machines.py's real sshd.
_REACHABLE_MACHINE = "needs a machine inside the allowed networks: test_http_machines.py"
_RUNNING_WARM = "needs a running warm migration: test_warm_migrations.py syncs and cuts over"
_WAVE_REPLACED = "test_http_waves.py replaces a wave (200), and one with a name or a member taken (409)"
EXPLAINED_OPERATION_ABSENCES: dict[tuple[str, str, int], str] = {
    ("PUT", "/api/v1/work_loads/{id}/", 409): _HELD_ELSEWHERE,
    ("PATCH", "/api/v1/work_loads/{id}/", 409): _HELD_ELSEWHERE,
    ("POST", "/api/v1/work_loads/{id}/check/", 200): _REACHABLE_MACHINE,
    ("POST", "/api/v1/work_loads/{id}/discover/", 200): _REACHABLE_MACHINE,
    ("POST", "/api/v1/inventory/import/", 200): "generated text is seldom an inventory: test_http_fleets.py"
    " and test_inventory_properties.py import valid ones",
    # Which answers a replacement of a wave gets hangs on the names generated
    # (unique per owner) and the members drawn: the examples move with the document.
    ("PUT", "/api/v1/waves/{id}/", 200): _WAVE_REPLACED,
    ("PUT", "/api/v1/waves/{id}/", 409): _WAVE_REPLACED,
    ("POST", "/api/v1/migrations/{id}/preflight/", 409): "the fuzzer's targets have no host, so its"
    " migrations reach no machine: test_http_readiness.py refuses one outside the allowed networks",
    ("POST", "/api/v1/migrations/{id}/sync/", 202): _RUNNING_WARM,
    ("POST", "/api/v1/migrations/{id}/cutover/", 202): _RUNNING_WARM,
    ("GET", STREAM, 200): _NEVER_ENDS,
    ("GET", STREAM, 400): _NEVER_ENDS,
}

SEEDED_PATH_IDS: dict[str, str] = {
    "/api/v1/credentials/": "credentials",
    "/api/v1/mount_points/": "mount_points",
    "/api/v1/work_loads/": "workloads",
    "/api/v1/migration_targets/": "targets",
    "/api/v1/migrations/": "migrations",
    "/api/v1/waves/": "waves",
}
BODY_REFERENCES = {
    "credentials": "credentials",
    "cloud_credentials": "credentials",
    "storage": "mount_points",
    "selected_mount_points": "selectable",
    "source": "sources",
    "migration_target": "targets",
    "migrations": "migrations",
}

# Longer than this module takes: the seeded run stays `running` throughout, so
# what an operation meets does not depend on how fast the machine is.
RUN_SECONDS = 3600

# Every (method, documented path) -> statuses answered, over both runs.
SEEN: dict[tuple[str, str], set[int]] = defaultdict(set)
# The fuzzing user's objects by kind, filled once the server runs.
SEEDED: dict[str, list[int]] = {}
# The document the service builds; the server fixture checks it serves the same.
DOCUMENT = served_document()
api = schemathesis.openapi.from_dict(DOCUMENT)
# Told to schemathesis itself, not only through @settings below: schemathesis
# keeps a @settings value only where it differs from the loaded "default"
# profile, and with CI set the profiles tests/conftest.py registers inherit
# Hypothesis's own CI profile, which derandomizes already; derandomize=True was
# then dropped and every run drew a fresh seed.
api.config.generation.update(deterministic=True, max_examples=EXAMPLES_PER_OPERATION, database="none")


def _import_every_project_module() -> None:
    """Hypothesis now and then draws a literal found in a loaded project module
    (tests excepted). Which ones are loaded depends on what else this session
    collected, so alone this file would draw other examples than within the
    whole suite. With all of them loaded, the pool is the same either way."""
    for package in (migration_core, adapters, entrypoints):
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not module.name.endswith(".__main__"):
                importlib.import_module(module.name)


_import_every_project_module()


class LoopbackServer:
    """The app served by aiohttp on 127.0.0.1 in a thread of its own, so the
    synchronous fuzzer can call it over real sockets."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, **server_options())
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    async def _start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def __exit__(self, *_exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


_SEED_ROUNDS = itertools.count(1)


def _seed(base_url: str, token: str, refresh: str) -> dict[str, list[Any]]:
    """A fresh small inventory for the fuzzing user, so that generated ids can
    name real objects: reads, replacements, runs, cancels, deletes and refused
    deletes happen too. One migration runs, one can start, one lacks C:\\."""
    session = requests.Session()
    session.trust_env = False
    session.headers["Authorization"] = f"Bearer {token}"
    round_number = next(_SEED_ROUNDS)

    def post(path: str, body: dict[str, Any] | None = None, expect: int = 201) -> int:
        answer = session.post(base_url + path, json=body, timeout=10)
        assert answer.status_code == expect, answer.text
        return int(answer.json()["id"])

    credentials = [post("/api/v1/credentials/", {"username": f"admin{i}", "password": "pw"}) for i in range(3)]
    volumes = [post("/api/v1/mount_points/", {"name": name, "size": 1000}) for name in ("C:\\", "D:\\", "E:\\", "F:\\")]
    held, free = volumes[:3], volumes[3:]
    source = post(
        "/api/v1/work_loads/",
        {"ip": f"10.{round_number // 256}.{round_number % 256}.1", "credentials": credentials[0], "storage": held},
    )
    spare = post(
        "/api/v1/work_loads/",
        {"ip": f"10.{round_number // 256}.{round_number % 256}.2", "credentials": credentials[1], "storage": []},
    )
    target = {"cloud_type": "aws", "cloud_credentials": credentials[0]}
    targets = [post("/api/v1/migration_targets/", target) for _ in range(3)]

    def migration(target: int, selected: list[int]) -> int:
        body = {"source": source, "migration_target": target, "selected_mount_points": selected}
        return post("/api/v1/migrations/", body)

    running = migration(targets[0], held[:2])
    post(f"/api/v1/migrations/{running}/run/", expect=202)
    startable = migration(targets[1], held[:1])
    without_c = migration(targets[1], held[1:])
    # A wave of two (a run refuses both, a cancel stops the running one; the
    # startable migration stays free to be deleted), and an empty one.
    waves = [
        post("/api/v1/waves/", {"name": f"empty {round_number}"}),
        post("/api/v1/waves/", {"name": f"two {round_number}", "migrations": [without_c, running]}),
    ]
    # Hypothesis draws the first of a list most often: the free objects lead,
    # and so do the migrations that are not running, which a valid PUT or
    # PATCH changes (200); the running one is still drawn often enough (409).
    return {
        "credentials": credentials[::-1],
        "mount_points": free + held,
        "workloads": [spare, source],
        "targets": targets[::-1],
        "migrations": [startable, without_c, running],
        "waves": waves,
        "sources": [source],
        "selectable": held,
        "refresh": [refresh],
    }


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, Any]]:
    app = create_app(make_services(run_seconds=RUN_SECONDS))
    with LoopbackServer(app) as running:
        base_url = f"http://127.0.0.1:{running.port}"
        credentials = {"username": "fuzzer", "password": PASSWORD}
        assert requests.post(base_url + "/api/v1/auth/", json=credentials, timeout=10).status_code == 201
        served = requests.get(base_url + OPENAPI_PATH, timeout=10).json()
        assert served == json.loads(json.dumps(DOCUMENT)), "the fuzzed document is not the served one"
        tokens = requests.post(base_url + "/api/v1/token/", json=credentials, timeout=10).json()
        yield {"base_url": base_url, "token": tokens["access"], "refresh": tokens["refresh"]}


def _seeded_kind(path: str) -> str | None:
    return next((kind for prefix, kind in SEEDED_PATH_IDS.items() if path.startswith(prefix + "{")), None)


def _seeded_id(kind: str, value: Any, every: int) -> Any:
    """The seeded object of `kind` that an int names, unless it is a multiple
    of `every`: chosen by the generated value, so examples stay reproducible.
    Small values name the first objects, which Hypothesis draws most often."""
    if isinstance(value, int) and not isinstance(value, bool) and value % every:
        return SEEDED[kind][value // every % len(SEEDED[kind])]
    return value


_SEEDED_FOR: list[str] = []


def _point_at_a_fresh_inventory(case: schemathesis.Case, server: dict[str, Any]) -> None:
    """Seeds a fresh inventory when a new operation starts (the one before
    may have deleted or started what it was given), then makes half the ids
    in the case's path, and most in its body, name seeded objects of the
    right kind; the rest stay as generated."""
    label = case.operation.label
    if _SEEDED_FOR != [label]:
        SEEDED.clear()
        SEEDED.update(_seed(server["base_url"], server["token"], server["refresh"]))
        _SEEDED_FOR[:] = [label]
    kind = _seeded_kind(case.operation.path)
    if kind is not None and case.path_parameters:
        case.path_parameters = {**case.path_parameters, "id": _seeded_id(kind, case.path_parameters.get("id"), 2)}
    if not isinstance(case.body, dict):
        return
    body = dict(case.body)
    if isinstance(body.get("refresh"), str) and len(body["refresh"]) % 2 == 0:
        body["refresh"] = SEEDED["refresh"][0]
    for field, kind in BODY_REFERENCES.items():
        value = body.get(field)
        if isinstance(value, list):
            body[field] = [_seeded_id(kind, item, 4) for item in value]
        elif value is not None:
            body[field] = _seeded_id(kind, value, 4)
    case.body = body


def _call_and_check(case: schemathesis.Case, base_url: str, headers: dict[str, str]) -> None:
    # A session of its own per call, as schemathesis makes one, but blind to
    # proxy variables: requests reads the whole environment twice a request
    # for them, a tenth of this module's CPU, for a server on loopback.
    with requests.Session() as session:
        session.trust_env = False
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=10)
    SEEN[(case.operation.method.upper(), case.operation.path)].add(response.status_code)
    case.validate_response(response, checks=CHECKS, headers=headers)


FUZZ_SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    database=None,
    # The same examples on every run, so the reachability check below is stable.
    derandomize=True,
)


@pytest.fixture
def fuzzed_document() -> schemathesis.BaseSchema:
    return api


# Built when it runs, one subtest per operation, not when collected: the ~50
# boundary cases per operation cost each pytest-xdist worker that collects
# this module some 5 CPU-seconds, and only one of them runs it.
# The stream never ends with a valid token: test_http_events.py reads it instead.
@schemathesis.pytest.from_fixture("fuzzed_document").exclude(path=STREAM).parametrize()
@FUZZ_SETTINGS
def test_with_a_valid_token(case: schemathesis.Case, server: dict[str, Any]) -> None:
    """With the seeded user's access token: no 5xx, every answer as documented."""
    _point_at_a_fresh_inventory(case, server)
    _call_and_check(case, server["base_url"], {"Authorization": f"Bearer {server['token']}"})


# Without a token every protected operation answers 401 whatever it is sent,
# so the ~50 boundary cases per operation (schemathesis's coverage phase,
# Hypothesis's explicit examples) add nothing here that the token's run does not
# already send to the public ones: drawn examples only, at half the module's CPU.
@api.parametrize()
@hypothesis.settings(FUZZ_SETTINGS, phases=[hypothesis.Phase.generate])
def test_without_a_token(case: schemathesis.Case, server: dict[str, Any]) -> None:
    """Without a token: the same checks; every protected operation answers 401."""
    case.headers = {key: value for key, value in (case.headers or {}).items() if key.lower() != "authorization"}
    _call_and_check(case, server["base_url"], {})


def test_an_operation_that_takes_a_body_lists_what_reading_one_answers_even_unasked() -> None:
    """A body may be too large (413) or too slow (408) on any operation that
    reads one: the document says so of each, also where its route forgot."""

    @docs(summary="takes a body", requestBody={"content": {"application/json": {"schema": {"type": "object"}}}},
          responses={200: {"description": "taken"}})
    async def forgetful(_request: web.Request) -> web.Response:
        raise AssertionError("documented only")

    app = web.Application()
    app.router.add_post("/forgetful/", forgetful)
    setup_openapi(app)
    answers = openapi_document(app)["paths"]["/forgetful/"]["post"]["responses"]
    assert sorted(answers) == ["200", "408", "413"]
    assert answers["413"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    unlisted = [
        f"{method.upper()} {path} {code}"
        for path, operations in DOCUMENT["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
        for code in ("408", "413")
        if code not in operation["responses"]
    ]
    assert unlisted == []


def test_every_documented_status_was_answered_or_is_explained() -> None:
    """Runs after the fuzz tests above (file order): each status the document
    lists for an operation was answered to it, or its absence is explained."""
    if not SEEN:
        pytest.skip("the fuzz tests did not run in this session")
    unexplained = []
    for result in api.get_all_operations():
        operation = result.ok()
        key = (operation.method.upper(), operation.path)
        for status in sorted(int(code) for code in operation.definition.raw["responses"]):
            if status in SEEN[key] or status in EXPLAINED_ABSENCES:
                continue
            if (*key, status) in EXPLAINED_OPERATION_ABSENCES:
                continue
            unexplained.append(f"{key[0]} {key[1]} {status} (seen: {sorted(SEEN[key])})")
    assert not unexplained, "documented but never answered:\n" + "\n".join(unexplained)
