"""The remote command lines, run by this machine's shells: what a host's
`sh` (dash on Debian) and a login shell (bash) make of them."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from adapters.remote_shell import kill_groups


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_killing_groups_returns_once_they_are_gone(shell: str) -> None:
    """A cleanup that follows (removing a staging) must not race the killed
    processes' last writes: the command returns only when they are gone."""
    leaders = [subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(2)]
    for leader in leaders:  # reaped as soon as they die, as sshd reaps a session's
        threading.Thread(target=leader.wait, daemon=True).start()
    try:
        subprocess.run([shell, "-c", kill_groups(*(leader.pid for leader in leaders))], check=True, timeout=30)
        assert [leader.returncode for leader in leaders] == [-9, -9]
    finally:
        for leader in leaders:
            leader.kill()


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_killing_groups_already_gone_returns_at_once(shell: str) -> None:
    began = time.monotonic()
    subprocess.run([shell, "-c", kill_groups(2**22 + 12345)], check=True, timeout=30)
    assert time.monotonic() - began < 2
