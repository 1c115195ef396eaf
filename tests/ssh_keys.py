"""Private keys made by ssh-keygen for the tests, once per test process, in
a temporary directory removed when the process ends."""

from __future__ import annotations

import subprocess
import tempfile
from functools import cache
from pathlib import Path

_KEYS = tempfile.TemporaryDirectory(prefix="keys-")  # removed when the test process ends


def keys_directory() -> Path:
    return Path(_KEYS.name)


@cache
def keygen(name: str, *arguments: str, passphrase: str = "") -> str:
    """The private key file ssh-keygen makes with `arguments` (once per test
    process), as text; its public key is beside it, as `name`.pub. One name
    is one key: ssh-keygen would ask before writing over a file."""
    path = keys_directory() / name
    assert not path.exists(), f"a key named {name!r} was made with other arguments"
    subprocess.run(
        ["ssh-keygen", "-q", "-N", passphrase, "-C", "test key", "-f", str(path), *arguments],
        check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
    )
    return path.read_text()
