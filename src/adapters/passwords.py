"""Password hashing with scrypt from the standard library: slow, salted, and
memory-hard. Each hash records its parameters, so they can be raised later
without breaking the hashes already stored."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

_SCHEME = "scrypt"
# scrypt's N as a power of two. 2**15 (32 MiB, an eighth of a CPU-second a hash
# here) by default, above RFC 7914's 2**14 for interactive logins; up to
# OWASP's 2**17. 2**10 is for tests and demonstrations, where logins abound.
PASSWORD_COST = 15
PASSWORD_COSTS = (10, 17)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class ScryptHasher:
    def __init__(self, n: int = 2**PASSWORD_COST, r: int = 8, p: int = 1) -> None:
        self._params = (n, r, p)

    def hash(self, password: str) -> str:
        n, r, p = self._params
        salt = os.urandom(16)
        digest = self._derive(password, salt, n, r, p)
        return f"{_SCHEME}${n}${r}${p}${_b64(salt)}${_b64(digest)}"

    def verify(self, password_hash: str, password: str) -> bool:
        try:
            scheme, n, r, p, salt, digest = password_hash.split("$")
            if scheme != _SCHEME:
                return False
            expected = base64.b64decode(digest)
            actual = self._derive(password, base64.b64decode(salt), int(n), int(r), int(p))
        except ValueError:
            return False
        return hmac.compare_digest(expected, actual)

    @staticmethod
    def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
        return hashlib.scrypt(
            password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + 2**20, dklen=32
        )
