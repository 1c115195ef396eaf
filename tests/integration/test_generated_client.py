"""A client that nobody here wrote works from the OpenAPI document: the
openapi-python-client generator reads schema.yaml without a single warning,
makes a function for every operation, and the generated package carries a
short scenario against a real server on a loopback port (register, token, an
inventory, a migration, its run and its state)."""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from .http_client import PASSWORD, make_app

# One process runs the whole module (make test's --dist loadgroup), so the
# client is generated once.
pytestmark = pytest.mark.xdist_group("generated_client")

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "generated_migration_client"
GENERATOR = Path(sys.executable).with_name("openapi-python-client")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The package generated from schema.yaml, importable, and what the
    generator printed."""
    directory = tmp_path_factory.mktemp("client")
    config = directory / "config.yaml"
    # No formatting of the output: it would need ruff on PATH and proves nothing here.
    # The generator knows no text/csv; the import's body is bytes to it, as to any client.
    overrides = {"text/csv": "application/octet-stream"}
    config.write_text(yaml.safe_dump({"post_hooks": [], "content_type_overrides": overrides}), encoding="utf-8")
    finished = subprocess.run(
        [str(GENERATOR), "generate", "--path", str(ROOT / "schema.yaml"), "--output-path",
         str(directory / PACKAGE), "--meta", "none", "--config", str(config), "--fail-on-warning"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output
    sys.path.insert(0, str(directory))
    try:
        yield directory / PACKAGE, output
    finally:
        sys.path.remove(str(directory))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def test_the_generator_warns_of_nothing(generated: tuple[Path, str]) -> None:
    _package, output = generated
    assert "warning" not in output.lower(), output
    assert "error" not in output.lower(), output


def test_every_operation_of_the_document_is_generated(generated: tuple[Path, str]) -> None:
    package, _output = generated
    document = yaml.safe_load((ROOT / "schema.yaml").read_text(encoding="utf-8"))
    expected = {
        _snake(operation["operationId"])
        for operations in document["paths"].values()
        for operation in operations.values()
    }
    found = {module.stem for module in (package / "api").rglob("*.py") if module.stem != "__init__"}
    assert found == expected
    models = {module.stem for module in (package / "models").glob("*.py")}
    assert {"migration", "migration_run_state", "migration_page", "target_vm", "wave", "migration_event"} <= models


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{name}")


async def test_a_scenario_runs_through_the_generated_client(generated: tuple[Path, str], aiohttp_server: Any) -> None:
    server = await aiohttp_server(make_app(run_seconds=0))
    base_url = f"http://127.0.0.1:{server.port}"
    client_module = _module("client")
    models = _module("models")

    def api(tag: str, operation: str) -> Any:
        return _module(f"api.{tag}.{operation}")

    anonymous = client_module.Client(base_url=base_url, raise_on_unexpected_status=True)
    login = {"username": "alice", "password": PASSWORD}
    user = await api("accounts", "register").asyncio(client=anonymous, body=models.Register(**login))
    assert isinstance(user, models.User) and user.username == "alice"
    pair = await api("accounts", "obtain_tokens").asyncio(client=anonymous, body=models.Login(**login))
    assert isinstance(pair, models.TokenPair), pair

    client = client_module.AuthenticatedClient(base_url=base_url, token=pair.access, raise_on_unexpected_status=True)

    async def create(tag: str, operation: str, body: Any) -> Any:
        detailed = await api(tag, operation).asyncio_detailed(client=client, body=body)
        assert detailed.status_code == 201, detailed.content
        return detailed.parsed

    credentials = await create(
        "credentials", "create_credentials", models.Credentials(username="administrator", password="s3cret!")
    )
    volume = await create("mount_points", "create_mount_point", models.MountPoint(name="C:\\", size=1024))
    workload = await create(
        "workloads", "create_workload",
        models.Workload(ip="192.0.2.10", credentials=credentials.id, storage=[volume.id]),
    )
    target = await create(
        "migration_targets", "create_migration_target",
        models.MigrationTarget(cloud_type=models.MigrationTargetCloudType.AWS, cloud_credentials=credentials.id),
    )
    assert target.target_vm is None
    migration = await create(
        "migrations", "create_migration",
        models.Migration(source=workload.id, migration_target=target.id, selected_mount_points=[volume.id]),
    )
    assert migration.state == models.MigrationState.NOT_STARTED

    started = await api("migrations", "run_migration").asyncio_detailed(client=client, id=migration.id)
    assert started.status_code == 202, started.content
    assert isinstance(started.parsed, models.Migration)
    for _ in range(200):
        progress = await api("migrations", "get_migration_state").asyncio(client=client, id=migration.id)
        assert isinstance(progress, models.MigrationRunState), progress
        if progress.finished:
            break
        await asyncio.sleep(0.05)
    assert (progress.state.value, progress.progress, progress.finished) == ("success", 100, True)
    assert (progress.bytes_copied, progress.bytes_total) == (1024, 1024)
    assert [(v.name, v.copied) for v in progress.volumes] == [("C:\\", 1024)]

    finished = await api("migration_targets", "get_migration_target").asyncio(client=client, id=target.id)
    assert isinstance(finished.target_vm, models.TargetVm)
    assert finished.target_vm.ip == "192.0.2.10"
    assert [(v.name, v.size) for v in finished.target_vm.storage] == [("C:\\", 1024)]
    # What the generated models send back is what the service answers.
    listed = await api("migrations", "list_migration").asyncio(client=client)
    assert json.loads(json.dumps(listed.to_dict()))["results"][0]["state"] == "success"
    await client.get_async_httpx_client().aclose()
    await anonymous.get_async_httpx_client().aclose()
