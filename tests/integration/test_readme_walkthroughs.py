"""The README's walk-throughs run as printed, and answer what their comments show.

Which blocks: in the sections named in SECTIONS, every ```sh block follows a
marker line, `<!-- walkthrough -->` (the test runs it) or `<!-- walkthrough:
not run, <why> -->` (commands for another terminal or for the reader's own
setup: starting the service, sshd, a key). Each section's blocks that run go,
in order, to one bash process (`set -euo pipefail`); the sections run in
README order against one fresh service on an SQLite file (`make run`'s
./data/migration.db), each starting with the variables the one before left,
in one working directory that stands for the repository's folder
(`examples/` and `.venv/bin/migration-api` are there).

Substituted, and nothing else: the service's port for 8080, the test sshd's
port for `"port": 22` in the sections that log in to machines, and a
temporary directory for /tmp/migration-demo. HOME is a temporary directory
whose ~/.ssh/id_ed25519 is a key the test sshd lets in. The service's runs
take RUN_SECONDS: the README's loops wait on conditions, not on time.

Pass or fail, command by command (a command runs up to a `#` comment line
right under it, and that comment, up to the next line of code or a blank
line, is its output):
- bash must exit 0 within PATIENCE: a command that fails fails the test;
- curl is wrapped to report each HTTP status: a 4xx fails the test unless
  the output comment shows an error answer (an object with "detail"), and a
  5xx always does;
- each JSON value the comment shows must be found, in order, among the
  command's output values (one output may stand for several shown, as a
  watch loop prints as many lines as the run takes); each other comment line
  must be an output line. An object shown without `...` must have exactly
  the keys shown; with `...`, at least them; `"key": ...` is any value. A
  list must have the items shown, or at least them when it ends in `...`.
  Values are compared literally, but for those that change from run to run
  or machine to machine: times, instance ids and host keys (VARYING); what a
  check or a discovery reads of the machine (in an answer holding "ok", only
  MACHINE_FACTS are compared); and a copy's progress and bytes (MOVING),
  compared only in an answer that shows progress 100, when all is copied.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from ..sshd_server import SshServer
from .service_process import ServiceProcess

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLES = README.parent / "examples"
SECTIONS = [
    "## The API at a glance",
    "## Real machines",
    "### A real migration",
    "## Running a migration",
    "### The history of a migration",
    "### The live stream",
    "## Fleets: import, waves, export",
    "## A warm migration",
    "## Readiness before a wave",
]
# Where port 22 is the test sshd's.
SSH_SECTIONS = {"## Real machines", "### A real migration", "## A warm migration", "## Readiness before a wave"}
DEMO = "/tmp/migration-demo"
RUN_SECONDS = 4  # long enough to watch and cancel a run before it ends
PATIENCE = 120  # seconds a section may take: a bound, never an expectation
TOOLS = ("bash", "curl", "jq")

RUNS = "<!-- walkthrough -->"
NOT_RUN = re.compile(r"<!-- walkthrough: not run, .+ -->")
MARK = "@@command "
STATUS = re.compile(r"^(\d+) (\d{3}) (\S+) (\S*)$", flags=re.MULTILINE)
# Each curl reports its status, and the command it ran in, to a file: on the
# output, a report could land inside another process's answer.
PRELUDE = r"""set -euo pipefail
curl() { command curl -w "%{stderr}$__COMMAND %{http_code} %{method} %{url_effective}\n" "$@" 2>>"$__HTTP"; }
__known=" $(compgen -v | tr '\n' ' ') "
if [ -s "$__PREVIOUS" ]; then source "$__PREVIOUS"; fi
"""
# The variables the README's commands set (theirs are in capitals), for the next section.
EPILOGUE = r"""
for __name in $(compgen -v); do
  if [[ $__known != *" $__name "* && $__name =~ ^[A-Z][A-Z0-9_]*$ && $__name != BASH* ]]; then
    declare -p "$__name"
  fi
