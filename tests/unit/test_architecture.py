"""The core depends on nothing but the standard library and attrs (README: the
three layers)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import migration_core

CORE = Path(migration_core.__file__).parent
ALLOWED = set(sys.stdlib_module_names) | {"attrs", "__future__", "migration_core"}


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level module) for every import; relative imports count as the core."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = "migration_core" if node.level else (node.module or "").split(".")[0]
            found.append((node.lineno, module))
    return found


def forbidden_imports(source: str) -> list[tuple[int, str]]:
    return [(line, name) for line, name in imported_modules(ast.parse(source)) if name not in ALLOWED]


def test_the_core_imports_only_the_standard_library_attrs_and_itself() -> None:
    modules = sorted(CORE.rglob("*.py"))
    assert len(modules) >= 5, f"the core's modules were not found under {CORE}"
    offenders = {
        str(path.relative_to(CORE)): bad
        for path in modules
        if (bad := forbidden_imports(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}


@pytest.mark.parametrize(
    "source",
    [
        "import aiohttp",
        "import sqlite_utils.db",
        "from adapters.memory import MemoryStorage",
        "from entrypoints import bootstrap",
        "import json, cattrs",
        "def later():\n    from jwt import encode",
        "try:\n    import marshmallow\nexcept ImportError:\n    pass",
    ],
)
def test_the_check_sees_every_kind_of_forbidden_import(source: str) -> None:
    assert forbidden_imports(source)


@pytest.mark.parametrize(
    "source",
    [
        "import ipaddress, enum",
        "from collections.abc import Mapping",
        "import attrs",
        "from . import entities",
        "from .errors import Conflict",
        "from __future__ import annotations",
        "import migration_core.entities",
    ],
)
def test_the_check_allows_the_standard_library_attrs_and_the_core(source: str) -> None:
    assert forbidden_imports(source) == []
