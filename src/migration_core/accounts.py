"""Accounts: registration, password checks, tokens and the login throttle."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar

import attrs

from .entities import User
from .errors import AuthenticationFailed, Conflict, InvalidInput, NotFound, Throttled
from .ports import Clock, PasswordHasher, Storage, UnitOfWork

USERNAME_MAX = 150
PASSWORD_MIN = 8
_USERNAME = re.compile(r"[\w.@+-]+")

P = ParamSpec("P")
T = TypeVar("T")


@attrs.frozen
class TokenPair:
    access: str
    refresh: str = attrs.field(repr=False)


class TokenIssuer(Protocol):
    """Signs and checks tokens. `subject` raises AuthenticationFailed for a token
    that is malformed, forged, expired or of the other kind."""

    def issue(self, user_id: int) -> TokenPair: ...

    def access_from_refresh(self, refresh_token: str) -> str: ...

    def subject(self, access_token: str) -> int: ...


def check_username(username: str) -> None:
    if not (0 < len(username) <= USERNAME_MAX and _USERNAME.fullmatch(username)):
        raise InvalidInput.field(
            "username",
            f"Use 1 to {USERNAME_MAX} characters: letters, digits and @ . + - _ only.",
        )


def register_user(storage: Storage, hasher: PasswordHasher, username: str, password: str) -> User:
    """Create an account. Hashing is slow on purpose: call this off an event loop."""
    check_username(username)
    if len(password) < PASSWORD_MIN:
        raise InvalidInput.field("password", f"Use at least {PASSWORD_MIN} characters.")
    user = User(username, hasher.hash(password))
    try:
        with storage.unit_of_work() as uow:
            stored = uow.users.add(user)
            uow.commit()
    except Conflict:
        raise InvalidInput.field("username", "This username is already taken.") from None
    return stored


class LoginThrottle:
    """After `limit` failed logins for one username within `window` seconds,
    every login for it is refused until the oldest failure leaves the window.
    Failures are kept in storage, so every instance sharing it counts them."""

    def __init__(self, storage: Storage, clock: Clock, limit: int = 10, window: float = 60.0) -> None:
        self._storage = storage
        self._clock = clock
        self._limit = limit
        self._window = window

    def check(self, username: str) -> None:
        now = self._clock.now().timestamp()
        with self._storage.unit_of_work(write=False) as uow:
            failures = uow.login_failures.since(username, now - self._window)
        if len(failures) >= self._limit:
            # Let in again once fewer than `limit` failures remain in the window;
            # concurrent logins may have pushed the count past the limit.
            released = failures[-self._limit] + self._window
            retry_after = max(1, math.ceil(released - now))
            seconds = "1 second" if retry_after == 1 else f"{retry_after} seconds"
            raise Throttled(
                f"Too many failed logins for this username; try again in {seconds}.", retry_after
            )

    def failed(self, username: str) -> None:
        now = self._clock.now().timestamp()
        with self._storage.unit_of_work() as uow:
            uow.login_failures.forget(now - self._window)
            uow.login_failures.add(username, now)
            uow.commit()


def authenticate(
    storage: Storage,
    hasher: PasswordHasher,
    throttle: LoginThrottle,
    username: str,
    password: str,
) -> User:
    """The user with this username and password. Slow: call it off an event loop."""
    throttle.check(username)
    with storage.unit_of_work(write=False) as uow:
        user = uow.users.by_username(username)
    if user is None:
        hasher.hash(password)  # as slow as a check, so timing does not tell which names exist
    if user is None or not hasher.verify(user.password_hash, password):
        throttle.failed(username)
        raise AuthenticationFailed("No active account with this username and password.")
    return user


def login(
    storage: Storage,
    hasher: PasswordHasher,
    throttle: LoginThrottle,
    tokens: TokenIssuer,
    username: str,
    password: str,
) -> TokenPair:
    user = authenticate(storage, hasher, throttle, username, password)
    return tokens.issue(user.id)


def refresh_access(storage: Storage, tokens: TokenIssuer, refresh_token: str) -> str:
    """A new access token for a valid refresh token of a user who still exists."""
    access = tokens.access_from_refresh(refresh_token)
    user_from_token(storage, tokens, access)
    return access


def user_from_token(storage: Storage, tokens: TokenIssuer, access_token: str) -> User:
    """The live user an access token speaks for; a deleted user's token fails."""
    user_id = tokens.subject(access_token)
    with storage.unit_of_work(write=False) as uow:
        return _live_user(uow, user_id)


def read_as_live_user(
    storage: Storage,
    user_id: int,
    read: Callable[Concatenate[Storage, int, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """`read(storage, user_id, ...)`, a read-only use case, for the user a
    checked token speaks for (`TokenIssuer.subject`), in the one transaction
    that finds the user still there: one read, not two. The use case's own
    unit joins this one (a read has nothing to undo alone); a deleted user
    fails first, as with `user_from_token`."""
    with storage.unit_of_work(write=False, undo_nested=False) as uow:
        _live_user(uow, user_id)
        return read(storage, user_id, *args, **kwargs)


def write_as_live_user(
    storage: Storage,
    user_id: int,
    change: Callable[Concatenate[Storage, int, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """`change(storage, user_id, ...)`, a use case that writes, for the user a
    checked token speaks for, in the transaction that finds the user still
    there: the user's read costs no transaction of its own. The use case's
    unit is nested in this one (a savepoint: a use case may end its unit
    without commit, having found nothing to change) and commits with it."""
    with storage.unit_of_work() as uow:
        _live_user(uow, user_id)
        changed = change(storage, user_id, *args, **kwargs)
        uow.commit()
        return changed


def _live_user(uow: UnitOfWork, user_id: int) -> User:
    try:
        return uow.users.get(user_id)
    except NotFound:
        raise AuthenticationFailed("The user of this token no longer exists.") from None


def user_named(storage: Storage, username: str) -> User:
    """The user of this name (for tools that act for one); NotFound otherwise."""
    with storage.unit_of_work(write=False) as uow:
        user = uow.users.by_username(username)
    if user is None:
        raise NotFound(f"There is no user {username!r}.")
    return user
