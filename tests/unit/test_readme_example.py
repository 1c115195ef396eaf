"""The README's embedding example runs exactly as printed and prints what its
`# -> ...` comments say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import migration_core as core

README = Path(__file__).resolve().parents[2] / "README.md"
HEADING = "## Embedding the core in Python"


def embedding_section() -> str:
    text = README.read_text(encoding="utf-8")
    assert HEADING in text, f"{README} has no {HEADING!r} section"
    return text.split(HEADING, 1)[1].split("\n## ", 1)[0]


def embedding_example() -> str:
    section = embedding_section()
    blocks = re.findall(r"^```python\n(.*?)^```", section, flags=re.DOTALL | re.MULTILINE)
    assert len(blocks) == 1, "the section holds one python example"
    return str(blocks[0])


def promised_output(code: str) -> list[str]:
    """The lines the example's `# -> ...` comments say it prints, in order."""
    return re.findall(r"#\s*->\s*(.*?)\s*$", code, flags=re.MULTILINE)


def test_the_readme_embedding_example_runs_as_printed() -> None:
    code = embedding_example()
    printed = io.StringIO()
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    with contextlib.redirect_stdout(printed):
        exec(compile(code, f"{README}:{HEADING}", "exec"), namespace)

    expected = promised_output(code)
    assert len(expected) >= 3, "the example says what it prints"
    assert printed.getvalue().splitlines() == expected

    # The state behind the output: a succeeded migration and a target VM holding
    # only the selected volumes, in the source's order.
    storage, owner = namespace["storage"], namespace["owner"]
    migration = core.get_migration(storage, owner, namespace["migration"].id)
    assert (migration.state, migration.progress) == (core.MigrationState.SUCCESS, 100)
    vm = core.get_migration_target(storage, owner, namespace["target"].id).target_vm
    assert vm is not None
    source = core.get_workload(storage, owner, namespace["source"].id)
    by_id = {mp.id: mp for mp in core.list_mount_points(storage, owner, core.ListQuery()).items}
    in_order = [by_id[i] for i in source.mount_point_ids]
    selected = set(migration.selected_mount_point_ids)
    assert [(v.name, v.size) for v in vm.storage] == [
        (mp.name, mp.size) for mp in in_order if mp.id in selected
    ]


def listed_api() -> list[str]:
    """The names the section's list of the API gives, in order."""
    section = embedding_section()
    assert "The API: `migration_core` exports these names" in section, "the section lists the API"
    listing = section.split("The API: `migration_core` exports these names", 1)[1].split("\n\n")[1]
    lines = listing.splitlines()
    assert lines and all(line.startswith("- ") for line in lines), "the API is one list, a line a group"
    return [name for line in lines for name in re.findall(r"`(\w+)`", line.split(":", 1)[1])]


def test_the_readme_lists_exactly_what_the_core_exports() -> None:
    listed = listed_api()
    assert len(listed) == len(set(listed)), "each name is listed once"
    assert sorted(listed) == sorted(core.__all__)
    assert all(hasattr(core, name) for name in core.__all__)
