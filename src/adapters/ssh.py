"""The SSH driver: reaches real machines with asyncssh (satisfies
`migration_core.Machines`). Its I/O runs on an event loop of its own, in one
thread started at the first connection, so the service's loop never carries
a machine's bytes and a program that embeds the core and never connects has
no thread. Every address is checked against the allowed networks before a
socket is opened; host keys are pinned whole (a pin held as a fingerprint
alone is matched by it); every remote command is written by `remote_shell`.
A real copy goes through OpenSSH's own client instead (`ssh_copy`)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import posixpath
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from migration_core import Conflict, OperatingSystem
from migration_core.machines import (
    CopyHandle,
    CopyJob,
    CopyProgress,
    Discovered,
    Filesystem,
    MachineAddress,
    MachineFacts,
    MachineUnreachable,
    PlaceSeen,
    Surveyed,
    SurveyQuestions,
    SwapGate,
)

from .copy_engine.openssh import Transport
from .copy_engine.relay import Bandwidth
from .remote_shell import remote_command, remote_script

if TYPE_CHECKING:
    import asyncssh

T = TypeVar("T")

log = logging.getLogger(__name__)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_NETWORKS_SETTING = "MIGRATION_ALLOWED_NETWORKS"

# Filesystems that hold no data of the machine's own: kernel views, memory,
# container layers and the like. The filesystem holding the root is kept
# whatever its type (in a container the root itself is an overlay).
PSEUDO_FILESYSTEMS = frozenset({
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devpts",
    "devtmpfs", "efivarfs", "fuse.gvfsd-fuse", "fuse.lxcfs", "fuse.portal", "fusectl",
    "hugetlbfs", "mqueue", "nsfs", "overlay", "proc", "pstore", "ramfs", "rpc_pipefs",
    "securityfs", "selinuxfs", "squashfs", "sysfs", "tmpfs", "tracefs", "nfsd", "aufs",
})

# The facts of a check, one a line: the kernel's name, the hostname, its
# release, then "yes" or "no" for each tool named as an argument.
_FACTS = (
    'uname -s; uname -n; uname -r; '
    'for t do if command -v "$t" >/dev/null 2>&1; then echo yes; else echo no; fi; done'
)
# Used blocks of each directory's filesystem as `stat -f` counts them, one
# line a path given ("-" for one that is no directory or cannot be read).
_USAGE = (
    'for p do if [ -d "$p" ] && u=$(stat -f -c "%b %f %S" -- "$p" 2>/dev/null); '
    'then echo "$u"; else echo -; fi; done'
)
_MOUNTS = "cat /proc/self/mounts"
# A readiness survey (SPEC 2.11), every answer a NUL-ended field: the
# kernel's name and the hostname; "yes" or "no" for each tool (the login's
# own PATH); the used bytes of each directory on its filesystem and that
# filesystem's device number ("-" and "-": none there, or unreadable); for
# each place, the path examined (the place, or its nearest existing
# ancestor), whether it is the place itself, a directory, writable (find's
# -writable asks the kernel, which knows a read-only filesystem), and the
# bytes free there ("-": unread); "ok" or "no" and the error of each hook
# parsed with `sh -n`. Each group comes after its count. It writes nothing.
# Run by /bin/sh, so that a login whose PATH lacks `sh` still answers; the
# tools are looked for on the login's PATH alone, the survey's own programs
# in the usual places too.
_SURVEY = r"""nul() { printf '%s\0' "$@"; }
own=$PATH
PATH=$PATH:/usr/local/bin:/usr/bin:/bin
nul "$(uname -s 2>/dev/null)" "$(uname -n 2>/dev/null)"
n=$1; shift
while [ "$n" -gt 0 ]; do
  if PATH=$own command -v "$1" >/dev/null 2>&1; then nul yes; else nul no; fi
  shift; n=$((n - 1))
