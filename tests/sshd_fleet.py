"""A fleet of machines for the tests of copies at fleet scale (SPEC 2.10,
4.5b): many loopback addresses (127.0.1.1, 127.0.1.2, ...), each machine a
directory, served by real sshd processes with OpenSSH's default limits
(MaxSessions 10, MaxStartups 10:30:100), as a stock server has them.

Several processes, not one: an sshd listens on at most 16 addresses (its
MAX_LISTEN_SOCKS; one more and it exits with "Too many listen sockets"), so
the addresses are shared out over as few servers as hold them, each on its
own port with its own host key. The first server's client keys log in to
every one of them, so one login reaches the whole fleet."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from .sshd_fixtures import Machine
from .sshd_server import MAX_LISTEN_ADDRESSES, SshServer


def fleet_addresses(count: int, network: str = "127.0.1") -> list[str]:
    """`count` addresses in `network`: 127.0.1.1, 127.0.1.2, ..."""
    assert 0 < count < 255, count
    return [f"{network}.{number}" for number in range(1, count + 1)]


class SshFleet:
    """Machines on `addresses`, served by ceil(len / 16) sshd processes of
    about equal size; start/stop, or `with`."""

    def __init__(self, addresses: Sequence[str], root: Path, *, default_limits: bool = True) -> None:
        servers = -(-len(addresses) // MAX_LISTEN_ADDRESSES)
        share = -(-len(addresses) // servers)
        self.root = root
        self.servers = [
            SshServer(addresses=addresses[at : at + share], default_limits=default_limits)
            for at in range(0, len(addresses), share)
        ]

    def start(self) -> SshFleet:
        try:
            for server in self.servers:
                server.start()
            first = self.servers[0]
            for server in self.servers[1:]:
                for key in (first.private_key_path, first.pem_private_key_path):
                    server.authorize(Path(f"{key}.pub").read_text())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def server_of(self, ip: str) -> SshServer:
        for server in self.servers:
            if ip in server.addresses:
                return server
        raise AssertionError(f"no server of the fleet listens on {ip}")

    def machine(self, ip: str) -> Machine:
        """The machine at `ip`, its tree a fresh empty directory below `root`."""
        server, first = self.server_of(ip), self.servers[0]
        root = self.root / f"machine-{ip}"
        root.mkdir(parents=True)
        fields: dict[str, Any] = {
            "root": root,
            "ip": ip,
            "port": server.port,
            "username": server.username,
            "private_key": first.private_key,
            "pem_private_key": first.pem_private_key,
            "host_key_fingerprint": server.fingerprint(),
            "host_public_key": server.host_public_key(),
            "add_password_user": server.add_password_user,
        }
        # The whole host key joins Machine with the OpenSSH transport's work:
        # until then Machine does not take it.
        return Machine(**{name: value for name, value in fields.items() if name in attrs.fields_dict(Machine)})

    def log(self) -> str:
        """Every server's log, for a failing test to show."""
        return "\n".join(f"--- sshd on {server.addresses}:\n{server.log()}" for server in self.servers)

    def __enter__(self) -> SshFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
