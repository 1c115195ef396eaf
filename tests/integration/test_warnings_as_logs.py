"""Warnings are log lines (issue: a fresh install printed asyncssh's
deprecations straight to standard error, so a JSON log was no longer JSON):
the service's handler carries Python's warnings in the chosen format, a
third party's import-time deprecation is one debug line, and a chatty
library's INFO lines are debug lines."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from adapters.ssh_library import deprecations_at_debug
from entrypoints.logs import log_handler, requested_format


def _python(code: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *options, "-c", code], capture_output=True, text=True, timeout=60)


def test_an_imports_deprecations_are_one_debug_line_each_and_other_warnings_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger="tests.deprecations")
    (tmp_path / "noisy_library.py").write_text(textwrap.dedent("""
        import warnings

        class LibraryDeprecationWarning(UserWarning):  # as cryptography names its own
            pass

        for _ in range(3):
            warnings.warn("old keys are deprecated", LibraryDeprecationWarning)
        warnings.warn("an old call", DeprecationWarning)
        warnings.warn("the disk is nearly full", UserWarning)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))

    with warnings.catch_warnings(record=True) as passed_on:
        warnings.simplefilter("always")
        with deprecations_at_debug("noisy_library's import", logging.getLogger("tests.deprecations")):
            import noisy_library  # noqa: F401

    assert [str(w.message) for w in passed_on] == ["the disk is nearly full"]
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "noisy_library's import: old keys are deprecated"),
        (logging.DEBUG, "noisy_library's import: an old call"),
    ]


def test_the_ssh_driver_imports_without_a_word_even_when_every_warning_is_shown() -> None:
    imported = _python("import adapters.ssh, adapters.ssh_session, adapters.ssh_copy", "-W", "always")
    assert (imported.returncode, imported.stdout, imported.stderr) == (0, "", "")


def test_a_warning_after_logging_is_configured_is_a_log_line_in_its_format() -> None:
    warned = _python(
        "import warnings; from entrypoints import logs; logs.configure('json');"
        " warnings.warn('the disk is nearly full', UserWarning)"
    )
    (line,) = warned.stderr.splitlines()
    record = json.loads(line)
    assert (record["level"], record["logger"]) == ("WARNING", "py.warnings")
    assert "UserWarning: the disk is nearly full" in record["message"]


def test_the_command_line_logs_in_the_format_asked_for_before_its_imports(tmp_path: Path) -> None:
    """`migration-api` logs a warning raised while the service's modules are
    imported as JSON already (here a finder warns as `entrypoints.cli` loads)."""
    script = tmp_path / "warn_on_import.py"
    script.write_text(textwrap.dedent("""
        import sys, warnings

        class WarnOnImport:
            def find_spec(self, name, path=None, target=None):
                if name == "entrypoints.cli":
                    warnings.warn("imported while deprecated", UserWarning)
                return None

        sys.meta_path.insert(0, WarnOnImport())
        sys.argv = ["migration-api", "serve", "--log-format", "json", "--port", "nope"]
        from entrypoints.command import main
        raise SystemExit(main())
    """))
    ran = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    warning, *_, complaint = [json.loads(line) for line in ran.stderr.splitlines()]  # every line JSON
    assert warning["logger"] == "py.warnings" and "imported while deprecated" in warning["message"]
    # The bad setting, said after, in JSON too.
    assert ran.returncode == 2 and complaint["level"] == "ERROR" and "--port" in complaint["message"]


@pytest.mark.parametrize(
    ("argv", "environ", "chosen"),
    [
        ([], {}, "text"),
        (["serve"], {"MIGRATION_LOG_FORMAT": "JSON"}, "json"),
        (["serve", "--log-format", "json"], {"MIGRATION_LOG_FORMAT": "text"}, "json"),
        (["serve", "--log-format=text"], {"MIGRATION_LOG_FORMAT": "json"}, "text"),
        (["serve", "--log-format", "xml"], {}, "text"),  # the settings refuse it in words later
        (["serve", "--log-format"], {"MIGRATION_LOG_FORMAT": "json"}, "json"),
    ],
)
def test_the_format_is_read_from_the_flag_then_the_variable(
    argv: list[str], environ: dict[str, str], chosen: str
) -> None:
    assert requested_format(argv, environ) == chosen


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_asyncssh_info_lines_are_debug_lines(log_format: str) -> None:
    """Also behind another of the service's handlers, whose filter sees each record first."""
    root = logging.getLogger()
    stream = io.StringIO()
    handler = log_handler(log_format)
    handler.setStream(stream)
    before = log_handler(log_format)
    before.setStream(io.StringIO())
    saved = root.level
    root.addHandler(before)
    root.addHandler(handler)
    try:
        root.setLevel(logging.INFO)
        logging.getLogger("asyncssh").info("Opened channel")
        logging.getLogger("asyncssh.sftp").info("Starting SFTP client")
        logging.getLogger("asyncssh").warning("Connection lost")
        logging.getLogger("adapters.ssh").info("check of root@127.0.0.1 port 22: logged in")
        at_info = stream.getvalue()
        root.setLevel(logging.DEBUG)
        logging.getLogger("asyncssh").info("Opened channel again")
        at_debug = stream.getvalue()[len(at_info):]
    finally:
        root.removeHandler(before)
        root.removeHandler(handler)
        root.setLevel(saved)
    assert "Opened channel" not in at_info and "SFTP" not in at_info
    assert "Connection lost" in at_info and "check of root@127.0.0.1" in at_info
    assert "Opened channel again" in at_debug and "DEBUG" in at_debug