done
n=$1; shift
while [ "$n" -gt 0 ]; do
  if [ -d "$1" ] && u=$(du -sxb -- "$1" 2>/dev/null) && d=$(stat -c %d -- "$1" 2>/dev/null); then
    nul "${u%%[!0-9]*}" "$d"
  else
    nul - -
  fi
  shift; n=$((n - 1))
done
n=$1; shift
while [ "$n" -gt 0 ]; do
  p=$1
  while [ ! -e "$p" ] && [ ! -L "$p" ]; do p=${p%/*}; p=${p:-/}; done
  e=0 d=0 w=0 f=-
  [ "$p" = "$1" ] && e=1
  [ -d "$p" ] && d=1
  [ -n "$(find "$p" -maxdepth 0 -writable -executable 2>/dev/null)" ] && w=1
  a=$(stat -f -c '%a %S' -- "$p" 2>/dev/null) && f=$(( ${a% *} * ${a#* } ))
  nul "$p" "$e" "$d" "$w" "$f"
  shift; n=$((n - 1))
done
n=$1; shift
while [ "$n" -gt 0 ]; do
  if e=$(sh -n -c "$1" 2>&1 </dev/null); then nul ok ""; else nul no "$e"; fi
  shift; n=$((n - 1))
done
"""
# The longest parse error a survey keeps of a hook.
_HOOK_ERROR_CHARACTERS = 500


def parse_networks(text: str) -> tuple[IpNetwork, ...]:
    """Comma-separated CIDR blocks; ValueError naming the bad one."""
    networks = []
    for part in text.split(","):
        block = part.strip()
        if not block:
            continue
        try:
            networks.append(ipaddress.ip_network(block, strict=False))
        except ValueError:
            raise ValueError(f"{block!r} is not a network (CIDR block such as 127.0.0.0/8)") from None
    if not networks:
        raise ValueError("name at least one network")
    return tuple(networks)


class _IoThread:
    """An event loop in a daemon thread, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="ssh-io", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop()).result()

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            loop.close()


class SshMachines:
    """Satisfies `migration_core.Machines`. `connect_timeout` bounds the
    connection and the login; `command_timeout` a check's or a discovery's
    commands."""

    def __init__(
        self,
        allowed_networks: Iterable[IpNetwork],
        connect_timeout: float = 10.0,
        *,
        command_timeout: float = 120.0,
        setting: str = ALLOWED_NETWORKS_SETTING,
        max_bandwidth: int | None = None,
    ) -> None:
        self.allowed_networks = tuple(allowed_networks)
        # One cap (bytes per second) that every copy of this driver shares; None: unlimited.
        self._bandwidth = None if max_bandwidth is None else Bandwidth(max_bandwidth)
        self.connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._setting = setting
        self._io = _IoThread()
        # Called on the driver's loop once a volume's stream is in staging and
        # before it is verified (index, staging path): a seam for fault tests.
        self.after_stream: Callable[[int, str], Awaitable[None]] | None = None

    # -- the Machines port (any thread but the driver's own) ---------------

    def facts(self, address: MachineAddress) -> MachineFacts:
        facts = self._logged("check", address, self._facts(address))
        log.info("check of %s: logged in, os %s", login_at(address), facts.os.value if facts.os else "unknown")
        return facts

    def filesystems(self, address: MachineAddress) -> Discovered:
        found = self._logged("discovery", address, self._filesystems(address))
        log.info("discovery of %s: %d filesystem(s) under %s", login_at(address), len(found.filesystems), address.root)
        return found

    def survey(self, address: MachineAddress, questions: SurveyQuestions) -> Surveyed:
        found = self._logged("readiness check", address, self._survey(address, questions))
        log.info("readiness check of %s: logged in", login_at(address))
        return found

    def _logged(self, what: str, address: MachineAddress, work: Coroutine[Any, Any, T]) -> T:
        """`work`'s result; a failure is one log line (who, where, why) before it goes on."""
        try:
            return self._io.run(work)
        except (MachineUnreachable, Conflict) as failure:
            log.info("%s of %s failed: %s", what, login_at(address), failure.message)
            raise

    def start_copy(self, job: CopyJob, changed: Callable[[], None], gate: SwapGate | None = None) -> CopyHandle:
        from .ssh_copy import CopyInBackground, SshCopy

        transport = Transport(self.connect_timeout, self.ensure_allowed, self._bandwidth)

        def copy(report: Callable[[CopyProgress], None]) -> SshCopy:
            return SshCopy(job, report, transport, gate=gate, after_stream=self.after_stream)

        return CopyInBackground(job, copy, changed, self._io.loop())

    def close(self) -> None:
        self._io.close()

    # -- connections (on the driver's loop) -------------------------------

    def ensure_allowed(self, ip: str) -> None:
        """Conflict, before any packet, for an address outside the allowed networks."""
        address = ipaddress.ip_address(ip)
        if not any(address in network for network in self.allowed_networks):
            allowed = ", ".join(map(str, self.allowed_networks))
            raise Conflict(
                f"{ip} is outside the networks the service may connect to ({self._setting}: {allowed})."
            )

    @contextlib.asynccontextmanager
    async def connection(self, address: MachineAddress) -> AsyncIterator[tuple[asyncssh.SSHClientConnection, str]]:
        """A logged-in connection and the host key it met, whole (`type base64`)."""
        self.ensure_allowed(address.ip)
        # Imported at the first machine: asyncssh's import is a tenth of a
        # second of every start of a service that may never reach one.
        from .ssh_session import logged_in

        async with logged_in(address, self.connect_timeout) as connected:
            yield connected

    async def output(self, connection: asyncssh.SSHClientConnection, command: str) -> tuple[int, bytes]:
        """Run a command, bounded by the command timeout: its exit status and output."""
        from .ssh_session import output

        return await output(connection, command, self._command_timeout)

    # -- what a check and a discovery read ---------------------------------

    async def _facts(self, address: MachineAddress) -> MachineFacts:
        tools = ("tar", "sha256sum")
        async with self.connection(address) as (connection, host_key):
            status, out = await self.output(connection, remote_script(_FACTS, *tools))
            lines = _text(out).splitlines()
            if status != 0 or len(lines) != 3 + len(tools):
                return MachineFacts(host_key, None, "", "", dict.fromkeys(tools, False))
            system, hostname, kernel = lines[:3]
            return MachineFacts(
                host_key=host_key,
                os=OperatingSystem.LINUX if system == "Linux" else None,
                hostname=hostname,
                kernel=kernel,
                tools={tool: answer == "yes" for tool, answer in zip(tools, lines[3:])},
            )

    async def _filesystems(self, address: MachineAddress) -> Discovered:
        async with self.connection(address) as (connection, host_key):
            status, out = await self.output(connection, _MOUNTS)
            if status != 0:
                raise MachineUnreachable("The machine's mounted filesystems could not be read (/proc/self/mounts).")
            candidates = volumes_under(address.root, parse_mounts(out))
            if not candidates:
                return Discovered(host_key, ())
            status, out = await self.output(connection, remote_script(_USAGE, *(path for _, path in candidates)))
            usage = _text(out).splitlines()
            if status != 0 or len(usage) != len(candidates):
                raise MachineUnreachable("The used bytes of the machine's filesystems could not be read.")
            found = []
            for (name, _), line in zip(candidates, usage):
                used = _used_bytes(line)
                if used is not None:
                    found.append(Filesystem(name, used))
            return Discovered(host_key, tuple(found))


    async def _survey(self, address: MachineAddress, questions: SurveyQuestions) -> Surveyed:
        asked = questions
        arguments = [
            str(len(asked.tools)), *asked.tools,
            str(len(asked.directories)), *asked.directories,
            str(len(asked.places)), *asked.places,
            str(len(asked.hooks)), *asked.hooks,
        ]
        async with self.connection(address) as (connection, host_key):
            status, out = await self.output(connection, remote_command("/bin/sh", "-c", _SURVEY, "sh", *arguments))
        fields = out.split(b"\0")
        expected = 2 + len(asked.tools) + 2 * len(asked.directories) + 5 * len(asked.places) + 2 * len(asked.hooks)
        if status != 0 or fields[-1] != b"" or len(fields) - 1 != expected:
            raise MachineUnreachable(
                f"Logged in, but the machine's answer to the readiness check could not be read (exit status {status})."
            )
        answers = iter(_text(field) for field in fields[:-1])
        system, hostname = next(answers), next(answers)
        tools = {tool: next(answers) == "yes" for tool in asked.tools}
        directories: dict[str, int | None] = {}
        devices: dict[str, int] = {}
        for path in asked.directories:
            used, device = _count(next(answers)), _count(next(answers))
            directories[path] = used
            if device is not None:
                devices[path] = device
        places = {}
        for place in asked.places:
            examined, exists, directory, writable, free = (next(answers) for _ in range(5))
            places[place] = PlaceSeen(examined, exists == "1", directory == "1", writable == "1", _count(free))
        hooks = {}
        for hook in asked.hooks:
            parses, error = next(answers), next(answers)
            hooks[hook] = None if parses == "ok" else (error.strip() or "sh -n refused it")[:_HOOK_ERROR_CHARACTERS]
        return Surveyed(
            host_key=host_key,
            os=OperatingSystem.LINUX if system == "Linux" else None,
            system=system,
            hostname=hostname,
            tools=tools,
            directories=directories,
            places=places,
            hooks=hooks,
            devices=devices,
        )


def _count(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def login_at(address: MachineAddress) -> str:
    """A machine as a log line names it: the login and where, never a secret."""
    return f"{address.username}@{address.ip} port {address.port}"


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _used_bytes(line: str) -> int | None:
    parts = line.split()
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        return None
    blocks, free, block_size = map(int, parts)
    return max(0, blocks - free) * block_size


def _unescape_mount_field(field: bytes) -> bytes:
    """/proc/self/mounts writes space, tab, newline and backslash as octal escapes."""
    out = bytearray()
    index = 0
    while index < len(field):
        if field[index : index + 1] == b"\\" and field[index + 1 : index + 4].isdigit():
            out.append(int(field[index + 1 : index + 4], 8) & 0xFF)
            index += 4
        else:
            out += field[index : index + 1]
            index += 1
    return bytes(out)


def parse_mounts(data: bytes) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of each line of /proc/self/mounts, in
    order. A mount point that is not UTF-8 cannot be a volume's name and is
    left out."""
    mounts = []
    for line in data.split(b"\n"):
        fields = line.split(b" ")
        if len(fields) < 3:
            continue
        try:
            path = _unescape_mount_field(fields[1]).decode("utf-8")
            kind = _unescape_mount_field(fields[2]).decode("utf-8")
        except UnicodeDecodeError:
            continue
        if path.startswith("/"):
            mounts.append((posixpath.normpath(path).replace("//", "/"), kind))
    return mounts


def volumes_under(root: str, mounts: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """(volume name as seen from `root`, path on the machine) of each data
    filesystem at or below `root`, the one holding `root` first as `/`. A
    mount point mounted over again counts once."""
    root = posixpath.normpath(root).replace("//", "/")
    prefix = root.rstrip("/") + "/"
    holder = None
    below: dict[str, str] = {}
    for path, kind in mounts:
        if path == root or root.startswith(path.rstrip("/") + "/"):
            if holder is None or len(path) >= len(holder):
                holder = path
            continue
        if path.startswith(prefix):
            name = "/" + path[len(prefix):]
            if kind in PSEUDO_FILESYSTEMS:
                below.pop(name, None)  # a pseudo filesystem mounted over a data one hides it
            else:
                below[name] = path
    volumes = [("/", root)] if holder is not None else []
    return volumes + sorted(below.items())
