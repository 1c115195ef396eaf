"""One version, pyproject.toml's: `migration-api --version` prints it, and the
OpenAPI document (so schema.yaml too) and the index at /api/v1/ state it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from entrypoints.cli import main
from entrypoints.http.console import api_index_links
from entrypoints.http.schema_file import served_document

ROOT = Path(__file__).resolve().parents[2]


def test_the_command_line_and_the_openapi_document_show_the_version_of_pyproject(
    capsys: pytest.CaptureFixture[str],
) -> None:
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"migration-api {expected}\n"
    assert served_document()["info"]["version"] == expected
    assert api_index_links()["version"] == expected


def test_the_changelogs_newest_release_is_pyprojects_version_and_nothing_is_dated_twice() -> None:
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert releases and releases[0][0] == expected, "cut the release: a dated CHANGELOG section for the version"
    assert len({version for version, _ in releases}) == len(releases)