done > "$__STATE"
"""

VARYING = {"at", "started_at", "finished_at", "eta", "instance", "host_key", "hostname", "kernel"}
MOVING = {"progress", "bytes_copied", "copied"}
MACHINE_FACTS = {"ok", "os", "tools"}
MORE = "\0more"  # `...` among an object's keys or a list's items
ANY = "\0any"  # `...` as a value


@attrs.frozen
class Text:
    """A line of output that is not JSON, whitespace runs made one space."""

    line: str

    @classmethod
    def of(cls, line: str) -> Text:
        return cls(" ".join(line.split()))


@attrs.frozen
class Command:
    code: str
    shown: list[Any]  # JSON values and Text lines


@attrs.frozen
class Ran:
    """What a section's bash printed for each command, and the HTTP statuses
    (status, method, url) each one's curls met."""

    outputs: dict[int, str]
    statuses: dict[int, list[tuple[str, str, str]]]
    failure: str  # empty when bash exited 0 in time
    curl_log: str


def section_texts(readme: str) -> dict[str, str]:
    """Each of SECTIONS' text, from its heading to the next heading of any level."""
    found = {}
    for heading in SECTIONS:
        assert f"\n{heading}\n" in readme, f"README.md has no {heading!r} section"
        rest = readme.split(f"\n{heading}\n", 1)[1]
        found[heading] = re.split(r"^#{2,3} ", rest, maxsplit=1, flags=re.MULTILINE)[0]
    return found


