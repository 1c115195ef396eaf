"""Accounts as the core holds them: who may register, password checks, and the
login throttle (10 failures within 60 s), against a clock the test moves."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

import migration_core as core
from adapters.memory import MemoryStorage
from adapters.passwords import ScryptHasher

from .support import FakeClock, field_errors

HASHER = ScryptHasher(n=2**4)  # cheap: these tests check rules, not hash strength
LIMIT, WINDOW = 10, 60.0

username_chars = st.characters(categories=["L", "Nd"]) | st.sampled_from("@.+-_")
# Any length from 1 to 150, the longest included, not just the short ones.
usernames = st.integers(1, 150).flatmap(
    lambda size: st.text(username_chars, min_size=size, max_size=size)
)
passwords = st.text(min_size=8, max_size=20)


def _is_valid_username(text: str) -> bool:
    return 1 <= len(text) <= 150 and all(c.isalnum() or c in "@.+-_" for c in text)


bad_usernames = st.one_of(
    st.just(""),
    st.text(username_chars, min_size=151, max_size=160),
    st.tuples(usernames, st.sampled_from(" /\\!#$%&*()[]{}'\"\n\t,;:=?"), usernames).map(
        lambda parts: (parts[0] + parts[1] + parts[2])[:150]
    ),
).filter(lambda text: not _is_valid_username(text))


@given(usernames, passwords)
def test_a_valid_username_and_password_register_and_then_authenticate(
    username: str, password: str
) -> None:
    storage = MemoryStorage()
    user = core.register_user(storage, HASHER, username, password)
    assert user.username == username
    assert password not in user.password_hash
    throttle = core.LoginThrottle(storage, FakeClock())
    assert core.authenticate(storage, HASHER, throttle, username, password) == user
    with pytest.raises(core.AuthenticationFailed):
        core.authenticate(storage, HASHER, throttle, username, password + "x")


@given(bad_usernames, passwords)
def test_a_username_outside_the_rules_is_refused(username: str, password: str) -> None:
    with pytest.raises(core.InvalidInput) as refused:
        core.register_user(MemoryStorage(), HASHER, username, password)
    assert field_errors(refused.value) == {"username"}


@given(usernames, st.text(max_size=7))
def test_a_password_shorter_than_8_characters_is_refused(username: str, password: str) -> None:
    storage = MemoryStorage()
    with pytest.raises(core.InvalidInput) as refused:
        core.register_user(storage, HASHER, username, password)
    assert field_errors(refused.value) == {"password"}
    with storage.unit_of_work(write=False) as uow:
        assert uow.users.by_username(username) is None


@given(usernames, passwords, passwords)
def test_a_taken_username_is_refused_as_invalid_input(
    username: str, first: str, second: str
) -> None:
    storage = MemoryStorage()
    original = core.register_user(storage, HASHER, username, first)
    with pytest.raises(core.InvalidInput) as refused:
        core.register_user(storage, HASHER, username, second)
    assert field_errors(refused.value) == {"username"}
    throttle = core.LoginThrottle(storage, FakeClock())
    assert core.authenticate(storage, HASHER, throttle, username, first) == original


# Time moves in steps of 1/64 s: exact in both microseconds and binary floats,
# so "within 60 s" has one meaning for the test and the throttle.
TICK = 1 / 64
USERS = ["ann", "bob"]
# (who fails, how many times, ticks between failures, ticks of quiet afterwards)
bursts = st.lists(
    st.tuples(
        st.sampled_from(USERS), st.integers(0, 12), st.integers(0, 8 * 64), st.integers(0, 40 * 64)
    ),
    max_size=10,
)


@given(bursts)
def test_ten_failures_within_60_seconds_throttle_that_username_until_the_window_passes(
    steps: list[tuple[str, int, int, int]],
) -> None:
    clock = FakeClock()
    throttle = core.LoginThrottle(MemoryStorage(), clock)
    started = clock.now()
    failures: dict[str, list[float]] = {user: [] for user in USERS}

    def elapsed() -> float:
        return (clock.now() - started).total_seconds()

    for user, count, gap, quiet in steps:
        for _ in range(count):
            throttle.failed(user)
            failures[user].append(elapsed())
            clock.advance(gap * TICK)
        for checked in USERS:
            now = elapsed()
            recent = [t for t in failures[checked] if t > now - WINDOW]
            if len(recent) >= LIMIT:
                with pytest.raises(core.Throttled) as refused:
                    throttle.check(checked)
                # Fewer than LIMIT failures are left in the window after this long.
                released = sorted(recent)[len(recent) - LIMIT] + WINDOW
                assert refused.value.retry_after == max(1, math.ceil(released - now))
            else:
                throttle.check(checked)
        clock.advance(quiet * TICK)


# Whole seconds and microseconds apart, so failures spread over the window.
window_offsets = st.tuples(st.integers(0, 59), st.integers(0, 999_999)).map(
    lambda parts: parts[0] * 1_000_000 + parts[1]
)


@given(st.lists(window_offsets, min_size=LIMIT, max_size=LIMIT + 5))
def test_waiting_retry_after_seconds_always_lets_the_username_in_again(
    offsets: list[int],
) -> None:
    """Failures at any microsecond within one window, maybe more than the limit
    (concurrent logins can overshoot it): `retry_after` is always long enough."""
    clock = FakeClock()
    throttle = core.LoginThrottle(MemoryStorage(), clock)
    start = clock.now()
    for offset in sorted(offsets):
        clock.current = start + timedelta(microseconds=offset)
        throttle.failed("ann")
    with pytest.raises(core.Throttled) as refused:
        throttle.check("ann")
    seconds = refused.value.retry_after
    assert refused.value.message.endswith(f"try again in {seconds} second{'' if seconds == 1 else 's'}.")
    clock.advance(refused.value.retry_after)
    throttle.check("ann")


@given(usernames, passwords)
def test_failed_logins_through_authenticate_are_throttled(username: str, password: str) -> None:
    storage = MemoryStorage()
    core.register_user(storage, HASHER, username, password)
    clock = FakeClock()
    throttle = core.LoginThrottle(storage, clock)
    for _ in range(LIMIT):
        with pytest.raises(core.AuthenticationFailed):
            core.authenticate(storage, HASHER, throttle, username, password + "!")
        clock.advance(1)
    # Even the right password is refused while throttled.
    with pytest.raises(core.Throttled) as refused:
        core.authenticate(storage, HASHER, throttle, username, password)
    assert 1 <= refused.value.retry_after <= WINDOW
    clock.advance(refused.value.retry_after)
    assert core.authenticate(storage, HASHER, throttle, username, password).username == username
