"""Imports at once on one SQLite file, each through its own storage (as two
processes would be): both succeed or one is refused, never a duplicate ip,
never half an import; and the command line's import and export."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

import migration_core as core
from adapters.clock import SystemClock
from adapters.passwords import ScryptHasher
from adapters.sqlite import SqliteStorage
from entrypoints import cli
from entrypoints.inventory_csv import import_csv

CLOCK = SystemClock()

SECRET = b"fleet-suite-secret-key-32-bytes!!"
HEADER = "ip,username,password,volumes,cloud_type,cloud_username,cloud_password,wave\n"
ROOT = Path(__file__).resolve().parents[2]


def inventory(first: int, last: int, *, bad_row: int | None = None) -> bytes:
    lines = [
        f"10.2.{i // 256}.{i % 256},{'' if i == bad_row else 'u'},p,C:\\=1;D:\\=2,aws,k,s,wave {i % 3}\n"
        for i in range(first, last)
    ]
    return (HEADER + "".join(lines)).encode()


@pytest.mark.parametrize("repeat", range(3))
def test_overlapping_imports_in_two_storages_at_once(tmp_path: Path, repeat: int) -> None:
    path = tmp_path / "fleet.db"
    setup = SqliteStorage(path, SECRET)
    owner = core.register_user(setup, ScryptHasher(n=2**4), "alice", "a long password").id
    setup.close()
    files = {
        "a": inventory(0, 300),
        "b": inventory(150, 450),
        "c": inventory(400, 500, bad_row=450),  # refused whole
    }
    outcomes: dict[str, object] = {}
    start = threading.Barrier(len(files))

    def run(name: str) -> None:
        storage = SqliteStorage(path, SECRET)
        try:
            start.wait()
            outcomes[name] = import_csv(storage, CLOCK, owner, files[name])
        except core.RowsRefused as refused:
            outcomes[name] = refused
        finally:
            storage.close()

    threads = [threading.Thread(target=run, args=(name,)) for name in files]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert isinstance(outcomes["c"], core.RowsRefused)
    assert [error.row for error in outcomes["c"].rows] == [52]  # 450 is the 51st row after the header
    assert all(isinstance(outcomes[name], core.ImportReport) for name in "ab")
    db = sqlite3.connect(path)
    ips = [row[0] for row in db.execute("SELECT ip FROM workloads")]
    assert len(ips) == len(set(ips)) == 450
    assert db.execute("SELECT count(*) FROM migrations").fetchone()[0] == 450
    members = db.execute("SELECT count(*), count(DISTINCT migration_id) FROM wave_migrations").fetchone()
    assert members == (450, 450)
    assert db.execute("SELECT count(*) FROM waves").fetchone()[0] == 3
    db.close()


# --- the command line ------------------------------------------------------------------


@pytest.fixture
def configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "data" / "migration.db"
    monkeypatch.setenv("MIGRATION_STORAGE", f"sqlite:///{path}")
    monkeypatch.setenv("MIGRATION_SECRET_KEY", "s" * 32)
    from entrypoints.bootstrap import Settings, configured_storage

    storage = configured_storage(Settings(storage=f"sqlite:///{path}", secret_key="s" * 32))
    core.register_user(storage, ScryptHasher(n=2**4), "alice", "a long password")
    storage.close()
    return path


def test_the_command_line_imports_the_sample_and_exports_it(
    configured: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = str(ROOT / "examples" / "inventory.csv")
    assert cli.main(["import", sample, "--user", "alice", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out) == {"created": 12, "updated": 0, "unchanged": 0}
    assert cli.main(["import", sample, "--user", "alice"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"created": 12, "updated": 0, "unchanged": 0}
    assert captured.err == ""  # no progress bar when stderr is no terminal

    assert cli.main(["export", "--user", "alice"]) == 0
    exported = capsys.readouterr().out
    assert exported.startswith("ip,username,password,domain,volumes,")
    assert exported.count("\n") == 13
    out = tmp_path / "out.csv"
    assert cli.main(["export", "--user", "alice", "--output", str(out)]) == 0
    assert out.read_bytes().decode("utf-8") == exported
    assert cli.main(["import", str(out), "--user", "alice"]) == 0
    assert json.loads(capsys.readouterr().out) == {"created": 0, "updated": 0, "unchanged": 12}


def test_the_command_line_reports_bad_rows_and_exits_1(
    configured: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_bytes(inventory(0, 3, bad_row=1))
    assert cli.main(["import", str(bad), "--user", "alice"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["rows"] == [
        {"row": 3, "field": "username", "message": "Must be a non-empty string."}
    ]
    assert "import refused" in captured.err
    assert cli.main(["import", str(tmp_path / "missing.csv"), "--user", "alice"]) == 2
    assert cli.main(["import", str(bad), "--user", "nobody"]) == 2
    assert "no user 'nobody'" in capsys.readouterr().err
    assert cli.main(["export", "--user", "alice"]) == 0
    assert capsys.readouterr().out.count("\n") == 1  # the header alone: nothing was written


def test_the_progress_bar_shows_only_on_a_terminal() -> None:
    class Terminal:
        def __init__(self, tty: bool) -> None:
            self.tty, self.text = tty, ""

        def isatty(self) -> bool:
            return self.tty

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None:
            pass

    for tty in (True, False):
        terminal = Terminal(tty)
        bar = cli.ProgressBar(terminal)  # type: ignore[arg-type]
        for done in range(1, 101):
            bar(done, 100)
        if tty:
            assert terminal.text.endswith("[" + "#" * 30 + "] 100/100 rows\n")
            assert terminal.text.count("\r") == 31  # redrawn when it grows, not every row
        else:
            assert terminal.text == ""