def run_blocks(section: str, heading: str) -> list[str]:
    """The section's ```sh blocks that run; every one must be marked either way."""
    blocks = []
    for match in re.finditer(r"^([^\n]*)\n```sh\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL):
        marker, block = match.group(1).strip(), match.group(2)
        if marker == RUNS:
            blocks.append(block)
        elif not NOT_RUN.fullmatch(marker):
            raise AssertionError(f"{heading}: a sh block follows no walkthrough marker:\n{block}")
    return blocks


def _line_end(text: str, i: int) -> int:
    end = text.find("\n", i)
    return len(text) if end < 0 else end


def _comment(line: str) -> str | None:
    stripped = line.lstrip()
    return stripped[1:].removeprefix(" ") if stripped.startswith("#") else None


def commands(block: str) -> list[Command]:
    """The block cut after each command whose output a comment shows."""
    found: list[Command] = []
    code: list[str] = []
    shown: list[str] | None = None
    for line in block.splitlines():
        comment = _comment(line)
        if shown is not None and comment is not None:
            shown.append(comment)
            continue
        if shown is not None:
            found.append(Command("\n".join(code), parse_shown("\n".join(shown))))
            code, shown = [], None
        if comment is not None and code and code[-1].strip() and _comment(code[-1]) is None:
            shown = [comment]  # right under a line of code: that command's output
        else:
            code.append(line)
    found.append(Command("\n".join(code), parse_shown("\n".join(shown or []))))
    return found


def _shown_value(text: str, start: int) -> tuple[Any, int]:
    """The JSON value a comment shows from `start`, its `...`s made MORE or
    ANY; and where it ends."""
    out: list[str] = []
    open_brackets: list[str] = []
    i = start
    while True:
        char = text[i]
        if char == '"':
            end = i + 1
            while text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            out.append(text[i : end + 1])
            i = end + 1
        elif text.startswith("...", i):
            if "".join(out).rstrip().endswith(":"):
                out.append(json.dumps(ANY))
            elif open_brackets[-1] == "{":
                out.append(f"{json.dumps(MORE)}: true")
            else:
                out.append(json.dumps(MORE))
            i += 3
        else:
            if char in "{[":
                open_brackets.append(char)
            elif char in "}]":
                open_brackets.pop()
            out.append(char)
            i += 1
        if not open_brackets:
            return json.loads("".join(out)), i


def parse_shown(comment: str) -> list[Any]:
    """An output comment: JSON values (what follows one on its last line is a
    remark) and Text lines."""
    shown: list[Any] = []
    i = 0
    while i < len(comment):
        line_end = _line_end(comment, i)
        line = comment[i:line_end].strip()
        if line[:1] in ("{", "[", '"'):
            try:
                value, end = _shown_value(comment, comment.index(line[0], i))
            except (ValueError, IndexError) as e:
                raise AssertionError(f"a README comment is not JSON ({e}):\n{comment}") from e
            shown.append(value)
            i = _line_end(comment, end) + 1
        else:
            if line:
                shown.append(Text.of(line))
            i = line_end + 1
    return shown


def parse_output(text: str) -> list[Any]:
    """A command's output: JSON values (several may share a line, as curl ends
    no answer with a newline) and Text lines."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        values, j = [], i
        try:
            while j < len(text) and text[j] != "\n":
                value, j = decoder.raw_decode(text, j)
                values.append(value)
                while j < len(text) and text[j] in " \t":
                    j += 1
        except json.JSONDecodeError:
            values = []
        if values:
            found += values
            i = j
        else:
            end = _line_end(text, i)
            found.append(Text.of(text[i:end]))
            i = end
    return found


def mismatch(shown: Any, got: Any, where: str = "the answer", final: bool = False, facts: bool = False) -> str | None:
    """Why `got` is not what `shown` shows, or None."""
    if shown == ANY:
        return None
    if isinstance(shown, dict):
        if not isinstance(got, dict):
            return f"{where}: {got!r} is not an object"
        keys = set(shown) - {MORE}
        missing, extra = keys - set(got), set(got) - keys
        if missing or (extra and MORE not in shown):
            return f"{where}: keys {sorted(missing)} missing, {sorted(extra)} not shown"
        if "progress" in shown:
            final = shown["progress"] == 100
        facts = facts or "ok" in shown
        for key in sorted(keys):
            if key in VARYING or (key in MOVING and not final) or (facts and key not in MACHINE_FACTS):
                continue
            why = mismatch(shown[key], got[key], f"{where}.{key}", final, facts)
            if why:
                return why
        return None
    if isinstance(shown, list):
        if not isinstance(got, list):
            return f"{where}: {got!r} is not a list"
        items = shown[:-1] if shown[-1:] == [MORE] else shown
        if len(got) < len(items) or (items is shown and len(got) != len(items)):
            return f"{where}: {len(got)} items, shown {len(items)}"
        for n, (one, other) in enumerate(zip(items, got)):
            why = mismatch(one, other, f"{where}[{n}]", final, facts)
            if why:
                return why
        return None
    if shown != got or type(shown) is not type(got):
        return f"{where}: {got!r}, shown {shown!r}"
    return None


def check_command(heading: str, command: Command, output: str, statuses: list[tuple[str, str, str]]) -> None:
    shows_error = any(isinstance(value, dict) and "detail" in value for value in command.shown)
    for status, method, url in statuses:
        expected = 200 <= int(status) < 400 or (shows_error and 400 <= int(status) < 500)
        assert expected, (
            f"{heading}: {method} {url} answered {status}, and the README shows no error there:\n"
            f"{command.code}\n--- output:\n{output}"
        )
    got = parse_output(output)
    position = 0
    for shown in command.shown:
        reasons = []
        for n in range(position, len(got)):
            why = mismatch(shown, got[n]) if not isinstance(shown, Text) else (got[n] != shown and repr(got[n]))
            if not why:
                position = n
                break
            reasons.append(why)
        else:
            why_not = "\n".join(reasons)
            raise AssertionError(
                f"{heading}: the output lost what the README shows.\n--- command:\n{command.code}\n"
                f"--- shown:\n{shown!r}\n--- why not each output value:\n{why_not}\n--- output:\n{output}"
            )


def substituted(section: str, heading: str, port: int, ssh_port: int, demo: Path) -> str:
    section = section.replace("127.0.0.1:8080", f"127.0.0.1:{port}").replace(DEMO, str(demo))
    if heading in SSH_SECTIONS:
        section = re.sub(r'(\\?"port\\?":\s*)22\b', rf"\g<1>{ssh_port}", section)
        if os.geteuid() != 0:  # the README's answers were recorded as root
            user = pwd.getpwuid(os.geteuid()).pw_name
            section = re.sub(r'("username":\s*)"root"', rf'\g<1>"{user}"', section)
    return section


def script(cut: list[Command]) -> str:
    """A section's bash script: a mark before each command, on the output and in $__COMMAND."""
    body = "".join(f"__COMMAND={n}; printf '\\n{MARK}%d\\n' {n}\n{command.code}\n" for n, command in enumerate(cut))
    return PRELUDE + body + EPILOGUE


def run_section(cut: list[Command], directory: Path, environment: dict[str, str], curl_log: Path) -> Ran:
    try:
        done = subprocess.run(
            ["bash", "-c", script(cut)], cwd=directory, env=environment,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=PATIENCE,
        )
        printed, failure = done.stdout, f"a command failed (exit {done.returncode})" if done.returncode else ""
    except subprocess.TimeoutExpired as e:  # a wait that never ends
        printed, failure = (e.stdout or b"").decode(errors="replace"), f"a command still ran after {PATIENCE} s"
    outputs = {}
    for part in printed.split(f"\n{MARK}")[1:]:
        number, _, output = part.partition("\n")
        outputs[int(number)] = output
    log = curl_log.read_text() if curl_log.exists() else ""
    statuses: dict[int, list[tuple[str, str, str]]] = {}
    for number, status, method, url in STATUS.findall(log):
        statuses.setdefault(int(number), []).append((status, method, url))
    return Ran(outputs, statuses, failure, log)


@pytest.fixture
def repository_folder(tmp_path: Path) -> Path:
    """A working directory that stands for the repository's folder."""
    folder = tmp_path / "repository"
    (folder / ".venv" / "bin").mkdir(parents=True)
    (folder / "examples").symlink_to(EXAMPLES)
    command = folder / ".venv" / "bin" / "migration-api"
    command.write_text(f"#!/bin/sh\nexec '{sys.executable}' -m entrypoints \"$@\"\n")
    command.chmod(0o755)
    return folder


@pytest.fixture
def walkthrough_service(repository_folder: Path, tmp_path: Path) -> Iterator[ServiceProcess]:
    """`make run`'s service: ./data/migration.db with its key beside it."""
    database = repository_folder / "data" / "migration.db"
    service = ServiceProcess(
        f"sqlite:///{database}", tmp_path, "service", "--run-seconds", str(RUN_SECONDS), "--access-log", "off",
        secret_key=None,
    )
    yield service.start()
    service.kill()


def test_the_readme_walkthroughs_run_as_printed_and_answer_what_they_show(
    walkthrough_service: ServiceProcess, sshd: SshServer, repository_folder: Path, tmp_path: Path
) -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:  # a failure, never a skip, as for sshd: the walk-throughs need them
        pytest.fail(f"the README's walk-throughs need {', '.join(missing)} (apt-get install curl jq)", pytrace=False)
    sshd.start()  # a test before may have killed it
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    shutil.copy(sshd.private_key_path, home / ".ssh" / "id_ed25519")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATION_")}
    environment["HOME"] = str(home)

    checked, previous = 0, tmp_path / "variables-0"
    for n, (heading, section) in enumerate(section_texts(README.read_text(encoding="utf-8")).items(), 1):
        section = substituted(section, heading, walkthrough_service.port, sshd.port, tmp_path / "migration-demo")
        cut = [command for block in run_blocks(section, heading) for command in commands(block)]
        if not cut:
            continue
        left, curl_log = tmp_path / f"variables-{n}", tmp_path / f"curl-{n}.log"
        environment.update(__PREVIOUS=str(previous), __STATE=str(left), __HTTP=str(curl_log))
        ran = run_section(cut, repository_folder, environment, curl_log)
        if ran.failure:
            last = max(ran.outputs, default=0)
            refused = [
                f"{method} {url} answered {status}"
                for number in range(last + 1)
                for status, method, url in ran.statuses.get(number, [])
                if not 200 <= int(status) < 400
            ]
            raise AssertionError(
                f"{heading}: {ran.failure}{', after ' + refused[0] if refused else ''}:\n{cut[last].code}\n"
                f"--- output:\n{ran.outputs.get(last, '')}\n--- curl:\n{ran.curl_log}\n"
                f"--- service log:\n{walkthrough_service.log()[-3000:]}"
            )
        for number, command in enumerate(cut):
            check_command(heading, command, ran.outputs[number], ran.statuses.get(number, []))
            checked += len(command.shown)
        previous = left
    assert checked >= 60, f"only {checked} shown answers were checked: are the README's comments still read?"
