"""Access and refresh tokens as HS256 JWTs (pyjwt), behind the core's TokenIssuer.

The algorithm is pinned on decode, so a token cannot pick its own (`none`, RS*),
and a `typ` claim keeps the two kinds apart: a refresh token is never accepted
where an access token is due, nor the other way round. Expiry is checked against
the injected clock, so tests need not wait."""

from __future__ import annotations

import secrets
import threading
from datetime import timedelta
from typing import Any

import jwt

from migration_core import AuthenticationFailed, Clock, TokenPair

ALGORITHM = "HS256"
MIN_KEY_BYTES = 32
ACCESS = "access"
REFRESH = "refresh"
_REQUIRED_CLAIMS = ["sub", "typ", "iat", "exp"]
# Access tokens already verified, so a client sending the same token on every
# request pays for the signature check once; expiry is still checked each time.
VERIFIED_CACHE_SIZE = 4096
_WRONG_KIND = {ACCESS: "The token is not an access token.", REFRESH: "The token is not a refresh token."}


class JwtTokens:
    def __init__(
        self, secret_key: bytes, clock: Clock, *, access_ttl: int, refresh_ttl: int
    ) -> None:
        if len(secret_key) < MIN_KEY_BYTES:
            raise ValueError(f"the token key must be at least {MIN_KEY_BYTES} bytes long")
        if access_ttl <= 0 or refresh_ttl <= 0:
            raise ValueError("token lifetimes must be positive")
        self._key = secret_key
        self._clock = clock
        self._access_ttl = timedelta(seconds=access_ttl)
        self._refresh_ttl = timedelta(seconds=refresh_ttl)
        self._verified: dict[str, tuple[int, int]] = {}  # token -> (user id, exp)
        self._verified_lock = threading.Lock()

    def issue(self, user_id: int) -> TokenPair:
        return TokenPair(
            access=self._encode(user_id, ACCESS, self._access_ttl),
            refresh=self._encode(user_id, REFRESH, self._refresh_ttl),
        )

    def access_from_refresh(self, refresh_token: str) -> str:
        user_id = self._decode(refresh_token, REFRESH)
        return self._encode(user_id, ACCESS, self._access_ttl)

    def subject(self, access_token: str) -> int:
        with self._verified_lock:
            known = self._verified.get(access_token)
        if known is None:
            claims = self._claims(access_token, ACCESS)
            known = (self._subject_of(claims), claims["exp"])
            with self._verified_lock:
                if len(self._verified) >= VERIFIED_CACHE_SIZE:
                    del self._verified[next(iter(self._verified))]
                self._verified[access_token] = known
        user_id, expires = known
        self._check_expiry(expires)
        return user_id

    def _encode(self, user_id: int, kind: str, ttl: timedelta) -> str:
        now = self._clock.now()
        claims = {
            "sub": str(user_id),
            "typ": kind,
            "iat": int(now.timestamp()),
            "exp": int((now + ttl).timestamp()),
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def _decode(self, token: str, kind: str) -> int:
        claims = self._claims(token, kind)
        self._check_expiry(claims["exp"])
        return self._subject_of(claims)

    def _claims(self, token: str, kind: str) -> dict[str, Any]:
        """The claims of a well-signed token of this kind; expiry not yet checked."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                # exp is checked against the injected clock, also on a cache hit.
                options={"require": _REQUIRED_CLAIMS, "verify_exp": False, "verify_iat": False},
            )
        except jwt.PyJWTError:
            raise AuthenticationFailed("The token is invalid.") from None
        if claims.get("typ") != kind:
            raise AuthenticationFailed(_WRONG_KIND[kind])
        if not isinstance(claims.get("exp"), int):
            raise AuthenticationFailed("The token is invalid.")
        return claims

    def _check_expiry(self, expires: int) -> None:
        if expires <= self._clock.now().timestamp():
            raise AuthenticationFailed("The token has expired.")

    @staticmethod
    def _subject_of(claims: dict[str, Any]) -> int:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject.isdigit():
            raise AuthenticationFailed("The token is invalid.")
        return int(subject)
