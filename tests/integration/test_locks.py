"""The locks (requirements.txt, requirements-test.txt: `make lock`) satisfy
pyproject.toml's ranges: what `make run` and `make test` install is what the
project says it needs, exactly and with hashes, and both locks agree on the
runtime's versions."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = ROOT / "requirements.txt"
TEST_LOCK = ROOT / "requirements-test.txt"
# A pin, its markers after `;`, then its hashes on the lines that follow.
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)[^\n]*((?:\n\s+--hash=sha256:[0-9a-f]{64}[^\n]*)*)", re.M)


def pins(text: str) -> dict[str, str]:
    """Each locked package's version; AssertionError for a pin without a hash."""
    found = {}
    for name, version, hashes in _PIN.findall(text):
        assert hashes, f"{name}=={version} is locked without a hash"
        found[canonicalize_name(name)] = version
    return found


def unmet(requirements: list[str], locked: dict[str, str]) -> list[str]:
    """The requirements (PEP 508 strings) a lock leaves out or pins outside their range."""
    problems = []
    for text in requirements:
        wanted = Requirement(text)
        name = canonicalize_name(wanted.name)
        if name not in locked:
            problems.append(f"{wanted.name} is not in the lock")
        elif not wanted.specifier.contains(locked[name], prereleases=True):
            problems.append(f"{wanted.name}=={locked[name]} is outside {wanted.specifier}")
    return problems


def _project() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    return {"runtime": project["dependencies"], "test": project["dependencies"] + extras["dev"] + extras["bench"]}


def test_the_runtime_lock_satisfies_the_projects_dependencies_and_holds_no_test_kit() -> None:
    locked = pins(RUNTIME_LOCK.read_text())
    wanted = _project()
    assert unmet(wanted["runtime"], locked) == []
    test_kit = {canonicalize_name(Requirement(text).name) for text in wanted["test"][len(wanted["runtime"]):]}
    assert test_kit & locked.keys() == set()


def test_the_test_lock_satisfies_the_test_kit_and_keeps_the_runtimes_versions() -> None:
    runtime, test = pins(RUNTIME_LOCK.read_text()), pins(TEST_LOCK.read_text())
    assert unmet(_project()["test"], test) == []
    assert {name: test.get(name) for name in runtime} == runtime


def test_every_lock_says_how_it_is_made() -> None:
    for lock in (RUNTIME_LOCK, TEST_LOCK):
        assert "#    make lock\n" in lock.read_text(), f"{lock.name}: write it with make lock"


def test_a_lock_that_drifted_from_the_ranges_is_named() -> None:
    lock = "aiohttp==3.9.0 \\\n    --hash=sha256:" + "0" * 64 + "\n"
    assert pins(lock) == {"aiohttp": "3.9.0"}
    assert unmet(["aiohttp>=3.10,<4", "attrs>=23.1"], pins(lock)) == [
        "aiohttp==3.9.0 is outside <4,>=3.10",
        "attrs is not in the lock",
    ]
    unhashed = "aiohttp==3.9.0\nattrs==25.1.0 \\\n    --hash=sha256:" + "1" * 64 + "\n"
    try:
        pins(unhashed)
    except AssertionError as refused:
        assert "aiohttp==3.9.0 is locked without a hash" in str(refused)
    else:
        raise AssertionError("a pin without a hash passed")
