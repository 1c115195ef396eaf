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


# Says its process id (that of the SSH session's leader: the login shell
# execs it) on standard error, then becomes `argv`: the caller can kill the
# session's whole process group, pipelines included, with `kill -KILL -- -PID`.
# Standard output stays the program's own (a stream's archive, byte for byte).
_SAYING_ITS_PID = 'echo "$$" >&2; exec "$@"'


def tracked_command(*argv: str) -> str:
    """`argv` run so that the first line of its standard error is the id of its process group."""
    return remote_script(_SAYING_ITS_PID, *argv)


# A cutover hook: the user's shell command "$1", given whole as the one
# argument of `sh -c` (never pasted into this line), after the process id on
# standard error as `tracked_command` says it; its own standard error joins
# its output, so that both come in the order written.
_HOOK = 'echo "$$" >&2; exec sh -c "$1" 2>&1 </dev/null'


def hook_command(command: str) -> str:
    """The command line that runs the shell command `command` (a cutover
    hook) as `sh -c "$command"`, stderr joined to stdout, its process group
    id first on standard error."""
    return remote_script(_HOOK, command)


# Kills the process groups "$@" (as negative ids), then waits, five seconds at
# most, until none of them has a process left: `kill` only sends the signal,
# and a dying process may still write where its caller cleans up next. No
# `--` after the signal: dash's `kill` takes none.
_KILLING_GROUPS = """kill -KILL "$@" 2>/dev/null
for group do
    n=0
    while kill -0 "$group" 2>/dev/null && [ "$n" -lt 100 ]; do
        sleep 0.05 2>/dev/null || sleep 1
        n=$((n + 1))
    done
done"""


def kill_groups(*pids: int) -> str:
    """Kill the process groups a tracked command said it leads, and return
    once they are gone."""
    return remote_script(_KILLING_GROUPS, *(f"-{int(pid)}" for pid in pids))
