"""A client that nobody here wrote works from the OpenAPI document: the
openapi-python-client generator reads schema.yaml, makes a function for every
operation, and the generated package carries a short scenario against a real
server on a loopback port (register, token, an inventory imported from a CSV
file, a migration, its run and its state).

It does so twice: with no configuration at all, as a newcomer runs it, and
with no formatting and every warning an error. Neither has a remark: the
document lists the media types generators know (the import's is a form with a
`file` part; its description says the body may be `text/csv` itself)."""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import os
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
SAMPLE = (ROOT / "examples" / "inventory.csv").read_bytes()
PACKAGE = "generated_migration_client"
GENERATOR = Path(sys.executable).with_name("openapi-python-client")
# How the generator is configured: not at all (its default post hooks run ruff,
# found beside the generator), or with no formatting and --fail-on-warning.
CONFIGURATIONS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "strict": {"post_hooks": []},
}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


Generated = tuple[Path, str, str]


@pytest.fixture(scope="module", params=list(CONFIGURATIONS))
def generated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generated]:
    """The package generated from schema.yaml, importable; what the generator
    printed; and how it was configured."""
    configuration: str = request.param
    directory = tmp_path_factory.mktemp("client")
    package = f"{PACKAGE}_{configuration}"
    command = [str(GENERATOR), "generate", "--path", str(ROOT / "schema.yaml"), "--output-path",
               str(directory / package), "--meta", "none"]
    settings = CONFIGURATIONS[configuration]
    if settings is not None:
        config = directory / "config.yaml"
        config.write_text(yaml.safe_dump(settings), encoding="utf-8")
        command += ["--config", str(config), "--fail-on-warning"]
    path = os.pathsep.join([str(GENERATOR.parent), os.environ.get("PATH", "")])
    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, env={**os.environ, "PATH": path}
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output
    sys.path.insert(0, str(directory))
    try:
        yield directory / package, output, configuration
    finally:
        sys.path.remove(str(directory))
        for name in [name for name in sys.modules if name.split(".")[0] == package]:
            del sys.modules[name]


def test_the_generator_has_no_remark_with_or_without_a_configuration(generated: Generated) -> None:
    _package, output, _configuration = generated
    lowered = output.lower()
    assert "warning" not in lowered and "unsupported" not in lowered, output
    assert "error" not in lowered and "unable to" not in lowered, output


def test_every_operation_of_the_document_is_generated(generated: Generated) -> None:
    package, _output, _configuration = generated
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


async def test_a_scenario_runs_through_the_generated_client(generated: Generated, aiohttp_server: Any) -> None:
    server = await aiohttp_server(make_app(run_seconds=0))
    base_url = f"http://127.0.0.1:{server.port}"
    package = generated[0].name

    def _module(name: str) -> ModuleType:
        return importlib.import_module(f"{package}.{name}")

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

    # The sample inventory, as the file of a form: checked, then imported.
    def sample() -> Any:
        file = _module("types").File(payload=io.BytesIO(SAMPLE), file_name="inventory.csv", mime_type="text/csv")
        return models.ImportInventoryBody(file=file)

    importing = api("inventory", "import_inventory")
    checked = await importing.asyncio(client=client, body=sample(), dry_run=True)
    assert isinstance(checked, models.ImportReport), checked
    assert (checked.created, checked.updated, checked.unchanged) == (12, 0, 0)
    imported = await importing.asyncio(client=client, body=sample())
    assert (imported.created, imported.updated, imported.unchanged) == (12, 0, 0)
    workloads = await api("workloads", "list_workload").asyncio(client=client, limit=1000)
    assert workloads.count == 13

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
