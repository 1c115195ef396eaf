"""Loopback ports for the servers the tests start (the service, PostgreSQL),
safe when several test processes start servers at once (pytest-xdist)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
    """A free loopback port, kept bound (not listening) while the block runs.

    While bound, the kernel gives the port to no other bind(0) and to no
    outgoing connection, so no test running beside this one can take it
    between the choice and the server's own bind; SO_REUSEADDR on both sides
    lets the server (the service, PostgreSQL: both set it) bind and listen on
    it meanwhile. Close it once the server listens."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])
