"""The SSH driver's sessions through asyncssh: a login held to the pinned
host key, and a command's output. `adapters.ssh` imports this module at its
first machine, so that a service that never reaches one never imports
asyncssh."""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncIterator, Callable

from migration_core.machines import HostKeyChanged, MachineAddress, MachineUnreachable, fingerprint, whole_key

from .copy_engine.openssh import MAX_STARTUPS, changed_key, closed_before_login
from .ssh_library import asyncssh, private_key


class _PinningClient(asyncssh.SSHClient):
    """Accepts the host key pinned (whole, or its fingerprint alone; any key
    when none is), and remembers the whole key the server showed."""

    def __init__(self, pinned: str | None) -> None:
        self.pinned = pinned
        self.seen: str | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.seen = " ".join(key.export_public_key("openssh").decode().split()[:2])
        if self.pinned is None:
            return True
        whole = whole_key(self.pinned)
        return self.seen == whole if whole is not None else fingerprint(self.seen) == self.pinned


class _Heard(asyncio.Protocol):
    """Between the socket and asyncssh's connection: keeps the first bytes
    the machine said, so that a connection closed before the login can be
    told from one that answered as something else than SSH."""

    KEEP = 512

    def __init__(self, inner: asyncio.Protocol) -> None:
        self.inner = inner
        self.heard = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if len(self.heard) < self.KEEP:
            self.heard += data[: self.KEEP - len(self.heard)]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _Listening:
    """An asyncssh `tunnel`: a plain TCP connection through `_Heard`."""

    def __init__(self) -> None:
        self.heard = b""
        self._protocol: _Heard | None = None

    async def create_connection(
        self, session_factory: Callable[[], asyncio.Protocol], host: str, port: int
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        loop = asyncio.get_running_loop()

        def heard() -> _Heard:
            self._protocol = _Heard(session_factory())
            return self._protocol

        transport, protocol = await loop.create_connection(heard, host, port)
        return transport, protocol.inner

    def said(self) -> bytes:
        return self._protocol.heard if self._protocol is not None else b""


def _closed_early(where: str, heard: bytes, reason: str) -> str:
    """A connection closed before the login, in words: dropped (nothing said,
    an SSH banner, or sshd's MaxStartups line), or not an SSH server."""
    lines = [line.strip() for line in heard.decode("utf-8", "replace").splitlines()]
    answer = [line for line in lines if line and not line.startswith("SSH-") and line != MAX_STARTUPS]
    if not answer:
        return closed_before_login(where)
    return f"{where} did not answer as an SSH server ({reason})."


@contextlib.asynccontextmanager
async def logged_in(address: MachineAddress, timeout: float) -> AsyncIterator[tuple[asyncssh.SSHClientConnection, str]]:
    """A logged-in connection to an allowed address and the host key it met,
    whole (`type base64`), within `timeout`; MachineUnreachable in words."""
    where = f"{address.ip} port {address.port}"
    client = _PinningClient(address.host_key)
    keys = [private_key(address.private_key)] if address.private_key else None
    listening = _Listening()
    whole = None if address.host_key is None else whole_key(address.host_key)
    # A whole key pinned is asked for by its algorithms; a fingerprint alone names none.
    algorithms = () if whole is None else asyncssh.import_public_key(whole).sig_algorithms
    try:
        async with asyncio.timeout(timeout):
            connection, _ = await asyncssh.create_connection(
                lambda: client,
                address.ip,
                address.port,
                tunnel=listening,
                server_host_key_algs=[alg.decode() for alg in algorithms] or (),
                username=address.username,
                password=address.password or None,
                client_keys=keys,
                known_hosts=([], [], []),
                agent_path=None,
                config=None,
                gss_auth=False,
                gss_kex=False,
                kbdint_auth=bool(address.password),
                ignore_encrypted=True,
                connect_timeout=None,
                login_timeout=timeout,
                keepalive_interval=15,
                keepalive_count_max=4,
            )
    except TimeoutError:
        raise MachineUnreachable(
            f"Timed out after {timeout:g} s connecting and logging in to {where}."
        ) from None
    except asyncssh.HostKeyNotVerifiable:
        if client.seen is not None and address.host_key is not None:
            raise HostKeyChanged(changed_key(where, fingerprint(client.seen), address.host_key)) from None
        raise MachineUnreachable(f"The host key of {where} could not be verified.") from None
    except asyncssh.PermissionDenied:
        raise MachineUnreachable(f"Login refused for user {address.username!r} at {where}.") from None
    except (asyncssh.ProtocolError, asyncssh.ConnectionLost) as error:
        raise MachineUnreachable(_closed_early(where, listening.said(), error.reason)) from None
    except asyncssh.Error as error:
        raise MachineUnreachable(f"The SSH connection to {where} failed: {error.reason}.") from None
    except (ConnectionResetError, BrokenPipeError):
        # Closed on the service before the SSH greeting was done.
        raise MachineUnreachable(_closed_early(where, listening.said(), "it closed the connection")) from None
    except OSError as error:
        raise MachineUnreachable(_socket_failure(where, error)) from None
    except ValueError as error:  # a username or password SSH cannot carry (SASLprep)
        raise MachineUnreachable(f"The login cannot be sent to {where}: {error}.") from None
    assert client.seen is not None, "a logged-in connection has verified a host key"
    try:
        yield connection, client.seen
    finally:
        connection.close()
        with contextlib.suppress(Exception):
            await connection.wait_closed()


async def output(connection: asyncssh.SSHClientConnection, command: str, timeout: float) -> tuple[int, bytes]:
    """Run a command, bounded by `timeout`: its exit status and output."""
    try:
        async with asyncio.timeout(timeout):
            result = await connection.run(command, check=False, encoding=None, stdin=asyncssh.DEVNULL)
    except TimeoutError:
        raise MachineUnreachable(f"A command timed out after {timeout:g} s.") from None
    except (asyncssh.Error, OSError) as error:
        raise MachineUnreachable(f"The machine closed the connection: {error}.") from None
    stdout = result.stdout if isinstance(result.stdout, bytes) else b""
    return result.exit_status if result.exit_status is not None else -1, stdout


def _socket_failure(where: str, error: OSError) -> str:
    if error.errno == errno.ECONNREFUSED:
        return f"Connection refused at {where}: nothing listens there."
    if error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"No route to {where}."
    return f"Could not reach {where}: {error.strerror or error}."
