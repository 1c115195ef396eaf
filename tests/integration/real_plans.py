"""A real migration planned through the API (a source with its volumes, a
host, a target onto it), as the tests of real runs through a `serve` process
set it up, and the digests that compare a landing tree with its source."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..sshd_fixtures import Machine
from .service_process import ServiceProcess, sign_up, wait_for


def digest(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every file below `root` (symbolic links as such): its mode, size and
    SHA-256 (a link: its target), by path relative to `root`."""
    found = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            info = path.lstat()
            contents = os.readlink(path) if path.is_symlink() else hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(root))] = (oct(info.st_mode), info.st_size, contents)
    return found


def tree(root: Path, leave_out: tuple[str, ...] = ()) -> dict[str, tuple[object, ...]]:
    """What a copy must carry: type, mode, size, contents' hash or link target, mtime."""
    found: dict[str, tuple[object, ...]] = {}
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not str((Path(directory) / d).relative_to(root)).startswith(leave_out)]
        for name in dirs + files:
            path = Path(directory) / name
            relative = str(path.relative_to(root))
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                found[relative] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[relative] = ("dir", stat.S_IMODE(info.st_mode))
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[relative] = ("file", stat.S_IMODE(info.st_mode), info.st_size, digest, info.st_mtime_ns)
    return found


def remote_processes(*roots: Path) -> list[str]:
    """The processes working below these trees (the source's, the host's): the
    copy's tar, find and sha256sum, run by sshd for the service."""
    listing = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if any(str(root) in line for root in roots)]


class RealPlan:
    """A source with its volumes, a host, a target onto it, and a migration."""

    def __init__(
        self,
        service: ServiceProcess,
        source: Machine,
        host: Machine,
        volumes: list[str],
        *,
        user: str = "mover",
        landing: str = "landing",
        token: str | None = None,
        host_workload: int | None = None,
    ) -> None:
        """Signs `user` up, unless `token` says whose the plan is (many plans
        of one user: one list holds them all, one wave may run them); a user
        has one workload per ip, so the host's is `host_workload` when the
        user has it already."""
        self.service = service
        self.token = sign_up(service, user) if token is None else token
        self.landing = host.root / landing
        key = self.ok(
            "POST", "/api/v1/credentials/", {"username": source.username, "private_key": source.private_key}, 201
        )
        cloud = self.ok("POST", "/api/v1/credentials/", {"username": "cloud", "password": "pw"}, 201)
        self.mount_points = [
            self.ok("POST", "/api/v1/mount_points/", {"name": name, "size": 1000}, 201)["id"] for name in volumes
        ]
        self.source = self.ok(
            "POST",
            "/api/v1/work_loads/",
            {
                "ip": source.ip,
                "port": source.port,
                "credentials": key["id"],
                "storage": self.mount_points,
                "os": "linux",
                "root": str(source.root),
            },
            201,
        )["id"]
        self.host = host_workload if host_workload is not None else self.ok(
            "POST",
            "/api/v1/work_loads/",
            {
                "ip": host.ip,
                "port": host.port,
                "credentials": key["id"],
                "storage": [],
            },
            201,
        )["id"]
        self.target = self.ok(
            "POST",
            "/api/v1/migration_targets/",
            {
                "cloud_type": "vsphere",
                "cloud_credentials": cloud["id"],
                "host": self.host,
                "root": str(self.landing),
            },
            201,
        )["id"]
        self.migration = self.ok(
            "POST",
            "/api/v1/migrations/",
            {
                "source": self.source,
                "migration_target": self.target,
                "selected_mount_points": self.mount_points,
            },
            201,
        )["id"]

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        return self.service.ok(method, path, body, self.token, status)

    def state(self) -> Any:
        return self.ok("GET", f"/api/v1/migrations/{self.migration}/state/")

    def until(self, check: Callable[[Any], bool]) -> Any:
        """The run's state once `check` holds: a state that stays once reached
        (an end, bytes copied), so the looks thin out as the wait goes on."""
        return wait_for(
            "the run's state", lambda: (lambda s: s if check(s) else None)(self.state()), patience=60, longest=0.25
        )

    def events(self, kind: str) -> list[Any]:
        return self.ok("GET", f"/api/v1/migrations/{self.migration}/events/?kind={kind}")["results"]  # type: ignore[no-any-return]
