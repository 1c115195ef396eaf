"""The one way a remote command is written: every argument quoted for a POSIX
shell, so that no name or path a user or a machine gave (quotes, `;`, `$()`,
newlines, a leading `-`) can become a command or an option. Scripts are
constants that take their data as positional arguments ("$1", "$@"), never
text pasted into them."""

from __future__ import annotations

import shlex


def remote_command(*argv: str) -> str:
    """A command line that runs `argv` as one program with those arguments.
    Callers put `--` before paths where the program takes options."""
    if not argv:
        raise ValueError("a remote command needs a program")
    for argument in argv:
        if "\x00" in argument:
            raise ValueError("a remote command's argument cannot hold a NUL byte")
    return shlex.join(argv)


def remote_script(script: str, *arguments: str) -> str:
    """Run the constant `script` with `sh`, its data as "$1", "$2", ... (and "$@")."""
    return remote_command("sh", "-c", script, "sh", *arguments)
