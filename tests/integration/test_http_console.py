"""SPEC 5 and 3.6, as the service serves them: the console's shell and files
with their security and caching headers, the files shipped as package data,
and the index of links at /api/v1/. The console itself is tested in a real
browser under tests/browser/."""

from __future__ import annotations

import re
import shutil
import tomllib
from fnmatch import fnmatch
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from entrypoints import package_version
from entrypoints.http.console import PACKAGE, load_console

from .http_client import make_app

ROOT = Path(__file__).resolve().parents[2]
CONSOLE_DIR = ROOT / "src" / "entrypoints" / "console"


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient[Any, Any]:
    return await aiohttp_client(make_app())


def _console_files() -> list[Path]:
    return sorted(
        path
        for path in CONSOLE_DIR.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".py"
    )


def _assert_secure(headers: Any) -> None:
    policy = headers["Content-Security-Policy"]
    directives = {part.split()[0]: part.split()[1:] for part in policy.split("; ")}
    for name in ("default-src", "script-src", "style-src", "connect-src"):
        assert directives[name] == ["'self'"], name
    assert directives["frame-ancestors"] == ["'none'"]
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"


async def test_the_shell_is_revalidated_on_every_load_and_sends_the_policy(client: TestClient[Any, Any]) -> None:
    answer = await client.get("/")
    assert answer.status == 200
    assert answer.content_type == "text/html"
    _assert_secure(answer.headers)
    assert answer.headers["Cache-Control"] == "no-cache"
    again = await client.get("/", headers={"If-None-Match": answer.headers["ETag"]})
    assert again.status == 304
    _assert_secure(again.headers)


async def test_the_shell_has_no_inline_script_or_style(client: TestClient[Any, Any]) -> None:
    page = await (await client.get("/")).text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page), "a script without src is inline"
    assert "<style" not in page and " style=" not in page
    assert not re.search(r"\son[a-z]+=", page), "an event handler attribute is inline script"


async def test_every_file_the_shell_and_its_modules_load_is_served_for_a_year(client: TestClient[Any, Any]) -> None:
    page = await (await client.get("/")).text()
    queue = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    assert {url.rsplit("/", 1)[-1] for url in queue} >= {"app.js", "console.css"}
    seen: set[str] = set()
    while queue:
        url = queue.pop()
        if url in seen:
            continue
        seen.add(url)
        answer = await client.get(url)
        assert answer.status == 200, url
        _assert_secure(answer.headers)
        assert answer.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert (await client.get(url, headers={"If-None-Match": answer.headers["ETag"]})).status == 304
        if url.endswith(".js"):
            assert answer.content_type == "text/javascript", url
            body = await answer.text()
            base = url.rsplit("/", 1)[0]
            for module in re.findall(r'^import .* from "(\.{1,2}/[^"]+)";$', body, re.MULTILINE):
                queue.append(str(Path(base, module).resolve()) if module.startswith("..") else f"{base}/{module[2:]}")
    served = {url.split("/", 3)[3] for url in seen}
    # Every shipped file is reachable from the shell: nothing is dead, nothing is missing.
    assert served == {
        str(path.relative_to(CONSOLE_DIR / "static")) for path in _console_files() if "static" in path.parts
    }


async def test_another_release_or_an_unknown_file_is_a_json_404(client: TestClient[Any, Any]) -> None:
    page = await (await client.get("/")).text()
    current = re.search(r"/static/([0-9a-f]+)/app\.js", page)
    assert current
    for url in (
        "/static/0000000000000000/app.js",
        f"/static/{current[1]}/nothing.js",
        f"/static/{current[1]}/../console.py",
    ):
        answer = await client.get(url)
        assert answer.status == 404, url
        assert (await answer.json())["detail"]


def test_a_changed_file_changes_every_url_of_the_release(tmp_path: Path) -> None:
    copy = tmp_path / "console"
    shutil.copytree(CONSOLE_DIR, copy)
    before = load_console(copy)
    (copy / "static" / "dom.js").write_text("// changed\n", encoding="utf-8")
    after = load_console(copy)
    assert before.digest != after.digest
    assert f"/static/{after.digest}/app.js".encode() in after.shell.body
    assert before.assets["app.js"].etag == after.assets["app.js"].etag  # unchanged file, same ETag


async def test_the_api_index_links_what_a_newcomer_needs_without_a_token(client: TestClient[Any, Any]) -> None:
    for path in ("/api/v1/", "/api/v1"):
        answer = await client.get(path)
        assert answer.status == 200, path
        assert await answer.json() == {
            "version": package_version(),
            "console": "/",
            "swagger_ui": "/swagger/",
            "openapi": "/api/v1/openapi.json",
            "health": "/health",
            "metrics": "/metrics",
        }
    for link in ("/", "/swagger/", "/api/v1/openapi.json", "/health", "/metrics"):
        assert (await client.get(link)).status == 200, link


def test_every_console_file_ships_as_package_data() -> None:
    shipped = files(PACKAGE)
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"
    ][PACKAGE]
    found = _console_files()
    assert any(path.name == "index.html" for path in found) and any(path.name == "app.js" for path in found)
    for path in found:
        relative = str(path.relative_to(CONSOLE_DIR))
        assert any(fnmatch(relative, pattern) and relative.count("/") == pattern.count("/") for pattern in declared), (
            relative
        )
        assert shipped.joinpath(*relative.split("/")).read_bytes() == path.read_bytes(), relative


def test_no_console_file_builds_html_from_strings_or_loads_anything_from_elsewhere() -> None:
    forbidden = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function\(")
    for path in _console_files():
        text = path.read_text(encoding="utf-8").replace('"http://www.w3.org/2000/svg"', "")
        assert not forbidden.search(text), path
        assert not re.search(r"https?://", text), f"{path}: the console loads nothing from another origin"
